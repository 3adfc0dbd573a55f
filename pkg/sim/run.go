package sim

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devstatus/devstatus/internal/backoff"
	"github.com/devstatus/devstatus/pkg/apiclient"
)

// RunOptions configures [Plan.Run].
type RunOptions struct {
	// NoCheck only drives the heartbeats until Stop, without reading the
	// service. Default: check.
	NoCheck bool
	// Check configures the comparison (default: status and transitions).
	Check CheckOptions
	// Concurrency is the number of heartbeats in flight at most. Default 64.
	Concurrency int
	// RegisterConcurrency is the number of registrations in flight. Default 16.
	RegisterConcurrency int
	// Lead is the pause between the last registration and the first
	// heartbeat (offset 0). Default 200 ms.
	Lead time.Duration
	// Logger receives progress. Default: discard.
	Logger *slog.Logger
}

// Disturbance says why a device's heartbeats did not go as planned (so its
// expectation may not hold): a 429, a 503, a failed request, or a heartbeat
// answered later than half the margin after its intended time.
type Disturbance struct {
	Device string
	Reason string
}

// Result is the outcome of a simulation run.
type Result struct {
	// Devices and their behaviours.
	Devices    int
	Behaviours map[Behaviour]int
	// Start is the wall time of offset 0; CheckAt and Stop are the plan's
	// times made absolute.
	Start, CheckAt, Stop time.Time
	Heartbeats           HeartbeatStats
	// Disturbed lists devices whose heartbeats did not go as planned.
	Disturbed []Disturbance
	// Checked says a check ran; CheckAttempts how many reads it took (it
	// re-reads while the service lags, until the plan's check window closes).
	Checked       bool
	CheckAttempts int
	// Mismatches of the last check attempt (none when everything matched).
	Mismatches []Mismatch
	// Elapsed is the wall time of the whole run, registration included.
	Elapsed time.Duration
}

// OK reports a run where every device was driven as planned and (when
// checked) the service matched every expectation.
func (r *Result) OK() bool {
	return len(r.Disturbed) == 0 && len(r.Mismatches) == 0
}

// Unexplained returns the mismatches of devices that were not disturbed:
// those the service got wrong although it was driven exactly as planned.
// On a loaded machine some devices may be disturbed (late heartbeats); a
// test that must not be flaky asserts that this is empty.
func (r *Result) Unexplained() []Mismatch {
	dis := make(map[string]bool, len(r.Disturbed))
	for _, d := range r.Disturbed {
		dis[d.Device] = true
	}
	var out []Mismatch
	for _, m := range r.Mismatches {
		if !dis[m.Device] {
			out = append(out, m)
		}
	}
	return out
}

// String is a short human-readable report.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devices %d (", r.Devices)
	for i, bh := range Behaviours {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", bh, r.Behaviours[bh])
	}
	h := r.Heartbeats
	fmt.Fprintf(&b, ")\nheartbeats: scheduled %d, sent %d, accepted %d, 429 %d, 503 %d, failed %d, max lateness %s, latency %s\n",
		h.Scheduled, h.Sent, h.Accepted, h.RateLimited, h.Unavailable, h.Failed, h.MaxLateness, h.Latency)
	fmt.Fprintf(&b, "disturbed devices: %d\n", len(r.Disturbed))
	for _, d := range r.Disturbed[:min(len(r.Disturbed), 20)] {
		fmt.Fprintf(&b, "  %q: %s\n", d.Device, d.Reason)
	}
	if r.Checked {
		fmt.Fprintf(&b, "check: %d attempts, %d mismatches\n", r.CheckAttempts, len(r.Mismatches))
		for _, m := range r.Mismatches[:min(len(r.Mismatches), 50)] {
			fmt.Fprintf(&b, "  %s\n", m)
		}
	}
	fmt.Fprintf(&b, "elapsed %s", r.Elapsed.Round(time.Millisecond))
	return b.String()
}

// Run builds the plan of s ([NewPlan]) and runs it ([Plan.Run]).
func Run(ctx context.Context, c *apiclient.Client, s Scenario, opts RunOptions) (*Result, error) {
	p, err := NewPlan(s)
	if err != nil {
		return nil, err
	}
	return p.Run(ctx, c, opts)
}

