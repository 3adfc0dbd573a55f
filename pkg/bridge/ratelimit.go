package bridge

import (
	"encoding/base64"
	"hash/fnv"
	"hash/maphash"
	"strconv"
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
// log of the accepted times of the last minute (at most N = RatePerMinute,
// 8 bytes each; entries a minute old are pruned, they limit nothing).
//
// Boundaries: a heartbeat exactly RateMinInterval after the last accepted
// one is accepted; the (N+1)th heartbeat is accepted exactly one minute after
// the first of the last N. Refused heartbeats do not count. A heartbeat whose
// publish fails gives its slot back (cancel), so a device that got 503 may
// retry at once.
//
// This limiter is exact for the heartbeats one bridge instance sees. Across
// instances the shared guard is the rate window (see windowID): the bridge
// publishes each heartbeat with a Nats-Msg-Id derived from the device and the
// RateMinInterval-long window of the bridge clock it falls in, so JetStream's
// duplicate window refuses a second heartbeat of the same device in the same
// window whichever instance sends it (PubAck.Duplicate → 429, nothing stored).
// rebase then records the refusal locally. Across instances this bounds a
// device to one heartbeat per aligned window, so to at most
// ceil(1 min / RateMinInterval) + 1 per rolling minute (7 with the defaults,
// within RatePerMinute = 10); the exact spacing holds per instance (two
// instances may accept 9.99 s and 10.00 s). The per-minute limit holds across
// instances only when that bound is within it; with RateMinInterval off
// there is no window at all: route by device id then. Cost: none measurable
// (heartbeats always carried a Nats-Msg-Id); a KV compare-and-swap per
// heartbeat would have added a round trip (docs/performance.md).
//
// Memory: only devices that heartbeated within the last max(RateMinInterval,
// 1 minute) hold state; sweep drops the others, which is exact because their
// state no longer limits anything. docs/performance.md has the measured
// bytes per device and cost per call at 1 000 000 devices.
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
		// Drop the accepted times a window old or older: they limit nothing
		// (when the log is full its oldest is among them, checked above).
		k := 0
		for k < len(d.times) && n-d.times[k] >= int64(window) {
			k++
		}
		if k > 0 {
			d.times = append(d.times[:0], d.times[k:]...)
		}
		d.times = append(d.times, n)
	}
	return t, 0, true
}

// rebase moves an accepted heartbeat's time back to at (at <= its time): used
// when the shared rate window refused it because another bridge instance
// accepted one of the device's heartbeats in the same window, at or after
// the window's start. Recording the window's start keeps this instance
// consistent with the answer's Retry-After (the window's end) without ever
// holding the device longer than the shared guard does.
func (l *limiter) rebase(t ticket, at int64) { l.undo(t, max(at, t.prevLast), false) }

// undo takes ticket t back: the device's last accepted time, when it is
// still t's, becomes last, and t's entry in the log is moved to last (drop
// false) or removed (drop true; a device left with no state is forgotten).
func (l *limiter) undo(t ticket, last int64, drop bool) {
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
		d.last = last
	}
	for i := len(d.times) - 1; i >= 0; i-- {
		if d.times[i] == t.at {
			if drop {
				d.times = append(d.times[:i], d.times[i+1:]...)
			} else {
				// Earlier entries are at least RateMinInterval older than
				// t.at, so before the window's start: the log stays in order.
				d.times[i] = last
			}
			break
		}
	}
	if drop && !t.hadPrev && len(d.times) == 0 && d.last == 0 {
		delete(s.m, t.id)
	}
}

// windowID returns the Nats-Msg-Id of a heartbeat of device id at time now
// (the bridge clock), and the end of its rate window, for the shared guard:
// "rw-<128-bit FNV-1a of the id, base64url>-<window number>", where the
// window number is now / RateMinInterval (Unix time). Two heartbeats at least
// RateMinInterval apart always fall in different windows, so the guard never
// refuses what the exact limiter accepts. ok is false when RateMinInterval is
// off (heartbeats then keep their random event id).
func (l *limiter) windowID(id string, now time.Time) (msgID string, end time.Time, ok bool) {
	if l.minInterval <= 0 {
		return "", time.Time{}, false
	}
	n := now.UnixNano()
	w := n / l.minInterval
	if n < 0 && n%l.minInterval != 0 {
		w-- // floor for times before 1970 (a test clock)
	}
	h := fnv.New128a()
	_, _ = h.Write([]byte(id))
	var sum [16]byte
	b := make([]byte, 0, 48)
	b = append(b, "rw-"...)
	b = base64.RawURLEncoding.AppendEncode(b, h.Sum(sum[:0]))
	b = append(b, '-')
	b = strconv.AppendInt(b, w, 10)
	return string(b), time.Unix(0, (w+1)*l.minInterval).UTC(), true
}

// cancel gives back the slot of an accepted heartbeat that was not published.
func (l *limiter) cancel(t ticket) { l.undo(t, t.prevLast, true) }

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
