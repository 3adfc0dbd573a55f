package worker

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

func TestFairShare(t *testing.T) {
	ms := func(ids ...string) []Member {
		var out []Member
		for _, id := range ids {
			out = append(out, Member{ID: id})
		}
		return out
	}
	for _, c := range []struct {
		n       int
		members []Member
		self    string
		want    int
	}{
		{16, ms("a", "b", "c"), "a", 6}, {16, ms("a", "b", "c"), "b", 5}, {16, ms("a", "b", "c"), "c", 5},
		{16, ms("a", "c"), "b", 5}, // self not listed yet
		{16, nil, "a", 16}, {2, ms("a", "b", "c"), "c", 0}, {16, ms("a", "b"), "b", 8},
	} {
		if got := fairShare(c.n, c.members, c.self); got != c.want {
			t.Errorf("fairShare(%d, %v, %s) = %d, want %d", c.n, c.members, c.self, got, c.want)
		}
	}
}

// counts returns how many partitions each worker runs, sorted.
func counts(ws []*Worker) []int {
	var out []int
	for _, w := range ws {
		if w != nil {
			out = append(out, len(w.Status()))
		}
	}
	slices.Sort(out)
	return out
}

func waitCounts(t *testing.T, ws []*Worker, want []int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for !slices.Equal(counts(ws), want) {
		if time.Since(start) > within {
			t.Fatalf("partitions per worker %v after %s, want %v", counts(ws), within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// Issue 10: three instances share 16 partitions 5/5/6; one stopping cleanly
// hands its partitions over at once (8/8); back, it gets its share again;
// every device's transitions across the moves are in the stream once each,
// in order.
func TestPartitionsSharedFairly(t *testing.T) {
	const ttl = 2 * time.Second
	b := testenv.NATS(t, bus.Config{Partitions: 16, LeaseTTL: ttl})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const devices = 64
	for i := 0; i < devices; i++ {
		id := fmt.Sprintf("dev-%02d", i)
		p.register(id, "", t0)
		p.heartbeat(id, t0)
	}
	ws := make([]*Worker, 3)
	stops := make([]func(), 3)
	start := func(i int) {
		ws[i], stops[i] = runWorker(t, b, fmt.Sprintf("node-%d", i), ttl)
		t.Cleanup(stops[i])
	}
	for i := range ws {
		start(i)
	}
	waitCounts(t, ws, []int{5, 5, 6}, 10*time.Second)
	// Cycle every device through offline and back while partitions move.
	at := t0
	cycle := func() {
		at = at.Add(41 * time.Second)
		p.tick(at)
		at = at.Add(time.Second)
		for i := 0; i < devices; i++ {
			p.heartbeat(fmt.Sprintf("dev-%02d", i), at)
		}
	}
	cycle()
	stops[1]()
	ws[1] = nil
	took := waitCounts(t, ws, []int{8, 8}, ttl)
	t.Logf("8/8 %s after a clean stop", took)
	cycle()
	start(1)
	took = waitCounts(t, ws, []int{5, 5, 6}, 5*ttl)
	t.Logf("5/5/6 %s after the third instance came back", took)
	cycle()

	want := devices * 7 // connected, then 3 × (offline, connected)
	got := transitions(t, b, want)
	if len(got) != want {
		t.Fatalf("%d transitions, want %d", len(got), want)
	}
	per := map[string][]string{}
	for _, tr := range got {
		per[tr.Device] = append(per[tr.Device], fmt.Sprintf("%s>%s@%d", tr.From, tr.To, tr.Cause.Seq))
	}
	for d, trs := range per {
		if len(trs) != 7 {
			t.Fatalf("device %s: %v", d, trs)
		}
	}
	// In order: each device's transitions chain (to of one = from of the
	// next) with rising causes.
	last := map[string]*struct {
		to    string
		cause uint64
	}{}
	for _, tr := range got {
		l := last[tr.Device]
		if l != nil && (string(tr.From) != l.to || tr.Cause.Seq <= l.cause) {
			t.Fatalf("device %s: %s>%s@%d after %s@%d", tr.Device, tr.From, tr.To, tr.Cause.Seq, l.to, l.cause)
		}
		last[tr.Device] = &struct {
			to    string
			cause uint64
		}{string(tr.To), tr.Cause.Seq}
	}
}
