package registry_test

import (
	"context"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/registry"
)

// TestWatchStallRecovered: the KV watch's consumer stops delivering while
// the connection stays up (the server pauses it: "connected but stalled").
// The registry notices (the bucket moves on, the watch does not), drops the
// watch and its cache, re-creates the watch, and the change it had missed
// reaches the cache; Watching is false meanwhile.
func TestWatchStallRecovered(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r1, err := registry.New(registry.Config{Bus: b, Clock: clock.NewFake(t0), Logger: testenv.Logger(t),
		WatchCheckInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, r1.Run)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "watch", r1.Watching)
	r2 := newRegistry(t, b, false)
	if _, err := r2.Register(ctx, "d", "", ""); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "registration seen", func() bool { _, err := r1.Lookup(ctx, "d"); return err == nil })
	if e, _ := r1.Lookup(ctx, "d"); e.RemoteControlEnabled {
		t.Fatal("remote control on")
	}

	// Pause every consumer of the bucket's stream: r1's watch is the only one.
	stream := "KV_" + events.DevicesBucket
	st, err := b.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	names := st.ConsumerNames(ctx)
	paused := 0
	for name := range names.Name() {
		if _, err := b.JS.PauseConsumer(ctx, stream, name, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		paused++
	}
	if paused != 1 {
		t.Fatalf("%d consumers on the bucket, want r1's watch only", paused)
	}
	stalls := r1.CacheStats().WatchStalls
	if _, err := r2.SetRemoteControl(ctx, "d", true); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "stall detected", func() bool { return r1.CacheStats().WatchStalls > stalls })
	testenv.Eventually(t, 10*time.Second, "watch re-created", r1.Watching)
	testenv.Eventually(t, 10*time.Second, "the missed change in the cache", func() bool {
		e, err := r1.Lookup(ctx, "d")
		return err == nil && e.RemoteControlEnabled
	})
	// Caching works again through the new watch.
	if _, err := r2.SetRemoteControl(ctx, "d", false); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "next change through the new watch", func() bool {
		e, err := r1.Lookup(ctx, "d")
		return err == nil && !e.RemoteControlEnabled
	})
	if s := r1.CacheStats(); s.Hits == 0 || s.Flushes == 0 {
		t.Errorf("stats %+v", s)
	}
}
