package projections

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/devstatus/devstatus/events"
)

// Limits of list and history reads.
const (
	// DefaultLimit is the page size when none is asked for.
	DefaultLimit = 100
	// MaxLimit is the largest page size.
	MaxLimit = 1000
)

// Store reads the projections (for pkg/readapi). It never writes. Safe for
// concurrent use.
type Store struct {
	db *sqlx.DB
}

// NewStore returns a Store reading db (migrated with [Migrate]).
func NewStore(db *sqlx.DB) *Store { return &Store{db: db} }

// Device is one device's projected state. Times are UTC; a nil pointer means
// "never".
type Device struct {
	ID string `db:"id"`
	// Group is the device group ("" when none).
	Group string `db:"group_name"`
	// Gateway is the gateway the device may report through (nil: none).
	Gateway *string `db:"gateway"`
	// RegisteredAt is the registration time (nil when the registration event
	// is no longer in the input stream and the row came from a transition).
	RegisteredAt *time.Time `db:"registered_at"`
	// Status is one of the four statuses; "registered" until the first transition.
	Status events.Status `db:"status"`
	// StatusSince is when Status took effect (the registration time for "registered").
	StatusSince time.Time `db:"status_since"`
	// ReasonCode and Reason explain the last transition ("" before any).
	ReasonCode string `db:"reason_code"`
	Reason     string `db:"reason"`
	// LastHeartbeatAt is the bridge's receive time of the latest heartbeat.
	LastHeartbeatAt *time.Time `db:"last_heartbeat_at"`
	// LastPingAt is the checked_at of the latest probe; LastPingOK its outcome.
	LastPingAt *time.Time `db:"last_ping_at"`
	LastPingOK *bool      `db:"last_ping_ok"`
	// Metrics is the JSON object of the latest heartbeat that carried
	// metrics (nil: none yet), received at MetricsAt.
	Metrics   []byte     `db:"metrics"`
	MetricsAt *time.Time `db:"metrics_at"`
	// RemoteControlEnabled is the current remote-control setting.
	RemoteControlEnabled bool `db:"remote_control_enabled"`
	// StatusSeq is the transitions-stream sequence that set Status (0 before
	// the first transition): a reader holding an older sequence is stale.
	StatusSeq int64 `db:"status_seq"`
}

func (d *Device) utc() {
	d.StatusSince = d.StatusSince.UTC()
	for _, p := range []**time.Time{&d.RegisteredAt, &d.LastHeartbeatAt, &d.LastPingAt, &d.MetricsAt} {
		if *p != nil {
			t := (*p).UTC()
			*p = &t
		}
	}
}

const deviceColumns = `id, group_name, gateway, registered_at, status, status_since, reason_code, reason,
    last_heartbeat_at, last_ping_at, last_ping_ok, metrics, metrics_at, remote_control_enabled, status_seq`

// Device returns one device. It returns an error wrapping [ErrNotFound] when
// the device is unknown or decommissioned.
func (s *Store) Device(ctx context.Context, id string) (*Device, error) {
	var d Device
	err := s.db.GetContext(ctx, &d, `SELECT `+deviceColumns+` FROM devices WHERE id = $1 AND decommissioned_at IS NULL`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("projections: device: %w", err)
	}
	d.utc()
	return &d, nil
}

// ListFilter selects devices for [Store.List]. Zero fields do not filter.
type ListFilter struct {
	// Status keeps devices in this status.
	Status events.Status
	// Group keeps devices of this group.
	Group string
	// StaleFor > 0 keeps devices silent for longer than StaleFor at List's
	// now: the time since the last heartbeat or, for a device that never sent
	// one, since its registration exceeds StaleFor (that time is before
	// now−StaleFor). A device registered a minute ago and never heard from is
	// not silent for five minutes. A device with neither time (its row came
	// from a transition after the registration event left the input stream)
	// counts as stale.
	StaleFor time.Duration
	// IDPrefix keeps devices whose id starts with these bytes (case
	// sensitive; served by the primary key's byte order).
	IDPrefix string
	// Sort is one of [SortKeys] ("" means SortID): the key, ascending, or
	// with a leading "-", descending. Ties are broken by id.
	Sort string
	// Limit is the page size: 0 means DefaultLimit; at most MaxLimit.
	Limit int
	// Cursor continues after the page that returned it ("" = first page).
	Cursor string
}

