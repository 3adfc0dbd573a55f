package bridge

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
)

// statusCache holds, per device, the status the partition worker last
// decided and the transitions-stream sequence of that decision, plus the
// sequence of the offline transition whose comeback this instance knows was
// already signalled (a local memo; the authority is the registry entry's
// ComebackSeq, raised by compare-and-swap by reconnect.go, so the
// comeback is signalled once across every bridge instance). It is fed by an
// ordered consumer on the transitions stream that starts with the last
// transition of every device (DeliverLastPerSubjectPolicy) and then follows
// new ones. Its watchdog replaces the consumer when it has transitions
// pending without delivering them (connected but stalled).
// Memory: ~100 bytes per device that ever had a transition.
type statusCache struct {
	mu         sync.Mutex
	m          map[string]*devStatus
	ready      atomic.Bool   // initial catch-up done
	alive      atomic.Bool   // a consumer is running and not stalled
	checkEvery time.Duration // stall check period
	follower   *bus.Follower // feeds the cache (newFollower)
}

type devStatus struct {
	status    events.Status
	seq       uint64 // transitions-stream sequence of status
	signalled uint64 // seq whose comeback was signalled
}

func newStatusCache(checkEvery time.Duration) *statusCache {
	return &statusCache{m: make(map[string]*devStatus), checkEvery: checkEvery}
}

// apply records a transition unless a newer one is known.
func (c *statusCache) apply(device string, to events.Status, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.m[device]
	if d == nil {
		c.m[device] = &devStatus{status: to, seq: seq}
		return
	}
	if seq > d.seq {
		d.status, d.seq = to, seq
	}
}

// forHeartbeat returns the device's last decided status (registered when
// none) and, when that status is temporarily_offline or disconnected and
// this instance has not yet seen its comeback signalled, the sequence of the
// transition that decided it (the comeback candidate for reconnect.go);
// else 0.
func (c *statusCache) forHeartbeat(device string) (events.Status, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.m[device]
	if d == nil {
		return events.StatusRegistered, 0
	}
	if (d.status == events.StatusTemporarilyOffline || d.status == events.StatusDisconnected) && d.signalled < d.seq {
		return d.status, d.seq
	}
	return d.status, 0
}

// markSignalled records that the comeback from the transition at seq was
// signalled (by this or another instance): no further Deliver for it.
func (c *statusCache) markSignalled(device string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.m[device]; d != nil && seq > d.signalled {
		d.signalled = seq
	}
}

func (c *statusCache) get(device string) (events.Status, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.m[device]; d != nil {
		return d.status, true
	}
	return events.StatusRegistered, false
}

func (c *statusCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// newFollower makes the follower of the transitions stream that feeds c:
// it starts with the last transition of every device, then follows new
// ones; a consumer that fails or stalls (transitions pending, none
// delivered for two check intervals) is replaced, continuing after the last
// transition applied.
func (c *statusCache) newFollower(js jetstream.JetStream, log *slog.Logger) error {
	f, err := bus.NewFollower(bus.FollowConfig{
		Name:           "bridge-status",
		JetStream:      js,
		Stream:         events.TransitionStream,
		FilterSubjects: []string{events.TransitionSubjects},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		StallTimeout:   2 * c.checkEvery,
		Logger:         log,
		OnCaughtUp:     func() { c.ready.Store(true) },
		OnSession:      func(up bool, _ error) { c.alive.Store(up) },
		Handle: func(_ context.Context, m *bus.Msg) error {
			sc, err := events.DecodeStatusChanged(m.Data)
			if err != nil {
				log.Warn("bridge: undecodable transition skipped", slog.Uint64("seq", m.Seq), slog.Any("err", err))
			} else {
				c.apply(sc.Device, sc.To, m.Seq)
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	c.follower = f
	return nil
}

// feed follows the transitions stream until ctx ends.
func (c *statusCache) feed(ctx context.Context) { _ = c.follower.Run(ctx) }

// appliedSeq is the transitions-stream sequence of the last transition
// applied (0: none yet).
func (c *statusCache) appliedSeq() uint64 {
	return c.follower.LastSeq()
}

// stallCount counts transitions consumers replaced because they stalled.
func (c *statusCache) stallCount() uint64 {
	return c.follower.Stalls()
}
