package projections

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/devstatus/devstatus/events"
)

// lvItem is a decoded input event with its stream sequence.
type lvItem struct {
	seq uint64
	ev  *events.Input
}

func livenessKind() kind[lvItem] {
	return kind[lvItem]{
		name:   ProjectionLiveness,
		stream: events.InputStream,
		filter: LivenessFilter,
		decode: decodeLiveness,
		write:  writeLiveness,
	}
}

func decodeLiveness(m *rawMsg) (lvItem, error) {
	ev, err := events.ScanInput(m.Data, events.FieldsMetrics) // of a heartbeat's payload, only its metrics are projected
	if err != nil {
		return lvItem{}, err
	}
	if ev.Type == events.TypeTick {
		return lvItem{seq: m.Seq, ev: ev}, nil
	}
	if err := events.ValidateDeviceID(ev.Device); err != nil {
		return lvItem{}, fmt.Errorf("%w: device id: %w", events.ErrMalformed, err)
	}
	if ev.Registered != nil {
		if err := noNUL(ev.Registered.Group, ev.Registered.Gateway); err != nil {
			return lvItem{}, err
		}
	}
	return lvItem{seq: m.Seq, ev: ev}, nil
}

// lvDelta is the coalesced effect of one batch's events on one device.
type lvDelta struct {
	id    string
	seq   uint64    // highest sequence
	at    time.Time // time of the device's first event in the batch
	count int       // events

	regAt          time.Time // latest registration (zero: none)
	group, gateway string
	decAt          time.Time // decommission after the latest registration (zero: none)

	hbAt      time.Time // latest heartbeat
	metrics   []byte    // metrics of the latest heartbeat that had any
	metricsAt time.Time

	pingAt time.Time // latest probe by checked_at
	pingOK bool

	rcAt time.Time // latest remote-control change (by sequence)
	rc   bool
}

func (d *lvDelta) add(seq uint64, e *events.Input) {
	d.seq = max(d.seq, seq)
	d.count++
	if d.at.IsZero() {
		d.at = e.At
	}
	switch e.Type {
	case events.TypeDeviceRegistered:
		d.regAt, d.group, d.gateway = e.At, e.Registered.Group, e.Registered.Gateway
		d.decAt = time.Time{} // a registration revives a decommissioned device
	case events.TypeDeviceDecommissioned:
		d.decAt = e.At
	case events.TypeHeartbeat:
		if e.At.After(d.hbAt) {
			d.hbAt = e.At
		}
		if m := bytes.TrimSpace(e.Heartbeat.Metrics); len(m) > 0 && !bytes.Equal(m, []byte("null")) && !e.At.Before(d.metricsAt) {
			d.metrics, d.metricsAt = m, e.At
		}
	case events.TypePingResult:
		checked := e.Ping.CheckedAt
		if checked.IsZero() {
			checked = e.At
		}
		if !checked.Before(d.pingAt) {
			d.pingAt, d.pingOK = checked, e.Ping.OK
		}
	case events.TypeRemoteControlChanged:
		d.rcAt, d.rc = e.At, e.RemoteControl.Enabled
	}
}

// reviveSQL is true when the proposed row re-registers a decommissioned
// device: the new incarnation starts over (registered, no liveness, remote
// control off), as the partition worker does; its history of earlier
// incarnations stays in transitions. (The worker publishes no transition for
// a registration, so the projection resets the status itself.)
const reviveSQL = `(d.decommissioned_at IS NOT NULL AND EXCLUDED.registered_at IS NOT NULL AND EXCLUDED.registered_at >= d.decommissioned_at)`

