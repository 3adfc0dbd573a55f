package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/internal/backoff"
)

// ErrStopFollowing is returned (or wrapped) by a handler or by
// FollowConfig.Resume to end [Follower.Run] with nil. A handler that returns
// it has handled its message or batch.
var ErrStopFollowing = errors.New("bus: stop following")

// ErrFollowerRunning is returned by [Follower.Run] while another Run of the
// same follower is active.
var ErrFollowerRunning = errors.New("bus: follower is already running")

// errFollowStalled ends a session the stall watchdog judged stalled.
var errFollowStalled = errors.New("bus: follower stalled (no message, consumer gone or behind without delivering)")

// errConnLost ends a session when the NATS connection is lost.
var errConnLost = errors.New("bus: NATS connection lost")

// Msg is one stream message as a [Follower] hands it to its handler.
type Msg struct {
	// Seq is the message's stream sequence.
	Seq uint64
	// Subject is the subject the message is stored under.
	Subject string
	// Header is the message's headers (nil when it has none).
	Header nats.Header
	// Data is the payload (empty with FollowConfig.HeadersOnly).
	Data []byte
	// Time is when the server stored the message.
	Time time.Time
	// Pending is the number of messages matching the filter after this one
	// when it was delivered (0: the follower has caught up).
	Pending uint64
	// Value is whatever FollowConfig.Prepare stored (nil without Prepare).
	Value any
}

// FollowConfig configures a [Follower]. Name, JetStream, Stream and one of
// Handle and HandleBatch are required.
type FollowConfig struct {
	// Name identifies the follower in logs and in the "follower" label of
	// its metrics. Required.
	Name string
	// JetStream is the context consumers are created with. Required.
	JetStream jetstream.JetStream
	// Conn, when set, is watched: a lost connection ends the current
	// consumer, and a new one is created after the reconnect, resuming
	// after the last message handled. Nil: the ordered consumer's own
	// reconnect handling and the stall watchdog are relied upon.
	Conn *nats.Conn
	// Stream is the stream to follow. Required.
	Stream string
	// FilterSubjects restricts the messages delivered (empty: all).
	FilterSubjects []string
	// HeadersOnly delivers subjects, headers and metadata without payloads.
	HeadersOnly bool
	// DeliverPolicy is where a consumer starts when there is no resume
	// point (no message handled yet and Resume returned 0, StartSeq 0):
	// jetstream.DeliverAllPolicy (the default), DeliverNewPolicy or
	// DeliverLastPerSubjectPolicy.
	DeliverPolicy jetstream.DeliverPolicy
	// StartSeq, when > 0, is the first stream sequence of the first
	// consumer (when Resume is nil). Later consumers resume after the last
	// message handled.
	StartSeq uint64
	// Resume, when set, is called before every consumer is created and
	// returns the stream sequence of the last message already handled
	// (e.g. a checkpoint in a database); the consumer starts after it, or
	// with DeliverPolicy when it returns 0. It overrides the follower's
	// own memory of the last message handled. An error is retried with
	// backoff; [ErrStopFollowing] ends Run with nil.
	Resume func(ctx context.Context) (uint64, error)

	// Handle is called for each message, in stream order, on one
	// goroutine. An error ends the consumer: after a backoff a new one
	// resumes at the same message. [ErrStopFollowing] ends Run.
	Handle func(ctx context.Context, m *Msg) error
	// HandleBatch, instead of Handle, is called with up to BatchSize
	// messages in stream order: those that arrived within FlushInterval of
	// the batch's first message. Its error is treated as Handle's.
	HandleBatch func(ctx context.Context, batch []*Msg) error
	// BatchSize bounds a batch of HandleBatch. Default 100.
	BatchSize int
	// FlushInterval is how long HandleBatch waits for a batch to fill after
	// its first message. Default 50ms.
	FlushInterval time.Duration
	// Prepare, when set, is called on the reading goroutine for every
	// message as it arrives, before the handler sees it (so decoding
	// overlaps the handler's work); it may set m.Value. It must not block.
	Prepare func(m *Msg)
	// PullMaxMessages is how many messages the client buffers ahead of the
	// handler. Default max(2·BatchSize, 100).
	PullMaxMessages int

	// OnCaughtUp, when set, is called (on the handler goroutine) whenever
	// the follower has nothing more to read: a consumer created with nothing
	// pending, or a message (the last of a batch) handled with Pending 0.
	OnCaughtUp func()
	// OnSession, when set, is called with true when a consumer is
	// delivering and with false when it has ended (before the backoff), with
	// the error that ended it (nil when Run is returning).
	OnSession func(up bool, err error)
	// OnRestart, when set, is called (on Run's goroutine) with the error
	// that ended each consumer, or each attempt to make one (Resume's
	// error included), before the backoff that precedes the next.
	OnRestart func(err error)

	// BackoffMin and BackoffMax bound the delay before a new consumer
	// after a failure, doubling from Min up to Max (±10 % jitter); a
	// consumer that handled a message resets it. Defaults 100ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// StallTimeout: when no message has arrived for this long while the
	// handler is idle, the consumer is asked for its state; one that is
	// gone from the server or has messages pending without delivering them
	// (nats.go issue #1729: an ordered consumer that silently stops after a
	// server restart) is replaced, resuming after the last message handled.
	// Default 10s; negative disables the watchdog.
	StallTimeout time.Duration
	// OpTimeout bounds each request to the server (stream look-up,
	// consumer creation, consumer info). Default 5s.
	OpTimeout time.Duration
	// NamePrefix, when set, starts the server-side consumer names (a
	// random suffix is added per consumer). Default: random names.
	NamePrefix string
	// Logger receives restarts and stalls. Default slog.Default().
	Logger *slog.Logger
}

