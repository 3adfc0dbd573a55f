// Package clock is the only place devstatus reads the time. Components that
// stamp events take a [Clock]; tests pass a [Fake]. The state machine takes no
// clock at all: time reaches it only inside events.
package clock

import (
	"sync"
	"time"
)

// Clock tells the time.
type Clock interface {
	// Now returns the current time in UTC.
	Now() time.Time
}

// Monotonic is a wall clock that never steps: it reads the wall clock once, at
// construction, and then advances with the monotonic clock. A wall-clock step
// on the host (NTP correction, an operator's date command, a VM resume) does
// not move it, so event times from one process never go backwards and never
// jump (as Kubernetes does, silence is measured with the observer's clock). It
// drifts from the wall clock by the host's clock error over the process life,
// which NTP keeps to milliseconds per day.
type Monotonic struct {
	base time.Time // carries a monotonic reading
}

// NewMonotonic anchors a Monotonic clock at the current wall time.
func NewMonotonic() *Monotonic { return &Monotonic{base: time.Now()} }

// Now returns base + monotonic time elapsed since construction, in UTC.
func (m *Monotonic) Now() time.Time {
	return m.base.Round(0).Add(time.Since(m.base)).UTC()
}

// Fake is a settable clock for tests. Safe for concurrent use.
type Fake struct {
	mu sync.Mutex
	t  time.Time
}

// NewFake returns a Fake reading t.
func NewFake(t time.Time) *Fake { return &Fake{t: t.UTC()} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

// Set moves the fake clock to t (backwards too).
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	f.t = t.UTC()
	f.mu.Unlock()
}

// Advance moves the fake clock by d.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}
