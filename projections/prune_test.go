package projections

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/clock"
)

const day = 24 * time.Hour

// insertHistory writes history rows directly: seq → (device, at).
func insertHistory(t *testing.T, db *sqlx.DB, rows map[int64]struct {
	dev string
	at  time.Time
}) {
	t.Helper()
	for seq, r := range rows {
		if _, err := db.Exec(`INSERT INTO transitions (stream_seq, device_id, from_status, to_status, reason_code, reason, at)
VALUES ($1, $2, 'connected', 'temporarily_offline', 'heartbeat_timeout', 'test', $3)`, seq, r.dev, r.at); err != nil {
			t.Fatal(err)
		}
	}
}

// setStatusSeqs gives each device of the history a devices row whose
// status_seq is its highest stream_seq, as the transitions projection does.
func setStatusSeqs(t *testing.T, db *sqlx.DB) {
	t.Helper()
	if _, err := db.Exec(`INSERT INTO devices AS d (id, status, status_since, status_seq)
SELECT device_id, 'temporarily_offline', max(at), max(stream_seq) FROM transitions GROUP BY device_id
ON CONFLICT (id) DO UPDATE SET status_seq = EXCLUDED.status_seq`); err != nil {
		t.Fatal(err)
	}
}

func historySeqs(t *testing.T, db *sqlx.DB) []int64 {
	t.Helper()
	var seqs []int64
	if err := db.Select(&seqs, `SELECT stream_seq FROM transitions ORDER BY stream_seq`); err != nil {
		t.Fatal(err)
	}
	return seqs
}

