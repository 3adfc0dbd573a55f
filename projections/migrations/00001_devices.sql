-- devices: one row per device: its registration, its current status (written
-- by the transitions projection, guarded by status_seq) and its liveness
-- (written by the liveness projection, guarded by liveness_seq).
-- Every time is timestamptz (UTC on the wire); NULL means "never".

-- +goose Up
CREATE TABLE devices (
    -- COLLATE "C": byte order, the order of keyset pagination and of the
    -- projectors' lock order (Go sorts ids bytewise).
    id                     text COLLATE "C" PRIMARY KEY,
    group_name             text        NOT NULL DEFAULT '',
    gateway                text        NULL,
    registered_at          timestamptz NULL,
    decommissioned_at      timestamptz NULL,
    remote_control_enabled boolean     NOT NULL DEFAULT false,
    -- event time of the last remote-control change; NULL: never changed.
    remote_control_at      timestamptz NULL,
    status                 text        NOT NULL DEFAULT 'registered',
    status_since           timestamptz NOT NULL,
    reason_code            text        NOT NULL DEFAULT '',
    reason                 text        NOT NULL DEFAULT '',
    -- transitions-stream sequence of the transition that set status (0: none yet).
    status_seq             bigint      NOT NULL DEFAULT 0,
    last_heartbeat_at      timestamptz NULL,
    last_ping_at           timestamptz NULL,
    last_ping_ok           boolean     NULL,
    metrics                jsonb       NULL,
    metrics_at             timestamptz NULL,
    -- input-stream sequence of the last liveness/registry event applied.
    liveness_seq           bigint      NOT NULL DEFAULT 0,
    CONSTRAINT devices_status_check
        CHECK (status IN ('registered', 'connected', 'temporarily_offline', 'disconnected')),
    CONSTRAINT devices_id_check CHECK (octet_length(id) BETWEEN 1 AND 128)
) WITH (fillfactor = 80);

-- List filters (decommissioned devices are never listed) with keyset order by id.
CREATE INDEX devices_status_id_idx ON devices (status, id) WHERE decommissioned_at IS NULL;
CREATE INDEX devices_group_id_idx ON devices (group_name, id) WHERE decommissioned_at IS NULL;
CREATE INDEX devices_last_heartbeat_idx ON devices (last_heartbeat_at) WHERE decommissioned_at IS NULL;

-- +goose Down
DROP TABLE devices;
