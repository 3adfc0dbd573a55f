// Package readapi serves the read side of devstatus over HTTP, as JSON in the
// shapes the API promises (docs/architecture.md, Contract):
//
//	GET /v1/devices/{id}                    one device, with its latest metrics
//	GET /v1/devices?status=&group=&prefix=&stale_for=&sort=&limit=&cursor=
//	                                        filtered, sorted, keyset-paginated list
//	GET /v1/devices/{id}/transitions?from=&to=&limit=   history, oldest first
//	GET /v1/devices/{id}/status?at=         the status at a past time (from the history)
//	GET /v1/devices/{id}/availability?from=&to=         seconds and percent per status
//	GET /v1/summary                         counts by status and by group
//	GET /v1/stream?status=&group=&device=   server-sent events, one per transition,
//	                                        resumable with Last-Event-ID
//	POST /v1/stream/ticket                  a short-lived ticket that opens the stream only
//	GET /v1/whoami                          the role and name of the caller's token
//
// Every route needs the admin token as a bearer header; the stream also
// opens with a ticket (?ticket=, for EventSource, which cannot send a
// header): HMAC-signed with a key every instance shares, valid 60 s, refused
// everywhere else. No token is read from a URL or a cookie.
// Device reads go through [Cache], a per-device cache that each device's own
// transitions invalidate; history reads go to Postgres; the stream reads the
// transitions stream (one ordered consumer per client, bounded buffers).
//
// It reads through [Reader] (implemented by *projections.Store and [Cache])
// and must not write anything, publish to the bus or decide statuses. It
// registers GET patterns only (and POST /v1/stream/ticket), so it shares a ServeMux with the bridge's
// POST, PATCH and DELETE patterns on the same paths; the server wraps that
// mux with httpx.DeviceIDs so that every device id (with "/", "." or "..",
// spaces, non-ASCII) routes; browsers, which drop "." and ".." segments even
// percent-encoded, send those two as "/v1/devices/~…?id=.." (the dashboard
// does).
package readapi
