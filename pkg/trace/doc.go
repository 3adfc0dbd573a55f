// Package trace turns a real availability trace (the Grid'5000 trace of the
// Failure Trace Archive, set g5k06; see testdata/README.md) into test input
// for devstatus and predicts what the service must answer.
//
// It does four things:
//
//   - [Read] / [Open] parse the trace's event table (tab-separated, optionally
//     xz-compressed) into each node's alternating up/down intervals, refusing
//     malformed rows with a [*ParseError] that names the line.
//   - [Node.Heartbeats] / [Trace.Heartbeats] generate the heartbeats a node
//     would have sent in a window of trace time: at s, s+30 s, s+60 s, … for
//     each up interval [s, e), keeping those < e and inside [From, To).
//   - [Expect] is the oracle: from a device's heartbeat times and an end time
//     it derives, by the state-machine rules, the transitions the
//     service must record and the device's final status.
//   - [Import] is a trusted virtual-time importer: it publishes the window's
//     registrations, heartbeats and clock ticks straight to the input stream,
//     stamped with trace time, so that a devstatus service started without
//     its own ticker role replays a day of the trace in seconds.
//
// What it must not do: it never reads the wall clock to stamp events (every
// time it publishes is a trace time), it never talks HTTP (package sim does),
// and nothing in the product may import it: it is a test and benchmark tool.
// The trace itself is not shipped with the product; a one-day excerpt is
// committed under testdata/ for tests only (see [TestdataDay]).
package trace
