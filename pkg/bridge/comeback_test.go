package bridge

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/worker"
)

// TestComebackWithTheRealWorker is Done-when 4 end to end: the partition
// worker (pkg/worker, the real state machine) decides the transitions from
// the log; two bridges serve one device alternately. After the device went
// temporarily_offline (a clock tick past 40 s of silence), the first
// heartbeat back, whichever bridge gets it, and only that one, says
// should_reconnect; the same after disconnected; an operator's reconnect is
// delivered once too. The device's event history holds the request and the
// three deliveries.
func TestComebackWithTheRealWorker(t *testing.T) {
	e1, e2 := twoBridges(t)
	w, err := worker.New(worker.Config{Bus: e1.bus, Logger: testenv.Logger(t), Probing: worker.Probing{After: -1}})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, w.Run)
	ctx := context.Background()

	tok := e1.register("d", "")
	p := events.Partition("d", e1.bus.Partitions())
	tick := func(at time.Duration) {
		t.Helper()
		ts := t0.Add(at)
		id := fmt.Sprintf("tick-%d-%d", p, ts.UnixNano())
		data, err := events.EncodeInput(&events.Input{Type: events.TypeTick, ID: id, At: ts})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e1.bus.JS.Publish(ctx, events.TickSubject(p), data, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	statusIs := func(want events.Status) func() bool {
		return func() bool {
			for _, x := range []*env{e1, e2} {
				if st, _ := x.br.status.forHeartbeat("d"); st != want {
					return false
				}
			}
			return true
		}
	}
	beat := func(x *env, at time.Duration) (string, bool) {
		t.Helper()
		e1.clk.Set(t0.Add(at))
		r := x.heartbeat("d", tok, "")
		if r.code != 200 {
			t.Fatalf("t=%s: %d %s", at, r.code, r.body)
		}
		m := r.obj(t)
		return m["status"].(string), m["should_reconnect"] == true
	}
	var told []string
	sequence := func(from time.Duration, a, b *env) {
		t.Helper()
		for i, x := range []*env{a, b, a, b} {
			at := from + time.Duration(i)*10*time.Second
			st, should := beat(x, at)
			if should {
				told = append(told, fmt.Sprintf("%s@%s", st, at))
			}
			if i == 0 {
				testenv.Eventually(t, 20*time.Second, "connected again", statusIs(events.StatusConnected))
			}
		}
	}

	beat(e1, 0)
	testenv.Eventually(t, 20*time.Second, "connected", statusIs(events.StatusConnected))
	tick(41 * time.Second)
	testenv.Eventually(t, 20*time.Second, "temporarily_offline on both bridges", statusIs(events.StatusTemporarilyOffline))
	sequence(50*time.Second, e1, e2)
	tick(350 * time.Second) // silence since 80 s: 270 s > 40 s, then ≥ 300 s at 380
	tick(390 * time.Second)
	testenv.Eventually(t, 20*time.Second, "disconnected on both bridges", statusIs(events.StatusDisconnected))
	e1.clk.Set(t0.Add(390 * time.Second))
	if r := e2.do("POST", devPath("d", "/reconnect"), adminToken, "", nil); r.code != 202 {
		t.Fatal(r.code)
	}
	sequence(400*time.Second, e2, e1)

	want := []string{"temporarily_offline@50s", "disconnected@6m40s"}
	if fmt.Sprint(told) != fmt.Sprint(want) {
		t.Errorf("should_reconnect on %v, want %v (one answer per comeback, the operator request riding on the second)", told, want)
	}
	r := e2.do("GET", devPath("d", "/events?types=reconnect_requested,reconnect_delivered"), adminToken, "", nil)
	var page struct {
		Events []struct {
			Type      string    `json:"type"`
			At        time.Time `json:"at"`
			Delivered *struct {
				Reason string `json:"reason"`
			} `json:"delivered"`
		} `json:"events"`
	}
	decode(t, r.body, &page)
	var got []string
	for _, ev := range page.Events {
		s := ev.Type + "@" + ev.At.Sub(t0).String()
		if ev.Delivered != nil {
			s += "/" + ev.Delivered.Reason
		}
		got = append(got, s)
	}
	wantEv := []string{"reconnect_delivered@50s/comeback", "reconnect_requested@6m30s",
		"reconnect_delivered@6m40s/operator", "reconnect_delivered@6m40s/comeback"}
	if fmt.Sprint(got) != fmt.Sprint(wantEv) {
		t.Errorf("history %v, want %v", got, wantEv)
	}
}

// The answer's status and comeback candidate are read when the heartbeat is
// admitted, before it is published (the single endpoint and gateway batches
// share admitHeartbeat and settleHeartbeat). Once it is published, the worker
// may decide its → connected and the transitions feed apply it before the
// PubAck is handled: the answer must still say what was decided before this
// heartbeat (disconnected) and carry the comeback. This is that interleaving,
// forced: the feed's update lands between the PubAck and the answer.
func TestHeartbeatAnsweredWithTheStatusBeforeIt(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	ctx := context.Background()
	e.br.status.apply("d", events.StatusDisconnected, 5)
	ent, err := e.reg.Authenticate(ctx, "d", tok)
	if err != nil {
		t.Fatal(err)
	}
	a, _, ok := e.br.admitHeartbeat("d", &heartbeatBody{}, ent, t0, "")
	if !ok {
		t.Fatal("heartbeat not admitted")
	}
	ack, err := e.br.publishWithID(ctx, a.in, a.msgID)
	if err != nil {
		t.Fatal(err)
	}
	e.br.status.apply("d", events.StatusConnected, 6) // the worker's decision for this heartbeat, already fed
	out := e.br.settleHeartbeat(ctx, &a, ack, nil, true)
	if out.status != 200 || out.resp.Status != string(events.StatusDisconnected) || !out.resp.ShouldReconnect {
		t.Fatalf("answer %d %+v, want 200 disconnected with should_reconnect", out.status, out.resp)
	}
}
