package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

// History limits.
const (
	// DefaultHistoryLimit is the number of events a [Registry.History] page
	// holds when HistoryQuery.Limit is 0.
	DefaultHistoryLimit = 100
	// MaxHistoryLimit bounds HistoryQuery.Limit.
	MaxHistoryLimit = 1000
	// DefaultHistoryScan bounds the input-stream messages one History call
	// reads (a device heartbeating every 30 s has ~20 000 a week); a page
	// that stops at this bound returns a cursor to continue from.
	DefaultHistoryScan = 10000
)

// HistoryQuery selects a device's input events.
type HistoryQuery struct {
	// Types keeps only these event types (nil: all).
	Types []events.Type
	// After is an input-stream sequence: events after it are returned (0:
	// from the oldest event still in the stream).
	After uint64
	// Limit is the most events returned. Default [DefaultHistoryLimit], at
	// most [MaxHistoryLimit].
	Limit int
	// MaxScan bounds the messages read. Default [DefaultHistoryScan].
	MaxScan int
}

// HistoryEvent is one input event of a device and its input-stream sequence.
type HistoryEvent struct {
	Seq   uint64
	Event *events.Input
}

// HistoryPage is one page of a device's input events, oldest first.
type HistoryPage struct {
	Events []HistoryEvent
	// Next is the cursor of the following page (pass it as After); 0 when
	// every event up to the time of the call was read.
	Next uint64
}

// History reads a device's events from the input stream itself (the log, not
// a projection): every event published on the device's subject, oldest
// first, filtered by type, e.g. the audit trail of reconnects
// (reconnect_requested with its Actor, reconnect_delivered with
// [ParseDeliveryID]). It reads with an ephemeral, unacknowledged pull
// consumer filtered on events.DeviceSubject(id) that is deleted before it
// returns; the server skips other devices' messages. Events older than the
// input stream's retention (--input-retention) are gone.
//
// The device need not be registered any more (a decommissioned device's
// history stays readable). Errors: *[InvalidIDError], [ErrUnavailable].
func (r *Registry) History(ctx context.Context, id string, q HistoryQuery) (HistoryPage, error) {
	if err := validateID(id); err != nil {
		return HistoryPage{}, err
	}
	if q.Limit <= 0 {
		q.Limit = DefaultHistoryLimit
	}
	q.Limit = min(q.Limit, MaxHistoryLimit)
	if q.MaxScan <= 0 {
		q.MaxScan = DefaultHistoryScan
	}
	if err := r.connected(); err != nil {
		return HistoryPage{}, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	cfg := jetstream.ConsumerConfig{
		FilterSubject:     events.DeviceSubject(id, r.parts),
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute, // removed by the server should Delete below fail
		MemoryStorage:     true,
		Replicas:          1,
	}
	if q.After > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, q.After+1
	}
	cons, err := r.js.CreateConsumer(ctx, events.InputStream, cfg)
	if err != nil {
		return HistoryPage{}, unavailable("history consumer", err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.OpTimeout)
		defer dcancel()
		if err := r.js.DeleteConsumer(dctx, events.InputStream, cons.CachedInfo().Name); err != nil &&
			!errors.Is(err, jetstream.ErrConsumerNotFound) {
			r.log.Debug("registry: history consumer not deleted (the server drops it after a minute)", slog.Any("err", err))
		}
	}()
	var page HistoryPage
	pending := cons.CachedInfo().NumPending
	scanned := 0
	for pending > 0 && scanned < q.MaxScan && len(page.Events) < q.Limit {
		batch := int(min(pending, uint64(q.MaxScan-scanned), 256))
		msgs, err := cons.Fetch(batch, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return HistoryPage{}, unavailable("history fetch", err)
		}
		got := 0
		for m := range msgs.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			scanned++
			pending = md.NumPending
			page.Next = md.Sequence.Stream
			in, err := events.DecodeInput(m.Data())
			if err != nil {
				r.log.Warn("registry: undecodable input event in history", slog.Uint64("seq", md.Sequence.Stream), slog.Any("err", err))
				continue
			}
			if len(q.Types) > 0 && !slices.Contains(q.Types, in.Type) {
				continue
			}
			if len(page.Events) < q.Limit {
				page.Events = append(page.Events, HistoryEvent{Seq: md.Sequence.Stream, Event: in})
			}
			if len(page.Events) == q.Limit {
				break
			}
		}
		if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return HistoryPage{}, unavailable("history fetch", err)
		}
		if got == 0 {
			return HistoryPage{}, fmt.Errorf("%w: history: no messages within the wait, %d pending", ErrUnavailable, pending)
		}
	}
	if pending == 0 {
		page.Next = 0
	}
	return page, nil
}
