package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// edge accepts what the load generator sends, checks it as the service
// would (tokens, gateways registered before their devices, batches naming
// the gateway's own devices) and counts the heartbeats per device.
type edge struct {
	t     *testing.T
	mu    sync.Mutex
	token map[string]string   // device or gateway id → token
	devs  map[string][]string // gateway → its devices
	gwOf  map[string]string
	beats map[string]int
}

func newEdge(t *testing.T) (*edge, *httptest.Server) {
	e := &edge{t: t, token: map[string]string{}, devs: map[string][]string{}, gwOf: map[string]string{}, beats: map[string]int{}}
	mux := http.NewServeMux()
	register := func(w http.ResponseWriter, r *http.Request) {
		var b struct{ ID, Group, Gateway string }
		if httpx.BearerToken(r) != "admin" || json.NewDecoder(r.Body).Decode(&b) != nil {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "bad registration")
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if _, ok := e.token[b.ID]; ok {
			httpx.WriteError(w, http.StatusConflict, httpx.CodeConflict, "exists")
			return
		}
		if b.Gateway != "" {
			if _, ok := e.devs[b.Gateway]; !ok {
				httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "unknown gateway "+b.Gateway)
				return
			}
			e.devs[b.Gateway] = append(e.devs[b.Gateway], b.ID)
			e.gwOf[b.ID] = b.Gateway
		}
		if r.URL.Path == "/v1/gateways" {
			e.devs[b.ID] = []string{}
		}
		e.token[b.ID] = "t-" + b.ID
		httpx.WriteJSON(w, http.StatusCreated, map[string]string{"id": b.ID, "token": e.token[b.ID]})
	}
	mux.HandleFunc("POST /v1/devices", register)
	mux.HandleFunc("POST /v1/gateways", register)
	mux.HandleFunc("POST /v1/devices/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		id := httpx.DeviceID(r)
		var b struct {
			DeviceTime time.Time      `json:"device_time"`
			Metrics    map[string]any `json:"metrics"`
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if tok, ok := e.token[id]; !ok || httpx.BearerToken(r) != tok || json.NewDecoder(r.Body).Decode(&b) != nil || b.DeviceTime.IsZero() || b.Metrics["battery"] == nil {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "bad heartbeat of "+id)
			return
		}
		e.beats[id]++
		httpx.WriteJSON(w, http.StatusOK, map[string]any{"status": "connected", "heartbeat_interval_s": 30})
	})
	mux.HandleFunc("POST /v1/gateways/{id}/heartbeats", func(w http.ResponseWriter, r *http.Request) {
		gw := r.PathValue("id")
		var b struct {
			Heartbeats []struct {
				Device     string    `json:"device"`
				DeviceTime time.Time `json:"device_time"`
			} `json:"heartbeats"`
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if tok, ok := e.token[gw]; !ok || httpx.BearerToken(r) != tok || json.NewDecoder(r.Body).Decode(&b) != nil || len(b.Heartbeats) != len(e.devs[gw]) {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "bad batch of "+gw)
			return
		}
		for _, hb := range b.Heartbeats {
			if e.gwOf[hb.Device] != gw || hb.DeviceTime.IsZero() {
				httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, hb.Device+" is not behind "+gw)
				return
			}
		}
		for _, hb := range b.Heartbeats {
			e.beats[hb.Device]++
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]any{"accepted": len(b.Heartbeats)})
	})
	srv := httptest.NewServer(httpx.DeviceIDs(mux))
	t.Cleanup(srv.Close)
	return e, srv
}

