package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
)

// proc is a devstatus serve subprocess.
type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startServe runs the built binary and waits for its banner's address.
func startServe(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	addrc := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`listening on http://(\S+)`)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrc <- m[1]
			}
		}
		p.done <- cmd.Wait()
	}()
	select {
	case p.addr = <-addrc:
	case err := <-p.done:
		t.Fatalf("devstatus serve exited (%v) before listening; stderr:\n%s", err, stderr.String())
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("devstatus serve not listening within 60s; stderr:\n%s", stderr.String())
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM (as systemctl stop does) and waits for the exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("devstatus serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Error("devstatus serve did not stop within 30s of SIGTERM")
	}
}

// call makes a JSON request and decodes the answer into out (if not nil),
// returning the status code.
func call(t *testing.T, method, url, token string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, b)
		}
	}
	return resp.StatusCode
}

type fleetState struct {
	Statuses    map[string]string
	Transitions map[string][]map[string]any
}

// readFleet reads the devices' statuses and histories through the API (a
// device not projected yet has status "" and no history).
func readFleet(t *testing.T, base, admin string, ids []string) fleetState {
	t.Helper()
	st := fleetState{Statuses: map[string]string{}, Transitions: map[string][]map[string]any{}}
	for _, id := range ids {
		var d struct {
			Status string `json:"status"`
		}
		if code := call(t, "GET", base+"/v1/devices/"+id, admin, nil, &d); code != 200 && code != 404 {
			t.Fatalf("GET device %s: %d", id, code)
		}
		var tr struct {
			Transitions []map[string]any `json:"transitions"`
		}
		if code := call(t, "GET", base+"/v1/devices/"+id+"/transitions?from=2000-01-01T00:00:00Z", admin, nil, &tr); code != 200 && code != 404 {
			t.Fatalf("GET transitions %s: %d", id, code)
		}
		st.Statuses[id] = d.Status
		st.Transitions[id] = tr.Transitions
	}
	return st
}

// TestBackupRestore runs the documented procedure on a small fleet: a
// service with three devices and their transitions is stopped, backed up
// with scripts/backup.sh, wiped (data directory removed, Postgres schema
// dropped), restored with scripts/restore.sh and started again: the devices,
// their statuses and histories, the generated admin, ping and NATS tokens
// and the device tokens are back (a device heartbeats with its old token).
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: builds the binary, needs Postgres (skipped with -short)")
	}
	for _, tool := range []string{"pg_dump", "pg_restore", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	baseURL := testenv.DatabaseURL(t)
	dsn, db := testenv.Postgres(t)
	var schema string
	if err := db.Get(&schema, `SELECT current_schema()`); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "devstatus")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dataDir, backupDir := filepath.Join(tmp, "data"), filepath.Join(tmp, "backup")
	args := []string{"--data-dir", dataDir, "--http-addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1", "--database-url", dsn,
		"--log-level", "warn", "--tick", "100ms", "--offline-after", "2s", "--disconnect-after", "4s",
		"--ping-ignore-within", "1s", "--heartbeat-interval", "1s", "--rate-min-interval", "0", "--rate-per-minute", "0",
		"--probe-after", "-1s", "--roles", "bridge,worker,ticker,projector,api", "--history-retention", "8760h"}

	// A small fleet: three devices, each heartbeats once, then falls silent
	// until disconnected (registered → connected → temporarily_offline →
	// disconnected), so that nothing moves while it is backed up.
	p := startServe(t, bin, args...)
	base := "http://" + p.addr
	adminB, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(adminB))
	ids := []string{"kiosk-1", "kiosk-2", "player-3"}
	tokens := map[string]string{}
	for _, id := range ids {
		var reg struct{ Token string }
		if code := call(t, "POST", base+"/v1/devices", admin, map[string]string{"id": id, "group": "lobby"}, &reg); code != 201 {
			t.Fatalf("register %s: %d", id, code)
		}
		tokens[id] = reg.Token
		if code := call(t, "POST", base+"/v1/devices/"+id+"/heartbeat", reg.Token, map[string]any{}, nil); code != 200 {
			t.Fatalf("heartbeat %s: %d", id, code)
		}
	}
	var before fleetState
	deadline := time.Now().Add(30 * time.Second)
	for {
		before = readFleet(t, base, admin, ids)
		done := true
		for _, id := range ids {
			done = done && before.Statuses[id] == "disconnected" && len(before.Transitions[id]) == 3
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fleet did not reach disconnected within 30s: %+v", before)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(t)
	tokenFiles := func() map[string]string {
		t.Helper()
		m := map[string]string{}
		for _, name := range []string{"admin-token", "ping-token", "nats-token"} {
			b, err := os.ReadFile(filepath.Join(dataDir, name))
			if err != nil {
				t.Fatal(err)
			}
			m[name] = string(b)
		}
		return m
	}
	tokensBefore := tokenFiles()

	run := func(script string, a ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join("..", "..", "scripts", script), a...)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+baseURL, "PG_SCHEMA="+schema)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
	}
	run("backup.sh", dataDir, backupDir)

	// Wipe: the data directory and the Postgres schema are gone.
	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(fmt.Sprintf(`DROP SCHEMA %s CASCADE`, schema)); err != nil {
		t.Fatal(err)
	}

	run("restore.sh", backupDir, dataDir)
	var n int
	if err := db.Get(&n, `SELECT count(*) FROM devices`); err != nil || n != len(ids) {
		t.Fatalf("devices rows after restore: %d, %v", n, err)
	}
	if got := tokenFiles(); !reflect.DeepEqual(got, tokensBefore) {
		t.Fatalf("token files after restore differ: %v, before %v", got, tokensBefore)
	}
	p = startServe(t, bin, args...)
	base = "http://" + p.addr

	// The same admin token (generated, kept in the data directory), the same
	// devices, statuses and histories.
	var after fleetState
	deadline = time.Now().Add(30 * time.Second)
	for {
		after = readFleet(t, base, admin, ids)
		if reflect.DeepEqual(after, before) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("after restore:\n%+v\nbefore:\n%+v", after, before)
	}
	var list struct {
		Devices []struct{ ID string }
	}
	if code := call(t, "GET", base+"/v1/devices", admin, nil, &list); code != 200 || len(list.Devices) != len(ids) {
		t.Fatalf("device list after restore: %d %+v", code, list)
	}
	// A device heartbeats with its old token and comes back.
	if code := call(t, "POST", base+"/v1/devices/kiosk-1/heartbeat", tokens["kiosk-1"], map[string]any{}, nil); code != 200 {
		t.Fatalf("heartbeat with the old token after restore: %d", code)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		st := readFleet(t, base, admin, []string{"kiosk-1"})
		if tr := st.Transitions["kiosk-1"]; len(tr) == 4 && tr[3]["to"] == "connected" && st.Statuses["kiosk-1"] == "connected" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kiosk-1 not connected after its heartbeat: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Another device's token is still refused for it (tokens are per device).
	if code := call(t, "POST", base+"/v1/devices/kiosk-1/heartbeat", tokens["kiosk-2"], map[string]any{}, nil); code != 403 {
		t.Fatalf("kiosk-2's token for kiosk-1: %d, want 403", code)
	}
	// History retention ran (the projector role prunes at start).
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m, _ := io.ReadAll(resp.Body)
	if !regexp.MustCompile(`(?m)^devstatus_history_prune_last_timestamp_seconds [1-9]`).Match(m) {
		t.Errorf("/metrics has no recent devstatus_history_prune_last_timestamp_seconds")
	}
}
