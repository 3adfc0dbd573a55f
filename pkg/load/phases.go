package load

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/load/internal/procstat"
	"github.com/devstatus/devstatus/pkg/load/internal/rawhttp"
)

// phase names one measured phase.
type phase struct {
	// name in the report ("baseline-1"); series in the per-second samples
	// ("baseline"; "": name).
	name, series string
	// kind: baseline, single, gateway or mixed; mode: closed or open.
	kind, mode string
	// offered heartbeats per second (0: a closed loop).
	offered float64
}

// measure runs do under p's name between two counter snapshots and returns
// its result (the caller appends it to the report), logged.
func (r *loadRun) measure(ctx context.Context, p phase, do func(ps *phaseStats) error) (PhaseResult, error) {
	r.setPhase(cmp.Or(p.series, p.name))
	ps := &phaseStats{}
	a := r.counters(ctx)
	if err := do(ps); err != nil {
		return PhaseResult{}, err
	}
	b := r.counters(ctx)
	res := r.phaseResult(p.name, p.kind, p.mode, p.offered, ps, a, b)
	r.log.Info(p.name, slog.Float64("offered_per_s", res.OfferedPerSec), slog.Float64("accepted_per_s", res.AcceptedPerSec),
		slog.Float64("chain_per_s", res.ChainPerSec), slog.Float64("seconds", res.Seconds), slog.String("latency", res.Latency.String()),
		slog.Bool("lag_growing", res.Lag.Growing), slog.Float64("transitions", res.Transitions), slog.Any("first_error", firstErr(ps)))
	return res, nil
}

// loop sends for d, over one connection per worker: the single devices'
// heartbeats to base, or the gateways' batches to the service. rate 0 is a
// closed loop (every worker again as soon as it has its answer); rate > 0
// an open loop of rate items per second ([openLoop], with skip).
func (r *loadRun) loop(ctx context.Context, gateways bool, base string, d time.Duration, ps *phaseStats, rate float64, skip func(k, i int, since time.Duration, now time.Time) bool) error {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	clk := &clockText{}
	go clk.run(cctx)
	conns, n := r.cfg.Concurrency, len(r.ids)
	if gateways {
		conns, n = r.cfg.GatewayConcurrency, len(r.gwIDs)
	}
	senders, err := r.dial(conns, gateways, base, clk)
	if err != nil {
		return err
	}
	if rate > 0 {
		openLoop(cctx, senders, ps, rate, n, skip)
	} else {
		pool(senders, ps, roundRobin(cctx, n))
	}
	return ctx.Err()
}

// everyOnce sends one heartbeat of each of the first n single devices over
// singles connections and one batch of each of the first gws gateways over
// gwConns connections, at the same time.
func (r *loadRun) everyOnce(ctx context.Context, ps *phaseStats, n, singles, gws, gwConns int) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	clk := &clockText{}
	go clk.run(cctx)
	s, err := r.dial(singles, false, r.cfg.URL, clk)
	if err != nil {
		return err
	}
	g, err := r.dial(gwConns, true, r.cfg.URL, clk)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { pool(g, ps, each(ctx, gws)) })
	pool(s, ps, each(ctx, n))
	wg.Wait()
	return ctx.Err()
}

// ---- registration ----------------------------------------------------------

