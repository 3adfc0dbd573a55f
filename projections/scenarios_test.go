package projections

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
)

// Scenario 10: the process (TestMain) and the Postgres sessions (openDB) run
// in Europe/Berlin, around the night the clocks spring forward. Heartbeat A
// at 0, restart at 10: A is still connected and 10 s silent, not hours; a
// never-pinged device has NULL last_ping_at, not year 1.
func TestScenario10TimeZones(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	js := openBus(t).JS
	var tz string
	if err := db.Get(&tz, `SHOW TimeZone`); err != nil || tz != "Europe/Berlin" {
		t.Fatalf("session time zone %q, %v", tz, err)
	}
	publishInput(t, js, registration("A", "g", -60))
	publishInput(t, js, registration("B", "g", -60))
	lastIn := publishInput(t, js, heartbeat("A", 0, `{"battery":50}`))
	lastTr := publishTransition(t, js, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 0)
	_, stop := startProjector(t, Config{DB: db, JetStream: js})
	waitCheckpoint(t, db, ProjectionLiveness, lastIn)
	waitCheckpoint(t, db, ProjectionTransitions, lastTr)
	stop() // the restart at 10
	p, stop2 := startProjector(t, Config{DB: db, JetStream: js})
	defer stop2()
	testenv.Eventually(t, 5*time.Second, "ready after restart", func() bool { return p.Ready(ctx) == nil })

	st := NewStore(db)
	a, err := st.Device(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != events.StatusConnected || !a.StatusSince.Equal(at(0)) || a.StatusSince.Location() != time.UTC {
		t.Errorf("A: status %s since %v", a.Status, a.StatusSince)
	}
	if a.LastHeartbeatAt == nil || !a.LastHeartbeatAt.Equal(at(0)) || a.LastHeartbeatAt.Location() != time.UTC {
		t.Errorf("A: last heartbeat %v, want %v UTC", a.LastHeartbeatAt, at(0))
	}
	if silent := at(10).Sub(*a.LastHeartbeatAt); silent != 10*time.Second {
		t.Errorf("A silent for %s at 10, want 10s", silent)
	}
	bdev, err := st.Device(ctx, "B")
	if err != nil {
		t.Fatal(err)
	}
	if bdev.LastPingAt != nil || bdev.LastPingOK != nil || bdev.LastHeartbeatAt != nil || bdev.Metrics != nil || bdev.MetricsAt != nil {
		t.Errorf("never-heard B: %+v", bdev)
	}
	var nulls bool
	if err := db.Get(&nulls, `SELECT last_ping_at IS NULL AND last_heartbeat_at IS NULL AND last_ping_ok IS NULL FROM devices WHERE id = 'B'`); err != nil || !nulls {
		t.Errorf("B's never-times are not NULL in Postgres (%v)", err)
	}
	// stale_for is measured against the caller's now, in absolute time.
	for _, c := range []struct {
		now  float64
		want []string
	}{
		{10, []string{"B"}}, // A silent 10s: not stale for 40s; B never heard, registered 70s ago: stale
		{40, []string{"B"}}, // exactly 40s: not "longer than"
		{40.001, []string{"A", "B"}},
	} {
		page, err := st.List(ctx, ListFilter{StaleFor: 40 * time.Second}, at(c.now).In(time.Local))
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range page.Devices {
			ids = append(ids, d.ID)
		}
		if !reflect.DeepEqual(ids, c.want) {
			t.Errorf("stale for 40s at %gs: %v, want %v", c.now, ids, c.want)
		}
	}
}

func TestRebuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	js := openBus(t).JS
	// Empty streams: a rebuild returns at once.
	if err := Rebuild(ctx, db, js, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	var lastIn uint64
	for i := range 30 {
		id := "d" + string(rune('A'+i))
		publishInput(t, js, registration(id, []string{"x", "y"}[i%2], float64(i)))
		lastIn = publishInput(t, js, heartbeat(id, float64(i+1), `{"i":1}`))
		publishTransition(t, js, id, events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, float64(i+1))
		publishTransition(t, js, id, events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, float64(i+41))
	}
	bad := transition("dZ", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	bad.Reason = "\x00"
	lastTr := publishStatusChanged(t, js, bad)
	publishInput(t, js, &events.Input{Type: events.TypeTick, At: at(100)})
	_, stop := startProjector(t, Config{DB: db, JetStream: js})
	waitCheckpoint(t, db, ProjectionLiveness, lastIn)
	waitCheckpoint(t, db, ProjectionTransitions, lastTr)
	stop()
	before := dump(t, db)
	if len(before["devices"]) != 30 || len(before["transitions"]) != 60 || len(before["dead_letters"]) != 1 {
		t.Fatalf("projected %d devices, %d transitions, %d dead letters", len(before["devices"]), len(before["transitions"]), len(before["dead_letters"]))
	}
	// Damage the projection, then rebuild it.
	if _, err := db.Exec(`UPDATE devices SET status = 'disconnected', last_heartbeat_at = NULL; DELETE FROM transitions WHERE stream_seq % 2 = 0`); err != nil {
		t.Fatal(err)
	}
	if err := Rebuild(ctx, db, js, testenv.Logger(t), Config{BatchSize: 7}); err != nil {
		t.Fatal(err)
	}
	if after := dump(t, db); !reflect.DeepEqual(before, after) {
		t.Errorf("rebuild differs:\nbefore %v\nafter  %v", before, after)
	}
	st := NewStore(db)
	for name, want := range map[string]uint64{ProjectionLiveness: lastIn, ProjectionTransitions: lastTr} {
		if cp, err := st.Checkpoint(ctx, name); err != nil || cp != want {
			t.Errorf("%s checkpoint %d (%v), want %d", name, cp, err, want)
		}
	}
}

// Postgres going away: the projector retries without skipping anything and
// reports not ready; when Postgres is back everything published meanwhile is
// projected.
func TestDatabaseDownRetriesAndReportsNotReady(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, proxy := proxiedDB(t)
	js := openBus(t).JS
	p, _ := startProjector(t, Config{DB: db, JetStream: js, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	seq := publishTransition(t, js, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	waitCheckpoint(t, db, ProjectionTransitions, seq)
	testenv.Eventually(t, 5*time.Second, "ready", func() bool { return p.Ready(ctx) == nil })

	// Idle: the probe notices.
	proxy.down()
	testenv.Eventually(t, 5*time.Second, "not ready while Postgres is down and the projector idle", func() bool {
		return errors.Is(p.Ready(ctx), ErrNotReady)
	})
	var last uint64
	for i := range 20 {
		last = publishTransition(t, js, "A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, float64(10+i))
	}
	testenv.Eventually(t, 5*time.Second, "not ready while Postgres is down", func() bool {
		err := p.Ready(ctx)
		var nre *NotReadyError
		return errors.Is(err, ErrNotReady) && errors.As(err, &nre) && nre.Reason == "database unavailable"
	})
	proxy.up()
	waitCheckpoint(t, db, ProjectionTransitions, last)
	testenv.Eventually(t, 5*time.Second, "ready again", func() bool { return p.Ready(ctx) == nil })
	var n int
	if err := db.Get(&n, `SELECT count(*) FROM transitions`); err != nil || n != 21 {
		t.Errorf("%d transitions (%v), want 21: nothing skipped", n, err)
	}
}

// Postgres coming back: Ready pings it and is ready again at once, not when
// the projector's retry backoff (6 s here) next runs the failed batch.
func TestReadyFollowsPostgresBackBeforeTheRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, proxy := proxiedDB(t)
	js := openBus(t).JS
	p, _ := startProjector(t, Config{DB: db, JetStream: js, RetryMin: 6 * time.Second, RetryMax: 6 * time.Second, LagInterval: time.Minute})
	seq := publishTransition(t, js, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	waitCheckpoint(t, db, ProjectionTransitions, seq)
	testenv.Eventually(t, 5*time.Second, "ready", func() bool { return p.Ready(ctx) == nil })

	proxy.down()
	last := publishTransition(t, js, "A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 2)
	testenv.Eventually(t, 5*time.Second, "not ready: the write failed and the ping fails", func() bool {
		var nre *NotReadyError
		return errors.As(p.Ready(ctx), &nre) && nre.Reason == reasonDBUnavailable
	})
	proxy.up()
	testenv.Eventually(t, 3*time.Second, "ready once Postgres answers", func() bool { return p.Ready(ctx) == nil })
	cp, err := NewStore(db).Checkpoint(ctx, ProjectionTransitions)
	if err != nil {
		t.Fatal(err)
	}
	if cp >= last {
		t.Fatalf("the failed batch was retried already (checkpoint %d): the test shows nothing", cp)
	}
	waitCheckpoint(t, db, ProjectionTransitions, last)
}

// tcpProxy forwards a local port to target; down() closes the listener and
// every connection (Postgres "disappears"), up() listens again on the same
// port.
type tcpProxy struct {
	t      testing.TB
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTCPProxy(t testing.TB, target string) *tcpProxy {
	p := &tcpProxy{t: t, target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.down(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.pipe(c) })
		}
	})
}

func (p *tcpProxy) pipe(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // went down meanwhile
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.conns[c], p.conns[s] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(s, c); s.Close() })
	wg.Go(func() { _, _ = io.Copy(c, s); c.Close() })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, s)
	p.mu.Unlock()
}

func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

func (p *tcpProxy) up() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(ln)
}

// A stream recreated under an existing projection (its last sequence below
// the checkpoint) makes the projector not ready instead of silently waiting;
// losing NATS makes it not ready too.
func TestReadinessStreamBehindAndBusDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	b := openBus(t)
	seq := publishTransition(t, b.JS, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	if _, err := db.Exec(`INSERT INTO projection_checkpoints (name, stream, last_seq, updated_at) VALUES ($1, $2, 1000, now())`,
		ProjectionTransitions, events.TransitionStream); err != nil {
		t.Fatal(err)
	}
	p, stop := startProjector(t, Config{DB: db, JetStream: b.JS})
	testenv.Eventually(t, 5*time.Second, "not ready: stream behind", func() bool {
		return errors.Is(p.Ready(ctx), ErrStreamBehindCheckpoint)
	})
	if d, err := NewStore(db).Device(ctx, "A"); err == nil {
		t.Errorf("seq %d below the checkpoint was applied: %+v", seq, d)
	}
	stop()

	if _, err := db.Exec(`DELETE FROM projection_checkpoints`); err != nil {
		t.Fatal(err)
	}
	p2, _ := startProjector(t, Config{DB: db, JetStream: b.JS})
	waitCheckpoint(t, db, ProjectionTransitions, seq)
	testenv.Eventually(t, 5*time.Second, "ready", func() bool { return p2.Ready(ctx) == nil })
	b.Server.Shutdown()
	testenv.Eventually(t, 10*time.Second, "not ready without NATS", func() bool {
		var nre *NotReadyError
		return errors.As(p2.Ready(ctx), &nre) && nre.Reason == "stream unavailable"
	})
}

// proxiedDB opens a migrated fresh schema through a TCP proxy that the test
// can take down and bring back up, closed when the test ends.
func proxiedDB(t *testing.T) (*sqlx.DB, *tcpProxy) {
	t.Helper()
	dsn, _ := testenv.Postgres(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newTCPProxy(t, u.Host)
	u.Host = proxy.addr
	return openMigrated(t, u.String()), proxy
}
