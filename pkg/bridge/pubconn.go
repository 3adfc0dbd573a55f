package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
)

// pubConnCount is the number of connections of its own the bridge
// publishes input events on, with the embedded NATS server.
const pubConnCount = 4

// pubConns are in-process connections to the embedded NATS server that the
// bridge publishes input events on (round robin), instead of the process's
// shared connection. A nats.Conn serialises its writers on one mutex, and
// an in-process connection is a synchronous pipe: with every role's traffic
// on one connection (heartbeats in, PubAcks, the projector's and the status
// feed's deliveries, KV reads), a publishing handler waited for the flusher
// writing someone else's batch (docs/performance.md: the mutex profile put
// 70 % of the process's lock delay there). With an external NATS server
// (Bus.Server nil) the shared connection is used.
type pubConns struct {
	mu    sync.Mutex // open, close
	conns atomic.Pointer[[]pubConn]
	next  atomic.Uint32
}

type pubConn struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// open connects when the bus runs an embedded server; it is a no-op
// otherwise, or when already open.
func (p *pubConns) open(b *bus.Bus) error {
	if b == nil || b.Server == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns.Load() != nil {
		return nil
	}
	var cs []pubConn
	opts := []nats.Option{nats.InProcessServer(b.Server), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	// The embedded server asks its clients for the token it listens with
	// (the one in its client URL).
	if u, err := url.Parse(b.ClientURL()); err == nil && u.User != nil && u.User.Username() != "" {
		opts = append(opts, nats.Token(u.User.Username()))
	}
	for i := range pubConnCount {
		nc, err := nats.Connect("", append(opts, nats.Name(fmt.Sprintf("devstatus-bridge-pub-%d", i)))...)
		if err == nil {
			var js jetstream.JetStream
			if js, err = jetstream.New(nc); err == nil {
				cs = append(cs, pubConn{nc, js})
				continue
			}
			nc.Close()
		}
		for _, c := range cs {
			c.nc.Close()
		}
		return fmt.Errorf("bridge: publishing connection: %w", err)
	}
	p.conns.Store(&cs)
	return nil
}

func (p *pubConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cs := p.conns.Swap(nil); cs != nil {
		for _, c := range *cs {
			c.nc.Close()
		}
	}
}

// publisher is the input-stream publisher on js.
func (b *Bridge) publisher(js jetstream.JetStream) bus.InputPublisher {
	return bus.InputPublisher{JS: js, Partitions: b.cfg.Bus.Partitions()}
}

// pubJS returns the JetStream context to publish an input event with.
func (b *Bridge) pubJS() jetstream.JetStream {
	if cs := b.pub.conns.Load(); cs != nil {
		c := (*cs)[b.pub.next.Add(1)%uint32(len(*cs))]
		if c.nc.IsConnected() {
			return c.js
		}
	}
	return b.cfg.Bus.JS
}

// publish sends an input event to the device's subject and waits for the
// PubAck (at most PublishTimeout). It fails at once when NATS is
// disconnected. The request's cancellation does not cut the publish short:
// once sent, its outcome is awaited.
func (b *Bridge) publish(ctx context.Context, in *events.Input) error {
	_, err := b.publishWithID(ctx, in, in.ID)
	return err
}

// publishWithID is publish with an explicit Nats-Msg-Id; it returns the
// PubAck (Duplicate set when JetStream already holds a message with that id
// in its duplicate window: nothing was stored).
func (b *Bridge) publishWithID(ctx context.Context, in *events.Input, msgID string) (*jetstream.PubAck, error) {
	if !b.cfg.Bus.NC.IsConnected() {
		b.m.publishErrors.WithLabelValues(string(in.Type)).Inc()
		return nil, errors.New("bridge: NATS is not connected")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.PublishTimeout)
	defer cancel()
	start := b.cfg.Clock.Now()
	ack, err := b.publisher(b.pubJS()).Publish(ctx, in, msgID)
	if err != nil {
		b.m.publishErrors.WithLabelValues(string(in.Type)).Inc()
		return nil, err
	}
	b.m.publishDuration.WithLabelValues(string(in.Type)).Observe(b.cfg.Clock.Now().Sub(start).Seconds())
	return ack, nil
}
