package projections

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/clock"
)

// History retention: the [Pruner] deletes transitions rows whose at is older
// than the retention horizon (now − Retention), in small batches, each its
// own short transaction, with a pause between batches. It never deletes the
// row that set a device's current status (devices.status_seq: the device's
// latest transition), however old: the current status must stay explainable
// by the transition that set it, and the status-at and availability reads
// stay right from that transition on.
//
// It does not block the projector: a batch takes row locks only on the rows
// it deletes (old rows, which nothing else writes: history rows are inserted
// once and never updated) and the table lock every INSERT also takes (ROW
// EXCLUSIVE, which does not conflict with itself); it reads the devices
// table without locking any of its rows. With several instances running the projector role, only one
// prunes at a time: a round runs only while holding a Postgres session
// advisory lock specific to the schema (the others skip the round).
//
// Pruning decides what to delete by the clock ([PrunerConfig.Clock]); it is
// the one part of this package that does.

// PrunerConfig configures a [Pruner]. Zero values take the documented
// defaults.
type PrunerConfig struct {
	// DB is the Postgres pool, migrated with [Migrate]. Required. A round
	// holds one connection.
	DB *sqlx.DB
	// Retention is how long history rows are kept, by their at (when the
	// transition took effect). Required, positive.
	Retention time.Duration
	// Interval between the starts of two rounds; the first round runs when
	// [Pruner.Run] starts. Default 1h.
	Interval time.Duration
	// BatchSize is the most rows examined (and so deleted) by one batch
	// transaction. Default 5000, at most 100000.
	BatchSize int
	// Pause between two batches of a round, so that pruning a large backlog
	// leaves Postgres to the projector. Default 100ms; negative: none.
	Pause time.Duration
	// LockTimeout bounds how long a batch waits for a row lock (it should
	// never have to: nothing else locks old history rows). Default 5s.
	LockTimeout time.Duration
	// Clock gives now for the horizon. Default clock.NewMonotonic().
	Clock clock.Clock
	// Logger receives one line per round that deleted rows, and errors.
	// Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics (see below). Nil: kept, not registered.
	Registerer prometheus.Registerer
}