// Sort keys of [ListFilter.Sort].
const (
	// SortID orders by id, bytewise (the default). The id never changes, so a
	// walk over pages sees every device exactly once, however statuses change.
	SortID = "id"
	// SortStatusSince orders by status_since (oldest first: the devices longest
	// in their status).
	SortStatusSince = "status_since"
	// SortLastHeartbeat orders by last_heartbeat_at, never first (devices that
	// never sent one count as the oldest).
	SortLastHeartbeat = "last_heartbeat_at"
)

// SortKeys lists the accepted values of [ListFilter.Sort].
var SortKeys = []string{SortID, "-" + SortID, SortStatusSince, "-" + SortStatusSince, SortLastHeartbeat, "-" + SortLastHeartbeat}

// Page is one page of [Store.List].
type Page struct {
	// Devices in id order (bytewise); never nil.
	Devices []Device
	// NextCursor fetches the next page; "" when this page is the last.
	NextCursor string
}

// List returns devices matching f in f.Sort order, at most f.Limit,
// skipping decommissioned ones. Pagination is by keyset on (sort key, id),
// never by offset:
//   - sorted by id (the default, either direction), a device appears on
//     exactly one page of a walk even while statuses change (a device whose
//     status or heartbeat changes during the walk may of course start or stop
//     matching a status or stale filter);
//   - sorted by status_since or last_heartbeat_at, a device whose key changes
//     during the walk moves: ascending it moves towards the end (it may be
//     seen twice, never skipped), descending towards the start (it may be
//     skipped). Devices whose key does not change are seen exactly once.
//
// now anchors StaleFor. Errors wrap [ErrInvalidFilter] or [ErrInvalidCursor],
// or are the database's.
func (s *Store) List(ctx context.Context, f ListFilter, now time.Time) (*Page, error) {
	limit, err := checkLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	if f.Status != "" && !f.Status.Valid() {
		return nil, fmt.Errorf("%w: unknown status %q", ErrInvalidFilter, f.Status)
	}
	if f.StaleFor < 0 {
		return nil, fmt.Errorf("%w: stale_for must not be negative", ErrInvalidFilter)
	}
	sortKey, desc, err := parseSort(f.Sort)
	if err != nil {
		return nil, err
	}
	var cur *cursor
	if f.Cursor != "" {
		if cur, err = decodeCursor(f.Cursor, sortKey, desc); err != nil {
			return nil, err
		}
	}
	var (
		where = []string{"decommissioned_at IS NULL"}
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.Status != "" {
		where = append(where, "status = "+arg(string(f.Status)))
	}
	if f.Group != "" {
		where = append(where, "group_name = "+arg(f.Group))
	}
	if f.StaleFor > 0 {
		// COALESCE(last_heartbeat_at, registered_at) < cutoff, or both NULL;
		// spelt out so the first branch can use devices_last_heartbeat_idx.
		c := arg(now.Add(-f.StaleFor).UTC())
		where = append(where, "(last_heartbeat_at < "+c+
			" OR (last_heartbeat_at IS NULL AND (registered_at IS NULL OR registered_at < "+c+")))")
	}
	if f.IDPrefix != "" {
		// LIKE with a constant prefix becomes a range scan of the C-collated
		// primary key; the explicit lower bound helps generic plans too.
		where = append(where, "id >= "+arg(f.IDPrefix), "id LIKE "+arg(likePrefix(f.IDPrefix))+` ESCAPE '\'`)
	}
	dir, cmp := "ASC", ">"
	if desc {
		dir, cmp = "DESC", "<"
	}
	var order string
	if sortKey == SortID {
		order = "id " + dir
		if cur != nil {
			where = append(where, "id "+cmp+" "+arg(cur.ID))
		}
	} else {
		k := sortKey // a column name from the fixed set of parseSort
		if desc {
			order = k + " DESC NULLS LAST, id DESC"
		} else {
			order = k + " ASC NULLS FIRST, id ASC"
		}
		if cur != nil {
			switch {
			case cur.T == nil && !desc:
				where = append(where, "(("+k+" IS NULL AND id > "+arg(cur.ID)+") OR "+k+" IS NOT NULL)")
			case cur.T == nil && desc:
				where = append(where, "("+k+" IS NULL AND id < "+arg(cur.ID)+")")
			default:
				t, id := arg(cur.T.UTC()), arg(cur.ID)
				cond := "(" + k + " " + cmp + " " + t + " OR (" + k + " = " + t + " AND id " + cmp + " " + id + ")"
				if desc {
					cond += " OR " + k + " IS NULL"
				}
				where = append(where, cond+")")
			}
		}
	}
	q := `SELECT ` + deviceColumns + ` FROM devices WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY ` + order + ` LIMIT ` + arg(limit+1)
	devs := []Device{}
	if err := s.db.SelectContext(ctx, &devs, q, args...); err != nil {
		return nil, fmt.Errorf("projections: list: %w", err)
	}
	p := &Page{Devices: devs}
	if len(devs) > limit {
		p.Devices = devs[:limit]
		p.NextCursor = encodeCursor(&devs[limit-1], sortKey, desc)
	}
	for i := range p.Devices {
		p.Devices[i].utc()
	}
	return p, nil
}

// likePrefix escapes a LIKE pattern that matches strings starting with p.
func likePrefix(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(p) + "%"
}

func parseSort(s string) (key string, desc bool, err error) {
	if s == "" {
		return SortID, false, nil
	}
	if !slices.Contains(SortKeys, s) {
		return "", false, fmt.Errorf("%w: sort must be one of %s; got %q", ErrInvalidFilter, strings.Join(SortKeys, ", "), s)
	}
	if s[0] == '-' {
		return s[1:], true, nil
	}
	return s, false, nil
}

// cursor is the position after which a sorted page continues.
type cursor struct {
	// S is the sort the cursor was made for ("-status_since" …).
	S  string     `json:"s"`
	T  *time.Time `json:"t"`
	ID string     `json:"id"`
}

// keyedCursorPrefix marks cursors of sorts other than ascending id (a
// base64url id cursor never contains ".").
const keyedCursorPrefix = "k."

func encodeCursor(d *Device, key string, desc bool) string {
	if key == SortID && !desc {
		return EncodeCursor(d.ID)
	}
	c := cursor{S: key, ID: d.ID}
	if desc {
		c.S = "-" + key
	}
	switch key {
	case SortStatusSince:
		t := d.StatusSince.UTC()
		c.T = &t
	case SortLastHeartbeat:
		if d.LastHeartbeatAt != nil {
			t := d.LastHeartbeatAt.UTC()
			c.T = &t
		}
	}
	b, _ := json.Marshal(c)
	return keyedCursorPrefix + base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s, key string, desc bool) (*cursor, error) {
	want := key
	if desc {
		want = "-" + key
	}
	if !strings.HasPrefix(s, keyedCursorPrefix) {
		if key != SortID || desc {
			return nil, fmt.Errorf("%w: the cursor belongs to sort=id, not sort=%s", ErrInvalidCursor, want)
		}
		id, err := DecodeCursor(s)
		if err != nil {
			return nil, err
		}
		return &cursor{S: SortID, ID: id}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(keyedCursorPrefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrInvalidCursor)
	}
	var c cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: malformed", ErrInvalidCursor)
	}
	if c.S != want {
		return nil, fmt.Errorf("%w: the cursor belongs to sort=%s, not sort=%s", ErrInvalidCursor, c.S, want)
	}
	if err := events.ValidateDeviceID(c.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCursor, err)
	}
	if c.T == nil && key == SortStatusSince {
		return nil, fmt.Errorf("%w: malformed", ErrInvalidCursor)
	}
	return &c, nil
}

