package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// PatternEvents is the admin read of a device's input events (the audit
// trail), served from the log by readHistory. It is the one GET route
// the bridge registers under /v1/devices: pkg/readapi serves everything read
// from the projections; this one reads the input stream itself.
const PatternEvents = "GET /v1/devices/{id}/events"

// eventTypes are the values accepted in ?types=.
var eventTypes = []events.Type{events.TypeHeartbeat, events.TypePingResult, events.TypeDeviceRegistered,
	events.TypeDeviceDecommissioned, events.TypeReconnectRequested, events.TypeReconnectDelivered,
	events.TypeRemoteControlChanged}

// historyItem is one event of GET /v1/devices/{id}/events: the stored event
// (events.Input, as on the wire) with its input-stream sequence and, for
// reconnect_delivered, what was delivered.
type historyItem struct {
	Seq uint64 `json:"seq"`
	*events.Input
	Delivered *deliveredInfo `json:"delivered,omitempty"`
}

type deliveredInfo struct {
	// Reason is "operator" or "comeback".
	Reason string `json:"reason"`
	// RequestID is the reconnect_requested event id (operator).
	RequestID string `json:"request_id,omitempty"`
	// TransitionSeq is the transitions-stream sequence of the offline
	// transition the device came back from (comeback).
	TransitionSeq uint64 `json:"transition_seq,omitempty"`
}

// handleEvents serves GET /v1/devices/{id}/events?types=a,b&after=seq&limit=n
// (admin) → 200 {"events": [...], "next_after": seq | null}: the device's
// events from the input stream, oldest first, at most limit (default 100,
// at most 1000) per page; next_after is the cursor of the next page (pass it
// as after), null when the page reached the end of the log. types filters by
// event type (comma-separated; default all). 400 for an unknown type or a
// bad number; 503 when the bus is unavailable. A device that was never
// registered has an empty history (no 404: the log is the authority, and a
// decommissioned device's trail stays readable).
func (b *Bridge) handleEvents(w http.ResponseWriter, r *http.Request) {
	id, ok := validID(w, r)
	if !ok {
		return
	}
	q := historyQuery{}
	query := r.URL.Query()
	if v := query.Get("types"); v != "" {
		for _, name := range strings.Split(v, ",") {
			typ := events.Type(strings.TrimSpace(name))
			known := false
			for _, k := range eventTypes {
				known = known || k == typ
			}
			if !known {
				httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "unknown event type "+strconv.Quote(string(typ)))
				return
			}
			q.Types = append(q.Types, typ)
		}
	}
	var err error
	if v := query.Get("after"); v != "" {
		if q.After, err = strconv.ParseUint(v, 10, 64); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "after must be a stream sequence (unsigned integer)")
			return
		}
	}
	if v := query.Get("limit"); v != "" {
		if q.Limit, err = strconv.Atoi(v); err != nil || q.Limit < 1 || q.Limit > maxHistoryLimit {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "limit must be 1 to "+strconv.Itoa(maxHistoryLimit))
			return
		}
	}
	page, err := readHistory(r.Context(), b.cfg.Bus, b.log, id, q)
	if err != nil {
		var idErr *registry.InvalidIDError
		if errors.As(err, &idErr) {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, idErr.Err.Error())
			return
		}
		b.registryFailure(w, r, id, err)
		return
	}
	items := make([]historyItem, 0, len(page.Events))
	for _, he := range page.Events {
		it := historyItem{Seq: he.Seq, Input: he.Event}
		if he.Event.Type == events.TypeReconnectDelivered {
			if reason, req, seq, ok := parseDeliveryID(he.Event.ID); ok {
				it.Delivered = &deliveredInfo{Reason: reason, RequestID: req, TransitionSeq: seq}
			}
		}
		items = append(items, it)
	}
	var next *uint64
	if page.Next != 0 {
		next = &page.Next
	}
	httpx.WriteJSON(w, http.StatusOK, struct {
		Events    []historyItem `json:"events"`
		NextAfter *uint64       `json:"next_after"`
	}{items, next})
}

// History limits.
const (
	// defaultHistoryLimit is the number of events a page holds when
	// historyQuery.Limit is 0.
	defaultHistoryLimit = 100
	// maxHistoryLimit bounds historyQuery.Limit.
	maxHistoryLimit = 1000
	// defaultHistoryScan bounds the input-stream messages one readHistory
	// call reads (a device heartbeating every 30 s has ~20 000 a week); a
	// page that stops at this bound returns a cursor to continue from.
	defaultHistoryScan = 10000
	// historyTimeout bounds a readHistory call whose context has no deadline.
	historyTimeout = 5 * time.Second
)

