package worker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// Transitions of many devices in one burst (a tick timing out every device,
// then a heartbeat each) are pipelined, stored in log order, once each, and
// a device re-registered after a decommission keeps publishing on its
// subject (its last sequence is remembered), across a restart from a
// snapshot.
func TestTransitionBurstAndReRegistration(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 2})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const n = 300
	for i := range n {
		id := fmt.Sprintf("dev-%03d", i)
		p.register(id, "", t0)
		p.heartbeat(id, t0)
	}
	stop := startWorker(t, b, "w1", 3*time.Second)
	transitions(t, b, n)
	p.tick(t0.Add(41 * time.Second)) // n timeouts in one input per partition
	for i := range n {
		p.heartbeat(fmt.Sprintf("dev-%03d", i), t0.Add(50*time.Second))
	}
	got := transitions(t, b, 3*n)
	if len(got) != 3*n {
		t.Fatalf("%d transitions, want %d", len(got), 3*n)
	}
	// In log order per partition: cause sequences never go back.
	last := map[int]uint64{}
	seen := map[string]bool{}
	for _, tr := range got {
		if tr.Cause.Seq < last[tr.Partition] {
			t.Fatalf("partition %d: cause %d after %d", tr.Partition, tr.Cause.Seq, last[tr.Partition])
		}
		last[tr.Partition] = tr.Cause.Seq
		if seen[tr.ID] {
			t.Fatalf("duplicate %s", tr.ID)
		}
		seen[tr.ID] = true
	}
	// Decommission and re-register one device, then restart the worker
	// (final snapshot), then heartbeat it again.
	p.publish(&events.Input{Type: events.TypeDeviceDecommissioned, Device: "dev-007", At: t0.Add(60 * time.Second)})
	p.register("dev-007", "", t0.Add(61*time.Second))
	p.heartbeat("dev-007", t0.Add(62*time.Second))
	if got := transitions(t, b, 3*n+1); len(got) != 3*n+1 {
		t.Fatalf("%d transitions before the restart, want %d", len(got), 3*n+1)
	}
	stop()
	stop = startWorker(t, b, "w2", 3*time.Second)
	defer stop()
	p.tick(t0.Add(103 * time.Second)) // dev-007 times out; the others too
	got = transitions(t, b, 4*n+1)
	if len(got) != 4*n+1 {
		t.Fatalf("%d transitions after the restart, want %d", len(got), 4*n+1)
	}
	var hist []string
	for _, tr := range got {
		if tr.Device == "dev-007" {
			hist = append(hist, fmt.Sprintf("%s>%s@%s", tr.From, tr.To, tr.At.Sub(t0)))
		}
	}
	want := "registered>connected@0s connected>temporarily_offline@40s temporarily_offline>connected@50s " +
		"registered>connected@1m2s connected>temporarily_offline@1m42s"
	if strings.Join(hist, " ") != want {
		t.Fatalf("dev-007: %v\nwant %s", hist, want)
	}
}

// A snapshot of version 2 (before transition sequences were recorded) is
// still used: the devices' sequences are read from the stream when needed.
func TestSnapshotVersion2(t *testing.T) {
	s := newPartition(0, 1, testThresholds, Probing{})
	mustApply(t, s, 1, &events.Input{Type: events.TypeDeviceRegistered, Device: "A", At: t0})
	sn := s.takeSnapshot()
	sn.Version, sn.TrSeqs, sn.Retired, sn.TrFresh = 2, nil, nil, false
	r := restoredCopy(t, sn, 0, 1)
	if r.trSeq[r.index["A"]] != trSeqUnknown || r.trFresh {
		t.Fatalf("restored v2: trSeq %d fresh %v", r.trSeq[r.index["A"]], r.trFresh)
	}
	mustApply(t, r, 2, &events.Input{Type: events.TypeDeviceRegistered, Device: "B", At: t0})
	if r.trSeq[r.index["B"]] != trSeqUnknown {
		t.Fatal("a device first seen after a v2 restore has a known sequence")
	}
	// And a v3 snapshot carries them.
	s.trSeq[s.index["A"]] = 42
	r = restoredCopy(t, s.takeSnapshot(), 0, 1)
	if r.trSeq[r.index["A"]] != 42 || !r.trFresh {
		t.Fatalf("v3: sequence %d, fresh %v", r.trSeq[r.index["A"]], r.trFresh)
	}
}
