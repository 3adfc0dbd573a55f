package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// TestInputPublisher: a device event lands on its device's subject with its
// id (a re-send is a duplicate), a tick on its partition's subject, both in
// the input stream, in the encoding of events.
func TestInputPublisher(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub := b.NewInputPublisher()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	in := &events.Input{Type: events.TypeHeartbeat, ID: "hb-1", Device: "dev/1", At: at, Heartbeat: &events.Heartbeat{}}
	ack, err := pub.Publish(ctx, in, "")
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != events.InputStream || ack.Duplicate {
		t.Fatalf("ack %+v", ack)
	}
	if again, err := pub.Publish(ctx, in, ""); err != nil || !again.Duplicate {
		t.Fatalf("re-send: %+v %v, want a duplicate", again, err)
	}
	f, err := pub.PublishAsync(&events.Input{Type: events.TypeHeartbeat, ID: "hb-2", Device: "dev/1", At: at, Heartbeat: &events.Heartbeat{}}, "explicit-id")
	if err != nil {
		t.Fatal(err)
	}
	tf, err := pub.PublishTickAsync(3, &events.Input{Type: events.TypeTick, ID: "tick-3", At: at})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, fu := range []jetstream.PubAckFuture{f, tf} {
		select {
		case a := <-fu.Ok():
			seqs = append(seqs, a.Sequence)
		case err := <-fu.Err():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	st, err := b.JS.Stream(ctx, events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		seq     uint64
		subject string
		id      string
	}{{ack.Sequence, events.DeviceSubject("dev/1", 4), "hb-1"}, {seqs[0], events.DeviceSubject("dev/1", 4), "explicit-id"}, {seqs[1], events.TickSubject(3), "tick-3"}}
	for _, w := range want {
		m, err := st.GetMsg(ctx, w.seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != w.subject || m.Header.Get("Nats-Msg-Id") != w.id {
			t.Errorf("seq %d: subject %q id %q, want %q %q", w.seq, m.Subject, m.Header.Get("Nats-Msg-Id"), w.subject, w.id)
		}
		if _, err := events.DecodeInput(m.Data); err != nil {
			t.Errorf("seq %d: not an events encoding: %v", w.seq, err)
		}
	}
}
