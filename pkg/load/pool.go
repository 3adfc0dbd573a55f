package load

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// sender sends the request of item i (a device's heartbeat, a gateway's
// batch, a registration) on a connection of its own and records the outcome
// in ps. One goroutine owns a sender.
type sender interface {
	send(ps *phaseStats, i int)
	close()
}

// pool is the worker pool of every phase: one goroutine per sender, each
// sending the items next yields until it yields false; it returns when all
// are done, every sender closed. next must be safe for concurrent use: it
// says what the phase sends ([each], [roundRobin], [openLoop]'s queue).
func pool(senders []sender, ps *phaseStats, next func() (int, bool)) {
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Go(func() {
			defer s.close()
			for i, ok := next(); ok; i, ok = next() {
				s.send(ps, i)
			}
		})
	}
	wg.Wait()
}

// each yields 0 … n−1 once each (a warm-up, a registration), and nothing
// more once ctx ends.
func each(ctx context.Context, n int) func() (int, bool) {
	var k atomic.Int64
	return func() (int, bool) {
		i := int(k.Add(1) - 1)
		return i, i < n && ctx.Err() == nil
	}
}

// roundRobin yields 0 … n−1 over and over, from a random one, until ctx
// ends: a closed loop, every sender sending again as soon as it has its
// answer.
func roundRobin(ctx context.Context, n int) func() (int, bool) {
	var k atomic.Int64
	k.Store(rand.Int64N(int64(n)))
	return func() (int, bool) { return int(k.Add(1) % int64(n)), ctx.Err() == nil }
}

// openLoop offers rate items per second to senders until ctx ends: item k
// is due at start + k/rate and is index (off + k) mod n, off random (so that
// consecutive phases do not resend the same items first). skip, when not
// nil, drops item k of index i, due at since after the start, at the
// scheduler's time now. A sender that takes an item after its due time
// records the lateness in ps. Items still queued when ctx ends are dropped.
func openLoop(ctx context.Context, senders []sender, ps *phaseStats, rate float64, n int, skip func(k, i int, since time.Duration, now time.Time) bool) {
	type job struct {
		i   int
		due time.Time
	}
	q := make(chan job, 4*len(senders))
	var workers sync.WaitGroup
	workers.Go(func() {
		pool(senders, ps, func() (int, bool) {
			for j := range q {
				if ctx.Err() != nil {
					continue
				}
				if late := time.Since(j.due); late > 0 {
					ps.late(late)
				}
				return j.i, true
			}
			return 0, false
		})
	})
	defer func() { close(q); workers.Wait() }()
	start := time.Now()
	off := rand.IntN(n)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for k := 0; ; {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-tick.C:
		}
		for due := int(now.Sub(start).Seconds() * rate); k < due; k++ {
			i := (off + k) % n
			since := time.Duration(float64(k) / rate * float64(time.Second))
			if skip != nil && skip(k, i, since, now) {
				continue
			}
			select {
			case q <- job{i, start.Add(since)}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// waitFor polls cond every poll until it holds, limit passed or ctx ended,
// and returns how long it waited.
func waitFor(ctx context.Context, limit, poll time.Duration, cond func() bool) time.Duration {
	start := time.Now()
	t := time.NewTicker(poll)
	defer t.Stop()
	for time.Since(start) < limit && !cond() {
		select {
		case <-ctx.Done():
			return time.Since(start)
		case <-t.C:
		}
	}
	return time.Since(start)
}
