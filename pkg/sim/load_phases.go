package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ---- registration ----------------------------------------------------------

func (r *loadRun) register(ctx context.Context, rep *LoadReport) error {
	cfg := &r.cfg
	r.setPhase("register")
	n := cfg.Devices
	r.ids, r.paths, r.tokens = make([]string, n), make([]string, n), make([]string, n)
	for i := range n {
		if i >= n-cfg.Sentinels {
			r.ids[i] = cfg.Prefix + "s-" + itoa(i)
		} else {
			r.ids[i] = cfg.Prefix + "d-" + itoa(i)
		}
		r.paths[i] = DevicePath(r.ids[i]) + "/heartbeat"
	}
	gws := 0
	if cfg.GatewayDevices > 0 {
		gws = cfg.GatewayDevices / cfg.GatewayBatch
	}
	r.gwIDs, r.gwPaths, r.gwTokens, r.gwDevs = make([]string, gws), make([]string, gws), make([]string, gws), make([][]string, gws)
	for g := range gws {
		r.gwIDs[g] = cfg.Prefix + "gw-" + itoa(g)
		r.gwPaths[g] = "/v1/gateways/" + url.PathEscape(r.gwIDs[g]) + "/heartbeats"
		devs := make([]string, cfg.GatewayBatch)
		for k := range devs {
			devs[k] = cfg.Prefix + "g" + itoa(g) + "-" + itoa(k)
		}
		r.gwDevs[g] = devs
	}
	start := time.Now()
	a := r.counters(ctx)
	// Gateways first, then every device (single ones, then the gateways'
	// devices), RegisterConcurrency at a time.
	type job struct {
		path, body string
		dst        *string
	}
	total := gws + n + cfg.GatewayDevices
	jobAt := func(i int) job {
		if i < gws {
			b, _ := json.Marshal(map[string]string{"id": r.gwIDs[i]})
			return job{"/v1/gateways", string(b), &r.gwTokens[i]}
		}
		i -= gws
		if i < n {
			b, _ := json.Marshal(map[string]string{"id": r.ids[i], "group": cfg.Prefix + "single"})
			return job{"/v1/devices", string(b), &r.tokens[i]}
		}
		i -= n
		g, k := i/cfg.GatewayBatch, i%cfg.GatewayBatch
		b, _ := json.Marshal(map[string]string{"id": r.gwDevs[g][k], "group": cfg.Prefix + "gw", "gateway": r.gwIDs[g]})
		return job{"/v1/devices", string(b), nil}
	}
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	var done atomic.Int64
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	go func() {
		for {
			select {
			case <-rctx.Done():
				return
			case <-progress.C:
				r.log.Info("registering", slog.Int64("done", done.Load()), slog.Int("of", total))
			}
		}
	}()
	for range cfg.RegisterConcurrency {
		wg.Go(func() {
			rc, err := newRawConn(cfg.URL, cfg.Timeout)
			if err != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, err)
				mu.Unlock()
				cancel()
				return
			}
			defer rc.close()
			for rctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				// Gateways must exist before their devices: the first gws
				// jobs are taken before any device job only if we wait.
				if i == gws && gws > 0 {
					for done.Load() < int64(gws) && rctx.Err() == nil {
						time.Sleep(5 * time.Millisecond)
					}
				}
				j := jobAt(i)
				var resp rawResp
				for attempt := 0; ; attempt++ {
					resp, err = rc.do("POST", j.path, cfg.AdminToken, []byte(j.body))
					if err == nil && resp.Status == 503 && attempt < 5 {
						_ = sleepCtx(rctx, 200*time.Millisecond)
						continue
					}
					break
				}
				if err == nil && resp.Status != 201 {
					err = fmt.Errorf("sim: register: POST %s %s: HTTP %d %s", j.path, j.body, resp.Status, bytes.TrimSpace(resp.Body))
				}
				if err == nil && j.dst != nil {
					var reg Registration
					if err = json.Unmarshal(resp.Body, &reg); err == nil && reg.Token == "" {
						err = errors.New("sim: register: no token in the answer")
					}
					*j.dst = reg.Token
				}
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					cancel()
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
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

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// ---- request bodies ----------------------------------------------------------

// clockText caches the RFC 3339 time of now, refreshed every 10 ms, for the
// device_time of heartbeats.
type clockText struct{ v atomic.Pointer[string] }

func (c *clockText) run(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s := time.Now().UTC().Format(time.RFC3339Nano)
		c.v.Store(&s)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *clockText) now() string {
	if p := c.v.Load(); p != nil {
		return *p
	}
	return time.Now().UTC().Format(time.RFC3339Nano)
}

// appendMetrics appends a heartbeat's fields (without braces): device time
// and three metrics that change from one heartbeat to the next.
func appendMetrics(b []byte, now string, rnd uint64) []byte {
	b = append(b, `"device_time":"`...)
	b = append(b, now...)
	b = append(b, `","metrics":{"battery":`...)
	b = strconv.AppendUint(b, 20+rnd%81, 10)
	b = append(b, `,"signal":-`...)
	b = strconv.AppendUint(b, 50+(rnd>>8)%40, 10)
	b = append(b, `,"app_version":"devicesim/1.0"}`...)
	return b
}

// ---- single heartbeats -----------------------------------------------------

// singleWorker sends single heartbeats on one connection.
type singleWorker struct {
	r    *loadRun
	rc   *rawConn
	body []byte
	rnd  *rand.PCG
	clk  *clockText
}

func (r *loadRun) newSingleWorker(base string, clk *clockText) (*singleWorker, error) {
	rc, err := newRawConn(base, r.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	return &singleWorker{r: r, rc: rc, rnd: rand.NewPCG(rand.Uint64(), rand.Uint64()), clk: clk}, nil
}

// send sends device i's heartbeat; it returns whether it was accepted and
// records the outcome in ps.
func (w *singleWorker) send(ps *phaseStats, i int) bool {
	b := append(w.body[:0], '{')
	b = appendMetrics(b, w.clk.now(), w.rnd.Uint64())
	b = append(b, '}')
	w.body = b
	t0 := time.Now()
	resp, err := w.rc.do("POST", w.r.paths[i], w.r.tokens[i], b)
	d := time.Since(t0)
	ps.requests.Add(1)
	w.r.requests.Add(1)
	switch {
	case err != nil:
		ps.fail(err)
		w.r.failures.Add(1)
		return false
	case resp.Status == 200:
		w.r.record(ps, d, 1)
		return true
	case resp.Status == 429:
		ps.r429.Add(1)
	case resp.Status == 503:
		ps.r503.Add(1)
	default:
		ps.fail(fmt.Errorf("heartbeat %s: HTTP %d %s", w.r.ids[i], resp.Status, bytes.TrimSpace(resp.Body)))
	}
	w.r.failures.Add(1)
	return false
}

// closedSingle runs a closed loop of single heartbeats against base for d:
// every connection sends the next device's heartbeat as soon as it has the
// previous answer. Devices are taken round robin.
func (r *loadRun) closedSingle(ctx context.Context, base string, d time.Duration, ps *phaseStats) error {
	clk := &clockText{}
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	go clk.run(cctx)
	var next atomic.Int64
	next.Store(rand.Int64N(int64(len(r.ids))))
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		w, err := r.newSingleWorker(base, clk)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer w.rc.close()
			for cctx.Err() == nil {
				w.send(ps, int(next.Add(1)%int64(len(r.ids))))
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// openSingle offers rate heartbeats per second for d, every device once per
// len(ids)/rate seconds, evenly spread; skip (when not nil) drops a
// device's heartbeat (a sentinel gone silent).
func (r *loadRun) openSingle(ctx context.Context, rate float64, d time.Duration, ps *phaseStats, skip func(i int, now time.Time) bool) error {
	clk := &clockText{}
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	go clk.run(cctx)
	type job struct {
		i   int
		due time.Time
	}
	q := make(chan job, 4*r.cfg.Concurrency)
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		w, err := r.newSingleWorker(r.cfg.URL, clk)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer w.rc.close()
			for j := range q {
				if cctx.Err() != nil {
					continue
				}
				if late := time.Since(j.due); late > 0 {
					ps.late(late)
				}
				w.send(ps, j.i)
			}
		})
	}
	// The schedule: item k at start + k/rate, device k mod n (starting at
	// a random device so that consecutive phases do not resend the same).
	start := time.Now()
	n := len(r.ids)
	off := rand.IntN(n)
	tick := time.NewTicker(time.Millisecond)
	k := 0
loop:
	for {
		select {
		case <-cctx.Done():
			break loop
		case now := <-tick.C:
			due := int(now.Sub(start).Seconds() * rate)
			for ; k < due; k++ {
				i := (off + k) % n
				if skip != nil && skip(i, now) {
					continue
				}
				select {
				case q <- job{i, start.Add(time.Duration(float64(k) / rate * float64(time.Second)))}:
				case <-cctx.Done():
					break loop
				}
			}
		}
	}
	tick.Stop()
	close(q)
	wg.Wait()
	return ctx.Err()
}

// ---- warm-up: every device once ------------------------------------------------

func (r *loadRun) warmup(ctx context.Context, rep *LoadReport) error {
	gateways := len(r.gwIDs)
	if r.cfg.GatewayRate > 0 && r.cfg.GatewayDuration > 0 {
		gateways = 0 // the gateway open loop onboards them
	}
	if r.cfg.NoWarmup || len(r.ids)+gateways == 0 {
		return nil
	}
	r.setPhase("warmup")
	ps := &phaseStats{}
	a := r.counters(ctx)
	clk := &clockText{}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go clk.run(cctx)
	var nextSingle, nextGW atomic.Int64
	var wg sync.WaitGroup
	// Fewer connections than the timed phases: onboarding a large fleet at
	// full blast only fills JetStream's queues (PubAcks beyond the publish
	// timeout, 503s) without finishing sooner.
	for range min(r.cfg.Concurrency, 32) {
		w, err := r.newSingleWorker(r.cfg.URL, clk)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer w.rc.close()
			for ctx.Err() == nil {
				i := int(nextSingle.Add(1) - 1)
				if i >= len(r.ids) {
					return
				}
				w.send(ps, i)
			}
		})
	}
	for range min(r.cfg.GatewayConcurrency, 4) {
		w, err := r.newGatewayWorker(clk)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer w.rc.close()
			for ctx.Err() == nil {
				g := int(nextGW.Add(1) - 1)
				if g >= gateways {
					return
				}
				w.send(ps, g)
			}
		})
	}
	wg.Wait()
	r.lastSingle = time.Now()
	if gateways > 0 {
		r.lastGateway = time.Now()
	}
	sent := time.Since(a.at)
	drained := r.drainFor(ctx, r.cfg.MaxWarmupDrain)
	b := r.counters(ctx)
	res := r.phaseResult("warmup", "mixed", "closed", 0, ps, a, b)
	rep.Phases = append(rep.Phases, res)
	w := &WarmupResult{Heartbeats: b.accepted - a.accepted, SendSeconds: round3(sent.Seconds()), DrainSeconds: round3(drained.Seconds()),
		Transitions: b.trans - a.trans, LagEnd: r.lagNow(ctx)}
	if secs := b.at.Sub(a.at).Seconds(); secs > 0 {
		w.TransitionsPS = round1(w.Transitions / secs)
	}
	rep.Warmup = w
	r.log.Info("warm-up", slog.Int64("heartbeats", w.Heartbeats), slog.Float64("send_s", w.SendSeconds),
		slog.Float64("drain_s", w.DrainSeconds), slog.Float64("transitions", w.Transitions), slog.Any("first_error", firstErr(ps)))
	return ctx.Err()
}

