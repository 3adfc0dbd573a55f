package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/registry"
)

// ErrInvalidConfig wraps every configuration error of [New].
var ErrInvalidConfig = errors.New("bridge: invalid config")

// ErrNotReady is wrapped by [Bridge.Ready] when the bridge cannot accept
// heartbeats.
var ErrNotReady = errors.New("bridge: not ready")

// Defaults (the flag table of README.md, Configuration).
const (
	DefaultHeartbeatInterval = 30 * time.Second
	DefaultRateMinInterval   = 10 * time.Second
	DefaultRatePerMinute     = 10
	DefaultMaxBodyBytes      = 64 << 10
	DefaultMaxMetrics        = 64
	DefaultMaxMetricBytes    = 4 << 10
	DefaultPublishTimeout    = 5 * time.Second
)

// Config configures [New]. Zero values take the documented defaults, except
// RateMinInterval and RatePerMinute, where 0 turns the limit off (as the
// flags --rate-min-interval / --rate-per-minute do): set them from the flags,
// whose defaults are DefaultRateMinInterval and DefaultRatePerMinute.
type Config struct {
	// Bus is the open JetStream connection. Required.
	Bus *bus.Bus
	// Registry is the device registry over the same bus. Required. Run runs
	// its KV watch: do not call Registry.Run separately.
	Registry *registry.Registry
	// Clock stamps events (the receive time, At) and measures rate limits.
	// Default clock.NewMonotonic(), which never steps: a wall-clock step on
	// the host moves neither event times nor rate limits. Should an injected
	// clock step back, the limiter clamps (see limiter) and events carry the
	// clock's time as it is.
	Clock clock.Clock
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the Prometheus collectors; nil registers none.
	Registerer prometheus.Registerer
	// AdminToken authorises the admin endpoints (bearer). Required.
	AdminToken string
	// Auth tells the role of an admin or viewer bearer token (see
	// pkg/tokens). Default httpx.StaticToken(AdminToken): the admin token
	// only. Changes need RoleAdmin, reads (GET) RoleViewer.
	Auth httpx.Authorizer
	// PingToken authorises POST /v1/devices/{id}/ping (bearer). Required.
	PingToken string
	// HeartbeatInterval is told to devices (heartbeat_interval_s). Default 30s;
	// whole seconds, at least 1s.
	HeartbeatInterval time.Duration
	// GroupHeartbeatIntervals overrides HeartbeatInterval for the devices of
	// a group (registry.Entry.Group → interval); each at least 1s. A group
	// absent from it gets HeartbeatInterval.
	GroupHeartbeatIntervals map[string]time.Duration
	// RateMinInterval is the least time between two accepted heartbeats of a
	// device. 0 = off; negative is invalid.
	RateMinInterval time.Duration
	// RatePerMinute is the most heartbeats of a device accepted in any one
	// minute. 0 = off; negative is invalid.
	RatePerMinute int
	// MaxBodyBytes bounds a request body, in bytes. Default 64 KiB.
	// (POST /v1/devices/import has its own bound, MaxImportBodyBytes.)
	MaxBodyBytes int64
	// ImportParallel is how many registrations of one POST
	// /v1/devices/import run at a time. Default DefaultImportParallel (32).
	ImportParallel int
	// MaxMetrics bounds the number of metric keys in a heartbeat. Default 64.
	MaxMetrics int
	// MaxMetricBytes bounds one metric value's JSON, in bytes. Default 4 KiB.
	MaxMetricBytes int
	// PublishTimeout bounds the wait for a PubAck. Default 5s.
	PublishTimeout time.Duration
	// FeedCheckInterval: the status cache's transitions feed is judged
	// stalled (connected but not delivering) when it has transitions pending
	// and delivers none for two of these intervals; it is then re-created,
	// and the bridge is not ready meanwhile. Default 5s.
	FeedCheckInterval time.Duration
	// ProbePolicy checks the probe URLs set at registration, by PATCH or in
	// heartbeats (see probe.go). Zero: the secure default of package
	// probepolicy.
	ProbePolicy probepolicy.Policy
}

