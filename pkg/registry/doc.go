// Package registry is the device registry of devstatus: a store of device
// and gateway records in the events.DevicesBucket JetStream KV bucket. A
// device is one entry (key events.SubjectToken(id), value the JSON of
// [Device]), plus one token-index key per device token ("tok.<sha256
// hex>", see auth.go); a gateway is one entry under "gw.<token>". It is the
// source of truth for device authentication, the device's group and
// gateway, the remote-control flag and the fields the bridge's reconnect
// rule reads and writes (PendingReconnect, ComebackSeq, Unlogged).
//
// What it offers:
//   - compare-and-swap: [Registry.Swap] changes a record guarded by its KV
//     revision, so several bridge instances share the bucket without locks
//     and a change they race for is made by exactly one. The admin changes
//     (Register, Decommission, SetRemoteControl, RequestReconnect) are CAS
//     writes followed by an input event on the device's input subject
//     (device_registered, device_decommissioned, remote_control_changed,
//     reconnect_requested) published with a Nats-Msg-Id and acknowledged by
//     JetStream before the call returns; the partition workers and
//     projections learn about registrations only from those events.
//     Rekey and SetProbeURL publish nothing (tokens and probe URLs are not
//     state the workers follow).
//   - look-ups by id ([Registry.Lookup] from the cache, [Registry.Get] from
//     KV) and by token ([Registry.Authenticate], which also tells a token of
//     another device, and [Registry.AuthenticateGateway]).
//   - the cache behind Lookup: bounded, per device, filled on a miss by
//     kv.Get and kept current key by key by a KV watcher ([Registry.Run]),
//     so a change made through another bridge instance is seen within the
//     watcher's delivery latency. A change never flushes more than its own
//     key; the whole cache is emptied only when the NATS connection is lost
//     or the watch stalls, because the watch may then have missed updates
//     (caching resumes when the watch is re-established).
//     [Registry.Prefetch] fills it for a batch of ids in parallel. The watch
//     is a [bus.Follower] on the bucket's stream.
//
// What it must not do: decide device status (that is the partition
// worker's), decide what a heartbeat is answered (when should_reconnect is
// told and how it is cleared is pkg/bridge's reconnect rule), talk HTTP
// (pkg/bridge), keep device tokens (only their SHA-256), or branch on the
// text of a NATS error message.
package registry
