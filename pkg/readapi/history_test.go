package readapi

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// history projects hand-made histories (event times in seconds after t0;
// the fixture's now is 600):
//
//	h1  registered at 0; connected 60; temporarily_offline 100; disconnected 360; connected 400
//	n1  registered at 0; no transition ever
//	tie registered at 0; connected 10; temporarily_offline 50 and disconnected 50 (one instant, stream order)
//	frac registered at 0; connected 10.4; temporarily_offline 20.7; connected 30.2 (sub-second times)
func history(t *testing.T, f *fixture) {
	t.Helper()
	f.register(t, "h1", "hist")
	f.transition(t, "h1", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 60)
	f.transition(t, "h1", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 100)
	f.transition(t, "h1", events.StatusTemporarilyOffline, events.StatusDisconnected, events.ReasonLivenessTimeout, 360)
	f.transition(t, "h1", events.StatusDisconnected, events.StatusConnected, events.ReasonHeartbeat, 400)
	f.register(t, "tie", "hist")
	f.transition(t, "tie", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 10)
	f.transition(t, "tie", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 50)
	f.transition(t, "tie", events.StatusTemporarilyOffline, events.StatusDisconnected, events.ReasonLivenessTimeout, 50)
	f.register(t, "frac", "hist")
	f.transition(t, "frac", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 10.4)
	f.transition(t, "frac", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 20.7)
	tr := f.transition(t, "frac", events.StatusTemporarilyOffline, events.StatusConnected, events.ReasonHeartbeat, 30.2)
	in := f.register(t, "n1", "hist")
	f.wait(t, in, tr)
}

func iso(s float64) string { return at(s).Format(time.RFC3339Nano) }

func TestStatusAt(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	history(t, f)
	cases := []struct {
		id    string
		at    string // "" = now
		want  string // "" = unknown (before registration)
		since float64
		code  string
	}{
		{"h1", iso(-10), "", 0, ""},
		{"h1", iso(0), "registered", 0, ""},
		{"h1", iso(30), "registered", 0, ""},
		{"h1", iso(60), "connected", 60, "heartbeat"}, // a transition takes effect at its at
		{"h1", iso(99.999), "connected", 60, "heartbeat"},
		{"h1", iso(100), "temporarily_offline", 100, "heartbeat_timeout"},
		{"h1", iso(359), "temporarily_offline", 100, "heartbeat_timeout"},
		{"h1", iso(360), "disconnected", 360, "liveness_timeout"},
		{"h1", iso(500), "connected", 400, "heartbeat"},
		{"h1", "", "connected", 400, "heartbeat"},
		{"h1", iso(5000), "connected", 400, "heartbeat"},
		{"n1", iso(-1), "", 0, ""},
		{"n1", iso(10), "registered", 0, ""},
		{"n1", "", "registered", 0, ""},
		{"tie", iso(50), "disconnected", 50, "liveness_timeout"}, // same instant: the later in stream order
		{"tie", iso(49), "connected", 10, "heartbeat"},
	}
	for _, c := range cases {
		q := ""
		if c.at != "" {
			q = "?at=" + url.QueryEscape(c.at)
		}
		var got StatusAtJSON
		if code, body := f.get(t, "/v1/devices/"+c.id+"/status"+q, &got); code != 200 {
			t.Fatalf("%s at %s: %d %s", c.id, c.at, code, body)
		}
		wantAt := at(600)
		if c.at != "" {
			wantAt, _ = time.Parse(time.RFC3339Nano, c.at)
		}
		if got.ID != c.id || !got.At.Equal(wantAt) {
			t.Errorf("%s at %s: id/at %q %s", c.id, c.at, got.ID, got.At)
		}
		if c.want == "" {
			if got.Status != nil || got.StatusSince != nil {
				t.Errorf("%s at %s: %+v, want unknown (nulls)", c.id, c.at, got)
			}
			continue
		}
		if got.Status == nil || string(*got.Status) != c.want || got.StatusSince == nil || !got.StatusSince.Equal(at(c.since)) ||
			got.ReasonCode != c.code {
			t.Errorf("%s at %s: %+v (since %v), want %s since %g (%s)", c.id, c.at, got, got.StatusSince, c.want, c.since, c.code)
		}
	}
	_, body := f.get(t, "/v1/devices/n1/status?at="+url.QueryEscape(iso(-1)), nil)
	if want := `{"id":"n1","at":"2026-01-02T02:59:59Z","status":null,"status_since":null,"reason_code":"","reason":""}`; body != want+"\n" {
		t.Errorf("unknown shape: %s", body)
	}
}

