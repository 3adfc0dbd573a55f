package load

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMemoryTargetJudgedAtAMillion: the worker's memory per device is judged
// against 1 KiB only with a fleet of a million devices; a smaller fleet's
// figure is reported but not judged (fixed costs dominate it).
func TestMemoryTargetJudgedAtAMillion(t *testing.T) {
	for _, c := range []struct {
		tracked, perDevice float64
		want               *bool
	}{
		{90_000, 1764, nil},
		{1_060_000, 555, yes(true)},
		{1_060_000, 1100, yes(false)},
	} {
		rep := &Report{Memory: &MemoryResult{Process: "worker", TrackedAfter: c.tracked, RSSBytesPerDevice: c.perDevice}}
		var t5 TargetResult
		for _, x := range rep.targets() {
			if x.ID == 5 {
				t5 = x
			}
		}
		switch {
		case c.want == nil && (t5.Met != nil || !strings.Contains(t5.Measured, "judged with 1 000 000 devices")):
			t.Errorf("%v devices: judged %v: %s", c.tracked, t5.Met, t5.Measured)
		case c.want != nil && (t5.Met == nil || *t5.Met != *c.want):
			t.Errorf("%v devices at %v B: met %v, want %v", c.tracked, c.perDevice, t5.Met, *c.want)
		}
	}
}

// knownReport is a small run: two rounds, a sustain phase, a steady phase
// with detection, a gateway phase and the worker's memory.
func knownReport() *Report {
	rep := &Report{
		Version: 1, Label: `a <b> & "c"`, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Host: HostInfo{Cores: 2, LoadStart: 1.5, LoadEnd: 2.5},
		Rounds: []RoundResult{
			{Round: 1, BaselinePerSec: 20000, ServicePerSec: 11000, ChainPerSec: 10000, Ratio: 0.55, ChainRatio: 0.5},
			{Round: 2, BaselinePerSec: 24000, ServicePerSec: 12000, ChainPerSec: 12000, Ratio: 0.5, ChainRatio: 0.5},
			{Round: 3, BaselinePerSec: 22000, ServicePerSec: 13000, ChainPerSec: 11000, Ratio: 0.59, ChainRatio: 0.45},
		},
		SustainedSinglePerSec: 10000,
		Phases: []PhaseResult{
			{Name: "sustain", OfferedPerSec: 11000, AcceptedPerSec: 10500, Lag: LagTrend{SlopePerSec: 3}},
			{Name: "steady", OfferedPerSec: 7000, AcceptedPerSec: 7000, Latency: LatencySummary{Count: 100, P99: 12},
				Detection:  &DetectionResult{Sentinels: 10, Detected: 10, P50Ms: 300, P99Ms: 900, PollIntervalMs: 50},
				CPUPer1000: map[string]float64{"service": 0.2}, CPUCores: map[string]float64{"service": 1.4}, RateLimited: 3},
			{Name: "gateway", OfferedPerSec: 33000, AcceptedPerSec: 33000, ChainPerSec: 32900, Seconds: 1300, SecondHalfChainPerSec: 33000},
		},
		Registration: &RegistrationResult{Devices: 1_000_000, Gateways: 1000, Seconds: 100, PerSec: 10000},
		Memory:       &MemoryResult{Process: "worker", TrackedBefore: 0, TrackedAfter: 1_000_000, RSSBytesPerDevice: 700},
	}
	for i := range 60 {
		ph := "baseline"
		if i >= 30 {
			ph = "service-max"
		}
		rep.Series = append(rep.Series, Sample{T: float64(i + 1), Phase: ph, Accepted: float64(1000 * i), P50: 1, P99: float64(i),
			ConsumerLag: float64(i), CPU: map[string]float64{"service": 1, "postgres": 0.5}, Load1: 2})
	}
	rep.summarize()
	return rep
}

func TestSummarizeAndTheTextReport(t *testing.T) {
	t.Parallel()
	rep := knownReport()
	if rep.BaselineMedian != 22000 || rep.ServiceMedian != 12000 || rep.ChainMedian != 11000 || rep.RatioMedian != 0.55 || rep.ChainRatioMedian != 0.5 {
		t.Fatalf("medians %+v", rep)
	}
	met := map[int]*bool{}
	for _, x := range rep.Targets {
		met[x.ID] = x.Met
	}
	// 1: chain ratio 0.5 and the sustain lag flat; 2: 33 000/s for 650 s
	// over a million devices; 3: p99 12 ms; 4: p99 0.9 s; 5: 700 B.
	for id := 1; id <= 5; id++ {
		if met[id] == nil || !*met[id] {
			t.Errorf("target %d: met %v", id, met[id])
		}
	}
	s := rep.String()
	for _, want := range []string{
		"devicesim load 2026-01-02T03:04:05Z  (2 cores, load average 1.50 at start, 2.50 at end)",
		"registration: 1000000 devices, 1000 gateways in 100.0 s (10000/s)",
		"median        22000        12000        11000   0.550   0.500",
		"429: 3, 503: 0, failed: 0",
		"cpu: service 0.200 s/1000 (1.40 cores)",
		"target 4 [MET] detection latency",
		"10/10 sentinels seen in Postgres: p50 300 ms, p99 900 ms",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("the text report lacks %q:\n%s", want, s)
		}
	}
	// JSON round trip: what `devicesim plot` reads back.
	path := filepath.Join(t.TempDir(), "r.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.String() != s {
		t.Fatalf("round trip: %v\n%s", err, back.String())
	}
}

func TestSVGIsWellFormedAndDrawsEveryPanel(t *testing.T) {
	t.Parallel()
	rep := knownReport()
	svg := rep.SVG()
	d := xml.NewDecoder(strings.NewReader(svg))
	elems := map[string]int{}
	var texts []string
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch x := tok.(type) {
		case xml.StartElement:
			elems[x.Name.Local]++
		case xml.CharData:
			texts = append(texts, string(x))
		}
	}
	all := strings.Join(texts, "\n")
	// Four panels with their lines: accepted (1: no worker or projection
	// figures in the series), latency (2), lag (3), CPU (2 processes + the
	// load average).
	if elems["svg"] != 1 || elems["polyline"] != 1+2+3+3 {
		t.Fatalf("elements %v", elems)
	}
	for _, want := range []string{`a <b> & "c": devstatus load run 2026-01-02 03:04 UTC`, "accepted heartbeats per second (/s)",
		"CPU by process (cores)", "postgres (cores)", "baseline", "service-max", "closed loop, same generator: /s", "0.45"} {
		if !strings.Contains(all, want) {
			t.Errorf("the plot lacks %q", want)
		}
	}
	if got := (&Report{}).SVG(); !strings.HasPrefix(got, "<svg") || !strings.HasSuffix(got, "</svg>\n") {
		t.Fatalf("an empty report's plot: %.100s", got)
	}
	for v, want := range map[float64]string{0: "0", 0.25: "0.25", 12: "12", 1500: "1.5k", 2_500_000: "2.5M"} {
		if got := fmtNum(v); got != want {
			t.Errorf("fmtNum(%v) = %q, want %q", v, got, want)
		}
	}
	for x, want := range map[float64]float64{0: 1, 0.3: 0.5, 7: 10, 120: 200, 2400: 2500} {
		if got := niceStep(x); got != want {
			t.Errorf("niceStep(%v) = %v, want %v", x, got, want)
		}
	}
}
