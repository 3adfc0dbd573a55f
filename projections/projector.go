package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/clock"
)

// Projection names: the keys of projection_checkpoints, the "projection"
// metric label and the values of [Config.Projections].
const (
	// ProjectionTransitions projects events.TransitionStream into the devices
	// current-status columns and the transitions history.
	ProjectionTransitions = "transitions"
	// ProjectionLiveness projects the device events of events.InputStream
	// (not the ticks) into the devices registry and liveness columns.
	ProjectionLiveness = "liveness"
)

// LivenessFilter is the input-stream filter of the liveness projection: every
// device event of every partition, no clock ticks.
const LivenessFilter = "devstatus.in.*.d.*"

// Config configures a [Projector]. Zero values take the documented defaults.
type Config struct {
	// DB is the Postgres pool, migrated with [Migrate]. Required. Each
	// projection holds at most one connection at a time.
	DB *sqlx.DB
	// JetStream reads the streams (created by pkg/bus). Required.
	JetStream jetstream.JetStream
	// Logger receives progress, retries and dead letters. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics (see metrics.go). Nil: metrics are kept
	// but not registered. A collector already registered by another Projector
	// on the same Registerer is shared.
	Registerer prometheus.Registerer
	// Clock stamps checkpoints' updated_at and dead letters, and measures lag
	// in seconds. It never decides what is projected (event times do).
	// Default clock.NewMonotonic().
	Clock clock.Clock
	// Projections to run, by name. Default both: ProjectionTransitions and
	// ProjectionLiveness.
	Projections []string
	// BatchSize is the most messages applied in one transaction. Default
	// 1000, at most 10000.
	BatchSize int
	// FlushInterval is how long a partial batch waits for more messages
	// before it is applied. Default 50ms.
	FlushInterval time.Duration
	// MaxAttempts is how many times a batch that fails with a data error (a
	// Postgres error that retrying cannot fix, e.g. a NUL byte in text) is
	// tried before it is bisected to set the offending message aside in
	// dead_letters. Default 5.
	MaxAttempts int
	// PoisonRetryDelay is the pause between those attempts. Default 20ms.
	PoisonRetryDelay time.Duration
	// RetryMin and RetryMax bound the exponential backoff (with jitter) while
	// Postgres or JetStream is unreachable. Such failures are retried for as
	// long as they last: nothing is skipped. Defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
	// LagInterval is how often the lag against the stream is measured.
	// Default 2s.
	LagInterval time.Duration
	// SynchronousCommit makes each batch commit wait for its WAL flush.
	// Default false: batches commit with synchronous_commit = off, which
	// Postgres keeps atomic and ordered; a Postgres or OS crash may forget
	// the last ~0.6 s of batches together with their checkpoint, and the
	// projector re-applies them from the stream on restart. Safe because the
	// projection is derived data; it saves a disk flush per batch.
	SynchronousCommit bool
	// StallTimeout: a projection with events pending that has committed
	// nothing for this long reports not ready. Default 30s.
	StallTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = clock.NewMonotonic()
	}
	if len(c.Projections) == 0 {
		c.Projections = []string{ProjectionTransitions, ProjectionLiveness}
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 50 * time.Millisecond
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.PoisonRetryDelay == 0 {
		c.PoisonRetryDelay = 20 * time.Millisecond
	}
	if c.RetryMin == 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 5 * time.Second
	}
	if c.LagInterval == 0 {
		c.LagInterval = 2 * time.Second
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = 30 * time.Second
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.DB == nil {
		errs = append(errs, errors.New("DB is required"))
	}
	if c.JetStream == nil {
		errs = append(errs, errors.New("JetStream is required"))
	}
	for _, n := range c.Projections {
		if n != ProjectionTransitions && n != ProjectionLiveness {
			errs = append(errs, fmt.Errorf("unknown projection %q", n))
		}
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("batch size must be in 1..10000, got %d", c.BatchSize))
	}
	if c.FlushInterval < 0 || c.PoisonRetryDelay < 0 || c.RetryMin < 0 || c.LagInterval < 0 || c.StallTimeout < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("RetryMax %s is below RetryMin %s", c.RetryMax, c.RetryMin))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("MaxAttempts must be at least 1, got %d", c.MaxAttempts))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Projector keeps the Postgres projections up to date with the streams: one