// rewarm sends one heartbeat of every single (or gateway) device when they
// have been silent for more than 60 % of offline-after, then waits for the
// lag to drain: devices that went offline come back (a transition each and,
// by design, a should_reconnect told once: a compare-and-swap on the
// registry entry and an event each). Reported as a phase of its own.
func (r *loadRun) rewarm(ctx context.Context, rep *LoadReport, single bool) error {
	last, n, name := r.lastGateway, len(r.gwIDs), "rewarm-gateway"
	if single {
		last, n, name = r.lastSingle, len(r.ids), "rewarm-single"
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
	r.setPhase(name)
	ps := &phaseStats{}
	a := r.counters(ctx)
	clk := &clockText{}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go clk.run(cctx)
	var next atomic.Int64
	var wg sync.WaitGroup
	conns := r.cfg.GatewayConcurrency
	if single {
		conns = r.cfg.Concurrency
	}
	for range conns {
		var send func(i int)
		var closeConn func()
		if single {
			w, err := r.newSingleWorker(r.cfg.URL, clk)
			if err != nil {
				return err
			}
			send, closeConn = func(i int) { w.send(ps, i) }, w.rc.close
		} else {
			w, err := r.newGatewayWorker(clk)
			if err != nil {
				return err
			}
			send, closeConn = func(i int) { w.send(ps, i) }, w.rc.close
		}
		wg.Go(func() {
			defer closeConn()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				send(i)
			}
		})
	}
	wg.Wait()
	if single {
		r.lastSingle = time.Now()
	} else {
		r.lastGateway = time.Now()
	}
	r.drainFor(ctx, r.cfg.MaxWarmupDrain)
	b := r.counters(ctx)
	res := r.phaseResult(name, map[bool]string{true: "single", false: "gateway"}[single], "closed", 0, ps, a, b)
	rep.Phases = append(rep.Phases, res)
	r.log.Info(name, slog.Float64("accepted_per_s", res.AcceptedPerSec), slog.Float64("seconds", res.Seconds),
		slog.Float64("transitions", b.trans-a.trans), slog.Any("first_error", firstErr(ps)))
	return ctx.Err()
}