// upsertLivenessSQL applies the coalesced deltas, in id order (the lock
// order the transitions projection uses too). A device is known when it has
// a row or is registered in this batch; the others are returned (ignored,
// counted). Presence of each part of a delta travels in a nullable column of
// the proposed row (registered_at, decommissioned_at, last_heartbeat_at,
// metrics_at, last_ping_at, remote_control_at), because ON CONFLICT can only
// see the proposed row (EXCLUDED) and the stored one (d), and the proposed
// row must satisfy NOT NULL and CHECK constraints before the conflict is
// detected. Times merge monotonically (GREATEST, latest by event time), so
// applying a batch that overlaps what is stored changes nothing; the
// liveness_seq guard makes an exact re-apply a no-op.
const upsertLivenessSQL = `
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::bool[], $13::text[], $14::bool[])
           AS u(id, seq, at, reg_at, grp, gateway, dec_at, hb_at, metrics, metrics_at, ping_at, ping_ok, rc_at, rc)
), known AS (
    SELECT u.* FROM u
    WHERE u.reg_at <> '' OR EXISTS (SELECT 1 FROM devices x WHERE x.id = u.id)
), up AS (
    INSERT INTO devices AS d (id, group_name, gateway, registered_at, decommissioned_at,
                              remote_control_enabled, remote_control_at, status, status_since,
                              last_heartbeat_at, metrics, metrics_at, last_ping_at, last_ping_ok, liveness_seq)
    SELECT k.id, k.grp, NULLIF(k.gateway, ''), NULLIF(k.reg_at, '')::timestamptz, NULLIF(k.dec_at, '')::timestamptz,
           k.rc, NULLIF(k.rc_at, '')::timestamptz, 'registered',
           COALESCE(NULLIF(k.reg_at, ''), k.at)::timestamptz,
           NULLIF(k.hb_at, '')::timestamptz, NULLIF(k.metrics, '')::jsonb, NULLIF(k.metrics_at, '')::timestamptz,
           NULLIF(k.ping_at, '')::timestamptz, CASE WHEN k.ping_at = '' THEN NULL ELSE k.ping_ok END, k.seq
    FROM known k
    ORDER BY k.id COLLATE "C"
    ON CONFLICT (id) DO UPDATE SET
        group_name = CASE WHEN EXCLUDED.registered_at IS NOT NULL THEN EXCLUDED.group_name ELSE d.group_name END,
        gateway    = CASE WHEN EXCLUDED.registered_at IS NOT NULL THEN EXCLUDED.gateway ELSE d.gateway END,
        registered_at = COALESCE(EXCLUDED.registered_at, d.registered_at),
        decommissioned_at = CASE WHEN EXCLUDED.decommissioned_at IS NOT NULL THEN EXCLUDED.decommissioned_at
                                 WHEN EXCLUDED.registered_at IS NOT NULL THEN NULL
                                 ELSE d.decommissioned_at END,
        remote_control_enabled = CASE WHEN EXCLUDED.remote_control_at IS NOT NULL THEN EXCLUDED.remote_control_enabled
                                      WHEN ` + reviveSQL + ` THEN false
                                      ELSE d.remote_control_enabled END,
        remote_control_at = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.remote_control_at
                                 ELSE COALESCE(EXCLUDED.remote_control_at, d.remote_control_at) END,
        status       = CASE WHEN ` + reviveSQL + ` THEN 'registered' ELSE d.status END,
        status_since = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.registered_at ELSE d.status_since END,
        reason_code  = CASE WHEN ` + reviveSQL + ` THEN '' ELSE d.reason_code END,
        reason       = CASE WHEN ` + reviveSQL + ` THEN '' ELSE d.reason END,
        last_heartbeat_at = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.last_heartbeat_at
                                 ELSE GREATEST(d.last_heartbeat_at, EXCLUDED.last_heartbeat_at) END,
        metrics = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.metrics
                       WHEN EXCLUDED.metrics_at IS NOT NULL
                            AND (d.metrics_at IS NULL OR EXCLUDED.metrics_at >= d.metrics_at)
                       THEN EXCLUDED.metrics ELSE d.metrics END,
        metrics_at = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.metrics_at ELSE GREATEST(d.metrics_at, EXCLUDED.metrics_at) END,
        last_ping_ok = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.last_ping_ok
                            WHEN EXCLUDED.last_ping_at IS NOT NULL
                                 AND (d.last_ping_at IS NULL OR EXCLUDED.last_ping_at >= d.last_ping_at)
                            THEN EXCLUDED.last_ping_ok ELSE d.last_ping_ok END,
        last_ping_at = CASE WHEN ` + reviveSQL + ` THEN EXCLUDED.last_ping_at ELSE GREATEST(d.last_ping_at, EXCLUDED.last_ping_at) END,
        liveness_seq = EXCLUDED.liveness_seq
    WHERE d.liveness_seq < EXCLUDED.liveness_seq
    RETURNING 1
)
SELECT u.id FROM u WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.id = u.id)`

