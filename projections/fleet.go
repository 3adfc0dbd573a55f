package projections

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// TransitionFilter selects transitions of the whole fleet for
// [Store.FleetTransitions].
type TransitionFilter struct {
	// From and To bound the transitions' effective time: From <= at < To; a
	// zero time leaves that side open.
	From, To time.Time
	// Limit is the page size: 0 means DefaultLimit, at most MaxLimit.
	Limit int
	// Cursor is a previous page's NextCursor ("" for the first page).
	Cursor string
}

// TransitionPage is one page of [Store.FleetTransitions].
type TransitionPage struct {
	// Transitions in (at, stream sequence) order; never nil.
	Transitions []Transition
	// NextCursor fetches the next page; "" when this page is the last.
	NextCursor string
}

// fleetCursorPrefix marks fleet transition cursors (a device-list cursor
// never starts with it).
const fleetCursorPrefix = "t."

// encodeTransitionCursor returns the opaque cursor continuing after tr:
// "t." + unpadded base64url of "<at, RFC 3339 with nanoseconds>,<seq>".
func encodeTransitionCursor(tr *Transition) string {
	raw := tr.At.UTC().Format(time.RFC3339Nano) + "," + strconv.FormatInt(tr.Seq, 10)
	return fleetCursorPrefix + base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodeTransitionCursor(c string) (time.Time, int64, error) {
	if !strings.HasPrefix(c, fleetCursorPrefix) {
		return time.Time{}, 0, fmt.Errorf("%w: not a transitions cursor", ErrInvalidCursor)
	}
	b, err := base64.RawURLEncoding.DecodeString(c[len(fleetCursorPrefix):])
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("%w: not base64url", ErrInvalidCursor)
	}
	ts, seqText, ok := strings.Cut(string(b), ",")
	if !ok {
		return time.Time{}, 0, fmt.Errorf("%w: malformed", ErrInvalidCursor)
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("%w: malformed time", ErrInvalidCursor)
	}
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if err != nil || seq < 0 {
		return time.Time{}, 0, fmt.Errorf("%w: malformed sequence", ErrInvalidCursor)
	}
	return at, seq, nil
}

// FleetTransitions returns the transitions of every device (decommissioned
// ones included: their history stays) with f.From <= at < f.To, ordered by
// (at, transitions-stream sequence), at most f.Limit per page. Pagination is
// by keyset on (at, sequence), never by offset: a walk from the first page to
// the last returns every row that existed when it started exactly once (rows
// projected during the walk appear if they sort after the cursor; rows the
// history pruner deletes during the walk may be missing). It reads the
// (at, stream_seq) index. Errors wrap [ErrInvalidFilter] (from after to, bad
// limit) or [ErrInvalidCursor], or are the database's.
func (s *Store) FleetTransitions(ctx context.Context, f TransitionFilter) (*TransitionPage, error) {
	limit, err := checkLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	if !f.From.IsZero() && !f.To.IsZero() && f.From.After(f.To) {
		return nil, fmt.Errorf("%w: from is after to", ErrInvalidFilter)
	}
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if !f.From.IsZero() {
		where = append(where, "at >= "+arg(f.From.UTC()))
	}
	if !f.To.IsZero() {
		where = append(where, "at < "+arg(f.To.UTC()))
	}
	if f.Cursor != "" {
		at, seq, err := decodeTransitionCursor(f.Cursor)
		if err != nil {
			return nil, err
		}
		where = append(where, "(at, stream_seq) > ("+arg(at)+", "+arg(seq)+")")
	}
	q := `SELECT stream_seq, device_id, from_status, to_status, reason_code, reason, at, observed_at,
        cause_seq, cause_event_id, cause_type FROM transitions`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY at, stream_seq LIMIT ` + arg(limit+1)
	rows := []Transition{}
	if err := s.db.SelectContext(ctx, &rows, q, args...); err != nil {
		return nil, fmt.Errorf("projections: fleet transitions: %w", err)
	}
	page := &TransitionPage{Transitions: rows}
	if len(rows) > limit {
		page.Transitions = rows[:limit]
		page.NextCursor = encodeTransitionCursor(&page.Transitions[limit-1])
	}
	for i := range page.Transitions {
		tr := &page.Transitions[i]
		tr.At = tr.At.UTC()
		if tr.ObservedAt != nil {
			t := tr.ObservedAt.UTC()
			tr.ObservedAt = &t
		}
	}
	return page, nil
}