func TestPrunerConfig(t *testing.T) {
	for _, cfg := range []PrunerConfig{
		{DB: &sqlx.DB{}}, // no retention
		{Retention: day}, // no DB
		{DB: &sqlx.DB{}, Retention: day, BatchSize: -1}, // bad batch
		{DB: &sqlx.DB{}, Retention: day, Interval: -time.Second},
	} {
		if _, err := NewPruner(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewPruner(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

// TestPruneKeepsLatest: rows older than the horizon go, in batches, except
// each device's latest row; newer rows stay; a second round finds nothing;
// a round is skipped while another instance holds the lock.
func TestPruneKeepsLatest(t *testing.T) {
	db := openDB(t)
	ctx := context.Background()
	now := base
	type row = struct {
		dev string
		at  time.Time
	}
	insertHistory(t, db, map[int64]row{
		1: {"a", now.Add(-100 * day)}, 4: {"b", now.Add(-99 * day)}, 2: {"a", now.Add(-90 * day)},
		3: {"a", now.Add(-80 * day)}, 5: {"b", now.Add(-50 * day)}, 7: {"d", now.Add(-40 * day)},
		6: {"c", now.Add(-time.Hour)}, 10: {"a", now.Add(-day)},
		// exactly at the horizon: not older than it, kept.
		11: {"b", now.Add(-30 * day)},
	})
	setStatusSeqs(t, db)
	reg := prometheus.NewRegistry()
	p, err := NewPruner(PrunerConfig{DB: db, Retention: 30 * day, BatchSize: 2, Pause: -1,
		Clock: clock.NewFake(now), Logger: testenv.Logger(t), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.PruneOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Candidates in at order: 1 4 | 2 3 | 5 7. b's 4 and 5 both have the
	// newer 11; d's 7 is d's latest.
	if res.Skipped || res.Deleted != 5 || res.Kept != 1 || res.Batches != 3 || !res.Horizon.Equal(now.Add(-30*day)) {
		t.Fatalf("result %+v, want 5 deleted, 1 kept, 3 batches", res)
	}
	if got, want := historySeqs(t, db), []int64{6, 7, 10, 11}; !slices.Equal(got, want) {
		t.Fatalf("rows left %v, want %v", got, want)
	}
	if v := metricValue(t, p.m.rows); v != 5 {
		t.Errorf("pruned rows metric %v, want 5", v)
	}
	if v := metricValue(t, p.m.last); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last prune metric %v is not recent", v)
	}

	again, err := p.PruneOnce(ctx)
	if err != nil || again.Deleted != 0 || again.Kept != 1 {
		t.Fatalf("second round %+v, %v: want nothing deleted", again, err)
	}

	// Another instance pruning: this one skips the round.
	var schema string
	if err := db.Get(&schema, `SELECT current_schema()`); err != nil {
		t.Fatal(err)
	}
	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, pruneLockID(schema)); err != nil {
		t.Fatal(err)
	}
	insertHistory(t, db, map[int64]row{12: {"e", now.Add(-200 * day)}, 13: {"e", now.Add(-time.Hour)}})
	setStatusSeqs(t, db)
	if res, err := p.PruneOnce(ctx); err != nil || !res.Skipped {
		t.Fatalf("with the lock held elsewhere: %+v, %v; want skipped", res, err)
	}
	if _, err := holder.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, pruneLockID(schema)); err != nil {
		t.Fatal(err)
	}
	if res, err := p.PruneOnce(ctx); err != nil || res.Deleted != 1 {
		t.Fatalf("after the lock is released: %+v, %v; want 1 deleted", res, err)
	}
}

// TestPruneDoesNotBlockProjector: a real projector on a real stream keeps
// committing new transitions, of the very devices whose old rows a batch is
// deleting, while that batch's transaction is open; at the end every
// device's latest transition is still there.
func TestPruneDoesNotBlockProjector(t *testing.T) {
	db := openDB(t)
	b := openBus(t)
	ctx := context.Background()
	const devices, perDevice = 40, 150
	// Old history through the stream: 10 000 transitions, 100 days ago,
	// interleaved over the devices.
	var last jetstream.PubAckFuture
	for i := 0; i < devices*perDevice; i++ {
		dev := fmt.Sprintf("dev-%02d", i%devices)
		from, to := events.StatusConnected, events.StatusTemporarilyOffline
		if (i/devices)%2 == 1 {
			from, to = to, from
		}
		e := transition(dev, from, to, events.ReasonHeartbeatTimeout, -100*86400+float64(i))
		data, err := events.EncodeStatusChanged(e)
		if err != nil {
			t.Fatal(err)
		}
		if last, err = b.JS.PublishAsync(events.TransitionSubject(dev, testPartitions), data, jetstream.WithMsgID(e.MsgID())); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-b.JS.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing the old history took over 30s")
	}
	ack := <-last.Ok()
	_, stop := startProjector(t, Config{DB: db, JetStream: b.JS, Projections: []string{ProjectionTransitions}})
	defer stop()
	waitCheckpoint(t, db, ProjectionTransitions, ack.Sequence)

	var during atomic.Int32
	p, err := NewPruner(PrunerConfig{DB: db, Retention: 30 * day, BatchSize: 500, Pause: -1,
		Clock: clock.NewFake(base), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	p.inBatch = func(ctx context.Context, batch int) {
		if batch != 3 {
			return
		}
		// This batch has deleted (uncommitted) old rows of every device;
		// dev-07 comes back now.
		seq := publishTransition(t, b.JS, "dev-07", events.StatusTemporarilyOffline, events.StatusConnected, events.ReasonHeartbeat, 0)
		deadline := time.Now().Add(10 * time.Second)
		for {
			var n int
			if err := db.Get(&n, `SELECT count(*) FROM devices d JOIN transitions t ON t.stream_seq = d.status_seq
WHERE d.id = 'dev-07' AND d.status_seq = $1 AND d.status = 'connected'`, seq); err != nil {
				t.Error(err)
				return
			}
			if n == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Error("the projector did not commit a new transition within 10s while a prune batch was open")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		during.Add(1)
	}
	res, err := p.PruneOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if during.Load() != 1 {
		t.Fatal("no projection commit was observed during the open prune batch")
	}
	// Every old row goes but each device's latest; dev-07's latest is now
	// the new one, so all its old rows go.
	if want := int64(devices*perDevice - (devices - 1)); res.Deleted != want || res.Kept != devices-1 {
		t.Fatalf("result %+v, want %d deleted, %d kept", res, want, devices-1)
	}
	var bad int
	if err := db.Get(&bad, `SELECT count(*) FROM devices d WHERE NOT EXISTS
(SELECT 1 FROM transitions t WHERE t.stream_seq = d.status_seq AND t.device_id = d.id)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Get(&n, `SELECT count(*) FROM transitions`); err != nil {
		t.Fatal(err)
	}
	if bad != 0 || n != devices {
		t.Fatalf("%d devices lost the transition of their current status; %d rows left, want %d", bad, n, devices)
	}
	// The current-status reads still explain every device.
	st := NewStore(db)
	ps, err := st.StatusAt(ctx, "dev-03", base)
	if err != nil || !ps.Known || ps.Seq == 0 {
		t.Fatalf("status of dev-03 after pruning: %+v, %v", ps, err)
	}
}
