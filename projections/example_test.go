package projections_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/projections"
)

// The projector role of `devstatus serve`: migrate, project until shutdown,
// answer /readyz from Ready. (Compiled, not run: it needs the services.)
func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	db, err := sqlx.Open("postgres", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Error("open", slog.Any("err", err))
		return
	}
	b, err := bus.Open(ctx, bus.Config{})
	if err != nil {
		log.Error("bus", slog.Any("err", err))
		return
	}
	defer b.Close()
	if err := projections.Migrate(ctx, db.DB, log); err != nil {
		log.Error("migrate", slog.Any("err", err))
		return
	}
	p, err := projections.New(projections.Config{DB: db, JetStream: b.JS, Logger: log, Registerer: prometheus.DefaultRegisterer})
	if err != nil {
		log.Error("projector", slog.Any("err", err))
		return
	}
	go func() { _ = p.Run(ctx) }()
	http.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := p.Ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	for _, l := range p.Lag() {
		log.Info("lag", slog.String("projection", l.Projection), slog.Uint64("events", l.Events), slog.Float64("seconds", l.Seconds))
	}
}

// `devstatus rebuild`: with the projector role stopped everywhere, empty the
// projections and replay both streams.
func ExampleRebuild() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	db := sqlx.MustOpen("postgres", os.Getenv("DATABASE_URL"))
	b, err := bus.Open(ctx, bus.Config{})
	if err != nil {
		return
	}
	defer b.Close()
	if err := projections.Rebuild(ctx, db, b.JS, slog.Default()); err != nil {
		slog.Default().Error("rebuild", slog.Any("err", err))
	}
}