func TestAvailability(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	history(t, f)
	type secs struct{ reg, conn, off, disc, unk int64 }
	// exact are the exact seconds per status (for percent), when they differ
	// from the whole seconds of want.
	type exact struct{ reg, conn, off, disc, unk float64 }
	cases := []struct {
		name     string
		id       string
		from, to string // "" = default
		wantFrom float64
		wantTo   float64
		windowS  int64
		want     secs
		exact    *exact
		n        int
	}{
		{"whole life", "h1", iso(0), iso(600), 0, 600, 600, secs{60, 40 + 200, 260, 40, 0}, nil, 4},
		{"starts mid-registered, ends mid-connected", "h1", iso(30), iso(430), 30, 430, 400, secs{30, 40 + 30, 260, 40, 0}, nil, 4},
		{"starts mid-offline", "h1", iso(200), iso(380), 200, 380, 180, secs{0, 0, 160, 20, 0}, nil, 1},
		{"inside one status", "h1", iso(150), iso(250), 150, 250, 100, secs{0, 0, 100, 0, 0}, nil, 0},
		{"starts on a transition", "h1", iso(100), iso(360), 100, 360, 260, secs{0, 0, 260, 0, 0}, nil, 0},
		{"before registration", "h1", iso(-100), iso(100), -100, 100, 200, secs{60, 40, 0, 0, 100}, nil, 1},
		{"wholly before registration", "h1", iso(-100), iso(-50), -100, -50, 50, secs{0, 0, 0, 0, 50}, nil, 0},
		{"to capped at now", "h1", iso(500), iso(10000), 500, 600, 100, secs{0, 100, 0, 0, 0}, nil, 0},
		{"default window: 24h before now", "h1", "", "", 600 - 86400, 600, 86400, secs{60, 240, 260, 40, 86400 - 600}, nil, 4},
		{"no history", "n1", iso(-50), iso(50), -50, 50, 100, secs{50, 0, 0, 0, 50}, nil, 0},
		{"no history, after registration", "n1", iso(100), iso(400), 100, 400, 300, secs{300, 0, 0, 0, 0}, nil, 0},
		{"zero-length status", "tie", iso(0), iso(100), 0, 100, 100, secs{10, 40, 0, 50, 0}, nil, 3},
		// Sub-second times: window_s is the window rounded (40.6 → 41); each
		// status gets its whole seconds (10, 21, 9 = 40) and the second still
		// missing goes to the largest remainder (offline's .5, not
		// registered's .1).
		{"fractional boundaries", "frac", iso(0.3), iso(40.9), 0.3, 40.9, 41, secs{10, 21, 10, 0, 0}, &exact{10.1, 21.0, 9.5, 0, 0}, 3},
		// One status, rounded up: 59.6 s → 60.
		{"window rounded up", "h1", iso(0.4), iso(60), 0.4, 60, 60, secs{60, 0, 0, 0, 0}, &exact{59.6, 0, 0, 0, 0}, 0},
		// Under half a second: nothing to count in whole seconds, the share
		// is still known.
		{"sub-second window", "h1", iso(100.2), iso(100.6), 100.2, 100.6, 0, secs{}, &exact{0, 0, 0.4, 0, 0}, 0},
		{"sub-second window before registration", "frac", iso(-0.3), iso(0.1), -0.3, 0.1, 0, secs{}, &exact{0.1, 0, 0, 0, 0.3}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := url.Values{}
			if c.from != "" {
				q.Set("from", c.from)
			}
			if c.to != "" {
				q.Set("to", c.to)
			}
			path := "/v1/devices/" + c.id + "/availability?" + q.Encode()
			var got AvailabilityJSON
			code, body := f.get(t, path, &got)
			if code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			// On the wire: window_s and every seconds value are JSON integers.
			var raw struct {
				WindowS json.RawMessage            `json:"window_s"`
				Seconds map[string]json.RawMessage `json:"seconds"`
				Percent map[string]json.RawMessage `json:"percent"`
			}
			if err := json.Unmarshal([]byte(body), &raw); err != nil {
				t.Fatal(err)
			}
			if !isJSONInteger(raw.WindowS) || len(raw.Seconds) != 5 || len(raw.Percent) != 5 {
				t.Errorf("shape: %s", body)
			}
			for k, v := range raw.Seconds {
				if !isJSONInteger(v) {
					t.Errorf("seconds.%s = %s, not an integer: %s", k, v, body)
				}
			}
			if !got.From.Equal(at(c.wantFrom)) || !got.To.Equal(at(c.wantTo)) || got.WindowS != c.windowS || got.Transitions != c.n {
				t.Errorf("window %s..%s (%d s, %d transitions), want %g..%g (%d s, %d)", got.From, got.To, got.WindowS, got.Transitions,
					c.wantFrom, c.wantTo, c.windowS, c.n)
			}
			gs := secs{got.Seconds.Registered, got.Seconds.Connected, got.Seconds.TemporarilyOffline, got.Seconds.Disconnected, got.Seconds.Unknown}
			if gs != c.want {
				t.Errorf("seconds %+v, want %+v", gs, c.want)
			}
			if sum := gs.reg + gs.conn + gs.off + gs.disc + gs.unk; sum != got.WindowS {
				t.Errorf("seconds add up to %d, window_s is %d", sum, got.WindowS)
			}
			ex := exact{float64(c.want.reg), float64(c.want.conn), float64(c.want.off), float64(c.want.disc), float64(c.want.unk)}
			if c.exact != nil {
				ex = *c.exact
			}
			window := c.wantTo - c.wantFrom
			gp := []float64{got.Percent.Registered, got.Percent.Connected, got.Percent.TemporarilyOffline, got.Percent.Disconnected, got.Percent.Unknown}
			wp := []float64{ex.reg, ex.conn, ex.off, ex.disc, ex.unk}
			sum := 0.0
			for i := range gp {
				sum += gp[i]
				if math.Abs(gp[i]-wp[i]/window*100) > 1e-6 { // (at() is exact to the nanosecond only)
					t.Errorf("percent[%d] = %g, want %g", i, gp[i], wp[i]/window*100)
				}
			}
			if math.Abs(sum-100) > 1e-9 {
				t.Errorf("percents add up to %g", sum)
			}
		})
	}
}