// Run registers the plan's devices, sends every heartbeat at its intended
// time (start + offset), and, unless NoCheck, checks the service from
// CheckAt on: it re-reads while there are mismatches (the service may lag)
// until the read would end past Stop + Margin/2, and keeps the last
// mismatches. Steady and returning devices go on heartbeating during the
// check. It returns an error only when the run could not be done
// (registration failed, ctx canceled, the service could not be read at the
// last attempt); what the service got wrong is in the [Result].
//
// The service must run with the plan's thresholds and with its per-device
// rate limit off or below the interval (--rate-min-interval 0
// --rate-per-minute 0 for the default 1 s interval).
func (p *Plan) Run(ctx context.Context, c *apiclient.Client, opts RunOptions) (*Result, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 64
	}
	if opts.RegisterConcurrency <= 0 {
		opts.RegisterConcurrency = 16
	}
	if opts.Lead <= 0 {
		opts.Lead = 200 * time.Millisecond
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	began := time.Now()
	res := &Result{Devices: len(p.Devices), Behaviours: p.Counts()}
	ids := make([]string, len(p.Devices))
	groups := make([]string, len(p.Devices))
	for i, d := range p.Devices {
		ids[i], groups[i] = d.ID, d.Group
	}
	tokens, err := registerAll(ctx, c, ids, groups, opts.RegisterConcurrency, log)
	if err != nil {
		return nil, err
	}

	var items []item
	for i, d := range p.Devices {
		for _, t := range d.Times {
			items = append(items, item{at: t, dev: int32(i)})
		}
	}
	slices.SortStableFunc(items, func(a, b item) int { return cmp.Compare(a.at, b.at) })

	start := time.Now().Add(opts.Lead)
	res.Start, res.CheckAt, res.Stop = start, start.Add(p.CheckAt), start.Add(p.Stop)
	rec := newRecorder(len(p.Devices))
	lateBudget := p.Scenario.Margin / 2
	var (
		mu        sync.Mutex
		disturbed = map[int]string{}
	)
	disturb := func(dev int, reason string) {
		mu.Lock()
		if _, ok := disturbed[dev]; !ok {
			disturbed[dev] = reason
		}
		mu.Unlock()
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan struct{})
	go func() {
		defer close(done)
		dispatch(runCtx, start, &sliceSource{items: items}, opts.Concurrency, func(ctx context.Context, it item, due time.Time) {
			dev := int(it.dev)
			out := rec.beat(ctx, c, dev, ids[dev], tokens[dev], due, res.Stop)
			switch {
			case out.Canceled:
			case out.Err != nil:
				disturb(dev, fmt.Sprintf("heartbeat due at +%s failed: %v", it.at, out.Err))
			case out.Retried && out.Err == nil:
				disturb(dev, fmt.Sprintf("heartbeat due at +%s was refused (429/503) and retried", it.at))
			case out.Err == nil && out.Answered.Sub(due) > lateBudget:
				disturb(dev, fmt.Sprintf("heartbeat due at +%s answered %s late (budget %s)", it.at, out.Answered.Sub(due), lateBudget))
			}
		})
	}()
	log.Info("simulation started", slog.Int("devices", len(p.Devices)), slog.Int("heartbeats", len(items)),
		slog.Duration("check_at", p.CheckAt), slog.Duration("stop", p.Stop))

	var checkErr error
	if !opts.NoCheck {
		res.Checked = true
		if err := backoff.Sleep(ctx, time.Until(res.CheckAt)); err != nil {
			return nil, err
		}
		exps := p.Expectations(start)
		readEnd := res.Stop.Add(p.Scenario.Margin / 2)
		for {
			res.CheckAttempts++
			t0 := time.Now()
			res.Mismatches, checkErr = Check(ctx, c, exps, opts.Check)
			took := time.Since(t0)
			if checkErr == nil && len(res.Mismatches) == 0 {
				break
			}
			pause := min(p.Scenario.Margin/4, 100*time.Millisecond)
			if ctx.Err() != nil || time.Now().Add(pause+took).After(readEnd) {
				break
			}
			log.Debug("check: service not there yet, reading again", slog.Int("mismatches", len(res.Mismatches)), slog.Any("err", checkErr))
			_ = backoff.Sleep(ctx, pause)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	stopRun()
	<-done
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.Heartbeats = rec.stats(len(items))
	for dev, reason := range disturbed {
		res.Disturbed = append(res.Disturbed, Disturbance{Device: ids[dev], Reason: reason})
	}
	slices.SortFunc(res.Disturbed, func(a, b Disturbance) int { return strings.Compare(a.Device, b.Device) })
	res.Elapsed = time.Since(began)
	if checkErr != nil {
		return res, fmt.Errorf("sim: check: %w", checkErr)
	}
	return res, nil
}
