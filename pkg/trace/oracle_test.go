package trace

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

var t0 = time.Date(2006, 9, 21, 0, 0, 0, 0, time.UTC)

func at(sec int64) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func secs(ss ...int64) []time.Time {
	out := make([]time.Time, len(ss))
	for i, s := range ss {
		out[i] = at(s)
	}
	return out
}

const (
	reg  = events.StatusRegistered
	conn = events.StatusConnected
	off  = events.StatusTemporarilyOffline
	disc = events.StatusDisconnected
)

func tr(from, to events.Status, reason events.ReasonCode, sec int64) Transition {
	return Transition{From: from, To: to, ReasonCode: reason, At: at(sec)}
}

func hb(from events.Status, sec int64) Transition {
	return tr(from, conn, events.ReasonHeartbeat, sec)
}

func timeout(sec int64) Transition {
	return tr(conn, off, events.ReasonHeartbeatTimeout, sec)
}

func liveness(sec int64) Transition {
	return tr(off, disc, events.ReasonLivenessTimeout, sec)
}

func TestExpect(t *testing.T) {
	t.Parallel()
	th := DefaultThresholds() // O = 40 s, D = 300 s
	cases := []struct {
		name  string
		hbs   []time.Time
		end   int64
		want  []Transition
		final events.Status
	}{
		{"never heartbeats: stays registered, no timeout", nil, 100000, nil, reg},
		{"one heartbeat, end at once", secs(0), 0, []Transition{hb(reg, 0)}, conn},
		{"steady 30 s", secs(0, 30, 60, 90), 100, []Transition{hb(reg, 0)}, conn},
		{"gap exactly 40: still connected", secs(0, 40), 40, []Transition{hb(reg, 0)}, conn},
		{"gap 41: offline at +40, back at 41", secs(0, 41), 41,
			[]Transition{hb(reg, 0), timeout(40), hb(off, 41)}, conn},
		{"gap 299: offline only", secs(0, 299), 299,
			[]Transition{hb(reg, 0), timeout(40), hb(off, 299)}, conn},
		{"gap 300: offline then disconnected, both stamped", secs(0, 300), 300,
			[]Transition{hb(reg, 0), timeout(40), liveness(300), hb(disc, 300)}, conn},
		{"gap 301", secs(0, 301), 301,
			[]Transition{hb(reg, 0), timeout(40), liveness(300), hb(disc, 301)}, conn},
		{"end silence exactly 40: connected", secs(0), 40, []Transition{hb(reg, 0)}, conn},
		{"end silence 41: temporarily offline", secs(0), 41, []Transition{hb(reg, 0), timeout(40)}, off},
		{"end silence 299: temporarily offline", secs(0), 299, []Transition{hb(reg, 0), timeout(40)}, off},
		{"end silence 300: disconnected", secs(0), 300, []Transition{hb(reg, 0), timeout(40), liveness(300)}, disc},
		{"end silence 301: disconnected", secs(0), 301, []Transition{hb(reg, 0), timeout(40), liveness(300)}, disc},
		{"two outages then silence", secs(100, 130, 200, 230, 600, 630), 1000,
			[]Transition{hb(reg, 100), timeout(170), hb(off, 200), timeout(270), liveness(530), hb(disc, 600), timeout(670), liveness(930)}, disc},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e, err := Expect("dev/1", c.hbs, at(c.end), th)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(e.Transitions, c.want) {
				t.Fatalf("transitions\n got %v\nwant %v", e.Transitions, c.want)
			}
			if e.Final != c.final {
				t.Fatalf("final %s, want %s", e.Final, c.final)
			}
			if e.StatusAt(at(c.end)) != c.final {
				t.Fatalf("StatusAt(end) = %s, want %s", e.StatusAt(at(c.end)), c.final)
			}
			if e.Heartbeats != len(c.hbs) || e.Device != "dev/1" {
				t.Fatalf("heartbeats %d device %q", e.Heartbeats, e.Device)
			}
		})
	}
}

