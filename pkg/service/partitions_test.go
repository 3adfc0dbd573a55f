package service

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

// GET /v1/partitions on a running service: every partition owned by this
// instance, its progress, and the instance with its roles.
func TestPartitionsEndpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Postgres and JetStream (skipped with -short)")
	}
	dsn, _ := testenv.Postgres(t)
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 40 * time.Second, DisconnectAfter: 300 * time.Second, PingIgnoreWithin: 30 * time.Second}}
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4, LeaseTTL: time.Second},
		DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond, AdminToken: "admin", PingToken: "ping", Migrate: true,
		InstanceID: "node-p", Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	base := "http://" + svc.Addr()

	if code, body := apiCall(t, "GET", base+"/v1/partitions", "", nil); code != http.StatusUnauthorized || body["error"] == nil {
		t.Fatalf("without the admin token: %d %v", code, body)
	}
	// The ticker's events reach every partition: wait until each owner
	// reported progress with a lease renewal.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := apiCall(t, "GET", base+"/v1/partitions", "admin", nil)
		if code != http.StatusOK {
			t.Fatalf("GET /v1/partitions: %d %v", code, body)
		}
		parts, _ := body["partitions"].([]any)
		insts, _ := body["instances"].([]any)
		ok := len(parts) == 4 && len(insts) == 1
		for i, p := range parts {
			m, _ := p.(map[string]any)
			since, _ := m["since"].(string)
			_, sinceErr := time.Parse(time.RFC3339Nano, since)
			_, hasLag := m["lag_events"].(float64)
			if m["partition"] != float64(i) || m["owner"] != "node-p" || sinceErr != nil || !hasLag {
				ok = false
			}
			if seq, _ := m["applied_seq"].(float64); seq == 0 {
				ok = false
			}
		}
		if ok {
			inst, _ := insts[0].(map[string]any)
			roles, _ := inst["roles"].([]any)
			ps, _ := inst["partitions"].([]any)
			if inst["id"] != "node-p" || len(roles) != len(AllRoles) || len(ps) != 4 {
				t.Fatalf("instance: %v", inst)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /v1/partitions: %v", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
