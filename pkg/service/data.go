package service

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // Postgres driver

	"github.com/devstatus/devstatus/pkg/bridge"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
	"github.com/devstatus/devstatus/pkg/tokens"
	"github.com/devstatus/devstatus/projections"
)

// openDB opens Postgres and waits (up to 30 s) until it answers, so that a
// service started together with its database does not fail its first query.
func openDB(ctx context.Context, url string, log *slog.Logger) (*sqlx.DB, error) {
	db, err := sqlx.Open("postgres", url)
	if err != nil {
		return nil, fmt.Errorf("service: database URL: %w", err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = db.PingContext(pctx)
		cancel()
		if err == nil {
			return db, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			db.Close()
			return nil, fmt.Errorf("service: Postgres not reachable: %w", err)
		}
		log.Warn("waiting for Postgres", slog.Any("err", err))
		time.Sleep(time.Second)
	}
}

// startDataRoles starts the roles that need Postgres or the registry
// (bridge, projector, read API).
func (s *Service) startDataRoles(ctx, runCtx context.Context, mux *httpx.RecordingMux) error {
	cfg := s.cfg
	if cfg.Has(RoleBridge) || cfg.Has(RoleAPI) {
		ts, err := tokens.New(ctx, tokens.Config{JetStream: s.Bus.JS, Replicas: cfg.Bus.Replicas, AdminToken: cfg.AdminToken,
			Clock: cfg.Clock, Logger: s.log})
		if err != nil {
			return err
		}
		s.Tokens = ts
		ts.Routes(mux, ts)
	}
	var db *sqlx.DB
	if cfg.Has(RoleProjector) || cfg.Has(RoleAPI) {
		var err error
		if db, err = openDB(ctx, cfg.DatabaseURL, s.log); err != nil {
			return err
		}
		s.DB = db.DB
		if cfg.Migrate {
			if err := projections.Migrate(ctx, db.DB, s.log); err != nil {
				return err
			}
		}
		s.addReady("postgres", func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := db.PingContext(ctx); err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
			return nil
		})
	}
	if cfg.Has(RoleProjector) {
		p, err := projections.New(projections.Config{DB: db, JetStream: s.Bus.JS, Logger: s.log, Registerer: s.reg, Clock: cfg.Clock})
		if err != nil {
			return err
		}
		s.run(runCtx, RoleProjector, p.Run)
		s.addReady("projector", p.Ready)
		if cfg.HistoryRetention > 0 {
			pr, err := projections.NewPruner(projections.PrunerConfig{DB: db, Retention: cfg.HistoryRetention,
				Interval: cfg.HistoryPruneInterval, Clock: cfg.Clock, Logger: s.log, Registerer: s.reg})
			if err != nil {
				return err
			}
			s.run(runCtx, "history-retention", pr.Run)
		}
	}
	if cfg.Has(RoleBridge) {
		reg, err := registry.New(registry.Config{Bus: s.Bus, Clock: cfg.Clock, Logger: s.log})
		if err != nil {
			return err
		}
		b, err := bridge.New(bridge.Config{Bus: s.Bus, Registry: reg, Clock: cfg.Clock, Logger: s.log, Registerer: s.reg,
			AdminToken: cfg.AdminToken, Auth: s.Tokens, PingToken: cfg.PingToken, HeartbeatInterval: cfg.HeartbeatInterval,
			GroupHeartbeatIntervals: cfg.GroupHeartbeatIntervals,
			RateMinInterval:         cfg.RateMinInterval, RatePerMinute: cfg.RatePerMinute, ProbePolicy: cfg.Pinger.Policy})
		if err != nil {
			return err
		}
		b.Routes(mux)
		s.run(runCtx, RoleBridge, b.Run)
		s.addReady("bridge", b.Ready)
	}
	if cfg.Has(RoleAPI) {
		if err := s.startAPI(db, mux); err != nil {
			return err
		}
	}
	return nil
}

// MigrateURL applies the Postgres schema at url.
func MigrateURL(ctx context.Context, url string, log *slog.Logger) error {
	db, err := openDB(ctx, url, log)
	if err != nil {
		return err
	}
	defer db.Close()
	return projections.Migrate(ctx, db.DB, log)
}

// Rebuild truncates the projections and replays both streams into them until
// caught up. Run it with the projector role stopped. It returns the number of
// events in the streams when it started.
func Rebuild(ctx context.Context, bc bus.Config, url string, log *slog.Logger) (uint64, error) {
	db, err := openDB(ctx, url, log)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	if err := projections.Migrate(ctx, db.DB, log); err != nil {
		return 0, err
	}
	b, err := bus.Open(ctx, bc)
	if err != nil {
		return 0, err
	}
	defer b.Close()
	var n uint64
	for _, name := range []string{"DEVSTATUS_IN", "DEVSTATUS_TR"} {
		st, err := b.JS.Stream(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("service: stream %s: %w", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			return 0, err
		}
		n += info.State.Msgs
	}
	if err := projections.Rebuild(ctx, db, b.JS, log); err != nil {
		return 0, err
	}
	return n, nil
}

// MigrationStatusURL lists the embedded schema migrations and whether each
// is applied to the database at url (see projections.MigrationStatus).
func MigrationStatusURL(ctx context.Context, url string, log *slog.Logger) ([]projections.MigrationState, error) {
	db, err := openDB(ctx, url, log)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return projections.MigrationStatus(ctx, db.DB)
}
