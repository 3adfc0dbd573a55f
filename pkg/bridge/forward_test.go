package bridge

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Forward compatibility: a heartbeat from firmware newer than the server,
// with top-level fields this version does not know, is answered 200 and
// recorded with its known fields; the unknown ones are skipped and counted
// in devstatus_heartbeat_unknown_fields_total.

func TestHeartbeatUnknownFieldsAccepted(t *testing.T) {
	e := newEnv(t)
	tok := e.register("fw-new", "")
	cases := []struct {
		body    string
		unknown int
		metrics string
	}{
		{`{"metrics":{"battery":5},"firmware_build":"2.1.0-rc3"}`, 1, `{"battery":5}`},
		{`{"boot_reason":"watchdog","metrics":{"a":1},"net":{"rssi":-70,"aps":[{"ssid":"x"},null]},"seq":12345678901234567890}`, 3, `{"a":1}`},
		{`{"Metrics":{"a":1},"metric":{"b":2}}`, 2, ``}, // names are case-sensitive: both unknown
		{`{"x":1,"x":2,"device_time":"2026-01-02T03:04:05Z"}`, 2, ``},
		{`{"e":"\u00e9\ud83d\ude00"}`, 1, ``},
	}
	total := 0.0
	for i, c := range cases {
		before := len(heartbeatsOf(e.inputEvents(), "fw-new"))
		r := e.heartbeat("fw-new", tok, c.body)
		if r.code != http.StatusOK {
			t.Fatalf("%s: %d %s", c.body, r.code, r.body)
		}
		hbs := heartbeatsOf(e.inputEvents(), "fw-new")
		if len(hbs) != before+1 {
			t.Fatalf("%s: answered 200 but %d heartbeats stored, want %d", c.body, len(hbs), before+1)
		}
		if got := string(hbs[len(hbs)-1].In.Heartbeat.Metrics); got != c.metrics {
			t.Errorf("%s: metrics %q, want %q", c.body, got, c.metrics)
		}
		total += float64(c.unknown)
		if got := testutil.ToFloat64(e.br.m.unknownFields); got != total {
			t.Errorf("case %d: devstatus_heartbeat_unknown_fields_total %v, want %v", i, got, total)
		}
		e.clk.Advance(DefaultRateMinInterval)
	}
	// A refused heartbeat counts nothing, whatever it carried.
	if r := e.heartbeat("fw-new", tok, `{"fw":1,"metrics":[1]}`); r.code != http.StatusBadRequest {
		t.Fatalf("bad metrics: %d %s", r.code, r.body)
	}
	if r := e.heartbeat("fw-new", "wrong", `{"fw":1}`); r.code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d %s", r.code, r.body)
	}
	if got := testutil.ToFloat64(e.br.m.unknownFields); got != total {
		t.Errorf("refused heartbeats counted: %v, want %v", got, total)
	}
}