// goroutine per projection reads its stream with an ordered consumer from the
// stored checkpoint + 1 and applies batches, each in one transaction together
// with its checkpoint. Re-applying a message is a no-op, so a crash between
// commit and the next read, a restart or two projectors running at once
// (which should not happen, but is harmless) never duplicates or loses rows.
//
// Failure handling: while Postgres or JetStream is unreachable the batch is
// retried with backoff (nothing skipped, [Projector.Ready] fails); a message
// that cannot be decoded, or that Postgres refuses after MaxAttempts, goes to
// dead_letters with its error and the projection moves on (scenario 9).
type Projector struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	states []*projState
	runs   []func(ctx context.Context) error

	mu      sync.Mutex
	running bool
}

// New checks cfg and returns a Projector; it does no I/O. Errors wrap
// [ErrInvalidConfig], or are the Registerer's.
func New(cfg Config) (*Projector, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Projector{cfg: cfg, log: cfg.Logger.With(slog.String("component", "projector")), m: m}
	for _, name := range slices.Compact(slices.Sorted(slices.Values(cfg.Projections))) {
		switch name {
		case ProjectionTransitions:
			r := newRunner(p, transitionsKind())
			p.states = append(p.states, r.st)
			p.runs = append(p.runs, func(ctx context.Context) error { return r.run(ctx, false) })
		case ProjectionLiveness:
			r := newRunner(p, livenessKind())
			p.states = append(p.states, r.st)
			p.runs = append(p.runs, func(ctx context.Context) error { return r.run(ctx, false) })
		}
	}
	return p, nil
}

// Run projects until ctx is done, then returns nil. It retries every
// failure itself (see [Projector]); it returns an error only when called
// while already running.
func (p *Projector) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("projections: Run called twice")
	}
	p.running = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
		for _, st := range p.states {
			st.stopped()
		}
	}()
	var wg sync.WaitGroup
	for _, run := range p.runs {
		wg.Go(func() { _ = run(ctx) })
	}
	wg.Wait()
	return nil
}

