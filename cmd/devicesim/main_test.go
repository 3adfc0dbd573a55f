package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/load"
	"github.com/devstatus/devstatus/pkg/trace"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpListsSubcommandsAndFlags(t *testing.T) {
	code, _, stderr := runCLI(t, "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, sub := range []string{"sim", "replay-live", "replay-virtual", "load", "summary", "excerpt", "DEVICESIM_"} {
		if !strings.Contains(stderr, sub) {
			t.Errorf("root help lacks %q:\n%s", sub, stderr)
		}
	}
	code, _, stderr = runCLI(t, "replay-virtual", "--help")
	if code != exitOK || !strings.Contains(stderr, "-nats-url") || !strings.Contains(stderr, "WITHOUT its ticker role") {
		t.Fatalf("exit %d, help:\n%s", code, stderr)
	}
	if code, _, _ := runCLI(t); code != exitError {
		t.Fatalf("no subcommand: exit %d", code)
	}
	if code, _, stderr := runCLI(t, "sim", "--no-such-flag"); code != exitError || !strings.Contains(stderr, "no-such-flag") {
		t.Fatalf("bad flag: exit %d %s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "sim"); code != exitError || !strings.Contains(stderr, "admin-token") {
		t.Fatalf("missing token: exit %d %s", code, stderr)
	}
}

func TestSummaryAndExcerptOfTheCommittedDay(t *testing.T) {
	code, out, stderr := runCLI(t, "summary", "--trace", trace.TestdataDay())
	if code != exitOK || !strings.Contains(out, "≤40s 132, 40–300s 821, >300s 309") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	dst := filepath.Join(t.TempDir(), "x.tab.xz")
	code, out, stderr = runCLI(t, "excerpt", "--trace", trace.TestdataDay(), "--window", "2006-09-21T06:00:00Z+1h", "--out", dst)
	if code != exitOK || !strings.Contains(out, "1288 nodes") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	tr, err := trace.Open(dst)
	if err != nil || len(tr.Nodes) != 1288 {
		t.Fatalf("excerpt: %v", err)
	}
}

// fakeEdge accepts everything and claims every device is connected with no
// history: a wrong service, for the exit status.
func fakeEdge(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var beats atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		var b struct{ ID string }
		_ = json.NewDecoder(r.Body).Decode(&b)
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": b.ID, "token": "t"})
	})
	mux.HandleFunc("POST /v1/devices/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		beats.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "connected", "heartbeat_interval_s": 1})
	})
	mux.HandleFunc("GET /v1/devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"id": r.PathValue("id"), "status": "connected"})
	})
	mux.HandleFunc("GET /v1/devices/{id}/transitions", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"transitions":[]}`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &beats
}

func TestSimReportsMismatchesWithExitStatus1AndReadsEnv(t *testing.T) {
	srv, beats := fakeEdge(t)
	t.Setenv("DEVICESIM_ADMIN_TOKEN", "secret")
	t.Setenv("DEVICESIM_DEVICES", "7")
	code, out, stderr := runCLI(t, "sim", "--url", srv.URL, "--interval", "100ms", "--offline-after", "300ms", "--disconnect-after", "1s", "--log-level", "warn")
	if code != exitMismatch {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(out, "plan: 7 devices") || !strings.Contains(out, "mismatches") || beats.Load() == 0 {
		t.Fatalf("output:\n%s", out)
	}
}

func TestLoadReportsRate(t *testing.T) {
	srv, beats := fakeEdge(t)
	base := httptest.NewServer(load.BaselineHandler())
	t.Cleanup(base.Close)
	dir := t.TempDir()
	code, out, stderr := runCLI(t, "load", "--url", srv.URL, "--admin-token", "x", "--devices", "50", "--baseline-url", base.URL,
		"--rounds", "1", "--round-duration", "300ms", "--sustain-duration", "300ms", "--steady-duration", "0", "--concurrency", "4",
		"--out", filepath.Join(dir, "r.json"), "--plot", filepath.Join(dir, "r.svg"), "--log-level", "warn")
	if code != exitOK || !strings.Contains(out, "baseline/s") || !strings.Contains(out, "sustain") || beats.Load() == 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	var rep load.Report
	b, err := os.ReadFile(filepath.Join(dir, "r.json"))
	if err != nil || json.Unmarshal(b, &rep) != nil || len(rep.Rounds) != 1 || rep.Rounds[0].BaselinePerSec <= 0 || rep.Rounds[0].Ratio <= 0 {
		t.Fatalf("report: %v\n%s", err, b)
	}
	if svg, err := os.ReadFile(filepath.Join(dir, "r.svg")); err != nil || !strings.HasPrefix(string(svg), "<svg") {
		t.Fatalf("plot: %v", err)
	}
}

func TestReplayVirtualPublishesToJetStream(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 4, ListenAddr: "127.0.0.1:-1"})
	code, out, stderr := runCLI(t, "replay-virtual", "--nats-url", b.ClientURL(), "--trace", trace.TestdataDay(),
		"--window", "2006-09-21T06:00:00Z+2m", "--log-level", "warn")
	if code != exitOK || !strings.Contains(out, "on 4 partitions") || !strings.Contains(out, "1288 registrations") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
}

func TestPlotRedrawsAReport(t *testing.T) {
	rep := load.Report{
		Version: 1, Label: "unit",
		Rounds: []load.RoundResult{{Round: 1, BaselinePerSec: 40000, ServicePerSec: 9000, ChainPerSec: 8800, Ratio: 0.225, ChainRatio: 0.22}},
		Series: []load.Sample{{T: 1, Phase: "baseline", Accepted: 40000}, {T: 2, Phase: "service-max", Accepted: 9000, P50: 2, P99: 30}},
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in, svg := filepath.Join(dir, "report.json"), filepath.Join(dir, "plot.svg")
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI(t, "plot", "--out", svg, in)
	if code != exitOK || !strings.Contains(out, "0.22") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	got, err := os.ReadFile(svg)
	if err != nil || !strings.HasPrefix(string(got), "<svg") || !strings.Contains(string(got), "closed loop, same generator") {
		t.Fatalf("plot: %v\n%.300s", err, got)
	}
	if code, _, stderr := runCLI(t, "plot", filepath.Join(dir, "missing.json")); code != exitError || !strings.Contains(stderr, "missing.json") {
		t.Fatalf("missing report: exit %d %s", code, stderr)
	}
}