func (c *Config) setDefaults() {
	if c.Clock == nil {
		c.Clock = clock.NewMonotonic()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.ImportParallel == 0 {
		c.ImportParallel = DefaultImportParallel
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxMetrics == 0 {
		c.MaxMetrics = DefaultMaxMetrics
	}
	if c.MaxMetricBytes == 0 {
		c.MaxMetricBytes = DefaultMaxMetricBytes
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.FeedCheckInterval <= 0 {
		c.FeedCheckInterval = 5 * time.Second
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Bus == nil || c.Bus.NC == nil || c.Bus.JS == nil {
		errs = append(errs, errors.New("missing Bus"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("missing Registry"))
	}
	if c.AdminToken == "" {
		errs = append(errs, errors.New("AdminToken is required"))
	}
	if c.PingToken == "" {
		errs = append(errs, errors.New("PingToken is required"))
	}
	if c.HeartbeatInterval < time.Second {
		errs = append(errs, fmt.Errorf("HeartbeatInterval must be at least 1s, got %s", c.HeartbeatInterval))
	}
	for g, d := range c.GroupHeartbeatIntervals {
		if d < time.Second {
			errs = append(errs, fmt.Errorf("GroupHeartbeatIntervals[%q] must be at least 1s, got %s", g, d))
		}
	}
	if c.RateMinInterval < 0 {
		errs = append(errs, fmt.Errorf("RateMinInterval must be >= 0 (0 = off), got %s", c.RateMinInterval))
	}
	if c.RatePerMinute < 0 {
		errs = append(errs, fmt.Errorf("RatePerMinute must be >= 0 (0 = off), got %d", c.RatePerMinute))
	}
	if c.ImportParallel < 1 {
		errs = append(errs, fmt.Errorf("ImportParallel must be positive, got %d", c.ImportParallel))
	}
	if c.MaxBodyBytes < 2 {
		errs = append(errs, fmt.Errorf("MaxBodyBytes must be positive, got %d", c.MaxBodyBytes))
	}
	if c.MaxMetrics < 1 || c.MaxMetricBytes < 1 {
		errs = append(errs, errors.New("MaxMetrics and MaxMetricBytes must be positive"))
	}
	if c.PublishTimeout < 0 {
		errs = append(errs, fmt.Errorf("PublishTimeout must be positive, got %s", c.PublishTimeout))
	}
	if err := c.ProbePolicy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Bridge is the HTTP ingest edge. Create it with [New], mount it with
// [Bridge.Routes] under a mux wrapped by httpx.DeviceIDs, and run
// [Bridge.Run] for its background work.
type Bridge struct {
	cfg Config
	log *slog.Logger
	reg *registry.Registry // admin calls, its watch (Run), readiness
	// hot is the registry as the heartbeat paths see it (see deviceStore);
	// rc applies the reconnect rule through it (reconnect.go).
	hot    deviceStore
	rc     reconnects
	lim    *limiter
	status *statusCache
	m      *metrics

	running      atomic.Bool
	lastAccepted atomic.Int64 // Unix ns (bridge clock) of the last accepted heartbeat
	pub          pubConns     // connections of its own for publishing (pubconn.go)
}

// New builds a bridge. Errors wrap [ErrInvalidConfig], or are the
// Registerer's error when a collector is already registered.
func New(cfg Config) (*Bridge, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	b := &Bridge{
		cfg:    cfg,
		log:    cfg.Logger,
		reg:    cfg.Registry,
		lim:    newLimiter(cfg.RateMinInterval, cfg.RatePerMinute),
		status: newStatusCache(cfg.FeedCheckInterval),
	}
	if err := b.status.newFollower(cfg.Bus.JS, cfg.Logger); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	b.setStore(cfg.Registry)
	b.m = newMetrics(cfg.Clock, cfg.Registry, b.status)
	if err := b.m.register(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("bridge: metrics: %w", err)
	}
	if b.lim.off() {
		b.log.Warn("bridge: per-device rate limiting is off")
	}
	return b, nil
}

// deviceStore is all that the heartbeat paths (the single endpoint, gateway
// batches, ping results) ask of the device registry: look-ups by id and
// token, and one compare-and-swap. A heartbeat enters it at most twice:
// Authenticate (or Lookup, for a batch item) and, only when the cached
// entry says there is a reconnect to tell or a new probe URL to store,
// Swap. A gateway batch adds AuthenticateGateway and Prefetch once per
// batch. *registry.Registry implements it.
type deviceStore interface {
	Authenticate(ctx context.Context, id, token string) (registry.Entry, error)
	Lookup(ctx context.Context, id string) (registry.Entry, error)
	AuthenticateGateway(ctx context.Context, id, token string) error
	Prefetch(ctx context.Context, ids []string, parallel int)
	swapper
}

// setStore makes s the registry of the heartbeat paths.
func (b *Bridge) setStore(s deviceStore) {
	b.hot = s
	b.rc = reconnects{store: s, publish: b.publish, clock: b.cfg.Clock, log: b.log}
}

// Route patterns registered by [Bridge.Routes]. They are method-qualified so
// that they do not conflict with pkg/readapi's GET patterns.
const (
	PatternHeartbeat = "POST /v1/devices/{id}/heartbeat"
	PatternPing      = "POST /v1/devices/{id}/ping"
	PatternRegister  = "POST /v1/devices"
	PatternPatch     = "PATCH /v1/devices/{id}"
	PatternDelete    = "DELETE /v1/devices/{id}"
	PatternReconnect = "POST /v1/devices/{id}/reconnect"
)

// Routes registers the bridge's endpoints on mux. The server must wrap the
// mux with httpx.DeviceIDs so that every device id routes.
func (b *Bridge) Routes(mux httpx.Mux) {
	mux.HandleFunc(PatternHeartbeat, b.m.instrument("heartbeat", b.m.heartbeats, b.handleHeartbeat))
	mux.HandleFunc(PatternPing, b.m.instrument("ping", b.m.pings, b.handlePing))
	mux.HandleFunc(PatternPings, b.m.instrument("pings", nil, b.handlePings))
	mux.HandleFunc(PatternGatewayHeartbeats, b.m.instrument("gateway_heartbeats", nil, b.handleGatewayHeartbeats))
	auth := b.cfg.Auth
	if auth == nil {
		auth = httpx.StaticToken(b.cfg.AdminToken)
	}
	guard := func(need httpx.Role) func(string, http.HandlerFunc) http.HandlerFunc {
		return func(route string, h http.HandlerFunc) http.HandlerFunc {
			return b.m.instrument(route, nil, httpx.RequireRole(auth, need, h).ServeHTTP)
		}
	}
	admin, viewer := guard(httpx.RoleAdmin), guard(httpx.RoleViewer)
	mux.HandleFunc(PatternRegister, admin("register", b.handleRegister))
	mux.HandleFunc(PatternImport, admin("import", b.handleImport))
	mux.HandleFunc(PatternGatewayRegister, admin("register_gateway", b.handleGatewayRegister))
	mux.HandleFunc(PatternPatch, admin("patch", b.handlePatch))
	mux.HandleFunc(PatternDelete, admin("decommission", b.handleDecommission))
	mux.HandleFunc(PatternReconnect, admin("reconnect", b.handleReconnect))
	mux.HandleFunc(PatternRekey, admin("rekey", b.handleRekey))
	mux.HandleFunc(PatternEvents, viewer("events", b.handleEvents))
	mux.HandleFunc(PatternGatewayList, viewer("list_gateways", b.handleGatewayList))
	mux.HandleFunc(PatternGatewayRekey, admin("rekey_gateway", b.handleGatewayRekey))
	mux.HandleFunc(PatternGatewayDelete, admin("delete_gateway", b.handleGatewayDelete))
}

// Ready reports whether the bridge can accept heartbeats: NATS is connected
// and JetStream answers, the registry's KV watch is established, and the
// status cache has caught up with the transitions stream. Errors wrap
// [ErrNotReady].
func (b *Bridge) Ready(ctx context.Context) error {
	nc := b.cfg.Bus.NC
	if !nc.IsConnected() {
		return fmt.Errorf("%w: NATS connection is %s", ErrNotReady, nc.Status())
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	if _, err := b.cfg.Bus.JS.AccountInfo(ctx); err != nil {
		return fmt.Errorf("%w: JetStream: %w", ErrNotReady, err)
	}
	if !b.running.Load() {
		return fmt.Errorf("%w: Run is not running", ErrNotReady)
	}
	if !b.reg.Watching() {
		return fmt.Errorf("%w: registry watch not established", ErrNotReady)
	}
	if !b.status.ready.Load() || !b.status.alive.Load() {
		return fmt.Errorf("%w: status cache has not caught up with the transitions stream", ErrNotReady)
	}
	return nil
}

// Run does the bridge's background work until ctx is done, then returns nil:
// the registry's KV watch (cache invalidation), the transitions feed of the
// status cache, sweeping idle rate limiters, and the "ingest stopped" watch
// (a warning when no heartbeat was accepted for two heartbeat intervals after
// some were). It returns an error only if it is already running.
func (b *Bridge) Run(ctx context.Context) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("bridge: Run is already running")
	}
	defer b.running.Store(false)
	if err := b.pub.open(b.cfg.Bus); err != nil {
		b.log.Warn("bridge: publishing on the shared connection", slog.Any("err", err))
	}
	defer b.pub.close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := b.reg.Run(ctx); err != nil {
			b.log.Error("bridge: registry watch", slog.Any("err", err))
		}
	}()
	go func() {
		defer wg.Done()
		b.status.feed(ctx)
	}()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	var lastSweep time.Time
	stopped := false
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-tick.C:
			now := b.cfg.Clock.Now()
			if now.Sub(lastSweep) >= 30*time.Second {
				b.lim.sweep(now)
				lastSweep = now
			}
			stopped = b.checkIngest(now, stopped)
		}
	}
}

// checkIngest logs once when ingest stops and once when it resumes
// (scenario 13: when everyone goes silent, the observer is the suspect).
func (b *Bridge) checkIngest(now time.Time, stopped bool) bool {
	last := b.lastAccepted.Load()
	if last == 0 {
		return stopped
	}
	silence := now.Sub(time.Unix(0, last))
	switch {
	case !stopped && silence > 2*b.cfg.HeartbeatInterval:
		b.log.Warn("bridge: ingest stopped: no heartbeat accepted", slog.Int64("for_s", int64(silence/time.Second)))
		return true
	case stopped && silence <= 2*b.cfg.HeartbeatInterval:
		b.log.Info("bridge: ingest resumed")
		return false
	}
	return stopped
}
