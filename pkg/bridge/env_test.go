package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

const (
	adminToken = "admin-secret"
	pingToken  = "ping-secret"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)

// env is a bridge on a real embedded JetStream behind an httptest.Server
// with the real handler chain (httpx.DeviceIDs around the mux).
type env struct {
	t   testing.TB
	bus *bus.Bus
	reg *registry.Registry
	br  *Bridge
	clk *clock.Fake
	srv *httptest.Server
}

type envOpt func(*Config)

func newEnv(t testing.TB, opts ...envOpt) *env {
	return newEnvOnBus(t, testenv.NATS(t, bus.Config{Partitions: 4}), opts...)
}

// withClock makes the env use clk (e.g. one clock shared by two bridges).
func withClock(clk *clock.Fake) envOpt { return func(c *Config) { c.Clock = clk } }

func newEnvOnBus(t testing.TB, b *bus.Bus, opts ...envOpt) *env {
	t.Helper()
	cfg := Config{Bus: b, Clock: clock.NewFake(t0), Logger: testenv.Logger(t),
		AdminToken: adminToken, PingToken: pingToken,
		RateMinInterval: DefaultRateMinInterval, RatePerMinute: DefaultRatePerMinute,
		PublishTimeout: 2 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	clk := cfg.Clock.(*clock.Fake)
	reg, err := registry.New(registry.Config{Bus: b, Clock: clk, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Registry = reg
	br, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	br.Routes(mux)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) { // as pkg/service serves it
		if err := br.Ready(r.Context()); err != nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, err.Error())
			return
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	srv := httptest.NewServer(httpx.DeviceIDs(mux))
	testenv.Start(t, br.Run)
	t.Cleanup(srv.Close)
	e := &env{t: t, bus: b, reg: reg, br: br, clk: clk, srv: srv}
	e.waitReady()
	return e
}

func (e *env) waitReady() {
	e.t.Helper()
	testenv.Eventually(e.t, 20*time.Second, "bridge ready", func() bool { return e.br.Ready(context.Background()) == nil })
}

type result struct {
	code int
	hdr  http.Header
	body []byte
}

func (r result) obj(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("answer %d is not a JSON object: %q", r.code, r.body)
	}
	return m
}

// errCode returns error.code of an error answer and checks its shape.
func (r result) errCode(t testing.TB) string {
	t.Helper()
	var b httpx.ErrorBody
	if err := json.Unmarshal(r.body, &b); err != nil || b.Error.Code == "" || b.Error.Message == "" {
		t.Fatalf("answer %d is not the design's error body: %q", r.code, r.body)
	}
	return b.Error.Code
}

// do sends a request; path is appended raw to the server URL.
func (e *env) do(method, path, token, ctype string, body io.Reader) result {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{code: resp.StatusCode, hdr: resp.Header, body: b}
}

func devPath(id, suffix string) string { return "/v1/devices/" + url.PathEscape(id) + suffix }

// heartbeat posts a JSON heartbeat body for id.
func (e *env) heartbeat(id, token, body string) result {
	e.t.Helper()
	var r io.Reader
	ct := ""
	if body != "" {
		r, ct = bytes.NewBufferString(body), "application/json"
	}
	return e.do("POST", devPath(id, "/heartbeat"), token, ct, r)
}

// register registers id through the admin API and returns its token.
func (e *env) register(id, group string) string {
	e.t.Helper()
	b, _ := json.Marshal(map[string]string{"id": id, "group": group})
	r := e.do("POST", "/v1/devices", adminToken, "application/json", bytes.NewReader(b))
	if r.code != http.StatusCreated {
		e.t.Fatalf("register %q: %d %s", id, r.code, r.body)
	}
	m := r.obj(e.t)
	if m["id"] != id || m["token"] == "" {
		e.t.Fatalf("register answer %s", r.body)
	}
	return m["token"].(string)
}

// storedEvent is one event of the input stream with its subject and sequence.
type storedEvent = testenv.StoredInput

// inputEvents returns every event on the input stream, in order, checking
// that each device event is on its device's subject.
func (e *env) inputEvents() []storedEvent {
	e.t.Helper()
	return testenv.InputEvents(e.t, e.bus)
}

func heartbeatsOf(evs []storedEvent, id string) []storedEvent {
	var out []storedEvent
	for _, e := range evs {
		if e.In.Type == events.TypeHeartbeat && e.In.Device == id {
			out = append(out, e)
		}
	}
	return out
}

// publishTransition puts a transition on the transitions stream as a
// partition worker would.
func (e *env) publishTransition(id string, from, to events.Status) uint64 {
	e.t.Helper()
	sc := &events.StatusChanged{ID: "x", Device: id, From: from, To: to, ReasonCode: events.ReasonHeartbeatTimeout,
		Reason: "test", At: e.clk.Now(), ObservedAt: e.clk.Now()}
	b, err := events.EncodeStatusChanged(sc)
	if err != nil {
		e.t.Fatal(err)
	}
	ack, err := e.bus.JS.Publish(context.Background(), events.TransitionSubject(id, e.bus.Partitions()), b)
	if err != nil {
		e.t.Fatal(err)
	}
	testenv.Eventually(e.t, 20*time.Second, "status cache", func() bool {
		e.br.status.mu.Lock()
		defer e.br.status.mu.Unlock()
		d := e.br.status.m[id]
		return d != nil && d.seq >= ack.Sequence
	})
	return ack.Sequence
}

func decode(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
}

func decodeReader(t testing.TB, r io.Reader, v any) {
	t.Helper()
	if err := json.NewDecoder(r).Decode(v); err != nil {
		t.Errorf("decode: %v", err)
	}
}
