package load

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/devstatus/devstatus/pkg/load/internal/procstat"
)

// Report is the outcome of [Run]; it is written as JSON and drawn by
// [Report.SVG].
type Report struct {
	Version  int       `json:"version"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Label    string    `json:"label,omitempty"`
	Host     HostInfo  `json:"host"`
	Config   any       `json:"config"`

	Registration *RegistrationResult `json:"registration,omitempty"`
	Warmup       *WarmupResult       `json:"warmup,omitempty"`
	Rounds       []RoundResult       `json:"rounds,omitempty"`
	// RatioMedian is the median over the rounds of the service's accepted
	// heartbeats/s divided by the baseline's in the same round;
	// ChainRatioMedian uses the whole chain's rate (the least of accepted,
	// applied by the workers, and projected to Postgres).
	RatioMedian      float64 `json:"ratio_median,omitempty"`
	ChainRatioMedian float64 `json:"chain_ratio_median,omitempty"`
	BaselineMedian   float64 `json:"baseline_per_s_median,omitempty"`
	ServiceMedian    float64 `json:"service_per_s_median,omitempty"`
	ChainMedian      float64 `json:"chain_per_s_median,omitempty"`
	// SustainedSinglePerSec is the single-heartbeat rate the sustain phase
	// held with the lag not growing (or what the chain processed when it grew).
	SustainedSinglePerSec float64 `json:"sustained_single_per_s,omitempty"`

	Phases  []PhaseResult  `json:"phases"`
	Memory  *MemoryResult  `json:"memory,omitempty"`
	Extra   map[string]any `json:"extra,omitempty"`
	Targets []TargetResult `json:"targets,omitempty"`
	Series  []Sample       `json:"series"`
}

// HostInfo describes the machine of the run.
type HostInfo struct {
	Cores     int     `json:"cores"`
	GoVersion string  `json:"go"`
	LoadStart float64 `json:"load1_start"`
	LoadEnd   float64 `json:"load1_end"`
}

func hostInfo() HostInfo {
	return HostInfo{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), LoadStart: procstat.LoadAvg()}
}

// RegistrationResult is the registration phase.
type RegistrationResult struct {
	Devices  int                `json:"devices"`
	Gateways int                `json:"gateways"`
	Seconds  float64            `json:"seconds"`
	PerSec   float64            `json:"per_s"`
	CPUCores map[string]float64 `json:"cpu_cores"`
}

// WarmupResult is the fleet's onboarding: one heartbeat of every device,
// each making its device connected (a transition), then the wait until the
// service's lag drained.
type WarmupResult struct {
	Heartbeats    int64   `json:"heartbeats"`
	SendSeconds   float64 `json:"send_s"`
	DrainSeconds  float64 `json:"drain_s"`
	Transitions   float64 `json:"transitions"`
	TransitionsPS float64 `json:"transitions_per_s"`
	LagEnd        float64 `json:"lag_end_events"`
}

// RoundResult is one baseline-then-service pair of closed loops.
type RoundResult struct {
	Round          int     `json:"round"`
	BaselinePerSec float64 `json:"baseline_per_s"`
	ServicePerSec  float64 `json:"service_per_s"`
	ChainPerSec    float64 `json:"chain_per_s"`
	Ratio          float64 `json:"ratio"`
	ChainRatio     float64 `json:"chain_ratio"`
	DrainSeconds   float64 `json:"drain_s"`
	LoadAvg        float64 `json:"load1"`
}

// PhaseResult is one phase's figures.
type PhaseResult struct {
	Name string `json:"name"`
	// Kind: baseline, single or gateway; Mode: closed or open loop.
	Kind           string  `json:"kind"`
	Mode           string  `json:"mode"`
	Start          float64 `json:"start_s"`
	Seconds        float64 `json:"seconds"`
	OfferedPerSec  float64 `json:"offered_per_s,omitempty"`
	AcceptedPerSec float64 `json:"accepted_per_s"`
	// RequestsPerSec are HTTP requests (a gateway batch is one).
	RequestsPerSec float64 `json:"requests_per_s"`
	// WorkerPerSec / ProjectedPerSec: input events applied by the workers /
	// by the liveness projection per second; ChainPerSec the least of those
	// and AcceptedPerSec.
	WorkerPerSec    float64 `json:"worker_per_s,omitempty"`
	ProjectedPerSec float64 `json:"projected_per_s,omitempty"`
	ChainPerSec     float64 `json:"chain_per_s,omitempty"`
	// SecondHalfPerSec, SecondHalfChainPerSec: the same over the second half
	// of the phase (after the gateway fleet's onboarding in its first interval).
	SecondHalfPerSec      float64        `json:"second_half_accepted_per_s,omitempty"`
	SecondHalfChainPerSec float64        `json:"second_half_chain_per_s,omitempty"`
	Accepted              int64          `json:"accepted"`
	RateLimited           int64          `json:"rate_limited"`
	Unavailable           int64          `json:"unavailable"`
	Failed                int64          `json:"failed"`
	Latency               LatencySummary `json:"latency"`
	// Transitions is how many transitions the service published during the
	// phase (devstatus_transitions_total; 0 without metrics).
	Transitions   float64 `json:"transitions,omitempty"`
	MaxLatenessMs float64 `json:"max_lateness_ms,omitempty"`
	// CPUPer1000 is CPU seconds per 1000 accepted heartbeats by process;
	// ServiceCPUPer1000 sums the service's processes (not Postgres).
	CPUPer1000        map[string]float64 `json:"cpu_s_per_1000"`
	ServiceCPUPer1000 float64            `json:"service_cpu_s_per_1000,omitempty"`
	CPUCores          map[string]float64 `json:"cpu_cores"`
	Lag               LagTrend           `json:"lag"`
	Detection         *DetectionResult   `json:"detection,omitempty"`
	LoadAvg           float64            `json:"load1"`
}

// LagTrend is the consumer + projection lag of a phase.
type LagTrend struct {
	// SlopePerSec is the least-squares slope of the total lag (events) over
	// the second half of the phase.
	SlopePerSec float64 `json:"slope_events_per_s"`
	MaxEvents   float64 `json:"max_events"`
	EndEvents   float64 `json:"end_events"`
	EndConsumer float64 `json:"end_consumer_events"`
	// EndProjection is the projections' lag in events at the end.
	EndProjection        float64 `json:"end_projection_events"`
	EndProjectionSeconds float64 `json:"end_projection_seconds"`
	MaxProjectionSeconds float64 `json:"max_projection_seconds"`
	// Growing: the slope exceeds 1 % of the input rate and more than one
	// second of input is waiting at the end.
	Growing bool `json:"growing"`
}

// DetectionResult is the detection latency of the sentinels.
type DetectionResult struct {
	Sentinels      int     `json:"sentinels"`
	Detected       int     `json:"detected"`
	P50Ms          float64 `json:"p50_ms"`
	P99Ms          float64 `json:"p99_ms"`
	MaxMs          float64 `json:"max_ms"`
	MinMs          float64 `json:"min_ms"`
	Polls          int     `json:"polls"`
	PollErrors     int     `json:"poll_errors"`
	PollIntervalMs int     `json:"poll_interval_ms"`
}

// MemoryResult is the worker process's memory per tracked device.
type MemoryResult struct {
	Process            string  `json:"process"`
	TrackedBefore      float64 `json:"tracked_before"`
	TrackedAfter       float64 `json:"tracked_after"`
	RSSBeforeMiB       float64 `json:"rss_before_mib"`
	RSSAfterMiB        float64 `json:"rss_after_mib"`
	HeapBeforeMiB      float64 `json:"heap_inuse_before_mib"`
	HeapAfterMiB       float64 `json:"heap_inuse_after_mib"`
	RSSBytesPerDevice  float64 `json:"rss_bytes_per_device"`
	HeapBytesPerDevice float64 `json:"heap_inuse_bytes_per_device"`
}

// Sample is one second of the run.
type Sample struct {
	T     float64 `json:"t"`
	Phase string  `json:"phase"`
	// Accepted heartbeats, HTTP requests and failed requests/items per second.
	Accepted float64 `json:"accepted"`
	Requests float64 `json:"requests"`
	Failures float64 `json:"failures"`
	// P50, P99 of the requests answered in this second, ms.
	P50                   float64            `json:"p50_ms"`
	P99                   float64            `json:"p99_ms"`
	ConsumerLag           float64            `json:"consumer_lag"`
	LivenessLag           float64            `json:"liveness_lag"`
	TransitionsLag        float64            `json:"transitions_lag"`
	LivenessLagSeconds    float64            `json:"liveness_lag_s"`
	TransitionsLagSeconds float64            `json:"transitions_lag_s"`
	WorkerEventsPerSec    float64            `json:"worker_events"`
	ProjectedPerSec       float64            `json:"projected"`
	Tracked               float64            `json:"tracked"`
	Goroutines            float64            `json:"goroutines"`
	CPU                   map[string]float64 `json:"cpu_cores"`
	RSSMiB                map[string]float64 `json:"rss_mib"`
	Load1                 float64            `json:"load1"`
}

// TargetResult compares one figure with its target (issue 6).
type TargetResult struct {
	ID       int    `json:"id"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	// Met: true, false, or null when this run did not measure it.
	Met *bool `json:"met"`
}

