package projections

import (
	"context"
	"testing"

	"github.com/devstatus/devstatus/internal/testenv"
)

func TestMigrateUpDownUp(t *testing.T) {
	t.Parallel()
	skipShort(t)
	ctx := context.Background()
	_, db := testenv.Postgres(t)
	log := testenv.Logger(t)
	tables := []string{"devices", "transitions", "projection_checkpoints", "dead_letters", VersionTable}
	exists := func(table string) bool {
		var ok bool
		if err := db.Get(&ok, `SELECT to_regclass($1) IS NOT NULL`, table); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	version := func() (int64, int64) {
		cur, latest, err := SchemaVersion(ctx, db.DB)
		if err != nil {
			t.Fatal(err)
		}
		return cur, latest
	}

	if err := Migrate(ctx, db.DB, log); err != nil {
		t.Fatal(err)
	}
	cur, latest := version()
	if cur != latest || latest < 3 {
		t.Fatalf("after up: version %d, latest %d", cur, latest)
	}
	for _, tb := range tables {
		if !exists(tb) {
			t.Errorf("after up: table %s missing", tb)
		}
	}
	// Idempotent.
	if err := Migrate(ctx, db.DB, log); err != nil {
		t.Fatalf("second up: %v", err)
	}

	if err := MigrateDownTo(ctx, db.DB, 0, log); err != nil {
		t.Fatal(err)
	}
	if cur, _ := version(); cur != 0 {
		t.Fatalf("after down: version %d", cur)
	}
	for _, tb := range tables[:4] {
		if exists(tb) {
			t.Errorf("after down: table %s still there", tb)
		}
	}

	if err := Migrate(ctx, db.DB, log); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if cur, latest := version(); cur != latest {
		t.Fatalf("after up again: version %d, latest %d", cur, latest)
	}
	// The schema works: a device row and its constraints.
	if _, err := db.Exec(`INSERT INTO devices (id, status, status_since) VALUES ('a', 'connected', now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO devices (id, status, status_since) VALUES ('b', 'online', now())`); err == nil {
		t.Error("status CHECK constraint missing")
	}
}