func (c *PrunerConfig) setDefaults() {
	if c.Interval == 0 {
		c.Interval = time.Hour
	}
	if c.BatchSize == 0 {
		c.BatchSize = 5000
	}
	if c.Pause == 0 {
		c.Pause = 100 * time.Millisecond
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = 5 * time.Second
	}
	if c.Clock == nil {
		c.Clock = clock.NewMonotonic()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *PrunerConfig) validate() error {
	var errs []error
	if c.DB == nil {
		errs = append(errs, errors.New("DB is required"))
	}
	if c.Retention <= 0 {
		errs = append(errs, fmt.Errorf("retention must be positive, got %s", c.Retention))
	}
	if c.Interval < 0 || c.LockTimeout < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if c.BatchSize < 1 || c.BatchSize > 100000 {
		errs = append(errs, fmt.Errorf("prune batch size must be in 1..100000, got %d", c.BatchSize))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// PruneResult is what one round of [Pruner.PruneOnce] did.
type PruneResult struct {
	// Skipped is true when another instance held the prune lock: nothing was
	// done.
	Skipped bool
	// Horizon: rows with at before it were candidates.
	Horizon time.Time
	// Deleted rows, and the batches (transactions) that deleted them.
	Deleted int64
	Batches int
	// Kept counts the candidates kept because they are their device's latest
	// row.
	Kept int64
}

// Pruner deletes history older than the retention; see the top of this file.
type Pruner struct {
	cfg PrunerConfig
	log *slog.Logger
	m   *pruneMetrics

	// inBatch, when set (tests), is called inside each batch transaction
	// after its DELETE and before its COMMIT, with the batch number from 1.
	inBatch func(ctx context.Context, batch int)
}

// pruneMetrics:
//
//	devstatus_history_pruned_rows_total               counter rows deleted by history retention
//	devstatus_history_prune_last_timestamp_seconds     gauge   Unix time the last complete round ended
//	devstatus_history_prune_errors_total               counter rounds that failed (retried next interval)
type pruneMetrics struct {
	rows   prometheus.Counter
	last   prometheus.Gauge
	errors prometheus.Counter
}

func newPruneMetrics(reg prometheus.Registerer) (*pruneMetrics, error) {
	m := &pruneMetrics{
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_history_pruned_rows_total",
			Help: "Transition history rows deleted by history retention."}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_history_prune_last_timestamp_seconds",
			Help: "Unix time at which the last complete history prune round of this instance ended (0: none yet)."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_history_prune_errors_total",
			Help: "History prune rounds that failed; the next interval tries again."}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.rows, err = register(reg, m.rows); err == nil {
		if m.last, err = register(reg, m.last); err == nil {
			m.errors, err = register(reg, m.errors)
		}
	}
	return m, err
}

// NewPruner checks cfg and returns a Pruner; it does no I/O. Errors wrap
// [ErrInvalidConfig], or are the Registerer's.
func NewPruner(cfg PrunerConfig) (*Pruner, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newPruneMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Pruner{cfg: cfg, log: cfg.Logger.With(slog.String("component", "history-retention")), m: m}, nil
}

// Run prunes once now and then every Interval until ctx ends, and returns
// nil then. A failed round is logged, counted and retried at the next
// interval.
func (p *Pruner) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := p.PruneOnce(ctx); err != nil && ctx.Err() == nil {
			p.m.errors.Inc()
			p.log.Error("history prune failed; retrying at the next interval", slog.Any("err", err),
				slog.Duration("interval", p.cfg.Interval))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// pruneBatchSQL examines the next BatchSize rows older than the horizon ($1)
// after the cursor ($2, $3) in (at, stream_seq) order and deletes those that
// did not set their device's current status (devices.status_seq, which the
// transitions projection keeps at the device's highest stream_seq in the
// same transaction as the rows: one primary-key look-up per row, where
// "no newer row of the device" would scan a flapping device's whole history
// for each of its rows). It reads devices without locking them. It returns
// the rows deleted, the rows examined and the last row examined (the next
// cursor; NULL when none).
const pruneBatchSQL = `
WITH cand AS (
    SELECT stream_seq, device_id, at FROM transitions
    WHERE at < $1 AND (at, stream_seq) > ($2::timestamptz, $3::bigint)
    ORDER BY at, stream_seq
    LIMIT $4
), del AS (
    DELETE FROM transitions t USING cand c
    WHERE t.stream_seq = c.stream_seq
      AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = c.device_id AND d.status_seq = c.stream_seq)
    RETURNING t.stream_seq
), last AS (
    SELECT at, stream_seq FROM cand ORDER BY at DESC, stream_seq DESC LIMIT 1
)
SELECT (SELECT count(*) FROM del), (SELECT count(*) FROM cand), (SELECT at FROM last), (SELECT stream_seq FROM last)`

// PruneOnce runs one round: it takes the prune lock (or returns Skipped when
// another instance holds it), then deletes batch after batch until no row
// older than the horizon is left but the devices' latest ones. Errors are
// the database's, or ctx's.
func (p *Pruner) PruneOnce(ctx context.Context) (PruneResult, error) {
	res := PruneResult{Horizon: p.cfg.Clock.Now().Add(-p.cfg.Retention).UTC()}
	conn, err := p.cfg.DB.Conn(ctx)
	if err != nil {
		return res, fmt.Errorf("projections: prune: %w", err)
	}
	defer conn.Close()
	var schema string
	if err := conn.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return res, fmt.Errorf("projections: prune: current schema: %w", err)
	}
	lockID := pruneLockID(schema)
	var locked bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, lockID).Scan(&locked); err != nil {
		return res, fmt.Errorf("projections: prune: lock: %w", err)
	}
	if !locked {
		res.Skipped = true
		p.log.Debug("history prune skipped: another instance is pruning")
		return res, nil
	}
	defer func() {
		// A cancelled ctx must not leave the session lock on a pooled
		// connection: unlock with a fresh context.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1)`, lockID); err != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn }) // drop the connection, and the lock with it
		}
	}()

	start := time.Now()
	curAt, curSeq := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), int64(-1)
	for {
		deleted, examined, lastAt, lastSeq, err := p.batch(ctx, conn, res.Horizon, curAt, curSeq, res.Batches+1)
		if err != nil {
			return res, err
		}
		if examined == 0 {
			break
		}
		res.Batches++
		res.Deleted += deleted
		res.Kept += examined - deleted
		p.m.rows.Add(float64(deleted))
		curAt, curSeq = lastAt, lastSeq
		if examined < int64(p.cfg.BatchSize) {
			break
		}
		if p.cfg.Pause > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(p.cfg.Pause):
			}
		}
	}
	p.m.last.Set(float64(time.Now().Unix()))
	lv := slog.LevelDebug
	if res.Deleted > 0 {
		lv = slog.LevelInfo
	}
	p.log.Log(ctx, lv, "history pruned", slog.Int64("rows", res.Deleted), slog.Int("batches", res.Batches),
		slog.Int64("kept_latest", res.Kept), slog.Time("horizon", res.Horizon), slog.Duration("took", time.Since(start)))
	return res, nil
}

// pruneLockID is the advisory lock key of the pruners of schema.
func pruneLockID(schema string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("devstatus-prune:" + schema))
	return int64(h.Sum64() >> 1)
}

// batch runs one batch transaction on conn.
func (p *Pruner) batch(ctx context.Context, conn *sql.Conn, horizon, curAt time.Time, curSeq int64, n int) (deleted, examined int64, lastAt time.Time, lastSeq int64, err error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, lastAt, 0, fmt.Errorf("projections: prune: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	// Losing the last deletions in a crash is harmless (the next round
	// deletes them again): no WAL flush per batch.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`SET LOCAL synchronous_commit = off; SET LOCAL lock_timeout = %d`,
		p.cfg.LockTimeout.Milliseconds())); err != nil {
		return 0, 0, lastAt, 0, fmt.Errorf("projections: prune: %w", err)
	}
	var at sql.NullTime
	var seq sql.NullInt64
	if err := tx.QueryRowContext(ctx, pruneBatchSQL, horizon, curAt, curSeq, p.cfg.BatchSize).
		Scan(&deleted, &examined, &at, &seq); err != nil {
		return 0, 0, lastAt, 0, fmt.Errorf("projections: prune batch: %w", err)
	}
	if p.inBatch != nil {
		p.inBatch(ctx, n)
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, lastAt, 0, fmt.Errorf("projections: prune: commit: %w", err)
	}
	return deleted, examined, at.Time, seq.Int64, nil
}
