package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
)

// This file is the outage hold's fleet-wide side (the partitions apply it,
// partition.go): the coordinator that decides a hold starts or ends, the view
// that follows the hold's state for the read side, and the operator's
// release. The decision is the only part that is not replayed: it becomes an
// input event (events.TypeOutageHoldStarted / Ended) on every partition's
// hold subject, and from there on everything is the log.

// HoldLeaseKey is the key of the coordinator's lease in the lease bucket: one
// coordinator decides for the whole fleet.
const HoldLeaseKey = "outage-hold"

// HoldState is the outage hold as the log says (partition 0's hold subject:
// every partition receives the same events).
type HoldState struct {
	// Active: a hold is on.
	Active bool
	// Since is when the active hold started (zero when none is on).
	Since time.Time
	// Reason is why the active hold started, or why the last one ended.
	Reason string
	// Ended is when the last hold ended (zero: never).
	Ended time.Time
}

func holdStateOf(in *events.Input) HoldState {
	switch in.Type {
	case events.TypeOutageHoldStarted:
		return HoldState{Active: true, Since: in.At, Reason: in.Hold.Reason}
	case events.TypeOutageHoldEnded:
		return HoldState{Reason: in.Hold.Reason, Ended: in.At}
	}
	return HoldState{}
}

// HoldView follows the outage hold's state (the last hold event of partition
// 0) for the read side: summary, live stream, metrics. Create with
// [NewHoldView], run with [HoldView.Run]; its methods are safe for
// concurrent use.
type HoldView struct {
	js  jetstream.JetStream
	log *slog.Logger

	mu      sync.Mutex
	st      HoldState
	changed chan struct{}
	ready   bool

	active prometheus.Gauge
	since  prometheus.Gauge
}

// NewHoldView returns a view reading js's input stream. Its metrics
// (devstatus_outage_hold_active, devstatus_outage_hold_since_seconds) are
// registered on reg unless nil.
func NewHoldView(js jetstream.JetStream, log *slog.Logger, reg prometheus.Registerer) *HoldView {
	if log == nil {
		log = slog.Default()
	}
	v := &HoldView{js: js, log: log.With(slog.String("component", "outage_hold_view")), changed: make(chan struct{}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_outage_hold_active",
			Help: "1 while an outage hold is on (no device becomes disconnected), else 0."}),
		since: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_outage_hold_since_seconds",
			Help: "Unix time the active outage hold started; 0 when none is on."}),
	}
	if reg != nil {
		reg.MustRegister(v.active, v.since)
	}
	return v
}

// State returns the hold's state and a channel closed at its next change.
func (v *HoldView) State() (HoldState, <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st, v.changed
}

// Ready reports whether the view has read the stream once (before, State
// says "no hold").
func (v *HoldView) Ready() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ready
}

func (v *HoldView) set(st HoldState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ready = true
	if st == v.st {
		return
	}
	v.st = st
	close(v.changed)
	v.changed = make(chan struct{})
	if st.Active {
		v.active.Set(1)
		v.since.Set(float64(st.Since.UnixNano()) / 1e9)
	} else {
		v.active.Set(0)
		v.since.Set(0)
	}
}

// Run follows partition 0's hold subject (from its last event, with a
// bus.Follower: a lost consumer is replaced after a backoff) until ctx
// ends. It returns nil when ctx ends.
func (v *HoldView) Run(ctx context.Context) error {
	f, err := bus.NewFollower(bus.FollowConfig{Name: "outage_hold_view", JetStream: v.js, Stream: events.InputStream,
		FilterSubjects: []string{events.HoldSubject(0)}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, Logger: v.log,
		Handle: func(_ context.Context, m *bus.Msg) error {
			in, err := events.DecodeInput(m.Data)
			if err != nil || !in.Type.IsHold() {
				v.log.Warn("outage hold view: skipping an event that is not a hold event", slog.Uint64("seq", m.Seq), slog.Any("err", err))
				return nil
			}
			v.set(holdStateOf(in))
			return nil
		},
		OnCaughtUp: func() { // no hold event at all: "no hold", now known
			v.mu.Lock()
			v.ready = true
			v.mu.Unlock()
		},
	})
	if err != nil {
		return err
	}
	return f.Run(ctx)
}