func (c *FollowConfig) setDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = 100
	}
	if c.HandleBatch == nil {
		c.BatchSize = 1
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 50 * time.Millisecond
	}
	if c.PullMaxMessages == 0 {
		c.PullMaxMessages = max(2*c.BatchSize, 100)
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = 100 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 5 * time.Second
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = 10 * time.Second
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *FollowConfig) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("follower Name is required"))
	}
	if c.JetStream == nil {
		errs = append(errs, errors.New("follower JetStream is required"))
	}
	if c.Stream == "" {
		errs = append(errs, errors.New("follower Stream is required"))
	}
	if (c.Handle == nil) == (c.HandleBatch == nil) {
		errs = append(errs, errors.New("follower needs exactly one of Handle and HandleBatch"))
	}
	if c.BatchSize < 1 || c.FlushInterval < 0 || c.PullMaxMessages < 1 {
		errs = append(errs, errors.New("follower BatchSize and PullMaxMessages must be >= 1, FlushInterval >= 0"))
	}
	if c.BackoffMin < 0 || c.BackoffMax < c.BackoffMin || c.OpTimeout <= 0 {
		errs = append(errs, errors.New("follower backoff must be 0 <= BackoffMin <= BackoffMax, OpTimeout > 0"))
	}
	switch c.DeliverPolicy {
	case jetstream.DeliverAllPolicy, jetstream.DeliverNewPolicy, jetstream.DeliverLastPerSubjectPolicy:
	default:
		errs = append(errs, fmt.Errorf("follower DeliverPolicy %v is not supported (all, new, last per subject)", c.DeliverPolicy))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Follower reads one stream in order with an ordered consumer and hands
// each message to a handler exactly once per Run, in stream order. When the
// consumer fails, the server goes away or the connection is lost (with
// FollowConfig.Conn), or the stall watchdog finds it stalled, it creates a
// new consumer after a backoff that resumes after the last message handled
// (or after FollowConfig.Resume's answer). Messages at or below the last one
// handled are never handed over again within a Run.
//
// Make one with [NewFollower] and call [Follower.Run]. Safe for concurrent
// use of its accessors.
type Follower struct {
	cfg FollowConfig
	log *slog.Logger

	running  atomic.Bool
	up       atomic.Bool
	last     atomic.Uint64 // stream sequence of the last message handled
	pending  atomic.Uint64 // Pending of the last message handled
	restarts atomic.Uint64
	stalls   atomic.Uint64
	handled  atomic.Uint64
}

// NewFollower checks cfg and returns a Follower; errors wrap
// [ErrInvalidConfig].
func NewFollower(cfg FollowConfig) (*Follower, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Follower{cfg: cfg, log: cfg.Logger.With(slog.String("follower", cfg.Name), slog.String("stream", cfg.Stream))}, nil
}

// LastSeq is the stream sequence of the last message handled (0: none).
func (f *Follower) LastSeq() uint64 { return f.last.Load() }

// Up reports whether a consumer is delivering now.
func (f *Follower) Up() bool { return f.up.Load() }

// Restarts counts consumers replaced after a failure, a lost connection or
// a stall.
func (f *Follower) Restarts() uint64 { return f.restarts.Load() }

// Stalls counts consumers the stall watchdog replaced.
func (f *Follower) Stalls() uint64 { return f.stalls.Load() }

// Handled counts messages handed to the handler and handled without error.
func (f *Follower) Handled() uint64 { return f.handled.Load() }

// Collectors returns the follower's Prometheus collectors, each with the
// constant label follower=<Name>:
//
//	devstatus_bus_follower_restarts_total counter  consumers replaced (failure, lost connection, stall)
//	devstatus_bus_follower_stalls_total   counter  consumers replaced by the stall watchdog
//	devstatus_bus_follower_handled_total  counter  messages handled
//	devstatus_bus_follower_last_seq       gauge    stream sequence of the last message handled
//	devstatus_bus_follower_pending        gauge    messages after the last handled one when it was delivered (lag)
//	devstatus_bus_follower_up             gauge    1 while a consumer is delivering
func (f *Follower) Collectors() []prometheus.Collector {
	labels := prometheus.Labels{"follower": f.cfg.Name}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, v func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, v)
	}
	return []prometheus.Collector{
		counter("devstatus_bus_follower_restarts_total", "Stream consumers of a follower replaced after a failure, a lost connection or a stall.", &f.restarts),
		counter("devstatus_bus_follower_stalls_total", "Stream consumers of a follower replaced because they stalled (gone, or pending without delivering).", &f.stalls),
		counter("devstatus_bus_follower_handled_total", "Stream messages a follower handled.", &f.handled),
		gauge("devstatus_bus_follower_last_seq", "Stream sequence of the last message a follower handled.",
			func() float64 { return float64(f.last.Load()) }),
		gauge("devstatus_bus_follower_pending", "Messages after the last one a follower handled, when it was delivered.",
			func() float64 { return float64(f.pending.Load()) }),
		gauge("devstatus_bus_follower_up", "1 while a follower's consumer is delivering.", func() float64 {
			if f.up.Load() {
				return 1
			}
			return 0
		}),
	}
}