// EncodeCursor returns the opaque cursor that continues after id: unpadded
// base64url of the id.
func EncodeCursor(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

// DecodeCursor reverses [EncodeCursor]; errors wrap [ErrInvalidCursor].
func DecodeCursor(c string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return "", fmt.Errorf("%w: not base64url", ErrInvalidCursor)
	}
	if err := events.ValidateDeviceID(string(b)); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidCursor, err)
	}
	return string(b), nil
}

func checkLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return DefaultLimit, nil
	case limit < 0 || limit > MaxLimit:
		return 0, fmt.Errorf("%w: limit must be in 1..%d, got %d", ErrInvalidFilter, MaxLimit, limit)
	}
	return limit, nil
}

// Transition is one row of a device's history.
type Transition struct {
	// Seq is the transitions-stream sequence.
	Seq        int64         `db:"stream_seq"`
	DeviceID   string        `db:"device_id"`
	From       events.Status `db:"from_status"`
	To         events.Status `db:"to_status"`
	ReasonCode string        `db:"reason_code"`
	Reason     string        `db:"reason"`
	// At is when the transition took effect; ObservedAt when it was observed
	// (nil if not recorded).
	At         time.Time  `db:"at"`
	ObservedAt *time.Time `db:"observed_at"`
	// CauseSeq, CauseEventID and CauseType identify the input event behind it.
	CauseSeq     int64  `db:"cause_seq"`
	CauseEventID string `db:"cause_event_id"`
	CauseType    string `db:"cause_type"`
}

