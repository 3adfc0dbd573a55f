package bridge

import (
	"hash/maphash"
	"sync"
	"time"
)

// window is the span of the per-minute limit.
const window = time.Minute

// limiter enforces, per device, a minimum interval between accepted
// heartbeats and a maximum number of accepted heartbeats in any window of one
// minute, both measured with the bridge's injected clock (the time it stamps
// events with).
//
// Why not golang.org/x/time/rate: a token bucket cannot express "at most N in
// any minute" (with burst N it lets through up to 2N in one minute, with
// burst 1 it forbids any burst), and its float token arithmetic makes the
// boundary "exactly RateMinInterval after the last accepted heartbeat is
// accepted" depend on rounding for intervals such as 49 s. This limiter keeps
// integer nanoseconds: the time of the last accepted heartbeat and a sliding
// log of the last N accepted times (N = RatePerMinute, 8 bytes each).
//
// Boundaries: a heartbeat exactly RateMinInterval after the last accepted
// one is accepted; the (N+1)th heartbeat is accepted exactly one minute after
// the first of the last N. Refused heartbeats do not count. A heartbeat whose
// publish fails gives its slot back (cancel), so a device that got 503 may
// retry at once.
//
// Memory: only devices that heartbeated within the last max(RateMinInterval,
// 1 minute) hold state (~200 bytes); sweep drops the others, which is exact
// because their state no longer limits anything.
type limiter struct {
	minInterval int64 // ns, 0 = off
	perMinute   int   // 0 = off
	seed        maphash.Seed
	shards      [64]limShard
}

type limShard struct {
	mu sync.Mutex
	m  map[string]*devLimit
}

type devLimit struct {
	last  int64   // Unix ns (bridge clock) of the last accepted heartbeat
	times []int64 // accepted times, oldest first, at most perMinute
}

// ticket identifies one accepted heartbeat for cancel.
type ticket struct {
	id       string
	at       int64
	prevLast int64
	hadPrev  bool
}

func newLimiter(minInterval time.Duration, perMinute int) *limiter {
	l := &limiter{minInterval: int64(minInterval), perMinute: perMinute, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = make(map[string]*devLimit)
	}
	return l
}

func (l *limiter) off() bool { return l.minInterval <= 0 && l.perMinute <= 0 }

func (l *limiter) shard(id string) *limShard {
	return &l.shards[maphash.String(l.seed, id)%uint64(len(l.shards))]
}

// allow accepts or refuses a heartbeat of device id at time now (the
// bridge's clock).
// Refused: ok false and how long until one would be accepted.
func (l *limiter) allow(id string, now time.Time) (t ticket, retryAfter time.Duration, ok bool) {
	if l.off() {
		return ticket{}, 0, true
	}
	n := now.UnixNano()
	s := l.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.m[id]
	if d == nil {
		d = &devLimit{}
		s.m[id] = d
	} else if n < d.last {
		// The clock stepped back since this device's last accepted heartbeat
		// (clock.Monotonic never does; an injected wall clock might). The
		// gap cannot be measured, so the device is not held to it: its state
		// restarts from now (elapsed time is clamped, never negative) and the
		// heartbeat is accepted, rather than locking the device out until
		// the clock catches up.
		d.last, d.times = 0, d.times[:0]
	} else {
		var wait int64
		if l.minInterval > 0 && n-d.last < l.minInterval {
			wait = d.last + l.minInterval - n
		}
		if l.perMinute > 0 && len(d.times) >= l.perMinute {
			if oldest := d.times[len(d.times)-l.perMinute]; n-oldest < int64(window) {
				wait = max(wait, oldest+int64(window)-n)
			}
		}
		if wait > 0 {
			return ticket{}, time.Duration(wait), false
		}
	}
	t = ticket{id: id, at: n, prevLast: d.last, hadPrev: len(d.times) > 0 || d.last != 0}
	d.last = n
	if l.perMinute > 0 {
		if len(d.times) >= l.perMinute {
			// The oldest is at least a window old (checked above): it limits nothing.
			copy(d.times, d.times[1:])
			d.times = d.times[:len(d.times)-1]
		}
		d.times = append(d.times, n)
	}
	return t, 0, true
}

// cancel gives back the slot of an accepted heartbeat that was not published.
func (l *limiter) cancel(t ticket) {
	if l.off() || t.id == "" {
		return
	}
	s := l.shard(t.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.m[t.id]
	if d == nil {
		return
	}
	if d.last == t.at {
		d.last = t.prevLast
	}
	for i := len(d.times) - 1; i >= 0; i-- {
		if d.times[i] == t.at {
			d.times = append(d.times[:i], d.times[i+1:]...)
			break
		}
	}
	if !t.hadPrev && len(d.times) == 0 && d.last == 0 {
		delete(s.m, t.id)
	}
}

// sweep drops the state of devices idle long enough that it limits nothing.
// It returns the number of devices still tracked.
func (l *limiter) sweep(now time.Time) int {
	if l.off() {
		return 0
	}
	idle := l.minInterval
	if l.perMinute > 0 {
		idle = max(idle, int64(window))
	}
	n := now.UnixNano()
	total := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for id, d := range s.m {
			if n-d.last >= idle {
				delete(s.m, id)
			}
		}
		total += len(s.m)
		s.mu.Unlock()
	}
	return total
}