// ---- rounds: baseline vs service ---------------------------------------------

func (r *loadRun) rounds(ctx context.Context, rep *LoadReport) error {
	cfg := &r.cfg
	if cfg.Rounds < 0 || cfg.Devices == 0 {
		return nil
	}
	base := cfg.BaselineURL
	if base == "" {
		addr, stop, err := startBaseline(ctx, cfg.BaselineCommand)
		if err != nil {
			return fmt.Errorf("sim: start the baseline server: %w", err)
		}
		defer stop()
		base = "http://" + addr
	}
	for k := range cfg.Rounds {
		round := RoundResult{Round: k + 1}
		round.DrainSeconds = round3(r.drain(ctx).Seconds())

		r.setPhase("baseline")
		bs := &phaseStats{}
		a := r.counters(ctx)
		if err := r.closedSingle(ctx, base, cfg.RoundDuration, bs); err != nil {
			return err
		}
		b := r.counters(ctx)
		bres := r.phaseResult(fmt.Sprintf("baseline-%d", k+1), "baseline", "closed", 0, bs, a, b)
		bres.ChainPerSec, bres.WorkerPerSec, bres.ProjectedPerSec = 0, 0, 0
		rep.Phases = append(rep.Phases, bres)

		r.setPhase("service-max")
		ss := &phaseStats{}
		a = r.counters(ctx)
		if err := r.closedSingle(ctx, cfg.URL, cfg.RoundDuration, ss); err != nil {
			return err
		}
		b = r.counters(ctx)
		sres := r.phaseResult(fmt.Sprintf("service-max-%d", k+1), "single", "closed", 0, ss, a, b)
		rep.Phases = append(rep.Phases, sres)
		r.lastSingle = time.Now()
		round.BaselinePerSec, round.ServicePerSec, round.ChainPerSec = round1(bres.AcceptedPerSec), round1(sres.AcceptedPerSec), round1(sres.ChainPerSec)
		if bres.AcceptedPerSec > 0 {
			round.Ratio = round3(sres.AcceptedPerSec / bres.AcceptedPerSec)
			round.ChainRatio = round3(sres.ChainPerSec / bres.AcceptedPerSec)
		}
		round.LoadAvg = loadAvg()
		rep.Rounds = append(rep.Rounds, round)
		r.log.Info("round", slog.Int("round", k+1), slog.Float64("baseline_per_s", round.BaselinePerSec),
			slog.Float64("service_per_s", round.ServicePerSec), slog.Float64("chain_per_s", round.ChainPerSec),
			slog.Float64("ratio", round.Ratio), slog.Float64("chain_ratio", round.ChainRatio), slog.Float64("load1", round.LoadAvg))
		if err := firstErr(bs, ss); err != nil {
			r.log.Warn("round errors", slog.Any("first", err))
		}
	}
	return nil
}

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

