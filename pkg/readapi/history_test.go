package readapi

import (
	"math"
	"net/url"
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
	tr := f.transition(t, "tie", events.StatusTemporarilyOffline, events.StatusDisconnected, events.ReasonLivenessTimeout, 50)
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
	type secs struct{ reg, conn, off, disc, unk float64 }
	cases := []struct {
		name     string
		id       string
		from, to string // "" = default
		wantFrom float64
		wantTo   float64
		want     secs
		n        int
	}{
		{"whole life", "h1", iso(0), iso(600), 0, 600, secs{60, 40 + 200, 260, 40, 0}, 4},
		{"starts mid-registered, ends mid-connected", "h1", iso(30), iso(430), 30, 430, secs{30, 40 + 30, 260, 40, 0}, 4},
		{"starts mid-offline", "h1", iso(200), iso(380), 200, 380, secs{0, 0, 160, 20, 0}, 1},
		{"inside one status", "h1", iso(150), iso(250), 150, 250, secs{0, 0, 100, 0, 0}, 0},
		{"starts on a transition", "h1", iso(100), iso(360), 100, 360, secs{0, 0, 260, 0, 0}, 0},
		{"before registration", "h1", iso(-100), iso(100), -100, 100, secs{60, 40, 0, 0, 100}, 1},
		{"wholly before registration", "h1", iso(-100), iso(-50), -100, -50, secs{0, 0, 0, 0, 50}, 0},
		{"to capped at now", "h1", iso(500), iso(10000), 500, 600, secs{0, 100, 0, 0, 0}, 0},
		{"default window: 24h before now", "h1", "", "", 600 - 86400, 600, secs{60, 240, 260, 40, 86400 - 600}, 4},
		{"no history", "n1", iso(-50), iso(50), -50, 50, secs{50, 0, 0, 0, 50}, 0},
		{"no history, after registration", "n1", iso(100), iso(400), 100, 400, secs{300, 0, 0, 0, 0}, 0},
		{"zero-length status", "tie", iso(0), iso(100), 0, 100, secs{10, 40, 0, 50, 0}, 3},
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
			var got AvailabilityJSON
			if code, body := f.get(t, "/v1/devices/"+c.id+"/availability?"+q.Encode(), &got); code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			window := c.wantTo - c.wantFrom
			if !got.From.Equal(at(c.wantFrom)) || !got.To.Equal(at(c.wantTo)) || got.WindowS != window || got.Transitions != c.n {
				t.Errorf("window %s..%s (%g s, %d transitions), want %g..%g (%d)", got.From, got.To, got.WindowS, got.Transitions, c.wantFrom, c.wantTo, c.n)
			}
			gs := secs{got.Seconds.Registered, got.Seconds.Connected, got.Seconds.TemporarilyOffline, got.Seconds.Disconnected, got.Seconds.Unknown}
			if gs != c.want {
				t.Errorf("seconds %+v, want %+v", gs, c.want)
			}
			gp := []float64{got.Percent.Registered, got.Percent.Connected, got.Percent.TemporarilyOffline, got.Percent.Disconnected, got.Percent.Unknown}
			wp := []float64{c.want.reg, c.want.conn, c.want.off, c.want.disc, c.want.unk}
			sum := 0.0
			for i := range gp {
				sum += gp[i]
				if math.Abs(gp[i]-wp[i]/window*100) > 1e-9 {
					t.Errorf("percent[%d] = %g, want %g", i, gp[i], wp[i]/window*100)
				}
			}
			if math.Abs(sum-100) > 1e-9 {
				t.Errorf("percents add up to %g", sum)
			}
		})
	}
}
