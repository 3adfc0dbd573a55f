package projections

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// BenchmarkTransitionsBatch applies 1000-transition batches (history insert,
// coalesced status upsert, checkpoint: one transaction on one connection)
// over a fleet of 10 000 devices and reports rows/s.
//
//	pipelined: messages decoded beforehand, as the projector's reader
//	           goroutine does while the previous batch is written
//	decode+write: JSON decoding included, sequentially
func BenchmarkTransitionsBatch(b *testing.B) {
	const batchSize, fleet = 1000, 10000
	statuses := []events.Status{events.StatusConnected, events.StatusTemporarilyOffline, events.StatusDisconnected}
	const distinct = 20
	data := make([][][]byte, distinct)
	for k := range data {
		data[k] = make([][]byte, batchSize)
		for i := range batchSize {
			n := k*batchSize + i
			e := transition(fmt.Sprintf("bench-device-%05d", n%fleet), statuses[n%3], statuses[(n+1)%3], events.ReasonHeartbeatTimeout, float64(n))
			var err error
			if data[k][i], err = events.EncodeStatusChanged(e); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, decode := range []bool{false, true} {
		name := "pipelined"
		if decode {
			name = "decode+write"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			db := openDB(b)
			db.SetMaxOpenConns(1)
			p, err := New(Config{DB: db, JetStream: openBus(b).JS})
			if err != nil {
				b.Fatal(err)
			}
			r := newRunner(p, transitionsKind())
			var seq uint64
			raw := make([]rawMsg, batchSize)
			slots := make([]slot[trItem], batchSize)
			next := func(it int) {
				for i := range raw {
					seq++
					raw[i] = rawMsg{Seq: seq, Subject: "devstatus.tr.0.x", Data: data[it%distinct][i]}
				}
			}
			var spent time.Duration
			for it := 0; b.Loop(); it++ {
				next(it)
				if decode {
					start := time.Now()
					if err := r.apply(ctx, raw); err != nil {
						b.Fatal(err)
					}
					spent += time.Since(start)
					continue
				}
				b.StopTimer()
				for i := range raw {
					slots[i] = r.decode(&raw[i])
				}
				b.StartTimer()
				start := time.Now()
				if err := r.applySlots(ctx, slots, 1, time.Time{}); err != nil {
					b.Fatal(err)
				}
				spent += time.Since(start)
			}
			b.ReportMetric(float64(seq)/spent.Seconds(), "rows/s")
		})
	}
}
