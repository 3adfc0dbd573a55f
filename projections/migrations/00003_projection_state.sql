-- Projection bookkeeping: checkpoints (committed in the same transaction as
-- the rows they cover) and dead letters (events set aside, scenario 9).

-- +goose Up
CREATE TABLE projection_checkpoints (
    name       text PRIMARY KEY,
    stream     text        NOT NULL,
    -- last stream sequence applied (0: nothing yet).
    last_seq   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL
);

CREATE TABLE dead_letters (
    stream          text        NOT NULL,
    seq             bigint      NOT NULL,
    projection      text        NOT NULL,
    subject         text        NOT NULL,
    data            bytea       NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    PRIMARY KEY (stream, seq)
);

-- +goose Down
DROP TABLE dead_letters;
DROP TABLE projection_checkpoints;
