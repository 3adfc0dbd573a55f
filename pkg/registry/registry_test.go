package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/registry"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newRegistry(t *testing.T, b *bus.Bus, run bool) *registry.Registry {
	t.Helper()
	r, err := registry.New(registry.Config{Bus: b, Clock: clock.NewFake(t0), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if run {
		testenv.Start(t, r.Run)
		testenv.Eventually(t, 10*time.Second, "watch established", r.Watching)
	}
	return r
}

func TestRegisterGetAndEvents(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newRegistry(t, b, false)
	ctx := context.Background()
	for _, id := range []string{"kiosk-1", "A.x", "*", "a/b", "Gerät 東京"} {
		tok, err := r.Register(ctx, id, "lobby", "")
		if err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		if len(tok) < 43 {
			t.Errorf("token %q is shorter than 256 bits", tok)
		}
		d, err := r.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.ID != id || d.Group != "lobby" || d.TokenHash != registry.HashToken(tok) || d.Revision == 0 || !d.RegisteredAt.Equal(t0) {
			t.Errorf("Get(%q) = %+v", id, d)
		}
		if strings.Contains(d.TokenHash, tok) {
			t.Error("token stored in clear")
		}
		if _, err := r.Authenticate(ctx, id, tok); err != nil {
			t.Errorf("Authenticate(%q): %v", id, err)
		}
		if _, err := r.Authenticate(ctx, id, tok+"x"); !errors.Is(err, registry.ErrBadToken) {
			t.Errorf("wrong token: %v", err)
		}
	}
	if _, err := r.Register(ctx, "kiosk-1", "", ""); !errors.Is(err, registry.ErrExists) {
		t.Errorf("second register: %v", err)
	}
	regs := testenv.OfType(testenv.Inputs(t, b), events.TypeDeviceRegistered)
	if len(regs) != 5 || regs[0].Registered.Group != "lobby" || regs[0].Actor != registry.Actor {
		t.Errorf("registered events: %d %+v", len(regs), regs)
	}
}

func TestRegisterRefusesBadInput(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newRegistry(t, b, false)
	ctx := context.Background()
	var idErr *registry.InvalidIDError
	for _, id := range []string{"", strings.Repeat("x", 129), "a\x00b", "bad\xff", "tab\t"} {
		if _, err := r.Register(ctx, id, "", ""); !errors.As(err, &idErr) {
			t.Errorf("id %q: %v", id, err)
		}
	}
	if _, err := r.Register(ctx, "", "", ""); !errors.Is(err, events.ErrDeviceIDEmpty) {
		t.Errorf("empty id does not unwrap to events.ErrDeviceIDEmpty: %v", err)
	}
	if _, err := r.Register(ctx, "x", "", ""); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{strings.Repeat("g", 65), "a\nb", "\xff"} {
		if _, err := r.Register(ctx, "y", g, ""); !errors.Is(err, registry.ErrInvalidGroup) {
			t.Errorf("group %q: %v", g, err)
		}
	}
	if _, err := r.Register(ctx, "y", "", "gw\x00"); !errors.Is(err, registry.ErrInvalidGateway) {
		t.Errorf("gateway: %v", err)
	}
	if _, err := r.Get(ctx, "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Get unknown: %v", err)
	}
	if got := len(testenv.OfType(testenv.Inputs(t, b), events.TypeDeviceRegistered)); got != 1 {
		t.Errorf("%d registered events, want 1 (only x)", got)
	}
}

