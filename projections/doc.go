// Package projections keeps devstatus's Postgres read model: the schema
// (embedded numbered goose migrations, [Migrate]), the projector that applies
// the JetStream streams to it ([Projector]: the transitions stream into each
// device's current status and its history, the input stream's device events
// into the registry and liveness columns), the rebuild from the streams
// ([Rebuild]), history retention ([Pruner]) and the read queries the read
// API serves ([Store]).
//
// Tables (all times timestamptz, UTC on the wire, NULL for "never"):
//
//	devices                 one row per device: registration, current status (guarded by
//	                        status_seq), liveness (guarded by liveness_seq)
//	transitions             history, primary key = transitions-stream sequence
//	projection_checkpoints  last stream sequence applied per projection
//	dead_letters            messages set aside with their error
//
// Guarantees: every batch is one transaction holding its rows and its
// checkpoint; re-applying any message is a no-op (history keyed by stream
// sequence, current-status and liveness upserts guarded by sequence, times
// merged with GREATEST); a batch touching one device several times is
// coalesced first. What is projected depends only on the events (their
// sequences and event times), never on the wall clock or the session time
// zone.
//
// What it must not do: decide statuses (pkg/statemachine and the partition
// worker do; the projector only records their transitions), publish to
// JetStream, read the wall clock to decide what to store (the [Pruner] alone
// reads it, to decide which old history to delete), or skip an event
// because Postgres is unavailable (it waits and retries; only an event that
// Postgres refuses as data is set aside in dead_letters). Readers must not
// write through [Store].
package projections
