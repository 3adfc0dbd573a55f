// Package service assembles devstatus's roles (bridge, worker, ticker,
// projector, read API, pinger) into one process around one bus connection and one
// HTTP server, starts them, reports health, and stops them in order. The
// devstatus binary and the end-to-end tests both use it.
//
// It owns wiring and lifecycle only: it must not contain device logic.
package service

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/openapi"
	"github.com/devstatus/devstatus/pkg/ticker"
	"github.com/devstatus/devstatus/pkg/tokens"
	"github.com/devstatus/devstatus/pkg/worker"
)

// Role names.
const (
	RoleBridge    = "bridge"
	RoleWorker    = "worker"
	RoleTicker    = "ticker"
	RoleProjector = "projector"
	RoleAPI       = "api"
	RolePinger    = "pinger"
)

// AllRoles is what --roles all means.
var AllRoles = []string{RoleBridge, RoleWorker, RoleTicker, RoleProjector, RoleAPI, RolePinger}

// ErrInvalidConfig wraps configuration errors of [New].
var ErrInvalidConfig = errors.New("service: invalid config")

// Config configures a [Service]. Zero values take the documented defaults.
type Config struct {
	// HTTPAddr to listen on; "127.0.0.1:0" picks a free port. Default ":8080".
	HTTPAddr string
	// TLSCertFile and TLSKeyFile (PEM) make HTTPAddr serve HTTPS (TLS 1.2 or
	// later, HTTP/1.1) instead of plain HTTP; both or neither. Read once at
	// start: restart to use a renewed certificate.
	TLSCertFile, TLSKeyFile string
	// MetricsAddr, when set, serves /metrics (and with Pprof /debug/pprof/)
	// on a listener of its own, plain HTTP, and /metrics is no longer served
	// on HTTPAddr. Empty (the default): /metrics on HTTPAddr, no pprof.
	MetricsAddr string
	// Pprof serves net/http/pprof at /debug/pprof/ on MetricsAddr (which it
	// requires). Default false.
	Pprof bool
	// Bus configures the JetStream connection (embedded when Bus.URL is empty).
	Bus bus.Config
	// DatabaseURL of Postgres; required by the projector and api roles.
	DatabaseURL string
	// Roles to run; nil means [AllRoles].
	Roles []string
	// Thresholds of the state machine.
	Thresholds worker.Thresholds
	// ProbeAfter is how long after a device's last heartbeat the worker asks
	// for the first probe (negative: never). Default 35s.
	ProbeAfter time.Duration
	// PingMaxInterval caps the backoff between probes of a silent device.
	// Default 5 min.
	PingMaxInterval time.Duration
	// Pinger configures the pinger role and the probe policy (see
	// pinger.go).
	Pinger PingerConfig
	// Tick period of the ticker role. Default 1s.
	Tick time.Duration
	// HeartbeatInterval told to devices. Default 30s.
	HeartbeatInterval time.Duration
	// GroupHeartbeatIntervals: the interval told to the devices of a group,
	// overriding HeartbeatInterval (bridge.Config.GroupHeartbeatIntervals).
	GroupHeartbeatIntervals map[string]time.Duration
	// RateMinInterval / RatePerMinute per device; 0 turns each off.
	RateMinInterval time.Duration
	RatePerMinute   int
	// AdminToken and PingToken are the bearer tokens (required with the
	// bridge or api roles).
	AdminToken, PingToken string
	// Migrate applies the Postgres schema at start.
	Migrate bool
	// HistoryRetention: with the projector role, transition history rows
	// older than this are pruned every HistoryPruneInterval (each device's
	// latest row is kept; see projections.Pruner). 0: kept forever.
	HistoryRetention time.Duration
	// HistoryPruneInterval between prune rounds. Default 1h.
	HistoryPruneInterval time.Duration
	// InstanceID names this instance in leases and logs.
	InstanceID string
	// WorkerPartitions limits the partitions this worker may own (nil: all).
	WorkerPartitions []int
	// Clock stamps heartbeats and ticks. Default clock.NewMonotonic().
	Clock clock.Clock
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// OutageHold configures the hold on disconnects when most of the fleet
	// goes silent together (on by default).
	OutageHold OutageHoldConfig
}

// OutageHoldConfig configures the outage hold (worker.HoldConfig). Zero
// values take the defaults.
type OutageHoldConfig struct {
	// Disabled turns the hold coordinator off: no hold ever starts (the
	// partitions still apply hold events already in the log).
	Disabled bool
	// Fraction of the connected devices that must go silent together.
	// Default 0.5.
	Fraction float64
	// MinDevices gone silent together. Default 10.
	MinDevices int
	// Window within which the silences count together. Default: the
	// default offline_after.
	Window time.Duration
}

