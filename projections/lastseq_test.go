package projections

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
)

func TestSubjectMatches(t *testing.T) {
	for _, c := range []struct {
		filter, subj string
		want         bool
	}{
		{LivenessFilter, "devstatus.in.3.d.QQ", true},
		{LivenessFilter, "devstatus.in.3.tick", false},
		{LivenessFilter, "devstatus.in.3.d", false},
		{LivenessFilter, "devstatus.in.3.d.QQ.x", false},
		{"devstatus.tr.>", "devstatus.tr.1.QQ", true},
		{"devstatus.tr.>", "devstatus.tr", false},
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.*", "a", false},
	} {
		if got := subjectMatches(c.filter, c.subj); got != c.want {
			t.Errorf("subjectMatches(%q, %q) = %v, want %v", c.filter, c.subj, got, c.want)
		}
	}
}

// TestLastSeqOfAFilter: the last device event is found behind the ticks
// that follow it, by reading the newest messages (not by a server-side
// wildcard match), and also when more than lastSeqScan ticks follow it.
func TestLastSeqOfAFilter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := openBus(t)
	p := &Projector{log: testenv.Logger(t)}
	lv := newRunner(p, livenessKind())
	tr := newRunner(p, transitionsKind())
	in, err := b.JS.Stream(ctx, events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	trs, err := b.JS.Stream(ctx, events.TransitionStream)
	if err != nil {
		t.Fatal(err)
	}
	check := func(lastSeq func(context.Context, jetstream.Stream) (uint64, error), s jetstream.Stream, want uint64) {
		t.Helper()
		got, err := lastSeq(ctx, s)
		if err != nil || got != want {
			t.Fatalf("lastSeq = %d, %v; want %d", got, err, want)
		}
	}
	check(lv.lastSeq, in, 0)
	check(tr.lastSeq, trs, 0)
	tick := func(s float64) uint64 { return publishInput(t, b.JS, &events.Input{Type: events.TypeTick, At: at(s)}) }
	tick(0)
	check(lv.lastSeq, in, 0) // only a tick: nothing matches
	hb := publishInput(t, b.JS, heartbeat("A", 1, ""))
	check(lv.lastSeq, in, hb)
	for i := range 3 {
		tick(2 + float64(i))
	}
	check(lv.lastSeq, in, hb)
	for i := range lastSeqScan + 5 {
		tick(10 + float64(i))
	}
	check(lv.lastSeq, in, hb) // found by the server after the scan
	last := publishTransition(t, b.JS, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	check(tr.lastSeq, trs, last)
}
