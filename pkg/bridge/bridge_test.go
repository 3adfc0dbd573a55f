package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// chunked hides the length of a body so that the client sends it chunked.
type chunked struct{ r io.Reader }

func (c chunked) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestHeartbeatRefusesBadInput is the hostile-input table: each request is
// refused with the design's JSON error, publishes nothing and spends none of
// the device's rate budget (the rate limit is on; the limiter holds no state
// for the device afterwards, and a valid heartbeat at the same instant is
// accepted).
//
// Policies: top-level fields are matched exactly (case-sensitive); any other
// top-level field, "Metrics" included, is skipped (forward_test.go), but a
// known field twice is refused. Unknown metric keys are kept. Two keys of one
// metrics object (at any depth) that are equal or differ only in case are
// refused (400 invalid_field): readers disagree on which one wins.
func TestHeartbeatRefusesBadInput(t *testing.T) {
	e := newEnv(t)
	tok := e.register("dev", "")
	big := `{"metrics":{"x":"` + strings.Repeat("a", DefaultMaxBodyBytes) + `"}}`
	manyMetrics := func(n int) string {
		var sb strings.Builder
		sb.WriteString(`{"metrics":{`)
		for i := 0; i < n; i++ {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `"m%d":%d`, i, i)
		}
		sb.WriteString(`}}`)
		return sb.String()
	}
	cases := []struct {
		name  string
		path  string
		ctype string
		body  io.Reader
		code  int
		ecode string
	}{
		{"malformed json", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":`), 400, httpx.CodeMalformedJSON},
		{"not an object", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`[1,2]`), 400, httpx.CodeMalformedJSON},
		{"trailing object", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{} {}`), 400, httpx.CodeMalformedJSON},
		{"trailing garbage", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{}}x`), 400, httpx.CodeMalformedJSON},
		{"huge body with content-length", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(big), 413, httpx.CodeTooLarge},
		{"huge body chunked", devPath("dev", "/heartbeat"), "application/json", chunked{strings.NewReader(big)}, 413, httpx.CodeTooLarge},
		{"wrong content type", devPath("dev", "/heartbeat"), "text/plain", strings.NewReader(`{}`), 415, httpx.CodeUnsupportedMedia},
		{"wrong charset", devPath("dev", "/heartbeat"), "application/json; charset=latin1", strings.NewReader(`{}`), 415, httpx.CodeUnsupportedMedia},
		{"body without content type", devPath("dev", "/heartbeat"), "", strings.NewReader(`{}`), 415, httpx.CodeUnsupportedMedia},
		{"chunked body without content type", devPath("dev", "/heartbeat"), "", chunked{strings.NewReader(`{}`)}, 415, httpx.CodeUnsupportedMedia},
		{"NUL escape in metric", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"app":"a\u0000b"}}`), 400, httpx.CodeMalformedJSON},
		{"NUL escape in metric key", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"a\u0000":1}}`), 400, httpx.CodeMalformedJSON},
		{"raw NUL byte", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"metrics\":{\"app\":\"a\x00b\"}}"), 400, httpx.CodeMalformedJSON},
		{"invalid UTF-8 in metric", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"metrics\":{\"app\":\"a\xffb\"}}"), 400, httpx.CodeMalformedJSON},
		{"unpaired surrogate", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"app":"\ud800x"}}`), 400, httpx.CodeMalformedJSON},
		{"duplicate field", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{},"metrics":{}}`), 400, httpx.CodeBadRequest},
		{"duplicate field beside an unknown one", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"device_time":null,"fw":1,"device_time":null}`), 400, httpx.CodeBadRequest},
		{"unknown field without a value", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"fw":}`), 400, httpx.CodeMalformedJSON},
		{"unknown field with a bad value", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"fw":[1,}`), 400, httpx.CodeMalformedJSON},
		{"bad metrics beside an unknown field", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"fw":"2.0","metrics":[1]}`), 400, httpx.CodeUnprocessableEntity},
		{"bad device_time beside an unknown field", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"device_time":"yesterday","fw":"2.0"}`), 400, httpx.CodeUnprocessableEntity},
		{"NUL in an unknown field's value", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"fw":"a\u0000"}`), 400, httpx.CodeMalformedJSON},
		{"metrics not an object", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":[1]}`), 400, httpx.CodeUnprocessableEntity},
		{"too many metrics", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(manyMetrics(DefaultMaxMetrics + 1)), 400, httpx.CodeUnprocessableEntity},
		{"metric too large", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"x":"` + strings.Repeat("a", DefaultMaxMetricBytes) + `"}}`), 400, httpx.CodeUnprocessableEntity},
		{"duplicate metric", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"a":1,"a":2}}`), 400, httpx.CodeUnprocessableEntity},
		{"number out of range", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"x":1e999999}}`), 400, httpx.CodeUnprocessableEntity},
		{"metrics nested too deep", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"x":` + strings.Repeat("[", 17) + strings.Repeat("]", 17) + `}}`), 400, httpx.CodeUnprocessableEntity},
		{"bad device_time", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"device_time":"yesterday"}`), 400, httpx.CodeUnprocessableEntity},
		{"id empty", "/v1/devices//heartbeat", "application/json", strings.NewReader(`{}`), 400, httpx.CodeInvalidDeviceID},
		{"id 129 bytes", devPath(strings.Repeat("x", 129), "/heartbeat"), "application/json", strings.NewReader(`{}`), 400, httpx.CodeInvalidDeviceID},
		{"id control char", "/v1/devices/a%01b/heartbeat", "application/json", strings.NewReader(`{}`), 400, httpx.CodeInvalidDeviceID},
		{"id newline", "/v1/devices/a%0Ab/heartbeat", "application/json", strings.NewReader(`{}`), 400, httpx.CodeInvalidDeviceID},
		{"id NUL", "/v1/devices/a%00b/heartbeat", "application/json", strings.NewReader(`{}`), 400, httpx.CodeInvalidDeviceID},
		{"id invalid UTF-8", "/v1/devices/%FF/heartbeat", "application/json", strings.NewReader(`{}`), 400, httpx.CodeInvalidDeviceID},
		// duplicate keys differing only in case
		{"metric keys differ in case", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"battery":80,"Battery":5}}`), 400, httpx.CodeUnprocessableEntity},
		{"metric keys differ in Unicode case", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"temp_\u212a":1,"temp_k":2}}`), 400, httpx.CodeUnprocessableEntity},
		{"nested keys differ in case", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"net":{"rssi":-60,"RSSI":-90}}}`), 400, httpx.CodeUnprocessableEntity},
		{"nested duplicate key", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"net":[{"a":1,"a":1}]}}`), 400, httpx.CodeUnprocessableEntity},
		// metrics bounded
		{"metric key too long", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"` + strings.Repeat("k", MaxMetricKeyLen+1) + `":1}}`), 400, httpx.CodeUnprocessableEntity},
		{"empty metric key", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"":1}}`), 400, httpx.CodeUnprocessableEntity},
		// NUL and invalid UTF-8 anywhere
		{"NUL escape in device_time", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"device_time":"2026-01-02T03:04:05Z\u0000"}`), 400, httpx.CodeMalformedJSON},
		{"NUL escape in nested value", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"a":{"b":["x","\u0000"]}}}`), 400, httpx.CodeMalformedJSON},
		{"NUL escape in unknown field name", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"x\u0000":1}`), 400, httpx.CodeMalformedJSON},
		{"raw NUL between tokens", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"metrics\":{}\x00}"), 400, httpx.CodeMalformedJSON},
		{"raw NUL after the object", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{}\x00"), 400, httpx.CodeMalformedJSON},
		{"invalid UTF-8 in metric key", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"metrics\":{\"k\xc3\":1}}"), 400, httpx.CodeMalformedJSON},
		{"surrogate encoded as UTF-8 in device_time", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"device_time\":\"\xed\xa0\x80\"}"), 400, httpx.CodeMalformedJSON},
		{"invalid UTF-8 in field name", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"metrics\xff\":{}}"), 400, httpx.CodeMalformedJSON},
		{"invalid UTF-8 outside strings", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\xff}"), 400, httpx.CodeMalformedJSON},
		{"overlong UTF-8 encoding", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("{\"metrics\":{\"a\":\"\xc0\xaf\"}}"), 400, httpx.CodeMalformedJSON},
		{"byte order mark", devPath("dev", "/heartbeat"), "application/json", strings.NewReader("\ufeff{}"), 400, httpx.CodeMalformedJSON},
		// shapes
		{"null body", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`null`), 400, httpx.CodeMalformedJSON},
		{"string body", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`"hb"`), 400, httpx.CodeMalformedJSON},
		{"device_time not a string", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"device_time":5}`), 400, httpx.CodeUnprocessableEntity},
		{"unterminated string", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"a":"x}}`), 400, httpx.CodeMalformedJSON},
		{"trailing comma", devPath("dev", "/heartbeat"), "application/json", strings.NewReader(`{"metrics":{"a":1,}}`), 400, httpx.CodeMalformedJSON},
		{"content type with bad params", devPath("dev", "/heartbeat"), "application/json; charset", strings.NewReader(`{}`), 415, httpx.CodeUnsupportedMedia},
		{"json-like content type", devPath("dev", "/heartbeat"), "application/jsonx", strings.NewReader(`{}`), 415, httpx.CodeUnsupportedMedia},
	}
	before := len(e.inputEvents())
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do("POST", c.path, tok, c.ctype, c.body)
			if r.code != c.code {
				t.Fatalf("code %d, want %d: %s", r.code, c.code, r.body)
			}
			if got := r.errCode(t); got != c.ecode {
				t.Errorf("error code %q, want %q (%s)", got, c.ecode, r.body)
			}
			if n := len(e.inputEvents()); n != before {
				t.Errorf("a refused heartbeat published %d events", n-before)
			}
			if e.br.lim.tracked("dev") {
				t.Fatalf("a refused heartbeat spent rate budget")
			}
		})
	}
	// The limits themselves are accepted (the first at the same instant as
	// the refusals: they spent nothing).
	ok := []string{manyMetrics(DefaultMaxMetrics), `{"metrics":{"x":"` + strings.Repeat("a", DefaultMaxMetricBytes-2) + `"}}`,
		`{"metrics":{"emoji":"\ud83d\ude00","unknown_key":{"nested":[1,2,null]}}}`, `{"device_time":null,"metrics":null}`,
		`{"metrics":{"x":` + strings.Repeat("[", 16) + strings.Repeat("]", 16) + `,"big":1e300}}`,
		`{"metrics":{"` + strings.Repeat("k", MaxMetricKeyLen) + `":1,"a":{"b":1},"c":{"b":2},"A1":1,"a2":[{"x":1},{"x":2}]}}`,
		" \t\r\n ", `{}`}
	for _, body := range ok {
		if r := e.heartbeat("dev", tok, body); r.code != 200 {
			t.Errorf("valid body refused: %d %s", r.code, r.body)
		}
		e.clk.Advance(DefaultRateMinInterval)
	}
}

