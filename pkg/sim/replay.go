package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/backoff"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/trace"
)

// LiveConfig configures [ReplayLive].
type LiveConfig struct {
	// Trace is the parsed trace. Required.
	Trace *trace.Trace
	// Nodes restricts the replay to these node names (nil: every node).
	Nodes []string
	// Window is the span of trace time replayed before the comparison.
	// Required. The nodes go on following the trace after Window.To while
	// the service is read (see [ReplayLive]); where the trace has no rows
	// after Window.To (the committed excerpt ends at its day's midnight) the
	// nodes simply fall silent.
	Window trace.Window
	// Factor (k) compresses time: trace time t is sent at wall
	// start + (t − Window.From)/k. Required, > 0.
	Factor float64
	// Thresholds in trace time. Default 40 s / 300 s. The service must run
	// with Thresholds.Scale(Factor) (and heartbeat interval and tick divided
	// by Factor too, and its rate limit off).
	Thresholds trace.Thresholds
	// IDPrefix is prepended to node names, so that repeated replays against
	// one service do not collide. Default "".
	IDPrefix string
	// Group of the registered nodes. Default "grid5000".
	Group string
	// Concurrency bounds the heartbeats in flight. Default 128.
	Concurrency int
	// RegisterConcurrency bounds the registrations in flight. Default 32.
	RegisterConcurrency int
	// Lead is the pause between registration and trace time Window.From.
	// Default 500 ms.
	Lead time.Duration
	// Tolerance (wall time) is how late heartbeats are expected to be
	// stamped, relative to their intended time, when choosing the comparison
	// time. (The comparison itself uses each heartbeat's measured delay.)
	// Default 250 ms.
	Tolerance time.Duration
	// Settle (wall time) is how far behind real time the read API may show
	// a device (the service's tick, its pipeline and projection lag).
	// Default 2 s.
	Settle time.Duration
	// ReadBudget (wall time) is the time allowed for reading every node's
	// status. Default 1 s.
	ReadBudget time.Duration
	// Logger receives progress. Default: discard.
	Logger *slog.Logger
}

