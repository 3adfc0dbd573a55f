package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/statemachine"
)

// withHolds inserts outage holds into a log: a start before the tick at
// each start second and an end before the tick at each end second, as the
// coordinator would publish them. It returns the new log (sequences
// renumbered) and the times of the ends.
func withHolds(log []logEntry, holds [][2]int) []logEntry {
	var out []logEntry
	seq := uint64(0)
	add := func(in *events.Input) {
		seq++
		out = append(out, logEntry{seq, in})
	}
	for _, e := range log {
		if e.in.Type == events.TypeTick {
			for _, h := range holds {
				sec := int(e.in.At.Sub(t0)/time.Second) - 1
				since := t0.Add(time.Duration(h[0]) * time.Second)
				if sec == h[0] {
					add(&events.Input{V: 1, Type: events.TypeOutageHoldStarted, ID: fmt.Sprintf("hs%d", h[0]), At: since, Hold: &events.OutageHold{Reason: "test"}})
				}
				if sec == h[1] {
					add(&events.Input{V: 1, Type: events.TypeOutageHoldEnded, ID: fmt.Sprintf("he%d", h[1]), At: t0.Add(time.Duration(h[1]) * time.Second),
						Hold: &events.OutageHold{Reason: "test", Since: since}})
				}
			}
		}
		add(e.in)
	}
	return out
}

// TestHoldReplayIsDeterministic: random logs with outage holds in them give
// the same transitions on a second run and from a snapshot taken at a
// random point (mid-hold included); no device becomes disconnected while a
// hold is on; a device silent since before a hold's end becomes
// disconnected no earlier than end + disconnect_after, stamped
// max(last heartbeat, end) + disconnect_after.
func TestHoldReplayIsDeterministic(t *testing.T) {
	sawHeld := false
	for seed := uint64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 13))
		a := 100 + r.IntN(400)
		holds := [][2]int{{a, a + 200 + r.IntN(600)}}
		// A third of the fleet goes silent for good 30 s before the hold.
		var base []logEntry
		for _, e := range randomLog(r, 12, 1500) {
			if e.in.Device != "" && e.in.Type != events.TypeDeviceRegistered && e.in.Device[4]%3 == 0 &&
				e.in.At.After(t0.Add(time.Duration(a-30)*time.Second)) {
				continue
			}
			base = append(base, e)
		}
		log := withHolds(base, holds)
		first := process(t, newPartition(3, 16, testThresholds, Probing{}), log)
		if second := process(t, newPartition(3, 16, testThresholds, Probing{}), log); !reflect.DeepEqual(first, second) {
			t.Fatalf("seed %d: a second run differs", seed)
		}
		start, end := t0.Add(time.Duration(holds[0][0])*time.Second), t0.Add(time.Duration(holds[0][1])*time.Second)
		lastHB := map[string]time.Time{}
		for _, tr := range first {
			if tr.LastHeartbeatAt != nil {
				lastHB[tr.Device] = *tr.LastHeartbeatAt
			}
			if tr.To != events.StatusDisconnected {
				continue
			}
			if tr.ObservedAt.After(start) && tr.ObservedAt.Before(end) {
				t.Fatalf("seed %d: %s disconnected during the hold (%s .. %s): %+v", seed, tr.Device, start, end, tr)
			}
			th := testThresholds.of(tr.Group)
			if tr.Cause.Type == events.TypeTick && tr.ObservedAt.After(end) && tr.LastHeartbeatAt.Before(end) && tr.Reason != "" {
				want := end.Add(th.DisconnectAfter)
				if tr.LastHeartbeatAt.Add(th.DisconnectAfter).After(want) {
					want = tr.LastHeartbeatAt.Add(th.DisconnectAfter)
				}
				if tr.At.Before(want) && !tr.At.Equal(want) {
					t.Fatalf("seed %d: %s disconnected at %s, before max(last heartbeat, end) + disconnect_after = %s", seed, tr.Device, tr.At, want)
				}
				if tr.LastHeartbeatAt.Add(th.DisconnectAfter).Before(end) {
					sawHeld = true
				}
			}
		}
		cut := r.IntN(len(log))
		p := newPartition(3, 16, testThresholds, Probing{})
		head := process(t, p, log[:cut])
		c := restoredCopy(t, p.takeSnapshot(), 3, 16)
		if c.hold != p.hold || c.holdSince != p.holdSince {
			t.Fatalf("seed %d: snapshot lost the hold: %+v vs %+v", seed, c.hold, p.hold)
		}
		if got := append(head, process(t, c, log[max(0, cut-50):])...); !reflect.DeepEqual(first, got) {
			t.Fatalf("seed %d: snapshot at %d (hold %v) changed the transitions", seed, cut, p.hold.Active)
		}
	}
	if !sawHeld {
		t.Fatal("no device was ever held past its normal disconnect: the generator does not test the rule")
	}
}

