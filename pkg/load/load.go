package load

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devstatus/devstatus/pkg/load/internal/procstat"
)

// NamedURL names a /metrics page of a process of the service under test
// ("service", "worker").
type NamedURL struct {
	Name, URL string
}

// NamedPID names a process (and its descendants) whose CPU time the run
// counts besides the service's own, e.g. the Postgres cluster's postmaster.
type NamedPID struct {
	Name string
	PID  int
}

// Config configures [Run]. Zero values take the documented defaults.
//
// A run has phases, each optional, in this order:
//
//  1. registration of Devices single devices (the last Sentinels of them
//     used for detection latency) and of GatewayDevices devices behind
//     GatewayDevices/GatewayBatch gateways;
//  2. warm-up: one heartbeat of every single device (each becomes
//     connected), then the wait until the lag drains; the gateway devices
//     too when there is no gateway open loop;
//  3. "gateway": an open loop of gateway batches at GatewayRate heartbeats
//     per second for GatewayDuration; its first interval (or GatewayRamp)
//     onboards the gateway fleet (each device's first heartbeat: a
//     transition), its second half is judged for lag;
//  4. "gateway-max": a closed loop of gateway batches for GatewayMaxDuration;
//  5. Rounds rounds of a closed loop (Concurrency connections sending back
//     to back) against the baseline — a plain net/http JSON handler — and
//     then against the service, RoundDuration each, the service given time
//     to drain its lag before each baseline round: the ratio of the two
//     throughputs in one round survives a noisy machine;
//  6. "sustain": an open loop of single heartbeats at SustainFraction of
//     the median whole-chain throughput of the service rounds, for
//     SustainDuration, to show whether the lag stays flat;
//  7. "steady": an open loop at SteadyFraction of the sustained maximum
//     (or SteadyRate) for SteadyDuration, during which the Sentinels stop
//     one after another and the time until each one's timeout is visible
//     in Postgres (through the read API's list, which reads Postgres) is
//     the detection latency.
//
// A fleet silent for more than 60 % of OfflineAfter before its next timed
// phase first comes back ("rewarm-gateway", "rewarm-single": each device
// once, then a drain; by design each comeback is told should_reconnect
// once, a registry round trip), so that no timed phase pays for a comeback
// storm.
type Config struct {
	// URL of the service, e.g. http://127.0.0.1:8080. Required.
	URL string
	// AdminToken registers the devices and gateways. Required.
	AdminToken string
	// Devices is the number of devices sending single heartbeats. Default
	// 20 000. With the service's rate limit they must be at least the
	// expected throughput × --rate-min-interval.
	Devices int
	// GatewayDevices is the number of devices behind gateways (0: no gateway
	// phases).
	GatewayDevices int
	// GatewayBatch is the devices per gateway, each gateway sending all of
	// them in one request. Default 1000.
	GatewayBatch int
	// Concurrency is the connections of the single-heartbeat phases.
	// Default 128.
	Concurrency int
	// GatewayConcurrency is the connections of the gateway phases. Default 8.
	GatewayConcurrency int
	// RegisterConcurrency bounds the registrations in flight. Default 64.
	RegisterConcurrency int
	// Prefix starts every id. Default "ld-<8 random hex>-".
	Prefix string
	// Timeout bounds one request. Default 10 s.
	Timeout time.Duration
	// NoWarmup skips the warm-up: after registration, one heartbeat of every
	// device (each becomes connected: one transition each, the fleet's
	// onboarding), then a wait until the service's lag drains, so that the
	// timed phases measure a fleet in its steady state.
	NoWarmup bool
	// MaxWarmupDrain bounds the wait after the warm-up. Default 15 min.
	MaxWarmupDrain time.Duration

	// Rounds of baseline and service closed loops. Default 3; negative: none.
	Rounds int
	// RoundDuration of each closed loop. Default 10 s.
	RoundDuration time.Duration
	// BaselineURL is a running baseline server; empty: BaselineCommand is
	// started (and stopped) by the run.
	BaselineURL string
	// BaselineCommand starts a baseline server that prints "listening
	// <host:port>" on its first line of stdout. Default: this executable
	// with the arguments "baseline-server --addr 127.0.0.1:0".
	BaselineCommand []string
	// MaxDrain bounds the wait for the service's lag to drain after a
	// service round. Default 20 s.
	MaxDrain time.Duration

	// SustainDuration of the open loop at the whole-chain maximum (0: skip).
	SustainDuration time.Duration
	// SustainFraction of the median whole-chain throughput of the rounds
	// offered in the sustain phase. Default 1.0.
	SustainFraction float64
	// SteadyDuration of the open loop with detection (0: skip).
	SteadyDuration time.Duration
	// SteadyFraction of the sustained maximum offered in the steady phase.
	// Default 0.7.
	SteadyFraction float64
	// SteadyRate, when > 0, is offered instead (heartbeats per second).
	SteadyRate float64
	// Sentinels among the single devices go silent during the steady phase
	// for the detection latency. Default 200, at most 1000.
	Sentinels int
	// OfflineAfter is the service's --offline-after. Default 40 s.
	OfflineAfter time.Duration

	// GatewayMaxDuration of the gateway closed loop (0: skip).
	GatewayMaxDuration time.Duration
	// GatewayRate in heartbeats per second of the gateway open loop (0: skip).
	GatewayRate float64
	// GatewayDuration of the gateway open loop.
	GatewayDuration time.Duration
	// GatewayRamp brings the gateways online one after another over this
	// time at the start of the gateway open loop (0: all at once): a fleet
	// rolled out gradually, each gateway heartbeating every interval from
	// its first batch on, so that onboarding (a device's first heartbeat: a
	// registry read and a transition) is spread instead of being one storm
	// that a large fleet cannot absorb within offline-after.
	GatewayRamp time.Duration

	// Metrics are the /metrics pages of the service's processes.
	Metrics []NamedURL
	// WorkerMetrics names the entry of Metrics that is the partition worker
	// process, whose resident memory per tracked device is reported. Default
	// "worker" if present, else the first.
	WorkerMetrics string
	// CPUPIDs are other processes whose CPU per heartbeat is reported (the
	// Postgres cluster).
	CPUPIDs []NamedPID
	// Logger receives progress. Default: discard.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Devices == 0 {
		c.Devices = 20_000
	}
	if c.GatewayBatch == 0 {
		c.GatewayBatch = 1000
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 128
	}
	if c.GatewayConcurrency <= 0 {
		c.GatewayConcurrency = 8
	}
	if c.RegisterConcurrency <= 0 {
		c.RegisterConcurrency = 64
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("ld-%08x-", rand.Uint32())
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Rounds == 0 {
		c.Rounds = 3
	}
	if c.RoundDuration == 0 {
		c.RoundDuration = 10 * time.Second
	}
	if c.MaxDrain == 0 {
		c.MaxDrain = 20 * time.Second
	}
	if c.MaxWarmupDrain == 0 {
		c.MaxWarmupDrain = 15 * time.Minute
	}
	if c.SustainFraction == 0 {
		c.SustainFraction = 1
	}
	if c.SteadyFraction == 0 {
		c.SteadyFraction = 0.7
	}
	if c.Sentinels == 0 {
		c.Sentinels = 200
	}
	if c.OfflineAfter == 0 {
		c.OfflineAfter = 40 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.WorkerMetrics == "" && len(c.Metrics) > 0 {
		c.WorkerMetrics = c.Metrics[0].Name
		for _, m := range c.Metrics {
			if m.Name == "worker" {
				c.WorkerMetrics = "worker"
			}
		}
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.URL == "" || c.AdminToken == "" {
		errs = append(errs, errors.New("URL and AdminToken are required"))
	}
	if c.Devices < 0 || c.GatewayDevices < 0 || c.GatewayBatch < 1 || c.GatewayBatch > 1000 {
		errs = append(errs, errors.New("devices must be >= 0 and the gateway batch in 1..1000"))
	}
	if c.Sentinels < 0 || c.Sentinels > 1000 || (c.SteadyDuration > 0 && c.Sentinels >= c.Devices) {
		errs = append(errs, errors.New("sentinels must be in 0..1000 and fewer than the devices"))
	}
	if c.SteadyDuration > 0 && c.Sentinels > 0 && c.SteadyDuration < c.OfflineAfter+15*time.Second {
		errs = append(errs, fmt.Errorf("the steady phase must last at least offline-after + 15s (%s) for the detection latency", c.OfflineAfter+15*time.Second))
	}
	if c.GatewayDevices > 0 && c.GatewayDevices%c.GatewayBatch != 0 {
		errs = append(errs, errors.New("gateway devices must be a multiple of the gateway batch"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// ErrInvalidConfig wraps the errors of [Run] for a bad [Config].
var ErrInvalidConfig = errors.New("load: invalid config")

// loadRun is one run's state.
type loadRun struct {
	cfg   Config
	log   *slog.Logger
	start time.Time
	hc    *http.Client

	// single devices: ids, escaped heartbeat paths, tokens; the last
	// cfg.Sentinels are the sentinels ("<prefix>s-<n>").
	ids, paths, tokens []string
	// gateways: ids, heartbeat paths, tokens and their devices' ids.
	gwIDs, gwPaths, gwTokens []string
	gwDevs                   [][]string

	// per-second accounting
	mu        sync.Mutex
	series    []Sample
	phaseName atomic.Pointer[string]
	secHist   atomic.Pointer[hist]
	accepted  atomic.Int64 // heartbeats accepted (cumulative)
	requests  atomic.Int64
	failures  atomic.Int64
	lastProm  map[string]promSample
	memStart  map[string]promSample
	// lastSingle, lastGateway: when the single devices, the gateway devices
	// last heartbeated (end of their last phase).
	lastSingle, lastGateway time.Time
}

// Run runs the phases of cfg against a running service and returns the
// report. The service must run with thresholds matching cfg.OfflineAfter
// and a rate limit that the schedule respects (see Config.Devices). A bad
// cfg gives an error wrapping [ErrInvalidConfig]; an error of a phase
// returns the report of the phases before it with the error.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &loadRun{cfg: cfg, log: cfg.Logger, hc: &http.Client{Timeout: 5 * time.Second}, lastProm: map[string]promSample{}}
	r.secHist.Store(&hist{})
	idle := "idle"
	r.phaseName.Store(&idle)
	rep := &Report{Version: 1, Started: time.Now().UTC(), Config: reportConfig(&cfg), Host: hostInfo()}
	r.start = time.Now()

	sctx, stopSampler := context.WithCancel(ctx)
	var samplerWG sync.WaitGroup
	samplerWG.Go(func() { r.sample(sctx) })
	defer func() { stopSampler(); samplerWG.Wait() }()

	// Memory before anything is registered (the worker's empty footprint).
	r.memStart = r.scrapeAll(ctx)

	if err := r.register(ctx, rep); err != nil {
		return nil, err
	}
	// Gateway phases first, then single heartbeats: a fleet idle for longer
	// than offline-after comes back first (rewarm: each device once, its
	// comeback told and logged), so that no timed phase pays for a
	// comeback storm.
	for _, phase := range []func(context.Context, *Report) error{
		r.warmup, r.rewarmGateways, r.gatewayOpen, r.rewarmGateways, r.gatewayMax, r.rewarmSingles, r.rounds, r.singleOpen,
	} {
		if err := phase(ctx, rep); err != nil {
			return rep, err
		}
	}
	r.memory(ctx, rep)
	r.setPhase("done")
	stopSampler()
	samplerWG.Wait()
	r.mu.Lock()
	rep.Series = slices.Clone(r.series)
	r.mu.Unlock()
	rep.Finished = time.Now().UTC()
	rep.Host.LoadEnd = procstat.LoadAvg()
	rep.summarize()
	return rep, nil
}

func (r *loadRun) setPhase(name string) { r.phaseName.Store(&name) }

// scrapeAll reads every metrics page once.
func (r *loadRun) scrapeAll(ctx context.Context) map[string]promSample {
	out := map[string]promSample{}
	for _, m := range r.cfg.Metrics {
		out[m.Name] = scrape(ctx, r.hc, m.URL)
	}
	return out
}

// sample records one Sample per second until ctx ends.
func (r *loadRun) sample(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	prevAcc, prevReq, prevFail := int64(0), int64(0), int64(0)
	prev := map[string]promSample{}
	prevT := time.Now()
	prevPID := map[string]float64{}
	for _, p := range r.cfg.CPUPIDs {
		prevPID[p.Name] = procstat.TreeCPU(p.PID)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		dt := now.Sub(prevT).Seconds()
		prevT = now
		h := r.secHist.Swap(&hist{})
		acc, req, fail := r.accepted.Load(), r.requests.Load(), r.failures.Load()
		s := Sample{T: math.Round(now.Sub(r.start).Seconds()*10) / 10, Phase: *r.phaseName.Load(),
			Accepted: float64(acc-prevAcc) / dt, Requests: float64(req-prevReq) / dt, Failures: float64(fail-prevFail) / dt,
			Load1: procstat.LoadAvg(), CPU: map[string]float64{}, RSSMiB: map[string]float64{}}
		prevAcc, prevReq, prevFail = acc, req, fail
		if h.count() > 0 {
			ls := h.summary()
			s.P50, s.P99 = ls.P50, ls.P99
		}
		cur := r.scrapeAll(ctx)
		addScrapes(&s, prev, cur, dt)
		for _, p := range r.cfg.CPUPIDs {
			c := procstat.TreeCPU(p.PID)
			s.CPU[p.Name] = (c - prevPID[p.Name]) / dt
			prevPID[p.Name] = c
			s.RSSMiB[p.Name] = procstat.RSS(p.PID) / (1 << 20)
		}
		prev = cur
		r.mu.Lock()
		r.series = append(r.series, s)
		r.lastProm = cur
		r.mu.Unlock()
	}
}

// addScrapes adds to s what the service's /metrics pages say: cur, read
// now, and prev, read dt seconds before (rates need both; a page that
// failed counts for nothing). Lags, tracked devices and goroutines are
// summed over the pages, the projections' lag in seconds is the worst.
func addScrapes(s *Sample, prev, cur map[string]promSample, dt float64) {
	for name, ps := range cur {
		if !ps.ok {
			continue
		}
		s.ConsumerLag += ps.ConsumerLag
		s.LivenessLag += ps.ProjLag["liveness"]
		s.TransitionsLag += ps.ProjLag["transitions"]
		s.LivenessLagSeconds = max(s.LivenessLagSeconds, ps.ProjLagSeconds["liveness"])
		s.TransitionsLagSeconds = max(s.TransitionsLagSeconds, ps.ProjLagSeconds["transitions"])
		s.Tracked += ps.Tracked
		s.Goroutines += ps.Goroutines
		if p, ok := prev[name]; ok && p.ok {
			s.CPU[name] = (ps.CPUSeconds - p.CPUSeconds) / dt
			s.WorkerEventsPerSec += (ps.WorkerEvents - p.WorkerEvents) / dt
			s.ProjectedPerSec += (ps.ProjEvents["liveness"] - p.ProjEvents["liveness"]) / dt
		}
		s.RSSMiB[name] = ps.RSS / (1 << 20)
	}
}

// counters is a snapshot of the cumulative counters a phase result is
// computed from.
type counters struct {
	at       time.Time
	accepted int64
	cpu      map[string]float64 // process CPU seconds by name (metrics sources and pids)
	worker   float64            // worker events applied
	proj     float64            // liveness projection events
	trans    float64            // transitions published
}

func (r *loadRun) counters(ctx context.Context) counters {
	c := counters{at: time.Now(), accepted: r.accepted.Load(), cpu: map[string]float64{}}
	for name, ps := range r.scrapeAll(ctx) {
		if ps.ok {
			c.cpu[name] = ps.CPUSeconds
			c.worker += ps.WorkerEvents
			c.proj += ps.ProjEvents["liveness"]
			c.trans += ps.Transitions
		}
	}
	for _, p := range r.cfg.CPUPIDs {
		c.cpu[p.Name] = procstat.TreeCPU(p.PID)
	}
	return c
}

// lagNow is the current total lag (consumer + liveness projection), events.
func (r *loadRun) lagNow(ctx context.Context) float64 {
	var lag float64
	for _, ps := range r.scrapeAll(ctx) {
		lag += ps.ConsumerLag + ps.ProjLag["liveness"] + ps.ProjLag["transitions"]
	}
	return lag
}

// drain waits until the service's lag is small (or MaxDrain passed) and
// returns how long it took.
func (r *loadRun) drain(ctx context.Context) time.Duration { return r.drainFor(ctx, r.cfg.MaxDrain) }

func (r *loadRun) drainFor(ctx context.Context, limit time.Duration) time.Duration {
	if len(r.cfg.Metrics) == 0 {
		return 0
	}
	return waitFor(ctx, limit, 250*time.Millisecond, func() bool { return r.lagNow(ctx) < 100 })
}

// phaseResult turns two counter snapshots and a phase's stats into a result.
func (r *loadRun) phaseResult(name, kind, mode string, offered float64, ps *phaseStats, a, b counters) PhaseResult {
	secs := b.at.Sub(a.at).Seconds()
	acc := float64(b.accepted - a.accepted)
	res := PhaseResult{Name: name, Kind: kind, Mode: mode, Start: a.at.Sub(r.start).Seconds(), Seconds: secs,
		OfferedPerSec: offered, AcceptedPerSec: acc / secs, RequestsPerSec: float64(ps.requests.Load()) / secs,
		Latency: ps.hist.summary(), Accepted: int64(acc), RateLimited: ps.r429.Load(), Unavailable: ps.r503.Load(),
		Failed: ps.failed.Load(), MaxLatenessMs: float64(ps.maxLate.Load()) / 1e6,
		CPUPer1000: map[string]float64{}, CPUCores: map[string]float64{}}
	if res.Latency.Count == 0 {
		res.Latency = LatencySummary{}
	}
	var svc float64
	for name, v := range b.cpu {
		d := v - a.cpu[name]
		res.CPUCores[name] = round3(d / secs)
		if acc > 0 {
			res.CPUPer1000[name] = round3(d / acc * 1000)
		}
		if !r.isPID(name) {
			svc += d
		}
	}
	if acc > 0 && len(r.cfg.Metrics) > 0 {
		res.ServiceCPUPer1000 = round3(svc / acc * 1000)
	}
	switch {
	case kind == "baseline":
		// The baseline has no chain behind it: only what it accepted counts.
	case len(r.cfg.Metrics) > 0:
		res.WorkerPerSec = (b.worker - a.worker) / secs
		res.ProjectedPerSec = (b.proj - a.proj) / secs
		res.ChainPerSec = min(res.AcceptedPerSec, res.WorkerPerSec, res.ProjectedPerSec)
	default:
		res.ChainPerSec = res.AcceptedPerSec
	}
	res.Transitions = b.trans - a.trans
	r.mu.Lock()
	res.Lag = lagTrend(r.series, res.Start, res.Start+secs, res.AcceptedPerSec)
	res.SecondHalfPerSec, res.SecondHalfChainPerSec = secondHalf(r.series, res.Start, res.Start+secs, len(r.cfg.Metrics) > 0)
	r.mu.Unlock()
	res.LoadAvg = procstat.LoadAvg()
	return res
}

func (r *loadRun) isPID(name string) bool {
	for _, p := range r.cfg.CPUPIDs {
		if p.Name == name {
			return true
		}
	}
	return false
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// lagTrend fits the total lag of the samples in the second half of [from,
// to] (seconds since the start) and judges whether it grows at an input of
// rate heartbeats per second.
func lagTrend(series []Sample, from, to, rate float64) LagTrend {
	var lt LagTrend
	mid := (from + to) / 2
	var xs, ys []float64
	for _, s := range series {
		if s.T < from || s.T > to {
			continue
		}
		total := s.ConsumerLag + s.LivenessLag + s.TransitionsLag
		lt.MaxEvents = max(lt.MaxEvents, total)
		lt.MaxProjectionSeconds = max(lt.MaxProjectionSeconds, s.LivenessLagSeconds, s.TransitionsLagSeconds)
		lt.EndEvents = total
		lt.EndConsumer = s.ConsumerLag
		lt.EndProjection = s.LivenessLag + s.TransitionsLag
		lt.EndProjectionSeconds = max(s.LivenessLagSeconds, s.TransitionsLagSeconds)
		if s.T >= mid {
			xs, ys = append(xs, s.T), append(ys, total)
		}
	}
	if len(xs) >= 3 {
		lt.SlopePerSec = math.Round(slope(xs, ys)*10) / 10
	}
	// Growing: the backlog gains more than 1 % of the input rate per second
	// and holds more than one second of input at the end.
	lt.Growing = lt.SlopePerSec > max(0.01*rate, 10) && lt.EndEvents > rate
	return lt
}

// secondHalf averages the accepted heartbeats per second, and the least
// of accepted, applied by the workers and projected (only accepted without
// metrics), over the samples of the second half of [from, to].
func secondHalf(series []Sample, from, to float64, metrics bool) (accepted, chain float64) {
	mid := (from + to) / 2
	n := 0
	var w, p float64
	for _, s := range series {
		if s.T < mid || s.T > to {
			continue
		}
		n++
		accepted += s.Accepted
		w += s.WorkerEventsPerSec
		p += s.ProjectedPerSec
	}
	if n == 0 {
		return 0, 0
	}
	accepted, w, p = accepted/float64(n), w/float64(n), p/float64(n)
	chain = accepted
	if metrics {
		chain = min(accepted, w, p)
	}
	return round1(accepted), round1(chain)
}

func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// memory reports the worker's resident memory per tracked device.
func (r *loadRun) memory(ctx context.Context, rep *Report) {
	name := r.cfg.WorkerMetrics
	if name == "" {
		return
	}
	before := r.memStart[name]
	after := scrape(ctx, r.hc, r.metricsURL(name))
	if !before.ok || !after.ok {
		return
	}
	m := &MemoryResult{Process: name, TrackedBefore: before.Tracked, TrackedAfter: after.Tracked,
		RSSBeforeMiB: before.RSS / (1 << 20), RSSAfterMiB: after.RSS / (1 << 20),
		HeapBeforeMiB: before.HeapInuse / (1 << 20), HeapAfterMiB: after.HeapInuse / (1 << 20)}
	if d := after.Tracked - before.Tracked; d > 0 {
		m.RSSBytesPerDevice = math.Round((after.RSS - before.RSS) / d)
		m.HeapBytesPerDevice = math.Round((after.HeapInuse - before.HeapInuse) / d)
	}
	rep.Memory = m
}

func (r *loadRun) metricsURL(name string) string {
	for _, m := range r.cfg.Metrics {
		if m.Name == name {
			return m.URL
		}
	}
	return ""
}

// phaseStats counts one phase's requests.
type phaseStats struct {
	hist                         hist
	requests, r429, r503, failed atomic.Int64
	maxLate                      atomic.Int64 // ns
	firstErrMu                   sync.Mutex
	firstErr                     error
}

func (ps *phaseStats) fail(err error) {
	ps.failed.Add(1)
	ps.firstErrMu.Lock()
	if ps.firstErr == nil {
		ps.firstErr = err
	}
	ps.firstErrMu.Unlock()
}

func (ps *phaseStats) late(d time.Duration) {
	for {
		cur := ps.maxLate.Load()
		if int64(d) <= cur || ps.maxLate.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (r *loadRun) record(ps *phaseStats, d time.Duration, accepted int64) {
	ps.hist.add(d)
	r.secHist.Load().add(d)
	r.accepted.Add(accepted)
}