func TestExpectScaledThresholds(t *testing.T) {
	t.Parallel()
	th := DefaultThresholds().Scale(20) // O = 2 s, D = 15 s
	if th.OfflineAfter != 2*time.Second || th.DisconnectAfter != 15*time.Second {
		t.Fatalf("scaled %+v", th)
	}
	hbs := []time.Time{t0, t0.Add(2 * time.Second), t0.Add(4001 * time.Millisecond)}
	e, err := Expect("d", hbs, t0.Add(20*time.Second), th)
	if err != nil {
		t.Fatal(err)
	}
	want := []Transition{
		{reg, conn, events.ReasonHeartbeat, t0},
		{conn, off, events.ReasonHeartbeatTimeout, t0.Add(4 * time.Second)},
		{off, conn, events.ReasonHeartbeat, t0.Add(4001 * time.Millisecond)},
		{conn, off, events.ReasonHeartbeatTimeout, t0.Add(6001 * time.Millisecond)},
		{off, disc, events.ReasonLivenessTimeout, t0.Add(19001 * time.Millisecond)},
	}
	if !reflect.DeepEqual(e.Transitions, want) || e.Final != disc {
		t.Fatalf("got %v final %s", e.Transitions, e.Final)
	}
}

func TestExpectRefusesBadInput(t *testing.T) {
	t.Parallel()
	th := DefaultThresholds()
	if _, err := Expect("d", secs(0, 30, 30), at(100), th); !errors.Is(err, ErrBadSchedule) {
		t.Fatalf("equal times: %v", err)
	}
	if _, err := Expect("d", secs(0, 30, 20), at(100), th); !errors.Is(err, ErrBadSchedule) {
		t.Fatalf("decreasing: %v", err)
	}
	if _, err := Expect("d", secs(0, 30), at(20), th); !errors.Is(err, ErrBadSchedule) {
		t.Fatalf("end before last: %v", err)
	}
	for _, bad := range []Thresholds{{40 * time.Second, 40 * time.Second}, {0, time.Second}, {300 * time.Second, 40 * time.Second}} {
		if _, err := Expect("d", nil, at(0), bad); !errors.Is(err, ErrInvalidThresholds) {
			t.Fatalf("%+v: %v", bad, err)
		}
	}
}

func node(ivs ...Interval) *Node { return &Node{Name: "G1/site1/c1/node1", Intervals: ivs} }

func up(s, e int64) Interval   { return Interval{Start: s, End: e, Up: true} }
func down(s, e int64) Interval { return Interval{Start: s, End: e} }

func win(from, to int64) Window {
	return Window{From: time.Unix(from, 0).UTC(), To: time.Unix(to, 0).UTC()}
}