func TestHeartbeatAcceptedAndStored(t *testing.T) {
	e := newEnv(t)
	tok := e.register("kiosk-1", "lobby")
	e.clk.Advance(time.Second)
	r := e.heartbeat("kiosk-1", tok, `{"device_time":"2020-01-01T00:00:00+02:00","metrics":{ "battery": 87, "signal": -61, "app_version": "1.2.3", "custom": {"a": [1, 2]} }}`)
	if r.code != 200 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var resp map[string]any
	if err := json.Unmarshal(r.body, &resp); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"status": "registered", "remote_control_enabled": false, "should_reconnect": false, "heartbeat_interval_s": 30.0}
	if fmt.Sprint(resp) != fmt.Sprint(want) {
		t.Errorf("answer %v, want %v", resp, want)
	}
	hbs := heartbeatsOf(e.inputEvents(), "kiosk-1")
	if len(hbs) != 1 {
		t.Fatalf("%d heartbeats stored", len(hbs))
	}
	in := hbs[0].In
	if !in.At.Equal(t0.Add(time.Second)) {
		t.Errorf("At = %s, want the bridge's receive time %s", in.At, t0.Add(time.Second))
	}
	if in.Heartbeat.DeviceTime == nil || !in.Heartbeat.DeviceTime.Equal(time.Date(2019, 12, 31, 22, 0, 0, 0, time.UTC)) {
		t.Errorf("device time %v", in.Heartbeat.DeviceTime)
	}
	if string(in.Heartbeat.Metrics) != `{"battery":87,"signal":-61,"app_version":"1.2.3","custom":{"a":[1,2]}}` {
		t.Errorf("metrics %s", in.Heartbeat.Metrics)
	}
	if !strings.HasPrefix(in.ID, "hb-") || len(in.ID) < 10 {
		t.Errorf("event id %q", in.ID)
	}
	// Empty body without content type: a heartbeat without metrics.
	e.clk.Advance(10 * time.Second)
	if r := e.do("POST", devPath("kiosk-1", "/heartbeat"), tok, "", nil); r.code != 200 {
		t.Fatalf("empty heartbeat: %d %s", r.code, r.body)
	}
	hbs = heartbeatsOf(e.inputEvents(), "kiosk-1")
	if len(hbs) != 2 || hbs[1].In.Heartbeat.Metrics != nil || hbs[1].In.ID == hbs[0].In.ID {
		t.Errorf("second heartbeat %+v", hbs)
	}
}

