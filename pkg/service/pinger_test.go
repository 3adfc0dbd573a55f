package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

// pingClient talks to a service under test.
type pingClient struct {
	t    *testing.T
	base string
}

func (c pingClient) do(method, path, token string, body any, out any) int {
	c.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func devicePath(id string) string { return "/v1/devices/" + url.PathEscape(id) }

// register registers a device with a probe URL and returns its token.
func (c pingClient) register(id, probeURL string) string {
	c.t.Helper()
	var reg struct{ ID, Token string }
	body := map[string]string{"id": id}
	if probeURL != "" {
		body["probe_url"] = probeURL
	}
	if code := c.do("POST", "/v1/devices", "admin", body, &reg); code != 201 || reg.Token == "" {
		c.t.Fatalf("register %s: %d", id, code)
	}
	return reg.Token
}

func (c pingClient) heartbeat(id, token string) {
	c.t.Helper()
	if code := c.do("POST", devicePath(id)+"/heartbeat", token, map[string]any{}, nil); code != 200 {
		c.t.Fatalf("heartbeat %s: %d", id, code)
	}
}

func (c pingClient) device(id string) map[string]any {
	c.t.Helper()
	var dev map[string]any
	c.do("GET", devicePath(id), "admin", nil, &dev)
	return dev
}

type transition struct {
	From, To, Reason string
	ReasonCode       string `json:"reason_code"`
	At               time.Time
}

func (c pingClient) history(id string) []transition {
	c.t.Helper()
	var h struct{ Transitions []transition }
	c.do("GET", devicePath(id)+"/transitions", "admin", nil, &h)
	return h.Transitions
}

// path renders a history as "from>to:reason_code …".
func path(trs []transition) string {
	var s []string
	for _, tr := range trs {
		s = append(s, tr.From+">"+tr.To+":"+tr.ReasonCode)
	}
	return strings.Join(s, " ")
}

func (c pingClient) waitStatus(id, want string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		dev := c.device(id)
		if dev["status"] == want {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: status %v, want %s (history %s)", id, dev["status"], want, path(c.history(id)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gathered returns the value of a counter in the service's registry.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == v)
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// deviceServer is a loopback HTTP server standing in for a device's probe
// endpoint; it counts the probes it receives.
type deviceServer struct {
	*httptest.Server
	hits atomic.Int64
}

func newDeviceServer(t *testing.T, h http.HandlerFunc) *deviceServer {
	t.Helper()
	d := &deviceServer{}
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(d.Close)
	return d
}

// TestPingServiceEndToEnd (issue 4, "done when" 1): the whole service in
// one process, every role including the pinger, with shortened thresholds
// (offline 6 s, disconnect 12 s, ping-ignore 2 s, first probe 2.5 s after
// the last heartbeat, then every 1 s) and loopback servers standing in for
// the devices' probe endpoints:
//
//   - a device that stops heartbeating but answers probes (200) goes
//     temporarily_offline at the heartbeat timeout and stays there past
//     disconnect_after (its successful probes are liveness), never
//     disconnected, and returns to connected only on a heartbeat;
//   - devices that stop heartbeating and fail probes (timeout, refused, 500)
//     go temporarily_offline when the first probe fails (ping_failed, before
//     the heartbeat timeout), then disconnected at disconnect_after;
//   - a device that keeps heartbeating is never probed.
func TestPingServiceEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: ~20 s")
	}
	dsn, _ := testenv.Postgres(t)
	const (
		offlineAfter    = 6 * time.Second
		disconnectAfter = 12 * time.Second
	)
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: offlineAfter, DisconnectAfter: disconnectAfter, PingIgnoreWithin: 2 * time.Second}}
	answers := newDeviceServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	hangs := newDeviceServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	fails := newDeviceServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	steadySrv := newDeviceServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + l.Addr().String() + "/"
	l.Close()

	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4},
		DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond, HeartbeatInterval: time.Second,
		ProbeAfter: 2500 * time.Millisecond, PingMaxInterval: time.Second,
		Pinger: PingerConfig{Timeout: 500 * time.Millisecond, Concurrency: 4,
			Policy: probepolicy.Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}},
		AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	if !svc.cfg.Has(RolePinger) {
		t.Fatal("the pinger role is not in AllRoles")
	}
	c := pingClient{t: t, base: "http://" + svc.Addr()}

	devices := map[string]string{
		"answers": answers.URL + "/health",
		"timeout": hangs.URL,
		"refused": refusedURL,
		"err500":  fails.URL,
		"steady":  steadySrv.URL,
	}
	tokens := map[string]string{}
	for id, u := range devices {
		tokens[id] = c.register(id, u)
	}
	for id := range devices {
		c.heartbeat(id, tokens[id])
	}
	silenceFrom := time.Now() // the silent devices' last heartbeat (about)

	// The steady device heartbeats every 500 ms for the whole test.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if code := c.do("POST", devicePath("steady")+"/heartbeat", tokens["steady"], map[string]any{}, nil); code != 200 {
					t.Errorf("steady heartbeat: %d", code)
					return
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// The failing devices: temporarily_offline on the first failed probe,
	// disconnected at the threshold.
	for _, id := range []string{"timeout", "refused", "err500"} {
		c.waitStatus(id, "disconnected", 40*time.Second)
	}
	for id, class := range map[string]string{"timeout": "timeout", "refused": "refused", "err500": "http_status"} {
		h := c.history(id)
		if got, want := path(h), "registered>connected:heartbeat connected>temporarily_offline:ping_failed temporarily_offline>disconnected:liveness_timeout"; got != want {
			t.Errorf("%s: history %s, want %s", id, got, want)
			continue
		}
		// ping_failed is stamped at the probe (checked_at), before the
		// heartbeat timeout would have fired.
		if off := h[1].At.Sub(h[0].At); off >= offlineAfter || off < 2*time.Second {
			t.Errorf("%s: temporarily_offline %s after the heartbeat, want at the first probe (2.5 s)", id, off)
		}
		if !strings.Contains(h[1].Reason, "probe failed") {
			t.Errorf("%s: reason %q", id, h[1].Reason)
		}
		if n := gathered(t, svc.Registry(), "devstatus_pinger_probes_total", map[string]string{"outcome": class}); n < 1 {
			t.Errorf("probes_total{outcome=%s} = %v", class, n)
		}
	}

	// The answering device: temporarily_offline, and still so well past
	// disconnect_after, because its probes succeed.
	for time.Since(silenceFrom) < disconnectAfter+3*time.Second {
		if st := c.device("answers")["status"]; st == "disconnected" {
			t.Fatalf("a device that answers probes was disconnected: %s", path(c.history("answers")))
		}
		time.Sleep(200 * time.Millisecond)
	}
	dev := c.device("answers")
	if dev["status"] != "temporarily_offline" {
		t.Fatalf("answers: %v (%s)", dev["status"], path(c.history("answers")))
	}
	if dev["last_ping_ok"] != true || dev["last_ping_at"] == nil {
		t.Errorf("answers: last_ping_ok %v, last_ping_at %v", dev["last_ping_ok"], dev["last_ping_at"])
	}
	if r, _ := dev["reason"].(string); !strings.HasSuffix(r, "answers probes") {
		t.Errorf("answers: reason %q does not say the device answers probes", r)
	}
	if n := answers.hits.Load(); n < int64(disconnectAfter/time.Second)/2 {
		t.Errorf("the answering device was probed %d times", n)
	}
	// Only a heartbeat brings it back.
	c.heartbeat("answers", tokens["answers"])
	c.waitStatus("answers", "connected", 10*time.Second)
	if got, want := path(c.history("answers")), "registered>connected:heartbeat connected>temporarily_offline:heartbeat_timeout temporarily_offline>connected:heartbeat"; got != want {
		t.Errorf("answers: history %s, want %s", got, want)
	}

	// The heartbeating device was never probed and never left connected.
	if n := steadySrv.hits.Load(); n != 0 {
		t.Errorf("a heartbeating device was probed %d times", n)
	}
	if got := path(c.history("steady")); got != "registered>connected:heartbeat" {
		t.Errorf("steady: history %s", got)
	}
	if n := gathered(t, svc.Registry(), "devstatus_worker_probe_requests_total", nil); n < 4 {
		t.Errorf("worker probe requests: %v", n)
	}
}