// writeLiveness coalesces the batch per device and applies it with one
// statement. Heartbeats and other events of devices that are neither stored
// nor registered in the batch are ignored and counted as unknown.
func writeLiveness(ctx context.Context, tx *sqlx.Tx, items []lvItem) (writeResult, error) {
	deltas := make(map[string]*lvDelta, len(items))
	hbOnly := true
	for _, it := range items {
		switch it.ev.Type {
		case events.TypeTick, events.TypeReconnectRequested, events.TypeReconnectDelivered:
			continue // nothing projected
		case events.TypeHeartbeat:
		default:
			hbOnly = false
		}
		d := deltas[it.ev.Device]
		if d == nil {
			d = &lvDelta{id: it.ev.Device}
			deltas[it.ev.Device] = d
		}
		d.add(it.seq, it.ev)
	}
	if len(deltas) == 0 {
		return writeResult{}, nil
	}
	ids := make([]string, 0, len(deltas))
	for id := range deltas {
		ids = append(ids, id)
	}
	slices.Sort(ids) // bytewise, like COLLATE "C"
	if hbOnly && heartbeatUpdates {
		return writeHeartbeats(ctx, tx, ids, deltas)
	}
	n := len(ids)
	var (
		seqs                                                = make([]int64, n)
		ats, regAts, grps, gws, decAts, hbAts, mets, metAts = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		pingAts, rcAts                                      = make([]string, n), make([]string, n)
		pingOKs, rcs                                        = make([]bool, n), make([]bool, n)
	)
	for i, id := range ids {
		d := deltas[id]
		seqs[i] = int64(d.seq)
		ats[i], regAts[i], grps[i], gws[i], decAts[i] = pgTime(d.at), pgTime(d.regAt), d.group, d.gateway, pgTime(d.decAt)
		hbAts[i], mets[i], metAts[i] = pgTime(d.hbAt), string(d.metrics), pgTime(d.metricsAt)
		pingAts[i], pingOKs[i] = pgTime(d.pingAt), d.pingOK
		rcAts[i], rcs[i] = pgTime(d.rcAt), d.rc
	}
	var unknown []string
	if err := tx.SelectContext(ctx, &unknown, upsertLivenessSQL,
		pq.StringArray(ids), pq.Int64Array(seqs), pq.StringArray(ats), pq.StringArray(regAts), pq.StringArray(grps),
		pq.StringArray(gws), pq.StringArray(decAts), pq.StringArray(hbAts), pq.StringArray(mets), pq.StringArray(metAts),
		pq.StringArray(pingAts), pq.BoolArray(pingOKs), pq.StringArray(rcAts), pq.BoolArray(rcs)); err != nil {
		return writeResult{}, fmt.Errorf("upsert device liveness: %w", err)
	}
	var res writeResult
	for _, id := range unknown {
		res.unknown += deltas[id].count
	}
	return res, nil
}

// heartbeatUpdates enables updateHeartbeatsSQL (BenchmarkLivenessBatch
// compares it with the upsert).
var heartbeatUpdates = true

// updateHeartbeatsSQL is upsertLivenessSQL for a batch of heartbeats only
// (a fleet in its steady state): for a stored device it sets exactly what
// the upsert sets for a delta without registration, decommission, probe or
// remote-control change (last heartbeat and metrics, merged by event time,
// and liveness_seq, guarded by it); a device without a row is not updated
// (the upsert ignores it too). As a plain UPDATE it skips the upsert's
// existence probe, its anti-join and the CASE of every other column:
// BenchmarkLivenessBatch measures both (docs/performance.md). Rows are taken
// in id order, as the upsert does.
const updateHeartbeatsSQL = `
UPDATE devices AS d SET
    last_heartbeat_at = GREATEST(d.last_heartbeat_at, u.hb_at::timestamptz),
    metrics = CASE WHEN u.metrics_at <> '' AND (d.metrics_at IS NULL OR u.metrics_at::timestamptz >= d.metrics_at)
                   THEN u.metrics::jsonb ELSE d.metrics END,
    metrics_at = GREATEST(d.metrics_at, NULLIF(u.metrics_at, '')::timestamptz),
    liveness_seq = u.seq
FROM (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) AS u(id, seq, hb_at, metrics, metrics_at)
      ORDER BY u.id COLLATE "C") AS u
WHERE d.id = u.id AND d.liveness_seq < u.seq
RETURNING d.id`

// writeHeartbeats applies a heartbeat-only batch (updateHeartbeatsSQL).
// Devices it did not update are either unknown (counted, as the upsert
// counts them) or already at a newer liveness_seq (a re-applied batch).
func writeHeartbeats(ctx context.Context, tx *sqlx.Tx, ids []string, deltas map[string]*lvDelta) (writeResult, error) {
	n := len(ids)
	seqs, hbAts, mets, metAts := make([]int64, n), make([]string, n), make([]string, n), make([]string, n)
	for i, id := range ids {
		d := deltas[id]
		seqs[i], hbAts[i], mets[i], metAts[i] = int64(d.seq), pgTime(d.hbAt), string(d.metrics), pgTime(d.metricsAt)
	}
	var updated []string
	if err := tx.SelectContext(ctx, &updated, updateHeartbeatsSQL,
		pq.StringArray(ids), pq.Int64Array(seqs), pq.StringArray(hbAts), pq.StringArray(mets), pq.StringArray(metAts)); err != nil {
		return writeResult{}, fmt.Errorf("update device liveness: %w", err)
	}
	var res writeResult
	if len(updated) == n {
		return res, nil
	}
	done := make(map[string]bool, len(updated))
	for _, id := range updated {
		done[id] = true
	}
	var missing []string
	for _, id := range ids {
		if !done[id] {
			missing = append(missing, id)
		}
	}
	var stored []string
	if err := tx.SelectContext(ctx, &stored, `SELECT id FROM devices WHERE id = ANY($1::text[])`, pq.StringArray(missing)); err != nil {
		return writeResult{}, fmt.Errorf("look up devices: %w", err)
	}
	known := make(map[string]bool, len(stored))
	for _, id := range stored {
		known[id] = true
	}
	for _, id := range missing {
		if !known[id] {
			res.unknown += deltas[id].count
		}
	}
	return res, nil
}