func reportConfig(c *Config) map[string]any {
	m := map[string]any{
		"url": c.URL, "devices": c.Devices, "gateway_devices": c.GatewayDevices, "gateway_batch": c.GatewayBatch,
		"concurrency": c.Concurrency, "gateway_concurrency": c.GatewayConcurrency, "rounds": c.Rounds,
		"round_s": c.RoundDuration.Seconds(), "sustain_s": c.SustainDuration.Seconds(), "sustain_fraction": c.SustainFraction,
		"steady_s": c.SteadyDuration.Seconds(), "steady_fraction": c.SteadyFraction, "steady_rate": c.SteadyRate,
		"sentinels": c.Sentinels, "offline_after_s": c.OfflineAfter.Seconds(), "gateway_max_s": c.GatewayMaxDuration.Seconds(),
		"gateway_rate": c.GatewayRate, "gateway_s": c.GatewayDuration.Seconds(), "prefix": c.Prefix,
	}
	var ms []string
	for _, x := range c.Metrics {
		ms = append(ms, x.Name+"="+x.URL)
	}
	m["metrics"] = ms
	return m
}

// summarize fills the medians and the target verdicts.
func (rep *Report) summarize() {
	var ratios, chainRatios, base, svc, chain []float64
	for _, r := range rep.Rounds {
		ratios = append(ratios, r.Ratio)
		chainRatios = append(chainRatios, r.ChainRatio)
		base = append(base, r.BaselinePerSec)
		svc = append(svc, r.ServicePerSec)
		chain = append(chain, r.ChainPerSec)
	}
	rep.RatioMedian, rep.ChainRatioMedian = median(ratios), median(chainRatios)
	rep.BaselineMedian, rep.ServiceMedian, rep.ChainMedian = round1(median(base)), round1(median(svc)), round1(median(chain))
	rep.Targets = rep.targets()
}

