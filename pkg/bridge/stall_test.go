package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
)

// TestStatusFeedStallRecovered: the status cache's transitions consumer
// stops delivering while the connection stays up (the server pauses it:
// "connected but stalled", nats.go #1729). The bridge notices (the stream
// moves on, the feed does not), is not ready meanwhile, re-creates the
// consumer after what it applied, and the missed transition arrives.
func TestStatusFeedStallRecovered(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.FeedCheckInterval = 50 * time.Millisecond })
	tok := e.register("d", "")
	e.publishTransition("d", events.StatusRegistered, events.StatusConnected)
	ctx := context.Background()

	st, err := e.bus.JS.Stream(ctx, events.TransitionStream)
	if err != nil {
		t.Fatal(err)
	}
	names := st.ConsumerNames(ctx)
	paused := 0
	for name := range names.Name() {
		if _, err := e.bus.JS.PauseConsumer(ctx, events.TransitionStream, name, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		paused++
	}
	if paused != 1 {
		t.Fatalf("%d consumers on the transitions stream, want the feed's only", paused)
	}
	stalls := e.br.status.stallCount()
	notReady := make(chan bool, 1)
	go func() { // readiness fails once the stall is known, until the feed is back
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if e.br.Ready(ctx) != nil {
				notReady <- true
				return
			}
			time.Sleep(time.Millisecond)
		}
		notReady <- false
	}()
	ack, err := e.bus.JS.Publish(ctx, events.TransitionSubject("d", e.bus.Partitions()), mustTransition(t, "d", events.StatusConnected, events.StatusTemporarilyOffline))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "stall detected", func() bool { return e.br.status.stallCount() > stalls })
	if !<-notReady {
		t.Error("the bridge stayed ready with a stalled feed")
	}
	testenv.Eventually(t, 20*time.Second, "the missed transition", func() bool { return e.br.status.appliedSeq() >= ack.Sequence })
	e.waitReady()
	e.clk.Advance(10 * time.Second)
	if r := e.heartbeat("d", tok, ""); r.code != 200 || r.obj(t)["status"] != "temporarily_offline" || r.obj(t)["should_reconnect"] != true {
		t.Errorf("after the recovery: %d %s", r.code, r.body)
	}
}

func mustTransition(t *testing.T, id string, from, to events.Status) []byte {
	t.Helper()
	b, err := events.EncodeStatusChanged(&events.StatusChanged{ID: "x", Device: id, From: from, To: to,
		ReasonCode: events.ReasonHeartbeatTimeout, Reason: "test", At: t0, ObservedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