func (r *loadRun) register(ctx context.Context, rep *Report) error {
	cfg := &r.cfg
	r.setPhase("register")
	n := cfg.Devices
	r.ids, r.paths, r.tokens = make([]string, n), make([]string, n), make([]string, n)
	for i := range n {
		if i >= n-cfg.Sentinels {
			r.ids[i] = cfg.Prefix + "s-" + strconv.Itoa(i)
		} else {
			r.ids[i] = cfg.Prefix + "d-" + strconv.Itoa(i)
		}
		r.paths[i] = apiclient.DevicePath(r.ids[i]) + "/heartbeat"
	}
	gws := 0
	if cfg.GatewayDevices > 0 {
		gws = cfg.GatewayDevices / cfg.GatewayBatch
	}
	r.gwIDs, r.gwPaths, r.gwTokens, r.gwDevs = make([]string, gws), make([]string, gws), make([]string, gws), make([][]string, gws)
	for g := range gws {
		r.gwIDs[g] = cfg.Prefix + "gw-" + strconv.Itoa(g)
		r.gwPaths[g] = "/v1/gateways/" + url.PathEscape(r.gwIDs[g]) + "/heartbeats"
		devs := make([]string, cfg.GatewayBatch)
		for k := range devs {
			devs[k] = cfg.Prefix + "g" + strconv.Itoa(g) + "-" + strconv.Itoa(k)
		}
		r.gwDevs[g] = devs
	}
	start := time.Now()
	a := r.counters(ctx)
	total := gws + n + cfg.GatewayDevices
	body := func(kv ...string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	gateway := func(i int) registration {
		return registration{"/v1/gateways", body("id", r.gwIDs[i]), &r.gwTokens[i]}
	}
	device := func(i int) registration {
		if i < n {
			return registration{"/v1/devices", body("id", r.ids[i], "group", cfg.Prefix+"single"), &r.tokens[i]}
		}
		i -= n
		g, k := i/cfg.GatewayBatch, i%cfg.GatewayBatch
		return registration{"/v1/devices", body("id", r.gwDevs[g][k], "group", cfg.Prefix+"gw", "gateway", r.gwIDs[g]), nil}
	}
	rctx, cancel := context.WithCancel(ctx)
	var done atomic.Int64
	var logger sync.WaitGroup
	defer func() { cancel(); logger.Wait() }()
	logger.Go(func() {
		progress := time.NewTicker(10 * time.Second)
		defer progress.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-progress.C:
				r.log.Info("registering", slog.Int64("done", done.Load()), slog.Int("of", total))
			}
		}
	})
	// Gateways first: they must exist before their devices.
	ps := &phaseStats{}
	for _, step := range []struct {
		n   int
		job func(int) registration
	}{{gws, gateway}, {n + cfg.GatewayDevices, device}} {
		regs := make([]sender, cfg.RegisterConcurrency)
		for w := range regs {
			rc, err := rawhttp.New(cfg.URL, cfg.Timeout)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
			}
			regs[w] = &registrar{rc: rc, admin: cfg.AdminToken, ctx: rctx, cancel: cancel, job: step.job, done: &done}
		}
		pool(regs, ps, each(rctx, step.n))
		if err := firstErr(ps); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	b := r.counters(ctx)
	rep.Registration = &RegistrationResult{Devices: n + cfg.GatewayDevices, Gateways: gws, Seconds: round3(secs),
		PerSec: round3(float64(total) / secs), CPUCores: map[string]float64{}}
	for name, v := range b.cpu {
		rep.Registration.CPUCores[name] = round3((v - a.cpu[name]) / secs)
	}
	r.log.Info("registered", slog.Int("devices", n+cfg.GatewayDevices), slog.Int("gateways", gws),
		slog.Float64("per_s", rep.Registration.PerSec))
	return nil
}

// ---- warm-up: every device once ------------------------------------------------

func (r *loadRun) warmup(ctx context.Context, rep *Report) error {
	gateways := len(r.gwIDs)
	if r.cfg.GatewayRate > 0 && r.cfg.GatewayDuration > 0 {
		gateways = 0 // the gateway open loop onboards them
	}
	if r.cfg.NoWarmup || len(r.ids)+gateways == 0 {
		return nil
	}
	var sent, drained time.Duration
	res, err := r.measure(ctx, phase{name: "warmup", kind: "mixed", mode: "closed"}, func(ps *phaseStats) error {
		t0 := time.Now()
		// Fewer connections than the timed phases: onboarding a large fleet
		// at full blast only fills JetStream's queues (PubAcks beyond the
		// publish timeout, 503s) without finishing sooner.
		if err := r.everyOnce(ctx, ps, len(r.ids), min(r.cfg.Concurrency, 32), gateways, min(r.cfg.GatewayConcurrency, 4)); err != nil {
			return err
		}
		r.lastSingle = time.Now()
		if gateways > 0 {
			r.lastGateway = time.Now()
		}
		sent = time.Since(t0)
		drained = r.drainFor(ctx, r.cfg.MaxWarmupDrain)
		return nil
	})
	if err != nil {
		return err
	}
	rep.Phases = append(rep.Phases, res)
	w := &WarmupResult{Heartbeats: res.Accepted, SendSeconds: round3(sent.Seconds()), DrainSeconds: round3(drained.Seconds()),
		Transitions: res.Transitions, LagEnd: r.lagNow(ctx)}
	if res.Seconds > 0 {
		w.TransitionsPS = round1(w.Transitions / res.Seconds)
	}
	rep.Warmup = w
	return ctx.Err()
}

