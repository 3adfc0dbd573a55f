package readapi

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/projections"
)

// countingReader serves one device with a settable status sequence.
type countingReader struct {
	nilReader
	seq   atomic.Int64
	reads atomic.Int64
}

func (r *countingReader) Device(_ context.Context, id string) (*projections.Device, error) {
	r.reads.Add(1)
	return &projections.Device{ID: id, Status: events.StatusConnected, StatusSeq: r.seq.Load()}, nil
}

func TestCacheSequenceInvalidation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := &countingReader{}
	r.seq.Store(5)
	c, err := NewCache(CacheConfig{Store: r, TTL: time.Hour, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Device(ctx, "A"); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.reads.Load(); n != 1 {
		t.Fatalf("%d store reads for 3 cached reads, want 1", n)
	}
	mustDevice(t, c, "B")
	// A transition of A at 7 the projection has not applied yet: reads go to
	// the store and are not kept until the store has seq 7.
	c.Invalidate("A", 7)
	mustDevice(t, c, "A")
	mustDevice(t, c, "A")
	if n := r.reads.Load(); n != 4 {
		t.Fatalf("%d store reads, want 4 (B once, A twice while the store lags)", n)
	}
	r.seq.Store(7)
	mustDevice(t, c, "A")
	mustDevice(t, c, "A")
	if n := r.reads.Load(); n != 5 {
		t.Fatalf("%d store reads, want 5 (cached again once the store caught up)", n)
	}
	// B was not touched by A's invalidation (still cached); a third device
	// evicts the least recently used one (B).
	before := r.reads.Load()
	mustDevice(t, c, "B")
	if r.reads.Load() != before {
		t.Error("B re-read after A's transition: invalidation is not scoped")
	}
	mustDevice(t, c, "A")
	mustDevice(t, c, "C")
	mustDevice(t, c, "B")
	if r.reads.Load() != before+2 {
		t.Errorf("LRU: %d reads, want %d", r.reads.Load(), before+2)
	}
	if st := c.Stats(); st.Hits == 0 || st.Misses == 0 || st.Invalidations != 1 || st.Evictions != 2 {
		t.Errorf("stats %+v", st)
	}
}

// Through the real stream: a cached device shows its new status as soon as
// the projection has it, while liveness changes wait for the TTL.
func TestCacheFollowsTransitions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	c := runCache(t, f, CacheConfig{TTL: time.Hour})

	f.register(t, "A", "g")
	in := f.register(t, "B", "g")
	tr := f.transition(t, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	f.wait(t, in, tr)
	a, err := c.Device(ctx, "A")
	if err != nil || a.Status != events.StatusConnected {
		t.Fatalf("A: %+v %v", a, err)
	}
	if _, err := c.Device(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	in = f.heartbeat(t, "A", 50, "")
	tr = f.transition(t, "A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 41)
	f.wait(t, in, tr)
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, err := c.Device(ctx, "A")
		if err != nil {
			t.Fatal(err)
		}
		if a.Status == events.StatusTemporarilyOffline {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cached A never showed its transition")
		}
		time.Sleep(5 * time.Millisecond)
	}
	misses := c.Stats().Misses
	if _, err := c.Device(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	if m := c.Stats().Misses; m != misses {
		t.Error("B was re-read: A's transition flushed more than A")
	}
}

func mustDevice(t *testing.T, c *Cache, id string) {
	t.Helper()
	if _, err := c.Device(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

// Through the real transitions stream, with room for two entries: however
// many transitions device B has (and however many other devices change),
// device A stays cached; A's own transition drops A's entry, and the next
// read of A shows the new status.
func TestCacheTransitionOfBNeverEvictsA(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	c := runCache(t, f, CacheConfig{TTL: time.Hour, MaxEntries: 2, MaxTombstones: 4})

	f.register(t, "A", "g")
	in := f.register(t, "B", "g")
	tr := f.transition(t, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	f.wait(t, in, tr)
	mustDevice(t, c, "A")
	st := c.Stats()
	if st.Entries != 1 || st.Misses != 1 {
		t.Fatalf("after reading A: %+v", st)
	}
	// B flaps 20 times, 10 other devices change once; B is also read in between.
	states := []events.Status{events.StatusConnected, events.StatusTemporarilyOffline}
	var last uint64
	for i := range 20 {
		last = f.transition(t, "B", states[i%2], states[1-i%2], events.ReasonHeartbeatTimeout, float64(2+i))
		if i%5 == 0 {
			f.wait(t, in, last)
			mustDevice(t, c, "B")
		}
	}
	for i := range 10 {
		last = f.transition(t, fmt.Sprintf("other-%d", i), events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 30)
	}
	f.wait(t, in, last)
	waitFed := func(seq uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for c.FedSeq() < seq {
			if time.Now().After(deadline) {
				t.Fatalf("the cache did not follow the stream to %d (at %d)", seq, c.FedSeq())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFed(last)
	if st := c.Stats(); st.Invalidations < 4 {
		t.Errorf("B's reads were not invalidated by B's transitions: %+v", st)
	}
	before := c.Stats()
	a, err := c.Device(ctx, "A")
	if err != nil || a.Status != events.StatusConnected {
		t.Fatalf("A: %+v %v", a, err)
	}
	if after := c.Stats(); after.Hits != before.Hits+1 || after.Misses != before.Misses {
		t.Fatalf("A was not served from the cache after B's transitions: %+v → %+v", before, after)
	}
	if c.Stats().Evictions != 0 {
		t.Errorf("evictions: %+v (only A and B were ever cached)", c.Stats())
	}

	// A's own transition drops A (and only A).
	inv := c.Stats().Invalidations
	last = f.transition(t, "A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 50)
	f.wait(t, in, last)
	waitFed(last)
	if c.Stats().Invalidations != inv+1 {
		t.Fatalf("A's transition did not invalidate A: %+v", c.Stats())
	}
	misses := c.Stats().Misses
	a, err = c.Device(ctx, "A")
	if err != nil || a.Status != events.StatusTemporarilyOffline {
		t.Fatalf("A after its transition: %+v %v", a, err)
	}
	if c.Stats().Misses != misses+1 {
		t.Errorf("A was not re-read after its own transition")
	}
}

// runCache runs a cache with cfg over f's store and bus until the test ends.
func runCache(t *testing.T, f *fixture, cfg CacheConfig) *Cache {
	t.Helper()
	cfg.Store, cfg.JetStream, cfg.Logger = projections.NewStore(f.db), f.js, testenv.Logger(t)
	c, err := NewCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, c.Run)
	return c
}
