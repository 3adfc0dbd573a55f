package trace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/backoff"
)

// ErrInvalidConfig wraps every configuration error of [Import].
var ErrInvalidConfig = errors.New("trace: invalid import config")

// ErrReordered is returned (wrapped) by [Import] when a publish failed, was
// retried and got stored after a later event of the same partition: nothing
// was lost, but the partition's log is not in trace-time order, so the replay
// is not exact. It needs a failing server to happen.
var ErrReordered = errors.New("trace: events stored out of order after a failed publish")

// ImportConfig configures [Import].
type ImportConfig struct {
	// Partitions is the input stream's partition count (bus.Bus.Partitions):
	// ticks go to every partition, device events to events.DeviceSubject.
	// Required.
	Partitions int
	// Window is the span of trace time to import; Window.To is T_end, the
	// time of the final tick of every partition. Required.
	Window Window
	// TickEvery is the virtual-time period of clock ticks (per partition),
	// starting at Window.From. Default 10 s. Detection latency does not
	// matter in virtual time: timeouts are stamped last heartbeat +
	// threshold whatever tick observes them.
	TickEvery time.Duration
	// Group is the group of the registered devices. Default "grid5000".
	Group string
	// Actor is written in the registration events. Default "trace-import".
	Actor string
	// MaxInFlight bounds the async publishes awaiting their PubAck. Default
	// 2048 (below nats.go's own stall limit of 4000).
	MaxInFlight int
	// AckTimeout is how long to wait for one PubAck before treating the
	// publish as failed and retrying it (same Nats-Msg-Id, so a late-stored
	// original is deduplicated). Default 30 s.
	AckTimeout time.Duration
	// MaxAttempts bounds the synchronous retries of one failed publish.
	// Default 20 (with backoff from 50 ms up to 2 s).
	MaxAttempts int
	// Logger receives progress (every ProgressEvery events) and retries.
	// Default: discard.
	Logger *slog.Logger
	// ProgressEvery is the number of events between progress log lines.
	// Default 500 000.
	ProgressEvery int
}

func (c *ImportConfig) setDefaults() {
	if c.TickEvery == 0 {
		c.TickEvery = 10 * time.Second
	}
	if c.Group == "" {
		c.Group = "grid5000"
	}
	if c.Actor == "" {
		c.Actor = "trace-import"
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 2048
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = 30 * time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = 500_000
	}
}

