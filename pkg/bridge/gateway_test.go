package bridge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// registerGateway registers a gateway through the admin API and returns its token.
func (e *env) registerGateway(id string) string {
	e.t.Helper()
	b, _ := json.Marshal(map[string]string{"id": id})
	r := e.do("POST", "/v1/gateways", adminToken, "application/json", bytes.NewReader(b))
	if r.code != http.StatusCreated {
		e.t.Fatalf("register gateway %q: %d %s", id, r.code, r.body)
	}
	m := r.obj(e.t)
	if m["id"] != id || m["token"] == "" {
		e.t.Fatalf("register gateway answer %s", r.body)
	}
	return m["token"].(string)
}

// registerBehind registers a device behind gateway gw.
func (e *env) registerBehind(id, gw string) {
	e.t.Helper()
	b, _ := json.Marshal(map[string]string{"id": id, "group": "g", "gateway": gw})
	if r := e.do("POST", "/v1/devices", adminToken, "application/json", bytes.NewReader(b)); r.code != http.StatusCreated {
		e.t.Fatalf("register %q behind %q: %d %s", id, gw, r.code, r.body)
	}
}

func gwPath(id string) string { return "/v1/gateways/" + url.PathEscape(id) + "/heartbeats" }

func (e *env) batch(gw, token, body string) result {
	e.t.Helper()
	return e.do("POST", gwPath(gw), token, "application/json", strings.NewReader(body))
}

