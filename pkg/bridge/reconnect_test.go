package bridge

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/registry"
)

// deliverer is one bridge instance's registry with the bridge's reconnect
// rule over it (reconnects.deliver, as a heartbeat without a probe URL
// applies it) and its audit-trail reader.
type deliverer struct {
	*registry.Registry
	br *Bridge
}

// newDeliverer runs a bridge on b (clk nil: a fake clock at t0).
func newDeliverer(t *testing.T, b *bus.Bus, clk *clock.Fake) *deliverer {
	t.Helper()
	if clk == nil {
		clk = clock.NewFake(t0)
	}
	e := newEnvOnBus(t, b, withClock(clk))
	return &deliverer{Registry: e.reg, br: e.br}
}

func (d *deliverer) Deliver(ctx context.Context, id string, offlineSeq uint64) (delivered, error) {
	return d.br.rc.deliver(ctx, id, offlineSeq, nil)
}

// TakeReconnect delivers a pending operator request only (no comeback) and
// reports whether this caller won it.
func (d *deliverer) TakeReconnect(ctx context.Context, id string) (bool, error) {
	out, err := d.Deliver(ctx, id, 0)
	return out.Operator, err
}

func (d *deliverer) History(ctx context.Context, id string, q historyQuery) (historyPage, error) {
	return readHistory(ctx, d.br.cfg.Bus, d.br.log, id, q)
}

// TestDeliverComebackOnce: a comeback (offline transition sequence) is
// delivered once, by exactly one of many concurrent callers on two registry
// instances (two bridges); an older or equal sequence delivers nothing; a
// newer offline transition delivers again.
func TestDeliverComebackOnce(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r1 := newDeliverer(t, b, nil)
	r2 := newDeliverer(t, b, nil)
	ctx := context.Background()
	if _, err := r1.Register(ctx, "d", "", ""); err != nil {
		t.Fatal(err)
	}
	e, err := r1.Lookup(ctx, "d")
	if err != nil || needsDeliver(e, 0) || !needsDeliver(e, 7) {
		t.Fatalf("fresh entry: %+v %v", e, err)
	}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(r *deliverer) {
			defer wg.Done()
			d, err := r.Deliver(ctx, "d", 7)
			if err != nil {
				t.Error(err)
			}
			if d.Reconnect {
				if !d.Comeback || d.Operator {
					t.Errorf("delivery %+v", d)
				}
				wins.Add(1)
			}
		}([]*deliverer{r1, r2}[i%2])
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d deliveries of one comeback, want 1", wins.Load())
	}
	for _, seq := range []uint64{7, 3, 0} {
		if d, err := r2.Deliver(ctx, "d", seq); err != nil || d.Reconnect {
			t.Errorf("Deliver(%d) again: %+v %v", seq, d, err)
		}
	}
	if d, err := r2.Deliver(ctx, "d", 12); err != nil || !d.Comeback {
		t.Errorf("newer offline transition: %+v %v", d, err)
	}
	dev, err := r1.Get(ctx, "d")
	if err != nil || dev.ComebackSeq != 12 || len(dev.Unlogged) != 0 {
		t.Errorf("entry %+v %v", dev, err)
	}
	var ids []string
	for _, ev := range testenv.OfType(testenv.Inputs(t, b), events.TypeReconnectDelivered) {
		ids = append(ids, ev.ID)
		reason, _, seq, ok := parseDeliveryID(ev.ID)
		if !ok || reason != reasonComeback || (seq != 7 && seq != 12) {
			t.Errorf("delivered event %q parses to %q %d %v", ev.ID, reason, seq, ok)
		}
	}
	if len(ids) != 2 {
		t.Errorf("delivered events %v, want one per comeback", ids)
	}
}