func yes(b bool) *bool { return &b }

func (rep *Report) phase(name string) *PhaseResult {
	for i := range rep.Phases {
		if rep.Phases[i].Name == name {
			return &rep.Phases[i]
		}
	}
	return nil
}

func (rep *Report) targets() []TargetResult {
	var ts []TargetResult
	t1 := TargetResult{ID: 1, Target: "single heartbeats, whole chain, lag not growing: >= 0.5 x the plain handler in the same run"}
	if len(rep.Rounds) > 0 {
		sus := rep.phase("sustain")
		t1.Measured = fmt.Sprintf("chain %.0f/s vs baseline %.0f/s: ratio %.3f (median of %d rounds; HTTP-accepted ratio %.3f)",
			rep.ChainMedian, rep.BaselineMedian, rep.ChainRatioMedian, len(rep.Rounds), rep.RatioMedian)
		met := rep.ChainRatioMedian >= 0.5
		if sus != nil {
			t1.Measured += fmt.Sprintf("; sustain %.0f/s offered, %.0f/s accepted, lag slope %.1f events/s (growing: %v)",
				sus.OfferedPerSec, sus.AcceptedPerSec, sus.Lag.SlopePerSec, sus.Lag.Growing)
			met = met && !sus.Lag.Growing
		}
		t1.Met = yes(met)
	}
	ts = append(ts, t1)
	t2 := TargetResult{ID: 2, Target: "gateway batches: 33 000 heartbeats/s for 10 minutes over 1 000 000 devices, lag not growing"}
	if g := rep.phase("gateway"); g != nil {
		devs := 0
		if rep.Registration != nil {
			devs = rep.Registration.Devices
		}
		t2.Measured = fmt.Sprintf("%.0f/s offered, %.0f/s accepted, %.0f/s through the chain for %.0f s over %d devices (second half: %.0f/s accepted, %.0f/s through the chain); lag slope %.1f events/s, end %.0f events (growing: %v)",
			g.OfferedPerSec, g.AcceptedPerSec, g.ChainPerSec, g.Seconds, devs, g.SecondHalfPerSec, g.SecondHalfChainPerSec, g.Lag.SlopePerSec, g.Lag.EndEvents, g.Lag.Growing)
		t2.Met = yes(g.SecondHalfChainPerSec >= 0.99*33000 && g.Seconds/2 >= 599 && devs >= 1_000_000 && !g.Lag.Growing)
	}
	if g := rep.phase("gateway-max"); g != nil {
		if t2.Measured != "" {
			t2.Measured += "; "
		}
		t2.Measured += fmt.Sprintf("gateway closed loop: %.0f/s accepted, %.0f/s through the chain", g.AcceptedPerSec, g.ChainPerSec)
	}
	ts = append(ts, t2)
	t3 := TargetResult{ID: 3, Target: "p99 single-heartbeat latency <= 25 ms at 70 % of the sustained maximum"}
	t4 := TargetResult{ID: 4, Target: "detection latency p99 <= 2 s at 70 % of the sustained maximum"}
	if s := rep.phase("steady"); s != nil {
		t3.Measured = fmt.Sprintf("%.0f/s offered (%.0f%% of %.0f/s): %s", s.OfferedPerSec, 100*s.OfferedPerSec/max(rep.SustainedSinglePerSec, 1), rep.SustainedSinglePerSec, s.Latency)
		t3.Met = yes(s.Latency.P99 <= 25 && s.Latency.Count > 0)
		if d := s.Detection; d != nil {
			t4.Measured = fmt.Sprintf("%d/%d sentinels seen in Postgres: p50 %.0f ms, p99 %.0f ms, max %.0f ms (poll every %d ms)",
				d.Detected, d.Sentinels, d.P50Ms, d.P99Ms, d.MaxMs, d.PollIntervalMs)
			t4.Met = yes(d.Detected == d.Sentinels && d.P99Ms <= 2000)
		}
	}
	ts = append(ts, t3, t4)
	t5 := TargetResult{ID: 5, Target: "<= 1 KiB resident memory per tracked device in the worker"}
	if m := rep.Memory; m != nil && m.TrackedAfter > m.TrackedBefore {
		t5.Measured = fmt.Sprintf("%s process: RSS %.0f -> %.0f MiB for %.0f -> %.0f tracked devices: %.0f B/device (Go heap in use %.0f B/device)",
			m.Process, m.RSSBeforeMiB, m.RSSAfterMiB, m.TrackedBefore, m.TrackedAfter, m.RSSBytesPerDevice, m.HeapBytesPerDevice)
		if m.TrackedAfter >= 1_000_000 {
			t5.Met = yes(m.RSSBytesPerDevice <= 1024)
		} else {
			// The process's fixed costs (consumer buffers, snapshot encoding,
			// the collector's headroom) dominate a small fleet: the figure
			// is an upper bound, judged only with a million devices.
			t5.Measured += "; judged with 1 000 000 devices (make bench-full): fixed costs dominate a smaller fleet"
		}
	}
	ts = append(ts, t5)
	return ts
}

