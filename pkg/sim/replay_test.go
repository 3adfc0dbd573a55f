package sim

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/trace"
)

func TestReplayLiveMatchesOracleOnAFake(t *testing.T) {
	skipTimingUnderRace(t)
	t.Parallel()
	tr, err := trace.Open(trace.TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	day := trace.TestdataDayWindow()
	// 15 minutes of trace in ~30 s of wall time; the window's nodes with the
	// most transitions first, so that every tier shows up.
	w := trace.Window{From: day.From.Add(15*time.Hour + 45*time.Minute), To: day.From.Add(16 * time.Hour)}
	// Up to 200 nodes: those down at the window's end, those with outages
	// in it, then steady ones.
	var nodes []trace.NodeHeartbeats
	var down, busy, steady int
	for _, n := range tr.Heartbeats(w, 0) {
		e, _ := trace.Expect(n.Node, n.TimesUTC(), w.To, trace.DefaultThresholds())
		switch {
		case e.Final == events.StatusTemporarilyOffline || e.Final == events.StatusDisconnected:
			if down < 60 {
				nodes = append(nodes, n)
				down++
			}
		case len(e.Transitions) > 1:
			if busy < 60 {
				nodes = append(nodes, n)
				busy++
			}
		case steady < 80:
			nodes = append(nodes, n)
			steady++
		}
	}
	const k = 30
	f, srv := newFake(t, trace.DefaultThresholds().Scale(k))
	c := newTestClient(t, srv.URL, f.admin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Node
	}
	cfg := LiveConfig{Trace: tr, Nodes: names, Window: w, Factor: k, IDPrefix: "live/",
		Settle: 300 * time.Millisecond, Tolerance: 150 * time.Millisecond, ReadBudget: 300 * time.Millisecond}
	res, err := ReplayLive(ctx, c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.String())
	if len(res.Mismatches) != 0 {
		t.Fatalf("replay has mismatches:\n%s", res)
	}
	if res.CompareAt.Before(w.To) || res.Nodes != len(nodes) || res.Heartbeats.Failed != 0 {
		t.Fatalf("result %+v", res)
	}
	compared := 0
	for _, n := range res.Final {
		compared += n
	}
	if compared+len(res.Ambiguous) != len(nodes) || len(res.Disturbed) != 0 {
		t.Fatalf("compared %d, ambiguous %d, disturbed %d of %d nodes", compared, len(res.Ambiguous), len(res.Disturbed), len(nodes))
	}
	if len(res.Ambiguous) > 0 {
		// Only a starved machine delays heartbeats or reads past the tolerances.
		t.Logf("machine too loaded for an exact replay: %d ambiguous (not compared)", len(res.Ambiguous))
		return
	}
	if res.Heartbeats.Accepted < res.Heartbeats.Scheduled {
		t.Fatalf("accepted %d of %d heartbeats", res.Heartbeats.Accepted, res.Heartbeats.Scheduled)
	}
	if res.Final[events.StatusConnected] < len(nodes)/2 || res.Final[events.StatusTemporarilyOffline]+res.Final[events.StatusDisconnected] == 0 {
		t.Fatalf("want a mix of final statuses, got %v", res.Final)
	}
}

func TestPickCompareTime(t *testing.T) {
	t.Parallel()
	base := time.Unix(1000, 0)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	changes := []time.Time{at(-50), at(5), at(12), at(40), at(100)}
	// [T−10, T+5] must hold no change point.
	got := pickCompareTime(changes, at(0), 10*time.Second, 5*time.Second)
	// 0: 5 in [-10,5] → after 5: T=15.001: 12 in range → T=22.001: [12.001, 27.001] free.
	if want := at(22).Add(time.Millisecond); !got.Equal(want) {
		t.Fatalf("got %s want %s", got.Sub(base), want.Sub(base))
	}
	if got := pickCompareTime(nil, at(0), time.Minute, time.Minute); !got.Equal(at(0)) {
		t.Fatal(got)
	}
	if got := pickCompareTime([]time.Time{at(-11), at(6)}, at(0), 10*time.Second, 5*time.Second); !got.Equal(at(0)) {
		t.Fatal(got.Sub(base))
	}
}

func TestPossibleStatuses(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(0, 0).UTC()
	s := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	sec := time.Second
	th := trace.DefaultThresholds()
	const (
		reg  = events.StatusRegistered
		conn = events.StatusConnected
		off  = events.StatusTemporarilyOffline
		disc = events.StatusDisconnected
	)
	cases := []struct {
		name   string
		t      []time.Time
		d      []time.Duration
		lo, hi int
		want   []events.Status
	}{
		{"no heartbeats", nil, nil, 0, 100, []events.Status{reg}},
		{"on time, silence 10..30", []time.Time{s(0), s(30)}, []time.Duration{0, 0}, 40, 60, []events.Status{conn}},
		{"on time, silence 30..50 crosses O", []time.Time{s(0), s(30)}, []time.Duration{0, 0}, 60, 80, []events.Status{conn, off}},
		{"on time, deep in offline", []time.Time{s(0)}, []time.Duration{0}, 100, 200, []events.Status{off}},
		{"on time, crosses D", []time.Time{s(0)}, []time.Duration{0}, 250, 350, []events.Status{off, disc}},
		{"late heartbeat may not be in yet", []time.Time{s(0), s(30)}, []time.Duration{0, 25 * sec}, 50, 55, []events.Status{conn, off}},
		{"late heartbeat certainly in", []time.Time{s(0), s(30)}, []time.Duration{0, 5 * sec}, 50, 60, []events.Status{conn}},
		{"never accepted heartbeat", []time.Time{s(0), s(30)}, []time.Duration{0, unknownDelay}, 60, 65, []events.Status{conn, off}},
		{"only heartbeat unknown", []time.Time{s(0)}, []time.Duration{unknownDelay}, 10, 20, []events.Status{reg, conn, off, disc}},
	}
	for _, c := range cases {
		got := possibleStatuses(c.t, c.d, s(c.lo), s(c.hi), th)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
