package worker

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/statemachine"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type logEntry struct {
	seq uint64
	in  *events.Input
}

// randomLog builds a plausible input log: registrations, heartbeats with
// random gaps (some longer than the thresholds), ping results with random
// checked_at, late heartbeats, and ticks every second, in receive order.
func randomLog(r *rand.Rand, devices, seconds int) []logEntry {
	var log []logEntry
	seq := uint64(0)
	add := func(in *events.Input) {
		seq++
		in.V = events.Version
		in.ID = fmt.Sprintf("e%d", seq)
		log = append(log, logEntry{seq, in})
	}
	ids := make([]string, devices)
	next := make([]int, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%d.%c", i, 'a'+i%3)
		add(&events.Input{Type: events.TypeDeviceRegistered, Device: ids[i], At: t0, Registered: &events.Registered{Group: []string{"", "slow"}[i%2]}})
		next[i] = r.IntN(30)
	}
	for sec := 0; sec < seconds; sec++ {
		now := t0.Add(time.Duration(sec) * time.Second)
		for i, id := range ids {
			if next[i] == sec {
				at := now.Add(time.Duration(r.IntN(1000)) * time.Millisecond)
				add(&events.Input{Type: events.TypeHeartbeat, Device: id, At: at})
				switch r.IntN(10) {
				case 0:
					next[i] = sec + 41 + r.IntN(300) // an outage
				case 1:
					next[i] = sec + 35 + r.IntN(10) // near the boundary
				default:
					next[i] = sec + 20 + r.IntN(15)
				}
			}
			if r.IntN(40) == 0 {
				checked := now.Add(-time.Duration(r.IntN(60)) * time.Second)
				add(&events.Input{Type: events.TypePingResult, Device: id, At: now, Ping: &events.PingResult{OK: r.IntN(2) == 0, CheckedAt: checked}})
			}
			if r.IntN(200) == 0 { // a late heartbeat
				add(&events.Input{Type: events.TypeHeartbeat, Device: id, At: now.Add(-time.Duration(r.IntN(100)) * time.Second)})
			}
		}
		add(&events.Input{Type: events.TypeTick, At: now.Add(time.Second)})
	}
	return log
}

var testThresholds = Thresholds{
	Default: statemachine.DefaultThresholds,
	Groups:  map[string]statemachine.Thresholds{"slow": {OfflineAfter: 60 * time.Second, DisconnectAfter: 600 * time.Second, PingIgnoreWithin: 30 * time.Second}},
}

func process(t *testing.T, s *partition, log []logEntry) []events.StatusChanged {
	t.Helper()
	out, _ := processAll(t, s, log)
	return out
}

// processAll applies a log and returns the transitions and probe requests.
func processAll(t *testing.T, s *partition, log []logEntry) ([]events.StatusChanged, []events.ProbeRequest) {
	t.Helper()
	var out []events.StatusChanged
	var probes []events.ProbeRequest
	for _, e := range log {
		var err error
		if out, probes, _, err = s.applyAll(e.seq, e.in, out, probes); err != nil {
			t.Fatal(err)
		}
	}
	return out, probes
}

// TestReplayIsDeterministic is the property test of issue #2: for random
// input logs, processing the log twice, with random redeliveries, or from a
// snapshot taken at a random point, yields identical transitions.
func TestReplayIsDeterministic(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		log := randomLog(r, 12, 1500)
		first, firstProbes := processAll(t, newPartition(3, 16, testThresholds, Probing{}), log)
		if len(first) == 0 || len(firstProbes) == 0 {
			t.Fatalf("seed %d: no transitions or probes: the generator is broken", seed)
		}
		second, secondProbes := processAll(t, newPartition(3, 16, testThresholds, Probing{}), log)
		if !reflect.DeepEqual(first, second) || !reflect.DeepEqual(firstProbes, secondProbes) {
			t.Fatalf("seed %d: a second run differs", seed)
		}

		// Redeliveries: repeat random earlier entries (as JetStream does after
		// an ack timeout) anywhere later in the log.
		var noisy []logEntry
		for k, e := range log {
			noisy = append(noisy, e)
			if r.IntN(10) == 0 {
				noisy = append(noisy, log[r.IntN(k+1)])
			}
		}
		if got := process(t, newPartition(3, 16, testThresholds, Probing{}), noisy); !reflect.DeepEqual(first, got) {
			t.Fatalf("seed %d: redeliveries changed the transitions (%d vs %d)", seed, len(got), len(first))
		}

		// Snapshot at a random point, encode, decode, restore, go on.
		cut := r.IntN(len(log))
		a := newPartition(3, 16, testThresholds, Probing{})
		head, headProbes := processAll(t, a, log[:cut])
		c := restoredCopy(t, a.takeSnapshot(), 3, 16)
		// The restarted worker sees the tail again from an earlier point too.
		tail, tailProbes := processAll(t, c, log[max(0, cut-50):])
		if got := append(head, tail...); !reflect.DeepEqual(first, got) {
			t.Fatalf("seed %d: snapshot at %d changed the transitions", seed, cut)
		}
		if got := append(headProbes, tailProbes...); !reflect.DeepEqual(firstProbes, got) {
			t.Fatalf("seed %d: snapshot at %d changed the probe requests", seed, cut)
		}
	}
}

