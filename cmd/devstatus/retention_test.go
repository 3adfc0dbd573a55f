package main

import (
	"errors"
	"testing"
	"time"
)

func TestRetentionFlags(t *testing.T) {
	c, _, err := parse("serve", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.HistoryRetention != 0 || c.TransitionsMaxAge != 0 || c.HistoryPruneInterval != time.Hour {
		t.Fatalf("defaults: %+v", c.retentionConfig)
	}
	t.Setenv("DEVSTATUS_DATA_DIR", t.TempDir()) // busConfig writes the NATS token there
	t.Setenv("DEVSTATUS_HISTORY_RETENTION", "2160h")
	t.Setenv("DEVSTATUS_TRANSITIONS_MAX_AGE", "4320h")
	c, _, err = parse("serve", []string{"--history-prune-interval", "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if c.HistoryRetention != 90*24*time.Hour || c.TransitionsMaxAge != 180*24*time.Hour || c.HistoryPruneInterval != 10*time.Minute {
		t.Fatalf("from the environment: %+v", c.retentionConfig)
	}
	bc, err := c.busConfig(nil)
	if err != nil || bc.TransitionMaxAge != 180*24*time.Hour {
		t.Fatalf("bus config: %+v, %v", bc, err)
	}
	for _, args := range [][]string{
		{"--transitions-max-age", "24h"}, // below the 168h input retention
		{"--history-retention", "-1h"},
		{"--history-prune-interval", "0s"},
	} {
		if _, _, err := parse("serve", args); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}
