// Package bridge is the HTTP ingest edge of devstatus: devices post
// heartbeats, the ping service posts probe results, operators register,
// change and decommission devices. Every accepted input becomes one event on
// the JetStream input stream, and the bridge answers only after JetStream has
// acknowledged it (PubAck): an answered heartbeat is never lost, and when the
// bus is unavailable the answer is 503 with Retry-After, never 200.
//
// Checks on a heartbeat, in order (each refusal publishes nothing):
// device id (400), content type (415), body size (413), JSON (400), device
// token (401; an unknown device also gets 401 so that unauthenticated callers
// cannot probe which ids exist; a decommissioned device gets 404, but only
// with its right token), per-device rate limit (429 with Retry-After), then
// publish (503 with Retry-After on any failure).
//
// The bridge keeps, per instance, a status cache fed by an ordered consumer
// on the transitions stream (the status a heartbeat answer reports), the
// per-device rate limiters; the
// device registry (pkg/registry) holds everything that must be shared between
// instances.
//
// What it must not do: decide a device's status (the partition worker does,
// from the log), read the wall clock for event times (it takes a
// clock.Clock), trust device time for anything but metadata, pass device ids
// raw into subjects, or register GET routes under /v1/devices (pkg/readapi
// owns those).
package bridge
