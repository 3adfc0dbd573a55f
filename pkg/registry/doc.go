// Package registry is the device registry of devstatus: one JetStream KV entry
// per device in the events.DevicesBucket bucket (key events.SubjectToken(id),
// value the JSON of [Device]), plus one token-index key per device token
// ("tok.<sha256 hex>", see auth.go). It is the source of truth for device
// authentication, the device's group and gateway, the remote-control flag,
// pending operator reconnect requests and the comebacks already signalled.
//
// Every change is a KV write guarded by the entry's revision (compare and
// swap, so several bridge instances can share the bucket without locks)
// followed by an input event on the device's input subject
// (device_registered, device_decommissioned, remote_control_changed,
// reconnect_requested, reconnect_delivered) published with a Nats-Msg-Id and
// acknowledged by JetStream before the call returns. The partition workers and
// projections learn about registrations only from those events. A re-key
// ([Registry.Rekey]) publishes no event (tokens are not device state).
//
// Reconnect signalling ([Registry.Deliver]) is decided by compare-and-swap, so
// each operator request and each comeback from temporarily_offline or
// disconnected is told to the device on exactly one heartbeat answer across
// all bridge instances, and logged as reconnect_delivered even when the first
// publish of that event fails. [Registry.History] reads a device's events
// (the audit trail) back from the input stream.
//
// The bridge's hot path (one lookup per heartbeat) is served from a bounded
// per-device cache that is filled on a miss by kv.Get and invalidated key by
// key by a KV watcher ([Registry.Run]), so a change made through another
// bridge instance is seen within the watcher's delivery latency. A registry
// change never flushes more than its own key; the whole cache is emptied only
// when the NATS connection is lost or the watch stalls, because the watch may
// then have missed updates (caching resumes when the watch is re-established).
// The watch is a [bus.Follower] on the bucket's stream.
//
// What it must not do: decide device status (that is the partition worker's),
// talk HTTP (that is pkg/bridge's), keep device tokens (only their SHA-256),
// or branch on the text of a NATS error message.
package registry