func TestOddDeviceIDs(t *testing.T) {
	e := newEnv(t)
	ids := []string{".", "..", "a/b", "A.x", "*", ">", "a b", "Gerät", "A*", "A >", "~", "%41"}
	toks := map[string]string{}
	toks["A"] = e.register("A", "")
	for _, id := range ids {
		toks[id] = e.register(id, "")
	}
	for _, id := range ids {
		if r := e.heartbeat(id, toks[id], `{"metrics":{"id":`+strconv.Quote(id)+`}}`); r.code != 200 {
			t.Errorf("%q: %d %s", id, r.code, r.body)
		}
	}
	// A's token does not work for A.x or * (it is another device's token: 403).
	for _, id := range []string{"A.x", "*", ">", "A*"} {
		if r := e.heartbeat(id, toks["A"], ""); r.code != 403 {
			t.Errorf("A's token on %q: %d", id, r.code)
		}
	}
	evs := e.inputEvents() // checks every event's subject against its device
	if n := len(heartbeatsOf(evs, "A")); n != 0 {
		t.Errorf("heartbeats for other ids reached device A: %d", n)
	}
	for _, id := range ids {
		hbs := heartbeatsOf(evs, id)
		if len(hbs) != 1 {
			t.Errorf("%q: %d heartbeats", id, len(hbs))
			continue
		}
		var m map[string]string
		_ = json.Unmarshal(hbs[0].In.Heartbeat.Metrics, &m)
		if m["id"] != id || hbs[0].Subject != events.DeviceSubject(id, e.bus.Partitions()) {
			t.Errorf("%q stored as %s on %s", id, hbs[0].In.Heartbeat.Metrics, hbs[0].Subject)
		}
		if strings.ContainsAny(strings.TrimPrefix(hbs[0].Subject, "devstatus.in."), "*> ") {
			t.Errorf("subject %q carries a raw id", hbs[0].Subject)
		}
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	expect := func(at time.Duration, code int, retryAfter string) {
		t.Helper()
		e.clk.Set(t0.Add(at))
		r := e.heartbeat("d", tok, "")
		if r.code != code {
			t.Fatalf("t=%s: %d %s, want %d", at, r.code, r.body, code)
		}
		if got := r.hdr.Get("Retry-After"); got != retryAfter {
			t.Errorf("t=%s: Retry-After %q, want %q", at, got, retryAfter)
		}
		if code == 429 && r.errCode(t) != httpx.CodeRateLimited {
			t.Errorf("429 code %s", r.body)
		}
		if code == 429 {
			checkRetryAfterBody(t, r)
		}
	}
	expect(0, 200, "")
	expect(5*time.Second, 429, "5")
	expect(9*time.Second+500*time.Millisecond, 429, "1")
	// Boundary: exactly RateMinInterval after the last accepted one is accepted.
	expect(10*time.Second, 200, "")
	expect(19*time.Second, 429, "1")
	expect(20*time.Second, 200, "")
	if n := len(heartbeatsOf(e.inputEvents(), "d")); n != 3 {
		t.Errorf("%d heartbeats stored, want 3 (nothing published for a 429)", n)
	}
}

func TestRatePerMinute(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RateMinInterval, c.RatePerMinute = 0, 3 })
	tok := e.register("d", "")
	for i, at := range []time.Duration{0, 1, 2} {
		e.clk.Set(t0.Add(at * time.Second))
		if r := e.heartbeat("d", tok, ""); r.code != 200 {
			t.Fatalf("#%d: %d", i, r.code)
		}
	}
	e.clk.Set(t0.Add(3 * time.Second))
	r := e.heartbeat("d", tok, "")
	if r.code != 429 || r.hdr.Get("Retry-After") != "57" {
		t.Fatalf("4th in a minute: %d Retry-After %q", r.code, r.hdr.Get("Retry-After"))
	}
	e.clk.Set(t0.Add(60 * time.Second)) // exactly a minute after the first
	if r := e.heartbeat("d", tok, ""); r.code != 200 {
		t.Fatalf("after a minute: %d", r.code)
	}
	if r := e.heartbeat("d", tok, ""); r.code != 429 || r.hdr.Get("Retry-After") != "1" {
		t.Fatalf("5th: %d %q", r.code, r.hdr.Get("Retry-After"))
	}
}

