// Package ticker publishes clock events: every period, one tick per input
// partition, stamped with the tick time. Ticks are how time reaches the
// partition workers (time is an input, never read from a clock), so timeouts are
// detected within one period and replaying the log reproduces them.
//
// Several ticker instances may run: a tick's Nats-Msg-Id is derived from its
// partition and its time truncated to the period, so JetStream's duplicate
// window keeps one. The ticker must not decide anything about devices.
package ticker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
)

// ErrInvalidConfig wraps every configuration error of [New].
var ErrInvalidConfig = errors.New("ticker: invalid config")

// Config configures a [Ticker].
type Config struct {
	// Bus is the open JetStream connection (required).
	Bus *bus.Bus
	// Period between ticks (--tick). Default 1s; at least 1ms.
	Period time.Duration
	// Clock stamps ticks. Default clock.NewMonotonic() (immune to wall-clock steps).
	Clock clock.Clock
	// PublishTimeout bounds one round of publishes. Default Period, at least 1s.
	PublishTimeout time.Duration
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Registerer for Prometheus metrics; nil registers nowhere.
	Registerer prometheus.Registerer
}

// Ticker publishes ticks. Create with [New], run with [Ticker.Run].
type Ticker struct {
	cfg       Config
	published prometheus.Counter
	failed    prometheus.Counter
}

// New validates cfg. Errors wrap [ErrInvalidConfig].
func New(cfg Config) (*Ticker, error) {
	if cfg.Bus == nil {
		return nil, fmt.Errorf("%w: Bus is required", ErrInvalidConfig)
	}
	if cfg.Period == 0 {
		cfg.Period = time.Second
	}
	if cfg.Period < time.Millisecond {
		return nil, fmt.Errorf("%w: period %s is shorter than 1ms", ErrInvalidConfig, cfg.Period)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.NewMonotonic()
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = max(cfg.Period, time.Second)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Ticker{cfg: cfg,
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_ticks_published_total", Help: "Clock ticks published (one per partition per period)."}),
		failed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_tick_publish_errors_total", Help: "Tick rounds that could not be published."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(t.published, t.failed)
	}
	return t, nil
}

// Tick publishes one tick per partition at time at (truncated to the
// period) and waits for every PubAck.
func (t *Ticker) Tick(ctx context.Context, at time.Time) error {
	at = at.Truncate(t.cfg.Period).UTC()
	ctx, cancel := context.WithTimeout(ctx, t.cfg.PublishTimeout)
	defer cancel()
	pub := t.cfg.Bus.NewInputPublisher()
	futures := make([]jetstream.PubAckFuture, 0, t.cfg.Bus.Partitions())
	for p := 0; p < t.cfg.Bus.Partitions(); p++ {
		id := fmt.Sprintf("tick-%d-%d", p, at.UnixNano())
		f, err := pub.PublishTickAsync(p, &events.Input{Type: events.TypeTick, ID: id, At: at})
		if err != nil {
			return fmt.Errorf("ticker: publish: %w", err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
			t.published.Inc()
		case err := <-f.Err():
			return fmt.Errorf("ticker: publish: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("ticker: waiting for acks: %w", ctx.Err())
		}
	}
	return nil
}

// Run publishes a round of ticks every period until ctx ends, then returns
// nil. A round that fails is logged and skipped: timeouts are stamped with
// the deadline they crossed, so a missed tick delays detection but does not
// change any transition.
func (t *Ticker) Run(ctx context.Context) error {
	log := t.cfg.Logger.With(slog.String("component", "ticker"))
	tk := time.NewTicker(t.cfg.Period)
	defer tk.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
		if err := t.Tick(ctx, t.cfg.Clock.Now()); err != nil {
			t.failed.Inc()
			if !failing && ctx.Err() == nil {
				log.Warn("ticks not published; retrying every period", slog.Any("err", err))
			}
			failing = true
			continue
		}
		if failing {
			log.Info("ticks published again")
			failing = false
		}
	}
}