func TestNodeHeartbeats(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		n    *Node
		w    Window
		want []int64
	}{
		{"inside the window", node(down(0, 1000), up(1000, 1100), down(1100, 5000)), win(0, 2000), []int64{1000, 1030, 1060, 1090}},
		{"end exactly on a phase point is excluded", node(up(1000, 1090)), win(0, 2000), []int64{1000, 1030, 1060}},
		{"up across the window start keeps the interval's phase", node(up(1000, 1200)), win(1045, 2000), []int64{1060, 1090, 1120, 1150, 1180}},
		{"window start on a phase point", node(up(1000, 1200)), win(1060, 2000), []int64{1060, 1090, 1120, 1150, 1180}},
		{"up across the window end", node(up(1000, 1200)), win(0, 1090), []int64{1000, 1030, 1060}},
		{"never up in the window", node(up(0, 100), down(100, 5000), up(5000, 6000)), win(1000, 2000), nil},
		{"rows outside the trace span yield nothing", node(up(1000, 1100)), win(2000, 3000), nil},
		{"zero-length up", node(down(0, 50), up(50, 50), down(50, 100)), win(0, 100), nil},
		{"zero-length down between ups keeps each phase", node(up(0, 50), down(50, 50), up(50, 100)), win(0, 100), []int64{0, 30, 50, 80}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got := c.n.Heartbeats(c.w, 0)
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
}

// TestOracleOnTraceNodes runs the oracle on heartbeats generated from trace
// rows, the way a replay does.
func TestOracleOnTraceNodes(t *testing.T) {
	t.Parallel()
	th := DefaultThresholds()
	// Up [0,50), down [50,90) (40 s outage: last hb 30, next 90: gap 60 > 40),
	// up [90,130), down [130,400) (270 s outage: last hb 120, next 400: gap
	// 280), up [400,440), down [440,1000) (last hb 430, next 1000: gap 570),
	// up [1000, 5000) across the window end 1100.
	tn := &Trace{Nodes: []*Node{node(up(0, 50), down(50, 90), up(90, 130), down(130, 400), up(400, 440), down(440, 1000), up(1000, 5000))}}
	w := win(0, 1100)
	exps, err := ExpectAll(tn.Heartbeats(w, 0), w.To, th)
	if err != nil {
		t.Fatal(err)
	}
	u := func(s int64) time.Time { return time.Unix(s, 0).UTC() }
	want := []Transition{
		{reg, conn, events.ReasonHeartbeat, u(0)},
		{conn, off, events.ReasonHeartbeatTimeout, u(70)}, {off, conn, events.ReasonHeartbeat, u(90)},
		{conn, off, events.ReasonHeartbeatTimeout, u(160)}, {off, conn, events.ReasonHeartbeat, u(400)},
		{conn, off, events.ReasonHeartbeatTimeout, u(470)}, {off, disc, events.ReasonLivenessTimeout, u(730)}, {disc, conn, events.ReasonHeartbeat, u(1000)},
	}
	if !reflect.DeepEqual(exps[0].Transitions, want) {
		t.Fatalf("got %v", exps[0].Transitions)
	}
	if exps[0].Final != conn || !exps[0].LastHeartbeat.Equal(u(1090)) {
		t.Fatalf("final %s last %s", exps[0].Final, exps[0].LastHeartbeat)
	}
	// The same node with the window ending while it is down: disconnected.
	w2 := win(0, 800)
	exps, err = ExpectAll(tn.Heartbeats(w2, 0), w2.To, th)
	if err != nil {
		t.Fatal(err)
	}
	if exps[0].Final != disc || len(exps[0].Transitions) != 7 {
		t.Fatalf("final %s transitions %v", exps[0].Final, exps[0].Transitions)
	}
}

func TestParseWindow(t *testing.T) {
	t.Parallel()
	day := Window{From: t0, To: t0.Add(24 * time.Hour)}
	cases := map[string]Window{
		"2006-09-21":                                     day,
		"2006-09-21T13:00:00Z":                           day,
		"2006-09-21/2006-09-22":                          day,
		"2006-09-21T00:00:00Z/2006-09-22T00:00:00Z":      day,
		"2006-09-21T06:00:00Z+1h30m":                     {t0.Add(6 * time.Hour), t0.Add(7*time.Hour + 30*time.Minute)},
		"2006-09-21+2h":                                  {t0, t0.Add(2 * time.Hour)},
		"2006-09-21T02:00:00+02:00/2006-09-21T03:00:00Z": {t0, t0.Add(3 * time.Hour)},
	}
	for in, want := range cases {
		got, err := ParseWindow(in)
		if err != nil || !got.From.Equal(want.From) || !got.To.Equal(want.To) {
			t.Errorf("%q: got %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "2006-09-22/2006-09-21", "2006-09-21+-1h", "2006-09-21+1.5s", "2006-09-21+x"} {
		if _, err := ParseWindow(bad); !errors.Is(err, ErrInvalidWindow) {
			t.Errorf("%q: want ErrInvalidWindow, got %v", bad, err)
		}
	}
	if s := day.String(); s != "2006-09-21T00:00:00Z/2006-09-22T00:00:00Z" {
		t.Fatal(s)
	}
}
