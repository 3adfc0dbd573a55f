package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/service"
	"github.com/devstatus/devstatus/pkg/sim"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/trace"
	"github.com/devstatus/devstatus/pkg/worker"
)

// TestReplayTraceVirtualTime is issue #2's trace test: one whole day of
// the Grid'5000 availability trace (all 1 288 nodes; the committed excerpt,
// pkg/trace/testdata) is published in trace time straight to the input
// stream — registrations, heartbeats every 30 s while a node is up, clock
// ticks every 10 s of trace time — and runs through the partition workers
// and the projection at full speed. Every node's transitions in Postgres
// (from, to, reason code and time) and its final status must equal what the
// oracle predicts from the trace: zero differences. Under the race detector
// (about ten times slower) it replays the first hour only; `make
// test` runs the whole day in its non-race step.
func TestReplayTraceVirtualTime(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	tr, err := trace.Open(trace.TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	w := trace.TestdataDayWindow()
	if raceDetector {
		w.To = w.From.Add(time.Hour)
	}
	nodes := tr.Heartbeats(w, 30*time.Second)
	if len(nodes) != 1288 {
		t.Fatalf("%d nodes in the excerpt, want 1288", len(nodes))
	}
	dsn, db := testenv.Postgres(t)
	// No ticker role: the importer supplies ticks in trace time.
	svc, err := service.Start(context.Background(), service.Config{
		HTTPAddr: "127.0.0.1:0", Roles: []string{service.RoleWorker, service.RoleProjector, service.RoleAPI},
		Bus: bus.Config{DataDir: t.TempDir(), Partitions: 16}, DatabaseURL: dsn, AdminToken: admin,
		Migrate: true, Logger: testenv.LoggerAt(t, slog.LevelWarn),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	stats, err := trace.Import(ctx, svc.Bus.JS, nodes, trace.ImportConfig{Partitions: svc.Bus.Partitions(), Window: w, TickEvery: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("imported %s of trace: %d registrations, %d heartbeats, %d ticks in %s (%.0f events/s)",
		w, stats.Registered, stats.Heartbeats, stats.Ticks, stats.Elapsed.Round(time.Millisecond), stats.EventsPerSecond())

	var hb int
	for _, n := range nodes {
		hb += len(n.Times)
	}
	if hb == 0 {
		t.Fatal("no heartbeats in the window")
	}
	exps, err := trace.ExpectAll(nodes, w.To, trace.DefaultThresholds())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	diffs := compareWithOracle(t, db, exps, 8*time.Minute)
	if len(diffs) > 0 {
		t.Fatalf("%d of %d nodes differ from the oracle, e.g.\n%s", len(diffs), len(exps), strings.Join(diffs[:min(10, len(diffs))], "\n"))
	}
	n := 0
	for _, e := range exps {
		n += len(e.Transitions)
	}
	t.Logf("all %d nodes and %d transitions match the oracle (pipeline drained %s after the import)", len(exps), n, time.Since(start).Round(time.Millisecond))
}

// TestReplayTraceLive replays half an hour of the trace (all 1 288 nodes)
// over HTTP, time-compressed twenty-fold (thresholds, heartbeat interval and
// tick divided by 20), against the whole service with its own ticker, and
// compares every node's final status with the oracle (pkg/sim.ReplayLive
// picks the comparison time so that no node is within the measured delays
// of a threshold, and reports any node for which two statuses would be
// right as ambiguous rather than as a match).
func TestReplayTraceLive(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	if raceDetector {
		t.Skip("runs without the race detector: `make test` runs it in its non-race step")
	}
	const k = 20
	tr, err := trace.Open(trace.TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	day := trace.TestdataDayWindow()
	w := trace.Window{From: day.From.Add(10 * time.Hour), To: day.From.Add(10*time.Hour + 30*time.Minute)}
	th := trace.DefaultThresholds()
	sth := th.Scale(k)
	dsn, _ := testenv.Postgres(t)
	svc, err := service.Start(context.Background(), service.Config{
		HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 16}, DatabaseURL: dsn,
		Thresholds: worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: sth.OfflineAfter, DisconnectAfter: sth.DisconnectAfter,
			PingIgnoreWithin: trace.ScaleDuration(30*time.Second, k)}},
		Tick: trace.ScaleDuration(time.Second, k), HeartbeatInterval: time.Second,
		AdminToken: admin, PingToken: "ping", Migrate: true, Logger: testenv.LoggerAt(t, slog.LevelWarn),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	client, err := apiclient.NewClient(apiclient.ClientConfig{URL: "http://" + svc.Addr(), AdminToken: admin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := sim.ReplayLive(ctx, client, sim.LiveConfig{Trace: tr, Window: w, Factor: k, Thresholds: th})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live replay: %s", res)
	if len(res.Mismatches) > 0 {
		t.Fatalf("%d nodes differ from the oracle, e.g. %v", len(res.Mismatches), res.Mismatches[0])
	}
	if res.Nodes != 1288 || len(res.Ambiguous) > res.Nodes/100 {
		t.Fatalf("%d nodes replayed, %d ambiguous", res.Nodes, len(res.Ambiguous))
	}
}

// compareWithOracle polls Postgres until every expectation holds (history
// with exact times, and final status) or the timeout passes, and returns
// the differences of the last poll.
func compareWithOracle(t *testing.T, db *sqlx.DB, exps []trace.Expectation, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var diffs []string
	for {
		diffs = diffs[:0]
		got, statuses := dbTransitionsAt(t, db), dbStatuses(t, db)
		for _, e := range exps {
			var want []string
			for _, tr := range e.Transitions {
				want = append(want, fmt.Sprintf("%s>%s/%s@%s", tr.From, tr.To, tr.ReasonCode, tr.At.UTC().Format(time.RFC3339Nano)))
			}
			if !slices.Equal(got[e.Device], want) {
				diffs = append(diffs, fmt.Sprintf("%q: history %v, want %v", e.Device, got[e.Device], want))
			} else if statuses[e.Device] != string(e.Final) {
				diffs = append(diffs, fmt.Sprintf("%q: status %q, want %q", e.Device, statuses[e.Device], e.Final))
			}
		}
		if len(diffs) == 0 || time.Now().After(deadline) {
			return diffs
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func dbTransitionsAt(t *testing.T, db *sqlx.DB) map[string][]string {
	t.Helper()
	var rows []struct {
		Device string    `db:"device_id"`
		From   string    `db:"from_status"`
		To     string    `db:"to_status"`
		Code   string    `db:"reason_code"`
		At     time.Time `db:"at"`
	}
	if err := db.Select(&rows, `SELECT device_id, from_status, to_status, reason_code, at FROM transitions ORDER BY stream_seq`); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, r := range rows {
		out[r.Device] = append(out[r.Device], fmt.Sprintf("%s>%s/%s@%s", r.From, r.To, r.Code, r.At.UTC().Format(time.RFC3339Nano)))
	}
	return out
}
