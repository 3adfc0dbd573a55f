package sim

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/trace"
)

func newTestClient(t *testing.T, url, admin string) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{URL: url, AdminToken: admin, RetryWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientAwkwardIDsReachTheServerIntact(t *testing.T) {
	t.Parallel()
	f, srv := newFake(t, trace.DefaultThresholds())
	c := newTestClient(t, srv.URL, f.admin)
	ctx := context.Background()
	ids := []string{"G1/site1/c1/node1", "a b", "x:y", "dot.dot", "star*", "gt>", "mañana ゲート", "100%/q?x=1#frag+plus", " lead", "%2F"}
	for i := range 12 {
		ids = append(ids, DeviceID("pfx-", i, 1))
	}
	for _, id := range ids {
		if err := events.ValidateDeviceID(id); err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		reg, err := c.Register(ctx, id, "g")
		if err != nil {
			t.Fatalf("register %q: %v", id, err)
		}
		if reg.ID != id || reg.Token == "" {
			t.Fatalf("registration %+v", reg)
		}
		now := time.Now()
		resp, err := c.Heartbeat(ctx, id, reg.Token, HeartbeatRequest{DeviceTime: &now, Metrics: map[string]any{"battery": 50}})
		if err != nil {
			t.Fatalf("heartbeat %q: %v", id, err)
		}
		if resp.Status != events.StatusRegistered || resp.HeartbeatIntervalS != 30 {
			t.Fatalf("heartbeat answer %+v", resp)
		}
		d, err := c.Device(ctx, id)
		if err != nil || d.ID != id || d.Status != events.StatusConnected || d.LastHeartbeatAt == nil {
			t.Fatalf("device %q: %+v %v", id, d, err)
		}
		trs, err := c.Transitions(ctx, id)
		if err != nil || len(trs) != 1 || trs[0].To != events.StatusConnected || trs[0].ReasonCode != events.ReasonHeartbeat {
			t.Fatalf("transitions %q: %+v %v", id, trs, err)
		}
	}
	for _, id := range ids {
		if !f.seen[id] {
			t.Errorf("the server never saw %q", id)
		}
	}
	if f.goodBodies != len(ids) {
		t.Errorf("%d heartbeat bodies had device_time and metrics, want %d", f.goodBodies, len(ids))
	}
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	f, srv := newFake(t, trace.DefaultThresholds())
	c := newTestClient(t, srv.URL, f.admin)
	ctx := context.Background()
	if _, err := c.Device(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	reg, err := c.Register(ctx, "d/1", "g")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Register(ctx, "d/1", "g")
	var ae *APIError
	if !errors.Is(err, ErrConflict) || !errors.As(err, &ae) || ae.Code != "conflict" || ae.Message != "exists" {
		t.Fatalf("want a 409 APIError with the body's code, got %#v", err)
	}
	if _, err := c.HeartbeatOnce(ctx, "d/1", "wrong", HeartbeatRequest{}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("want ErrUnauthorized, got %v", err)
	}
	bad := newTestClient(t, srv.URL, "not-admin")
	if _, err := bad.Register(ctx, "d/2", "g"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("want ErrUnauthorized, got %v", err)
	}

	// 429 with Retry-After: HeartbeatOnce reports it, Heartbeat retries.
	f.mu.Lock()
	f.refuse429["d/1"] = 1
	f.mu.Unlock()
	_, err = c.HeartbeatOnce(ctx, "d/1", reg.Token, HeartbeatRequest{})
	if !errors.Is(err, ErrRateLimited) || !errors.As(err, &ae) || ae.RetryAfter != time.Second {
		t.Fatalf("want 429 with Retry-After 1s, got %#v", err)
	}
	f.mu.Lock()
	f.refuse429["d/1"] = 1
	f.mu.Unlock()
	t0 := time.Now()
	if _, err := c.Heartbeat(ctx, "d/1", reg.Token, HeartbeatRequest{}); err != nil {
		t.Fatalf("Heartbeat should retry after Retry-After: %v", err)
	}
	if waited := time.Since(t0); waited < time.Second {
		t.Fatalf("retried after %s, before Retry-After", waited)
	}
	if _, err := NewClient(ClientConfig{URL: "localhost:8080"}); !errors.Is(err, ErrInvalidConf) {
		t.Fatalf("want ErrInvalidConf, got %v", err)
	}
}

func TestAllDevicesFollowsCursor(t *testing.T) {
	t.Parallel()
	f, srv := newFake(t, trace.DefaultThresholds())
	c := newTestClient(t, srv.URL, f.admin)
	ctx := context.Background()
	for i := range 250 {
		if _, err := c.Register(ctx, fmt.Sprintf("dev/%03d", i), "g"); err != nil {
			t.Fatal(err)
		}
	}
	devs, err := c.AllDevices(ctx, ListOptions{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 250 || devs[0].ID != "dev/000" || devs[249].ID != "dev/249" || devs[10].Status != events.StatusRegistered {
		t.Fatalf("got %d devices", len(devs))
	}
	p, err := c.ListDevices(ctx, ListOptions{Limit: 10, Status: events.StatusRegistered})
	if err != nil || len(p.Devices) != 10 || p.NextCursor != "10" {
		t.Fatalf("page %+v %v", p, err)
	}
}
