-- transitions: the history of status changes, one row per message of the
-- transitions stream; stream_seq as primary key makes re-applying a no-op.

-- +goose Up
CREATE TABLE transitions (
    stream_seq     bigint PRIMARY KEY,
    device_id      text COLLATE "C" NOT NULL,
    from_status    text        NOT NULL,
    to_status      text        NOT NULL,
    reason_code    text        NOT NULL,
    reason         text        NOT NULL,
    -- when the transition took effect (for a timeout: the threshold crossing).
    at             timestamptz NOT NULL,
    -- when it was observed (the event that caused it); NULL if not recorded.
    observed_at    timestamptz NULL,
    -- the input event that caused it.
    cause_seq      bigint      NOT NULL DEFAULT 0,
    cause_event_id text        NOT NULL DEFAULT '',
    cause_type     text        NOT NULL DEFAULT '',
    CONSTRAINT transitions_status_check CHECK (
        from_status IN ('registered', 'connected', 'temporarily_offline', 'disconnected')
        AND to_status IN ('registered', 'connected', 'temporarily_offline', 'disconnected'))
);

CREATE INDEX transitions_device_at_idx ON transitions (device_id, at, stream_seq);

-- +goose Down
DROP TABLE transitions;
