package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// lineCounter is a slog handler that keeps the "transition" lines (by
// device, cause, from and to) and passes warnings on to the test log.
type lineCounter struct {
	mu    *sync.Mutex
	lines map[string]int
	next  slog.Handler
}

func (h lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h lineCounter) WithAttrs(as []slog.Attr) slog.Handler {
	h.next = h.next.WithAttrs(as)
	return h
}
func (h lineCounter) WithGroup(g string) slog.Handler { h.next = h.next.WithGroup(g); return h }
func (h lineCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message != "transition" {
		if r.Level >= slog.LevelWarn {
			return h.next.Handle(ctx, r)
		}
		return nil
	}
	a := map[string]string{}
	r.Attrs(func(x slog.Attr) bool { a[x.Key] = x.Value.String(); return true })
	h.mu.Lock()
	h.lines[a["device"]+"/"+a["cause_seq"]+"/"+a["from"]+">"+a["to"]]++
	h.mu.Unlock()
	return nil
}

func (h lineCounter) count() (total int, dups []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, n := range h.lines {
		total += n
		if n > 1 {
			dups = append(dups, k)
		}
	}
	return total, dups
}

// Issue 13, bug 2: one "transition" line per transition stored, none for a
// transition not stored, even when runs end in the middle of a burst (lost
// lease, cancelled context, fenced by another run of the same partition).
// Two workers of one identity take the partition from each other over and
// over (each takeover ends the other's run on its next renewal) while a
// burst is published: both publish concurrently between takeovers.
func TestOneLogLinePerPublishedTransition(t *testing.T) {
	if testing.Short() {
		t.Skip("a burst of thousands of transitions")
	}
	const ttl = time.Second
	b := testenv.NATS(t, bus.Config{Partitions: 1, LeaseTTL: ttl})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const devices = 600
	for i := 0; i < devices; i++ {
		id := fmt.Sprintf("dev-%04d", i)
		p.register(id, "", t0)
		p.heartbeat(id, t0)
	}
	lc := lineCounter{mu: &sync.Mutex{}, lines: map[string]int{}, next: testenv.Logger(t).Handler()}
	var stops []func()
	for range 2 {
		w, err := New(Config{Bus: b, InstanceID: "twin", Logger: slog.New(lc), SnapshotInterval: 20 * time.Millisecond, LeaseTTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		stop := testenv.Start(t, w.Run)
		stops = append(stops, stop)
	}
	// Ticks: every device goes temporarily_offline, then disconnected.
	for s := 41; s <= 341; s += 20 {
		p.tick(t0.Add(time.Duration(s) * time.Second))
	}
	want := 3 * devices
	stored := func() int {
		st, err := b.JS.Stream(context.Background(), events.TransitionStream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return int(info.State.Msgs)
	}
	// Both run (and take the partition from each other) until half the
	// burst is stored, then one stops and the other finishes alone.
	deadline := time.Now().Add(60 * time.Second)
	for n := 0; n < want; n = stored() {
		if n >= want/2 {
			stops[0]()
		}
		if time.Now().After(deadline) {
			per := map[string][]string{}
			for _, tr := range transitions(t, b, 0) {
				per[tr.Device] = append(per[tr.Device], fmt.Sprintf("%s>%s@%d", tr.From, tr.To, tr.Cause.Seq))
			}
			for d, trs := range per {
				if len(trs) != 3 {
					t.Errorf("device %s: %v", d, trs)
				}
			}
			t.Fatalf("%d transitions stored after 60s, want %d", n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := transitions(t, b, want)
	if len(got) != want {
		t.Fatalf("%d transitions in the stream, want %d", len(got), want)
	}
	inStream := map[string]bool{}
	for _, tr := range got {
		k := fmt.Sprintf("%s/%d/%s>%s", tr.Device, tr.Cause.Seq, tr.From, tr.To)
		if inStream[k] {
			t.Fatalf("transition %s stored twice", k)
		}
		inStream[k] = true
	}
	for _, stop := range stops {
		stop()
	}
	total, dups := lc.count()
	if len(dups) > 0 {
		t.Fatalf("%d transitions logged more than once, e.g. %s", len(dups), dups[0])
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	for k := range lc.lines {
		if !inStream[k] {
			t.Fatalf("logged %s, which is not in the stream", k)
		}
	}
	if total != want {
		missing := 0
		for k := range inStream {
			if lc.lines[k] == 0 {
				missing++
			}
		}
		t.Fatalf("%d transition lines for %d transitions stored (%d without a line)", total, want, missing)
	}
}
