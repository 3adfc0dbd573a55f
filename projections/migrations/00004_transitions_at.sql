-- transitions_at_idx lets the history pruner (prune.go) walk the rows older
-- than the retention horizon in (at, stream_seq) order, batch after batch,
-- without scanning the newer rows.

-- +goose Up
CREATE INDEX transitions_at_idx ON transitions (at, stream_seq);

-- +goose Down
DROP INDEX transitions_at_idx;