func TestRateLimitConcurrent(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	codes := make(chan int, 20)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+devPath("d", "/heartbeat"), strings.NewReader(`{"metrics":{"n":1}}`))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	close(start)
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[200] != 1 || count[429] != 19 {
		t.Errorf("codes %v, want exactly one 200 and nineteen 429", count)
	}
	if n := len(heartbeatsOf(e.inputEvents(), "d")); n != 1 {
		t.Errorf("%d heartbeats stored, want 1", n)
	}
}

// TestClockStepBack: the injected clock jumps back 8 hours (as a wall clock
// could; clock.Monotonic cannot). The limiter does not lock the device out
// until the clock catches up: it clamps and accepts the next heartbeat, and
// the limit holds again from there. Events carry the bridge clock's time.
func TestClockStepBack(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	e.clk.Set(t0.Add(100 * time.Second))
	if r := e.heartbeat("d", tok, ""); r.code != 200 {
		t.Fatal(r.code)
	}
	e.clk.Set(t0.Add(100*time.Second - 8*time.Hour))
	e.clk.Advance(30 * time.Second)
	if r := e.heartbeat("d", tok, ""); r.code != 200 {
		t.Fatalf("heartbeat 30s after a step back: %d %s (locked out)", r.code, r.body)
	}
	e.clk.Advance(5 * time.Second)
	if r := e.heartbeat("d", tok, ""); r.code != 429 || r.hdr.Get("Retry-After") != "5" {
		t.Fatalf("the limit still holds after the step: %d %q", r.code, r.hdr.Get("Retry-After"))
	}
	// Forward again by 8h: fine as well.
	e.clk.Set(t0.Add(100*time.Second + 40*time.Second))
	if r := e.heartbeat("d", tok, ""); r.code != 200 {
		t.Fatalf("after stepping forward: %d", r.code)
	}
	hbs := heartbeatsOf(e.inputEvents(), "d")
	want := []time.Time{t0.Add(100 * time.Second), t0.Add(130*time.Second - 8*time.Hour), t0.Add(140 * time.Second)}
	if len(hbs) != len(want) {
		t.Fatalf("%d heartbeats", len(hbs))
	}
	for i, w := range want {
		if !hbs[i].In.At.Equal(w) {
			t.Errorf("heartbeat %d: At = %s, want the bridge clock's %s", i, hbs[i].In.At, w)
		}
	}
}

