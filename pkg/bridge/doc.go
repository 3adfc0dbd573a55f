// Package bridge is the HTTP ingest edge of devstatus: devices post
// heartbeats, the ping service posts probe results, operators register,
// change, re-key and decommission devices and read a device's audit trail.
// Every accepted input becomes one event on the JetStream input stream, and
// the bridge answers only after JetStream has acknowledged it (PubAck): an
// answered heartbeat is never lost, and when the bus is unavailable or
// refuses the event the answer is 503 with Retry-After, never 200.
//
// Checks on a heartbeat, in order (each refusal publishes nothing and spends
// no rate budget): device id (400), content type (415), body size (413), a
// body too slow to arrive (408), JSON (400), probe URL (400), device token (401 for a missing or wrong token and for an
// unknown device alike, so that unauthenticated callers cannot probe which
// ids exist; 403 for the valid token of another device; 404 for a
// decommissioned device with its own token), per-device rate limit (429 with
// Retry-After), then publish (503 with Retry-After on any failure; 429 when
// JetStream reports the device's rate window already taken by another
// instance, see limiter).
//
// Where each concept lives: heartbeat admission (decode, authenticate, rate
// limit, publish, answer) in heartbeat.go; the reconnect rule (when
// should_reconnect is true, how it is cleared, its audit events) in
// reconnect.go; gateways in gateway.go; probe URLs in probe.go; the one
// request-body reader of every endpoint in body.go (413, 415, 408, 400);
// the audit trail in history.go; bulk registration (POST /v1/devices/import,
// NDJSON or CSV, answered per line) in import.go. The registry (pkg/registry) is only the
// store they read and write: a heartbeat enters it at most twice, one
// look-up and, only when its record changes (a reconnect to tell, a new
// probe URL), one compare-and-swap (see deviceStore).
//
// Several instances may run behind a load balancer: the registry (JetStream
// KV, compare-and-swap) holds what must be shared, so operator reconnects and
// comebacks are signalled exactly once across instances (reconnect.go),
// and the rate limit holds across instances through the shared rate window
// (a Nats-Msg-Id per device per RateMinInterval window, deduplicated by
// JetStream). Per instance: the status cache (fed by an ordered consumer on
// the transitions stream), the exact local limiter, the registry cache.
//
// What it must not do: decide a device's status (the partition worker does,
// from the log), read the wall clock for event times (it takes a
// clock.Clock), trust device time for anything but metadata, pass device ids
// raw into subjects, or register GET routes under /v1/devices other than
// /v1/devices/{id}/events (pkg/readapi owns the rest; that one reads the log,
// not the projections).
package bridge