type gwAnswer struct {
	Results []struct {
		Device               string `json:"device"`
		HTTPStatus           int    `json:"http_status"`
		Status               string `json:"status"`
		RemoteControlEnabled *bool  `json:"remote_control_enabled"`
		ShouldReconnect      *bool  `json:"should_reconnect"`
		HeartbeatIntervalS   int    `json:"heartbeat_interval_s"`
		RetryAfterS          int    `json:"retry_after_s"`
		Error                *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"results"`
	Accepted int `json:"accepted"`
	Rejected int `json:"rejected"`
}

func TestGatewayRegister(t *testing.T) {
	e := newEnv(t)
	e.registerGateway("gw/1 é")
	for _, c := range []struct {
		token, body string
		code        int
		errCode     string
	}{
		{adminToken, `{"id":"gw/1 é"}`, http.StatusConflict, "conflict"},
		{adminToken, `{"id":""}`, http.StatusBadRequest, "invalid_device_id"},
		{adminToken, `{"id":".."}`, http.StatusBadRequest, "invalid_device_id"},
		{adminToken, `{"id":"a\u0001"}`, http.StatusBadRequest, "invalid_device_id"},
		{adminToken, `{"id":"x","extra":1}`, http.StatusBadRequest, "bad_request"},
		{"", `{"id":"x"}`, http.StatusUnauthorized, "unauthorized"},
		{"wrong", `{"id":"x"}`, http.StatusUnauthorized, "unauthorized"},
	} {
		r := e.do("POST", "/v1/gateways", c.token, "application/json", strings.NewReader(c.body))
		if r.code != c.code || r.errCode(t) != c.errCode {
			t.Errorf("POST /v1/gateways %s with %q: %d %s, want %d %s", c.body, c.token, r.code, r.body, c.code, c.errCode)
		}
	}
}

func TestGatewayBatch(t *testing.T) {
	e := newEnv(t)
	gw := "site/7 gateway" // "/" and a space: routed as %2F and %20
	tok := e.registerGateway(gw)
	other := e.registerGateway("other")
	for i := range 3 {
		e.registerBehind(fmt.Sprintf("d%d", i), gw)
	}
	e.registerBehind("foreign", "other")
	e.register("alone", "g")

	body := `{"heartbeats": [
		{"device": "d0", "metrics": {"battery": 87, "app_version": "1.2"}},
		{"device": "d1", "device_time": "2026-01-02T03:04:00Z"},
		{"device": "foreign"},
		{"device": "alone"},
		{"device": "nobody"},
		{"device": "d2", "metrics": {"battery": 1, "Battery": 2}},
		{"device": "d2", "typo": 1},
		{"metrics": {}},
		{"device": ""},
		{"device": "d0"}
	]}`
	r := e.batch(gw, tok, body)
	if r.code != http.StatusOK {
		t.Fatalf("batch: %d %s", r.code, r.body)
	}
	var a gwAnswer
	decode(t, r.body, &a)
	want := []struct {
		dev  string
		code int
		err  string
	}{
		{"d0", 200, ""}, {"d1", 200, ""}, {"foreign", 403, "forbidden"}, {"alone", 403, "forbidden"},
		{"nobody", 404, "not_found"}, {"d2", 400, "invalid_field"}, {"d2", 200, ""}, // an unknown field is skipped
		{"", 400, "invalid_device_id"}, {"", 400, "invalid_device_id"}, {"d0", 429, "rate_limited"},
	}
	if len(a.Results) != len(want) || a.Accepted != 3 || a.Rejected != 7 {
		t.Fatalf("answer %s", r.body)
	}
	for i, w := range want {
		got := a.Results[i]
		if got.Device != w.dev || got.HTTPStatus != w.code || (w.err == "") != (got.Error == nil) || (got.Error != nil && got.Error.Code != w.err) {
			t.Errorf("item %d: %+v, want %v", i, got, w)
		}
		if w.code == 200 && (got.Status != "registered" || got.RemoteControlEnabled == nil || *got.RemoteControlEnabled ||
			got.ShouldReconnect == nil || *got.ShouldReconnect || got.HeartbeatIntervalS != 30) {
			t.Errorf("item %d: the single answer's fields are missing: %+v", i, got)
		}
		if w.code == 429 && got.RetryAfterS != 10 {
			t.Errorf("item %d: retry_after_s %d, want 10", i, got.RetryAfterS)
		}
	}
	// What was stored: one heartbeat each of d0, d1 and d2 (its second
	// item, whose unknown field is skipped), via the gateway, at the receive time.
	evs := e.inputEvents()
	for _, id := range []string{"d0", "d1", "d2"} {
		hbs := heartbeatsOf(evs, id)
		if len(hbs) != 1 || hbs[0].In.Heartbeat.Via != gw || !hbs[0].In.At.Equal(t0) {
			t.Fatalf("%s: stored %+v", id, hbs)
		}
	}
	if hbs := heartbeatsOf(evs, "d0"); string(hbs[0].In.Heartbeat.Metrics) != `{"battery":87,"app_version":"1.2"}` {
		t.Errorf("metrics %s", hbs[0].In.Heartbeat.Metrics)
	}
	for _, id := range []string{"foreign", "alone", "nobody"} {
		if hbs := heartbeatsOf(evs, id); len(hbs) != 0 {
			t.Errorf("%s: refused heartbeat stored: %+v", id, hbs)
		}
	}

	// The rate limit is shared with the single endpoint: d0 and d1 come back after 10 s.
	e.clk.Advance(10 * time.Second)
	r = e.batch(gw, tok, `{"heartbeats":[{"device":"d0"},{"device":"d1"}]}`)
	decode(t, r.body, &a)
	if a.Accepted != 2 {
		t.Fatalf("after 10 s: %s", r.body)
	}

	// Refused whole: wrong token, unknown gateway, another gateway's token, bad envelope.
	for _, c := range []struct {
		gw, token, ctype, body string
		code                   int
	}{
		{gw, "", "application/json", `{"heartbeats":[]}`, 401},
		{gw, "wrong", "application/json", `{"heartbeats":[]}`, 401},
		{gw, other, "application/json", `{"heartbeats":[]}`, 401},
		{"nope", tok, "application/json", `{"heartbeats":[]}`, 401},
		{gw, tok, "text/plain", `{"heartbeats":[]}`, 415},
		{gw, tok, "application/json", `{"heartbeats":{}}`, 400},
		{gw, tok, "application/json", `{"beats":[]}`, 400},
		{gw, tok, "application/json", `{"heartbeats":[{"device":"d0","metrics":{"x":"\u0000"}}]}`, 400},
		{gw, tok, "application/json", `[]`, 400},
	} {
		r := e.do("POST", gwPath(c.gw), c.token, c.ctype, strings.NewReader(c.body))
		if r.code != c.code {
			t.Errorf("%s %q %s: %d %s, want %d", c.gw, c.token, c.body, r.code, r.body, c.code)
		}
		r.errCode(t)
	}
	var big strings.Builder
	big.WriteString(`{"heartbeats":[`)
	for i := range MaxGatewayBatch + 1 {
		if i > 0 {
			big.WriteString(",")
		}
		big.WriteString(`{"device":"d0"}`)
	}
	big.WriteString(`]}`)
	if r := e.batch(gw, tok, big.String()); r.code != http.StatusBadRequest {
		t.Errorf("1001 heartbeats: %d %s", r.code, r.body)
	}
}

// A batch of MaxGatewayBatch devices is answered item by item after every
// PubAck, and every accepted heartbeat is in the stream once.
func TestGatewayFullBatch(t *testing.T) {
	e := newEnv(t)
	tok := e.registerGateway("big")
	var b strings.Builder
	b.WriteString(`{"heartbeats":[`)
	for i := range MaxGatewayBatch {
		id := fmt.Sprintf("big-%04d", i)
		e.registerBehind(id, "big")
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"device":%q,"metrics":{"n":%d}}`, id, i)
	}
	b.WriteString(`]}`)
	r := e.batch("big", tok, b.String())
	var a gwAnswer
	decode(t, r.body, &a)
	if r.code != 200 || a.Accepted != MaxGatewayBatch || a.Rejected != 0 {
		t.Fatalf("%d accepted %d rejected %d", r.code, a.Accepted, a.Rejected)
	}
	n := 0
	for _, ev := range e.inputEvents() {
		if ev.In.Type == events.TypeHeartbeat {
			n++
			if ev.In.Heartbeat.Via != "big" {
				t.Fatalf("via %q", ev.In.Heartbeat.Via)
			}
		}
	}
	if n != MaxGatewayBatch {
		t.Fatalf("%d heartbeats stored, want %d", n, MaxGatewayBatch)
	}
}

// Devices coming back together through a gateway are each told
// should_reconnect once (the comeback deliveries of a batch run
// concurrently), and not again on the next batch.
func TestGatewayComeback(t *testing.T) {
	e := newEnv(t)
	tok := e.registerGateway("gw")
	const n = 40
	var b strings.Builder
	b.WriteString(`{"heartbeats":[`)
	for i := range n {
		id := fmt.Sprintf("back-%02d", i)
		e.registerBehind(id, "gw")
		e.publishTransition(id, events.StatusConnected, events.StatusTemporarilyOffline)
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"device":%q}`, id)
	}
	b.WriteString(`]}`)
	for round, want := range []bool{true, false} {
		r := e.batch("gw", tok, b.String())
		var a gwAnswer
		decode(t, r.body, &a)
		if r.code != 200 || a.Accepted != n {
			t.Fatalf("round %d: %d %s", round, r.code, r.body)
		}
		for _, it := range a.Results {
			if it.ShouldReconnect == nil || *it.ShouldReconnect != want || it.Status != "temporarily_offline" {
				t.Fatalf("round %d: %+v, want should_reconnect %v", round, it, want)
			}
		}
		e.clk.Advance(10 * time.Second)
	}
}