// WriteJSON writes the report to path.
func (rep *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// String is the human summary.
func (rep *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devicesim load %s  (%d cores, load average %.2f at start, %.2f at end)\n",
		rep.Started.Format(time.RFC3339), rep.Host.Cores, rep.Host.LoadStart, rep.Host.LoadEnd)
	if r := rep.Registration; r != nil {
		fmt.Fprintf(&b, "registration: %d devices, %d gateways in %.1f s (%.0f/s)\n", r.Devices, r.Gateways, r.Seconds, r.PerSec)
	}
	if w := rep.Warmup; w != nil {
		fmt.Fprintf(&b, "warm-up: %d first heartbeats sent in %.1f s, %.0f transitions, drained %.1f s later (%.0f transitions/s overall), lag at end %.0f\n",
			w.Heartbeats, w.SendSeconds, w.Transitions, w.DrainSeconds, w.TransitionsPS, w.LagEnd)
	}
	if len(rep.Rounds) > 0 {
		fmt.Fprintf(&b, "%-6s %12s %12s %12s %7s %7s %6s\n", "round", "baseline/s", "service/s", "chain/s", "ratio", "chain", "load1")
		for _, r := range rep.Rounds {
			fmt.Fprintf(&b, "%-6d %12.0f %12.0f %12.0f %7.3f %7.3f %6.2f\n", r.Round, r.BaselinePerSec, r.ServicePerSec, r.ChainPerSec, r.Ratio, r.ChainRatio, r.LoadAvg)
		}
		fmt.Fprintf(&b, "%-6s %12.0f %12.0f %12.0f %7.3f %7.3f\n", "median", rep.BaselineMedian, rep.ServiceMedian, rep.ChainMedian, rep.RatioMedian, rep.ChainRatioMedian)
	}
	fmt.Fprintf(&b, "%-16s %6s %9s %9s %9s %8s %8s %8s %9s %9s %8s %6s\n", "phase", "secs", "offered", "accepted", "chain", "p50 ms", "p99 ms", "p99.9", "cpu/1000", "lag end", "slope", "load1")
	for _, p := range rep.Phases {
		fmt.Fprintf(&b, "%-16s %6.0f %9.0f %9.0f %9.0f %8.2f %8.2f %8.2f %9.3f %9.0f %8.1f %6.2f\n", p.Name, p.Seconds, p.OfferedPerSec, p.AcceptedPerSec,
			p.ChainPerSec, p.Latency.P50, p.Latency.P99, p.Latency.P999, p.ServiceCPUPer1000, p.Lag.EndEvents, p.Lag.SlopePerSec, p.LoadAvg)
		if p.RateLimited+p.Unavailable+p.Failed > 0 {
			fmt.Fprintf(&b, "%16s 429: %d, 503: %d, failed: %d\n", "", p.RateLimited, p.Unavailable, p.Failed)
		}
		if len(p.CPUPer1000) > 0 {
			keys := make([]string, 0, len(p.CPUPer1000))
			for k := range p.CPUPer1000 {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %.3f s/1000 (%.2f cores)", k, p.CPUPer1000[k], p.CPUCores[k]))
			}
			fmt.Fprintf(&b, "%16s cpu: %s\n", "", strings.Join(parts, ", "))
		}
	}
	for _, t := range rep.Targets {
		verdict := "not measured"
		if t.Met != nil {
			verdict = map[bool]string{true: "MET", false: "MISSED"}[*t.Met]
		}
		if t.Measured == "" {
			continue
		}
		fmt.Fprintf(&b, "target %d [%s] %s\n    %s\n", t.ID, verdict, t.Target, t.Measured)
	}
	return b.String()
}
