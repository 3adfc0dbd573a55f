package bridge

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// twoBridges starts two bridge instances, each with its own bus connection
// (TCP) to one embedded JetStream server, its own registry and its own
// limiter and caches, sharing one fake clock: two instances behind a load
// balancer.
func twoBridges(t *testing.T, opts ...envOpt) (*env, *env) {
	t.Helper()
	b1 := testenv.NATS(t, bus.Config{ListenAddr: "127.0.0.1:-1", Partitions: 4})
	b2, err := bus.Open(context.Background(), bus.Config{URL: b1.ClientURL(), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b2.Close)
	clk := clock.NewFake(t0)
	opts = append(opts, withClock(clk))
	return newEnvOnBus(t, b1, opts...), newEnvOnBus(t, b2, opts...)
}

// TestTwoBridgesRateLimit: one device served alternately by two bridges
// gets the same limits as from one: the shared rate window (Nats-Msg-Id per
// device per RateMinInterval window) refuses a second heartbeat in the same
// window from the other instance with 429, stores nothing, and gives the
// right Retry-After.
func TestTwoBridgesRateLimit(t *testing.T) {
	e1, e2 := twoBridges(t)
	tok := e1.register("d", "")
	steps := []struct {
		at         time.Duration
		via        *env
		code       int
		retryAfter string
	}{
		{0, e1, 200, ""},
		{5 * time.Second, e2, 429, "5"},                      // e2 has no local state: the shared window refuses
		{9*time.Second + 500*time.Millisecond, e2, 429, "1"}, // now e2's limiter knows (rebase)
		{10 * time.Second, e2, 200, ""},                      // boundary: exactly RateMinInterval later
		{15 * time.Second, e1, 429, "5"},                     // e1's local state is old: shared window again
		{19 * time.Second, e1, 429, "1"},
		{20 * time.Second, e1, 200, ""},
		{30 * time.Second, e2, 200, ""},
		{40 * time.Second, e1, 200, ""},
	}
	stored := 0
	for _, s := range steps {
		e1.clk.Set(t0.Add(s.at))
		r := s.via.heartbeat("d", tok, "")
		if r.code != s.code || r.hdr.Get("Retry-After") != s.retryAfter {
			t.Fatalf("t=%s: %d Retry-After %q %s, want %d %q", s.at, r.code, r.hdr.Get("Retry-After"), r.body, s.code, s.retryAfter)
		}
		if r.code == 429 && r.errCode(t) != httpx.CodeRateLimited {
			t.Errorf("t=%s: %s", s.at, r.body)
		}
		if r.code == 200 {
			stored++
		}
		if n := len(heartbeatsOf(e1.inputEvents(), "d")); n != stored {
			t.Fatalf("t=%s: %d heartbeats stored, want %d (a 429 stores nothing)", s.at, n, stored)
		}
	}
}

// TestTwoBridgesConcurrent: 20 concurrent heartbeats of one device, spread
// over two bridges, yield exactly one 200 and one stored heartbeat.
func TestTwoBridgesConcurrent(t *testing.T) {
	e1, e2 := twoBridges(t)
	tok := e1.register("d", "")
	for round := 0; round < 3; round++ {
		e1.clk.Advance(10 * time.Second)
		codes := make(chan int, 20)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func(x *env) {
				defer wg.Done()
				<-start
				req, _ := http.NewRequest(http.MethodPost, x.srv.URL+devPath("d", "/heartbeat"), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := x.srv.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				codes <- resp.StatusCode
			}([]*env{e1, e2}[i%2])
		}
		close(start)
		wg.Wait()
		close(codes)
		count := map[int]int{}
		for c := range codes {
			count[c]++
		}
		if count[200] != 1 || count[429] != 19 {
			t.Errorf("round %d: codes %v, want exactly one 200 and nineteen 429", round, count)
		}
		if n := len(heartbeatsOf(e1.inputEvents(), "d")); n != round+1 {
			t.Errorf("round %d: %d heartbeats stored", round, n)
		}
	}
}

// TestTwoBridgesPerMinute: with the default limits, a device alternating
// between two bridges every RateMinInterval is never refused, and no
// rolling minute holds more than RatePerMinute of its heartbeats in total
// (the shared window allows at most one per 10 s window: 7 per minute).
func TestTwoBridgesPerMinute(t *testing.T) {
	e1, e2 := twoBridges(t)
	tok := e1.register("d", "")
	for i := 0; i < 18; i++ {
		e1.clk.Set(t0.Add(time.Duration(i) * 10 * time.Second))
		for _, x := range []*env{e1, e2} { // both try; only the first may pass
			r := x.heartbeat("d", tok, "")
			if x == e1 && r.code != 200 || x == e2 && r.code != 429 {
				t.Fatalf("t=%ds via %p: %d", i*10, x, r.code)
			}
		}
	}
	hbs := heartbeatsOf(e1.inputEvents(), "d")
	for i := range hbs {
		n := 0
		for j := i; j < len(hbs) && hbs[j].In.At.Sub(hbs[i].In.At) < time.Minute; j++ {
			n++
		}
		if n > DefaultRatePerMinute {
			t.Errorf("%d heartbeats within a minute from %s", n, hbs[i].In.At)
		}
	}
}

// heartbeatAnswers sends one heartbeat per step, alternating between the
// bridges, 10 s apart, and returns the should_reconnect of each answer.
func heartbeatAnswers(t *testing.T, tok string, steps int, via ...*env) []bool {
	t.Helper()
	var out []bool
	for i := 0; i < steps; i++ {
		via[0].clk.Advance(10 * time.Second)
		r := via[i%len(via)].heartbeat("d", tok, "")
		if r.code != 200 {
			t.Fatalf("step %d: %d %s", i, r.code, r.body)
		}
		out = append(out, r.obj(t)["should_reconnect"] == true)
	}
	return out
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// TestTwoBridgesReconnectOnce is Done-when 4: an operator reconnect is
// delivered on exactly one heartbeat answer, and a comeback from
// temporarily_offline (then from disconnected) once, with two bridges
// serving the device alternately; then concurrently (rate limit off). Both
// appear in the device's event history (GET /v1/devices/{id}/events).
func TestTwoBridgesReconnectOnce(t *testing.T) {
	e1, e2 := twoBridges(t)
	tok := e1.register("d", "")

	if r := e2.do("POST", devPath("d", "/reconnect"), adminToken, "", nil); r.code != 202 {
		t.Fatalf("reconnect: %d %s", r.code, r.body)
	}
	// Both registry caches may hold the request: e1 answers first.
	if got := heartbeatAnswers(t, tok, 6, e1, e2); countTrue(got) != 1 || !got[0] {
		t.Errorf("operator reconnect: answers %v, want only the first true", got)
	}

	seq := e1.publishTransition("d", events.StatusConnected, events.StatusTemporarilyOffline)
	testenv.Eventually(t, 20*time.Second, "instance 2 sees the transition", func() bool { st, _ := e2.br.status.forHeartbeat("d"); return st == events.StatusTemporarilyOffline })
	if got := heartbeatAnswers(t, tok, 6, e2, e1); countTrue(got) != 1 || !got[0] {
		t.Errorf("comeback: answers %v, want only the first true", got)
	}
	e1.publishTransition("d", events.StatusTemporarilyOffline, events.StatusConnected)
	seq2 := e1.publishTransition("d", events.StatusConnected, events.StatusDisconnected)
	testenv.Eventually(t, 20*time.Second, "instance 2 sees the transition", func() bool { st, _ := e2.br.status.forHeartbeat("d"); return st == events.StatusDisconnected })
	if got := heartbeatAnswers(t, tok, 6, e1, e2); countTrue(got) != 1 || !got[0] {
		t.Errorf("comeback from disconnected: answers %v, want only the first true", got)
	}

	// Concurrent, rate limit out of the way: a fresh pair without limits.
	types := "reconnect_requested,reconnect_delivered"
	r := e1.do("GET", devPath("d", "/events?types="+types), adminToken, "", nil)
	if r.code != 200 {
		t.Fatalf("events: %d %s", r.code, r.body)
	}
	var page struct {
		Events []struct {
			Seq       uint64 `json:"seq"`
			ID        string `json:"id"`
			Type      string `json:"type"`
			At        time.Time
			Actor     string `json:"actor"`
			Delivered *struct {
				Reason        string `json:"reason"`
				RequestID     string `json:"request_id"`
				TransitionSeq uint64 `json:"transition_seq"`
			} `json:"delivered"`
		} `json:"events"`
		NextAfter *uint64 `json:"next_after"`
	}
	decode(t, r.body, &page)
	if len(page.Events) != 4 || page.NextAfter != nil {
		t.Fatalf("history %s", r.body)
	}
	req, op, cb1, cb2 := page.Events[0], page.Events[1], page.Events[2], page.Events[3]
	if req.Type != "reconnect_requested" || req.Actor != registry.Actor {
		t.Errorf("request %+v", req)
	}
	if op.Type != "reconnect_delivered" || op.Delivered == nil || op.Delivered.Reason != "operator" || op.Delivered.RequestID != req.ID {
		t.Errorf("operator delivery %+v", op)
	}
	if !op.At.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("operator delivery at %s, want the answer's time %s", op.At, t0.Add(10*time.Second))
	}
	if cb1.Delivered == nil || cb1.Delivered.Reason != "comeback" || cb1.Delivered.TransitionSeq != seq {
		t.Errorf("comeback delivery %+v (transition %d)", cb1, seq)
	}
	if cb2.Delivered == nil || cb2.Delivered.TransitionSeq != seq2 {
		t.Errorf("second comeback %+v (transition %d)", cb2, seq2)
	}
	// Paging through the endpoint.
	r = e2.do("GET", devPath("d", "/events?limit=1&types="+types), adminToken, "", nil)
	decode(t, r.body, &page)
	if r.code != 200 || len(page.Events) != 1 || page.NextAfter == nil || *page.NextAfter != req.Seq {
		t.Errorf("first page %d %s", r.code, r.body)
	}
	r = e2.do("GET", devPath("d", fmt.Sprintf("/events?limit=10&after=%d&types=%s", *page.NextAfter, types)), adminToken, "", nil)
	decode(t, r.body, &page)
	if len(page.Events) != 3 || page.NextAfter != nil {
		t.Errorf("second page %s", r.body)
	}
	for _, bad := range []string{"?types=nope", "?limit=0", "?limit=1001", "?after=-1", "?limit=x"} {
		if r := e1.do("GET", devPath("d", "/events"+bad), adminToken, "", nil); r.code != 400 {
			t.Errorf("%s: %d", bad, r.code)
		}
	}
	// All types by default: the registration comes first, heartbeats too.
	r = e1.do("GET", devPath("d", "/events"), adminToken, "", nil)
	decode(t, r.body, &page)
	if len(page.Events) < 20 || page.Events[0].Type != "device_registered" {
		t.Errorf("unfiltered history: %d events, first %+v", len(page.Events), page.Events[0])
	}
}

// TestTwoBridgesReconnectConcurrent: with the rate limit off, many
// concurrent heartbeats over both bridges still carry an operator reconnect
// and a comeback once each.
func TestTwoBridgesReconnectConcurrent(t *testing.T) {
	off := func(c *Config) { c.RateMinInterval, c.RatePerMinute = 0, 0 }
	e1, e2 := twoBridges(t, off)
	tok := e1.register("d", "")
	burst := func() int {
		var mu sync.Mutex
		n := 0
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func(x *env) {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodPost, x.srv.URL+devPath("d", "/heartbeat"), strings.NewReader(`{}`))
				req.Header.Set("Authorization", "Bearer "+tok)
				req.Header.Set("Content-Type", "application/json")
				resp, err := x.srv.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				var m map[string]any
				decodeReader(t, resp.Body, &m)
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%d %v", resp.StatusCode, m)
				}
				if m["should_reconnect"] == true {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}([]*env{e1, e2}[i%2])
		}
		wg.Wait()
		return n
	}
	if n := burst(); n != 0 {
		t.Fatalf("%d should_reconnect without a reason", n)
	}
	if r := e1.do("POST", devPath("d", "/reconnect"), adminToken, "", nil); r.code != 202 {
		t.Fatal(r.code)
	}
	testenv.Eventually(t, 20*time.Second, "both caches see the request", func() bool {
		for _, x := range []*env{e1, e2} {
			ent, err := x.reg.Lookup(context.Background(), "d")
			if err != nil || !ent.PendingReconnect {
				return false
			}
		}
		return true
	})
	if n := burst(); n != 1 {
		t.Errorf("operator reconnect told %d times", n)
	}
	e1.publishTransition("d", events.StatusConnected, events.StatusTemporarilyOffline)
	testenv.Eventually(t, 20*time.Second, "instance 2 sees the transition", func() bool { st, _ := e2.br.status.forHeartbeat("d"); return st == events.StatusTemporarilyOffline })
	if n := burst(); n != 1 {
		t.Errorf("comeback told %d times", n)
	}
	if n := burst(); n != 0 {
		t.Errorf("told again: %d", n)
	}
	delivered := 0
	for _, ev := range e1.inputEvents() {
		if ev.In.Type == events.TypeReconnectDelivered {
			delivered++
		}
	}
	if delivered != 2 {
		t.Errorf("%d reconnect_delivered events, want 2", delivered)
	}
}