func TestTransitionsAreWellFormed(t *testing.T) {
	r := rand.New(rand.NewPCG(99, 1))
	out := process(t, newPartition(5, 16, testThresholds, Probing{}), randomLog(r, 20, 3000))
	last := map[string]events.StatusChanged{}
	ids := map[string]bool{}
	for _, tr := range out {
		if ids[tr.ID] {
			t.Fatalf("duplicate transition id %s", tr.ID)
		}
		ids[tr.ID] = true
		if tr.From == tr.To {
			t.Fatalf("self transition %+v", tr)
		}
		if p, ok := last[tr.Device]; ok {
			if p.To != tr.From {
				t.Fatalf("%s: %s→%s follows %s→%s", tr.Device, tr.From, tr.To, p.From, p.To)
			}
			if tr.At.Before(p.At) {
				t.Fatalf("%s: transition at %s before previous at %s", tr.Device, tr.At, p.At)
			}
		} else if tr.From != events.StatusRegistered {
			t.Fatalf("%s: first transition from %s", tr.Device, tr.From)
		}
		if tr.From == events.StatusConnected && tr.To == events.StatusDisconnected {
			t.Fatalf("%s: connected straight to disconnected", tr.Device)
		}
		last[tr.Device] = tr
	}
}

// Scenario 5 (state lost on restart): A and B heartbeat at 0; the worker dies
// at 10; A keeps heartbeating every 30 s through 390, B stays silent; the
// worker returns at 400 (ticks were logged meanwhile). A: one transition. B:
// →temporarily_offline stamped 40, →disconnected stamped 300.
func TestScenarioRestart(t *testing.T) {
	var log []logEntry
	seq := uint64(0)
	add := func(in *events.Input) {
		seq++
		in.V, in.ID = 1, fmt.Sprint(seq)
		log = append(log, logEntry{seq, in})
	}
	for _, id := range []string{"A", "B"} {
		add(&events.Input{Type: events.TypeDeviceRegistered, Device: id, At: t0.Add(-time.Second)})
	}
	for sec := 0; sec <= 400; sec++ {
		now := t0.Add(time.Duration(sec) * time.Second)
		if sec%30 == 0 && sec <= 390 {
			add(&events.Input{Type: events.TypeHeartbeat, Device: "A", At: now})
		}
		if sec == 0 {
			add(&events.Input{Type: events.TypeHeartbeat, Device: "B", At: now})
		}
		add(&events.Input{Type: events.TypeTick, At: now})
	}
	// Worker runs until 10 s, snapshots, dies; a new one restores and replays.
	cut := 0
	for cut < len(log) && log[cut].in.At.Before(t0.Add(10*time.Second)) {
		cut++
	}
	a := newPartition(0, 16, testThresholds, Probing{})
	out := process(t, a, log[:cut])
	sn, _ := encodeSnapshot(a.takeSnapshot())
	dec, _ := decodeSnapshot(sn)
	b := newPartition(0, 16, testThresholds, Probing{})
	if err := b.restore(dec); err != nil {
		t.Fatal(err)
	}
	out = append(out, process(t, b, log[cut:])...)
	var got []string
	for _, tr := range out {
		got = append(got, fmt.Sprintf("%s:%s>%s@%s", tr.Device, tr.From, tr.To, tr.At.Sub(t0)))
	}
	want := []string{"A:registered>connected@0s", "B:registered>connected@0s", "B:connected>temporarily_offline@40s", "B:temporarily_offline>disconnected@5m0s"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

// mustApply applies in to s at sequence seq, failing the test or benchmark on
// an error, and returns the transitions it caused.
func mustApply(tb testing.TB, s *partition, seq uint64, in *events.Input) []events.StatusChanged {
	tb.Helper()
	out, _, err := s.apply(seq, in, nil)
	if err != nil {
		tb.Fatalf("apply seq %d (%s %q): %v", seq, in.Type, in.Device, err)
	}
	return out
}

func TestUnknownDeviceAndDecommission(t *testing.T) {
	s := newPartition(0, 1, testThresholds, Probing{})
	_, res, _ := s.apply(1, &events.Input{Type: events.TypeHeartbeat, Device: "ghost", At: t0}, nil)
	if res.Ignored != "unknown_device" {
		t.Fatalf("res %+v", res)
	}
	mustApply(t, s, 2, &events.Input{Type: events.TypeDeviceRegistered, Device: "A", At: t0})
	mustApply(t, s, 3, &events.Input{Type: events.TypeHeartbeat, Device: "A", At: t0})
	mustApply(t, s, 4, &events.Input{Type: events.TypeDeviceDecommissioned, Device: "A", At: t0})
	out, _, _ := s.apply(5, &events.Input{Type: events.TypeTick, At: t0.Add(time.Hour)}, nil)
	if len(out) != 0 || len(s.index) != 0 {
		t.Fatalf("decommissioned device still tracked: %v", out)
	}
	// Re-registration starts over.
	mustApply(t, s, 6, &events.Input{Type: events.TypeDeviceRegistered, Device: "A", At: t0.Add(2 * time.Hour)})
	if c := s.counts(); c[statemachine.Registered] != 1 {
		t.Fatalf("counts %v", c)
	}
}

func BenchmarkPartitionHeartbeats(b *testing.B) {
	const devices = 100_000
	s := newPartition(0, 1, testThresholds, Probing{})
	ids := make([]string, devices)
	seq := uint64(0)
	for i := range ids {
		ids[i] = fmt.Sprintf("device-%06d", i)
		seq++
		mustApply(b, s, seq, &events.Input{Type: events.TypeDeviceRegistered, Device: ids[i], At: t0})
	}
	in := &events.Input{Type: events.TypeHeartbeat}
	var out []events.StatusChanged
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		seq++
		in.Device = ids[n%devices]
		in.At = t0.Add(time.Duration(n) * 300 * time.Microsecond) // 33k heartbeats/s of trace time
		out, _, _ = s.apply(seq, in, out[:0])
		if n%3300 == 0 {
			seq++
			out, _, _ = s.apply(seq, &events.Input{Type: events.TypeTick, At: in.At}, out[:0])
		}
	}
}

// A silent device is probed at last heartbeat + 35 s, then after 30 s, 1 min,
// 2 min … capped; a heartbeat stops it; a device heartbeating every 30 s
// (with jitter) is never probed.
func TestProbeSchedule(t *testing.T) {
	s := newPartition(0, 1, testThresholds, Probing{MaxInterval: 2 * time.Minute})
	var log []logEntry
	seq := uint64(0)
	add := func(in *events.Input) {
		seq++
		in.V, in.ID = 1, fmt.Sprint(seq)
		log = append(log, logEntry{seq, in})
	}
	add(&events.Input{Type: events.TypeDeviceRegistered, Device: "quiet", At: t0})
	add(&events.Input{Type: events.TypeDeviceRegistered, Device: "steady", At: t0})
	for sec := 0; sec <= 600; sec++ {
		now := t0.Add(time.Duration(sec) * time.Second)
		if sec == 0 {
			add(&events.Input{Type: events.TypeHeartbeat, Device: "quiet", At: now})
		}
		if sec%30 == 0 { // steady, with up to 4 s of jitter
			add(&events.Input{Type: events.TypeHeartbeat, Device: "steady", At: now.Add(time.Duration(sec%5) * 900 * time.Millisecond)})
		}
		if sec == 500 {
			add(&events.Input{Type: events.TypeHeartbeat, Device: "quiet", At: now})
		}
		add(&events.Input{Type: events.TypeTick, At: now})
	}
	_, probes := processAll(t, s, log)
	var got []string
	for _, p := range probes {
		got = append(got, fmt.Sprintf("%s#%d@%s", p.Device, p.Attempt, p.DueAt.Sub(t0)))
	}
	// 35, +30 = 65, +60 = 125, +120 = 245, +120 (cap) = 365, 485; heartbeat at 500; then 535, 565.
	want := []string{"quiet#1@35s", "quiet#2@1m5s", "quiet#3@2m5s", "quiet#4@4m5s", "quiet#5@6m5s", "quiet#6@8m5s", "quiet#1@8m55s", "quiet#2@9m25s"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("probes\n got %v\nwant %v", got, want)
	}
}

// restoredCopy encodes sn, decodes it and restores it into a new partition p
// of partitions, as a restarted worker does.
func restoredCopy(t testing.TB, sn *snapshot, p, partitions int) *partition {
	t.Helper()
	data, err := encodeSnapshot(sn)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := decodeSnapshot(data)
	if err != nil {
		t.Fatal(err)
	}
	c := newPartition(p, partitions, testThresholds, Probing{})
	if err := c.restore(dec); err != nil {
		t.Fatal(err)
	}
	return c
}
