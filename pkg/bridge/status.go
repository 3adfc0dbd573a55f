package bridge

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

// statusCache holds, per device, the status the partition worker last
// decided and the transitions-stream sequence of that decision, plus the
// sequence of the offline transition whose comeback this instance knows was
// already signalled (a local memo; the authority is the registry entry's
// ComebackSeq, raised by compare-and-swap in registry.Deliver, so the
// comeback is signalled once across every bridge instance). It is fed by an
// ordered consumer on the transitions stream that starts with the last
// transition of every device (DeliverLastPerSubjectPolicy) and then follows
// new ones. A watchdog (checkFeed) restarts the consumer when it falls
// behind the stream without moving (connected but stalled).
// Memory: ~100 bytes per device that ever had a transition.
type statusCache struct {
	mu         sync.Mutex
	m          map[string]*devStatus
	ready      atomic.Bool   // initial catch-up done
	alive      atomic.Bool   // a consumer is running and not stalled
	applied    atomic.Uint64 // transitions-stream sequence of the last transition applied
	stalls     atomic.Uint64 // consumers dropped as stalled
	checkEvery time.Duration // stall check period
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
// transition that decided it (the comeback candidate for registry.Deliver);
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

// feed runs the transitions consumer until ctx ends, re-creating it when it
// stops or stalls (continuing after the last sequence it applied; the ordered
// consumer itself also resumes after reconnects).
func (c *statusCache) feed(ctx context.Context, js jetstream.JetStream, log *slog.Logger) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.consumeOnce(ctx, js, log)
		c.alive.Store(false)
		if ctx.Err() != nil {
			return
		}
		log.Warn("bridge: transitions feed stopped; retrying", slog.Any("err", err), slog.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

var errFeedStalled = errors.New("transitions feed stalled")

func (c *statusCache) consumeOnce(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.TransitionSubjects},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	}
	if last := c.applied.Load(); last > 0 {
		// A re-created feed continues after what it applied.
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = last + 1
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	stream, err := js.Stream(cctx, events.TransitionStream)
	if err != nil {
		cancel()
		return err
	}
	cons, err := stream.OrderedConsumer(cctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		c.ready.Store(true)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			log.Warn("bridge: transition without metadata", slog.Any("err", err))
			return
		}
		sc, err := events.DecodeStatusChanged(m.Data())
		if err != nil {
			log.Warn("bridge: undecodable transition skipped", slog.Uint64("seq", md.Sequence.Stream), slog.Any("err", err))
		} else {
			c.apply(sc.Device, sc.To, md.Sequence.Stream)
		}
		c.applied.Store(md.Sequence.Stream)
		if md.NumPending == 0 {
			c.ready.Store(true)
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if !errors.Is(err, jetstream.ErrNoHeartbeat) {
			log.Debug("bridge: transitions feed", slog.Any("err", err))
		}
	}))
	if err != nil {
		return err
	}
	c.alive.Store(true)
	defer cc.Stop()
	check := time.NewTicker(c.checkEvery)
	defer check.Stop()
	var stall stallCheck
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-cc.Closed():
			return errors.New("transitions consumer closed")
		case <-check.C:
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := stream.Info(ictx)
			cancel()
			if err != nil {
				continue // the bus is down: readiness already says so, the consumer resumes itself
			}
			// Messages removed before this feed saw them cannot be waited for.
			seen := max(c.applied.Load(), info.State.FirstSeq-min(info.State.FirstSeq, 1))
			head := info.State.LastSeq
			if info.State.Msgs == 0 {
				head = seen
			}
			if stall.observe(seen, head) {
				c.stalls.Add(1)
				log.Warn("bridge: transitions feed stalled (connected, behind the stream and not moving); re-creating it",
					slog.Uint64("applied", seen), slog.Uint64("stream_last", head))
				return errFeedStalled
			}
		}
	}
}

// stallCheck detects a follower that is connected but stalled: behind the
// head it follows at two consecutive checks without having moved in
// between (nats.go #1729: a consumer that stops delivering after a broker
// restart). A busy follower moves; a caught-up one is not behind. Detection
// takes one to two check intervals.
type stallCheck struct {
	prevSeen uint64
	behind   bool
}

func (s *stallCheck) observe(seen, head uint64) bool {
	behind := head > seen
	stalled := behind && s.behind && seen == s.prevSeen
	s.prevSeen, s.behind = seen, behind
	return stalled
}
