package load

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countSender counts what it is asked to send.
type countSender struct {
	mu     *sync.Mutex
	counts map[int]int
	closed *atomic.Int64
}

func (s countSender) send(_ *phaseStats, i int) {
	s.mu.Lock()
	s.counts[i]++
	s.mu.Unlock()
}

func (s countSender) close() { s.closed.Add(1) }

func newCounters(n int) ([]sender, map[int]int, *sync.Mutex, *atomic.Int64) {
	var mu sync.Mutex
	var closed atomic.Int64
	counts := map[int]int{}
	out := make([]sender, n)
	for i := range out {
		out[i] = countSender{&mu, counts, &closed}
	}
	return out, counts, &mu, &closed
}

func TestPoolEachSendsEveryItemOnce(t *testing.T) {
	t.Parallel()
	senders, counts, _, closed := newCounters(7)
	pool(senders, &phaseStats{}, each(context.Background(), 1000))
	if len(counts) != 1000 || closed.Load() != 7 {
		t.Fatalf("%d items sent, %d senders closed", len(counts), closed.Load())
	}
	for i, c := range counts {
		if c != 1 || i < 0 || i >= 1000 {
			t.Fatalf("item %d sent %d times", i, c)
		}
	}
	// A canceled context sends nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	senders, counts, _, _ = newCounters(3)
	pool(senders, &phaseStats{}, each(ctx, 10))
	if len(counts) != 0 {
		t.Fatalf("sent %d after the end", len(counts))
	}
}

func TestRoundRobinCyclesUntilTheEnd(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	next := roundRobin(ctx, 5)
	first, _ := next()
	for k := 1; k < 12; k++ {
		i, ok := next()
		if !ok || i != (first+k)%5 {
			t.Fatalf("item %d: %d %v, want %d", k, i, ok, (first+k)%5)
		}
	}
	cancel()
	if _, ok := next(); ok {
		t.Fatal("still yielding after the end")
	}
}

// TestOpenLoopOffersTheRate: 2 000 items/s for 300 ms over 50 items are
// about 600 sends, spread evenly over the items, and skip drops what it
// says.
func TestOpenLoopOffersTheRate(t *testing.T) {
	t.Parallel()
	senders, counts, mu, closed := newCounters(4)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var skipped atomic.Int64
	ps := &phaseStats{}
	openLoop(ctx, senders, ps, 2000, 50, func(k, i int, since time.Duration, _ time.Time) bool {
		if since != time.Duration(k)*time.Second/2000 {
			t.Errorf("item %d due at %s", k, since)
		}
		if i == 7 {
			skipped.Add(1)
			return true
		}
		return false
	})
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, c := range counts {
		total += c
	}
	if closed.Load() != 4 || counts[7] != 0 || skipped.Load() == 0 {
		t.Fatalf("closed %d, item 7 sent %d times, skipped %d", closed.Load(), counts[7], skipped.Load())
	}
	// The schedule is due-time based, so a starved scheduler catches up;
	// only the end of the context cuts it: at most 2000 × 0.3 s.
	if total > 600 || total < 100 {
		t.Fatalf("sent %d in 300 ms at 2000/s", total)
	}
	lo, hi := total, 0
	for i := range 50 {
		if i != 7 {
			lo, hi = min(lo, counts[i]), max(hi, counts[i])
		}
	}
	if hi-lo > 1 {
		t.Fatalf("items sent between %d and %d times: not round robin", lo, hi)
	}
}

func TestWaitForPollsUntilTheCondition(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	waitFor(context.Background(), time.Minute, time.Millisecond, func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Fatalf("condition read %d times", n.Load())
	}
	if d := waitFor(context.Background(), 30*time.Millisecond, 5*time.Millisecond, func() bool { return false }); d < 30*time.Millisecond {
		t.Fatalf("gave up after %s, before the limit", d)
	}
}
