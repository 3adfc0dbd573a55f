package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/service"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// TestHelpShowsNoSecret: with secrets in the environment, no command's -h
// output carries one.
func TestHelpShowsNoSecret(t *testing.T) {
	secrets := map[string]string{
		"DATABASE_URL":           "postgres://fleet:pw-from-DATABASE_URL@db.internal/devstatus",
		"DEVSTATUS_DATABASE_URL": "postgres://fleet:pw-from-DEVSTATUS_DATABASE_URL@db/devstatus",
		"DEVSTATUS_ADMIN_TOKEN":  "admin-secret-4f1c",
		"DEVSTATUS_PING_TOKEN":   "ping-secret-9a2e",
		"DEVSTATUS_NATS_URL":     "nats://nuser:nats-secret-77@nats:4222",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	for _, cmd := range [][]string{{"serve", "-h"}, {"serve", "--help"}, {"migrate", "-h"}, {"migrate", "status", "-h"}, {"rebuild", "-h"}} {
		code, out, errOut := runCmd(cmd...)
		if code != 0 || !strings.Contains(out, "-database-url") || errOut != "" {
			t.Errorf("%v: exit %d, stdout %d bytes, stderr %q", cmd, code, len(out), errOut)
		}
		for _, v := range secrets {
			for _, secret := range []string{v, strings.Split(strings.TrimPrefix(v, "postgres://fleet:"), "@")[0]} {
				if strings.Contains(out+errOut, secret) {
					t.Errorf("%v: the help output contains %q", cmd, secret)
				}
			}
		}
	}
}

func TestUsageGoesToStdout(t *testing.T) {
	code, out, errOut := runCmd("-h")
	if code != 0 || !strings.Contains(out, "devstatus serve") || errOut != "" {
		t.Errorf("devstatus -h: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runCmd()
	if code != 2 || out != "" || !strings.Contains(errOut, "Usage") {
		t.Errorf("devstatus (no command): exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runCmd("serve", "--no-such-flag")
	if code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("bad flag: exit %d, stderr %q", code, errOut)
	}
}

func TestEachCommandListsItsOwnFlags(t *testing.T) {
	_, migrateHelp, _ := runCmd("migrate", "-h")
	_, rebuildHelp, _ := runCmd("rebuild", "-h")
	_, serveHelp, _ := runCmd("serve", "-h")
	for _, f := range []string{"-http-addr", "-offline-after", "-admin-token", "-roles", "-nats-url", "-tls-cert"} {
		if strings.Contains(migrateHelp, f+" ") || strings.Contains(migrateHelp, f+"\n") {
			t.Errorf("migrate -h lists %s", f)
		}
	}
	for _, f := range []string{"-http-addr", "-offline-after", "-admin-token"} {
		if strings.Contains(rebuildHelp, f+" ") {
			t.Errorf("rebuild -h lists %s", f)
		}
	}
	if !strings.Contains(rebuildHelp, "-nats-url") || !strings.Contains(migrateHelp, "-database-url-file") {
		t.Errorf("rebuild -h or migrate -h lacks its own flags")
	}
	for _, f := range []string{"-tls-cert", "-tls-key", "-metrics-addr", "-pprof", "-admin-token-file", "-ping-token-file", "-database-url-file"} {
		if !strings.Contains(serveHelp, f) {
			t.Errorf("serve -h lacks %s", f)
		}
	}
}

func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	admin, ping, db := write("admin", "adm-tok\n"), write("ping", "  png-tok \n"), write("db", "postgres://x@y/z\n")
	t.Setenv("DATABASE_URL", "postgres://from-env@h/db")
	c, _, err := parse("serve", []string{"--admin-token-file", admin, "--ping-token-file", ping, "--database-url-file", db})
	if err != nil {
		t.Fatal(err)
	}
	if c.AdminToken != "adm-tok" || c.PingToken != "png-tok" || c.DatabaseURL != "postgres://x@y/z" || !c.adminFromOperator || !c.pingFromOperator {
		t.Errorf("from files: %q %q %q %v %v", c.AdminToken, c.PingToken, c.DatabaseURL, c.adminFromOperator, c.pingFromOperator)
	}
	c, _, err = parse("migrate", nil)
	if err != nil || c.DatabaseURL != "postgres://from-env@h/db" {
		t.Errorf("DATABASE_URL fallback: %q %v", c.DatabaseURL, err)
	}
	for _, bad := range [][]string{
		{"--admin-token", "x", "--admin-token-file", admin},
		{"--ping-token-file", filepath.Join(dir, "missing")},
		{"--admin-token-file", write("empty", "\n")},
	} {
		if _, _, err := parse("serve", bad); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v", bad, err)
		}
	}
	c, _, err = parse("serve", nil)
	if err != nil || c.adminFromOperator || c.pingFromOperator {
		t.Errorf("no tokens given: operator %v %v (%v)", c.adminFromOperator, c.pingFromOperator, err)
	}
}

func TestMaskURLs(t *testing.T) {
	for in, want := range map[string]string{
		"nats://user:pw@h1:4222,nats://tok@h2:4222": "nats://%2A%2A%2A@h1:4222,nats://%2A%2A%2A@h2:4222",
		"nats://h1:4222, tls://h2:4222":             "nats://h1:4222,tls://h2:4222",
		"user:pw@h3:4222":                           "***@h3:4222",
		"":                                          "",
	} {
		got := maskURLs(in)
		if got != want {
			t.Errorf("maskURLs(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"pw", "tok", "user"} {
			if strings.Contains(got, secret) {
				t.Errorf("maskURLs(%q) = %q keeps %q", in, got, secret)
			}
		}
	}
}

// TestBannerPrintsGeneratedSecretsOnly starts a service and prints the
// banner for a dev run with generated tokens and for operator-supplied ones.
func TestBannerPrintsGeneratedSecretsOnly(t *testing.T) {
	svc, err := service.Start(context.Background(), service.Config{HTTPAddr: "127.0.0.1:0",
		Bus: bus.Config{DataDir: t.TempDir(), Partitions: 2}, Roles: []string{service.RoleTicker}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	if failing := waitReady(context.Background(), svc, 0); len(failing) != 0 {
		t.Logf("not ready: %v", failing)
	}

	c := &config{DataDir: "./data", AdminToken: "generated-admin", PingToken: "generated-ping", Roles: []string{service.RoleTicker}}
	var b bytes.Buffer
	printBanner(&b, c, svc, []string{"admin-token"}, nil)
	if !strings.Contains(b.String(), "generated-admin") || !strings.Contains(b.String(), "generated-ping") ||
		!strings.Contains(b.String(), "http://"+svc.Addr()) {
		t.Errorf("dev-run banner:\n%s", b.String())
	}

	c = &config{DataDir: "./data", NATSURL: "nats://fleet:nats-pw@nats1:4222", AdminToken: "operator-admin", PingToken: "operator-ping",
		adminFromOperator: true, pingFromOperator: true, Roles: []string{service.RoleTicker}}
	b.Reset()
	printBanner(&b, c, svc, nil, []string{"postgres"})
	out := b.String()
	for _, secret := range []string{"operator-admin", "operator-ping", "nats-pw", "fleet"} {
		if strings.Contains(out, secret) {
			t.Errorf("the banner shows %q:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, "admin token: (as configured)") || !strings.Contains(out, "not ready yet: [postgres]") {
		t.Errorf("operator banner:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCmd("version")
	if code != 0 || !strings.Contains(out, runtime.Version()) || !strings.HasPrefix(out, "devstatus ") || !strings.Contains(out, "revision") {
		t.Errorf("version: exit %d\n%s", code, out)
	}
}

func TestMigrateStatus(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	code, out, errOut := runCmd("migrate", "status", "--database-url", dsn, "--log-level", "error")
	if code != 0 || !strings.Contains(out, " 0 applied") || strings.Contains(out, "applied 2") || !strings.Contains(out, "pending\n") {
		t.Fatalf("before migrate: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runCmd("migrate", "--database-url", dsn, "--log-level", "error"); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd("migrate", "status", "--database-url", dsn, "--log-level", "error")
	if code != 0 || !strings.Contains(out, " 0 pending") || !strings.Contains(out, ".sql") {
		t.Fatalf("after migrate: exit %d\n%s%s", code, out, errOut)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, ".sql") && !strings.Contains(line, " applied 2") {
			t.Errorf("after migrate: %q", line)
		}
	}
}
