package bridge

import (
	"context"
	"log/slog"

	"github.com/devstatus/devstatus/pkg/registry"
)

// deliver decides a 200 heartbeat answer's should_reconnect, after the
// heartbeat was acknowledged by JetStream. offlineSeq is the status cache's
// comeback candidate (0: none). The decision is registry.Deliver's
// compare-and-swap on the device's KV entry, so each operator request and
// each comeback is told exactly once across bridge instances and retries;
// it runs only when the cached entry says there may be something to deliver
// (no KV round trip on ordinary heartbeats).
//
// A Deliver that fails before its CAS tells nothing: the device's next
// heartbeat tries again (the heartbeat itself is stored, so its answer stays
// 200). A Deliver that won but could not log its reconnect_delivered event
// still tells the device; the event is published by a later heartbeat (see
// registry.Deliver).
func (b *Bridge) deliver(ctx context.Context, id string, ent registry.Entry, offlineSeq uint64) bool {
	if !ent.NeedsDeliver(offlineSeq) {
		if offlineSeq > 0 { // already signalled (registry.Entry.ComebackSeq): remember locally
			b.status.markSignalled(id, offlineSeq)
		}
		return false
	}
	d, err := b.reg.Deliver(ctx, id, offlineSeq)
	if err != nil && !d.Reconnect {
		b.log.Warn("bridge: reconnect delivery not decided; the next heartbeat retries", slog.String("device", id), slog.Any("err", err))
		return false
	}
	if offlineSeq > 0 {
		b.status.markSignalled(id, offlineSeq) // by this call or, before it, by another instance
	}
	if d.Operator {
		b.m.shouldReconnect.WithLabelValues(registry.ReasonOperator).Inc()
	}
	if d.Comeback {
		b.m.shouldReconnect.WithLabelValues(registry.ReasonComeback).Inc()
	}
	return d.Reconnect
}
