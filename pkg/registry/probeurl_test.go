package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/registry"
)

func TestProbeURL(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 2})
	r, err := registry.New(registry.Config{Bus: b, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.Register(ctx, "kiosk-1", "", "", registry.WithProbeURL("http://kiosk-1.example.com/health")); err != nil {
		t.Fatal(err)
	}
	d, err := r.Get(ctx, "kiosk-1")
	if err != nil || d.ProbeURL != "http://kiosk-1.example.com/health" {
		t.Fatalf("registered: %+v %v", d, err)
	}
	e, err := r.Lookup(ctx, "kiosk-1")
	if err != nil || e.ProbeURL != d.ProbeURL {
		t.Fatalf("lookup: %+v %v", e, err)
	}

	// Setting the same URL writes nothing.
	same, err := r.SetProbeURL(ctx, "kiosk-1", d.ProbeURL)
	if err != nil || same.Revision != d.Revision {
		t.Fatalf("unchanged URL rewrote the entry: %d → %d (%v)", d.Revision, same.Revision, err)
	}
	changed, err := r.SetProbeURL(ctx, "kiosk-1", "https://kiosk-1.example.com/")
	if err != nil || changed.Revision == d.Revision || changed.ProbeURL != "https://kiosk-1.example.com/" {
		t.Fatalf("change: %+v %v", changed, err)
	}
	// The local cache sees the change at once.
	if e, _ := r.Lookup(ctx, "kiosk-1"); e.ProbeURL != "https://kiosk-1.example.com/" {
		t.Fatalf("cached entry not invalidated: %+v", e)
	}
	cleared, err := r.SetProbeURL(ctx, "kiosk-1", "")
	if err != nil || cleared.ProbeURL != "" {
		t.Fatalf("clear: %+v %v", cleared, err)
	}

	if _, err := r.SetProbeURL(ctx, "nobody", "http://x.example.com/"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := r.SetProbeURL(ctx, "kiosk-1", "http://x.example.com/"+strings.Repeat("a", registry.MaxProbeURLLen)); !errors.Is(err, registry.ErrInvalidProbeURL) {
		t.Fatalf("too long: %v", err)
	}
	if err := r.Decommission(ctx, "kiosk-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetProbeURL(ctx, "kiosk-1", "http://x.example.com/"); !errors.Is(err, registry.ErrDecommissioned) {
		t.Fatalf("decommissioned: %v", err)
	}
}