// Run follows the stream until ctx is done or a handler or Resume returns
// [ErrStopFollowing]; it returns nil then. Every other failure is retried
// with backoff. It returns [ErrFollowerRunning] if called while another Run
// of f is active.
func (f *Follower) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return ErrFollowerRunning
	}
	defer f.running.Store(false)

	var status chan nats.Status
	if f.cfg.Conn != nil {
		status = f.cfg.Conn.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
		defer f.cfg.Conn.RemoveStatusListener(status)
	}
	policy := backoff.Policy{Min: f.cfg.BackoffMin, Max: f.cfg.BackoffMax, Jitter: 0.2}
	failures := 0
	for {
		if !f.waitConnected(ctx, status) {
			return nil
		}
		handledBefore := f.handled.Load()
		err := f.session(ctx, status)
		f.setUp(false, err)
		if errors.Is(err, ErrStopFollowing) || ctx.Err() != nil {
			return nil
		}
		f.restarts.Add(1)
		if f.cfg.OnRestart != nil {
			f.cfg.OnRestart(err)
		}
		if f.handled.Load() > handledBefore {
			failures = 0
		}
		d := policy.Delay(failures)
		failures++
		f.log.Warn("bus: stream consumer ended; resuming", slog.Any("err", err),
			slog.Uint64("after_seq", f.last.Load()), slog.Duration("in", d))
		if backoff.Sleep(ctx, d) != nil {
			return nil
		}
	}
}

func (f *Follower) setUp(up bool, err error) {
	if f.up.Swap(up) != up && f.cfg.OnSession != nil {
		f.cfg.OnSession(up, err)
	}
}

// waitConnected waits until the watched connection is up; false when ctx
// ended first.
func (f *Follower) waitConnected(ctx context.Context, status chan nats.Status) bool {
	if f.cfg.Conn == nil {
		return ctx.Err() == nil
	}
	for !f.cfg.Conn.IsConnected() {
		select {
		case <-ctx.Done():
			return false
		case <-status:
		case <-time.After(250 * time.Millisecond):
		}
	}
	return ctx.Err() == nil
}