func (c *LiveConfig) setDefaults() {
	if c.Thresholds == (trace.Thresholds{}) {
		c.Thresholds = trace.DefaultThresholds()
	}
	if c.Group == "" {
		c.Group = "grid5000"
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 128
	}
	if c.RegisterConcurrency <= 0 {
		c.RegisterConcurrency = 32
	}
	if c.Lead <= 0 {
		c.Lead = 500 * time.Millisecond
	}
	if c.Tolerance <= 0 {
		c.Tolerance = 250 * time.Millisecond
	}
	if c.Settle <= 0 {
		c.Settle = 2 * time.Second
	}
	if c.ReadBudget <= 0 {
		c.ReadBudget = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *LiveConfig) validate() error {
	var errs []error
	if c.Factor <= 0 {
		errs = append(errs, fmt.Errorf("factor must be > 0, got %g", c.Factor))
	}
	if err := c.Window.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Thresholds.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Trace == nil {
		errs = append(errs, errors.New("no trace"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: live replay: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Ambiguous is a node not compared because its expected status changes
// within the uncertainty of the read (see [ReplayLive]).
type Ambiguous struct {
	Node string
	// From and To bound the trace time the service's answer may reflect.
	From, To time.Time
	// Statuses are the expected statuses over that span.
	Statuses []events.Status
}

// LiveResult is the outcome of [ReplayLive].
type LiveResult struct {
	// Nodes replayed, and of those the ones with heartbeats in the window.
	Nodes, NodesWithHeartbeats int
	// Heartbeats: Scheduled counts those before CompareAt (all must be
	// accepted); the other counters include those sent during the read.
	Heartbeats HeartbeatStats
	// Start is the wall time of trace time Window.From.
	Start time.Time
	// CompareAt is the trace time T_end at which the oracle is evaluated,
	// chosen ≥ Window.To so that no node's expected status changes within
	// the read's uncertainty.
	CompareAt time.Time
	// ReadFrom and ReadTo are the wall times of the read.
	ReadFrom, ReadTo time.Time
	// Final counts the expected final statuses of the compared nodes.
	Final map[events.Status]int
	// Mismatches are compared nodes whose status differs from the oracle's.
	Mismatches []Mismatch
	// Ambiguous nodes were not compared: given the measured read times and
	// heartbeat delays, more than one status was right for them (normally
	// none: CompareAt is chosen to avoid them; a slow read or heartbeats
	// stamped late near the comparison can create some).
	Ambiguous []Ambiguous
	// Disturbed nodes had a heartbeat refused (429, 503) or failed; they are
	// still compared when their status is unambiguous.
	Disturbed []Disturbance
	Elapsed   time.Duration
}

// OK reports a replay in which no heartbeat was refused or failed and every
// compared node's final status matched the oracle. A test that must not be
// flaky on a loaded machine also bounds len(Ambiguous).
func (r *LiveResult) OK() bool { return len(r.Mismatches) == 0 && len(r.Disturbed) == 0 }

// String is a short human-readable report.
func (r *LiveResult) String() string {
	var b strings.Builder
	h := r.Heartbeats
	fmt.Fprintf(&b, "nodes %d (with heartbeats %d)\n", r.Nodes, r.NodesWithHeartbeats)
	fmt.Fprintf(&b, "heartbeats: scheduled %d, sent %d, accepted %d, 429 %d, 503 %d, failed %d, max lateness %s, latency %s\n",
		h.Scheduled, h.Sent, h.Accepted, h.RateLimited, h.Unavailable, h.Failed, h.MaxLateness, h.Latency)
	fmt.Fprintf(&b, "compared at trace time %s (read %s..%s)\n", r.CompareAt.UTC().Format(time.RFC3339Nano),
		r.ReadFrom.Format(time.RFC3339Nano), r.ReadTo.Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "expected final:")
	for _, st := range events.Statuses {
		fmt.Fprintf(&b, " %s %d", st, r.Final[st])
	}
	fmt.Fprintf(&b, "\nmismatches %d, ambiguous (not compared) %d, disturbed %d\n", len(r.Mismatches), len(r.Ambiguous), len(r.Disturbed))
	for _, m := range r.Mismatches[:min(len(r.Mismatches), 50)] {
		fmt.Fprintf(&b, "  %s\n", m)
	}
	for _, a := range r.Ambiguous[:min(len(r.Ambiguous), 20)] {
		fmt.Fprintf(&b, "  ambiguous %q: %v over %s..%s\n", a.Node, a.Statuses, a.From.Format(time.RFC3339Nano), a.To.Format(time.RFC3339Nano))
	}
	for _, d := range r.Disturbed[:min(len(r.Disturbed), 20)] {
		fmt.Fprintf(&b, "  disturbed %q: %s\n", d.Device, d.Reason)
	}
	fmt.Fprintf(&b, "elapsed %s", r.Elapsed.Round(time.Millisecond))
	return b.String()
}

// ReplayLive replays a window of the trace over HTTP against a running
// service, time-compressed by Factor k, and compares every node's status
// with the oracle.
//
// It registers every node (id IDPrefix + node name), then sends each
// heartbeat of trace time t at wall time start + (t − From)/k. The service
// stamps heartbeats with its own receive time, so it sees the trace's
// silences divided by k, plus each request's lateness; it must run with
// thresholds, heartbeat interval and tick divided by k.
//
// The comparison. The status the read API shows is that of some moment of
// the service's clock; mapped back to trace time, that moment lies in
// [T − k·(Settle + Tolerance), T + k·ReadBudget] for a read started at the
// wall time of trace time T (Settle: how stale a read may be; Tolerance: how
// late a heartbeat may be stamped; ReadBudget: how long the read takes). The
// nodes keep following the trace after Window.To, so the oracle's status at
// any T is that of the trace's heartbeats up to T. ReplayLive picks the
// earliest T ≥ Window.To such that no node has an expected transition (a
// heartbeat after an outage, last heartbeat + O or + D) inside that span,
// reads every status at the wall time of T (the device list), stops the
// heartbeats, and compares each node's status with the oracle's at T — the
// final status at T_end = T. So a node's silence at the comparison is never
// within that span of O or D: the tolerance is k·(Settle + Tolerance) before
// and k·ReadBudget after, in trace time.
//
// After the read, each node is judged with what was measured rather than
// planned: the service's clock during the read lay in [ReadFrom − Settle,
// ReadTo], and each heartbeat was stamped between its intended time and the
// moment its answer came back (or maybe never, if it failed or was still in
// flight). From those bounds [possibleStatuses] derives every status the
// node may rightly show; with one possible status the node is compared, with
// several it is reported as Ambiguous instead. A heartbeat refused (429,
// 503) or failed marks its node Disturbed (reported, and compared when still
// unambiguous). With settings that fit the service this leaves no node
// uncompared, and a mismatch means the service disagrees with the oracle.
func ReplayLive(ctx context.Context, c *apiclient.Client, cfg LiveConfig) (*LiveResult, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	began := time.Now()
	k := cfg.Factor
	log := cfg.Logger
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * k) }
	before := scale(cfg.Settle + cfg.Tolerance)
	after := scale(cfg.ReadBudget)
	from := cfg.Window.From
	// Heartbeats up to the end of the tail, during which the comparison time
	// is searched and the read happens.
	tail := 2*cfg.Thresholds.DisconnectAfter + before + after
	ext := trace.Window{From: from, To: cfg.Window.To.Add(tail).Truncate(time.Second)}
	var sched []trace.NodeHeartbeats
	if cfg.Nodes == nil {
		sched = cfg.Trace.Heartbeats(ext, 0)
	} else {
		for _, name := range cfg.Nodes {
			n := cfg.Trace.Node(name)
			if n == nil {
				return nil, fmt.Errorf("%w: live replay: no node %q in the trace", ErrInvalidConfig, name)
			}
			sched = append(sched, trace.NodeHeartbeats{Node: name, Times: n.Heartbeats(ext, 0)})
		}
	}
	res := &LiveResult{Nodes: len(sched), Final: map[events.Status]int{}}
	ids := make([]string, len(sched))
	groups := make([]string, len(sched))
	hbs := make([][]time.Time, len(sched))
	var items []item
	var changes []time.Time
	for i, n := range sched {
		ids[i], groups[i] = cfg.IDPrefix+n.Node, cfg.Group
		hbs[i] = n.TimesUTC()
		for j, t := range hbs[i] {
			items = append(items, item{at: trace.ScaleDuration(t.Sub(from), k), dev: int32(i), k: int32(j)})
		}
		e, err := trace.Expect(ids[i], hbs[i], ext.To.Add(2*cfg.Thresholds.DisconnectAfter), cfg.Thresholds)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		for _, tr := range e.Transitions {
			changes = append(changes, tr.At)
		}
	}
	slices.SortStableFunc(items, func(a, b item) int { return cmp.Compare(a.at, b.at) })
	res.CompareAt = pickCompareTime(changes, cfg.Window.To, before, after)
	if res.CompareAt.Add(after).After(ext.To) {
		return nil, fmt.Errorf("%w: live replay: no quiet comparison time within %s after the window; lower Settle, Tolerance, ReadBudget or Factor", ErrInvalidConfig, tail)
	}
	// expectation at T_end = CompareAt, from the heartbeats up to it
	exps := make([]trace.Expectation, len(sched))
	for i := range sched {
		upTo := hbs[i][:sort.Search(len(hbs[i]), func(j int) bool { return hbs[i][j].After(res.CompareAt) })]
		e, err := trace.Expect(ids[i], upTo, res.CompareAt, cfg.Thresholds)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if e.Heartbeats > 0 {
			res.NodesWithHeartbeats++
		}
		exps[i] = e
	}

	tokens, err := registerAll(ctx, c, ids, groups, cfg.RegisterConcurrency, log)
	if err != nil {
		return nil, err
	}
	start := time.Now().Add(cfg.Lead)
	res.Start = start
	wall := func(t time.Time) time.Time { return start.Add(trace.ScaleDuration(t.Sub(from), k)) }
	traceAt := func(w time.Time) time.Time { return from.Add(scale(w.Sub(start))) }
	readAt := wall(res.CompareAt)
	rec := newRecorder(len(sched))
	// delay[i][j]: how long after its intended time heartbeat j of node i
	// was answered (an upper bound of the service's stamp); unknownDelay
	// when it was never accepted (not sent, failed: maybe never stamped).
	delay := make([][]time.Duration, len(sched))
	for i := range delay {
		delay[i] = make([]time.Duration, len(hbs[i]))
		for j := range delay[i] {
			delay[i][j] = unknownDelay
		}
	}
	var (
		mu        sync.Mutex
		disturbed = map[int]string{}
		sent      int
	)
	log.Info("live replay started", slog.Int("nodes", len(ids)), slog.Float64("factor", k), slog.String("window", cfg.Window.String()),
		slog.Time("compare_at_trace", res.CompareAt), slog.Time("compare_at_wall", readAt))
	progress := max(len(items)/10, 1)
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan struct{})
	go func() {
		defer close(done)
		dispatch(runCtx, start, &sliceSource{items: items}, cfg.Concurrency, func(ctx context.Context, it item, due time.Time) {
			dev := int(it.dev)
			out := rec.beat(ctx, c, dev, ids[dev], tokens[dev], due, readAt)
			tt := from.Add(scale(it.at)).Format(time.RFC3339)
			var reason string
			switch {
			case out.Canceled:
			case out.Err != nil:
				reason = fmt.Sprintf("heartbeat of trace time %s failed: %v", tt, out.Err)
			case out.Retried:
				reason = fmt.Sprintf("heartbeat of trace time %s was refused (429/503) and retried", tt)
			}
			mu.Lock()
			defer mu.Unlock()
			if out.Err == nil {
				delay[dev][it.k] = out.Answered.Sub(due)
			}
			if _, ok := disturbed[dev]; !ok && reason != "" {
				disturbed[dev] = reason
			}
			sent++
			if sent%progress == 0 {
				log.Info("live replay progress", slog.Int("heartbeats", sent))
			}
		})
	}()

	if err := backoff.Sleep(ctx, time.Until(readAt)); err != nil {
		return nil, err
	}
	res.ReadFrom = time.Now()
	devs, err := c.AllDevices(ctx, apiclient.ListOptions{Limit: 500})
	res.ReadTo = time.Now()
	stopRun()
	<-done
	if err != nil {
		return nil, fmt.Errorf("sim: read statuses: %w", err)
	}
	res.Heartbeats = rec.stats(sort.Search(len(items), func(j int) bool { return !from.Add(scale(items[j].at)).Before(res.CompareAt) }))
	got := make(map[string]events.Status, len(devs))
	for _, d := range devs {
		got[d.ID] = d.Status
	}
	// What each node's status may be, given the read's actual span (the
	// service's clock anywhere in [ReadFrom − Settle, ReadTo]) and every
	// heartbeat's measured delay.
	lo, hi := traceAt(res.ReadFrom.Add(-cfg.Settle)), traceAt(res.ReadTo)
	for i := range sched {
		if reason, ok := disturbed[i]; ok {
			res.Disturbed = append(res.Disturbed, Disturbance{Device: ids[i], Reason: reason})
		}
		d := make([]time.Duration, len(delay[i]))
		for j, w := range delay[i] {
			d[j] = unknownDelay
			if w != unknownDelay {
				d[j] = scale(max(w, 0))
			}
		}
		sts := possibleStatuses(hbs[i], d, lo, hi, cfg.Thresholds)
		if len(sts) != 1 {
			res.Ambiguous = append(res.Ambiguous, Ambiguous{Node: ids[i], From: lo, To: hi, Statuses: sts})
			continue
		}
		want := sts[0]
		res.Final[want]++
		st, ok := got[ids[i]]
		switch {
		case !ok:
			res.Mismatches = append(res.Mismatches, Mismatch{Device: ids[i], Kind: MismatchMissing, Want: string(want), Got: "not listed"})
		case st != want:
			res.Mismatches = append(res.Mismatches, Mismatch{Device: ids[i], Kind: MismatchStatus, Want: string(want), Got: string(st)})
		}
	}
	sortMismatches(res.Mismatches)
	res.Elapsed = time.Since(began)
	log.Info("live replay compared", slog.Int("mismatches", len(res.Mismatches)), slog.Int("ambiguous", len(res.Ambiguous)),
		slog.Int("disturbed", len(res.Disturbed)))
	return res, nil
}

// unknownDelay marks a heartbeat that may never have been stamped.
const unknownDelay = time.Duration(math.MaxInt64)

// possibleStatuses returns, in the order of events.Statuses, every status
// the service may show while its clock is anywhere in [lo, hi] (trace
// time), for a device whose heartbeat j was meant for time t[j] and was
// stamped somewhere in [t[j], t[j]+d[j]] (d[j] = unknownDelay: maybe never).
// It relies on the status being a monotone function of the silence since
// the last stamped heartbeat (connected ≤ O < temporarily_offline < D ≤
// disconnected; registered before any).
func possibleStatuses(t []time.Time, d []time.Duration, lo, hi time.Time, th trace.Thresholds) []events.Status {
	// received(j, n): certainly stamped by n; maybe(j, n): possibly stamped by n.
	certainBy := func(j int, n time.Time) bool { return d[j] != unknownDelay && !t[j].Add(d[j]).After(n) }
	// Cut [lo, hi] at every point where a heartbeat is due or certainly in.
	cuts := []time.Time{lo, hi}
	for j := range t {
		for _, c := range []time.Time{t[j], t[j].Add(min(d[j], hi.Sub(t[j])))} {
			if c.After(lo) && c.Before(hi) {
				cuts = append(cuts, c)
			}
		}
	}
	slices.SortFunc(cuts, func(a, b time.Time) int { return a.Compare(b) })
	cuts = slices.CompactFunc(cuts, func(a, b time.Time) bool { return a.Equal(b) })
	possible := map[events.Status]bool{}
	for c := 0; c < len(cuts); c++ {
		n1, n2 := cuts[c], cuts[min(c+1, len(cuts)-1)]
		// The last stamp at any n in [n1, n2] is at least a (the latest
		// heartbeat certainly stamped by n1, at its intended time) and at
		// most b (the latest stamp possible by n2).
		var a, b time.Time
		haveA, haveB := false, false
		for j := range t {
			if t[j].After(n2) {
				break
			}
			if certainBy(j, n1) {
				a, haveA = t[j], true
			}
			cand := n2
			if d[j] != unknownDelay && t[j].Add(d[j]).Before(n2) {
				cand = t[j].Add(d[j])
			}
			if !haveB || cand.After(b) {
				b, haveB = cand, true
			}
		}
		if !haveB {
			possible[events.StatusRegistered] = true
			continue
		}
		if !haveA {
			possible[events.StatusRegistered] = true
		}
		smin := max(n1.Sub(b), 0)
		if smin <= th.OfflineAfter {
			possible[events.StatusConnected] = true
		}
		if !haveA {
			// no heartbeat certainly stamped: any silence
			possible[events.StatusTemporarilyOffline] = possible[events.StatusTemporarilyOffline] || smin < th.DisconnectAfter
			possible[events.StatusDisconnected] = true
			continue
		}
		smax := n2.Sub(a)
		if smax > th.OfflineAfter && smin < th.DisconnectAfter {
			possible[events.StatusTemporarilyOffline] = true
		}
		if smax >= th.DisconnectAfter {
			possible[events.StatusDisconnected] = true
		}
	}
	var out []events.Status
	for _, st := range events.Statuses {
		if possible[st] {
			out = append(out, st)
		}
	}
	return out
}

// pickCompareTime returns the earliest T ≥ notBefore such that no change
// point lies in [T − before, T + after].
func pickCompareTime(changes []time.Time, notBefore time.Time, before, after time.Duration) time.Time {
	slices.SortFunc(changes, func(a, b time.Time) int { return a.Compare(b) })
	t := notBefore
	for {
		// the last change point ≤ t + after
		i, _ := slices.BinarySearchFunc(changes, t.Add(after), func(c, target time.Time) int {
			if c.After(target) {
				return 1
			}
			return -1
		})
		if i == 0 || changes[i-1].Before(t.Add(-before)) {
			return t
		}
		t = changes[i-1].Add(before + time.Millisecond)
	}
}
