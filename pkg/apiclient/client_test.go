package apiclient_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/apiclient"
)

func newClient(t *testing.T, url, token string) *apiclient.Client {
	t.Helper()
	c, err := apiclient.NewClient(apiclient.ClientConfig{URL: url, AdminToken: token, RetryWait: 10 * time.Millisecond, MaxRetryAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientAwkwardIDsReachTheServerIntact(t *testing.T) {
	t.Parallel()
	e, srv := newEdge(t)
	c := newClient(t, srv.URL, admin)
	ctx := context.Background()
	ids := []string{"G1/site1/c1/node1", "a b", "x:y", "dot.dot", "star*", "gt>", "mañana ゲート", "100%/q?x=1#frag+plus", " lead", "%2F",
		"site/3/dev:7", "dev.4.*.>", "a b/c:d.e*f>g 9 ü", "..x", "x/..", "./y"}
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
		resp, err := c.Heartbeat(ctx, id, reg.Token, apiclient.HeartbeatRequest{DeviceTime: &now, Metrics: map[string]any{"battery": 50}})
		if err != nil {
			t.Fatalf("heartbeat %q: %v", id, err)
		}
		if resp.Status != events.StatusRegistered || resp.HeartbeatIntervalS != 30 {
			t.Fatalf("heartbeat answer %+v", resp)
		}
		d, err := c.Device(ctx, id)
		if err != nil || d.ID != id || d.Group != "g" || d.Status != events.StatusConnected || d.LastHeartbeatAt == nil ||
			d.StatusSince == nil || string(d.Metrics) != `{"battery":50}` {
			t.Fatalf("device %q: %+v %v", id, d, err)
		}
		trs, err := c.Transitions(ctx, id)
		if err != nil || len(trs) != 1 || trs[0].From != events.StatusRegistered || trs[0].To != events.StatusConnected ||
			trs[0].ReasonCode != events.ReasonHeartbeat || trs[0].At.IsZero() {
			t.Fatalf("transitions %q: %+v %v", id, trs, err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range ids {
		if !e.seen[id] {
			t.Errorf("the server never saw %q", id)
		}
	}
	if e.bodies != len(ids) {
		t.Errorf("%d heartbeat bodies had device_time and metrics, want %d", e.bodies, len(ids))
	}
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	e, srv := newEdge(t)
	c := newClient(t, srv.URL, admin)
	ctx := context.Background()
	var ae *apiclient.APIError
	if _, err := c.Device(ctx, "nobody"); !errors.Is(err, apiclient.ErrNotFound) || !errors.As(err, &ae) || ae.Code != "not_found" {
		t.Fatalf("want a 404 APIError, got %#v", err)
	}
	reg, err := c.Register(ctx, "d/1", "g")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Register(ctx, "d/1", "g")
	if !errors.Is(err, apiclient.ErrConflict) || !errors.As(err, &ae) || ae.Code != "conflict" || ae.Message != "exists" || ae.Op != "register" {
		t.Fatalf("want a 409 APIError with the body's code, got %#v", err)
	}
	if err.Error() != "apiclient: register: HTTP 409 conflict: exists" {
		t.Errorf("error text %q", err)
	}
	if _, err := c.HeartbeatOnce(ctx, "d/1", "wrong", apiclient.HeartbeatRequest{}); !errors.Is(err, apiclient.ErrUnauthorized) {
		t.Fatalf("want ErrUnauthorized, got %v", err)
	}
	if _, err := newClient(t, srv.URL, "not-admin").Register(ctx, "d/2", "g"); !errors.Is(err, apiclient.ErrUnauthorized) {
		t.Fatalf("want ErrUnauthorized, got %v", err)
	}
	if _, err := newClient(t, srv.URL, "not-admin").Device(ctx, "d/1"); !errors.Is(err, apiclient.ErrUnauthorized) {
		t.Fatalf("read API without the admin token: want ErrUnauthorized, got %v", err)
	}
	refuse := func(codes ...int) {
		e.mu.Lock()
		e.refuse["d/1"] = codes
		e.mu.Unlock()
	}

	// 429 with Retry-After: HeartbeatOnce reports it, Heartbeat retries
	// after it (capped by MaxRetryAfter, 100 ms here).
	refuse(429)
	_, err = c.HeartbeatOnce(ctx, "d/1", reg.Token, apiclient.HeartbeatRequest{})
	if !errors.Is(err, apiclient.ErrRateLimited) || !errors.As(err, &ae) || ae.RetryAfter != time.Second {
		t.Fatalf("want 429 with Retry-After 1s, got %#v", err)
	}
	refuse(429, 503)
	t0 := time.Now()
	if _, err := c.Heartbeat(ctx, "d/1", reg.Token, apiclient.HeartbeatRequest{}); err != nil {
		t.Fatalf("Heartbeat should retry a 429 and a 503: %v", err)
	}
	if waited := time.Since(t0); waited < 200*time.Millisecond {
		t.Fatalf("two retries after %s, before the capped Retry-After", waited)
	}
	// Retries (3) run out: the last 503 comes back.
	refuse(503, 503, 503, 503)
	if _, err := c.Heartbeat(ctx, "d/1", reg.Token, apiclient.HeartbeatRequest{}); !errors.Is(err, apiclient.ErrUnavailable) {
		t.Fatalf("want ErrUnavailable after the retries, got %v", err)
	}
	e.mu.Lock()
	left := len(e.refuse["d/1"])
	e.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d refusals not asked for: Heartbeat made fewer than 1 + Retries attempts", left)
	}
	for _, url := range []string{"localhost:8080", "ftp://x", "http://"} {
		if _, err := apiclient.NewClient(apiclient.ClientConfig{URL: url}); !errors.Is(err, apiclient.ErrInvalidConfig) {
			t.Errorf("%q: want ErrInvalidConfig, got %v", url, err)
		}
	}
}

func TestListsFollowTheCursorAndSummaryCounts(t *testing.T) {
	t.Parallel()
	_, srv := newEdge(t)
	c := newClient(t, srv.URL, admin)
	ctx := context.Background()
	for i := range 250 {
		reg, err := c.Register(ctx, fmt.Sprintf("dev/%03d", i), fmt.Sprintf("g%d", i%2))
		if err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			if _, err := c.Heartbeat(ctx, reg.ID, reg.Token, apiclient.HeartbeatRequest{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	devs, err := c.AllDevices(ctx, apiclient.ListOptions{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 250 || devs[0].ID != "dev/000" || devs[249].ID != "dev/249" || devs[1].Status != events.StatusRegistered {
		t.Fatalf("got %d devices", len(devs))
	}
	for i, d := range devs {
		if want := fmt.Sprintf("dev/%03d", i); d.ID != want {
			t.Fatalf("device %d is %q, want %q: a page was skipped or repeated", i, d.ID, want)
		}
	}
	p, err := c.ListDevices(ctx, apiclient.ListOptions{Limit: 10, Status: events.StatusConnected, Group: "g0"})
	if err != nil || len(p.Devices) != 10 || p.NextCursor == "" || p.Devices[0].ID != "dev/000" || p.Devices[1].ID != "dev/010" {
		t.Fatalf("page %+v %v", p, err)
	}
	last, err := c.AllDevices(ctx, apiclient.ListOptions{Limit: 100, Status: events.StatusConnected, Group: "g0"})
	if err != nil || len(last) != 25 {
		t.Fatalf("connected devices of g0: %d, %v", len(last), err)
	}
	s, err := c.Summary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Total != 250 || s.Connected != 50 || s.Registered != 200 || s.Groups["g0"].Connected != 25 || s.Groups["g1"].Total != 125 {
		t.Fatalf("summary %+v", s)
	}
}
