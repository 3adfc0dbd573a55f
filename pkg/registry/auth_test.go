package registry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/registry"
)

// TestAuthenticateCases covers every outcome of Authenticate.
func TestAuthenticateCases(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r := newRegistry(t, b, true)
	ctx := context.Background()
	tokA, err := r.Register(ctx, "A", "", "")
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := r.Register(ctx, "B", "", "")
	if err != nil {
		t.Fatal(err)
	}
	tokC, err := r.Register(ctx, "C", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Decommission(ctx, "C"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, id, token string
		want            error
	}{
		{"own token", "A", tokA, nil},
		{"no token", "A", "", registry.ErrBadToken},
		{"wrong token", "A", "x" + tokA, registry.ErrBadToken},
		{"another device's token", "A", tokB, registry.ErrForeignToken},
		{"another device's token on an unknown id", "ghost", tokB, registry.ErrForeignToken},
		{"unknown id, random token", "ghost", "nope", registry.ErrNotFound},
		{"unknown id, no token", "ghost", "", registry.ErrNotFound},
		{"decommissioned, own token", "C", tokC, registry.ErrDecommissioned},
		{"decommissioned, wrong token", "C", "nope", registry.ErrBadToken},
		{"decommissioned device's token on another", "A", tokC, registry.ErrBadToken},
	} {
		_, err := r.Authenticate(ctx, c.id, c.token)
		if (c.want == nil && err != nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// TestRekey: the old token fails at once, the new one works, the other
// device's cached entry is not touched, and other instances follow through
// their watch.
func TestRekey(t *testing.T) {
	b := testenv.NATS(t, bus.Config{})
	r1 := newRegistry(t, b, true)
	r2 := newRegistry(t, b, true)
	ctx := context.Background()
	tokA, err := r1.Register(ctx, "A", "", "")
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := r1.Register(ctx, "B", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*registry.Registry{r1, r2} {
		for i := 0; i < 2; i++ { // miss, then hit
			if _, err := r.Authenticate(ctx, "A", tokA); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Authenticate(ctx, "B", tokB); err != nil {
				t.Fatal(err)
			}
		}
	}
	s2 := r2.CacheStats()
	newA, err := r1.Rekey(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if newA == tokA || len(newA) < 43 {
		t.Fatalf("new token %q", newA)
	}
	if _, err := r1.Authenticate(ctx, "A", tokA); !errors.Is(err, registry.ErrBadToken) {
		t.Errorf("old token right after the re-key: %v", err)
	}
	if _, err := r1.Authenticate(ctx, "A", newA); err != nil {
		t.Errorf("new token: %v", err)
	}
	if _, err := r1.Authenticate(ctx, "B", newA); !errors.Is(err, registry.ErrForeignToken) {
		t.Errorf("A's new token on B: %v", err)
	}
	// The other instance: the watch refreshes A's entry, and only A's.
	dev, err := r1.Get(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "r2's watch past the re-key", func() bool { return r2.CacheStats().WatchedRevision >= dev.Revision })
	if _, err := r2.Authenticate(ctx, "A", tokA); !errors.Is(err, registry.ErrBadToken) {
		t.Errorf("old token on the other instance: %v", err)
	}
	before := r2.CacheStats()
	if _, err := r2.Authenticate(ctx, "B", tokB); err != nil {
		t.Fatal(err)
	}
	after := r2.CacheStats()
	if after.Misses != before.Misses || after.Hits != before.Hits+1 {
		t.Errorf("B's entry went cold: %+v → %+v", before, after)
	}
	if after.Flushes != s2.Flushes || after.Invalidations != s2.Invalidations || after.Refreshes != s2.Refreshes+1 {
		t.Errorf("refreshes %+v → %+v, want exactly A's (its new token hash from the watch)", s2, after)
	}
	if _, err := r1.Rekey(ctx, "ghost"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("rekey unknown: %v", err)
	}
	if err := r1.Decommission(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Rekey(ctx, "B"); !errors.Is(err, registry.ErrDecommissioned) {
		t.Errorf("rekey decommissioned: %v", err)
	}
}