// ---- open loops of single heartbeats: sustain, steady with detection --------

func (r *loadRun) singleOpen(ctx context.Context, rep *LoadReport) error {
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
		r.setPhase("sustain")
		ps := &phaseStats{}
		a := r.counters(ctx)
		if err := r.openSingle(ctx, rate, cfg.SustainDuration, ps, nil); err != nil {
			return err
		}
		b := r.counters(ctx)
		r.lastSingle = time.Now()
		res := r.phaseResult("sustain", "single", "open", rate, ps, a, b)
		rep.Phases = append(rep.Phases, res)
		r.log.Info("sustain", slog.Float64("offered_per_s", rate), slog.Float64("accepted_per_s", res.AcceptedPerSec),
			slog.Float64("chain_per_s", res.ChainPerSec), slog.Bool("lag_growing", res.Lag.Growing), slog.Float64("lag_slope", res.Lag.SlopePerSec))
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
		return errors.New("sim: no steady rate: set SteadyRate or run the rounds")
	}
	r.drain(ctx)
	r.setPhase("steady")
	ps := &phaseStats{}
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
	skip := func(i int, now time.Time) bool {
		j := i - (n - sent)
		return j >= 0 && now.After(stopAt[j])
	}
	det := newDetector(r, stopAt)
	dctx, stopDet := context.WithCancel(ctx)
	var dwg sync.WaitGroup
	if sent > 0 {
		dwg.Go(func() { det.run(dctx) })
	}
	a := r.counters(ctx)
	err := r.openSingle(ctx, rate, cfg.SteadyDuration, ps, skip)
	b := r.counters(ctx)
	if sent > 0 {
		// Let the last sentinels' transitions arrive (the load has stopped).
		wait := time.Now().Add(5 * time.Second)
		for time.Now().Before(wait) && det.pending() > 0 && ctx.Err() == nil {
			_ = sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	stopDet()
	dwg.Wait()
	if err != nil {
		return err
	}
	res := r.phaseResult("steady", "single", "open", rate, ps, a, b)
	if sent > 0 {
		dr := det.result()
		res.Detection = &dr
	}
	rep.Phases = append(rep.Phases, res)
	r.log.Info("steady", slog.Float64("offered_per_s", rate), slog.Float64("accepted_per_s", res.AcceptedPerSec),
		slog.String("latency", res.Latency.String()))
	return nil
}

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
	rc, err := newRawConn(d.r.cfg.URL, d.r.cfg.Timeout)
	if err != nil {
		return
	}
	defer rc.close()
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
		resp, err := rc.do("GET", path, d.r.cfg.AdminToken, nil)
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

// ---- gateway batches ---------------------------------------------------------

// gatewayWorker sends gateway batches on one connection.
type gatewayWorker struct {
	r    *loadRun
	rc   *rawConn
	body []byte
	rnd  *rand.PCG
	clk  *clockText
}

var (
	tagHTTP429  = []byte(`"http_status":429`)
	tagHTTP503  = []byte(`"http_status":503`)
	tagAccepted = []byte(`"accepted":`)
)

// send posts gateway g's batch (all its devices) and records the outcome.
func (w *gatewayWorker) send(ps *phaseStats, g int) {
	b := append(w.body[:0], `{"heartbeats":[`...)
	now := w.clk.now()
	for k, dev := range w.r.gwDevs[g] {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"device":"`...)
		b = append(b, dev...) // generated ids: nothing to escape
		b = append(b, `",`...)
		b = appendMetrics(b, now, w.rnd.Uint64())
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	w.body = b
	t0 := time.Now()
	resp, err := w.rc.do("POST", w.r.gwPaths[g], w.r.gwTokens[g], b)
	d := time.Since(t0)
	ps.requests.Add(1)
	w.r.requests.Add(1)
	switch {
	case err != nil:
		ps.fail(err)
		w.r.failures.Add(1)
	case resp.Status == 200:
		acc := int64(-1)
		if i := bytes.LastIndex(resp.Body, tagAccepted); i >= 0 {
			rest := resp.Body[i+len(tagAccepted):]
			j := 0
			for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
				j++
			}
			acc, _ = strconv.ParseInt(string(rest[:j]), 10, 64)
		}
		if acc < 0 {
			ps.fail(fmt.Errorf("gateway batch: no accepted count in %.200s", resp.Body))
			return
		}
		ps.r429.Add(int64(bytes.Count(resp.Body, tagHTTP429)))
		ps.r503.Add(int64(bytes.Count(resp.Body, tagHTTP503)))
		if rej := int64(len(w.r.gwDevs[g])) - acc; rej > 0 {
			w.r.failures.Add(rej)
		}
		w.r.record(ps, d, acc)
	case resp.Status == 503:
		ps.r503.Add(int64(len(w.r.gwDevs[g])))
		w.r.failures.Add(1)
	default:
		ps.fail(fmt.Errorf("gateway batch %s: HTTP %d %.300s", w.r.gwIDs[g], resp.Status, bytes.TrimSpace(resp.Body)))
		w.r.failures.Add(1)
	}
}

func (r *loadRun) newGatewayWorker(clk *clockText) (*gatewayWorker, error) {
	rc, err := newRawConn(r.cfg.URL, r.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	return &gatewayWorker{r: r, rc: rc, rnd: rand.NewPCG(rand.Uint64(), rand.Uint64()), clk: clk}, nil
}

func (r *loadRun) gatewayMax(ctx context.Context, rep *LoadReport) error {
	cfg := &r.cfg
	if len(r.gwIDs) == 0 {
		return nil
	}
	if cfg.GatewayMaxDuration > 0 {
		r.drain(ctx)
		r.setPhase("gateway-max")
		ps := &phaseStats{}
		clk := &clockText{}
		cctx, cancel := context.WithTimeout(ctx, cfg.GatewayMaxDuration)
		go clk.run(cctx)
		var next atomic.Int64
		next.Store(rand.Int64N(int64(len(r.gwIDs))))
		var wg sync.WaitGroup
		a := r.counters(ctx)
		for range cfg.GatewayConcurrency {
			w, err := r.newGatewayWorker(clk)
			if err != nil {
				cancel()
				return err
			}
			wg.Go(func() {
				defer w.rc.close()
				for cctx.Err() == nil {
					w.send(ps, int(next.Add(1)%int64(len(r.gwIDs))))
				}
			})
		}
		wg.Wait()
		cancel()
		b := r.counters(ctx)
		r.lastGateway = time.Now()
		res := r.phaseResult("gateway-max", "gateway", "closed", 0, ps, a, b)
		rep.Phases = append(rep.Phases, res)
		r.log.Info("gateway-max", slog.Float64("accepted_per_s", res.AcceptedPerSec), slog.Float64("chain_per_s", res.ChainPerSec),
			slog.String("latency", res.Latency.String()), slog.Any("first_error", firstErr(ps)))
	}
	return ctx.Err()
}

func (r *loadRun) gatewayOpen(ctx context.Context, rep *LoadReport) error {
	cfg := &r.cfg
	if len(r.gwIDs) == 0 {
		return nil
	}
	if cfg.GatewayRate > 0 && cfg.GatewayDuration > 0 {
		r.drain(ctx)
		r.setPhase("gateway")
		ps := &phaseStats{}
		clk := &clockText{}
		cctx, cancel := context.WithTimeout(ctx, cfg.GatewayDuration)
		defer cancel()
		go clk.run(cctx)
		type job struct {
			g   int
			due time.Time
		}
		q := make(chan job, 4*cfg.GatewayConcurrency)
		var wg sync.WaitGroup
		a := r.counters(ctx)
		for range cfg.GatewayConcurrency {
			w, err := r.newGatewayWorker(clk)
			if err != nil {
				return err
			}
			wg.Go(func() {
				defer w.rc.close()
				for j := range q {
					if cctx.Err() != nil {
						continue
					}
					if late := time.Since(j.due); late > 0 {
						ps.late(late)
					}
					w.send(ps, j.g)
				}
			})
		}
		batchRate := cfg.GatewayRate / float64(cfg.GatewayBatch)
		start := time.Now()
		off := rand.IntN(len(r.gwIDs))
		tick := time.NewTicker(time.Millisecond)
		k := 0
	loop:
		for {
			select {
			case <-cctx.Done():
				break loop
			case now := <-tick.C:
				due := int(now.Sub(start).Seconds() * batchRate)
				for ; k < due; k++ {
					g := (off + k) % len(r.gwIDs)
					at := start.Add(time.Duration(float64(k) / batchRate * float64(time.Second)))
					if ramp := cfg.GatewayRamp; ramp > 0 && at.Before(start.Add(ramp*time.Duration((g-off+len(r.gwIDs))%len(r.gwIDs))/time.Duration(len(r.gwIDs)))) {
						continue // this gateway is not online yet
					}
					select {
					case q <- job{g, at}:
					case <-cctx.Done():
						break loop
					}
				}
			}
		}
		tick.Stop()
		close(q)
		wg.Wait()
		b := r.counters(ctx)
		r.lastGateway = time.Now()
		res := r.phaseResult("gateway", "gateway", "open", cfg.GatewayRate, ps, a, b)
		rep.Phases = append(rep.Phases, res)
		r.log.Info("gateway", slog.Float64("offered_per_s", cfg.GatewayRate), slog.Float64("accepted_per_s", res.AcceptedPerSec),
			slog.Float64("chain_per_s", res.ChainPerSec), slog.Bool("lag_growing", res.Lag.Growing),
			slog.String("latency", res.Latency.String()), slog.Any("first_error", firstErr(ps)))
	}
	return ctx.Err()
}