// publishHold publishes one hold event on every partition's hold subject,
// each with the Nats-Msg-Id hold-<start|end>-<p>-<unix ns of the hold's
// start> (JetStream deduplicates per stream, hence the partition: a
// coordinator taking over, or a release racing the coordinator's end,
// publishes the same ids for the same hold). It retries each partition until
// ctx ends, partition 0 last.
func publishHold(ctx context.Context, js jetstream.JetStream, partitions int, in *events.Input, since time.Time) error {
	kind := "start"
	if in.Type == events.TypeOutageHoldEnded {
		kind = "end"
	}
	// Partition 0 last: the view follows partition 0, so once it shows
	// the event every partition's log holds it.
	for p := partitions - 1; p >= 0; p-- {
		e := *in
		e.ID = "hold-" + kind + "-" + strconv.Itoa(p) + "-" + strconv.FormatInt(since.UnixNano(), 10)
		data, err := events.EncodeInput(&e)
		if err != nil {
			return fmt.Errorf("worker: encode hold event: %w", err)
		}
		for backoff := 50 * time.Millisecond; ; backoff = min(backoff*2, 2*time.Second) {
			if _, err = js.Publish(ctx, events.HoldSubject(p), data, jetstream.WithMsgID(e.ID)); err == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("worker: publish hold event to partition %d: %w", p, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
		}
	}
	return nil
}

// ErrNoHold is returned by [ReleaseHold] when no hold is on.
var ErrNoHold = errors.New("worker: no outage hold is on")

// ReleaseHold ends the active outage hold as of at on behalf of actor: it
// publishes outage_hold_ended on every partition. The partitions apply it in
// their log order (so it takes effect moments later); a device still silent
// then becomes disconnected at at + disconnect_after at the earliest. It
// returns the state that was released, or [ErrNoHold].
func ReleaseHold(ctx context.Context, b *bus.Bus, view *HoldView, actor string, at time.Time) (HoldState, error) {
	st, _ := view.State()
	if !st.Active {
		return st, ErrNoHold
	}
	if at.Before(st.Since) {
		at = st.Since
	}
	in := &events.Input{Type: events.TypeOutageHoldEnded, At: at.UTC(), Actor: actor,
		Hold: &events.OutageHold{Reason: "released by " + actor, Since: st.Since}}
	return st, publishHold(ctx, b.JS, b.Partitions(), in, st.Since)
}

// HoldConfig configures a [HoldCoordinator].
type HoldConfig struct {
	// Bus is the open JetStream connection (required).
	Bus *bus.Bus
	// Fraction: a hold starts when more than this share of the devices
	// that were connected went silent (connected → temporarily_offline)
	// within one Window, and ends when the share of the held devices still
	// silent falls below it. Default 0.5; must be in (0, 1).
	Fraction float64
	// MinDevices: a hold needs at least this many devices gone silent
	// within the window. Default 10.
	MinDevices int
	// Window is the span within which the silences count together: the
	// default offline_after. Default 40s.
	Window time.Duration
	// InstanceID names this instance in the lease and logs (required).
	InstanceID string
	// LeaseTTL must match the lease bucket's TTL. Default 10s.
	LeaseTTL time.Duration
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Registerer for devstatus_outage_holds_total; nil registers nowhere.
	Registerer prometheus.Registerer
}

// HoldCoordinator decides the fleet-wide outage hold. One instance is active
// (the lease [HoldLeaseKey]); it follows the transitions stream from each
// device's last transition, counts connected devices and the devices that
// went silent within one window, and publishes the hold's start and end as
// input events. Its own time is the log's (the transitions' observed_at),
// never the wall clock.
type HoldCoordinator struct {
	cfg    HoldConfig
	log    *slog.Logger
	view   *HoldView
	events *prometheus.CounterVec
}

// NewHoldCoordinator validates cfg; the coordinator reads the hold's state
// from view (which the caller runs). Errors wrap [ErrInvalidConfig].
func NewHoldCoordinator(cfg HoldConfig, view *HoldView) (*HoldCoordinator, error) {
	if cfg.Fraction == 0 {
		cfg.Fraction = 0.5
	}
	if cfg.MinDevices == 0 {
		cfg.MinDevices = 10
	}
	if cfg.Window == 0 {
		cfg.Window = 40 * time.Second
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var errs []error
	if cfg.Bus == nil || view == nil {
		errs = append(errs, errors.New("the bus and the view are required"))
	}
	if cfg.InstanceID == "" {
		errs = append(errs, errors.New("InstanceID is required"))
	}
	if cfg.Fraction <= 0 || cfg.Fraction >= 1 {
		errs = append(errs, fmt.Errorf("outage hold fraction must be in (0, 1), got %g", cfg.Fraction))
	}
	if cfg.MinDevices < 1 || cfg.Window <= 0 {
		errs = append(errs, fmt.Errorf("outage hold min devices must be >= 1 and window positive, got %d and %s", cfg.MinDevices, cfg.Window))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	c := &HoldCoordinator{cfg: cfg, view: view, log: cfg.Logger.With(slog.String("component", "outage_hold"), slog.String("instance", cfg.InstanceID)),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_outage_holds_total",
			Help: "Outage hold events published by this instance's coordinator, by event (started, ended)."}, []string{"event"})}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.events)
	}
	return c, nil
}