// TestDeliverOperatorAndComebackTogether: one heartbeat may carry both; each
// gets its own event.
func TestDeliverOperatorAndComebackTogether(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newDeliverer(t, b, nil)
	ctx := context.Background()
	if _, err := r.Register(ctx, "d", "", ""); err != nil {
		t.Fatal(err)
	}
	req, err := r.RequestReconnect(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Deliver(ctx, "d", 5)
	if err != nil || !d.Reconnect || !d.Operator || !d.Comeback {
		t.Fatalf("%+v %v", d, err)
	}
	if d, err := r.Deliver(ctx, "d", 5); err != nil || d.Reconnect {
		t.Fatalf("second: %+v %v", d, err)
	}
	got := map[string]bool{}
	for _, ev := range testenv.OfType(testenv.Inputs(t, b), events.TypeReconnectDelivered) {
		got[ev.ID] = true
	}
	if len(got) != 2 || !got["rd-"+req] || !got["rd-tr-5"] {
		t.Errorf("delivered events %v", got)
	}
	if reason, rid, _, ok := parseDeliveryID("rd-" + req); !ok || reason != reasonOperator || rid != req {
		t.Errorf("ParseDeliveryID: %q %q %v", reason, rid, ok)
	}
	for _, bad := range []string{"", "rd-", "rd-tr-x", "rd-tr-0", "hb-1"} {
		if _, _, _, ok := parseDeliveryID(bad); ok {
			t.Errorf("ParseDeliveryID(%q) ok", bad)
		}
	}
}

// TestDeliverLogsLater: the delivery is won (the device is told) but the
// reconnect_delivered event cannot be published (the input stream is gone):
// the delivery stays in Unlogged, and the next Deliver, once the stream is
// back, publishes it with the time it was told, then clears the list.
func TestDeliverLogsLater(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	clk := clock.NewFake(t0)
	r := newDeliverer(t, b, clk)
	ctx := context.Background()
	if _, err := r.Register(ctx, "d", "", ""); err != nil {
		t.Fatal(err)
	}
	req, err := r.RequestReconnect(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.JS.Stream(ctx, events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	if err := b.JS.DeleteStream(ctx, events.InputStream); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	told := clk.Now()
	d, err := r.Deliver(ctx, "d", 0)
	if !d.Reconnect || !d.Operator || !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("Deliver without a stream: %+v %v (want told, ErrUnavailable)", d, err)
	}
	dev, err := r.Get(ctx, "d")
	if err != nil || dev.PendingReconnect || len(dev.Unlogged) != 1 || dev.Unlogged[0].EventID != "rd-"+req {
		t.Fatalf("entry after the failed log: %+v %v", dev, err)
	}
	e, err := r.Lookup(ctx, "d")
	if err != nil || !needsDeliver(e, 0) {
		t.Fatalf("entry does not ask for the retry: %+v %v", e, err)
	}
	if _, err := b.JS.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if d, err := r.Deliver(ctx, "d", 0); err != nil || d.Reconnect {
		t.Fatalf("retry: %+v %v (the device must not be told twice)", d, err)
	}
	del := testenv.OfType(testenv.Inputs(t, b), events.TypeReconnectDelivered)
	if len(del) != 1 || del[0].ID != "rd-"+req || !del[0].At.Equal(told) {
		t.Fatalf("delivered events %+v, want one at %s", del, told)
	}
	if dev, err := r.Get(ctx, "d"); err != nil || len(dev.Unlogged) != 0 {
		t.Errorf("Unlogged not cleared: %+v %v", dev, err)
	}
	if d, err := r.Deliver(ctx, "d", 0); err != nil || d.Reconnect {
		t.Errorf("nothing left: %+v %v", d, err)
	}
	if n := len(testenv.OfType(testenv.Inputs(t, b), events.TypeReconnectDelivered)); n != 1 {
		t.Errorf("%d delivered events", n)
	}
}

// TestRemoteControlAndReconnect: remote control is stored once per change,
// and an operator reconnect is taken by exactly one of two instances.
func TestRemoteControlAndReconnect(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newDeliverer(t, b, nil)
	ctx := context.Background()
	if _, err := r.Register(ctx, "d", "", ""); err != nil {
		t.Fatal(err)
	}
	d, err := r.SetRemoteControl(ctx, "d", true)
	if err != nil || !d.RemoteControlEnabled {
		t.Fatalf("%+v %v", d, err)
	}
	if _, err := r.SetRemoteControl(ctx, "d", true); err != nil {
		t.Fatal(err)
	}
	e, err := r.Lookup(ctx, "d")
	if err != nil || !e.RemoteControlEnabled {
		t.Errorf("Lookup after SetRemoteControl: %+v %v", e, err)
	}
	if taken, err := r.TakeReconnect(ctx, "d"); taken || err != nil {
		t.Errorf("take without request: %v %v", taken, err)
	}
	id1, err := r.RequestReconnect(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	id2, err := r.RequestReconnect(ctx, "d")
	if err != nil || id1 != id2 {
		t.Errorf("repeated request: %q %q %v", id1, id2, err)
	}
	if e, _ := r.Lookup(ctx, "d"); !e.PendingReconnect {
		t.Error("pending reconnect not visible")
	}
	// Two registry instances (two bridges) race to take it: exactly one wins.
	r2 := newDeliverer(t, b, nil)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(rr *deliverer) {
			defer wg.Done()
			taken, err := rr.TakeReconnect(ctx, "d")
			if err != nil {
				t.Error(err)
			}
			if taken {
				wins.Add(1)
			}
		}([]*deliverer{r, r2}[i%2])
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d winners, want 1", wins.Load())
	}
	evs := testenv.Inputs(t, b)
	if n := len(testenv.OfType(evs, events.TypeRemoteControlChanged)); n != 1 {
		t.Errorf("%d remote_control_changed, want 1", n)
	}
	if n := len(testenv.OfType(evs, events.TypeReconnectRequested)); n != 1 {
		t.Errorf("%d reconnect_requested, want 1", n)
	}
	del := testenv.OfType(evs, events.TypeReconnectDelivered)
	if len(del) != 1 || del[0].ID != "rd-"+id1 {
		t.Errorf("reconnect_delivered: %+v", del)
	}
}

// TestHistory reads a device's audit trail from the input stream, filtered
// by type and paged, and never another device's events.
func TestHistory(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 1}) // every device in one partition
	clk := clock.NewFake(t0)
	r := newDeliverer(t, b, clk)
	ctx := context.Background()
	for _, id := range []string{"d", "d.x", "other"} {
		if _, err := r.Register(ctx, id, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	var reqs []string
	for i := 0; i < 3; i++ {
		clk.Advance(time.Second)
		id, err := r.RequestReconnect(ctx, "d")
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, id)
		if _, err := r.RequestReconnect(ctx, "other"); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
		if _, err := r.Deliver(ctx, "d", uint64(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	types := []events.Type{events.TypeReconnectRequested, events.TypeReconnectDelivered}
	page, err := r.History(ctx, "d", historyQuery{Types: types})
	if err != nil {
		t.Fatal(err)
	}
	if page.Next != 0 || len(page.Events) != 9 {
		t.Fatalf("page: next %d, %d events", page.Next, len(page.Events))
	}
	var last uint64
	for i, he := range page.Events {
		if he.Event.Device != "d" || he.Seq <= last {
			t.Errorf("event %d: %+v at %d", i, he.Event, he.Seq)
		}
		last = he.Seq
		switch i % 3 {
		case 0:
			if he.Event.Type != events.TypeReconnectRequested || he.Event.ID != reqs[i/3] || he.Event.Actor != registry.Actor {
				t.Errorf("event %d: %+v", i, he.Event)
			}
		case 1:
			if reason, rid, _, _ := parseDeliveryID(he.Event.ID); reason != reasonOperator || rid != reqs[i/3] {
				t.Errorf("event %d: %+v", i, he.Event)
			}
		case 2:
			if reason, _, seq, _ := parseDeliveryID(he.Event.ID); reason != reasonComeback || seq != uint64(100+i/3) {
				t.Errorf("event %d: %+v", i, he.Event)
			}
		}
	}
	// Paging: 4 at a time, resuming after the cursor.
	var all []historyEvent
	after := uint64(0)
	for pages := 0; ; pages++ {
		p, err := r.History(ctx, "d", historyQuery{Types: types, After: after, Limit: 4})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, p.Events...)
		if p.Next == 0 {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		after = p.Next
	}
	if len(all) != 9 || all[8].Seq != page.Events[8].Seq {
		t.Errorf("paged %d events", len(all))
	}
	// A bounded scan returns a cursor.
	p, err := r.History(ctx, "d", historyQuery{MaxScan: 2})
	if err != nil || len(p.Events) != 2 || p.Next != p.Events[1].Seq || p.Events[0].Event.Type != events.TypeDeviceRegistered {
		t.Errorf("bounded scan: %+v %v", p, err)
	}
	// Unfiltered: registration first; nothing of d.x or other.
	p, err = r.History(ctx, "d.x", historyQuery{})
	if err != nil || len(p.Events) != 1 || p.Events[0].Event.Type != events.TypeDeviceRegistered || p.Events[0].Event.Device != "d.x" {
		t.Errorf("d.x history: %+v %v", p, err)
	}
	if p, err := r.History(ctx, "never-registered", historyQuery{}); err != nil || len(p.Events) != 0 || p.Next != 0 {
		t.Errorf("empty history: %+v %v", p, err)
	}
	var idErr *registry.InvalidIDError
	if _, err := r.History(ctx, "bad\x00", historyQuery{}); !errors.As(err, &idErr) {
		t.Errorf("bad id: %v", err)
	}
	// The read consumers are gone.
	st, err := b.JS.Stream(ctx, events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	names := st.ConsumerNames(ctx)
	for name := range names.Name() {
		t.Errorf("consumer %q left behind", name)
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		t.Error(err)
	}
}
