package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/devstatus/devstatus/events"
)

// Reads over the history table (transitions): the status at a past time and
// the time spent in each status over a window. Both follow one convention:
// a transition takes effect at its At, so over time the device is in the
// To status of the last transition with at <= t (ties in stream order). Before
// its first transition a device is in that transition's From status
// (normally "registered") from its registration on; before its registration
// (or before anything is known of it when the registration time is unknown
// and it has no transition) its status is unknown.

// PastStatus is a device's status at a moment ([Store.StatusAt]).
type PastStatus struct {
	// Known is false when the moment is before the device was registered
	// (Status is then "" and Since nil).
	Known bool
	// Status in effect at the moment.
	Status events.Status
	// Since is when that status took effect: the transition's at, or the
	// registration time for "registered" (nil when unknown).
	Since *time.Time
	// ReasonCode and Reason of the transition that set Status ("" for
	// "registered" before the first transition).
	ReasonCode string
	Reason     string
	// Seq is the transitions-stream sequence of that transition (0: none).
	Seq int64
}

// Availability is the time a device spent in each status over [From, To)
// ([Store.Availability]).
type Availability struct {
	From, To time.Time
	// ByStatus is the time in each of the four statuses; every status is
	// present.
	ByStatus map[events.Status]time.Duration
	// Unknown is the part of the window before the device was registered.
	Unknown time.Duration
	// Transitions counts the transitions inside the window.
	Transitions int
}

type historyRow struct {
	Seq        int64         `db:"stream_seq"`
	From       events.Status `db:"from_status"`
	To         events.Status `db:"to_status"`
	ReasonCode string        `db:"reason_code"`
	Reason     string        `db:"reason"`
	At         time.Time     `db:"at"`
}

const historyCols = `stream_seq, from_status, to_status, reason_code, reason, at`

// deviceForHistory returns the registration time and current status of a
// live device, or an error wrapping ErrNotFound.
func (s *Store) deviceForHistory(ctx context.Context, id string) (registeredAt *time.Time, status events.Status, err error) {
	var row struct {
		RegisteredAt *time.Time    `db:"registered_at"`
		Status       events.Status `db:"status"`
	}
	err = s.db.GetContext(ctx, &row, `SELECT registered_at, status FROM devices WHERE id = $1 AND decommissioned_at IS NULL`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, "", fmt.Errorf("projections: history: %w", err)
	}
	return row.RegisteredAt, row.Status, nil
}

// lastAtOrBefore returns the device's last transition with at <= t (nil: none).
func (s *Store) lastAtOrBefore(ctx context.Context, id string, t time.Time) (*historyRow, error) {
	var r historyRow
	err := s.db.GetContext(ctx, &r, `SELECT `+historyCols+` FROM transitions WHERE device_id = $1 AND at <= $2
ORDER BY at DESC, stream_seq DESC LIMIT 1`, id, t.UTC())
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("projections: history: %w", err)
	}
	return &r, nil
}

// firstAfter returns the device's first transition with at > t (nil: none).
func (s *Store) firstAfter(ctx context.Context, id string, t time.Time) (*historyRow, error) {
	var r historyRow
	err := s.db.GetContext(ctx, &r, `SELECT `+historyCols+` FROM transitions WHERE device_id = $1 AND at > $2
ORDER BY at, stream_seq LIMIT 1`, id, t.UTC())
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("projections: history: %w", err)
	}
	return &r, nil
}

// StatusAt returns the device's status at t, from the history table (see the
// convention at the top of this file). Errors wrap [ErrNotFound] (unknown or
// decommissioned device) or are the database's.
func (s *Store) StatusAt(ctx context.Context, id string, t time.Time) (*PastStatus, error) {
	regAt, current, err := s.deviceForHistory(ctx, id)
	if err != nil {
		return nil, err
	}
	prev, err := s.lastAtOrBefore(ctx, id, t)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		at := prev.At.UTC()
		return &PastStatus{Known: true, Status: prev.To, Since: &at, ReasonCode: prev.ReasonCode, Reason: prev.Reason, Seq: prev.Seq}, nil
	}
	if regAt != nil && t.Before(*regAt) {
		return &PastStatus{}, nil
	}
	next, err := s.firstAfter(ctx, id, t)
	if err != nil {
		return nil, err
	}
	ps := &PastStatus{Known: true, Status: current, Since: utcPtr(regAt)}
	if next != nil {
		ps.Status = next.From
	}
	return ps, nil
}

// Availability returns the time the device spent in each status over
// [from, to), from the history table (see the convention at the top of this
// file). It streams the window's transitions, so a long window of a flapping
// device costs time, not memory. Errors wrap [ErrNotFound], [ErrInvalidFilter]
// (from not before to) or are the database's.
func (s *Store) Availability(ctx context.Context, id string, from, to time.Time) (*Availability, error) {
	if !from.Before(to) {
		return nil, fmt.Errorf("%w: from must be before to", ErrInvalidFilter)
	}
	from, to = from.UTC(), to.UTC()
	regAt, current, err := s.deviceForHistory(ctx, id)
	if err != nil {
		return nil, err
	}
	av := &Availability{From: from, To: to, ByStatus: map[events.Status]time.Duration{}}
	for _, st := range events.Statuses {
		av.ByStatus[st] = 0
	}
	prev, err := s.lastAtOrBefore(ctx, id, from)
	if err != nil {
		return nil, err
	}
	// The status at from, and since when the window is accounted.
	var cur events.Status
	curStart := from
	if prev != nil {
		cur = prev.To
	} else {
		next, err := s.firstAfter(ctx, id, from)
		if err != nil {
			return nil, err
		}
		cur = current
		if next != nil {
			cur = next.From
		}
		if regAt != nil && regAt.After(from) {
			// Unknown until the registration (or the first transition, or
			// the end of the window, whichever comes first).
			end := *regAt
			if next != nil && next.At.Before(end) {
				end = next.At
			}
			if to.Before(end) {
				end = to
			}
			av.Unknown = end.Sub(from)
			curStart = end
		}
	}
	rows, err := s.db.QueryxContext(ctx, `SELECT `+historyCols+` FROM transitions
WHERE device_id = $1 AND at > $2 AND at < $3 ORDER BY at, stream_seq`, id, from, to)
	if err != nil {
		return nil, fmt.Errorf("projections: availability: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r historyRow
		if err := rows.StructScan(&r); err != nil {
			return nil, fmt.Errorf("projections: availability: %w", err)
		}
		if r.At.After(curStart) {
			av.ByStatus[cur] += r.At.Sub(curStart)
			curStart = r.At
		}
		cur = r.To
		av.Transitions++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("projections: availability: %w", err)
	}
	if to.After(curStart) {
		av.ByStatus[cur] += to.Sub(curStart)
	}
	return av, nil
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