func TestStatusAndShouldReconnect(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	step := func() { e.clk.Advance(10 * time.Second) }
	check := func(status string, should bool) {
		t.Helper()
		step()
		r := e.heartbeat("d", tok, "")
		if r.code != 200 {
			t.Fatalf("%d %s", r.code, r.body)
		}
		m := r.obj(t)
		if m["status"] != status || m["should_reconnect"] != should {
			t.Errorf("answer %s, want status %s should_reconnect %v", r.body, status, should)
		}
	}
	check("registered", false)
	e.publishTransition("d", events.StatusRegistered, events.StatusConnected)
	check("connected", false)
	e.publishTransition("d", events.StatusConnected, events.StatusTemporarilyOffline)
	check("temporarily_offline", true) // comeback: signalled once
	check("temporarily_offline", false)
	e.publishTransition("d", events.StatusTemporarilyOffline, events.StatusConnected)
	check("connected", false)
	e.publishTransition("d", events.StatusConnected, events.StatusDisconnected)
	check("disconnected", true)
	e.publishTransition("d", events.StatusDisconnected, events.StatusConnected)

	// Operator reconnect: delivered once.
	if r := e.do("POST", devPath("d", "/reconnect"), adminToken, "", nil); r.code != 202 {
		t.Fatalf("reconnect: %d %s", r.code, r.body)
	}
	check("connected", true)
	check("connected", false)

	// Remote control shows in the answer.
	r := e.do("PATCH", devPath("d", ""), adminToken, "application/json", strings.NewReader(`{"remote_control_enabled":true}`))
	if r.code != 200 || r.obj(t)["remote_control_enabled"] != true || r.obj(t)["id"] != "d" {
		t.Fatalf("patch: %d %s", r.code, r.body)
	}
	step()
	if m := e.heartbeat("d", tok, "").obj(t); m["remote_control_enabled"] != true {
		t.Errorf("remote control not reflected: %v", m)
	}

	// A new bridge instance learns every device's current status from the
	// last transition per subject.
	e2 := newEnvOnBus(t, e.bus)
	if st, ok := e2.br.status.get("d"); !ok || st != events.StatusConnected {
		t.Errorf("new instance sees %q %v", st, ok)
	}
	evs := e.inputEvents()
	var delivered int
	for _, ev := range evs {
		if ev.In.Type == events.TypeReconnectDelivered {
			delivered++
		}
	}
	if delivered != 3 { // two comebacks and one operator request
		t.Errorf("%d reconnect_delivered events, want 3", delivered)
	}
}