// TestLatePingResultIgnored (issue 4, "done when" 2): a failed probe made at
// t=35 s that reaches the service only after a heartbeat at t=60 s is
// ignored — through the single endpoint, the batch endpoint, and straight
// on NATS as the pinger publishes — and the device stays connected with no
// transition written. A control device in the same partition shows that the
// same failure arriving on time does count, and its later transition marks
// the point by which the late results were processed and projected.
func TestLatePingResultIgnored(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	t0 := time.Now().UTC().Truncate(time.Second)
	clk := clock.NewFake(t0)
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 90 * time.Second, DisconnectAfter: 300 * time.Second, PingIgnoreWithin: 30 * time.Second}}
	const partitions = 4
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: partitions},
		Roles:       []string{RoleBridge, RoleWorker, RoleTicker, RoleProjector, RoleAPI},
		DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond, Clock: clk, ProbeAfter: -1,
		AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	c := pingClient{t: t, base: "http://" + svc.Addr()}

	late := "late"
	control := ""
	for i := 0; control == ""; i++ {
		if id := fmt.Sprintf("control-%d", i); events.Partition(id, partitions) == events.Partition(late, partitions) {
			control = id
		}
	}
	lateTok, controlTok := c.register(late, ""), c.register(control, "")
	at := func(s int) string { return t0.Add(time.Duration(s) * time.Second).Format(time.RFC3339Nano) }
	failed := func(s int) map[string]any {
		return map[string]any{"ok": false, "rtt_ms": 2000, "checked_at": at(s), "error": "timeout"}
	}

	// t=0: both heartbeat.
	c.heartbeat(late, lateTok)
	c.heartbeat(control, controlTok)
	c.waitStatus(late, "connected", 10*time.Second)
	c.waitStatus(control, "connected", 10*time.Second)

	// t=36: the control device's probe of t=35 fails and arrives on time.
	clk.Set(t0.Add(36 * time.Second))
	if code := c.do("POST", devicePath(control)+"/ping", "ping", failed(35), nil); code != 202 {
		t.Fatalf("control ping: %d", code)
	}
	c.waitStatus(control, "temporarily_offline", 10*time.Second)

	// t=60: both heartbeat.
	clk.Set(t0.Add(60 * time.Second))
	c.heartbeat(late, lateTok)
	c.heartbeat(control, controlTok)
	c.waitStatus(control, "connected", 10*time.Second)

	// t=61: the late device's failed probe of t=35 arrives, three ways.
	clk.Set(t0.Add(61 * time.Second))
	if code := c.do("POST", devicePath(late)+"/ping", "ping", failed(35), nil); code != 202 {
		t.Fatalf("late ping: %d", code)
	}
	item := failed(35)
	item["device"] = late
	var batch struct {
		Results []struct{ Status int }
	}
	if code := c.do("POST", "/v1/pings", "ping", map[string]any{"results": []any{item}}, &batch); code != 200 || len(batch.Results) != 1 || batch.Results[0].Status != 202 {
		t.Fatalf("late batch ping: %d %+v", code, batch)
	}
	in := &events.Input{Type: events.TypePingResult, ID: "pg-late-direct", Device: late, At: clk.Now(),
		Ping: &events.PingResult{OK: false, RTTMs: 2000, CheckedAt: t0.Add(35 * time.Second), Error: "timeout"}}
	data, err := events.EncodeInput(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Bus.JS.Publish(context.Background(), events.DeviceSubject(late, svc.Bus.Partitions()), data,
		jetstream.WithMsgID(in.ID), jetstream.WithExpectStream(events.InputStream)); err != nil {
		t.Fatal(err)
	}

	// t=96: a marker in the same partition, after the late results: the
	// control device's probe of t=95 (35 s after its heartbeat) fails.
	clk.Set(t0.Add(96 * time.Second))
	if code := c.do("POST", devicePath(control)+"/ping", "ping", failed(95), nil); code != 202 {
		t.Fatalf("marker ping: %d", code)
	}
	c.waitStatus(control, "temporarily_offline", 10*time.Second)

	if got := path(c.history(control)); got != "registered>connected:heartbeat connected>temporarily_offline:ping_failed "+
		"temporarily_offline>connected:heartbeat connected>temporarily_offline:ping_failed" {
		t.Errorf("control: history %s", got)
	}
	dev := c.device(late)
	if dev["status"] != "connected" {
		t.Errorf("late: status %v", dev["status"])
	}
	if got := path(c.history(late)); got != "registered>connected:heartbeat" {
		t.Errorf("late: history %s, want only the first connection", got)
	}
	if n := gathered(t, svc.Registry(), "devstatus_worker_events_total", map[string]string{"type": "ping_result"}); n != 5 {
		t.Errorf("worker applied %v ping results, want 5 (2 control, 3 late)", n)
	}
}