// isJSONInteger tells whether a JSON value is an integer literal (no
// fraction, no exponent).
func isJSONInteger(v json.RawMessage) bool {
	s := strings.TrimPrefix(string(v), "-")
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// wholeSeconds: the seconds add up to the rounded total, each is its duration
// truncated or rounded up, only durations with a remainder are rounded up,
// and the result is the largest-remainder apportionment.
func TestWholeSeconds(t *testing.T) {
	t.Parallel()
	s := time.Second
	ms := time.Millisecond
	for _, c := range []struct {
		ds    []time.Duration
		total int64
		want  []int64
	}{
		{[]time.Duration{10*s + 100*ms, 21 * s, 9*s + 500*ms, 0, 0}, 41, []int64{10, 21, 10, 0, 0}},
		{[]time.Duration{59*s + 600*ms, 0, 0, 0, 0}, 60, []int64{60, 0, 0, 0, 0}},
		{[]time.Duration{0, 0, 400 * ms, 0, 0}, 0, []int64{0, 0, 0, 0, 0}},
		{[]time.Duration{300 * ms, 300 * ms, 300 * ms, 0, 0}, 1, []int64{1, 0, 0, 0, 0}},               // ties: the first key
		{[]time.Duration{200 * ms, 300 * ms, 200 * ms, 200 * ms, 100 * ms}, 1, []int64{0, 1, 0, 0, 0}}, // the largest remainder
		{[]time.Duration{600 * ms, 600 * ms, 600 * ms, 600 * ms, 600 * ms}, 3, []int64{1, 1, 1, 0, 0}}, // 3.0 s
		{[]time.Duration{900 * ms, 900 * ms, 900 * ms, 900 * ms, 900 * ms}, 5, []int64{1, 1, 1, 1, 1}}, // 4.5 s rounds up
		{[]time.Duration{86400 * s, 0, 0, 0, 0}, 86400, []int64{86400, 0, 0, 0, 0}},
		{[]time.Duration{1, 0, 0, 0, s - 1}, 1, []int64{0, 0, 0, 0, 1}},
	} {
		total, got := wholeSeconds(c.ds)
		if total != c.total || !slices.Equal(got, c.want) {
			t.Errorf("wholeSeconds(%v) = %d %v, want %d %v", c.ds, total, got, c.total, c.want)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		ds := make([]time.Duration, 5)
		var sum time.Duration
		for i := range ds {
			switch rng.IntN(4) {
			case 0: // absent
			case 1:
				ds[i] = time.Duration(rng.Int64N(int64(2 * time.Second)))
			default:
				ds[i] = time.Duration(rng.Int64N(int64(100 * 365 * 24 * time.Hour / 5)))
			}
			ds[i] = ds[i].Truncate(time.Microsecond)
			sum += ds[i]
		}
		total, got := wholeSeconds(ds)
		var n int64
		for i, v := range got {
			n += v
			lo := int64(ds[i] / time.Second)
			if v != lo && (v != lo+1 || ds[i]%time.Second == 0) {
				t.Fatalf("wholeSeconds(%v) = %v: [%d] is neither truncated nor rounded up", ds, got, i)
			}
		}
		if n != total || total != int64(sum.Round(time.Second)/time.Second) {
			t.Fatalf("wholeSeconds(%v) = %d %v (sum %d)", ds, total, got, n)
		}
	}
}
