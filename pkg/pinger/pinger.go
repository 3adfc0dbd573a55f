package pinger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/backoff"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/registry"
)

// ErrInvalidConfig wraps every configuration error of [New].
var ErrInvalidConfig = errors.New("pinger: invalid config")

// ErrNotReady is wrapped by [Pinger.Ready].
var ErrNotReady = errors.New("pinger: not ready")

// Defaults (flags --ping-timeout, --ping-concurrency).
const (
	DefaultTimeout     = 2 * time.Second
	DefaultConcurrency = 128
	// DefaultConsumer is the durable consumer every pinger instance shares.
	DefaultConsumer = "devstatus-pinger"
	// MaxTimeout bounds Config.Timeout: a probe must end well before the
	// next probe of the same device is due (the first backoff step is 30 s).
	MaxTimeout = 30 * time.Second
)

// Config configures [New]. Zero values take the documented defaults.
type Config struct {
	// Bus is the open JetStream connection. Required.
	Bus *bus.Bus
	// Registry supplies devices' probe URLs (read from KV for every request,
	// so a changed URL is used at once). Required.
	Registry *registry.Registry
	// Policy decides which targets may be probed (checked again after DNS
	// resolution). Zero: the secure default (see package probepolicy).
	Policy probepolicy.Policy
	// Timeout bounds one probe: connect, TLS, redirects, response headers.
	// Default 2s; at most 30s.
	Timeout time.Duration
	// Concurrency is the most probes this instance runs at once; at most as
	// many more requests wait in its client buffer. Default 128.
	Concurrency int
	// InsecureTLS skips certificate verification. Default false.
	InsecureTLS bool
	// Consumer is the durable consumer name, shared by every instance.
	// Default [DefaultConsumer].
	Consumer string
	// PublishTimeout bounds the wait for a result's PubAck. Default 5s.
	PublishTimeout time.Duration
	// AckWait is how long JetStream waits for an instance's ack before it
	// hands the request to another instance. It must exceed Timeout +
	// PublishTimeout (plus a registry read). Default Timeout +
	// PublishTimeout + 20s.
	AckWait time.Duration
	// MaxAckPending caps the requests delivered and not yet acknowledged,
	// over all instances (the consumer's setting). Default 10 000.
	MaxAckPending int
	// QueueInterval is how often the queue-depth gauges are refreshed.
	// Default 5s.
	QueueInterval time.Duration
	// InstanceID names this instance in logs and in the probes' User-Agent.
	// Default host-pid.
	InstanceID string
	// Clock stamps results: CheckedAt (probe start) and At (publish time).
	// Default clock.NewMonotonic().
	Clock clock.Clock
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the Prometheus collectors; nil registers none.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = c.Timeout + c.PublishTimeout + 20*time.Second
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 10_000
	}
	if c.QueueInterval == 0 {
		c.QueueInterval = 5 * time.Second
	}
	if c.InstanceID == "" {
		host, _ := os.Hostname()
		c.InstanceID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.Clock == nil {
		c.Clock = clock.NewMonotonic()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Bus == nil || c.Bus.JS == nil {
		errs = append(errs, errors.New("a bus (Bus) is required"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("a registry (Registry) is required"))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Timeout < time.Millisecond || c.Timeout > MaxTimeout {
		errs = append(errs, fmt.Errorf("ping timeout must be in 1ms..%s, got %s", MaxTimeout, c.Timeout))
	}
	if c.Concurrency < 1 || c.Concurrency > 100_000 {
		errs = append(errs, fmt.Errorf("ping concurrency must be in 1..100000, got %d", c.Concurrency))
	}
	if c.PublishTimeout < 0 {
		errs = append(errs, fmt.Errorf("PublishTimeout must be positive, got %s", c.PublishTimeout))
	}
	if c.AckWait <= c.Timeout+c.PublishTimeout {
		errs = append(errs, fmt.Errorf("AckWait (%s) must exceed the probe timeout plus the publish timeout (%s)", c.AckWait, c.Timeout+c.PublishTimeout))
	}
	if c.MaxAckPending < c.Concurrency {
		errs = append(errs, fmt.Errorf("MaxAckPending (%d) must be at least Concurrency (%d)", c.MaxAckPending, c.Concurrency))
	}
	if c.QueueInterval <= 0 {
		errs = append(errs, errors.New("QueueInterval must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Pinger consumes probe requests and publishes ping results. Create it with
// [New] and run it with [Pinger.Run].
type Pinger struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	prober *Prober

	running  atomic.Bool
	consumer atomic.Bool // the durable consumer exists

	mu   sync.Mutex
	busy map[string]struct{} // devices being probed by this instance
}

// New validates cfg and builds a pinger. Errors wrap [ErrInvalidConfig], or
// are the Registerer's error when a collector is already registered.
func New(cfg Config) (*Pinger, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Pinger{
		cfg: cfg,
		log: cfg.Logger.With(slog.String("component", "pinger"), slog.String("instance", cfg.InstanceID)),
		m:   newMetrics(),
		prober: NewProber(ProberConfig{Policy: cfg.Policy, Timeout: cfg.Timeout, InsecureTLS: cfg.InsecureTLS,
			UserAgent: "devstatus-pinger/1 (" + cfg.InstanceID + ")"}),
		busy: make(map[string]struct{}),
	}
	if err := p.m.register(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("pinger: metrics: %w", err)
	}
	return p, nil
}

// Ready reports whether the pinger is running with its consumer in place.
// Errors wrap [ErrNotReady].
func (p *Pinger) Ready(context.Context) error {
	if !p.running.Load() {
		return fmt.Errorf("%w: Run is not running", ErrNotReady)
	}
	if !p.consumer.Load() {
		return fmt.Errorf("%w: probe consumer not established", ErrNotReady)
	}
	if !p.cfg.Bus.NC.IsConnected() {
		return fmt.Errorf("%w: NATS connection is %s", ErrNotReady, p.cfg.Bus.NC.Status())
	}
	return nil
}

// ensureConsumer creates or updates the shared durable consumer.
func (p *Pinger) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.cfg.Bus.JS.CreateOrUpdateConsumer(ctx, events.ProbeStream, jetstream.ConsumerConfig{
		Durable:       p.cfg.Consumer,
		Description:   "devstatus ping service: probe requests, shared by every pinger instance",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.AckWait,
		MaxAckPending: p.cfg.MaxAckPending,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
}

// Run pulls probe requests and probes until ctx ends, then waits for the
// probes in flight to publish their results (each bounded by Timeout +
// PublishTimeout) and returns nil. Requests buffered but not started when
// ctx ends are handed back (nak) for another instance. It returns an error
// only when it is already running.
func (p *Pinger) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("pinger: Run is already running")
	}
	defer p.running.Store(false)

	var cons jetstream.Consumer
	delay := 100 * time.Millisecond
	for {
		var err error
		if cons, err = p.ensureConsumer(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		p.log.Warn("probe consumer not available; retrying", slog.Any("err", err))
		if backoff.Sleep(ctx, delay) != nil {
			return nil
		}
		delay = min(delay*2, 5*time.Second)
	}
	p.consumer.Store(true)
	defer p.consumer.Store(false)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.watchQueue(ctx, cons) }()
	defer wg.Wait()

	sem := make(chan struct{}, p.cfg.Concurrency)
	delay = 100 * time.Millisecond
	var it jetstream.MessagesContext
	defer func() {
		if it != nil {
			p.handBack(it)
		}
	}()
	for {
		if it == nil {
			var err error
			// The client buffers at most Concurrency requests beyond those
			// being probed; each waits there at most until a probe slot
			// frees (one probe), far less than AckWait.
			if it, err = cons.Messages(jetstream.PullMaxMessages(p.cfg.Concurrency)); err != nil {
				it = nil
				p.m.errors.WithLabelValues("fetch").Inc()
				p.log.Warn("pulling probe requests failed; retrying", slog.Any("err", err))
				if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
					if c, err := p.ensureConsumer(ctx); err == nil {
						cons = c
					}
				}
				if backoff.Sleep(ctx, delay) != nil {
					return nil
				}
				delay = min(delay*2, 5*time.Second)
				continue
			}
			delay = 100 * time.Millisecond
		}
		// Take a request only when a probe slot is free.
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) {
				it.Stop()
				it = nil
				if c, err := p.ensureConsumer(ctx); err == nil {
					cons = c
				}
			}
			p.m.errors.WithLabelValues("fetch").Inc()
			p.log.Warn("pulling probe requests failed", slog.Any("err", err))
			if backoff.Sleep(ctx, delay) != nil {
				return nil
			}
			delay = min(delay*2, 5*time.Second)
			continue
		}
		delay = 100 * time.Millisecond
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p.handle(msg)
		}()
	}
}

// handBack stops pulling and returns the requests buffered in the client
// (nak), so another instance takes them at once instead of after AckWait.
func (p *Pinger) handBack(it jetstream.MessagesContext) {
	it.Drain()
	for {
		msg, err := it.Next(jetstream.NextMaxWait(200 * time.Millisecond))
		if err != nil {
			return
		}
		_ = msg.Nak()
	}
}

// watchQueue refreshes the queue-depth gauges from the consumer's info.
func (p *Pinger) watchQueue(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(p.cfg.QueueInterval)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := cons.Info(ictx)
		cancel()
		if err == nil {
			p.m.pending.Set(float64(info.NumPending))
			p.m.ackPending.Set(float64(info.NumAckPending))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// claim marks a device as being probed by this instance; false when it
// already is.
func (p *Pinger) claim(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.busy[id]; ok {
		return false
	}
	p.busy[id] = struct{}{}
	return true
}

func (p *Pinger) unclaim(id string) {
	p.mu.Lock()
	delete(p.busy, id)
	p.mu.Unlock()
}

// ack acknowledges a request and waits for the server's confirmation, so
// that a request whose result is published is not handed out again.
func (p *Pinger) ack(msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	defer cancel()
	if err := msg.DoubleAck(ctx); err != nil {
		p.m.errors.WithLabelValues("ack").Inc()
		p.log.Warn("ack of a probe request failed; it may be probed again after AckWait", slog.Any("err", err))
	}
}

// handle processes one probe request to the end: ack, term or nak. It runs
// detached from Run's context so that a stopping instance finishes what it
// started (bounded by Timeout + PublishTimeout).
func (p *Pinger) handle(msg jetstream.Msg) {
	req, err := events.DecodeProbeRequest(msg.Data())
	if err != nil {
		p.m.skipped.WithLabelValues("malformed").Inc()
		p.log.Error("dropping a malformed probe request", slog.String("subject", msg.Subject()), slog.Any("err", err))
		_ = msg.Term()
		return
	}
	log := p.log.With(slog.String("device", req.Device))
	if !p.claim(req.Device) {
		// This instance is probing the device right now; that result
		// answers this request too.
		p.m.skipped.WithLabelValues("in_flight").Inc()
		p.ack(msg)
		return
	}
	defer p.unclaim(req.Device)

	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	dev, err := p.cfg.Registry.Get(ctx, req.Device)
	cancel()
	var idErr *registry.InvalidIDError
	switch {
	case errors.As(err, &idErr):
		p.m.skipped.WithLabelValues("malformed").Inc()
		_ = msg.Term()
		return
	case errors.Is(err, registry.ErrNotFound):
		p.m.skipped.WithLabelValues("unknown_device").Inc()
		p.ack(msg)
		return
	case err != nil:
		p.m.errors.WithLabelValues("registry").Inc()
		log.Warn("registry unavailable; the probe request will be retried", slog.Any("err", err))
		_ = msg.NakWithDelay(2 * time.Second)
		return
	case dev.Decommissioned:
		p.m.skipped.WithLabelValues("decommissioned").Inc()
		p.ack(msg)
		return
	case dev.ProbeURL == "":
		p.m.skipped.WithLabelValues("no_probe_url").Inc()
		p.ack(msg)
		return
	}

	checked := p.cfg.Clock.Now().UTC()
	p.m.delay.Observe(max(checked.Sub(req.DueAt), 0).Seconds())
	p.m.inFlight.Inc()
	res := p.prober.Probe(context.Background(), dev.ProbeURL)
	p.m.inFlight.Dec()
	if res.NotProbed() {
		p.m.skipped.WithLabelValues("forbidden").Inc()
		log.Warn("probe target refused by the probe policy; not probed", slog.String("url", dev.ProbeURL), slog.Any("err", res.Err))
		p.ack(msg)
		return
	}
	outcome := "ok"
	if !res.OK {
		outcome = res.Class
	}
	p.m.probes.WithLabelValues(outcome).Inc()
	p.m.latency.WithLabelValues(okLabel(res.OK)).Observe(res.RTT.Seconds())

	at := p.cfg.Clock.Now().UTC()
	if checked.After(at) {
		checked = at // checked_at is never later than the event time
	}
	in := &events.Input{Type: events.TypePingResult, ID: "pg-" + nuid.Next(), Device: req.Device, At: at,
		Ping: &events.PingResult{OK: res.OK, RTTMs: res.RTT.Milliseconds(), CheckedAt: checked, Error: res.Class}}
	if err := p.publish(in); err != nil {
		p.m.errors.WithLabelValues("publish").Inc()
		log.Warn("ping result not acknowledged by JetStream; the probe will be retried", slog.Any("err", err))
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if res.OK {
		log.Debug("probe ok", slog.Int("status", res.Status), slog.Duration("rtt", res.RTT), slog.Int("attempt", req.Attempt))
	} else {
		log.Debug("probe failed", slog.String("class", res.Class), slog.Int("status", res.Status),
			slog.Duration("rtt", res.RTT), slog.Int("attempt", req.Attempt), slog.Any("err", res.Err))
	}
	p.ack(msg)
}

func okLabel(ok bool) string {
	if ok {
		return "true"
	}
	return "false"
}

// publish sends a ping result to the device's input subject and waits for
// the PubAck (at most PublishTimeout).
func (p *Pinger) publish(in *events.Input) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
	defer cancel()
	start := time.Now()
	_, err := p.cfg.Bus.NewInputPublisher().Publish(ctx, in, "")
	if err == nil {
		p.m.publish.Observe(time.Since(start).Seconds())
	}
	return err
}
