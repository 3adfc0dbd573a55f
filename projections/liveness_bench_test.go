package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// BenchmarkLivenessBatch applies 1000-heartbeat batches of distinct devices
// (a fleet heartbeating every 30 s: nothing to coalesce within a batch) over
// a fleet of 100 000 registered devices, one transaction each with the
// checkpoint, on one connection, and reports rows/s.
//
//	upsert: the general statement; update: the heartbeat-only UPDATE
//	pipelined: messages decoded beforehand (the projector's reader does it
//	           while the previous batch is written)
//	decode+write: JSON decoding included
func BenchmarkLivenessBatch(b *testing.B) {
	const batchSize, fleet = 1000, 100_000
	ctx := context.Background()
	db := openDB(b)
	db.SetMaxOpenConns(1)
	p, err := New(Config{DB: db, JetStream: openBus(b).JS})
	if err != nil {
		b.Fatal(err)
	}
	r := newRunner(p, livenessKind())
	var seq uint64
	raw := make([]rawMsg, batchSize)
	// Register the fleet.
	for k := 0; k < fleet; k += batchSize {
		for i := range raw {
			seq++
			data, _ := events.EncodeInput(registration(fmt.Sprintf("bench-device-%06d", k+i), "g", 0))
			raw[i] = rawMsg{Seq: seq, Subject: "devstatus.in.0.d.x", Data: data}
		}
		if err := r.apply(ctx, raw); err != nil {
			b.Fatal(err)
		}
	}
	dt := time.Now().UTC()
	next := func(it int) {
		for i := range raw {
			seq++
			n := (it*batchSize + i) % fleet
			e := heartbeat(fmt.Sprintf("bench-device-%06d", n), float64(it)+float64(i)/batchSize,
				fmt.Sprintf(`{"battery":%d,"signal":-%d,"app_version":"devicesim/1.0"}`, 20+n%80, 50+n%40))
			e.ID = fmt.Sprintf("hb-%d", seq)
			e.Heartbeat.DeviceTime = &dt
			data, _ := events.EncodeInput(e)
			raw[i] = rawMsg{Seq: seq, Subject: "devstatus.in.0.d.x", Data: data}
		}
	}
	slots := make([]slot[lvItem], batchSize)
	for _, c := range []struct {
		name           string
		decode, update bool
		hot            bool
	}{{"upsert", false, false, false}, {"update", false, true, false}, {"upsert", true, false, false}, {"update", true, true, false},
		{"update-without-last-heartbeat-index", false, true, true}} {
		if c.hot {
			// What the UPDATE costs when it can be a HOT update (no indexed
			// column changes): the schema's index on last_heartbeat_at is
			// what makes every heartbeat a new tuple with four index entries.
			if _, err := db.ExecContext(ctx, `DROP INDEX devices_last_heartbeat_idx`); err != nil {
				b.Fatal(err)
			}
		}
		decode := c.decode
		name := c.name + "/pipelined"
		if decode {
			name = c.name + "/decode+write"
		}
		b.Run(name, func(b *testing.B) {
			heartbeatUpdates = c.update
			defer func() { heartbeatUpdates = true }()
			var spent time.Duration
			n := 0
			for it := 0; b.Loop(); it++ {
				b.StopTimer()
				next(it)
				if !decode {
					for i := range raw {
						slots[i] = r.decode(&raw[i])
					}
				}
				b.StartTimer()
				start := time.Now()
				var err error
				if decode {
					err = r.apply(ctx, raw)
				} else {
					err = r.applySlots(ctx, slots, 1, time.Time{})
				}
				if err != nil {
					b.Fatal(err)
				}
				spent += time.Since(start)
				n += batchSize
			}
			b.ReportMetric(float64(n)/spent.Seconds(), "rows/s")
		})
	}
}

// The heartbeat-only UPDATE leaves every row exactly as the upsert does:
// the same batches (heartbeats in and out of order, without metrics, with
// null metrics, of an unknown device, a batch applied twice) on two schemas.
func TestHeartbeatUpdateMatchesUpsert(t *testing.T) {
	ctx := context.Background()
	type run struct {
		db      map[string][]string
		unknown int
	}
	apply := func(update bool) run {
		heartbeatUpdates = update
		defer func() { heartbeatUpdates = true }()
		db := openDB(t)
		p, err := New(Config{DB: db, JetStream: openBus(t).JS})
		if err != nil {
			t.Fatal(err)
		}
		r := newRunner(p, livenessKind())
		var seq uint64
		unknown := 0
		batch := func(evs ...*events.Input) {
			var raw []rawMsg
			for _, e := range evs {
				seq++
				if e.ID == "" {
					e.ID = fmt.Sprintf("e-%d", seq)
				}
				data, err := events.EncodeInput(e)
				if err != nil {
					t.Fatal(err)
				}
				raw = append(raw, rawMsg{Seq: seq, Subject: "devstatus.in.0.d.x", Data: data})
			}
			slots := make([]slot[lvItem], len(raw))
			var items []lvItem
			for i := range raw {
				slots[i] = r.decode(&raw[i])
				items = append(items, slots[i].v)
			}
			tx, err := db.BeginTxx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := writeLiveness(ctx, tx, items)
			if err != nil {
				t.Fatal(err)
			}
			unknown += res.unknown
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		batch(registration("a", "g", 0), registration("b", "g", 0), registration("c", "", 0))
		batch(heartbeat("a", 10, `{"battery":80}`), heartbeat("b", 11, ""), heartbeat("a", 12, `{"battery":79}`), heartbeat("ghost", 12, `{}`))
		batch(heartbeat("a", 11, `{"battery":1}`), heartbeat("b", 20, `null`), heartbeat("c", 5, `{"x":[1,{"y":"z"}]}`))
		again := []*events.Input{heartbeat("a", 30, `{"battery":70}`), heartbeat("c", 31, "")}
		batch(again...)
		seq -= 2 // the same batch again: at or below the stored liveness_seq
		batch(again...)
		return run{dump(t, db), unknown}
	}
	up, upd := apply(false), apply(true)
	if !reflect.DeepEqual(up.db["devices"], upd.db["devices"]) || up.unknown != upd.unknown || up.unknown != 1 {
		t.Fatalf("upsert (unknown %d):\n%s\nupdate (unknown %d):\n%s", up.unknown, strings.Join(up.db["devices"], "\n"),
			upd.unknown, strings.Join(upd.db["devices"], "\n"))
	}
}

// BenchmarkLivenessDecode measures the liveness projection's decode of
// one heartbeat as the bridge publishes it (events.ScanInput with the
// metrics mask, then the projection's checks).
func BenchmarkLivenessDecode(b *testing.B) {
	dt := time.Now().UTC()
	data, err := events.EncodeInput(&events.Input{V: 1, Type: events.TypeHeartbeat, ID: "hb-Y7sd8dfJZ9h2m5eQk1a2b3", Device: "ld-1234abcd-g12-345",
		At: time.Now().UTC(), Heartbeat: &events.Heartbeat{DeviceTime: &dt, Metrics: json.RawMessage(`{"battery":87,"signal":-61,"app_version":"devicesim/1.0"}`), Via: "gw-12"}})
	if err != nil {
		b.Fatal(err)
	}
	m := &rawMsg{Seq: 1, Data: data}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeLiveness(m); err != nil {
			b.Fatal(err)
		}
	}
}