// Ready reports whether every projection is making progress: it returns nil,
// or a *[NotReadyError] (wrapping [ErrNotReady]) while a projection is
// starting, stopped, cannot reach Postgres or JetStream (checked by every
// write and, when idle, every LagInterval), finds its stream behind its
// checkpoint, or has had events pending without a commit for StallTimeout.
// Being behind while catching up is not "not ready": see [Lag].
//
// Its only I/O: when a projection's last write or probe failed with a
// database error, Ready pings Postgres itself (at most 1 s, bounded by ctx)
// and, if the ping succeeds, does not report that error: readiness follows
// Postgres coming back at once, not when the projector's retry backoff next
// runs a batch.
func (p *Projector) Ready(ctx context.Context) error {
	now := p.cfg.Clock.Now()
	var errs []error
	pinged, dbUp := false, false
	for _, st := range p.states {
		err := st.ready(now, p.cfg.StallTimeout, false)
		var nre *NotReadyError
		if errors.As(err, &nre) && nre.Reason == reasonDBUnavailable {
			if !pinged {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				dbUp = p.cfg.DB.PingContext(pctx) == nil
				cancel()
				pinged = true
			}
			if dbUp {
				st.setPingErr(nil)
				err = st.ready(now, p.cfg.StallTimeout, true)
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Lag is one projection's distance from its stream.
type Lag struct {
	// Projection is ProjectionTransitions or ProjectionLiveness.
	Projection string
	// Stream is the stream it reads.
	Stream string
	// Checkpoint is the last stream sequence applied.
	Checkpoint uint64
	// Events is the number of stream sequences after the checkpoint up to the
	// stream's last message for the projection's filter (for the liveness
	// projection the clock ticks in between are counted too, so it is an
	// upper bound). 0 when caught up.
	Events uint64
	// Seconds is the age of the oldest unapplied event (its stored time
	// against the projector's clock); 0 when caught up.
	Seconds float64
	// LastCommit is when the last batch committed (zero: none yet).
	LastCommit time.Time
	// MeasuredAt is when Events and Seconds were last measured.
	MeasuredAt time.Time
}

// Lag returns the lag of each projection, as last measured (every
// LagInterval and after each batch). It does no I/O.
func (p *Projector) Lag() []Lag {
	out := make([]Lag, 0, len(p.states))
	for _, st := range p.states {
		out = append(out, st.lag())
	}
	return out
}

// projState is what Ready and Lag report about one projection.
type projState struct {
	name, stream string

	mu           sync.Mutex
	started      bool
	checkpoint   uint64
	lastCommit   time.Time
	progressAt   time.Time // last commit or (re)start
	dbErr        error     // last write or checkpoint read failed (cleared by the next success)
	pingErr      error     // last probe's Postgres ping failed
	busErr       error
	streamBehind bool
	lagEvents    uint64
	lagSeconds   float64
	measuredAt   time.Time
}

// reasonDBUnavailable is the NotReadyError reason of a database error.
const reasonDBUnavailable = "database unavailable"

// ready is the projection's readiness; dbUp ignores its recorded database
// errors (Postgres answered a ping just now).
func (s *projState) ready(now time.Time, stall time.Duration, dbUp bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.started:
		return &NotReadyError{Projection: s.name, Reason: "not running"}
	case s.dbErr != nil && !dbUp:
		return &NotReadyError{Projection: s.name, Reason: reasonDBUnavailable, Err: s.dbErr}
	case s.pingErr != nil && !dbUp:
		return &NotReadyError{Projection: s.name, Reason: reasonDBUnavailable, Err: s.pingErr}
	case s.busErr != nil:
		return &NotReadyError{Projection: s.name, Reason: "stream unavailable", Err: s.busErr}
	case s.streamBehind:
		return &NotReadyError{Projection: s.name, Reason: "stream behind checkpoint", Err: ErrStreamBehindCheckpoint}
	case s.lagEvents > 0 && now.Sub(s.progressAt) > stall:
		return &NotReadyError{Projection: s.name, Reason: fmt.Sprintf("stalled: %d events pending, no commit for %s", s.lagEvents, now.Sub(s.progressAt).Round(time.Second))}
	}
	return nil
}

func (s *projState) lag() Lag {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Lag{Projection: s.name, Stream: s.stream, Checkpoint: s.checkpoint, Events: s.lagEvents,
		Seconds: s.lagSeconds, LastCommit: s.lastCommit, MeasuredAt: s.measuredAt}
}

func (s *projState) start(now time.Time, checkpoint uint64) {
	s.mu.Lock()
	s.started = true
	s.checkpoint = max(s.checkpoint, checkpoint)
	s.progressAt = now
	s.busErr = nil
	s.mu.Unlock()
}

func (s *projState) stopped() {
	s.mu.Lock()
	s.started = false
	s.mu.Unlock()
}

func (s *projState) setDBErr(err error) {
	s.mu.Lock()
	s.dbErr = err
	s.mu.Unlock()
}

func (s *projState) setPingErr(err error) {
	s.mu.Lock()
	s.pingErr = err
	s.mu.Unlock()
}

func (s *projState) setBusErr(err error) {
	s.mu.Lock()
	s.busErr = err
	s.mu.Unlock()
}

func (s *projState) setStreamBehind(b bool) {
	s.mu.Lock()
	s.streamBehind = b
	s.mu.Unlock()
}

func (s *projState) getCheckpoint() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checkpoint
}

// committed records a batch commit; last is the batch's last message.
func (s *projState) committed(now time.Time, last *rawMsg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checkpoint = max(s.checkpoint, last.Seq)
	s.lastCommit, s.progressAt = now, now
	s.dbErr = nil
	s.measuredAt = now
	s.lagEvents = last.Pending
	if last.Pending == 0 {
		s.lagSeconds = 0
	} else {
		// Upper bound until the next probe: the next event is newer than this one.
		s.lagSeconds = max(0, now.Sub(last.Time).Seconds())
	}
}

func (s *projState) measured(now time.Time, events uint64, seconds float64) {
	s.mu.Lock()
	s.lagEvents, s.lagSeconds, s.measuredAt = events, seconds, now
	s.busErr = nil
	s.mu.Unlock()
}