// TestHoldSnapshotVersions: a worker restored from a snapshot taken mid-hold
// continues the hold (a device silent since before it is not disconnected
// until end + disconnect_after); a version 3 snapshot (before holds) is
// still read, as no hold.
func TestHoldSnapshotVersions(t *testing.T) {
	th := Thresholds{Default: statemachine.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 6 * time.Second, PingIgnoreWithin: time.Second}}
	p := newPartition(0, 1, th, Probing{After: -1})
	seq := uint64(0)
	apply := func(s *partition, in *events.Input) []events.StatusChanged {
		t.Helper()
		seq++
		in.V, in.ID = 1, fmt.Sprint(seq)
		out, _, err := s.apply(seq, in, nil)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	at := func(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }
	apply(p, &events.Input{Type: events.TypeDeviceRegistered, Device: "a", At: at(0)})
	apply(p, &events.Input{Type: events.TypeHeartbeat, Device: "a", At: at(0)})
	apply(p, &events.Input{Type: events.TypeOutageHoldStarted, At: at(1), Hold: &events.OutageHold{Reason: "most went silent"}})
	if out := apply(p, &events.Input{Type: events.TypeTick, At: at(3)}); len(out) != 1 || out[0].To != events.StatusTemporarilyOffline {
		t.Fatalf("tick at 3s: %+v", out)
	}
	b, _ := encodeSnapshot(p.takeSnapshot())
	sn, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	q := newPartition(0, 1, th, Probing{After: -1})
	if err := q.restore(sn); err != nil {
		t.Fatal(err)
	}
	if !q.hold.Active || q.hold.Reason != "most went silent" || q.holdSince != at(1).UnixNano() {
		t.Fatalf("restored hold %+v since %d", q.hold, q.holdSince)
	}
	if out := apply(q, &events.Input{Type: events.TypeTick, At: at(20)}); len(out) != 0 {
		t.Fatalf("disconnected under the restored hold: %+v", out)
	}
	apply(q, &events.Input{Type: events.TypeOutageHoldEnded, At: at(21), Hold: &events.OutageHold{Since: at(1)}})
	if out := apply(q, &events.Input{Type: events.TypeTick, At: at(26.5)}); len(out) != 0 {
		t.Fatalf("disconnected before end + disconnect_after: %+v", out)
	}
	out := apply(q, &events.Input{Type: events.TypeTick, At: at(27)})
	if len(out) != 1 || out[0].To != events.StatusDisconnected || !out[0].At.Equal(at(27)) {
		t.Fatalf("after the hold: %+v", out)
	}

	// Version 3: no hold fields.
	old := p.takeSnapshot()
	old.Version, old.HoldActive, old.HoldEnd, old.HoldReason, old.HoldSince = 3, false, 0, "", 0
	b, _ = encodeSnapshot(old)
	if sn, err = decodeSnapshot(b); err != nil {
		t.Fatalf("version 3 refused: %v", err)
	}
	r := newPartition(0, 1, th, Probing{After: -1})
	if err := r.restore(sn); err != nil || r.hold != (statemachine.Hold{}) || slices.Index(r.ids, "a") < 0 {
		t.Fatalf("version 3 restored as %+v, %v", r.hold, err)
	}
}

// startHold runs a hold view and coordinator (window 40s, half, 10 devices).
func startHold(t *testing.T, b *bus.Bus) (*HoldView, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	v := NewHoldView(b.JS, testenv.Logger(t), nil)
	c, err := NewHoldCoordinator(HoldConfig{Bus: b, InstanceID: "hold-test", LeaseTTL: 3 * time.Second, Logger: testenv.Logger(t)}, v)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = v.Run(ctx) }()
	go func() { defer wg.Done(); _ = c.Run(ctx) }()
	return v, func() { cancel(); wg.Wait() }
}

