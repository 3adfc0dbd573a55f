package bridge

// Comeback and reconnect: when a heartbeat's answer carries
// should_reconnect=true, and how that is cleared. This file is the whole
// rule; the registry only stores the fields it reads and writes
// (PendingReconnect, ReconnectRequestID, ComebackSeq, Unlogged) and offers
// the compare-and-swap that decides a race (registry.Swap).
//
// A heartbeat answered 200 is told should_reconnect=true when
//   - an operator asked for a reconnect (POST /v1/devices/{id}/reconnect
//     sets PendingReconnect) that no heartbeat was told yet, or
//   - the device comes back: the status the answer reports is
//     temporarily_offline or disconnected, decided by the transition at
//     transitions-stream sequence offlineSeq, and offlineSeq is newer than
//     ComebackSeq (the last offline transition whose comeback was told).
//
// Both are told once across every bridge instance and retry: the heartbeat
// that wins one compare-and-swap on the device's record (clearing
// PendingReconnect, raising ComebackSeq) tells it; a racing heartbeat
// re-reads the record and finds nothing left. The same write stores a new
// probe URL the heartbeat reported (probe.go), so a heartbeat writes the
// registry at most once. Each delivery is then logged as a
// reconnect_delivered event with a deterministic id (parseDeliveryID) and
// the time it was told. Should that publish fail, the device is still told
// (it won), and a second write lists the delivery in Unlogged; the device's
// next heartbeat, on any instance, publishes it (same id: JetStream drops a
// repeat within its duplicate window) and removes it from the list.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/registry"
)

// Delivery reasons, as reported by parseDeliveryID and counted by the
// devstatus_bridge_should_reconnect_total metric.
const (
	reasonOperator = "operator" // POST /v1/devices/{id}/reconnect
	reasonComeback = "comeback" // back from temporarily_offline or disconnected
)

// parseDeliveryID tells what a reconnect_delivered event id stands for: an
// operator request ("rd-<request id>": reason "operator" and the request's
// event id) or a comeback ("rd-tr-<seq>": reason "comeback" and the
// transitions-stream sequence of the offline transition the device came
// back from). ok is false for another id.
func parseDeliveryID(id string) (reason, requestID string, transitionSeq uint64, ok bool) {
	rest, found := strings.CutPrefix(id, "rd-")
	if !found || rest == "" {
		return "", "", 0, false
	}
	if n, isTr := strings.CutPrefix(rest, "tr-"); isTr {
		seq, err := strconv.ParseUint(n, 10, 64)
		if err != nil || seq == 0 {
			return "", "", 0, false
		}
		return reasonComeback, "", seq, true
	}
	return reasonOperator, rest, 0, true
}

func operatorEventID(requestID string) string { return "rd-" + requestID }
func comebackEventID(seq uint64) string       { return "rd-tr-" + strconv.FormatUint(seq, 10) }

// needsDeliver tells from the cached entry whether a heartbeat may have a
// reconnect to tell or a delivery to log: an operator request is pending, a
// delivery is unlogged, or offlineSeq (0: the answer's status is not an
// offline one) is newer than the last comeback told. False for almost every
// heartbeat: no registry write then.
func needsDeliver(e registry.Entry, offlineSeq uint64) bool {
	return !e.Decommissioned && (e.PendingReconnect || e.Unlogged || offlineSeq > e.ComebackSeq)
}

// delivered is the outcome of reconnects.deliver.
type delivered struct {
	// Reconnect: this caller won a delivery and answers should_reconnect=true
	// (Operator, Comeback or both).
	Reconnect bool
	// Operator: the pending operator request was taken.
	Operator bool
	// Comeback: the comeback from the offline transition was taken.
	Comeback bool
}

// swapper is the registry's compare-and-swap (registry.Registry.Swap).
type swapper interface {
	Swap(ctx context.Context, id string, change func(d *registry.Device) (bool, error)) (registry.Device, error)
}

// reconnects applies the rule above to one heartbeat.
type reconnects struct {
	store   swapper
	publish func(ctx context.Context, in *events.Input) error
	clock   clock.Clock
	log     *slog.Logger
}

// deliver decides, by one compare-and-swap on the device's record, whether
// the heartbeat's answer carries should_reconnect, and stores probeURL with
// the same write when it is not nil and differs from the stored one (it is
// already checked against the probe policy). offlineSeq is as for
// needsDeliver. The deliveries won are then logged (see the file comment).
//
// Errors: those of registry.Swap (nothing told, nothing written: the next
// heartbeat tries again); or, with out.Reconnect possibly true, an error
// wrapping registry.ErrUnavailable when a reconnect_delivered event could
// not be published (it is then in Unlogged, for a later heartbeat to log).
func (c *reconnects) deliver(ctx context.Context, id string, offlineSeq uint64, probeURL *string) (delivered, error) {
	var (
		out  delivered
		told []registry.Delivery
	)
	d, err := c.store.Swap(ctx, id, func(d *registry.Device) (bool, error) {
		out, told = delivered{}, nil
		if d.Decommissioned { // told nothing (Unlogged, if any, is still logged below)
			return false, nil
		}
		write := probeURL != nil && setProbeURL(d, *probeURL)
		now := c.clock.Now().UTC()
		if d.PendingReconnect {
			d.PendingReconnect = false
			told = append(told, registry.Delivery{EventID: operatorEventID(d.ReconnectRequestID), At: now})
			out.Operator = true
		}
		if offlineSeq > d.ComebackSeq {
			d.ComebackSeq = offlineSeq
			told = append(told, registry.Delivery{EventID: comebackEventID(offlineSeq), At: now})
			out.Comeback = true
		}
		out.Reconnect = out.Operator || out.Comeback
		return write || out.Reconnect, nil
	})
	if err != nil {
		return delivered{}, err
	}
	if len(told) == 0 && len(d.Unlogged) == 0 {
		return out, nil
	}
	return out, c.logDeliveries(ctx, id, d.Unlogged, told)
}

