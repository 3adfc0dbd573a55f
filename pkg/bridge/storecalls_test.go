package bridge

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/registry"
)

// countingStore counts the calls a bridge makes into the real registry it
// wraps, by method.
type countingStore struct {
	deviceStore
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingStore) add(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[method]++
}

// take returns the calls counted since the last take and resets them.
func (c *countingStore) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = map[string]int{}
	return out
}

func (c *countingStore) Authenticate(ctx context.Context, id, token string) (registry.Entry, error) {
	c.add("Authenticate")
	return c.deviceStore.Authenticate(ctx, id, token)
}

func (c *countingStore) Lookup(ctx context.Context, id string) (registry.Entry, error) {
	c.add("Lookup")
	return c.deviceStore.Lookup(ctx, id)
}

func (c *countingStore) AuthenticateGateway(ctx context.Context, id, token string) error {
	c.add("AuthenticateGateway")
	return c.deviceStore.AuthenticateGateway(ctx, id, token)
}

func (c *countingStore) Prefetch(ctx context.Context, ids []string, parallel int) {
	c.add("Prefetch")
	c.deviceStore.Prefetch(ctx, ids, parallel)
}

func (c *countingStore) Swap(ctx context.Context, id string, change func(d *registry.Device) (bool, error)) (registry.Device, error) {
	c.add("Swap")
	return c.deviceStore.Swap(ctx, id, change)
}

func countStore(e *env) *countingStore {
	c := &countingStore{deviceStore: e.reg, calls: map[string]int{}}
	e.br.setStore(c)
	return c
}

// TestHeartbeatEntersTheRegistryAtMostTwice: a heartbeat's path from HTTP to
// JetStream calls the registry once (the look-up that authenticates it),
// and once more (one compare-and-swap) only when its record changes: a
// comeback, an operator reconnect, a new probe URL, or several of them at
// once. A gateway batch calls it once per item, once per comeback, and
// twice per batch (the gateway's token, the prefetch of its devices).
func TestHeartbeatEntersTheRegistryAtMostTwice(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	calls := countStore(e)
	step := func() { e.clk.Advance(10 * time.Second) }
	hb := func(what, body string, want map[string]int, should bool) {
		t.Helper()
		step()
		calls.take()
		r := e.heartbeat("d", tok, body)
		if r.code != 200 {
			t.Fatalf("%s: %d %s", what, r.code, r.body)
		}
		if got := calls.take(); !maps.Equal(got, want) {
			t.Errorf("%s: registry calls %v, want %v", what, got, want)
		}
		if m := r.obj(t); m["should_reconnect"] != should {
			t.Errorf("%s: answer %s, want should_reconnect %v", what, r.body, should)
		}
	}
	lookup := map[string]int{"Authenticate": 1}
	lookupAndSwap := map[string]int{"Authenticate": 1, "Swap": 1}

	hb("first heartbeat", "", lookup, false) // a cache miss is still one call
	hb("plain heartbeat", "", lookup, false)
	e.publishTransition("d", events.StatusConnected, events.StatusTemporarilyOffline)
	hb("comeback", "", lookupAndSwap, true)
	hb("after the comeback", "", lookup, false)
	if r := e.do("POST", devPath("d", "/reconnect"), adminToken, "", nil); r.code != 202 {
		t.Fatalf("reconnect: %d %s", r.code, r.body)
	}
	testenv.Eventually(t, 20*time.Second, "pending reconnect in the cache", func() bool {
		ent, err := e.reg.Lookup(context.Background(), "d")
		return err == nil && ent.PendingReconnect
	})
	hb("operator reconnect", "", lookupAndSwap, true)
	hb("new probe URL", `{"probe_url":"http://d.example.com/health"}`, lookupAndSwap, false)
	hb("same probe URL", `{"probe_url":"http://d.example.com/health"}`, lookup, false)
	e.publishTransition("d", events.StatusTemporarilyOffline, events.StatusDisconnected)
	hb("comeback with a new probe URL", `{"probe_url":"http://d.example.com/"}`, lookupAndSwap, true)
	if dev, err := e.reg.Get(context.Background(), "d"); err != nil || dev.ProbeURL != "http://d.example.com/" || len(dev.Unlogged) != 0 {
		t.Errorf("record after the heartbeats: %+v %v", dev, err)
	}

	// A gateway batch of n items, c of them coming back.
	gtok := e.registerGateway("gw")
	const n, c = 6, 2
	var b strings.Builder
	b.WriteString(`{"heartbeats":[`)
	for i := range n {
		id := fmt.Sprintf("g-%d", i)
		e.registerBehind(id, "gw")
		if i < c {
			e.publishTransition(id, events.StatusConnected, events.StatusTemporarilyOffline)
		}
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"device":%q}`, id)
	}
	b.WriteString(`]}`)
	for round, want := range []map[string]int{
		{"AuthenticateGateway": 1, "Prefetch": 1, "Lookup": n, "Swap": c},
		{"AuthenticateGateway": 1, "Prefetch": 1, "Lookup": n},
	} {
		step()
		calls.take()
		r := e.batch("gw", gtok, b.String())
		var a gwAnswer
		decode(t, r.body, &a)
		if r.code != 200 || a.Accepted != n {
			t.Fatalf("batch %d: %d %s", round, r.code, r.body)
		}
		if got := calls.take(); !maps.Equal(got, want) {
			t.Errorf("batch %d: registry calls %v, want %v", round, got, want)
		}
		told := 0
		for _, it := range a.Results {
			if it.ShouldReconnect != nil && *it.ShouldReconnect {
				told++
			}
		}
		if want := map[int]int{0: c, 1: 0}[round]; told != want {
			t.Errorf("batch %d: %d told to reconnect, want %d", round, told, want)
		}
	}
}
