package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/registry"
)

func (e *env) postJSON(method, path, token string, v any) result {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(method, path, token, "application/json", bytes.NewReader(b))
}

func (e *env) probeURLOf(id string) string {
	e.t.Helper()
	d, err := e.reg.Get(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return d.ProbeURL
}

// TestProbeURLRegistration: a probe URL given at registration is checked
// against the policy; a refused one is a clear 400 and registers nothing.
func TestProbeURLRegistration(t *testing.T) {
	e := newEnv(t)
	refused := []struct{ url, code, says string }{
		{"http://127.0.0.1:8080/health", CodeForbiddenProbeTarget, "loopback"},
		{"http://[::1]/", CodeForbiddenProbeTarget, "loopback"},
		{"http://localhost/", CodeForbiddenProbeTarget, "loopback"},
		{"http://169.254.169.254/latest/meta-data/", CodeForbiddenProbeTarget, "link-local"},
		{"http://10.0.0.5/", CodeForbiddenProbeTarget, "private"},
		{"ftp://kiosk.example.com/", CodeForbiddenProbeTarget, `scheme "ftp"`},
		{"file:///etc/passwd", CodeForbiddenProbeTarget, `scheme "file"`},
		{"kiosk.example.com/health", CodeInvalidProbeURL, "absolute"},
		{"http://user:pw@kiosk.example.com/", CodeInvalidProbeURL, "credentials"},
	}
	for i, c := range refused {
		id := fmt.Sprintf("bad-%d", i)
		r := e.postJSON("POST", "/v1/devices", adminToken, map[string]any{"id": id, "probe_url": c.url})
		if r.code != http.StatusBadRequest || r.errCode(t) != c.code {
			t.Errorf("%s: %d %s", c.url, r.code, r.body)
			continue
		}
		if msg := r.obj(t)["error"].(map[string]any)["message"].(string); !strings.Contains(msg, c.says) || !strings.HasPrefix(msg, "probe_url: ") {
			t.Errorf("%s: message %q does not say %q", c.url, msg, c.says)
		}
		if _, err := e.reg.Get(context.Background(), id); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("%s: device registered anyway (%v)", c.url, err)
		}
	}
	if r := e.postJSON("POST", "/v1/devices", adminToken, map[string]any{"id": "num", "probe_url": 5}); r.code != 400 || r.errCode(t) != CodeInvalidProbeURL {
		t.Errorf("non-string probe_url: %d %s", r.code, r.body)
	}

	r := e.postJSON("POST", "/v1/devices", adminToken, map[string]any{"id": "kiosk", "probe_url": "http://Kiosk.Example.COM:8080/health#frag"})
	if r.code != http.StatusCreated {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if u := e.probeURLOf("kiosk"); u != "http://kiosk.example.com:8080/health" {
		t.Fatalf("stored %q", u)
	}
	if r := e.postJSON("POST", "/v1/devices", adminToken, map[string]any{"id": "plain"}); r.code != http.StatusCreated || e.probeURLOf("plain") != "" {
		t.Fatalf("without probe_url: %d %s", r.code, r.body)
	}

	// A policy that allows a range (tests, a fleet VPN) accepts it.
	e2 := newEnv(t, func(c *Config) {
		c.ProbePolicy = probepolicy.Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	})
	if r := e2.postJSON("POST", "/v1/devices", adminToken, map[string]any{"id": "loop", "probe_url": "http://127.0.0.1:9/"}); r.code != http.StatusCreated {
		t.Fatalf("allowed loopback: %d %s", r.code, r.body)
	}
}

func TestProbeURLPatch(t *testing.T) {
	e := newEnv(t)
	e.register("kiosk", "")
	path := devPath("kiosk", "")
	r := e.postJSON("PATCH", path, adminToken, map[string]any{"probe_url": "https://kiosk.example.com/ping"})
	if r.code != 200 || r.obj(t)["probe_url"] != "https://kiosk.example.com/ping" {
		t.Fatalf("%d %s", r.code, r.body)
	}
	r = e.postJSON("PATCH", path, adminToken, map[string]any{"probe_url": "http://169.254.169.254/"})
	if r.code != 400 || r.errCode(t) != CodeForbiddenProbeTarget {
		t.Fatalf("forbidden: %d %s", r.code, r.body)
	}
	if u := e.probeURLOf("kiosk"); u != "https://kiosk.example.com/ping" {
		t.Fatalf("a refused PATCH changed the URL to %q", u)
	}
	r = e.postJSON("PATCH", path, adminToken, map[string]any{"probe_url": "http://kiosk.example.com/", "remote_control_enabled": true})
	if m := r.obj(t); r.code != 200 || m["remote_control_enabled"] != true || m["probe_url"] != "http://kiosk.example.com/" {
		t.Fatalf("both fields: %d %s", r.code, r.body)
	}
	r = e.postJSON("PATCH", path, adminToken, map[string]any{"probe_url": "http://kiosk.example.com/", "remote_control_enabled": "yes"})
	if r.code != 400 {
		t.Fatalf("bad remote_control_enabled: %d %s", r.code, r.body)
	}
	// remote control alone still works and keeps the URL
	r = e.postJSON("PATCH", path, adminToken, map[string]any{"remote_control_enabled": false})
	if r.code != 200 || e.probeURLOf("kiosk") != "http://kiosk.example.com/" {
		t.Fatalf("remote control only: %d %s", r.code, r.body)
	}
	for _, clear := range []any{"", nil} {
		e.postJSON("PATCH", path, adminToken, map[string]any{"probe_url": "http://kiosk.example.com/"})
		if r := e.postJSON("PATCH", path, adminToken, map[string]any{"probe_url": clear}); r.code != 200 || e.probeURLOf("kiosk") != "" {
			t.Fatalf("clear with %v: %d %s", clear, r.code, r.body)
		}
	}
	if r := e.postJSON("PATCH", devPath("nobody", ""), adminToken, map[string]any{"probe_url": "http://x.example.com/"}); r.code != 404 {
		t.Fatalf("unknown device: %d %s", r.code, r.body)
	}
}

// TestProbeURLInHeartbeat: a device may report its probe URL in a
// heartbeat; a refused URL refuses the heartbeat (400, nothing published);
// an unchanged URL costs no registry write.
func TestProbeURLInHeartbeat(t *testing.T) {
	e := newEnv(t)
	tok := e.register("kiosk", "")
	next := func() { e.clk.Advance(DefaultRateMinInterval) }

	r := e.heartbeat("kiosk", tok, `{"probe_url": "http://127.0.0.1:8080/"}`)
	if r.code != 400 || r.errCode(t) != CodeForbiddenProbeTarget || !strings.Contains(r.obj(t)["error"].(map[string]any)["message"].(string), "loopback") {
		t.Fatalf("loopback: %d %s", r.code, r.body)
	}
	r = e.heartbeat("kiosk", tok, `{"probe_url": "gopher://kiosk.example.com/"}`)
	if r.code != 400 || r.errCode(t) != CodeForbiddenProbeTarget {
		t.Fatalf("scheme: %d %s", r.code, r.body)
	}
	if r := e.heartbeat("kiosk", tok, `{"probe_url": ["x"]}`); r.code != 400 || r.errCode(t) != CodeInvalidProbeURL {
		t.Fatalf("non-string: %d %s", r.code, r.body)
	}
	if hbs := heartbeatsOf(e.inputEvents(), "kiosk"); len(hbs) != 0 {
		t.Fatalf("refused heartbeats published: %d", len(hbs))
	}

	if r := e.heartbeat("kiosk", tok, `{"probe_url": "http://KIOSK.example.com:8080/", "metrics": {"battery": 80}}`); r.code != 200 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if u := e.probeURLOf("kiosk"); u != "http://kiosk.example.com:8080/" {
		t.Fatalf("stored %q", u)
	}
	d0, _ := e.reg.Get(context.Background(), "kiosk")
	next()
	if r := e.heartbeat("kiosk", tok, `{"probe_url": "http://kiosk.example.com:8080/"}`); r.code != 200 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if d1, _ := e.reg.Get(context.Background(), "kiosk"); d1.Revision != d0.Revision {
		t.Fatalf("an unchanged probe URL rewrote the registration (%d → %d)", d0.Revision, d1.Revision)
	}
	next()
	if r := e.heartbeat("kiosk", tok, `{}`); r.code != 200 || e.probeURLOf("kiosk") != "http://kiosk.example.com:8080/" {
		t.Fatalf("a heartbeat without probe_url changed it: %d %s", r.code, r.body)
	}
	next()
	if r := e.heartbeat("kiosk", tok, `{"probe_url": ""}`); r.code != 200 || e.probeURLOf("kiosk") != "" {
		t.Fatalf("clear: %d %s", r.code, r.body)
	}
	if hbs := heartbeatsOf(e.inputEvents(), "kiosk"); len(hbs) != 3+1 {
		t.Fatalf("%d heartbeats published, want 4", len(hbs))
	}
}

type batchAnswer struct {
	Results []struct {
		Device string `json:"device"`
		Status int    `json:"status"`
		Error  *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"results"`
	Accepted int `json:"accepted"`
	Rejected int `json:"rejected"`
}

func (e *env) pings(v any) (result, batchAnswer) {
	e.t.Helper()
	r := e.postJSON("POST", "/v1/pings", pingToken, v)
	var a batchAnswer
	if r.code == 200 {
		decode(e.t, r.body, &a)
	}
	return r, a
}

func TestPingBatch(t *testing.T) {
	e := newEnv(t)
	e.register("a", "")
	e.register("b/2", "")
	e.register("gone", "")
	if err := e.reg.Decommission(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	now := e.clk.Now()
	items := []any{
		map[string]any{"device": "a", "ok": false, "rtt_ms": 2000, "checked_at": now.Add(-5 * time.Second).Format(time.RFC3339Nano), "error": "timeout"},
		map[string]any{"device": "b/2", "ok": true, "rtt_ms": 12, "checked_at": now.Add(time.Hour).Format(time.RFC3339)}, // future: clamped
		map[string]any{"device": "nobody", "ok": true},
		map[string]any{"device": "gone", "ok": true},
		map[string]any{"device": "", "ok": true},
		map[string]any{"device": "a", "rtt_ms": 1},
		map[string]any{"device": "a", "ok": false, "error": "sunspots"},
		map[string]any{"device": "a", "ok": true, "extra": 1},
		map[string]any{"device": "a", "ok": true, "rtt_ms": -1},
		"not an object",
		map[string]any{"ok": true},
	}
	r, a := e.pings(map[string]any{"results": items})
	if r.code != 200 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	want := []struct {
		device string
		status int
		code   string
	}{
		{"a", 202, ""}, {"b/2", 202, ""}, {"nobody", 404, "not_found"}, {"gone", 404, "not_found"},
		{"", 400, "invalid_device_id"}, {"a", 400, "invalid_field"}, {"a", 400, "invalid_field"},
		{"a", 400, "bad_request"}, {"a", 400, "invalid_field"}, {"", 400, "malformed_json"}, {"", 400, "invalid_device_id"},
	}
	if len(a.Results) != len(want) || a.Accepted != 2 || a.Rejected != len(want)-2 {
		t.Fatalf("answer %s", r.body)
	}
	for i, w := range want {
		got := a.Results[i]
		code := ""
		if got.Error != nil {
			code = got.Error.Code
		}
		if got.Device != w.device || got.Status != w.status || code != w.code {
			t.Errorf("item %d: %+v %+v, want %+v", i, got, got.Error, w)
		}
	}
	var pings []*events.Input
	for _, ev := range e.inputEvents() {
		if ev.In.Type == events.TypePingResult {
			pings = append(pings, ev.In)
		}
	}
	if len(pings) != 2 {
		t.Fatalf("%d ping results published", len(pings))
	}
	for _, p := range pings {
		switch p.Device {
		case "a":
			if p.Ping.OK || p.Ping.Error != "timeout" || p.Ping.RTTMs != 2000 || !p.Ping.CheckedAt.Equal(now.Add(-5*time.Second)) {
				t.Errorf("a: %+v", p.Ping)
			}
		case "b/2":
			if !p.Ping.OK || !p.Ping.CheckedAt.Equal(p.At) {
				t.Errorf("b/2: checked_at %s not clamped to %s", p.Ping.CheckedAt, p.At)
			}
		}
	}

	// Whole-request refusals.
	if r := e.postJSON("POST", "/v1/pings", "wrong", map[string]any{"results": []any{}}); r.code != 401 {
		t.Errorf("wrong token: %d", r.code)
	}
	if r := e.postJSON("POST", "/v1/pings", adminToken, map[string]any{"results": []any{}}); r.code != 401 {
		t.Errorf("admin token: %d", r.code)
	}
	if r := e.do("POST", "/v1/pings", pingToken, "text/plain", strings.NewReader(`{"results": []}`)); r.code != 415 {
		t.Errorf("content type: %d", r.code)
	}
	if r, _ := e.pings(map[string]any{"results": "x"}); r.code != 400 {
		t.Errorf("results not an array: %d", r.code)
	}
	if r, _ := e.pings(map[string]any{"items": []any{}}); r.code != 400 {
		t.Errorf("unknown field: %d", r.code)
	}
	// Text the pipeline cannot store anywhere in the body (NUL, invalid
	// UTF-8, an unpaired surrogate) refuses the whole request, as for the
	// single endpoint.
	if r := e.do("POST", "/v1/pings", pingToken, "application/json", strings.NewReader(`{"results": [{"device": "a", "ok": true, "error": "\u0000"}]}`)); r.code != 400 || r.errCode(t) != "malformed_json" {
		t.Errorf("NUL: %d %s", r.code, r.body)
	}
	many := make([]any, MaxPingBatch+1)
	for i := range many {
		many[i] = map[string]any{"device": "a", "ok": true}
	}
	if r, _ := e.pings(map[string]any{"results": many}); r.code != 400 || !strings.Contains(string(r.body), "1000") {
		t.Errorf("1001 results: %d %s", r.code, r.body)
	}
	huge := `{"results": [` + strings.Repeat(`{"device": "a", "ok": true},`, MaxPingBatchBytes/27) + `{"device": "a", "ok": true}]}`
	if r := e.do("POST", "/v1/pings", pingToken, "application/json", strings.NewReader(huge)); r.code != 413 {
		t.Errorf("huge body: %d", r.code)
	}
	if r, a := e.pings(map[string]any{"results": many[:MaxPingBatch]}); r.code != 200 || a.Accepted != MaxPingBatch {
		t.Errorf("1000 results: %d accepted=%d", r.code, a.Accepted)
	}
}

// TestPingBatchValidatesLikeSingle: every body the single endpoint refuses,
// the batch refuses for that item with the same status and code.
func TestPingBatchValidatesLikeSingle(t *testing.T) {
	e := newEnv(t)
	e.register("a", "")
	bodies := []string{
		`{"ok": true}`, `{"ok": "yes"}`, `{}`, `{"ok": true, "rtt_ms": 1.5}`, `{"ok": true, "rtt_ms": -3}`,
		`{"ok": true, "checked_at": "yesterday"}`, `{"ok": false, "error": "nope"}`, `{"ok": true, "bogus": 1}`,
		`{"ok": true, "ok": false}`, `{"ok": false, "error": "dns", "rtt_ms": 7, "checked_at": "2026-01-02T03:00:00Z"}`,
	}
	for _, body := range bodies {
		single := e.do("POST", devPath("a", "/ping"), pingToken, "application/json", strings.NewReader(body))
		item := `{"device": "a", ` + strings.TrimPrefix(body, "{")
		if body == `{}` {
			item = `{"device": "a"}`
		}
		r := e.do("POST", "/v1/pings", pingToken, "application/json", strings.NewReader(`{"results": [`+item+`]}`))
		var a batchAnswer
		decode(t, r.body, &a)
		if r.code != 200 || len(a.Results) != 1 {
			t.Fatalf("%s: %d %s", body, r.code, r.body)
		}
		got := a.Results[0]
		if got.Status != single.code {
			t.Errorf("%s: single %d, batch item %d", body, single.code, got.Status)
			continue
		}
		if single.code != 202 && (got.Error == nil || got.Error.Code != single.errCode(t)) {
			t.Errorf("%s: single code %s, batch %+v", body, single.errCode(t), got.Error)
		}
	}
}
