package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/devstatus/devstatus/events"
)

// Delivery is one should_reconnect told to a device, recorded until its
// reconnect_delivered event is acknowledged by JetStream.
type Delivery struct {
	// EventID is the reconnect_delivered event's id (and Nats-Msg-Id):
	// "rd-<request id>" for an operator request, "rd-tr-<transitions-stream
	// sequence>" for a comeback (see [ParseDeliveryID]).
	EventID string `json:"event_id"`
	// At is when it was told (the registry clock): the event's time.
	At time.Time `json:"at"`
}

// Delivery reasons, as reported by [ParseDeliveryID].
const (
	ReasonOperator = "operator" // POST /v1/devices/{id}/reconnect
	ReasonComeback = "comeback" // back from temporarily_offline or disconnected
)

// ParseDeliveryID tells what a reconnect_delivered event id stands for: an
// operator request (reason "operator", the request's event id) or a comeback
// (reason "comeback", the transitions-stream sequence of the offline
// transition the device came back from). ok is false for another id.
func ParseDeliveryID(id string) (reason, requestID string, transitionSeq uint64, ok bool) {
	rest, found := strings.CutPrefix(id, "rd-")
	if !found || rest == "" {
		return "", "", 0, false
	}
	if n, isTr := strings.CutPrefix(rest, "tr-"); isTr {
		seq, err := strconv.ParseUint(n, 10, 64)
		if err != nil || seq == 0 {
			return "", "", 0, false
		}
		return ReasonComeback, "", seq, true
	}
	return ReasonOperator, rest, 0, true
}

func comebackEventID(seq uint64) string { return "rd-tr-" + strconv.FormatUint(seq, 10) }

// Delivered is the outcome of [Registry.Deliver].
type Delivered struct {
	// Reconnect: this caller won the delivery and must answer the heartbeat
	// with should_reconnect=true (Operator, Comeback or both).
	Reconnect bool
	// Operator: a pending operator request was taken.
	Operator bool
	// Comeback: the comeback from the offline transition at the given
	// sequence was taken.
	Comeback bool
}

// Deliver decides, exactly once across every bridge instance and retry,
// whether a heartbeat's answer carries should_reconnect, and logs it.
//
// offlineSeq is the transitions-stream sequence of the device's last
// transition when that transition went to temporarily_offline or
// disconnected (the status the heartbeat answer reports), else 0. The
// heartbeat wins:
//   - the pending operator request, if any (PendingReconnect), and
//   - the comeback, if offlineSeq is newer than ComebackSeq (the last offline
//     transition whose comeback was already signalled),
//
// by one compare-and-swap on the device's KV entry that clears the request,
// raises ComebackSeq and appends the deliveries to Unlogged. Of two bridges
// racing for the same delivery, exactly one CAS succeeds; the other re-reads
// the entry and finds nothing left to deliver.
//
// Then every Unlogged delivery (this one and any earlier whose event failed)
// is published as reconnect_delivered with its own deterministic event id
// and the time it was told, and removed from Unlogged by a second CAS once
// acknowledged. If the publish fails, the device is still told (it won the
// delivery: d.Reconnect is true) and the error wraps [ErrUnavailable]: the
// event stays in Unlogged, so the device's next heartbeat, on any instance,
// publishes it (JetStream deduplicates a repeat within its 2-minute window).
// The audit trail therefore never lacks a delivery, and shows it at the time
// it was told.
//
// Called only when [Entry.NeedsDeliver] says so: one KV read and one or two
// writes on the rare heartbeats that deliver something, none on the others.
// Errors: *[InvalidIDError], [ErrNotFound], [ErrUnavailable].
func (r *Registry) Deliver(ctx context.Context, id string, offlineSeq uint64) (Delivered, error) {
	var out Delivered
	d, err := r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		out = Delivered{}
		if d.Decommissioned { // told nothing (Unlogged, if any, is still logged below)
			return nil, false, nil
		}
		now := r.cfg.Clock.Now().UTC()
		if d.PendingReconnect {
			d.PendingReconnect = false
			d.Unlogged = append(d.Unlogged, Delivery{EventID: "rd-" + d.ReconnectRequestID, At: now})
			out.Operator = true
		}
		if offlineSeq > d.ComebackSeq {
			d.ComebackSeq = offlineSeq
			d.Unlogged = append(d.Unlogged, Delivery{EventID: comebackEventID(offlineSeq), At: now})
			out.Comeback = true
		}
		out.Reconnect = out.Operator || out.Comeback
		return nil, out.Reconnect, nil
	})
	if err != nil {
		return Delivered{}, err
	}
	if len(d.Unlogged) == 0 {
		return out, nil
	}
	if err := r.logDeliveries(ctx, id, d.Unlogged); err != nil {
		r.log.Warn("registry: reconnect delivered but its event is not acknowledged yet; the next heartbeat publishes it",
			slog.String("device", id), slog.Any("err", err))
		return out, err
	}
	return out, nil
}

// logDeliveries publishes the reconnect_delivered events of ds and then
// removes them from the entry's Unlogged list.
func (r *Registry) logDeliveries(ctx context.Context, id string, ds []Delivery) error {
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	done := make([]string, 0, len(ds))
	var errs []error
	for _, dl := range ds {
		ev := r.event(events.TypeReconnectDelivered, id, dl.EventID)
		ev.At, ev.Actor = dl.At, ""
		if err := r.publish(ctx, ev); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, dl.EventID)
	}
	if len(done) > 0 {
		_, err := r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
			n := len(d.Unlogged)
			d.Unlogged = slices.DeleteFunc(d.Unlogged, func(x Delivery) bool { return slices.Contains(done, x.EventID) })
			if len(d.Unlogged) == 0 {
				d.Unlogged = nil
			}
			return nil, len(d.Unlogged) != n, nil
		})
		if err != nil {
			// Published but still listed: a later Deliver re-publishes them
			// (deduplicated) and removes them then.
			errs = append(errs, fmt.Errorf("clearing logged deliveries: %w", err))
		}
	}
	return errors.Join(errs...)
}

// TakeReconnect delivers a pending operator request only (no comeback): it
// is [Registry.Deliver] with offlineSeq 0, and taken reports whether this
// caller won it. taken may be true with a non-nil error (the event is not
// acknowledged yet; see Deliver).
func (r *Registry) TakeReconnect(ctx context.Context, id string) (taken bool, err error) {
	d, err := r.Deliver(ctx, id, 0)
	return d.Operator, err
}