func (c *ImportConfig) validate(nodes []NodeHeartbeats) error {
	var errs []error
	if c.Partitions < 1 {
		errs = append(errs, fmt.Errorf("partitions must be ≥ 1, got %d", c.Partitions))
	}
	if err := c.Window.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.TickEvery <= 0 {
		errs = append(errs, fmt.Errorf("tick period must be positive, got %s", c.TickEvery))
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 4000 {
		errs = append(errs, fmt.Errorf("max in flight must be in 1..4000, got %d", c.MaxInFlight))
	}
	if len(errs) == 0 {
		from, to := c.Window.unix()
		seen := make(map[string]bool, len(nodes))
		for _, n := range nodes {
			if err := events.ValidateDeviceID(n.Node); err != nil {
				errs = append(errs, fmt.Errorf("node %q: %w", n.Node, err))
				break
			}
			if seen[n.Node] {
				errs = append(errs, fmt.Errorf("node %q listed twice", n.Node))
				break
			}
			seen[n.Node] = true
			for i, t := range n.Times {
				if t < from || t >= to || (i > 0 && t <= n.Times[i-1]) {
					errs = append(errs, fmt.Errorf("node %q: heartbeat %d at %d is out of the window or out of order", n.Node, i, t))
					break
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// ImportStats reports what [Import] published.
type ImportStats struct {
	// Registered, Heartbeats and Ticks count the events published (stored or
	// found duplicate).
	Registered, Heartbeats, Ticks int
	// Duplicates counts PubAcks that said the Nats-Msg-Id was already stored
	// (a re-run of the same import inside the stream's duplicate window).
	Duplicates int
	// Retries counts publishes retried after an error or a missing PubAck.
	Retries int
	// Reordered counts retried events stored after a later event of their
	// partition (see [ErrReordered]); 0 in a healthy run.
	Reordered int
	// Elapsed is the wall time of the import.
	Elapsed time.Duration
}

// Events is the total number of events published.
func (s ImportStats) Events() int { return s.Registered + s.Heartbeats + s.Ticks }

// EventsPerSecond is Events / Elapsed (wall time).
func (s ImportStats) EventsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Events()) / s.Elapsed.Seconds()
}

// TickID is the Nats-Msg-Id (and event id) of partition p's tick at t, the
// same scheme as the ticker role ("tick-<p>-<unix nanos>"), so ticks of two
// publishers at one time deduplicate.
func TickID(p int, t time.Time) string {
	return "tick-" + strconv.Itoa(p) + "-" + strconv.FormatInt(t.UnixNano(), 10)
}

// HeartbeatID is the event id of a trace heartbeat: "trace-hb-<node>-<unix s>".
func HeartbeatID(node string, unix int64) string {
	return "trace-hb-" + node + "-" + strconv.FormatInt(unix, 10)
}

// RegistrationID is the event id of a node's registration in a window
// starting at from: "trace-reg-<node>-<unix s of from>".
func RegistrationID(node string, from time.Time) string {
	return "trace-reg-" + node + "-" + strconv.FormatInt(from.Unix(), 10)
}

// TickTimes returns the tick times of w with period every: From, From+every,
// … while < To, then To (T_end) — so the last tick is always at To.
func TickTimes(w Window, every time.Duration) []time.Time {
	var out []time.Time
	for t := w.From; t.Before(w.To); t = t.Add(every) {
		out = append(out, t)
	}
	return append(out, w.To)
}

// Import publishes a window of the trace straight to the input stream
// (events.InputStream), as a trusted importer that bypasses the bridge:
//
//  1. a device_registered event per node (At = Window.From − 1 s, group
//     cfg.Group, id [RegistrationID]) on events.DeviceSubject;
//  2. then, in trace-time order, every heartbeat (At = the trace time in UTC,
//     id [HeartbeatID]) and, for each tick time of [TickTimes], one tick per
//     partition (events.TickSubject(p), id [TickID]); at equal times the
//     heartbeats go first, and the last ticks are at Window.To.
//
// nodes are the windowed schedules ([Trace.Heartbeats] with the same window);
// every listed node is registered, even one without heartbeats. Every
// publish carries its id as Nats-Msg-Id, so a re-run inside the stream's
// duplicate window stores nothing twice.
//
// Publishing is asynchronous with at most cfg.MaxInFlight PubAcks pending.
// Nothing is dropped: a failed or unacknowledged publish stops the pipeline,
// lets the pending ones settle and is retried synchronously (with backoff)
// before going on. When such a retry lands after a later event of its
// partition, the result wraps [ErrReordered] (and the stats say how many).
//
// The devstatus service replaying this must run without its ticker role: its
// wall-clock ticks (today's time) would overtake every trace time.
func Import(ctx context.Context, js jetstream.JetStream, nodes []NodeHeartbeats, cfg ImportConfig) (ImportStats, error) {
	cfg.setDefaults()
	var st ImportStats
	if err := cfg.validate(nodes); err != nil {
		return st, err
	}
	start := time.Now()
	p := &publisher{js: js, cfg: &cfg, stats: &st, lastOK: make([]int, cfg.Partitions)}
	defer func() { st.Elapsed = time.Since(start) }()

	from, to := cfg.Window.unix()
	regAt := cfg.Window.From.Add(-time.Second).UTC()
	for _, n := range nodes {
		ev := &events.Input{Type: events.TypeDeviceRegistered, ID: RegistrationID(n.Node, cfg.Window.From), Device: n.Node,
			At: regAt, Actor: cfg.Actor, Registered: &events.Registered{Group: cfg.Group}}
		if err := p.publish(ctx, events.DeviceSubject(n.Node, cfg.Partitions), events.Partition(n.Node, cfg.Partitions), ev); err != nil {
			return st, err
		}
		st.Registered++
	}

	// Bucket the heartbeats by second (counting sort): order[k] lists the
	// nodes heartbeating at from+k, in node order.
	span := to - from
	counts := make([]int32, span+1)
	total := 0
	for _, n := range nodes {
		for _, t := range n.Times {
			counts[t-from+1]++
		}
		total += len(n.Times)
	}
	for k := int64(1); k <= span; k++ {
		counts[k] += counts[k-1]
	}
	order := make([]int32, total)
	fill := append([]int32(nil), counts[:span]...)
	for i, n := range nodes {
		for _, t := range n.Times {
			k := t - from
			order[fill[k]] = int32(i)
			fill[k]++
		}
	}
	parts := make([]int, len(nodes))
	subjects := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = events.Partition(n.Node, cfg.Partitions)
		subjects[i] = events.DeviceSubject(n.Node, cfg.Partitions)
	}

	ticks := TickTimes(cfg.Window, cfg.TickEvery)
	ti := 0
	publishTicksBefore := func(limit time.Time, inclusive bool) error {
		for ti < len(ticks) && (ticks[ti].Before(limit) || (inclusive && ticks[ti].Equal(limit))) {
			tt := ticks[ti].UTC()
			for part := 0; part < cfg.Partitions; part++ {
				ev := &events.Input{Type: events.TypeTick, ID: TickID(part, tt), At: tt}
				if err := p.publish(ctx, events.TickSubject(part), part, ev); err != nil {
					return err
				}
				st.Ticks++
			}
			ti++
		}
		return nil
	}
	for k := int64(0); k < span; k++ {
		lo, hi := counts[k], counts[k+1]
		if lo == hi {
			continue
		}
		tt := time.Unix(from+k, 0).UTC()
		if err := publishTicksBefore(tt, false); err != nil {
			return st, err
		}
		for _, i := range order[lo:hi] {
			n := nodes[i].Node
			ev := &events.Input{Type: events.TypeHeartbeat, ID: HeartbeatID(n, from+k), Device: n, At: tt, Heartbeat: &events.Heartbeat{}}
			if err := p.publish(ctx, subjects[i], parts[i], ev); err != nil {
				return st, err
			}
			st.Heartbeats++
		}
	}
	if err := publishTicksBefore(cfg.Window.To, true); err != nil {
		return st, err
	}
	if err := p.flush(ctx); err != nil {
		return st, err
	}
	st.Elapsed = time.Since(start)
	cfg.Logger.Info("trace import done", slog.Int("events", st.Events()), slog.Int("heartbeats", st.Heartbeats),
		slog.Int("ticks", st.Ticks), slog.Int("registered", st.Registered), slog.Duration("elapsed", st.Elapsed),
		slog.Float64("events_per_s", st.EventsPerSecond()), slog.Int("retries", st.Retries), slog.Int("duplicates", st.Duplicates))
	if st.Reordered > 0 {
		return st, fmt.Errorf("%w: %d events", ErrReordered, st.Reordered)
	}
	return st, nil
}

// inflight is one async publish awaiting its PubAck.
type inflight struct {
	msg       *nats.Msg // carries the Nats-Msg-Id header once published
	id        string
	fut       jetstream.PubAckFuture
	partition int
	n         int // publish order
	err       error
}

// publisher keeps publish order per partition while publishing
// asynchronously: a FIFO of pending futures, drained from the head.
type publisher struct {
	js    jetstream.JetStream
	cfg   *ImportConfig
	stats *ImportStats
	queue []*inflight
	head  int
	n     int
	// lastOK[p] is the publish order of the last event of partition p known
	// stored (acked), for detecting a retry that lands after it.
	lastOK []int
}

func (p *publisher) publish(ctx context.Context, subject string, partition int, ev *events.Input) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := events.EncodeInput(ev)
	if err != nil {
		return fmt.Errorf("trace: encode %s %s: %w", ev.Type, ev.ID, err)
	}
	p.n++
	m := &nats.Msg{Subject: subject, Data: data}
	in := &inflight{msg: m, id: ev.ID, partition: partition, n: p.n}
	for attempt := 0; ; attempt++ {
		// Never more than MaxInFlight pending: settle the oldest first.
		for len(p.queue)-p.head >= p.cfg.MaxInFlight {
			if err := p.settleHead(ctx); err != nil {
				return err
			}
		}
		// WithRetryAttempts(0): no hidden re-send inside nats.go, which
		// could reorder; failures come back to us.
		in.fut, err = p.js.PublishMsgAsync(m, jetstream.WithMsgID(ev.ID), jetstream.WithExpectStream(events.InputStream),
			jetstream.WithRetryAttempts(0))
		if err == nil {
			break
		}
		// Not sent (stalled, disconnected): nothing later is sent either, so
		// order is kept. Settle what is pending and try again.
		if attempt+1 >= p.cfg.MaxAttempts {
			return fmt.Errorf("trace: publish %s: %w", ev.ID, err)
		}
		p.stats.Retries++
		p.cfg.Logger.Warn("trace import: publish refused, retrying", slog.String("id", ev.ID), slog.Any("err", err))
		if err := p.flush(ctx); err != nil {
			return err
		}
		if err := backoff.Sleep(ctx, retryDelay(attempt)); err != nil {
			return err
		}
	}
	p.queue = append(p.queue, in)
	if p.n%p.cfg.ProgressEvery == 0 {
		p.cfg.Logger.Info("trace import progress", slog.Int("published", p.n))
	}
	return nil
}

// settleHead waits for the oldest pending publish. On failure it settles
// everything pending and retries the failures in order.
func (p *publisher) settleHead(ctx context.Context) error {
	in := p.queue[p.head]
	p.head++
	if !p.wait(ctx, in) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return p.recover(ctx, in)
	}
	p.compact()
	return nil
}

// wait waits for in's PubAck; it records success and returns false on error
// or timeout.
func (p *publisher) wait(ctx context.Context, in *inflight) bool {
	timer := time.NewTimer(p.cfg.AckTimeout)
	defer timer.Stop()
	select {
	case ack := <-in.fut.Ok():
		p.acked(in, ack)
		return true
	case err := <-in.fut.Err():
		in.err = err
	case <-timer.C:
		in.err = fmt.Errorf("no PubAck within %s", p.cfg.AckTimeout)
	case <-ctx.Done():
		in.err = ctx.Err()
	}
	return false
}

func (p *publisher) acked(in *inflight, ack *jetstream.PubAck) {
	if ack.Duplicate {
		p.stats.Duplicates++
	}
	if in.n > p.lastOK[in.partition] {
		p.lastOK[in.partition] = in.n
	}
}

// recover handles a failed publish: it settles every publish still pending
// (collecting the other failures), then republishes the failures in publish
// order, synchronously, with the same Nats-Msg-Id.
func (p *publisher) recover(ctx context.Context, first *inflight) error {
	failed := []*inflight{first}
	for p.head < len(p.queue) {
		in := p.queue[p.head]
		p.head++
		if !p.wait(ctx, in) {
			if err := ctx.Err(); err != nil {
				return err
			}
			failed = append(failed, in)
		}
	}
	p.compact()
	for _, in := range failed {
		p.cfg.Logger.Warn("trace import: publish failed, retrying", slog.String("id", in.id), slog.Any("err", in.err))
		if err := p.retrySync(ctx, in); err != nil {
			return err
		}
	}
	return nil
}

func (p *publisher) retrySync(ctx context.Context, in *inflight) error {
	var err error
	for attempt := 0; attempt < p.cfg.MaxAttempts; attempt++ {
		p.stats.Retries++
		actx, cancel := context.WithTimeout(ctx, p.cfg.AckTimeout)
		var ack *jetstream.PubAck
		ack, err = p.js.PublishMsg(actx, in.msg, jetstream.WithMsgID(in.id), jetstream.WithExpectStream(events.InputStream))
		cancel()
		if err == nil {
			if !ack.Duplicate && p.lastOK[in.partition] > in.n {
				// Stored now, after a later event of its partition.
				p.stats.Reordered++
			}
			p.acked(in, ack)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := backoff.Sleep(ctx, retryDelay(attempt)); err != nil {
			return err
		}
	}
	return fmt.Errorf("trace: publish %s failed %d times: %w", in.id, p.cfg.MaxAttempts, err)
}

// flush settles every pending publish.
func (p *publisher) flush(ctx context.Context) error {
	for p.head < len(p.queue) {
		if err := p.settleHead(ctx); err != nil {
			return err
		}
	}
	p.compact()
	return nil
}

func (p *publisher) compact() {
	if p.head == len(p.queue) {
		p.queue, p.head = p.queue[:0], 0
	} else if p.head > 4096 && p.head > len(p.queue)/2 {
		n := copy(p.queue, p.queue[p.head:])
		clear(p.queue[n:])
		p.queue, p.head = p.queue[:n], 0
	}
}

// retryDelay is the attempt-th retry delay: 50 ms doubling up to 2 s.
func retryDelay(attempt int) time.Duration {
	return backoff.Policy{Min: 50 * time.Millisecond, Max: 2 * time.Second}.Delay(attempt)
}