// logDeliveries publishes the reconnect_delivered events of earlier
// deliveries still unlogged and of those just told, then, only when that
// changes the record, writes it once more: logged earlier ones leave
// Unlogged, failed new ones join it.
func (c *reconnects) logDeliveries(ctx context.Context, id string, earlier, told []registry.Delivery) error {
	var (
		logged []string            // earlier deliveries now published
		failed []registry.Delivery // new deliveries not published
		errs   []error
	)
	for i, dl := range slices.Concat(earlier, told) {
		ev := &events.Input{Type: events.TypeReconnectDelivered, ID: dl.EventID, Device: id, At: dl.At}
		if err := c.publish(ctx, ev); err != nil {
			errs = append(errs, err)
			if i >= len(earlier) {
				failed = append(failed, dl)
			}
			continue
		}
		if i < len(earlier) {
			logged = append(logged, dl.EventID)
		}
	}
	var err error
	if len(logged) > 0 || len(failed) > 0 {
		_, err = c.store.Swap(ctx, id, func(d *registry.Device) (bool, error) {
			n := len(d.Unlogged)
			d.Unlogged = slices.DeleteFunc(d.Unlogged, func(x registry.Delivery) bool { return slices.Contains(logged, x.EventID) })
			changed := len(d.Unlogged) != n
			for _, f := range failed {
				if !slices.ContainsFunc(d.Unlogged, func(x registry.Delivery) bool { return x.EventID == f.EventID }) {
					d.Unlogged, changed = append(d.Unlogged, f), true
				}
			}
			if len(d.Unlogged) == 0 {
				d.Unlogged = nil
			}
			return changed, nil
		})
	}
	switch {
	case err != nil && len(failed) > 0:
		c.log.Error("bridge: reconnect told but its reconnect_delivered event is neither published nor kept for later; the audit trail lacks it",
			slog.String("device", id), slog.Any("err", errors.Join(append(errs, err)...)))
	case err != nil:
		// Published but still listed: a later heartbeat publishes them again
		// (deduplicated) and removes them then.
		errs = append(errs, fmt.Errorf("clearing logged deliveries: %w", err))
	case len(failed) > 0:
		c.log.Warn("bridge: reconnect told but its event is not acknowledged yet; the next heartbeat publishes it",
			slog.String("device", id), slog.Any("err", errors.Join(errs...)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: reconnect_delivered: %w", registry.ErrUnavailable, err)
	}
	return nil
}

// settleRecord is the registry side of an accepted heartbeat: it returns
// its should_reconnect and stores the probe URL it reported when that
// differs from the registered one. From the cached entry alone it knows
// whether anything is to write; only then does it write, once
// (reconnects.deliver). A deliver that fails before its write tells
// nothing: the next heartbeat tries again (this one is stored, so its
// answer stays 200).
func (b *Bridge) settleRecord(ctx context.Context, a *admitted) bool {
	probe := changedProbeURL(a.ent, a.probeURL)
	if !needsDeliver(a.ent, a.offlineSeq) && probe == nil {
		if a.offlineSeq > 0 { // already told (ComebackSeq): remember locally
			b.status.markSignalled(a.id, a.offlineSeq)
		}
		return false
	}
	d, err := b.rc.deliver(ctx, a.id, a.offlineSeq, probe)
	if err != nil && !d.Reconnect {
		b.log.Warn("bridge: reconnect delivery or probe URL not settled; the next heartbeat retries", slog.String("device", a.id), slog.Any("err", err))
		return false
	}
	if a.offlineSeq > 0 {
		b.status.markSignalled(a.id, a.offlineSeq) // by this call or, before it, by another instance
	}
	if d.Operator {
		b.m.shouldReconnect.WithLabelValues(reasonOperator).Inc()
	}
	if d.Comeback {
		b.m.shouldReconnect.WithLabelValues(reasonComeback).Inc()
	}
	return d.Reconnect
}

// mustSettle tells whether settling a, once published, writes the registry
// (see settleRecord): the gateway batch runs those concurrently.
func mustSettle(a *admitted) bool {
	return needsDeliver(a.ent, a.offlineSeq) || changedProbeURL(a.ent, a.probeURL) != nil
}