func TestPing(t *testing.T) {
	e := newEnv(t)
	e.register("d", "")
	ping := func(id, token, body string) result {
		return e.do("POST", devPath(id, "/ping"), token, "application/json", strings.NewReader(body))
	}
	e.clk.Set(t0.Add(time.Minute))
	if r := ping("d", pingToken, `{"ok":false,"rtt_ms":2000,"checked_at":"2026-01-02T03:04:30Z","error":"timeout"}`); r.code != 202 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if r := ping("d", pingToken, `{"ok":true,"rtt_ms":12,"checked_at":"2030-01-01T00:00:00Z"}`); r.code != 202 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if r := ping("d", pingToken, `{"ok":true}`); r.code != 202 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	before := len(e.inputEvents())
	bad := []struct {
		name, id, token, body string
		code                  int
	}{
		{"device token is not the service token", "d", adminToken, `{"ok":true}`, 401},
		{"no token", "d", "", `{"ok":true}`, 401},
		{"unknown device", "ghost", pingToken, `{"ok":true}`, 404},
		{"missing ok", "d", pingToken, `{"rtt_ms":1}`, 400},
		{"negative rtt", "d", pingToken, `{"ok":true,"rtt_ms":-1}`, 400},
		{"bad checked_at", "d", pingToken, `{"ok":true,"checked_at":"now"}`, 400},
		{"unknown error class", "d", pingToken, `{"ok":false,"error":"boom"}`, 400},
		{"unknown field", "d", pingToken, `{"ok":true,"extra":1}`, 400},
		{"trailing data", "d", pingToken, `{"ok":true}]`, 400},
		{"bad id", "a\x01", pingToken, `{"ok":true}`, 400},
	}
	for _, c := range bad {
		if r := ping(c.id, c.token, c.body); r.code != c.code {
			t.Errorf("%s: %d %s, want %d", c.name, r.code, r.body, c.code)
		}
	}
	evs := e.inputEvents()
	if len(evs) != before {
		t.Errorf("refused pings published %d events", len(evs)-before)
	}
	var pings []*events.Input
	for _, ev := range evs {
		if ev.In.Type == events.TypePingResult {
			pings = append(pings, ev.In)
		}
	}
	now := t0.Add(time.Minute)
	if len(pings) != 3 {
		t.Fatalf("%d pings", len(pings))
	}
	if p := pings[0]; p.Ping.OK || p.Ping.RTTMs != 2000 || p.Ping.Error != "timeout" || !p.Ping.CheckedAt.Equal(t0.Add(30*time.Second)) || !p.At.Equal(now) {
		t.Errorf("ping 1: %+v %+v", p, p.Ping)
	}
	if p := pings[1]; !p.Ping.CheckedAt.Equal(now) {
		t.Errorf("future checked_at not clamped to the receive time: %s", p.Ping.CheckedAt)
	}
	if p := pings[2]; !p.Ping.CheckedAt.Equal(now) {
		t.Errorf("checked_at default: %s", p.Ping.CheckedAt)
	}
}