func (r *loadRun) rewarmGateways(ctx context.Context, rep *Report) error {
	return r.rewarm(ctx, rep, false)
}
func (r *loadRun) rewarmSingles(ctx context.Context, rep *Report) error {
	return r.rewarm(ctx, rep, true)
}

// rewarm sends one heartbeat of every single (or gateway) device when they
// have been silent for more than 60 % of offline-after, then waits for the
// lag to drain: devices that went offline come back (a transition each and,
// by design, a should_reconnect told once: a compare-and-swap on the
// registry entry and an event each). Reported as a phase of its own.
func (r *loadRun) rewarm(ctx context.Context, rep *Report, single bool) error {
	last, n, p := r.lastGateway, len(r.gwIDs), phase{name: "rewarm-gateway", kind: "gateway", mode: "closed"}
	if single {
		last, n, p = r.lastSingle, len(r.ids), phase{name: "rewarm-single", kind: "single", mode: "closed"}
	}
	if n == 0 || last.IsZero() || time.Since(last) < r.cfg.OfflineAfter*6/10 {
		return nil
	}
	if single && r.cfg.Rounds < 0 && r.cfg.SustainDuration <= 0 && r.cfg.SteadyDuration <= 0 {
		return nil
	}
	if !single && r.cfg.GatewayMaxDuration <= 0 && (r.cfg.GatewayRate <= 0 || r.cfg.GatewayDuration <= 0) {
		return nil
	}
	res, err := r.measure(ctx, p, func(ps *phaseStats) error {
		var err error
		if single {
			err = r.everyOnce(ctx, ps, n, r.cfg.Concurrency, 0, 0)
			r.lastSingle = time.Now()
		} else {
			err = r.everyOnce(ctx, ps, 0, 0, n, r.cfg.GatewayConcurrency)
			r.lastGateway = time.Now()
		}
		r.drainFor(ctx, r.cfg.MaxWarmupDrain)
		return err
	})
	if err != nil {
		return err
	}
	rep.Phases = append(rep.Phases, res)
	return nil
}

// ---- rounds: baseline vs service ---------------------------------------------

func (r *loadRun) rounds(ctx context.Context, rep *Report) error {
	cfg := &r.cfg
	if cfg.Rounds < 0 || cfg.Devices == 0 {
		return nil
	}
	base := cfg.BaselineURL
	if base == "" {
		addr, stop, err := startBaseline(ctx, cfg.BaselineCommand)
		if err != nil {
			return fmt.Errorf("load: start the baseline server: %w", err)
		}
		defer stop()
		base = "http://" + addr
	}
	for k := range cfg.Rounds {
		round := RoundResult{Round: k + 1}
		round.DrainSeconds = round3(r.drain(ctx).Seconds())
		bres, err := r.measure(ctx, phase{name: fmt.Sprintf("baseline-%d", k+1), series: "baseline", kind: "baseline", mode: "closed"},
			func(ps *phaseStats) error { return r.loop(ctx, false, base, cfg.RoundDuration, ps, 0, nil) })
		if err != nil {
			return err
		}
		sres, err := r.measure(ctx, phase{name: fmt.Sprintf("service-max-%d", k+1), series: "service-max", kind: "single", mode: "closed"},
			func(ps *phaseStats) error { return r.loop(ctx, false, cfg.URL, cfg.RoundDuration, ps, 0, nil) })
		if err != nil {
			return err
		}
		rep.Phases = append(rep.Phases, bres, sres)
		r.lastSingle = time.Now()
		round.BaselinePerSec, round.ServicePerSec, round.ChainPerSec = round1(bres.AcceptedPerSec), round1(sres.AcceptedPerSec), round1(sres.ChainPerSec)
		if bres.AcceptedPerSec > 0 {
			round.Ratio = round3(sres.AcceptedPerSec / bres.AcceptedPerSec)
			round.ChainRatio = round3(sres.ChainPerSec / bres.AcceptedPerSec)
		}
		round.LoadAvg = procstat.LoadAvg()
		rep.Rounds = append(rep.Rounds, round)
		r.log.Info("round", slog.Int("round", k+1), slog.Float64("baseline_per_s", round.BaselinePerSec),
			slog.Float64("service_per_s", round.ServicePerSec), slog.Float64("chain_per_s", round.ChainPerSec),
			slog.Float64("ratio", round.Ratio), slog.Float64("chain_ratio", round.ChainRatio), slog.Float64("load1", round.LoadAvg))
	}
	return nil
}