// Service is a running devstatus process.
type Service struct {
	cfg    Config
	log    *slog.Logger
	reg    *prometheus.Registry
	Bus    *bus.Bus
	DB     *sql.DB
	Worker *worker.Worker
	// Hold follows the outage hold's state (nil with neither the worker
	// nor the api role).
	Hold     *worker.HoldView
	listener net.Listener
	server   *http.Server
	metricsL net.Listener
	metricsS *http.Server
	mux      *httpx.RecordingMux
	// Tokens is the API token store (nil without the bridge and api roles).
	Tokens *tokens.Store

	cancel context.CancelFunc
	runCtx context.Context
	wg     sync.WaitGroup
	errs   chan error
	// readyLog spaces out the "not ready" log lines of /readyz.
	readyLog rate.Sometimes
	ready    []readyCheck
}

// readyCheck is one named condition of /readyz.
type readyCheck struct {
	name  string
	check func(context.Context) error
}

func (c *Config) setDefaults() {
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8080"
	}
	if c.Roles == nil {
		c.Roles = slices.Clone(AllRoles)
	}
	if c.Tick == 0 {
		c.Tick = time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 30 * time.Second
	}
	if c.Clock == nil {
		c.Clock = clock.NewMonotonic()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Bus.Logger == nil {
		c.Bus.Logger = c.Logger
	}
}

// Has reports whether the service runs role.
func (c *Config) Has(role string) bool { return slices.Contains(c.Roles, role) }