func TestAdmin(t *testing.T) {
	e := newEnv(t)
	post := func(token, body string) result {
		return e.do("POST", "/v1/devices", token, "application/json", strings.NewReader(body))
	}
	if r := post("", `{"id":"x"}`); r.code != 401 {
		t.Errorf("no admin token: %d", r.code)
	}
	if r := post(pingToken, `{"id":"x"}`); r.code != 401 {
		t.Errorf("ping token on admin: %d", r.code)
	}
	r := post(adminToken, `{"id":"a/b c","group":"lobby","gateway":"gw-1"}`)
	if r.code != 201 || r.hdr.Get("Location") != "/v1/devices/a%2Fb%20c" {
		t.Fatalf("register: %d %s %q", r.code, r.body, r.hdr.Get("Location"))
	}
	if m := r.obj(t); len(m) != 2 || m["id"] != "a/b c" || len(m["token"].(string)) < 43 {
		t.Errorf("register answer %s", r.body)
	}
	for _, c := range []struct {
		body  string
		code  int
		ecode string
	}{
		{`{"id":"a/b c"}`, 409, httpx.CodeConflict},
		{`{"id":""}`, 400, httpx.CodeInvalidDeviceID},
		{`{"id":"a\u0000"}`, 400, httpx.CodeMalformedJSON},
		{`{"id":"` + strings.Repeat("x", 129) + `"}`, 400, httpx.CodeInvalidDeviceID},
		{`{"id":"tab\there"}`, 400, httpx.CodeInvalidDeviceID},
		{`{"group":"g"}`, 400, httpx.CodeInvalidDeviceID},
		{`{"id":"y","group":"` + strings.Repeat("g", 65) + `"}`, 400, httpx.CodeUnprocessableEntity},
		{`{"id":"y","colour":"red"}`, 400, httpx.CodeBadRequest},
		{`{"id":5}`, 400, httpx.CodeInvalidDeviceID},
	} {
		r := post(adminToken, c.body)
		if r.code != c.code || r.errCode(t) != c.ecode {
			t.Errorf("%s: %d %s, want %d %s", c.body, r.code, r.body, c.code, c.ecode)
		}
	}
	id := "a/b c"
	if r := e.do("PATCH", devPath(id, ""), adminToken, "application/json", strings.NewReader(`{"remote_control_enabled":true}`)); r.code != 200 || string(r.body) != `{"id":"a/b c","remote_control_enabled":true}`+"\n" {
		t.Errorf("patch: %d %s", r.code, r.body)
	}
	if r := e.do("PATCH", devPath(id, ""), adminToken, "application/json", strings.NewReader(`{}`)); r.code != 400 {
		t.Errorf("patch without field: %d", r.code)
	}
	if r := e.do("PATCH", devPath("ghost", ""), adminToken, "application/json", strings.NewReader(`{"remote_control_enabled":true}`)); r.code != 404 {
		t.Errorf("patch unknown: %d", r.code)
	}
	if r := e.do("PATCH", devPath(id, ""), "", "application/json", strings.NewReader(`{"remote_control_enabled":true}`)); r.code != 401 {
		t.Errorf("patch without token: %d", r.code)
	}
	if r := e.do("POST", devPath(id, "/reconnect"), adminToken, "", nil); r.code != 202 {
		t.Errorf("reconnect: %d %s", r.code, r.body)
	}
	if r := e.do("POST", devPath("ghost", "/reconnect"), adminToken, "", nil); r.code != 404 {
		t.Errorf("reconnect unknown: %d", r.code)
	}
	if r := e.do("DELETE", devPath("ghost", ""), adminToken, "", nil); r.code != 404 {
		t.Errorf("delete unknown: %d", r.code)
	}
	if r := e.do("DELETE", devPath(id, ""), adminToken, "", nil); r.code != 204 || len(r.body) != 0 {
		t.Errorf("delete: %d %s", r.code, r.body)
	}
	if r := e.do("DELETE", devPath(id, ""), adminToken, "", nil); r.code != 204 {
		t.Errorf("repeated delete: %d", r.code)
	}
	if r := e.do("PATCH", devPath(id, ""), adminToken, "application/json", strings.NewReader(`{"remote_control_enabled":false}`)); r.code != 404 {
		t.Errorf("patch decommissioned: %d", r.code)
	}
	// Re-registration after decommissioning is allowed.
	if r := post(adminToken, `{"id":"a/b c"}`); r.code != 201 {
		t.Errorf("re-register: %d %s", r.code, r.body)
	}
	types := map[events.Type]int{}
	for _, ev := range e.inputEvents() {
		types[ev.In.Type]++
		if ev.In.Device != id {
			t.Errorf("event for %q", ev.In.Device)
		}
	}
	want := map[events.Type]int{events.TypeDeviceRegistered: 2, events.TypeRemoteControlChanged: 1,
		events.TypeReconnectRequested: 1, events.TypeDeviceDecommissioned: 1}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", types, want)
	}
}