// session creates one consumer and handles its messages until it fails,
// stalls, the connection drops or ctx ends.
func (f *Follower) session(ctx context.Context, status chan nats.Status) error {
	cfg := &f.cfg
	after := f.last.Load()
	if cfg.Resume != nil {
		var err error
		if after, err = cfg.Resume(ctx); err != nil {
			return fmt.Errorf("resume: %w", err)
		}
	}
	occ := jetstream.OrderedConsumerConfig{
		FilterSubjects: cfg.FilterSubjects,
		DeliverPolicy:  cfg.DeliverPolicy,
		HeadersOnly:    cfg.HeadersOnly,
	}
	switch {
	case after > 0:
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	case cfg.Resume == nil && cfg.StartSeq > 0:
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cfg.StartSeq
	}
	if cfg.NamePrefix != "" {
		// Unique per consumer: a name reused with another start sequence
		// (a restart within the inactive threshold) is refused.
		occ.NamePrefix = fmt.Sprintf("%s_%08x", cfg.NamePrefix, rand.Uint32())
	}
	octx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	cons, err := cfg.JetStream.OrderedConsumer(octx, cfg.Stream, occ)
	cancel()
	if err != nil {
		return fmt.Errorf("create ordered consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(cfg.PullMaxMessages))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	msgs := make(chan *Msg, cfg.BatchSize)
	errc := make(chan error, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { f.read(it, msgs, errc, done) })
	defer func() {
		close(done)
		it.Stop()
		wg.Wait()
	}()
	f.setUp(true, nil)
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 && cfg.OnCaughtUp != nil {
		cfg.OnCaughtUp()
	}

	var tick <-chan time.Time
	if cfg.StallTimeout > 0 {
		t := time.NewTicker(max(cfg.StallTimeout/4, time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	lastActive := time.Now()
	floor := after // nothing at or below it is handed over
	batch := make([]*Msg, 0, cfg.BatchSize)
	var flush *time.Timer
	if cfg.HandleBatch != nil {
		flush = time.NewTimer(time.Hour)
		flush.Stop()
		defer flush.Stop()
	}
	for {
		var first *Msg
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case s := <-status:
			if s != nats.CONNECTED {
				return errConnLost
			}
			continue
		case <-tick:
			if time.Since(lastActive) < cfg.StallTimeout {
				continue
			}
			stalled, err := f.stalled(ctx, cons)
			if err != nil {
				f.log.Debug("bus: follower stall check failed", slog.Any("err", err))
				continue // the server is unreachable: the connection watch or the consumer handles it
			}
			if stalled {
				f.stalls.Add(1)
				f.log.Warn("bus: stream consumer stalled; replacing it", slog.Uint64("after_seq", f.last.Load()),
					slog.Duration("silent_for", time.Since(lastActive).Round(time.Millisecond)))
				return errFollowStalled
			}
			lastActive = time.Now() // alive and caught up: as good as a heartbeat
			continue
		case first = <-msgs:
		}
		batch = append(batch[:0], first)
		if cfg.HandleBatch != nil && cfg.BatchSize > 1 {
			flush.Reset(cfg.FlushInterval)
		fill:
			for len(batch) < cfg.BatchSize {
				select {
				case m := <-msgs:
					batch = append(batch, m)
				case <-flush.C:
					break fill
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			flush.Stop()
		}
		// Never hand over a message twice (a consumer that restarted
		// itself could deliver again what it already had).
		n := 0
		for _, m := range batch {
			if m.Seq > floor {
				batch[n] = m
				n++
				floor = m.Seq
			}
		}
		batch = batch[:n]
		if n == 0 {
			lastActive = time.Now()
			continue
		}
		var herr error
		if cfg.HandleBatch != nil {
			herr = cfg.HandleBatch(ctx, batch)
		} else {
			herr = cfg.Handle(ctx, batch[0])
		}
		lastActive = time.Now()
		if herr != nil && !errors.Is(herr, ErrStopFollowing) {
			return fmt.Errorf("handler at seq %d: %w", batch[0].Seq, herr)
		}
		lastMsg := batch[n-1]
		f.last.Store(lastMsg.Seq)
		f.pending.Store(lastMsg.Pending)
		f.handled.Add(uint64(n))
		if herr != nil {
			return herr
		}
		if lastMsg.Pending == 0 && cfg.OnCaughtUp != nil {
			cfg.OnCaughtUp()
		}
	}
}

// stalled asks the server about the consumer: stalled when it is gone or
// has messages pending that it does not deliver.
func (f *Follower) stalled(ctx context.Context, cons jetstream.Consumer) (bool, error) {
	ictx, cancel := context.WithTimeout(ctx, f.cfg.OpTimeout)
	defer cancel()
	info, err := cons.Info(ictx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return info.NumPending > 0, nil
}

// read turns the iterator's messages into Msgs until it fails or done is
// closed.
func (f *Follower) read(it jetstream.MessagesContext, out chan<- *Msg, errc chan<- error, done <-chan struct{}) {
	for {
		m, err := it.Next()
		if err == nil {
			var md *jetstream.MsgMetadata
			if md, err = m.Metadata(); err == nil {
				h := m.Headers()
				if len(h) == 0 {
					h = nil
				}
				msg := &Msg{Seq: md.Sequence.Stream, Subject: m.Subject(), Header: h, Data: m.Data(),
					Time: md.Timestamp, Pending: md.NumPending}
				if f.cfg.Prepare != nil {
					f.cfg.Prepare(msg)
				}
				select {
				case out <- msg:
					continue
				case <-done:
					return
				}
			}
			err = fmt.Errorf("message metadata: %w", err)
		} else {
			err = fmt.Errorf("next message: %w", err)
		}
		select {
		case errc <- err:
		default:
		}
		return
	}
}