func TestDecommissionAndReRegister(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newRegistry(t, b, true)
	ctx := context.Background()
	tok, err := r.Register(ctx, "d1", "g", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Decommission(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Decommission(ctx, "d1"); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, "d1", tok); !errors.Is(err, registry.ErrDecommissioned) {
		t.Errorf("decommissioned auth: %v", err)
	}
	if _, err := r.SetRemoteControl(ctx, "d1", true); !errors.Is(err, registry.ErrDecommissioned) {
		t.Errorf("SetRemoteControl: %v", err)
	}
	if _, err := r.RequestReconnect(ctx, "d1"); !errors.Is(err, registry.ErrDecommissioned) {
		t.Errorf("RequestReconnect: %v", err)
	}
	if err := r.Decommission(ctx, "nope"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Decommission unknown: %v", err)
	}
	// Re-registration gives a new token; the old one stops working.
	tok2, err := r.Register(ctx, "d1", "g2", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, "d1", tok); !errors.Is(err, registry.ErrBadToken) {
		t.Errorf("old token after re-register: %v", err)
	}
	e, err := r.Authenticate(ctx, "d1", tok2)
	if err != nil || e.Group != "g2" || e.Decommissioned {
		t.Errorf("new token: %+v %v", e, err)
	}
	evs := testenv.Inputs(t, b)
	if n := len(testenv.OfType(evs, events.TypeDeviceDecommissioned)); n != 1 {
		t.Errorf("%d decommissioned events, want 1 (the repeat is deduplicated)", n)
	}
	if n := len(testenv.OfType(evs, events.TypeDeviceRegistered)); n != 2 {
		t.Errorf("%d registered events, want 2", n)
	}
}

// TestCacheInvalidatedAcrossInstances: a change made through another instance
// is seen through the watcher: the changed key takes its new value from the
// watch (no KV read), the others are untouched.
func TestCacheInvalidatedAcrossInstances(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r1 := newRegistry(t, b, true)
	r2 := newRegistry(t, b, true)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if _, err := r2.Register(ctx, id, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		for _, id := range []string{"a", "b"} {
			if _, err := r1.Lookup(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := r1.Lookup(ctx, "ghost"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatal(err)
	}
	s := r1.CacheStats()
	if s.Misses != 3 || s.Hits != 4 || s.Entries != 3 {
		t.Fatalf("stats after warm-up: %+v", s)
	}
	if _, err := r2.SetRemoteControl(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "refresh of a", func() bool { return r1.CacheStats().Refreshes >= 1 })
	if e, _ := r1.Lookup(ctx, "a"); !e.RemoteControlEnabled {
		t.Error("stale remote control after another instance's change")
	}
	if _, err := r1.Lookup(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	s = r1.CacheStats()
	if s.Refreshes != 1 || s.Invalidations != 0 || s.Misses != 3 || s.Flushes != 0 {
		t.Errorf("a should have taken its new value from the watch (no KV read), b untouched: %+v", s)
	}
	// A decommission through the other instance: the entry takes it too.
	if err := r2.Decommission(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "refresh of a's decommission", func() bool { return r1.CacheStats().Refreshes >= 2 })
	if e, err := r1.Lookup(ctx, "a"); err != nil || !e.Decommissioned {
		t.Errorf("after decommission elsewhere: %+v %v", e, err)
	}
	// A negative entry is dropped when the device gets registered elsewhere.
	if _, err := r2.Register(ctx, "ghost", "", ""); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "ghost visible", func() bool { _, err := r1.Lookup(ctx, "ghost"); return err == nil })
}

func TestCacheBounded(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r, err := registry.New(registry.Config{Bus: b, CacheSize: 5, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, "watch", r.Watching)
	for i := 0; i < 50; i++ {
		_, _ = r.Lookup(ctx, "dev-"+string(rune('a'+i%26))+strings.Repeat("x", i))
	}
	if n := r.CacheStats().Entries; n > 5 {
		t.Errorf("%d entries in a cache of 5", n)
	}
}

// TestRegisterRollsBackWhenPublishFails: without the input stream the
// registration event cannot be acknowledged: the KV entry is removed and the
// error is ErrUnavailable.
func TestRegisterRollsBackWhenPublishFails(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newRegistry(t, b, false)
	ctx := context.Background()
	if err := b.JS.DeleteStream(ctx, events.InputStream); err != nil {
		t.Fatal(err)
	}
	_, err := r.Register(ctx, "d", "", "")
	if !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if _, err := r.Get(ctx, "d"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("entry left behind: %v", err)
	}
}

func TestUnavailableWhenBusDown(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newRegistry(t, b, false)
	b.Server.Shutdown()
	b.Server.WaitForShutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.Register(ctx, "d", "", ""); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("Register: %v", err)
	}
	if _, err := r.Lookup(ctx, "d"); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("Lookup: %v", err)
	}
}

func TestInvalidConfig(t *testing.T) {
	if _, err := registry.New(registry.Config{}); !errors.Is(err, registry.ErrInvalidConfig) {
		t.Errorf("err = %v", err)
	}
}

// TestPrefetch: the devices a batch names that the cache lacks are read once
// each, in parallel, so that the batch's own look-ups all hit; unknown
// devices are cached as unknown; nothing is read while the cache is off.
func TestPrefetch(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	ctx := context.Background()
	off := newRegistry(t, b, false) // no watch: cache off
	ids := []string{"p1", "p2", "p3", "p4", "p5"}
	for _, id := range ids {
		if _, err := off.Register(ctx, id, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	batch := append(append([]string{}, ids...), "ghost", "p1", "bad\x00id")
	off.Prefetch(ctx, batch, 4)
	if s := off.CacheStats(); s.Misses != 0 || s.Entries != 0 {
		t.Errorf("prefetch with the cache off read KV: %+v", s)
	}

	r := newRegistry(t, b, true)
	if _, err := r.Lookup(ctx, "p1"); err != nil { // already cached: not read again
		t.Fatal(err)
	}
	r.Prefetch(ctx, batch, 4)
	s := r.CacheStats()
	if s.Misses != 1+5 || s.Entries != 6 {
		t.Fatalf("after prefetch: %+v, want p2–p5 and ghost read once each", s)
	}
	for _, id := range ids {
		if _, err := r.Lookup(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Lookup(ctx, "ghost"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("ghost: %v", err)
	}
	if s2 := r.CacheStats(); s2.Misses != s.Misses || s2.Hits != s.Hits+6 {
		t.Errorf("the batch's look-ups after prefetch: %+v → %+v, want 6 hits and no read", s, s2)
	}
}
