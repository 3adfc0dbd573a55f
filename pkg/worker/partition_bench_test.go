package worker

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// fleetPartition is one partition of a 1 000 000-device fleet on 16
// partitions, every device registered and heartbeating (ids as the load
// generator makes them).
func fleetPartition(b *testing.B, devices int) *partition {
	s := newPartition(0, 16, testThresholds, Probing{})
	var seq uint64
	for i := range devices {
		id := fmt.Sprintf("ld-1a2b3c4d-g%d-%d", i/1000, i%1000)
		seq++
		mustApply(b, s, seq, &events.Input{Type: events.TypeDeviceRegistered, Device: id, At: t0})
		seq++
		mustApply(b, s, seq, &events.Input{Type: events.TypeHeartbeat, Device: id, At: t0.Add(time.Duration(i) * time.Microsecond)})
	}
	return s
}

// BenchmarkPartitionMemory reports the Go heap a tracked device costs in a
// partition worker (live heap after GC, 1 000 000 devices in one partition
// state): the figure behind the worker's resident memory per device.
func BenchmarkPartitionMemory(b *testing.B) {
	const devices = 1_000_000
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s := fleetPartition(b, devices)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/devices, "heap-B/device")
		runtime.KeepAlive(s)
	}
}

// BenchmarkSnapshotRestore encodes and restores the snapshot of one
// partition of a 1 000 000-device fleet on 16 partitions (62 500 devices):
// what a restarted worker does per partition before it consumes again.
func BenchmarkSnapshotRestore(b *testing.B) {
	const devices = 1_000_000 / 16
	s := fleetPartition(b, devices)
	data, err := encodeSnapshot(s.takeSnapshot())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			if _, err := encodeSnapshot(s.takeSnapshot()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(data))/devices, "B/device")
	})
	b.Run("decode+restore", func(b *testing.B) {
		for b.Loop() {
			sn, err := decodeSnapshot(data)
			if err != nil {
				b.Fatal(err)
			}
			r := newPartition(0, 16, testThresholds, Probing{})
			if err := r.restore(sn); err != nil {
				b.Fatal(err)
			}
		}
	})
}
