package service

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

func apiCall(t *testing.T, method, u, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd.Reset(b)
	}
	req, _ := http.NewRequest(method, u, &rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// scrape reads /metrics and parses the text format.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func labelNames(m *dto.Metric) []string {
	var names []string
	for _, l := range m.GetLabel() {
		names = append(names, l.GetName())
	}
	sort.Strings(names)
	return names
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// total sums the series of fam whose labels include want.
func total(fam *dto.MetricFamily, want map[string]string) float64 {
	var n float64
next:
	for _, m := range fam.GetMetric() {
		for k, v := range want {
			if label(m, k) != v {
				continue next
			}
		}
		n += value(m)
	}
	return n
}

// find returns the first series of fam whose labels include want.
func find(fam *dto.MetricFamily, want map[string]string) *dto.Metric {
	if fam == nil {
		return nil
	}
next:
	for _, m := range fam.GetMetric() {
		for k, v := range want {
			if label(m, k) != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// TestMetricsExposed starts every role, drives one device through a
// heartbeat, a rate-limited heartbeat and cached reads, and checks that
// /metrics has every metric the operations contract names, with its labels.
func TestMetricsExposed(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Postgres and JetStream (skipped with -short)")
	}
	dsn, _ := testenv.Postgres(t)
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 40 * time.Second, DisconnectAfter: 300 * time.Second, PingIgnoreWithin: 30 * time.Second}}
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4},
		DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond, RateMinInterval: 10 * time.Second, RatePerMinute: 10,
		AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	base := "http://" + svc.Addr()

	code, reg := apiCall(t, "POST", base+"/v1/devices", "admin", map[string]string{"id": "m/1", "group": "lab"})
	if code != 201 {
		t.Fatalf("register: %d %v", code, reg)
	}
	tok, _ := reg["token"].(string)
	if code, body := apiCall(t, "POST", base+"/v1/devices/m%2F1/heartbeat", tok, map[string]any{"metrics": map[string]any{"battery": 50}}); code != 200 {
		t.Fatalf("heartbeat: %d %v", code, body)
	}
	if code, _ := apiCall(t, "POST", base+"/v1/devices/m%2F1/heartbeat", tok, map[string]any{}); code != 429 {
		t.Fatalf("second heartbeat within 10s: %d, want 429", code)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, dev := apiCall(t, "GET", base+"/v1/devices/m%2F1", "admin", nil)
		if dev["status"] == "connected" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device never connected: %v", dev)
		}
		time.Sleep(20 * time.Millisecond)
	}
	apiCall(t, "GET", base+"/v1/devices/m%2F1", "admin", nil) // a cache hit (TTL 2s)

	var fams map[string]*dto.MetricFamily
	deadline = time.Now().Add(15 * time.Second)
	for {
		fams = scrape(t, base)
		// Gauges refreshed periodically: the projection's devices by status
		// (5 s), the workers' (2 s), the projection lag (measured every 2 s).
		dev := find(fams["devstatus_devices"], map[string]string{"status": "connected"})
		wdev := total(fams["devstatus_worker_devices"], map[string]string{"status": "connected"})
		if dev != nil && value(dev) == 1 && wdev == 1 && len(fams["devstatus_projection_lag_seconds"].GetMetric()) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the periodic gauges never caught up: devices %v, worker devices %v, projection lag %v",
				fams["devstatus_devices"], fams["devstatus_worker_devices"], fams["devstatus_projection_lag_seconds"])
		}
		time.Sleep(100 * time.Millisecond)
	}

	type want struct {
		name   string
		typ    dto.MetricType
		labels []string          // exact label names of every series
		series map[string]string // the series with these labels must exist (nil: any)
		min    float64           // their sum (histograms: sample count) at least
	}
	wants := []want{
		// ingest rate and latency, 429s, publish latency (bridge)
		{"devstatus_bridge_heartbeats_total", dto.MetricType_COUNTER, []string{"code"}, map[string]string{"code": "200"}, 1},
		{"devstatus_bridge_heartbeats_total", dto.MetricType_COUNTER, []string{"code"}, map[string]string{"code": "429"}, 1},
		{"devstatus_bridge_rate_limited_total", dto.MetricType_COUNTER, nil, nil, 1},
		{"devstatus_bridge_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"code", "route"}, map[string]string{"route": "heartbeat", "code": "200"}, 1},
		{"devstatus_bridge_publish_duration_seconds", dto.MetricType_HISTOGRAM, []string{"type"}, map[string]string{"type": "heartbeat"}, 1},
		// per-partition consumer lag (worker)
		{"devstatus_consumer_lag_events", dto.MetricType_GAUGE, []string{"partition"}, nil, 0},
		// projection lag in seconds
		{"devstatus_projection_lag_seconds", dto.MetricType_GAUGE, []string{"projection"}, map[string]string{"projection": "transitions"}, 0},
		{"devstatus_projection_lag_seconds", dto.MetricType_GAUGE, []string{"projection"}, map[string]string{"projection": "liveness"}, 0},
		// transitions by from/to/reason code
		{"devstatus_transitions_total", dto.MetricType_COUNTER, []string{"from", "reason_code", "to"},
			map[string]string{"from": "registered", "to": "connected", "reason_code": "heartbeat"}, 1},
		// devices by status: fleet-wide from the projection, and per partition from the workers
		{"devstatus_devices", dto.MetricType_GAUGE, []string{"status"}, map[string]string{"status": "registered"}, 0},
		{"devstatus_worker_devices", dto.MetricType_GAUGE, []string{"partition", "status"}, map[string]string{"status": "connected"}, 1},
		// cache stats
		{"devstatus_readapi_cache_hits_total", dto.MetricType_COUNTER, nil, nil, 1},
		{"devstatus_readapi_cache_misses_total", dto.MetricType_COUNTER, nil, nil, 1},
		{"devstatus_readapi_cache_invalidations_total", dto.MetricType_COUNTER, nil, nil, 0},
		{"devstatus_readapi_cache_evictions_total", dto.MetricType_COUNTER, nil, nil, 0},
		{"devstatus_readapi_cache_entries", dto.MetricType_GAUGE, nil, nil, 0},
		// read API and live stream
		{"devstatus_readapi_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"code", "route"}, map[string]string{"route": "device", "code": "200"}, 2},
		{"devstatus_sse_clients", dto.MetricType_GAUGE, nil, nil, 0},
		{"devstatus_sse_dropped_total", dto.MetricType_COUNTER, []string{"reason"}, map[string]string{"reason": "lagging"}, 0},
	}
	for _, w := range wants {
		fam := fams[w.name]
		if fam == nil {
			t.Errorf("%s: missing", w.name)
			continue
		}
		if fam.GetType() != w.typ {
			t.Errorf("%s: type %s, want %s", w.name, fam.GetType(), w.typ)
		}
		for _, m := range fam.GetMetric() {
			if got := labelNames(m); !slices.Equal(got, w.labels) {
				t.Errorf("%s: labels %v, want %v", w.name, got, w.labels)
				break
			}
		}
		if find(fam, w.series) == nil {
			t.Errorf("%s: no series %v", w.name, w.series)
			continue
		}
		if v := total(fam, w.series); v < w.min {
			t.Errorf("%s%v = %g, want >= %g", w.name, w.series, v, w.min)
		}
	}
	// The reason code is a label from the small fixed set, never free text.
	for _, m := range fams["devstatus_transitions_total"].GetMetric() {
		if rc := label(m, "reason_code"); strings.ContainsAny(rc, " ()") {
			t.Errorf("reason_code label %q looks like a free-text reason", rc)
		}
	}
	// Every partition has a lag series.
	if n := len(fams["devstatus_consumer_lag_events"].GetMetric()); n != 4 {
		t.Errorf("devstatus_consumer_lag_events: %d partitions, want 4", n)
	}
	// Every metric the Grafana dashboard queries exists.
	dash, err := os.ReadFile("../../deploy/grafana/devstatus.json")
	if err != nil {
		t.Fatal(err)
	}
	var queried []string
	for _, name := range regexp.MustCompile(`devstatus_[a-z_]+`).FindAllString(string(dash), -1) {
		name = strings.TrimSuffix(name, "_bucket")
		if !slices.Contains(queried, name) {
			queried = append(queried, name)
		}
	}
	if len(queried) < 10 {
		t.Errorf("the Grafana dashboard queries only %v", queried)
	}
	for _, name := range queried {
		if name == "devstatus_bridge_publish_errors_total" {
			continue // a labelled counter without series until the first publish error
		}
		if fams[name] == nil {
			t.Errorf("deploy/grafana/devstatus.json queries %s, which /metrics does not have", name)
		}
	}
	for _, u := range []string{"/healthz", "/readyz"} {
		if code, body := apiCall(t, "GET", base+u, "", nil); code != 200 {
			t.Errorf("%s: %d %v", u, code, body)
		}
	}
}
