package bridge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// benchDevices is the fleet of the limiter benchmarks (the scale target:
// 1 000 000 devices per node).
const benchDevices = 1_000_000

var (
	benchIDsOnce sync.Once
	benchIDs     []string
)

// deviceIDs returns benchDevices ids like "kiosk-0000042" (13 bytes, a
// typical id length), allocated once.
func deviceIDs() []string {
	benchIDsOnce.Do(func() {
		benchIDs = make([]string, benchDevices)
		for i := range benchIDs {
			benchIDs[i] = fmt.Sprintf("kiosk-%07d", i)
		}
	})
	return benchIDs
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkLimiterMemory reports the heap the limiter holds per tracked
// device at 1 000 000 devices, with the default limits (10 s, 10/min), in
// the steady state of the design's fleet (a heartbeat every 30 s: each
// device's log holds its last two accepted times), after a single heartbeat,
// and in the worst case (a device at the limit, a heartbeat every 10 s: six
// times in its log). The ids themselves are not
// counted: the map keys share the request's id string (13 bytes here, a 16
// byte allocation each, to add to the figure). One op = building the whole
// tracked fleet.
func BenchmarkLimiterMemory(b *testing.B) {
	ids := deviceIDs()
	for _, c := range []struct {
		name  string
		beats int
		every time.Duration
	}{
		{"steady-30s", 3, 30 * time.Second},
		{"one-heartbeat", 1, 0},
		{"at-the-limit", 6, DefaultRateMinInterval},
	} {
		b.Run(c.name, func(b *testing.B) {
			var perDevice float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				before := heapInUse()
				b.StartTimer()
				l := newLimiter(DefaultRateMinInterval, DefaultRatePerMinute)
				for k := 0; k < c.beats; k++ {
					at := t0.Add(time.Duration(k) * c.every)
					for _, id := range ids {
						if _, _, ok := l.allow(id, at); !ok {
							b.Fatal("refused")
						}
					}
				}
				b.StopTimer()
				perDevice = float64(heapInUse()-before) / benchDevices
				if n := l.sweep(t0.Add(time.Duration(c.beats-1) * c.every)); n != benchDevices {
					b.Fatalf("%d tracked", n)
				}
				runtime.KeepAlive(l)
				b.StartTimer()
			}
			b.ReportMetric(perDevice, "B/device")
		})
	}
}

var (
	benchLimOnce sync.Once
	benchLim     *limiter
)

// trackedLimiter is a limiter tracking every benchmark device, each with one
// accepted heartbeat at t0.
func trackedLimiter() *limiter {
	benchLimOnce.Do(func() {
		benchLim = newLimiter(DefaultRateMinInterval, DefaultRatePerMinute)
		for _, id := range deviceIDs() {
			benchLim.allow(id, t0)
		}
	})
	return benchLim
}

// BenchmarkLimiter1M measures one allow call at 1 000 000 tracked devices,
// picked at random (cache misses included): "refused" is a device inside its
// interval (the 429 path); "accepted" is a device past it (the log is
// pruned and appended to); -parallel variants run on every core, as the HTTP
// server does.
func BenchmarkLimiter1M(b *testing.B) {
	ids := deviceIDs()
	l := trackedLimiter()
	var clock atomic.Int64 // accepted: each call moves time on by 30 s / fleet
	clock.Store(t0.Add(time.Hour).UnixNano())
	step := int64(30*time.Second) / benchDevices
	run := func(b *testing.B, parallel bool, accepted bool) {
		body := func(r *rand.Rand, n int) {
			for i := 0; i < n; i++ {
				id := ids[r.IntN(benchDevices)]
				at := t0.Add(time.Second)
				if accepted {
					at = time.Unix(0, clock.Add(step)).Add(time.Duration(r.IntN(3)) * DefaultRateMinInterval)
				}
				l.allow(id, at)
			}
		}
		b.ResetTimer()
		if !parallel {
			body(rand.New(rand.NewPCG(1, 2)), b.N)
			return
		}
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 7))
			for pb.Next() {
				body(r, 1)
			}
		})
	}
	b.Run("refused", func(b *testing.B) { run(b, false, false) })
	b.Run("refused-parallel", func(b *testing.B) { run(b, true, false) })
	b.Run("accepted", func(b *testing.B) { run(b, false, true) })
	b.Run("accepted-parallel", func(b *testing.B) { run(b, true, true) })
}