// historyQuery selects a device's input events.
type historyQuery struct {
	// Types keeps only these event types (nil: all).
	Types []events.Type
	// After is an input-stream sequence: events after it are returned (0:
	// from the oldest event still in the stream).
	After uint64
	// Limit is the most events returned. Default [defaultHistoryLimit], at
	// most [maxHistoryLimit].
	Limit int
	// MaxScan bounds the messages read. Default [defaultHistoryScan].
	MaxScan int
}

// historyEvent is one input event of a device and its input-stream sequence.
type historyEvent struct {
	Seq   uint64
	Event *events.Input
}

// historyPage is one page of a device's input events, oldest first.
type historyPage struct {
	Events []historyEvent
	// Next is the cursor of the following page (pass it as After); 0 when
	// every event up to the time of the call was read.
	Next uint64
}

// readHistory reads a device's events from the input stream itself (the log, not
// a projection): every event published on the device's subject, oldest
// first, filtered by type, e.g. the audit trail of reconnects
// (reconnect_requested with its Actor, reconnect_delivered with
// parseDeliveryID). It reads with an ephemeral, unacknowledged pull
// consumer filtered on events.DeviceSubject(id) that is deleted before it
// returns; the server skips other devices' messages. Events older than the
// input stream's retention (--input-retention) are gone.
//
// The device need not be registered any more (a decommissioned device's
// history stays readable). Errors: *registry.InvalidIDError, and
// errors wrapping registry.ErrUnavailable for every bus failure.
func readHistory(ctx context.Context, b *bus.Bus, log *slog.Logger, id string, q historyQuery) (historyPage, error) {
	if err := events.ValidateDeviceID(id); err != nil {
		return historyPage{}, &registry.InvalidIDError{ID: id, Err: err}
	}
	if q.Limit <= 0 {
		q.Limit = defaultHistoryLimit
	}
	q.Limit = min(q.Limit, maxHistoryLimit)
	if q.MaxScan <= 0 {
		q.MaxScan = defaultHistoryScan
	}
	if !b.NC.IsConnected() {
		return historyPage{}, fmt.Errorf("%w: history: NATS is not connected", registry.ErrUnavailable)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, historyTimeout)
		defer cancel()
	}
	cfg := jetstream.ConsumerConfig{
		FilterSubject:     events.DeviceSubject(id, b.Partitions()),
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute, // removed by the server should Delete below fail
		MemoryStorage:     true,
		Replicas:          1,
	}
	if q.After > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, q.After+1
	}
	cons, err := b.JS.CreateConsumer(ctx, events.InputStream, cfg)
	if err != nil {
		return historyPage{}, historyUnavailable("consumer", err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
		defer dcancel()
		if err := b.JS.DeleteConsumer(dctx, events.InputStream, cons.CachedInfo().Name); err != nil &&
			!errors.Is(err, jetstream.ErrConsumerNotFound) {
			log.Debug("bridge: history consumer not deleted (the server drops it after a minute)", slog.Any("err", err))
		}
	}()
	var page historyPage
	pending := cons.CachedInfo().NumPending
	scanned := 0
	for pending > 0 && scanned < q.MaxScan && len(page.Events) < q.Limit {
		batch := int(min(pending, uint64(q.MaxScan-scanned), 256))
		msgs, err := cons.Fetch(batch, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return historyPage{}, historyUnavailable("fetch", err)
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
				log.Warn("bridge: undecodable input event in history", slog.Uint64("seq", md.Sequence.Stream), slog.Any("err", err))
				continue
			}
			if len(q.Types) > 0 && !slices.Contains(q.Types, in.Type) {
				continue
			}
			if len(page.Events) < q.Limit {
				page.Events = append(page.Events, historyEvent{Seq: md.Sequence.Stream, Event: in})
			}
			if len(page.Events) == q.Limit {
				break
			}
		}
		if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return historyPage{}, historyUnavailable("fetch", err)
		}
		if got == 0 {
			return historyPage{}, fmt.Errorf("%w: history: no messages within the wait, %d pending", registry.ErrUnavailable, pending)
		}
	}
	if pending == 0 {
		page.Next = 0
	}
	return page, nil
}

// historyUnavailable wraps a bus failure of readHistory in
// registry.ErrUnavailable (answered 503); the caller's own cancellation is
// returned as is.
func historyUnavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("bridge: history %s: %w", op, err)
	}
	return fmt.Errorf("%w: history %s: %w", registry.ErrUnavailable, op, err)
}