// ---- open loops of single heartbeats: sustain, steady with detection --------

func (r *loadRun) singleOpen(ctx context.Context, rep *Report) error {
	cfg := &r.cfg
	if cfg.Devices == 0 {
		return nil
	}
	var chain []float64
	for _, rd := range rep.Rounds {
		chain = append(chain, rd.ChainPerSec)
	}
	sustained := median(chain)
	if cfg.SustainDuration > 0 && sustained > 0 {
		r.drain(ctx)
		rate := sustained * cfg.SustainFraction
		res, err := r.measure(ctx, phase{name: "sustain", kind: "single", mode: "open", offered: rate},
			func(ps *phaseStats) error { return r.loop(ctx, false, cfg.URL, cfg.SustainDuration, ps, rate, nil) })
		if err != nil {
			return err
		}
		r.lastSingle = time.Now()
		rep.Phases = append(rep.Phases, res)
		if res.Lag.Growing || res.AcceptedPerSec < 0.97*rate {
			sustained = min(res.ChainPerSec, res.AcceptedPerSec)
		} else {
			sustained = res.AcceptedPerSec
		}
	}
	rep.SustainedSinglePerSec = round1(sustained)
	if cfg.SteadyDuration <= 0 {
		return nil
	}
	rate := cfg.SteadyRate
	if rate <= 0 {
		rate = cfg.SteadyFraction * sustained
	}
	if rate <= 0 {
		return errors.New("load: no steady rate: set SteadyRate or run the rounds")
	}
	r.drain(ctx)
	// Sentinels stop one after another over the first part of the phase,
	// so that each one's threshold falls inside it.
	n := len(r.ids)
	sent := cfg.Sentinels
	stopAt := make([]time.Time, sent)
	start := time.Now()
	spread := cfg.SteadyDuration - cfg.OfflineAfter - 10*time.Second
	for j := range stopAt {
		stopAt[j] = start.Add(2*time.Second + time.Duration(float64(spread-2*time.Second)*float64(j)/float64(max(sent, 1))))
	}
	skip := func(_, i int, _ time.Duration, now time.Time) bool {
		j := i - (n - sent)
		return j >= 0 && now.After(stopAt[j])
	}
	det := newDetector(r, stopAt)
	dctx, stopDet := context.WithCancel(ctx)
	var dwg sync.WaitGroup
	defer func() { stopDet(); dwg.Wait() }()
	if sent > 0 {
		dwg.Go(func() { det.run(dctx) })
	}
	res, err := r.measure(ctx, phase{name: "steady", kind: "single", mode: "open", offered: rate},
		func(ps *phaseStats) error { return r.loop(ctx, false, cfg.URL, cfg.SteadyDuration, ps, rate, skip) })
	if err != nil {
		return err
	}
	if sent > 0 {
		// Let the last sentinels' transitions arrive (the load has stopped).
		waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() bool { return det.pending() == 0 })
		stopDet()
		dwg.Wait()
		dr := det.result()
		res.Detection = &dr
	}
	rep.Phases = append(rep.Phases, res)
	return nil
}

// ---- gateway batches ---------------------------------------------------------

func (r *loadRun) gatewayMax(ctx context.Context, rep *Report) error {
	if len(r.gwIDs) == 0 || r.cfg.GatewayMaxDuration <= 0 {
		return ctx.Err()
	}
	r.drain(ctx)
	res, err := r.measure(ctx, phase{name: "gateway-max", kind: "gateway", mode: "closed"},
		func(ps *phaseStats) error { return r.loop(ctx, true, r.cfg.URL, r.cfg.GatewayMaxDuration, ps, 0, nil) })
	if err != nil {
		return err
	}
	r.lastGateway = time.Now()
	rep.Phases = append(rep.Phases, res)
	return nil
}

