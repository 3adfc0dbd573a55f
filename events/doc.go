// Package events defines the wire format of everything devstatus puts on NATS
// JetStream: the versioned input envelope (heartbeats, ping results, clock
// ticks and administrative events), the status-changed output event, the
// subject scheme, device-id validation and the partition function.
//
// It is a leaf package: it imports nothing of devstatus, and every other
// package may import it. It must not do I/O, read the clock or hold state.
// Golden files under testdata/ pin the JSON encoding; changing a field name or
// meaning requires a new [Version].
package events