// BenchmarkLimiterSweep measures one sweep (every 30 s in Run) over
// 1 000 000 tracked devices none of which is idle yet (all kept: the worst
// case, every entry visited).
func BenchmarkLimiterSweep(b *testing.B) {
	l := trackedLimiter()
	at := t0.Add(time.Second)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if n := l.sweep(at); n != benchDevices {
			b.Fatalf("%d tracked", n)
		}
	}
}

// BenchmarkRateWindowID measures building the shared rate window's
// Nats-Msg-Id (FNV-1a 128 of the id, base64url, window number).
func BenchmarkRateWindowID(b *testing.B) {
	l := newLimiter(DefaultRateMinInterval, DefaultRatePerMinute)
	ids := deviceIDs()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _, _ = l.windowID(ids[i%1024], t0)
	}
}

// BenchmarkRateGuard compares, on the embedded JetStream (file store, TCP
// loopback, one connection, sequential as a heartbeat handler does), what
// the multi-instance guard costs per heartbeat:
//   - publish-random-id: the heartbeat publish as it was (random Nats-Msg-Id);
//   - publish-window-id: the same publish with the rate-window Nats-Msg-Id
//     (the chosen guard: no extra round trip);
//   - publish-duplicate: the refusal path (the window was taken: PubAck
//     Duplicate, nothing stored);
//   - kv-cas+publish: the alternative, a per-device KV compare-and-swap of
//     the rate state before each publish (one more round trip and one more
//     stored message).
func BenchmarkRateGuard(b *testing.B) {
	bs := testenv.NATS(b, bus.Config{ListenAddr: "127.0.0.1:-1", Partitions: 16})
	bb, err := bus.Open(context.Background(), bus.Config{URL: bs.ClientURL()})
	if err != nil {
		b.Fatal(err)
	}
	defer bb.Close()
	ctx := context.Background()
	kv, err := bb.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_rate", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	l := newLimiter(DefaultRateMinInterval, DefaultRatePerMinute)
	ids := deviceIDs()[:100_000]
	payload := func(id string) []byte {
		data, _ := events.EncodeInput(&events.Input{Type: events.TypeHeartbeat, ID: "hb-" + nuid.Next(), Device: id, At: t0,
			Heartbeat: &events.Heartbeat{Metrics: []byte(`{"battery":87,"signal":-61,"app_version":"1.2.3"}`)}})
		return data
	}
	pub := func(b *testing.B, id, msgID string) *jetstream.PubAck {
		ack, err := bb.JS.Publish(ctx, events.DeviceSubject(id, bb.Partitions()), payload(id),
			jetstream.WithMsgID(msgID), jetstream.WithExpectStream(events.InputStream))
		if err != nil {
			b.Fatal(err)
		}
		return ack
	}
	var window atomic.Int64
	b.Run("publish-random-id", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			pub(b, ids[i%len(ids)], "hb-"+nuid.Next())
		}
	})
	b.Run("publish-window-id", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if i%len(ids) == 0 {
				window.Add(1)
			}
			msgID, _, _ := l.windowID(ids[i%len(ids)], t0.Add(time.Duration(window.Load())*DefaultRateMinInterval))
			if pub(b, ids[i%len(ids)], msgID).Duplicate {
				b.Fatal("duplicate")
			}
		}
	})
	b.Run("publish-duplicate", func(b *testing.B) {
		msgID, _, _ := l.windowID(ids[0], t0.Add(-time.Hour))
		pub(b, ids[0], msgID)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if !pub(b, ids[0], msgID).Duplicate {
				b.Fatal("not a duplicate")
			}
		}
	})
	revs := make(map[string]uint64, len(ids)) // across the runs of the sub-benchmark
	b.Run("kv-cas+publish", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			id := ids[i%len(ids)]
			key := events.SubjectToken(id)
			val := []byte(strconv.FormatInt(int64(i), 10))
			var rev uint64
			var err error
			if r, ok := revs[key]; ok {
				rev, err = kv.Update(ctx, key, val, r)
			} else {
				rev, err = kv.Create(ctx, key, val)
			}
			if err != nil {
				b.Fatal(err)
			}
			revs[key] = rev
			pub(b, id, "hb-"+nuid.Next())
		}
	})
}