// TestBusDownAndBack is scenario 8: heartbeat at 0; NATS down from 10 to 40;
// heartbeats at 30 (503, never 200) and 60 (200). Readiness fails while
// down. Every heartbeat answered 200 is in the stream.
//
// The test runs the embedded server itself on a loopback TCP port and opens
// the bus with its URL: an in-process connection (nats.InProcessServer) is
// bound to one server object and can never reconnect to a restarted one,
// while a TCP client reconnects to the new server on the same address and
// store directory.
func TestBusDownAndBack(t *testing.T) {
	dir := t.TempDir()
	var srvMu sync.Mutex
	srv, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, ListenAddr: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // registered first: runs after the bus is closed
		srvMu.Lock()
		defer srvMu.Unlock()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	addr := strings.TrimPrefix(srv.ClientURL(), "nats://")
	b := testenv.NATS(t, bus.Config{URL: srv.ClientURL(), Partitions: 4})
	e := newEnvOnBus(t, b)
	tok := e.register("A", "")

	accepted := map[int]bool{}
	beat := func(n int, at time.Duration) result {
		e.clk.Set(t0.Add(at))
		r := e.heartbeat("A", tok, fmt.Sprintf(`{"metrics":{"n":%d}}`, n))
		if r.code == 200 {
			accepted[n] = true
		}
		return r
	}
	if r := beat(0, 0); r.code != 200 {
		t.Fatalf("t=0: %d %s", r.code, r.body)
	}
	srvMu.Lock()
	srv.Shutdown()
	srv.WaitForShutdown()
	srvMu.Unlock()
	testenv.Eventually(t, 20*time.Second, "not ready", func() bool { return e.br.Ready(context.Background()) != nil })
	for i, at := range []time.Duration{30 * time.Second, 41 * time.Second} {
		r := beat(1+i, at)
		if r.code != 503 || r.hdr.Get("Retry-After") == "" || r.errCode(t) != httpx.CodeUnavailable {
			t.Fatalf("heartbeat while NATS is down: %d %s Retry-After %q", r.code, r.body, r.hdr.Get("Retry-After"))
		}
		checkRetryAfterBody(t, r)
	}
	// Admin calls fail alike.
	if r := e.do("POST", "/v1/devices", adminToken, "application/json", strings.NewReader(`{"id":"B"}`)); r.code != 503 {
		t.Errorf("register while down: %d %s", r.code, r.body)
	}
	if err := e.br.Ready(context.Background()); !errors.Is(err, ErrNotReady) {
		t.Errorf("Ready while down: %v", err)
	}

	srvMu.Lock()
	srv, err = bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, ListenAddr: addr})
	srvMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	e.waitReady()
	if r := beat(3, 60*time.Second); r.code != 200 {
		t.Fatalf("t=60 after the restart: %d %s", r.code, r.body)
	}
	if r := beat(4, 75*time.Second); r.code != 200 {
		t.Fatalf("t=75: %d %s", r.code, r.body)
	}
	stored := map[int]bool{}
	for _, ev := range heartbeatsOf(e.inputEvents(), "A") {
		var m struct{ N int }
		_ = json.Unmarshal(ev.In.Heartbeat.Metrics, &m)
		stored[m.N] = true
	}
	for n := range accepted {
		if !stored[n] {
			t.Errorf("heartbeat %d was answered 200 but is not in the stream", n)
		}
	}
	if len(accepted) != 3 { // 0, 3, 4
		t.Errorf("accepted %v", accepted)
	}
	// The registry cache was emptied when the connection dropped, and its
	// watch works again: a change written by another instance is seen.
	if s := e.reg.CacheStats(); s.Flushes == 0 {
		t.Errorf("cache stats %+v: no flush after the connection loss", s)
	}
	other, err := registry.New(registry.Config{Bus: b, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.SetRemoteControl(context.Background(), "A", true); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "remote control seen through the watch", func() bool {
		ent, err := e.reg.Lookup(context.Background(), "A")
		return err == nil && ent.RemoteControlEnabled
	})
	// The transitions feed follows new transitions after the restart.
	e.publishTransition("A", events.StatusConnected, events.StatusTemporarilyOffline)
	if r := beat(5, 90*time.Second); r.code != 200 || r.obj(t)["should_reconnect"] != true || r.obj(t)["remote_control_enabled"] != true {
		t.Errorf("after the restart: %d %s", r.code, r.body)
	}
}

func TestInvalidConfig(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	for name, cfg := range map[string]Config{
		"empty":         {},
		"no admin":      {Bus: b, PingToken: "p"},
		"negative rate": {Bus: b, AdminToken: "a", PingToken: "p", RateMinInterval: -1},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestReadyNeedsRun(t *testing.T) {
	e := newEnv(t)
	b2, err := New(Config{Bus: e.bus, Registry: e.reg, AdminToken: "a", PingToken: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Ready(context.Background()); !errors.Is(err, ErrNotReady) {
		t.Errorf("Ready without Run: %v", err)
	}
}
