package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/service"
)

// Scenario 7 (device clock skew): A's clock is 10 minutes fast, B's an hour
// slow; both heartbeat: both connected, and each goes temporarily_offline
// offline_after after the bridge received its heartbeat — device time is
// metadata only.
func TestDeviceClockSkewIsMetadata(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	svc := front(t, dsn, service.AllRoles, simThresholds, 100*time.Millisecond)
	client, err := apiclient.NewClient(apiclient.ClientConfig{URL: "http://" + svc.Addr(), AdminToken: admin})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	skews := map[string]time.Duration{"fast": 10 * time.Minute, "slow": -time.Hour}
	received := map[string]time.Time{}
	for id, skew := range skews {
		reg, err := client.Register(ctx, id, "skew")
		if err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		dt := time.Now().Add(skew)
		if _, err := client.Heartbeat(ctx, id, reg.Token, apiclient.HeartbeatRequest{DeviceTime: &dt}); err != nil {
			t.Fatal(err)
		}
		received[id] = before
	}
	o := simThresholds.Default.OfflineAfter
	for id := range skews {
		deadline := time.Now().Add(o + 10*time.Second)
		for {
			trs, err := client.Transitions(ctx, id)
			if err != nil && !errors.Is(err, apiclient.ErrNotFound) { // 404 until projected
				t.Fatal(err)
			}
			if len(trs) == 2 {
				if trs[0].To != "connected" || trs[1].To != "temporarily_offline" {
					t.Fatalf("%s: %+v", id, trs)
				}
				connectedAt, offlineAt := trs[0].At, trs[1].At
				if d := connectedAt.Sub(received[id]); d < 0 || d > 5*time.Second {
					t.Errorf("%s: connected at %s, %s after the request was sent: not the receive time", id, connectedAt, d)
				}
				if got := offlineAt.Sub(connectedAt); got != o {
					t.Errorf("%s: temporarily_offline %s after the heartbeat, want %s", id, got, o)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: transitions %+v", id, trs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