// Transitions returns a device's transitions with from <= at < to, oldest
// first (ties in stream order), at most limit (0: DefaultLimit; at most
// MaxLimit). A zero from or to leaves that side open. When from is zero the
// window is anchored at its end: the latest limit transitions before to (or
// ever); otherwise the first limit transitions from from on, so a client
// pages forward by passing the last returned at as the next from (and
// dropping rows it already has). Errors wrap [ErrNotFound] (unknown or
// decommissioned device) or [ErrInvalidFilter] (from after to, bad limit).
func (s *Store) Transitions(ctx context.Context, id string, from, to time.Time, limit int) ([]Transition, error) {
	limit, err := checkLimit(limit)
	if err != nil {
		return nil, err
	}
	if !from.IsZero() && !to.IsZero() && from.After(to) {
		return nil, fmt.Errorf("%w: from is after to", ErrInvalidFilter)
	}
	var exists bool
	if err := s.db.GetContext(ctx, &exists,
		`SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1 AND decommissioned_at IS NULL)`, id); err != nil {
		return nil, fmt.Errorf("projections: transitions: %w", err)
	}
	if !exists {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	where, args := []string{"device_id = $1"}, []any{id}
	if !from.IsZero() {
		args = append(args, from.UTC())
		where = append(where, "at >= $"+strconv.Itoa(len(args)))
	}
	if !to.IsZero() {
		args = append(args, to.UTC())
		where = append(where, "at < $"+strconv.Itoa(len(args)))
	}
	args = append(args, limit)
	const cols = `stream_seq, device_id, from_status, to_status, reason_code, reason, at, observed_at,
        cause_seq, cause_event_id, cause_type`
	base := `SELECT ` + cols + ` FROM transitions WHERE ` + strings.Join(where, " AND ")
	var q string
	if from.IsZero() {
		q = `SELECT * FROM (` + base + ` ORDER BY at DESC, stream_seq DESC LIMIT $` + strconv.Itoa(len(args)) +
			`) t ORDER BY at, stream_seq`
	} else {
		q = base + ` ORDER BY at, stream_seq LIMIT $` + strconv.Itoa(len(args))
	}
	out := []Transition{}
	if err := s.db.SelectContext(ctx, &out, q, args...); err != nil {
		return nil, fmt.Errorf("projections: transitions: %w", err)
	}
	for i := range out {
		out[i].At = out[i].At.UTC()
		if out[i].ObservedAt != nil {
			t := out[i].ObservedAt.UTC()
			out[i].ObservedAt = &t
		}
	}
	return out, nil
}

// Counts maps each of the four statuses to a device count; every status is
// present (0 when none).
type Counts map[events.Status]int64

func newCounts() Counts {
	c := make(Counts, len(events.Statuses))
	for _, st := range events.Statuses {
		c[st] = 0
	}
	return c
}

// Total is the sum of the counts.
func (c Counts) Total() int64 {
	var n int64
	for _, v := range c {
		n += v
	}
	return n
}

// Summary counts the fleet (decommissioned devices excluded).
type Summary struct {
	// ByStatus counts every device.
	ByStatus Counts
	// ByGroup counts each group's devices ("" is the devices without a group).
	ByGroup map[string]Counts
}

// Summary counts devices by status and by group and status, in one scan.
func (s *Store) Summary(ctx context.Context) (*Summary, error) {
	var rows []struct {
		Group  string        `db:"group_name"`
		Status events.Status `db:"status"`
		N      int64         `db:"n"`
	}
	if err := s.db.SelectContext(ctx, &rows, `
SELECT group_name, status, count(*) AS n FROM devices
WHERE decommissioned_at IS NULL GROUP BY group_name, status`); err != nil {
		return nil, fmt.Errorf("projections: summary: %w", err)
	}
	sum := &Summary{ByStatus: newCounts(), ByGroup: map[string]Counts{}}
	for _, r := range rows {
		sum.ByStatus[r.Status] += r.N
		g := sum.ByGroup[r.Group]
		if g == nil {
			g = newCounts()
			sum.ByGroup[r.Group] = g
		}
		g[r.Status] += r.N
	}
	return sum, nil
}

// Checkpoint returns the stored checkpoint of a projection (0 when none).
func (s *Store) Checkpoint(ctx context.Context, projection string) (uint64, error) {
	var seq int64
	err := s.db.GetContext(ctx, &seq,
		`SELECT COALESCE((SELECT last_seq FROM projection_checkpoints WHERE name = $1), 0)`, projection)
	if err != nil {
		return 0, fmt.Errorf("projections: checkpoint: %w", err)
	}
	return uint64(seq), nil
}