func (r *loadRun) gatewayOpen(ctx context.Context, rep *Report) error {
	cfg := &r.cfg
	if len(r.gwIDs) == 0 || cfg.GatewayRate <= 0 || cfg.GatewayDuration <= 0 {
		return ctx.Err()
	}
	r.drain(ctx)
	n := len(r.gwIDs)
	// With a ramp, the k-th gateway of the schedule comes online k/n of
	// the ramp after the start: its batches before then are not sent.
	ramp := func(k, _ int, since time.Duration, _ time.Time) bool {
		return since < cfg.GatewayRamp*time.Duration(k%n)/time.Duration(n)
	}
	if cfg.GatewayRamp <= 0 {
		ramp = nil
	}
	res, err := r.measure(ctx, phase{name: "gateway", kind: "gateway", mode: "open", offered: cfg.GatewayRate},
		func(ps *phaseStats) error {
			return r.loop(ctx, true, cfg.URL, cfg.GatewayDuration, ps, cfg.GatewayRate/float64(cfg.GatewayBatch), ramp)
		})
	if err != nil {
		return err
	}
	r.lastGateway = time.Now()
	rep.Phases = append(rep.Phases, res)
	return nil
}

// ---- helpers -------------------------------------------------------------------

func firstErr(pss ...*phaseStats) error {
	for _, ps := range pss {
		ps.firstErrMu.Lock()
		err := ps.firstErr
		ps.firstErrMu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// startBaseline starts the baseline server command and returns its address.
func startBaseline(ctx context.Context, command []string) (string, func(), error) {
	if len(command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return "", nil, err
		}
		command = []string{exe, "baseline-server", "--addr", "127.0.0.1:0"}
	}
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("baseline server said nothing: %w", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		stop()
		return "", nil, fmt.Errorf("baseline server: unexpected first line %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return addr, stop, nil
}

// detector polls the read API for sentinels whose timeout became visible in
// Postgres: GET /v1/devices?status=temporarily_offline&prefix=<sentinels>
// (the list is read from Postgres, not from a cache). Latency = the moment
// it is first seen − status_since (the service stamps a timeout transition
// with last heartbeat + offline_after: the moment the threshold was
// crossed). Both clocks are this host's; polling every 50 ms adds 25 ms on
// average.
type detector struct {
	r      *loadRun
	stopAt []time.Time
	mu     sync.Mutex
	seen   map[string]time.Duration
	polls  int
	errs   int
}

func newDetector(r *loadRun, stopAt []time.Time) *detector {
	return &detector{r: r, stopAt: stopAt, seen: map[string]time.Duration{}}
}

func (d *detector) pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.stopAt) - len(d.seen)
}

func (d *detector) run(ctx context.Context) {
	rc, err := rawhttp.New(d.r.cfg.URL, d.r.cfg.Timeout)
	if err != nil {
		return
	}
	defer rc.Close()
	path := "/v1/devices?status=temporarily_offline&limit=1000&prefix=" + url.QueryEscape(d.r.cfg.Prefix+"s-")
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Nothing can be due before the first sentinel's threshold.
		if time.Now().Before(d.stopAt[0].Add(d.r.cfg.OfflineAfter - 5*time.Second)) {
			continue
		}
		resp, err := rc.Do("GET", path, d.r.cfg.AdminToken, nil)
		now := time.Now()
		d.mu.Lock()
		d.polls++
		if err != nil || resp.Status != 200 {
			d.errs++
			d.mu.Unlock()
			continue
		}
		var page struct {
			Devices []struct {
				ID          string     `json:"id"`
				StatusSince *time.Time `json:"status_since"`
			} `json:"devices"`
		}
		if json.Unmarshal(resp.Body, &page) != nil {
			d.errs++
			d.mu.Unlock()
			continue
		}
		for _, dev := range page.Devices {
			if _, ok := d.seen[dev.ID]; ok || dev.StatusSince == nil {
				continue
			}
			d.seen[dev.ID] = now.Sub(*dev.StatusSince)
		}
		d.mu.Unlock()
	}
}

func (d *detector) result() DetectionResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	var h hist
	var lat []float64
	for _, v := range d.seen {
		h.add(max(v, 0))
		lat = append(lat, float64(v)/1e6)
	}
	slices.Sort(lat)
	res := DetectionResult{Sentinels: len(d.stopAt), Detected: len(d.seen), Polls: d.polls, PollErrors: d.errs, PollIntervalMs: 50}
	if len(lat) > 0 {
		q := func(p float64) float64 {
			i := int(p*float64(len(lat))+0.999999) - 1
			return round3(lat[max(0, min(i, len(lat)-1))])
		}
		res.P50Ms, res.P99Ms, res.MaxMs, res.MinMs = q(0.5), q(0.99), lat[len(lat)-1], lat[0]
	}
	return res
}
