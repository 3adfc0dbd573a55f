// Package events defines the wire format of everything devstatus puts on NATS
// JetStream, and is its only codec: the versioned input envelope
// (heartbeats, ping results, clock ticks and administrative events), the
// status-changed output event, the probe request, the subject scheme,
// device-id validation and the partition function.
//
// The input envelope has one encoder, [EncodeInput] (with [AppendInput]),
// and one decoder, [ScanInput], whose [Fields] mask says which parts of a
// heartbeat's payload a reader needs ([DecodeInput] reads everything).
// Both write and read heartbeats and ticks by hand, without reflection,
// and fall back to encoding/json, which defines the format, for anything
// else; every decoder applies the same version check. Other packages must
// not encode or decode these messages themselves.
//
// It is a leaf package: it imports nothing of devstatus, and every other
// package may import it. It must not do I/O, read the clock or hold state.
// Golden files under testdata/ pin the JSON encoding; changing a field name or
// meaning requires a new [Version].
package events
