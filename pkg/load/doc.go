// Package load is the load generator of `make bench` and `devicesim load`:
// it registers a fleet, drives a running devstatus service over HTTP/1.1
// keep-alive connections and reports what it measured ([Run], [Report]).
//
//   - Phases ([Config] lists them): registration, warm-up, gateway batches
//     (open and closed loops), rounds of closed loops against a plain net/http
//     handler ([BaselineHandler]) and then the service — the throughput is a
//     ratio to the baseline of the same run, which survives a noisy machine —
//     and open loops of single heartbeats (sustain; steady, with the
//     detection latency of sentinels that go silent). Every phase sends
//     through one worker pool, one connection per worker.
//   - A sampler reads the service's /metrics every second (lag, applied and
//     projected events, CPU, memory: what a dashboard sees) and the host's
//     /proc (CPU of other processes such as Postgres, load average).
//   - The report: JSON ([Report.WriteJSON]), a text summary ([Report.String])
//     with the verdict on each throughput target, and an SVG plot
//     ([Report.SVG]) without dependencies.
//   - [WaitWorker] times a restarted worker process from its /metrics.
//
// What it must not do: reach into the service's internals (NATS, Postgres);
// it sees only HTTP answers and /metrics. Its HTTP client (internal/rawhttp)
// is minimal on purpose: it costs the generator a fraction of net/http's
// client CPU when it shares the cores with the service it measures.
package load
