package projections

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/devstatus/devstatus/events"
)

// trItem is a decoded transition with its stream sequence.
type trItem struct {
	seq uint64
	ev  *events.StatusChanged
}

func transitionsKind() kind[trItem] {
	return kind[trItem]{
		name:   ProjectionTransitions,
		stream: events.TransitionStream,
		decode: decodeTransition,
		write:  writeTransitions,
	}
}

// decodeTransition decodes and checks a transition: a device id that breaks
// the id rule or text with a NUL byte (which Postgres refuses) is an error,
// so the message goes straight to dead_letters.
func decodeTransition(m *rawMsg) (trItem, error) {
	ev, err := events.DecodeStatusChanged(m.Data)
	if err != nil {
		return trItem{}, err
	}
	if err := events.ValidateDeviceID(ev.Device); err != nil {
		return trItem{}, fmt.Errorf("%w: device id: %w", events.ErrMalformed, err)
	}
	if err := noNUL(ev.Group, string(ev.ReasonCode), ev.Reason, ev.Cause.EventID, string(ev.Cause.Type)); err != nil {
		return trItem{}, err
	}
	return trItem{seq: m.Seq, ev: ev}, nil
}

// noNUL returns an error when a string holds a NUL byte.
func noNUL(ss ...string) error {
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("%w: text field holds a NUL byte (%q), which Postgres cannot store", events.ErrMalformed, s)
		}
	}
	return nil
}

// pgTime formats t for a timestamptz[] parameter ("" for the zero time, which
// the SQL turns into NULL).
func pgTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

const insertTransitionsSQL = `
INSERT INTO transitions (stream_seq, device_id, from_status, to_status, reason_code, reason,
                         at, observed_at, cause_seq, cause_event_id, cause_type)
SELECT u.seq, u.device, u.from_s, u.to_s, u.code, u.reason,
       u.at::timestamptz, NULLIF(u.observed, '')::timestamptz, u.cause_seq, u.cause_id, u.cause_type
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[])
     AS u(seq, device, from_s, to_s, code, reason, at, observed, cause_seq, cause_id, cause_type)
ON CONFLICT (stream_seq) DO NOTHING`

// upsertStatusSQL sets each device's current status from its latest
// transition of the batch. Rows are taken in id order (the liveness
// projection does the same) so that the two projections lock devices rows in
// one order and cannot deadlock. A row is created for a device whose
// registration the liveness projection has not seen yet.
const upsertStatusSQL = `
INSERT INTO devices AS d (id, group_name, status, status_since, reason_code, reason, status_seq)
SELECT u.id, u.grp, u.status, u.since::timestamptz, u.code, u.reason, u.seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
     AS u(id, grp, status, since, code, reason, seq)
ORDER BY u.id COLLATE "C"
ON CONFLICT (id) DO UPDATE SET
    status       = EXCLUDED.status,
    status_since = EXCLUDED.status_since,
    reason_code  = EXCLUDED.reason_code,
    reason       = EXCLUDED.reason,
    status_seq   = EXCLUDED.status_seq,
    group_name   = CASE WHEN d.group_name = '' THEN EXCLUDED.group_name ELSE d.group_name END
WHERE d.status_seq < EXCLUDED.status_seq`

// writeTransitions inserts the history rows (a no-op for a stream sequence
// already there) and sets each device's current status to its latest
// transition of the batch, unless the stored one is as new or newer
// (status_seq guard). Coalescing per device first matters: Postgres refuses
// to update one row twice in one INSERT … ON CONFLICT (scenario 11).
func writeTransitions(ctx context.Context, tx *sqlx.Tx, items []trItem) (writeResult, error) {
	n := len(items)
	var (
		seqs, causeSeqs                                 = make([]int64, n), make([]int64, n)
		devs, froms, tos, codes, reasons, ats, observed = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		causeIDs, causeTypes                            = make([]string, n), make([]string, n)
	)
	latest := make(map[string]int, n) // device → index of its last item
	for i, it := range items {
		e := it.ev
		seqs[i] = int64(it.seq)
		devs[i] = e.Device
		froms[i], tos[i] = string(e.From), string(e.To)
		codes[i], reasons[i] = string(e.ReasonCode), e.Reason
		ats[i], observed[i] = pgTime(e.At), pgTime(e.ObservedAt)
		causeSeqs[i] = int64(e.Cause.Seq)
		causeIDs[i], causeTypes[i] = e.Cause.EventID, string(e.Cause.Type)
		if j, ok := latest[e.Device]; !ok || items[j].seq < it.seq {
			latest[e.Device] = i
		}
	}
	if _, err := tx.ExecContext(ctx, insertTransitionsSQL,
		pq.Int64Array(seqs), pq.StringArray(devs), pq.StringArray(froms), pq.StringArray(tos),
		pq.StringArray(codes), pq.StringArray(reasons), pq.StringArray(ats), pq.StringArray(observed),
		pq.Int64Array(causeSeqs), pq.StringArray(causeIDs), pq.StringArray(causeTypes)); err != nil {
		return writeResult{}, fmt.Errorf("insert transitions: %w", err)
	}

	ids := make([]string, 0, len(latest))
	for id := range latest {
		ids = append(ids, id)
	}
	slices.Sort(ids) // bytewise, like COLLATE "C"
	m := len(ids)
	var (
		grps, statuses, sinces, dcodes, dreasons = make([]string, m), make([]string, m), make([]string, m), make([]string, m), make([]string, m)
		dseqs                                    = make([]int64, m)
	)
	for k, id := range ids {
		it := items[latest[id]]
		grps[k], statuses[k], sinces[k] = it.ev.Group, string(it.ev.To), pgTime(it.ev.At)
		dcodes[k], dreasons[k], dseqs[k] = string(it.ev.ReasonCode), it.ev.Reason, int64(it.seq)
	}
	if _, err := tx.ExecContext(ctx, upsertStatusSQL,
		pq.StringArray(ids), pq.StringArray(grps), pq.StringArray(statuses), pq.StringArray(sinces),
		pq.StringArray(dcodes), pq.StringArray(dreasons), pq.Int64Array(dseqs)); err != nil {
		return writeResult{}, fmt.Errorf("upsert device status: %w", err)
	}
	return writeResult{}, nil
}