func (c *Config) validate() error {
	var errs []error
	for _, r := range c.Roles {
		if !slices.Contains(AllRoles, r) {
			errs = append(errs, fmt.Errorf("unknown role %q", r))
		}
	}
	if (c.Has(RoleBridge) || c.Has(RoleAPI)) && c.AdminToken == "" {
		errs = append(errs, errors.New("an admin token is required with the bridge or api role"))
	}
	if (c.Has(RoleProjector) || c.Has(RoleAPI)) && c.DatabaseURL == "" {
		errs = append(errs, errors.New("a database URL is required with the projector or api role (set DATABASE_URL)"))
	}
	if err := c.Thresholds.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.HistoryRetention < 0 || c.HistoryPruneInterval < 0 {
		errs = append(errs, errors.New("history retention and prune interval must not be negative"))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("a TLS certificate needs its key and a key its certificate"))
	}
	if c.Pprof && c.MetricsAddr == "" {
		errs = append(errs, errors.New("pprof is served only on the metrics listener: set a metrics address"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Start opens the bus and the database, builds the roles, starts them and the
// HTTP server, and returns. Errors wrap [ErrInvalidConfig] or say which part
// could not start; everything started is stopped again on error.
func Start(ctx context.Context, cfg Config) (_ *Service, err error) {
	if cfg.Thresholds.Default.OfflineAfter == 0 {
		cfg.Thresholds.Default.OfflineAfter = 40 * time.Second
		cfg.Thresholds.Default.DisconnectAfter = 300 * time.Second
		cfg.Thresholds.Default.PingIgnoreWithin = 30 * time.Second
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry(), errs: make(chan error, 16),
		readyLog: rate.Sometimes{First: 1, Interval: 10 * time.Second}}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoGauge(ReadBuildInfo()))
	defer func() {
		if err != nil {
			s.Stop(context.Background())
		}
	}()

	if s.Bus, err = bus.Open(ctx, cfg.Bus); err != nil {
		return nil, err
	}
	s.addReady("nats", func(context.Context) error {
		if st := s.Bus.NC.Status(); st != nats.CONNECTED {
			return fmt.Errorf("nats: %s", st)
		}
		return nil
	})

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel, s.runCtx = cancel, runCtx
	mux := httpx.NewRecordingMux()
	s.mux = mux

	if err := s.startRoles(ctx, runCtx, mux); err != nil {
		return nil, err
	}
	mux.Handle(openapi.Pattern, openapi.Handler())

	metrics := promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
	if cfg.MetricsAddr == "" {
		mux.Handle("GET /metrics", metrics)
	} else if err := s.startMetrics(ctx, metrics); err != nil {
		return nil, err
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.handleReady)

	if err := s.startHTTP(ctx, mux.ServeMux); err != nil {
		return nil, err
	}
	return s, nil
}

// run starts a role's Run on its own goroutine.
func (s *Service) run(ctx context.Context, name string, f func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("role stopped", slog.String("role", name), slog.Any("err", err))
			s.errs <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

func (s *Service) startRoles(ctx, runCtx context.Context, mux *httpx.RecordingMux) error {
	cfg := s.cfg
	if cfg.Has(RoleWorker) || cfg.Has(RoleAPI) {
		s.Hold = worker.NewHoldView(s.Bus.JS, cfg.Logger, s.reg)
		s.run(runCtx, "outage_hold_view", s.Hold.Run)
	}
	if cfg.Has(RoleWorker) && !cfg.OutageHold.Disabled {
		window := cfg.OutageHold.Window
		if window == 0 {
			window = cfg.Thresholds.Default.OfflineAfter
		}
		id := cfg.InstanceID
		if id == "" {
			host, _ := os.Hostname()
			id = fmt.Sprintf("%s-%d-%p", host, os.Getpid(), s)
		}
		hc, err := worker.NewHoldCoordinator(worker.HoldConfig{Bus: s.Bus, Fraction: cfg.OutageHold.Fraction, MinDevices: cfg.OutageHold.MinDevices,
			Window: window, InstanceID: id, LeaseTTL: cfg.Bus.LeaseTTL, Logger: cfg.Logger, Registerer: s.reg}, s.Hold)
		if err != nil {
			return err
		}
		s.run(runCtx, "outage_hold", hc.Run)
	}
	if cfg.Has(RoleWorker) {
		w, err := worker.New(worker.Config{Bus: s.Bus, Thresholds: cfg.Thresholds, InstanceID: cfg.InstanceID, Roles: cfg.Roles,
			Probing:    worker.Probing{After: cfg.ProbeAfter, MaxInterval: cfg.PingMaxInterval},
			Partitions: cfg.WorkerPartitions, LeaseTTL: cfg.Bus.LeaseTTL, Logger: cfg.Logger, Registerer: s.reg})
		if err != nil {
			return err
		}
		s.Worker = w
		s.run(runCtx, RoleWorker, w.Run)
	}
	if cfg.Has(RoleTicker) {
		t, err := ticker.New(ticker.Config{Bus: s.Bus, Period: cfg.Tick, Clock: cfg.Clock, Logger: cfg.Logger, Registerer: s.reg})
		if err != nil {
			return err
		}
		s.run(runCtx, RoleTicker, t.Run)
	}
	if cfg.Has(RolePinger) {
		if err := s.startPinger(runCtx); err != nil {
			return err
		}
	}
	return s.startDataRoles(ctx, runCtx, mux)
}

func (s *Service) addReady(name string, check func(context.Context) error) {
	s.ready = append(s.ready, readyCheck{name: name, check: check})
}

// Ready runs the readiness checks and returns the names of the failing ones
// (nats, postgres, projector, bridge, pinger; nil when ready) and their errors
// joined.
func (s *Service) Ready(ctx context.Context) (failing []string, err error) {
	var errs []error
	for _, c := range s.ready {
		if cerr := c.check(ctx); cerr != nil {
			failing = append(failing, c.name)
			errs = append(errs, fmt.Errorf("%s: %w", c.name, cerr))
		}
	}
	return failing, errors.Join(errs...)
}

// handleReady answers /readyz: 200 {"status":"ready"}, or 503
// {"status":"not_ready","failing":[names]}. The endpoint is unauthenticated,
// so the answer names the failing checks only; their errors (database
// addresses, driver messages) go to the log, at most once per check per
// 10 s while it keeps failing.
func (s *Service) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	failing, err := s.Ready(ctx)
	if len(failing) > 0 {
		s.readyLog.Do(func() { s.log.Warn("not ready", slog.Any("failing", failing), slog.Any("err", err)) })
		httpx.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not_ready", "failing": failing})
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// Patterns lists every route pattern registered on the service's HTTP
// server ("METHOD /path", net/http syntax), in registration order.
func (s *Service) Patterns() []string { return s.mux.Patterns() }

// Addr is the HTTP listen address (useful with port 0).
func (s *Service) Addr() string { return s.listener.Addr().String() }

// Registry is the Prometheus registry served at /metrics.
func (s *Service) Registry() *prometheus.Registry { return s.reg }

// Errors reports roles that stopped with an error.
func (s *Service) Errors() <-chan error { return s.errs }

// Stop shuts down in order: the HTTP server (no new heartbeats; in-flight
// requests finish), then the roles (workers write final snapshots and release
// their leases), then the database and the bus (drained). It waits at most
// until ctx ends.
func (s *Service) Stop(ctx context.Context) {
	if s.server != nil {
		if err := s.server.Shutdown(ctx); err != nil {
			_ = s.server.Close()
		}
	} else if s.listener != nil {
		_ = s.listener.Close()
	}
	if s.metricsS != nil {
		_ = s.metricsS.Shutdown(ctx)
	}
	if s.cancel != nil {
		s.cancel()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("shutdown timed out; some roles did not stop")
	}
	if s.DB != nil {
		_ = s.DB.Close()
	}
	if s.Bus != nil {
		s.Bus.Close()
	}
}
