// Package testenv gives tests the real services they run against: an
// embedded JetStream server per test and a Postgres schema per test on the
// shared server named by DATABASE_URL (started by `make test` / .ci/run).
//
// Test-only: nothing outside _test.go files may import it.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // Postgres driver

	"github.com/devstatus/devstatus/pkg/bus"
)

// Logger returns a slog.Logger that writes to t.Log, at debug level.
func Logger(t testing.TB) *slog.Logger { return LoggerAt(t, slog.LevelDebug) }

// LoggerAt returns a slog.Logger that writes records at or above level to t.Log.
func LoggerAt(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// NATS opens a bus on a fresh embedded JetStream server storing in a temporary
// directory, closed when the test ends. cfg may be zero; DataDir and Logger are
// filled in.
func NATS(t testing.TB, cfg bus.Config) *bus.Bus {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	b, err := bus.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testenv: open bus: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// DatabaseURL returns DATABASE_URL, failing the test with instructions when
// it is unset.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("DATABASE_URL")
	if u == "" {
		t.Fatal("testenv: DATABASE_URL is not set; run the tests with `make test`, which starts a local Postgres")
	}
	return u
}

// Postgres creates a fresh schema on the test server and returns its URL
// (with search_path set to it) and an open *sqlx.DB using it. The schema is
// dropped when the test ends.
func Postgres(t testing.TB) (dsn string, db *sqlx.DB) {
	t.Helper()
	base := DatabaseURL(t)
	admin, err := sqlx.Open("postgres", base)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer admin.Close()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("testenv: create schema: %v", err)
	}
	dsn = WithSearchPath(t, base, schema)
	db, err = sqlx.Open("postgres", dsn)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		db.Close()
		a, err := sqlx.Open("postgres", base)
		if err == nil {
			_, _ = a.Exec("DROP SCHEMA " + schema + " CASCADE")
			a.Close()
		}
	})
	return dsn, db
}

// WithSearchPath returns the URL with search_path set to schema (lib/pq sends
// unknown URL parameters as run-time parameters).
func WithSearchPath(t testing.TB, base, schema string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		// key=value form
		return base + " search_path=" + schema
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
