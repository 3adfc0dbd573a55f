// Package sim drives a running devstatus service over its HTTP API (through
// package apiclient) and checks what it answers, for end-to-end tests and
// demos.
//
//   - [NewPlan] / [Plan.Run] / [Run] simulate a fleet: each device gets a
//     [Behaviour] (steady, silent, returning, flapping, never), heartbeats
//     with jitter, and an exact expectation (final status and transition
//     list) from the oracle of package trace. Every silence is designed to be
//     at least a margin away from the thresholds, so the expectation does not
//     depend on jitter or on where the service's ticks fall; a heartbeat that
//     goes out later than half that margin marks its device Disturbed rather
//     than producing a false mismatch.
//   - [Check] and [CheckUntil] compare a service with a list of
//     expectations.
//   - [ReplayLive] replays a window of the Grid'5000 trace over HTTP,
//     time-compressed, and compares every node's final status with the
//     oracle at a comparison time chosen away from every node's thresholds.
//
// The load generator of `make bench` is package load; the typed API client
// is package apiclient.
//
// Every function takes a context, returns its outcome as a value ([Result],
// [LiveResult]) and never exits the process, so tests can call it. What it
// must not do: reach into the service's internals (NATS, Postgres) — it sees
// only what a device and a dashboard see — or decide what the state machine
// should do by itself: expectations come from trace.Expect.
//
// The service under test must run with the scenario's thresholds and with
// its per-device rate limit off or below the heartbeat interval
// (--rate-min-interval 0 --rate-per-minute 0 for sub-10 s intervals).
package sim
