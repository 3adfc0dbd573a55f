package service

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// TestFirmwareExamples runs the copyable device examples of docs/firmware
// (shell/curl, Python, and C with libcurl when a C compiler and the libcurl
// headers are installed) against a real service: each sends a
// bounded number of heartbeats and exits 0, and the device is connected.
// A second run at once is refused 429 by the rate limit; the example waits
// for Retry-After and succeeds.
func TestFirmwareExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the examples against the service (several seconds of rate-limit waits)")
	}
	dsn, _ := testenv.Postgres(t)
	// A rate limit of one heartbeat per 3 s: the second run's first
	// heartbeat comes within it (unless starting it takes 3 s).
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 2},
		DatabaseURL: dsn, Tick: 100 * time.Millisecond, HeartbeatInterval: 3 * time.Second,
		RateMinInterval: 3 * time.Second, AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	base := "http://" + svc.Addr()
	dir, err := filepath.Abs("../../docs/firmware")
	if err != nil {
		t.Fatal(err)
	}

	cBin := filepath.Join(t.TempDir(), "heartbeat")
	for _, ex := range []struct {
		name  string
		tools []string
		build func(t *testing.T)
		cmd   []string
	}{
		{"shell", []string{"bash", "curl"}, nil, []string{"bash", filepath.Join(dir, "heartbeat.sh")}},
		{"python", []string{"python3"}, nil, []string{"python3", filepath.Join(dir, "heartbeat.py")}},
		{"c", []string{"cc"}, func(t *testing.T) { buildC(t, filepath.Join(dir, "heartbeat.c"), cBin) }, []string{cBin}},
	} {
		t.Run(ex.name, func(t *testing.T) {
			for _, tool := range ex.tools {
				if _, err := exec.LookPath(tool); err != nil {
					t.Skipf("%s not installed: the %s example cannot run", tool, ex.name)
				}
			}
			if ex.build != nil {
				ex.build(t)
			}
			id := "fw-" + ex.name
			var reg struct{ Token string }
			if code := call(t, "POST", base+"/v1/devices", "admin", map[string]string{"id": id, "group": "firmware"}, &reg); code != 201 {
				t.Fatalf("register: %d", code)
			}
			run := func(heartbeats string) (string, time.Duration) {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				c := exec.CommandContext(ctx, ex.cmd[0], ex.cmd[1:]...)
				c.Env = append(os.Environ(), "DEVSTATUS_URL="+base, "DEVICE_ID="+id, "DEVICE_TOKEN="+reg.Token,
					"HEARTBEATS="+heartbeats, "BACKOFF_BASE_S=1", "BACKOFF_CAP_S=5")
				start := time.Now()
				out, err := c.CombinedOutput()
				if err != nil {
					t.Fatalf("%s exited with %v:\n%s", ex.name, err, out)
				}
				return string(out), time.Since(start)
			}
			// Two heartbeats: the second after the interval the first
			// answer told (3 s), so the rate limit lets it through.
			out, took := run("2")
			if strings.Count(out, ": 200 (") != 2 || strings.Contains(out, "429") {
				t.Fatalf("first run:\n%s", out)
			}
			if took < 3*time.Second {
				t.Errorf("first run took %s: it did not wait heartbeat_interval_s (3 s) between heartbeats", took)
			}
			waitDevice(t, base, id, "connected")

			// At once again: 429 with Retry-After, waited, then 200.
			out, took = run("1")
			if !strings.Contains(out, "429, Retry-After") || strings.Count(out, ": 200 (") != 1 {
				t.Fatalf("second run did not meet (and wait out) the rate limit:\n%s", out)
			}
			if took < time.Second {
				t.Errorf("second run took %s: it did not wait for Retry-After", took)
			}
			var dev map[string]any
			call(t, "GET", base+"/v1/devices/"+url.PathEscape(id), "admin", nil, &dev)
			if dev["status"] != "connected" {
				t.Errorf("after the second run: %v", dev["status"])
			}

			// A wrong token is final: exit 2, no retry loop.
			c := exec.Command(ex.cmd[0], ex.cmd[1:]...)
			c.Env = append(os.Environ(), "DEVSTATUS_URL="+base, "DEVICE_ID="+id, "DEVICE_TOKEN=wrong", "HEARTBEATS=1")
			if out, err := c.CombinedOutput(); c.ProcessState == nil || c.ProcessState.ExitCode() != 2 {
				t.Errorf("wrong token: %v\n%s", err, out)
			}
		})
	}
}

// waitDevice polls GET /v1/devices/{id} until its status is want.
func waitDevice(t *testing.T, base, id, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var dev map[string]any
		call(t, "GET", base+"/v1/devices/"+url.PathEscape(id), "admin", nil, &dev)
		if dev["status"] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %v, want %s", id, dev["status"], want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// buildC compiles the C example with warnings as errors; it skips when the
// libcurl development headers are not installed (apt-get install
// libcurl4-openssl-dev).
func buildC(t *testing.T, src, bin string) {
	t.Helper()
	probe := filepath.Join(t.TempDir(), "probe.c")
	if err := os.WriteFile(probe, []byte("#include <curl/curl.h>\nint main(void) { return curl_version() == 0; }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cc", "-o", probe+".out", probe, "-lcurl").CombinedOutput(); err != nil {
		t.Skipf("libcurl headers or library not installed: the C example cannot be built (%v: %s)", err, out)
	}
	if out, err := exec.Command("cc", "-Wall", "-Wextra", "-Werror", "-o", bin, src, "-lcurl").CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", src, err, out)
	}
}
