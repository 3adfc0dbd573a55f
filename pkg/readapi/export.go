package readapi

// CSV exports. GET /v1/devices, GET /v1/devices/{id}/transitions and
// GET /v1/transitions answer CSV instead of JSON when asked with
// "?format=csv" or an Accept header naming text/csv. The CSV is written by
// encoding/csv (RFC 4180: fields with commas, quotes, CR or LF are quoted,
// quotes doubled), UTF-8 without a byte-order mark, one header row, times
// RFC 3339 UTC with nanoseconds, null as an empty field.
//
// Values are written as they are: a cell starting with "=", "+", "-" or "@"
// is not prefixed with a quote to defuse spreadsheet formulas, because the
// export is an interchange format (it must import back byte for byte, and
// "-7" or "=lobby" are valid device ids). Whoever opens an export in a
// spreadsheet should import it as text (the README says so).
//
// Paging is the JSON answer's: the cursor of the next page is in the
// Next-Cursor header and, as a link to that page, in
// Link: <…&cursor=…>; rel="next"; neither is set on the last page.

import (
	"encoding/csv"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/projections"
)

// CSV column names, in order. DeviceCSVColumns is also what POST
// /v1/devices/import accepts (it registers id, group and gateway and ignores
// the other columns of an export).
var (
	DeviceCSVColumns = []string{"id", "group", "gateway", "status", "status_since", "reason_code", "reason",
		"last_heartbeat_at", "last_ping_at", "last_ping_ok", "remote_control_enabled", "registered_at",
		"metrics_at", "metrics"}
	TransitionCSVColumns = []string{"seq", "device", "from", "to", "reason_code", "reason", "at", "observed_at"}
)

// CSVContentType is the media type of every CSV answer.
const CSVContentType = "text/csv; charset=utf-8; header=present"

// NextCursorHeader carries the next page's cursor on a CSV answer.
const NextCursorHeader = "Next-Cursor"

var errFormat = errors.New(`format must be "json" or "csv"`)

// wantCSV reports whether the request asks for CSV: ?format=csv, or (without
// format) an Accept header that names text/csv. ?format=json forces JSON.
func wantCSV(r *http.Request) (bool, error) {
	f, err := single(r.URL.Query(), "format")
	if err != nil {
		return false, err
	}
	switch f {
	case "csv":
		return true, nil
	case "json":
		return false, nil
	case "":
	default:
		return false, errFormat
	}
	for _, part := range strings.Split(strings.Join(r.Header.Values("Accept"), ","), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/csv" {
			return true, nil
		}
	}
	return false, nil
}

// csvTime formats a time for CSV ("" for nil or zero).
func csvTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func csvBool(b *bool) string {
	if b == nil {
		return ""
	}
	return strconv.FormatBool(*b)
}

func csvString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// DeviceCSVRecord returns d as a row of [DeviceCSVColumns].
func DeviceCSVRecord(d *projections.Device) []string {
	since := d.StatusSince
	rc := d.RemoteControlEnabled
	return []string{d.ID, d.Group, csvString(d.Gateway), string(d.Status), csvTime(&since), d.ReasonCode, d.Reason,
		csvTime(d.LastHeartbeatAt), csvTime(d.LastPingAt), csvBool(d.LastPingOK), csvBool(&rc),
		csvTime(d.RegisteredAt), csvTime(d.MetricsAt), string(d.Metrics)}
}

// TransitionCSVRecord returns t as a row of [TransitionCSVColumns].
func TransitionCSVRecord(t *projections.Transition) []string {
	at := t.At
	return []string{strconv.FormatInt(t.Seq, 10), t.DeviceID, string(t.From), string(t.To), t.ReasonCode, t.Reason,
		csvTime(&at), csvTime(t.ObservedAt)}
}

// writeCSV answers 200 with a header row and rows, and the paging headers
// when next is not "". filename names the download.
func (a *API) writeCSV(w http.ResponseWriter, r *http.Request, filename string, header []string, rows [][]string, next string) {
	h := w.Header()
	h.Set("Content-Type", CSVContentType)
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filename}))
	h.Set("Cache-Control", "no-store")
	if next != "" {
		h.Set(NextCursorHeader, next)
		q := r.URL.Query()
		q.Set("cursor", next)
		u := url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: q.Encode()}
		h.Set("Link", "<"+u.String()+`>; rel="next"`)
	}
	w.WriteHeader(http.StatusOK)
	cw := csv.NewWriter(w)
	_ = cw.Write(header)
	_ = cw.WriteAll(rows) // flushes
	if err := cw.Error(); err != nil && r.Context().Err() == nil {
		a.log.Warn("readapi: writing CSV", "path", r.URL.Path, "err", err)
	}
}

// FleetTransitionJSON is one item of GET /v1/transitions.
type FleetTransitionJSON struct {
	Seq        int64      `json:"seq"`
	Device     string     `json:"device"`
	From       string     `json:"from"`
	To         string     `json:"to"`
	ReasonCode string     `json:"reason_code"`
	Reason     string     `json:"reason"`
	At         time.Time  `json:"at"`
	ObservedAt *time.Time `json:"observed_at"`
}

// FleetTransitionsJSON is the answer of GET /v1/transitions: next_cursor is
// null on the last page.
type FleetTransitionsJSON struct {
	Transitions []FleetTransitionJSON `json:"transitions"`
	NextCursor  *string               `json:"next_cursor"`
}

// handleFleetTransitions serves GET /v1/transitions?from=&to=&limit=&cursor=
// (&format=csv): every device's transitions with from <= at < to, ordered
// by (at, sequence), paged by cursor.
func (a *API) handleFleetTransitions(w http.ResponseWriter, r *http.Request) {
	asCSV, err := wantCSV(r)
	if err != nil {
		badRequest(w, err)
		return
	}
	q := r.URL.Query()
	var f projections.TransitionFilter
	if f.From, err = parseTime(q, "from"); err != nil {
		badRequest(w, err)
		return
	}
	if f.To, err = parseTime(q, "to"); err != nil {
		badRequest(w, err)
		return
	}
	if f.Limit, err = parseLimit(q); err != nil {
		badRequest(w, err)
		return
	}
	if f.Cursor, err = single(q, "cursor"); err != nil {
		badRequest(w, err)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	page, err := a.cfg.Store.FleetTransitions(ctx, f)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	if asCSV {
		rows := make([][]string, len(page.Transitions))
		for i := range page.Transitions {
			rows[i] = TransitionCSVRecord(&page.Transitions[i])
		}
		a.writeCSV(w, r, "transitions.csv", TransitionCSVColumns, rows, page.NextCursor)
		return
	}
	out := FleetTransitionsJSON{Transitions: make([]FleetTransitionJSON, 0, len(page.Transitions))}
	for _, t := range page.Transitions {
		out.Transitions = append(out.Transitions, FleetTransitionJSON{Seq: t.Seq, Device: t.DeviceID,
			From: string(t.From), To: string(t.To), ReasonCode: t.ReasonCode, Reason: t.Reason,
			At: t.At.UTC(), ObservedAt: utc(t.ObservedAt)})
	}
	if page.NextCursor != "" {
		out.NextCursor = &page.NextCursor
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}
