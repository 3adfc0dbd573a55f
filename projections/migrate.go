package projections

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"path"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrationsFS embed.FS

// VersionTable is the goose version table. It is created unqualified, so it
// lives in the first schema of the connection's search_path, next to the
// tables it versions: two schemas on one server migrate independently.
const VersionTable = "devstatus_schema_version"

// newProvider builds a goose provider over the embedded migrations, locked by
// a session advisory lock specific to the current schema (two instances
// migrating the same schema at once take turns; different schemas do not wait
// on each other).
func newProvider(ctx context.Context, db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", ErrInvalidConfig)
	}
	if logger == nil {
		logger = slog.Default()
	}
	var schema sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return nil, fmt.Errorf("projections: migrate: current schema: %w", err)
	}
	if !schema.Valid {
		return nil, errors.New("projections: migrate: no schema in search_path exists; create it first")
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte("devstatus-migrate:" + schema.String))
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(int64(h.Sum64()>>1)),
		lock.WithLockTimeout(1, 300), // poll every 1 s, give up after 5 min
	)
	if err != nil {
		return nil, fmt.Errorf("projections: migrate: %w", err)
	}
	sub, err := fs.Sub(migrationsFS, "migrations")
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithTableName(VersionTable),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
		goose.WithSlog(logger.With(slog.String("component", "migrate"), slog.String("schema", schema.String))),
	)
}

// Migrate applies every pending migration to the schema named first in the
// connection's search_path (each migration in its own transaction with its
// version row). It is idempotent and safe to run from several instances at
// once. Errors wrap goose's (a failed migration leaves the versions before it
// applied).
func Migrate(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	p, err := newProvider(ctx, db, logger)
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("projections: migrate up: %w", err)
	}
	return nil
}

// MigrateDownTo rolls the schema back to version (0 removes every table of
// this package, data included). Meant for tests and for operators undoing a
// release; the service never calls it.
func MigrateDownTo(ctx context.Context, db *sql.DB, version int64, logger *slog.Logger) error {
	p, err := newProvider(ctx, db, logger)
	if err != nil {
		return err
	}
	if _, err := p.DownTo(ctx, version); err != nil {
		return fmt.Errorf("projections: migrate down to %d: %w", version, err)
	}
	return nil
}

// SchemaVersion returns the applied schema version (0 when none) and the
// latest version this binary knows.
func SchemaVersion(ctx context.Context, db *sql.DB) (current, latest int64, err error) {
	p, err := newProvider(ctx, db, slog.New(slog.DiscardHandler))
	if err != nil {
		return 0, 0, err
	}
	return p.GetVersions(ctx)
}

// MigrationState is one embedded migration and whether the schema has it.
type MigrationState struct {
	// Version is the migration's number; Name its file name (e.g.
	// 00001_init.sql).
	Version int64
	Name    string
	// Applied says whether the schema has it; AppliedAt is when (zero when
	// pending).
	Applied   bool
	AppliedAt time.Time
}

// MigrationStatus lists the embedded migrations, oldest first, with whether
// each is applied to the schema named first in the connection's search_path.
// It reads only (apart from creating an empty version table on a schema
// that has none).
func MigrationStatus(ctx context.Context, db *sql.DB) ([]MigrationState, error) {
	p, err := newProvider(ctx, db, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("projections: migration status: %w", err)
	}
	out := make([]MigrationState, 0, len(st))
	for _, m := range st {
		out = append(out, MigrationState{Version: m.Source.Version, Name: path.Base(m.Source.Path),
			Applied: m.State == goose.StateApplied, AppliedAt: m.AppliedAt})
	}
	return out, nil
}
