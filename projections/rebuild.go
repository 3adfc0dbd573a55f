package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
)

// Rebuild empties the projected tables (devices, transitions, dead_letters)
// and the checkpoints in one transaction, then replays both streams from
// their first message until each projection has applied the last message its
// stream held when the replay started, and returns.
//
// Run it with every projector stopped (`devstatus rebuild` while no
// `devstatus serve` runs the projector role): a projector running at the
// same time would interleave its own checkpoint with the replay. Readers see
// empty tables until the replay has caught up.
//
// The replay can only restore what the streams still hold: input events
// older than the input stream's MaxAge (default 7 days), registrations
// included, are gone; a device known only from them comes back from its
// transitions alone (status, no group or registration time).
//
// cfg is optional: its zero fields take [Config]'s defaults; DB and
// JetStream are the arguments; Registerer and Projections are ignored (both
// projections are always rebuilt together, as they share the devices table). Errors wrap
// [ErrInvalidConfig], the database's, or ctx's.
func Rebuild(ctx context.Context, db *sqlx.DB, js jetstream.JetStream, logger *slog.Logger, cfg ...Config) error {
	var c Config
	if len(cfg) > 0 {
		c = cfg[0]
	}
	c.DB, c.JetStream, c.Logger, c.Registerer, c.Projections = db, js, logger, nil, nil
	c.setDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	p, err := New(c)
	if err != nil {
		return err
	}
	log := p.log.With(slog.String("op", "rebuild"))
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("projections: rebuild: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `TRUNCATE devices, transitions, dead_letters, projection_checkpoints`); err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("projections: rebuild: truncate: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("projections: rebuild: truncate: %w", err)
	}
	log.Info("projections emptied; replaying the streams")

	runners := []func(context.Context) error{}
	for _, name := range c.Projections {
		switch name {
		case ProjectionTransitions:
			r := newRunner(p, transitionsKind())
			runners = append(runners, func(ctx context.Context) error { return r.run(ctx, true) })
		case ProjectionLiveness:
			r := newRunner(p, livenessKind())
			runners = append(runners, func(ctx context.Context) error { return r.run(ctx, true) })
		}
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, run := range runners {
		wg.Go(func() {
			if err := run(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("projections: rebuild: %w", err)
	}
	log.Info("rebuild caught up")
	return nil
}