// TestRunDrivesEveryPhase: a small fleet through registration, warm-up,
// the gateway open and closed loops, a rewarm of the single devices, one
// round against the baseline and a sustain phase; every heartbeat reaches
// the edge well-formed, and the warm-up and the rewarm send each device
// exactly once.
func TestRunDrivesEveryPhase(t *testing.T) {
	t.Parallel()
	e, srv := newEdge(t)
	base := httptest.NewServer(BaselineHandler())
	t.Cleanup(base.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{URL: srv.URL, AdminToken: "admin", Devices: 20, GatewayDevices: 40, GatewayBatch: 10,
		Concurrency: 4, GatewayConcurrency: 2, RegisterConcurrency: 3, Rounds: 1, RoundDuration: 200 * time.Millisecond,
		BaselineURL: base.URL, SustainDuration: 200 * time.Millisecond, GatewayRate: 400, GatewayDuration: 300 * time.Millisecond,
		GatewayMaxDuration: 200 * time.Millisecond, OfflineAfter: 500 * time.Millisecond, Prefix: "t-"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range rep.Phases {
		names = append(names, p.Name)
		if p.Failed+p.RateLimited+p.Unavailable != 0 {
			t.Errorf("phase %s: %d failed, %d 429, %d 503", p.Name, p.Failed, p.RateLimited, p.Unavailable)
		}
	}
	if got := strings.Join(names, " "); got != "warmup gateway gateway-max rewarm-single baseline-1 service-max-1 sustain" {
		t.Fatalf("phases %s", got)
	}
	if r := rep.Registration; r == nil || r.Devices != 60 || r.Gateways != 4 {
		t.Fatalf("registration %+v", r)
	}
	if w := rep.Phases[0]; w.Accepted != 20 || rep.Warmup == nil || rep.Warmup.Heartbeats != 20 {
		t.Fatalf("warm-up sent %d, want each single device once", w.Accepted)
	}
	if w := rep.Phases[3]; w.Accepted != 20 {
		t.Fatalf("rewarm sent %d, want each single device once", w.Accepted)
	}
	g := rep.Phases[1]
	if g.Accepted == 0 || g.Accepted%10 != 0 || g.Accepted > 400*3/10+10 || g.OfferedPerSec != 400 || g.Kind != "gateway" || g.Mode != "open" {
		t.Fatalf("gateway open loop %+v", g)
	}
	if len(rep.Rounds) != 1 || rep.Rounds[0].BaselinePerSec <= 0 || rep.Rounds[0].Ratio <= 0 || rep.Phases[4].ChainPerSec != 0 {
		t.Fatalf("rounds %+v, baseline phase %+v", rep.Rounds, rep.Phases[4])
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var total int64
	for id, n := range e.beats {
		if n == 0 || !strings.HasPrefix(id, "t-") {
			t.Errorf("%s: %d heartbeats", id, n)
		}
		total += int64(n)
	}
	var acc int64
	for _, p := range rep.Phases {
		if p.Kind != "baseline" {
			acc += p.Accepted
		}
	}
	if len(e.beats) != 60 || total != acc {
		t.Fatalf("%d devices heartbeated %d times at the edge, the report says %d accepted", len(e.beats), total, acc)
	}
	if !strings.Contains(rep.String(), "service-max-1") {
		t.Fatalf("report:\n%s", rep)
	}
}

func TestRunRefusesABadConfig(t *testing.T) {
	t.Parallel()
	for i, cfg := range []Config{
		{},
		{URL: "http://x", AdminToken: "a", GatewayDevices: 15, GatewayBatch: 10},
		{URL: "http://x", AdminToken: "a", Devices: 10, Sentinels: 10, SteadyDuration: time.Minute},
		{URL: "http://x", AdminToken: "a", SteadyDuration: 20 * time.Second},
	} {
		if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("case %d: want ErrInvalidConfig, got %v", i, err)
		}
	}
}

func TestWaitWorkerTimesARestart(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	step := 0
	// The worker answers 503, then owns 2 of 4 partitions, all 4, applies
	// events, and catches up.
	pages := []string{"", "devstatus_worker_partitions_owned 2\n", "devstatus_worker_partitions_owned 4\ndevstatus_worker_events_total 10\ndevstatus_consumer_lag_events 5000\n",
		"devstatus_worker_partitions_owned 4\ndevstatus_worker_events_total 20\ndevstatus_consumer_lag_events 5000\n",
		"devstatus_worker_partitions_owned 4\ndevstatus_worker_events_total 30\ndevstatus_consumer_lag_events 10\ndevstatus_worker_devices 7\n"}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		p := pages[min(step, len(pages)-1)]
		step++
		mu.Unlock()
		if p == "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, p)
	}))
	defer srv.Close()
	res, err := WaitWorker(context.Background(), srv.URL, time.Now(), 4, 100, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Metrics <= 0 || res.Owned < res.Metrics || res.Processing < res.Owned || res.CaughtUp < res.Processing || res.Tracked != 7 {
		t.Fatalf("result %+v", res)
	}
	if _, err := WaitWorker(context.Background(), srv.URL+"/x", time.Now(), 8, 100, 200*time.Millisecond); err == nil {
		t.Fatal("a worker that never owns 8 partitions caught up")
	}
}

func TestBaselineAnswersLikeAHeartbeat(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(BaselineHandler())
	defer srv.Close()
	post := func(auth, body string) int {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, srv.URL+"/v1/devices/d-1/heartbeat", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Status   string `json:"status"`
			Interval int    `json:"heartbeat_interval_s"`
			Error    struct{ Code string }
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode == http.StatusOK && (out.Status != "connected" || out.Interval != 30) || resp.StatusCode != http.StatusOK && out.Error.Code == "" {
			t.Errorf("HTTP %d: %+v", resp.StatusCode, out)
		}
		return resp.StatusCode
	}
	if code := post("Bearer x", `{"device_time":"2026-01-01T00:00:00Z","metrics":{"battery":5}}`); code != 200 {
		t.Fatalf("heartbeat: %d", code)
	}
	if code := post("", `{}`); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code := post("Bearer x", `{"device_time":`); code != 400 {
		t.Fatalf("malformed: %d", code)
	}
}