func TestGatewayItemUnknownFieldsAccepted(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	gw := "gw-fw"
	tok := e.registerGateway(gw)
	for i := range 3 {
		e.registerBehind(fmt.Sprintf("n%d", i), gw)
	}
	// n0 takes the full decoder because of its unknown fields; the batch as
	// a whole then does too; n2's bad metrics are refused as before.
	body := `{"heartbeats": [
		{"device": "n0", "metrics": {"battery": 9}, "fw": "3.0", "mesh": {"hops": 2}},
		{"device": "n1"},
		{"device": "n2", "fw": "3.0", "metrics": [1]}
	]}`
	r := e.batch(gw, tok, body)
	if r.code != http.StatusOK {
		t.Fatalf("batch: %d %s", r.code, r.body)
	}
	var a gwAnswer
	decode(t, r.body, &a)
	if len(a.Results) != 3 || a.Results[0].HTTPStatus != 200 || a.Results[1].HTTPStatus != 200 || a.Results[2].HTTPStatus != 400 {
		t.Fatalf("answer %s", r.body)
	}
	evs := e.inputEvents()
	hbs := heartbeatsOf(evs, "n0")
	if len(hbs) != 1 || string(hbs[0].In.Heartbeat.Metrics) != `{"battery":9}` || hbs[0].In.Heartbeat.Via != gw {
		t.Fatalf("n0 stored %+v", hbs)
	}
	if n := len(heartbeatsOf(evs, "n1")); n != 1 {
		t.Fatalf("n1: %d heartbeats stored", n)
	}
	if n := len(heartbeatsOf(evs, "n2")); n != 0 {
		t.Fatalf("n2 (refused): %d heartbeats stored", n)
	}
	if got := testutil.ToFloat64(e.br.m.unknownFields); got != 2 {
		t.Errorf("devstatus_heartbeat_unknown_fields_total %v, want 2 (n0's; n2 was refused)", got)
	}
	// Registered under its documented name, without labels.
	want := "# HELP devstatus_heartbeat_unknown_fields_total " + unknownFieldsHelp + "\n" +
		"# TYPE devstatus_heartbeat_unknown_fields_total counter\ndevstatus_heartbeat_unknown_fields_total 2\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "devstatus_heartbeat_unknown_fields_total"); err != nil {
		t.Error(err)
	}
}

// checkRetryAfterBody asserts that a 429 or 503 carries retry_after_s in its
// body, the same whole seconds as its Retry-After header.
func checkRetryAfterBody(t *testing.T, r result) {
	t.Helper()
	var body struct {
		RetryAfterS *int `json:"retry_after_s"`
	}
	decode(t, r.body, &body)
	h, err := strconv.Atoi(r.hdr.Get("Retry-After"))
	if err != nil || body.RetryAfterS == nil || *body.RetryAfterS != h || h < 1 {
		t.Errorf("%d: Retry-After %q, body %s: want retry_after_s equal to the header", r.code, r.hdr.Get("Retry-After"), r.body)
	}
}

// TestHeartbeatIntervalPerGroup: heartbeat_interval_s is the device's
// group's interval when it has one, else the global one; for the single
// endpoint and gateway items alike.
func TestHeartbeatIntervalPerGroup(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.GroupHeartbeatIntervals = map[string]time.Duration{"lobby": 12 * time.Second, "g": 15 * time.Second}
	})
	lobby := e.register("in-lobby", "lobby")
	plain := e.register("no-group", "")
	other := e.register("other-group", "warehouse")
	interval := func(r result) float64 {
		t.Helper()
		if r.code != http.StatusOK {
			t.Fatalf("%d %s", r.code, r.body)
		}
		v, _ := r.obj(t)["heartbeat_interval_s"].(float64)
		return v
	}
	if got := interval(e.heartbeat("in-lobby", lobby, `{}`)); got != 12 {
		t.Errorf("lobby: %v, want 12", got)
	}
	if got := interval(e.heartbeat("no-group", plain, `{}`)); got != 30 {
		t.Errorf("no group: %v, want 30 (the default)", got)
	}
	if got := interval(e.heartbeat("other-group", other, `{}`)); got != 30 {
		t.Errorf("group without an interval: %v, want 30", got)
	}
	gw := e.registerGateway("gw-iv")
	e.registerBehind("behind", "gw-iv") // group "g"
	r := e.batch("gw-iv", gw, `{"heartbeats":[{"device":"behind"}]}`)
	var a gwAnswer
	decode(t, r.body, &a)
	if len(a.Results) != 1 || a.Results[0].HTTPStatus != 200 || a.Results[0].HeartbeatIntervalS != 15 {
		t.Errorf("gateway item: %s", r.body)
	}
	if _, err := New(Config{GroupHeartbeatIntervals: map[string]time.Duration{"x": time.Millisecond}}); err == nil ||
		!strings.Contains(err.Error(), "GroupHeartbeatIntervals") {
		t.Errorf("an interval under 1s: %v", err)
	}
}
