package trace

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

func TestImportPublishesInTraceOrder(t *testing.T) {
	t.Parallel()
	const partitions = 16
	b := testenv.NATS(t, bus.Config{Partitions: partitions})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	tr, err := Open(TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	// 10 minutes of the busy morning of the day, every node.
	day := TestdataDayWindow()
	w := Window{From: day.From.Add(6 * time.Hour), To: day.From.Add(6*time.Hour + 10*time.Minute)}
	nodes := tr.Heartbeats(w, 0)
	wantHB := 0
	for _, n := range nodes {
		wantHB += len(n.Times)
	}
	cfg := ImportConfig{Partitions: partitions, Window: w, TickEvery: 10 * time.Second, MaxInFlight: 512, Logger: testenv.Logger(t)}
	st, err := Import(ctx, b.JS, nodes, cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantTicks := (int(w.Duration()/(10*time.Second)) + 1) * partitions
	if st.Registered != len(nodes) || st.Heartbeats != wantHB || st.Ticks != wantTicks || st.Duplicates != 0 || st.Reordered != 0 {
		t.Fatalf("stats %+v; want %d registered, %d heartbeats, %d ticks", st, len(nodes), wantHB, wantTicks)
	}
	t.Logf("imported %d events in %s (%.0f events/s)", st.Events(), st.Elapsed, st.EventsPerSecond())

	// Read the stream back and check counts, subjects, ids and per-partition order.
	stream, err := b.JS.Stream(ctx, events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int(info.State.Msgs) != st.Events() {
		t.Fatalf("stream holds %d messages, want %d", info.State.Msgs, st.Events())
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	type last struct {
		at     time.Time
		isTick bool
	}
	lastOf := make([]last, partitions)
	count := map[events.Type]int{}
	hbPerNode := map[string]int{}
	tickTimes := map[int][]time.Time{}
	regAt := w.From.Add(-time.Second)
	for got := 0; got < st.Events(); {
		batch, err := cons.Fetch(min(1000, st.Events()-got), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			got++
			ev, err := events.DecodeInput(m.Data())
			if err != nil {
				t.Fatal(err)
			}
			if id := m.Headers().Get(jetstream.MsgIDHeader); id != ev.ID {
				t.Fatalf("Nats-Msg-Id %q, event id %q", id, ev.ID)
			}
			p, dev, err := events.ParseInputSubject(m.Subject())
			if err != nil {
				t.Fatal(err)
			}
			count[ev.Type]++
			switch ev.Type {
			case events.TypeDeviceRegistered:
				if !ev.At.Equal(regAt) || dev != ev.Device || ev.Registered.Group != "grid5000" {
					t.Fatalf("registration %+v on %s", ev, m.Subject())
				}
				if count[events.TypeHeartbeat]+count[events.TypeTick] > 0 {
					t.Fatal("registration after heartbeats or ticks")
				}
			case events.TypeHeartbeat:
				if dev != ev.Device || p != events.Partition(dev, partitions) {
					t.Fatalf("heartbeat of %q on %s", ev.Device, m.Subject())
				}
				if ev.ID != HeartbeatID(dev, ev.At.Unix()) || ev.At.Before(w.From) || !ev.At.Before(w.To) {
					t.Fatalf("heartbeat %+v", ev)
				}
				hbPerNode[dev]++
			case events.TypeTick:
				if m.Subject() != events.TickSubject(p) || ev.ID != "tick-"+strconv.Itoa(p)+"-"+strconv.FormatInt(ev.At.UnixNano(), 10) {
					t.Fatalf("tick %+v on %s", ev, m.Subject())
				}
				tickTimes[p] = append(tickTimes[p], ev.At)
			default:
				t.Fatalf("unexpected %s", ev.Type)
			}
			// Per partition: times never go backwards, and at one time a
			// tick is never followed by a heartbeat.
			l := lastOf[p]
			if ev.At.Before(l.at) || (ev.At.Equal(l.at) && l.isTick && ev.Type != events.TypeTick) {
				t.Fatalf("partition %d: %s at %s after %v", p, ev.Type, ev.At, l)
			}
			lastOf[p] = last{at: ev.At, isTick: ev.Type == events.TypeTick}
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
	}
	if count[events.TypeDeviceRegistered] != len(nodes) || count[events.TypeHeartbeat] != wantHB || count[events.TypeTick] != wantTicks {
		t.Fatalf("counts %v", count)
	}
	for _, n := range nodes {
		if hbPerNode[n.Node] != len(n.Times) {
			t.Fatalf("node %s: %d heartbeats in the stream, want %d", n.Node, hbPerNode[n.Node], len(n.Times))
		}
	}
	for p := 0; p < partitions; p++ {
		ts := tickTimes[p]
		if len(ts) != wantTicks/partitions || !ts[0].Equal(w.From) || !ts[len(ts)-1].Equal(w.To) {
			t.Fatalf("partition %d ticks %d, first %s last %s", p, len(ts), ts[0], ts[len(ts)-1])
		}
	}

	// A second import inside the duplicate window stores nothing new.
	st2, err := Import(ctx, b.JS, nodes, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Duplicates != st2.Events() {
		t.Fatalf("re-import: %d duplicates of %d events", st2.Duplicates, st2.Events())
	}
	info, err = stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int(info.State.Msgs) != st.Events() {
		t.Fatalf("after re-import the stream holds %d messages, want %d", info.State.Msgs, st.Events())
	}
}

func TestImportRefusesBadConfig(t *testing.T) {
	t.Parallel()
	w := win(1000, 2000)
	good := []NodeHeartbeats{{Node: "a/b", Times: []int64{1000, 1030}}}
	cases := map[string]struct {
		nodes []NodeHeartbeats
		cfg   ImportConfig
	}{
		"no partitions":       {good, ImportConfig{Window: w}},
		"no window":           {good, ImportConfig{Partitions: 4}},
		"negative tick":       {good, ImportConfig{Partitions: 4, Window: w, TickEvery: -time.Second}},
		"heartbeat after end": {[]NodeHeartbeats{{Node: "a", Times: []int64{2000}}}, ImportConfig{Partitions: 4, Window: w}},
		"unordered":           {[]NodeHeartbeats{{Node: "a", Times: []int64{1030, 1000}}}, ImportConfig{Partitions: 4, Window: w}},
		"duplicate node":      {append(good, good...), ImportConfig{Partitions: 4, Window: w}},
		"bad id":              {[]NodeHeartbeats{{Node: "a\x00"}}, ImportConfig{Partitions: 4, Window: w}},
	}
	for name, c := range cases {
		if _, err := Import(context.Background(), nil, c.nodes, c.cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: want ErrInvalidConfig, got %v", name, err)
		}
	}
}

func TestTickTimes(t *testing.T) {
	t.Parallel()
	got := TickTimes(win(0, 25), 10*time.Second)
	want := []int64{0, 10, 20, 25}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].Unix() != want[i] {
			t.Fatalf("got %v", got)
		}
	}
	if g := TickTimes(win(0, 20), 10*time.Second); len(g) != 3 || g[2].Unix() != 20 {
		t.Fatalf("got %v", g)
	}
}

// TestImportDay imports the whole committed day (3.1 M heartbeats) and
// reports the rate. Opt-in: DEVICESIM_IMPORT_DAY=1.
func TestImportDay(t *testing.T) {
	if os.Getenv("DEVICESIM_IMPORT_DAY") == "" {
		t.Skip("set DEVICESIM_IMPORT_DAY=1 to import the whole day")
	}
	b := testenv.NATS(t, bus.Config{Partitions: 16})
	tr, err := Open(TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	w := TestdataDayWindow()
	st, err := Import(context.Background(), b.JS, tr.Heartbeats(w, 0), ImportConfig{Partitions: 16, Window: w, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("day %s: %d events (%d heartbeats, %d ticks, %d registrations) in %s: %.0f events/s",
		w, st.Events(), st.Heartbeats, st.Ticks, st.Registered, st.Elapsed, st.EventsPerSecond())
}
