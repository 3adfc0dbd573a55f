package bridge

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// recordHandler keeps the messages of the log records it receives.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	m := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { m += " " + a.String(); return true })
	h.msgs = append(h.msgs, m)
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) count(sub string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// TestIngestStoppedIsReported is scenario 13: when no heartbeat is accepted
// from any device for more than two heartbeat intervals after some were,
// the bridge says so once (a warning; the metric
// devstatus_bridge_last_heartbeat_accepted_timestamp_seconds stops moving),
// and says once that ingest resumed.
func TestIngestStoppedIsReported(t *testing.T) {
	rec := &recordHandler{}
	e := newEnv(t, func(c *Config) { c.Logger = slog.New(rec) })
	tok := e.register("d", "")
	if r := e.heartbeat("d", tok, ""); r.code != 200 {
		t.Fatal(r.code)
	}
	if got := lastAcceptedGauge(t, e); got != float64(t0.Unix()) {
		t.Errorf("last accepted gauge %v, want %d", got, t0.Unix())
	}
	stopped := false
	for _, at := range []time.Duration{30 * time.Second, 60 * time.Second} { // two intervals: not yet
		stopped = e.br.checkIngest(t0.Add(at), stopped)
	}
	if stopped || rec.count("ingest stopped") != 0 {
		t.Fatal("reported after exactly two heartbeat intervals")
	}
	for _, at := range []time.Duration{61 * time.Second, 90 * time.Second, 120 * time.Second} {
		stopped = e.br.checkIngest(t0.Add(at), stopped)
	}
	if !stopped || rec.count("WARN bridge: ingest stopped") != 1 {
		t.Fatalf("stopped %v, %d warnings, want one", stopped, rec.count("ingest stopped"))
	}
	if rec.count("ingest stopped: no heartbeat accepted for_s=61") != 1 {
		t.Errorf("the warning does not say for_s=61 (whole seconds): %v", rec.msgs)
	}
	e.clk.Set(t0.Add(125 * time.Second))
	if r := e.heartbeat("d", tok, ""); r.code != 200 {
		t.Fatal(r.code)
	}
	stopped = e.br.checkIngest(t0.Add(126*time.Second), stopped)
	if stopped || rec.count("ingest resumed") != 1 {
		t.Fatalf("stopped %v after a heartbeat, %d resumed messages", stopped, rec.count("ingest resumed"))
	}
	if got := lastAcceptedGauge(t, e); got != float64(t0.Add(125*time.Second).Unix()) {
		t.Errorf("last accepted gauge %v", got)
	}
}

func lastAcceptedGauge(t *testing.T, e *env) float64 {
	t.Helper()
	var m dto.Metric
	if err := e.br.m.lastAccepted.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
