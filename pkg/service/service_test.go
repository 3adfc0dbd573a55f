package service

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

func call(t *testing.T, method, u, token string, body any, out any) int {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, u, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// TestServiceSmoke starts every role in one process and follows one device
// from registration through a timeout and back.
func TestServiceSmoke(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	ctx := context.Background()
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 4 * time.Second, PingIgnoreWithin: time.Second}}
	svc, err := Start(ctx, Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4},
		DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond, HeartbeatInterval: time.Second,
		AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	base := "http://" + svc.Addr()
	id := "lobby/kiosk 7"
	path := base + "/v1/devices/" + url.PathEscape(id)

	var reg struct{ ID, Token string }
	if code := call(t, "POST", base+"/v1/devices", "admin", map[string]string{"id": id, "group": "lobby"}, &reg); code != 201 || reg.Token == "" {
		t.Fatalf("register: %d %+v", code, reg)
	}
	var hb map[string]any
	if code := call(t, "POST", path+"/heartbeat", reg.Token, map[string]any{"metrics": map[string]any{"battery": 80}}, &hb); code != 200 {
		t.Fatalf("heartbeat: %d %v", code, hb)
	}
	waitStatus := func(want string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var dev map[string]any
			call(t, "GET", path, "admin", nil, &dev)
			if dev["status"] == want {
				return dev
			}
			if time.Now().After(deadline) {
				t.Fatalf("status %v, want %s", dev["status"], want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitStatus("connected")
	waitStatus("disconnected")
	call(t, "POST", path+"/heartbeat", reg.Token, nil, &hb)
	if hb["should_reconnect"] != true {
		t.Errorf("comeback not signalled: %v", hb)
	}
	waitStatus("connected")
	var hist struct {
		Transitions []struct{ From, To, ReasonCode string } `json:"transitions"`
	}
	call(t, "GET", path+"/transitions", "admin", nil, &hist)
	var got []string
	for _, tr := range hist.Transitions {
		got = append(got, tr.From+">"+tr.To)
	}
	want := "registered>connected connected>temporarily_offline temporarily_offline>disconnected disconnected>connected"
	if strings.Join(got, " ") != want {
		t.Fatalf("history %v", got)
	}
	for _, u := range []string{"/healthz", "/readyz", "/metrics"} {
		if code := call(t, "GET", base+u, "", nil, nil); code != 200 {
			t.Errorf("%s: %d", u, code)
		}
	}
}

func TestInvalidConfig(t *testing.T) {
	_, err := Start(context.Background(), Config{Roles: []string{"bogus"}})
	if err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("err = %v", err)
	}
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 300 * time.Second, DisconnectAfter: 40 * time.Second}}
	if _, err := Start(context.Background(), Config{Roles: []string{RoleWorker}, Thresholds: th}); err == nil {
		t.Fatal("offline_after >= disconnect_after accepted")
	}
}
