// Package apiclient is a typed Go client of the devstatus HTTP API, as a
// device and a dashboard see it: registration (POST /v1/devices), heartbeats
// (POST /v1/devices/{id}/heartbeat, with 429 Retry-After and 503 handling),
// one device, its transitions, the device list (cursor paging) and the
// summary.
//
// Device ids are escaped as one path segment ([DevicePath]), so ids with '/',
// ':', '.', '*', '>', spaces or non-ASCII reach the server intact. A non-2xx
// answer is an [*APIError] carrying the body's {"error": {"code",
// "message"}}; it matches the sentinels ([ErrNotFound], [ErrConflict], …) with
// errors.Is by HTTP status.
//
// The simulator (package sim), the end-to-end tests and cmd/devicesim use it.
// What it must not do: know the service's internals (NATS, Postgres) or
// decide what the service should answer; it only says what it answered.
package apiclient
