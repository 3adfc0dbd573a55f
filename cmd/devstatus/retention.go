package main

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// retentionConfig is how long history is kept: in Postgres (pruned by the
// projector role) and in the transitions stream. The input stream's limit
// is --input-retention.
type retentionConfig struct {
	HistoryRetention     time.Duration
	HistoryPruneInterval time.Duration
	TransitionsMaxAge    time.Duration
}

func (c *retentionConfig) flags(fs *flag.FlagSet) {
	fs.DurationVar(&c.HistoryRetention, "history-retention", 0, "prune Postgres transition history older than this (each device's latest transition is kept); 0 keeps it forever")
	fs.DurationVar(&c.HistoryPruneInterval, "history-prune-interval", time.Hour, "time between two history prune rounds (projector role)")
	fs.DurationVar(&c.TransitionsMaxAge, "transitions-max-age", 0, "how long the transitions stream keeps transitions (rebuild brings back only these); 0 keeps them forever; else at least --input-retention")
}

// finish checks the limits against the input stream's retention.
func (c *retentionConfig) finish(inputRetention time.Duration) error {
	var errs []error
	if c.HistoryRetention < 0 || c.TransitionsMaxAge < 0 {
		errs = append(errs, errors.New("--history-retention and --transitions-max-age must not be negative (0 keeps forever)"))
	}
	if c.HistoryPruneInterval <= 0 {
		errs = append(errs, errors.New("--history-prune-interval must be positive"))
	}
	if c.TransitionsMaxAge > 0 && c.TransitionsMaxAge < inputRetention {
		// A worker replays input up to --input-retention old; the transitions
		// it produced must still be in the stream, or it would publish them
		// again (its fence is the last transition it finds).
		errs = append(errs, fmt.Errorf("--transitions-max-age (%s) must be 0 or at least --input-retention (%s)", c.TransitionsMaxAge, inputRetention))
	}
	return errors.Join(errs...)
}
