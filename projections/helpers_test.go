package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin without a system zoneinfo

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// TestMain runs every test of the package with the process in Europe/Berlin
// (TZ, hence time.Local) and, through openDB, Postgres sessions in
// Europe/Berlin too (scenario 10): nothing may depend on either. time.Local
// cannot be changed safely once goroutines run, so the test binary re-runs
// itself with TZ set.
func TestMain(m *testing.M) {
	if os.Getenv("TZ") != "Europe/Berlin" {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), "TZ=Europe/Berlin")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			panic(err)
		}
		os.Exit(0)
	}
	if name, _ := time.Date(2026, 7, 1, 0, 0, 0, 0, time.Local).Zone(); name != "CEST" {
		panic("time.Local is not Europe/Berlin: " + name)
	}
	goleak.VerifyTestMain(m, testenv.LeakOptions()...)
}

const testPartitions = 4

// skipShort skips integration tests under -short.
func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs Postgres and JetStream (skipped with -short)")
	}
}

// base is the event-time origin of the tests: the night Berlin springs
// forward (2026-03-29 01:00 UTC), so any local-time confusion shows.
var base = time.Date(2026, 3, 29, 0, 59, 30, 0, time.UTC)

// at returns base + s seconds.
func at(s float64) time.Time { return base.Add(time.Duration(s * float64(time.Second))) }

// openMigrated opens dsn, migrates it and closes it when the test ends.
func openMigrated(t testing.TB, dsn string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(context.Background(), db.DB, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	return db
}

// openDB gives the test a fresh migrated schema whose sessions run in
// Europe/Berlin.
func openDB(t testing.TB) *sqlx.DB {
	t.Helper()
	skipShort(t)
	dsn, _ := testenv.Postgres(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("timezone", "Europe/Berlin")
	u.RawQuery = q.Encode()
	return openMigrated(t, u.String())
}

func openBus(t testing.TB) *bus.Bus {
	t.Helper()
	skipShort(t)
	return testenv.NATS(t, bus.Config{Partitions: testPartitions})
}

// publishInput publishes an input event on its device subject and returns its
// stream sequence.
func publishInput(t testing.TB, js jetstream.JetStream, e *events.Input) uint64 {
	t.Helper()
	if e.ID == "" {
		e.ID = fmt.Sprintf("in-%s-%s-%d", e.Type, e.Device, e.At.UnixNano())
	}
	b, err := events.EncodeInput(e)
	if err != nil {
		t.Fatal(err)
	}
	subj := events.DeviceSubject(e.Device, testPartitions)
	if e.Type == events.TypeTick {
		subj = events.TickSubject(0)
	}
	ack, err := js.Publish(context.Background(), subj, b)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// publishRaw publishes arbitrary bytes on subj.
func publishRaw(t testing.TB, js jetstream.JetStream, subj string, b []byte) uint64 {
	t.Helper()
	ack, err := js.Publish(context.Background(), subj, b)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

var trCounter struct {
	sync.Mutex
	n uint64
}

// publishTransition publishes a transition of dev (from → to at s seconds)
// and returns its stream sequence.
func publishTransition(t testing.TB, js jetstream.JetStream, dev string, from, to events.Status, code events.ReasonCode, s float64) uint64 {
	t.Helper()
	return publishStatusChanged(t, js, transition(dev, from, to, code, s))
}

func transition(dev string, from, to events.Status, code events.ReasonCode, s float64) *events.StatusChanged {
	trCounter.Lock()
	trCounter.n++
	n := trCounter.n
	trCounter.Unlock()
	return &events.StatusChanged{
		ID: fmt.Sprintf("tr-0-%d-0", n), Device: dev, Group: "lobby", From: from, To: to, ReasonCode: code,
		Reason: fmt.Sprintf("%s at %gs", code, s), At: at(s), ObservedAt: at(s + 0.5),
		Cause:     events.Cause{EventID: fmt.Sprintf("ev-%d", n), Type: events.TypeHeartbeat, Seq: n},
		Partition: events.Partition(dev, testPartitions),
	}
}

func publishStatusChanged(t testing.TB, js jetstream.JetStream, e *events.StatusChanged) uint64 {
	t.Helper()
	b, err := events.EncodeStatusChanged(e)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(context.Background(), events.TransitionSubject(e.Device, testPartitions), b, jetstream.WithMsgID(e.MsgID()))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func registration(dev, group string, s float64) *events.Input {
	return &events.Input{Type: events.TypeDeviceRegistered, Device: dev, At: at(s), Actor: "admin",
		Registered: &events.Registered{Group: group}}
}

func heartbeat(dev string, s float64, metrics string) *events.Input {
	hb := &events.Heartbeat{}
	if metrics != "" {
		hb.Metrics = json.RawMessage(metrics)
	}
	return &events.Input{Type: events.TypeHeartbeat, Device: dev, At: at(s), Heartbeat: hb}
}

func ping(dev string, checked, received float64, ok bool) *events.Input {
	return &events.Input{Type: events.TypePingResult, Device: dev, At: at(received),
		Ping: &events.PingResult{OK: ok, RTTMs: 12, CheckedAt: at(checked)}}
}

// startProjector runs a projector until the returned stop is called (or the
// test ends).
func startProjector(t testing.TB, cfg Config) (*Projector, func()) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	if cfg.LagInterval == 0 {
		cfg.LagInterval = 100 * time.Millisecond
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return p, stop
}

// waitCheckpoint waits until projection's stored checkpoint is at least seq.
func waitCheckpoint(t testing.TB, db *sqlx.DB, projection string, seq uint64) {
	t.Helper()
	st := NewStore(db)
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%s checkpoint reaches %d", projection, seq), func() bool {
		cp, err := st.Checkpoint(context.Background(), projection)
		return err == nil && cp >= seq
	})
}

// dump returns the projected tables as JSON rows, for before/after checks.
func dump(t testing.TB, db *sqlx.DB) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table, q := range map[string]string{
		"devices":      `SELECT to_jsonb(d)::text FROM devices d ORDER BY id`,
		"transitions":  `SELECT to_jsonb(x)::text FROM transitions x ORDER BY stream_seq`,
		"dead_letters": `SELECT (to_jsonb(x) - 'first_failed_at' - 'last_failed_at' - 'attempts')::text FROM dead_letters x ORDER BY stream, seq`,
	} {
		var rows []string
		if err := db.Select(&rows, q); err != nil {
			t.Fatal(err)
		}
		out[table] = rows
	}
	return out
}