// Run takes the coordinator lease when it is free and coordinates while it
// holds it, until ctx ends; it returns nil then.
func (c *HoldCoordinator) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.LeaseTTL / 3)
	defer t.Stop()
	for ctx.Err() == nil {
		l, err := acquireLeaseKey(ctx, c.cfg.Bus.Leases, HoldLeaseKey, c.cfg.InstanceID, c.cfg.LeaseTTL)
		if err == nil {
			c.runOwned(ctx, l)
		} else if !errors.Is(err, errLeaseHeld) && ctx.Err() == nil {
			c.log.Warn("outage hold lease acquire failed", slog.Any("err", err))
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return nil
}

func (c *HoldCoordinator) runOwned(ctx context.Context, l *lease) {
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	kept := make(chan struct{})
	go func() { defer close(kept); l.keep(cctx, func(err error) { cancel(err) }) }()
	c.log.Info("outage hold coordinator active")
	err := c.coordinate(cctx)
	cancel(nil)
	<-kept
	l.release(context.WithoutCancel(ctx))
	if ctx.Err() == nil {
		c.log.Warn("outage hold coordinator stopped", slog.Any("err", err), slog.Any("cause", context.Cause(cctx)))
	}
}

// fleet is the coordinator's picture of the fleet, from the transitions.
type fleet struct {
	status map[string]events.Status
	// offAt is when each device last went connected → temporarily_offline.
	offAt     map[string]time.Time
	connected int
	now       time.Time
	// held are the devices the active hold covers (silent at its start or
	// gone silent since).
	held map[string]bool
}

func (f *fleet) apply(sc *events.StatusChanged) {
	prev, seen := f.status[sc.Device]
	if seen && prev == events.StatusConnected {
		f.connected--
	}
	f.status[sc.Device] = sc.To
	if sc.To == events.StatusConnected {
		f.connected++
	}
	if sc.From == events.StatusConnected && sc.To == events.StatusTemporarilyOffline {
		f.offAt[sc.Device] = sc.At
		if f.held != nil {
			f.held[sc.Device] = true
		}
	}
	if sc.ObservedAt.After(f.now) {
		f.now = sc.ObservedAt
	}
}

// recentSilent lists the devices still temporarily_offline that went silent
// after from.
// Entries older than old are dropped (they can never count again).
func (f *fleet) recentSilent(from, old time.Time) []string {
	var out []string
	for id, at := range f.offAt {
		if !at.After(old) {
			delete(f.offAt, id)
			continue
		}
		if at.After(from) && f.status[id] == events.StatusTemporarilyOffline {
			out = append(out, id)
		}
	}
	return out
}

func (c *HoldCoordinator) coordinate(ctx context.Context) error {
	fl := &fleet{status: map[string]events.Status{}, offAt: map[string]time.Time{}}
	n := 0
	f, err := bus.NewFollower(bus.FollowConfig{Name: "outage_hold", JetStream: c.cfg.Bus.JS, Stream: events.TransitionStream,
		FilterSubjects: []string{events.TransitionSubjects}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		PullMaxMessages: 1000, Logger: c.log,
		Handle: func(ctx context.Context, m *bus.Msg) error {
			// An undecodable transition says nothing about the fleet (the
			// projector reports it): skipped.
			if sc, err := events.DecodeStatusChanged(m.Data); err == nil {
				fl.apply(sc)
			}
			if n++; m.Pending == 0 || n%1000 == 0 { // judge at the end of a burst (and every 1000 in a long one)
				return c.judge(ctx, fl)
			}
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("worker: outage hold follower: %w", err)
	}
	return f.Run(ctx)
}

// judge applies the rule to the fleet as it stands and publishes a start or
// an end when it fires.
func (c *HoldCoordinator) judge(ctx context.Context, f *fleet) error {
	st, _ := c.view.State()
	if !st.Active {
		f.held = nil
		from := f.now.Add(-c.cfg.Window)
		if st.Ended.After(from) {
			from = st.Ended // silences a hold already covered do not start another
		}
		silent := f.recentSilent(from, f.now.Add(-c.cfg.Window))
		if len(silent) < c.cfg.MinDevices || float64(len(silent)) <= c.cfg.Fraction*float64(f.connected+len(silent)) {
			return nil
		}
		reason := fmt.Sprintf("%d of %d connected devices went silent within %s", len(silent), f.connected+len(silent), c.cfg.Window)
		in := &events.Input{Type: events.TypeOutageHoldStarted, At: f.now.UTC(),
			Hold: &events.OutageHold{Reason: reason, Silent: len(silent), Connected: f.connected}}
		if err := publishHold(ctx, c.cfg.Bus.JS, c.cfg.Bus.Partitions(), in, in.At); err != nil {
			return err
		}
		c.events.WithLabelValues("started").Inc()
		c.log.Warn("outage hold started: no device becomes disconnected while it lasts", slog.String("reason", reason), slog.Time("since", in.At))
		c.view.set(holdStateOf(in)) // judged again before the view catches up: do not start twice
		f.held = make(map[string]bool, len(silent))
		for _, id := range silent {
			f.held[id] = true
		}
		return nil
	}
	if f.held == nil { // a hold this instance did not start (takeover): it covers who is silent now
		f.held = map[string]bool{}
		for id, s := range f.status {
			if s == events.StatusTemporarilyOffline {
				f.held[id] = true
			}
		}
	}
	still := 0
	for id := range f.held {
		if f.status[id] != events.StatusConnected {
			still++
		}
	}
	if len(f.held) == 0 || float64(still) >= c.cfg.Fraction*float64(len(f.held)) {
		return nil
	}
	reason := fmt.Sprintf("recovered: %d of %d held devices still silent", still, len(f.held))
	at := f.now
	if at.Before(st.Since) {
		at = st.Since
	}
	in := &events.Input{Type: events.TypeOutageHoldEnded, At: at.UTC(),
		Hold: &events.OutageHold{Reason: reason, Since: st.Since, Silent: still, Connected: f.connected}}
	if err := publishHold(ctx, c.cfg.Bus.JS, c.cfg.Bus.Partitions(), in, st.Since); err != nil {
		return err
	}
	c.events.WithLabelValues("ended").Inc()
	c.log.Warn("outage hold ended", slog.String("reason", reason), slog.Time("since", st.Since), slog.Time("at", in.At))
	c.view.set(holdStateOf(in))
	f.held = nil
	return nil
}