func waitHold(t *testing.T, v *HoldView, active bool) HoldState {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, ch := v.State()
		if st.Active == active && v.Ready() {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("hold active %v, want %v", st.Active, active)
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func countTo(trs []events.StatusChanged, to events.Status) int {
	n := 0
	for _, tr := range trs {
		if tr.To == to {
			n++
		}
	}
	return n
}

// TestHoldCoordinatorOverJetStream: the whole fleet goes silent at once: the
// coordinator starts a hold (every partition applies it), nobody becomes
// disconnected at 300 s; 16 of 20 come back, the share still silent falls
// below half and the coordinator ends the hold at the last comeback; the 4
// silent ones become disconnected at end + 300 s, not a tick earlier.
func TestHoldCoordinatorOverJetStream(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 4})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("dev-%02d", i))
		p.register(ids[i], "", t0.Add(-time.Second))
		p.heartbeat(ids[i], t0)
	}
	stop := startWorker(t, b, "w1", 3*time.Second)
	defer stop()
	v, stopHold := startHold(t, b)
	defer stopHold()
	transitions(t, b, 20)
	waitHold(t, v, false)

	p.tick(t0.Add(41 * time.Second))
	if trs := transitions(t, b, 40); countTo(trs, events.StatusTemporarilyOffline) != 20 {
		t.Fatalf("after the cut: %v", summarize(trs, t0))
	}
	st := waitHold(t, v, true)
	if !st.Since.Equal(t0.Add(41*time.Second)) || !strings.Contains(st.Reason, "of 20 connected devices went silent within 40s") {
		t.Fatalf("hold %+v", st)
	}
	p.tick(t0.Add(400 * time.Second)) // past every normal disconnect (300 s)
	for _, id := range ids[:16] {
		p.heartbeat(id, t0.Add(410*time.Second))
	}
	trs := transitions(t, b, 56)
	if n := countTo(trs, events.StatusDisconnected); n != 0 {
		t.Fatalf("%d disconnected during the hold: %v", n, summarize(trs, t0))
	}
	st = waitHold(t, v, false)
	end := t0.Add(410 * time.Second)
	if !st.Ended.Equal(end) || !strings.Contains(st.Reason, "of 20 held devices still silent") {
		t.Fatalf("hold end %+v", st)
	}
	for sec := 30; sec <= 300; sec += 30 { // the 16 keep heartbeating
		for _, id := range ids[:16] {
			p.heartbeat(id, end.Add(time.Duration(sec)*time.Second))
		}
	}
	p.tick(end.Add(300*time.Second - time.Millisecond))
	p.tick(end.Add(301 * time.Second))
	trs = transitions(t, b, 60)
	if len(trs) != 60 {
		t.Fatalf("%d transitions: %v", len(trs), summarize(trs, t0))
	}
	for _, tr := range trs[56:] {
		if tr.To != events.StatusDisconnected || !tr.At.Equal(end.Add(300*time.Second)) || !tr.ObservedAt.Equal(end.Add(301*time.Second)) ||
			!slices.Contains(ids[16:], tr.Device) || !strings.Contains(tr.Reason, "end of the outage hold") {
			t.Errorf("after the hold: %+v", tr)
		}
	}
}

// TestNoHoldForAFewSilent: 2 devices of 20 go silent: no hold; they become
// disconnected at 300 s as usual.
func TestNoHoldForAFewSilent(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 4})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range 20 {
		p.register(fmt.Sprintf("dev-%02d", i), "", t0.Add(-time.Second))
	}
	stop := startWorker(t, b, "w1", 3*time.Second)
	defer stop()
	v, stopHold := startHold(t, b)
	defer stopHold()
	for sec := 0; sec <= 330; sec += 30 {
		for i := range 20 {
			if i >= 2 || sec == 0 {
				p.heartbeat(fmt.Sprintf("dev-%02d", i), t0.Add(time.Duration(sec)*time.Second))
			}
		}
		p.tick(t0.Add(time.Duration(sec+11) * time.Second))
	}
	trs := transitions(t, b, 24)
	var got []string
	for _, tr := range trs {
		if tr.To != events.StatusConnected {
			got = append(got, fmt.Sprintf("%s:%s@%s", tr.Device, tr.To, tr.At.Sub(t0)))
		}
	}
	slices.Sort(got)
	want := "dev-00:disconnected@5m0s dev-00:temporarily_offline@40s dev-01:disconnected@5m0s dev-01:temporarily_offline@40s"
	if len(trs) != 24 || strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	if st, _ := v.State(); st.Active || !v.Ready() {
		t.Fatalf("hold %+v", st)
	}
	st, err := b.JS.Stream(context.Background(), events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(context.Background(), "devstatus.in.*.hold"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a hold event was published: %v", err)
	}
}
