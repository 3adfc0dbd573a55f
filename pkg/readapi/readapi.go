package readapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/projections"
)

// The patterns [API.Routes] registers. All are GET (which also serves HEAD),
// so none conflicts with the bridge's POST/PATCH/DELETE patterns on the same
// paths ("POST /v1/devices", "PATCH /v1/devices/{id}", "POST
// /v1/devices/{id}/heartbeat" …): net/http's ServeMux only panics on
// patterns that match the same requests.
const (
	PatternList        = "GET /v1/devices"
	PatternDevice      = "GET /v1/devices/{id}"
	PatternTransitions = "GET /v1/devices/{id}/transitions"
	PatternSummary     = "GET /v1/summary"
	PatternStatusAt    = "GET /v1/devices/{id}/status"
	PatternAvail       = "GET /v1/devices/{id}/availability"
	PatternStream      = "GET /v1/stream"
	// PatternFleetTransitions is every device's history, paged (export.go).
	PatternFleetTransitions = "GET /v1/transitions"
)

// ErrInvalidConfig wraps every configuration error of [New].
var ErrInvalidConfig = errors.New("readapi: invalid config")

// Reader is what the API reads; *projections.Store implements it. Errors
// wrapping projections.ErrNotFound become 404, projections.ErrInvalidFilter
// and projections.ErrInvalidCursor 400, anything else 500.
type Reader interface {
	Device(ctx context.Context, id string) (*projections.Device, error)
	List(ctx context.Context, f projections.ListFilter, now time.Time) (*projections.Page, error)
	Transitions(ctx context.Context, id string, from, to time.Time, limit int) ([]projections.Transition, error)
	Summary(ctx context.Context) (*projections.Summary, error)
	StatusAt(ctx context.Context, id string, at time.Time) (*projections.PastStatus, error)
	Availability(ctx context.Context, id string, from, to time.Time) (*projections.Availability, error)
	FleetTransitions(ctx context.Context, f projections.TransitionFilter) (*projections.TransitionPage, error)
}

// Config configures an [API].
type Config struct {
	// Store answers the queries. Required.
	Store Reader
	// AdminToken is the bootstrap admin token. Required.
	AdminToken string
	// Auth tells the role of a bearer token (see pkg/tokens); every route
	// here is a read and needs httpx.RoleViewer. Default
	// httpx.StaticToken(AdminToken): the admin token only.
	Auth httpx.Authorizer
	// Logger receives internal errors. Default slog.Default().
	Logger *slog.Logger
	// Clock is "now" for the stale_for filter. Default clock.NewMonotonic().
	Clock clock.Clock
	// Timeout bounds each query. Default 10s.
	Timeout time.Duration
	// Stream configures GET /v1/stream (server-sent events).
	Stream StreamConfig
	// Registerer receives the API's metrics (see metrics.go); nil: none.
	Registerer prometheus.Registerer
	// Hold returns the outage hold's state and a channel closed at its
	// next change (GET /v1/summary, GET /v1/stream). Nil: never on.
	Hold func() (OutageHold, <-chan struct{})
	// TicketKey signs the stream tickets of POST /v1/stream/ticket; every
	// instance of a deployment needs the same key. Default
	// TicketKey(AdminToken).
	TicketKey []byte
	// TicketTTL is how long a ticket opens the stream. Default
	// DefaultTicketTTL (60 s).
	TicketTTL time.Duration
}

// OutageHold is the outage hold's state: while Active, no device becomes
// disconnected; Since is when it started (UTC; nil when none is on),
// Reason why it started (or why the last one ended).
type OutageHold struct {
	Active bool       `json:"active"`
	Since  *time.Time `json:"since"`
	Reason string     `json:"reason"`
}

func (a *API) hold() (OutageHold, <-chan struct{}) {
	if a.cfg.Hold == nil {
		return OutageHold{}, nil
	}
	return a.cfg.Hold()
}

// API is the read API's handlers.
type API struct {
	cfg     Config
	log     *slog.Logger
	m       *apiMetrics
	streams *streams
}

// New checks cfg and returns an API. Errors wrap [ErrInvalidConfig].
func New(cfg Config) (*API, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.NewMonotonic()
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if len(cfg.TicketKey) == 0 {
		cfg.TicketKey = TicketKey(cfg.AdminToken)
	}
	if cfg.TicketTTL == 0 {
		cfg.TicketTTL = DefaultTicketTTL
	}
	var errs []error
	if cfg.Store == nil {
		errs = append(errs, errors.New("store is required"))
	}
	if cfg.AdminToken == "" {
		errs = append(errs, errors.New("admin token is required"))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, errors.New("timeout must not be negative"))
	}
	if cfg.TicketTTL < 0 {
		errs = append(errs, errors.New("ticket TTL must not be negative"))
	}
	if err := cfg.Stream.setDefaults(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if cfg.Auth == nil {
		cfg.Auth = httpx.StaticToken(cfg.AdminToken)
	}
	m, err := newAPIMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("readapi: metrics: %w", err)
	}
	a := &API{cfg: cfg, log: cfg.Logger.With(slog.String("component", "readapi")), m: m}
	a.streams = newStreams(a)
	return a, nil
}

// Routes registers every Pattern* on mux, each behind a viewer (or admin)
// token of Config.Auth as a bearer header; PatternStream also opens with a
// ticket of PatternTicket (?ticket=, see [API.handleTicket]). The server must wrap
// mux with httpx.DeviceIDs (ids with "/", ".", ".." …); without it ids still
// work when they need no path cleaning.
func (a *API) Routes(mux httpx.Mux) {
	auth := func(route string, h http.HandlerFunc) http.Handler {
		return a.m.instrument(route, httpx.RequireRole(a.cfg.Auth, httpx.RoleViewer, h))
	}
	mux.Handle(PatternList, auth("list", a.handleList))
	mux.Handle(PatternDevice, auth("device", a.handleDevice))
	mux.Handle(PatternTransitions, auth("transitions", a.handleTransitions))
	mux.Handle(PatternSummary, auth("summary", a.handleSummary))
	mux.Handle(PatternStatusAt, auth("status_at", a.handleStatusAt))
	mux.Handle(PatternAvail, auth("availability", a.handleAvailability))
	mux.Handle(PatternFleetTransitions, auth("fleet_transitions", a.handleFleetTransitions))
	mux.Handle(PatternStream, a.requireStreamToken(http.HandlerFunc(a.handleStream)))
	mux.Handle(PatternTicket, auth("stream_ticket", a.handleTicket))
	mux.Handle(PatternWhoami, auth("whoami", a.handleWhoami))
}

// Handler returns a handler serving only the read API (its own mux wrapped
// with httpx.DeviceIDs), for tests and single-role servers.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Routes(mux)
	return httpx.DeviceIDs(mux)
}

// DeviceJSON is a device on the wire (GET /v1/devices/{id} and the items
// of GET /v1/devices). Times are RFC 3339 UTC; null means never. The keys of
// the contract (docs/architecture.md) come first; reason_code, gateway and
// registered_at are additions.
type DeviceJSON struct {
	ID                   string          `json:"id"`
	Group                string          `json:"group"`
	Status               events.Status   `json:"status"`
	StatusSince          time.Time       `json:"status_since"`
	Reason               string          `json:"reason"`
	LastHeartbeatAt      *time.Time      `json:"last_heartbeat_at"`
	LastPingAt           *time.Time      `json:"last_ping_at"`
	LastPingOK           *bool           `json:"last_ping_ok"`
	Metrics              json.RawMessage `json:"metrics"`
	RemoteControlEnabled bool            `json:"remote_control_enabled"`
	ReasonCode           string          `json:"reason_code"`
	Gateway              *string         `json:"gateway"`
	RegisteredAt         *time.Time      `json:"registered_at"`
	// MetricsAt is when the latest metrics were received (null: none yet).
	MetricsAt *time.Time `json:"metrics_at"`
}

func deviceJSON(d *projections.Device) DeviceJSON {
	var metrics json.RawMessage
	if len(d.Metrics) > 0 {
		metrics = json.RawMessage(d.Metrics)
	}
	return DeviceJSON{
		ID: d.ID, Group: d.Group, Status: d.Status, StatusSince: d.StatusSince.UTC(), Reason: d.Reason,
		LastHeartbeatAt: utc(d.LastHeartbeatAt), LastPingAt: utc(d.LastPingAt), LastPingOK: d.LastPingOK,
		Metrics: metrics, RemoteControlEnabled: d.RemoteControlEnabled,
		ReasonCode: d.ReasonCode, Gateway: d.Gateway, RegisteredAt: utc(d.RegisteredAt), MetricsAt: utc(d.MetricsAt),
	}
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// ListJSON is the answer of GET /v1/devices: next_cursor is null on the
// last page.
type ListJSON struct {
	Devices    []DeviceJSON `json:"devices"`
	NextCursor *string      `json:"next_cursor"`
}

// TransitionJSON is one history entry (oldest first).
type TransitionJSON struct {
	From       events.Status `json:"from"`
	To         events.Status `json:"to"`
	ReasonCode string        `json:"reason_code"`
	Reason     string        `json:"reason"`
	At         time.Time     `json:"at"`
}

// TransitionsJSON is the answer of GET /v1/devices/{id}/transitions.
type TransitionsJSON struct {
	Transitions []TransitionJSON `json:"transitions"`
}

// CountsJSON counts devices per status; every key is always present.
type CountsJSON struct {
	Registered         int64 `json:"registered"`
	Connected          int64 `json:"connected"`
	TemporarilyOffline int64 `json:"temporarily_offline"`
	Disconnected       int64 `json:"disconnected"`
	Total              int64 `json:"total"`
}

// SummaryJSON is the answer of GET /v1/summary: the design's four counts at
// the top level, plus total and the same counts per group ("" = no group),
// and the outage hold: {"active": bool, "since": time|null, "reason": string}.
type SummaryJSON struct {
	CountsJSON
	Groups     map[string]CountsJSON `json:"groups"`
	OutageHold OutageHold            `json:"outage_hold"`
}

func countsJSON(c projections.Counts) CountsJSON {
	return CountsJSON{
		Registered: c[events.StatusRegistered], Connected: c[events.StatusConnected],
		TemporarilyOffline: c[events.StatusTemporarilyOffline], Disconnected: c[events.StatusDisconnected],
		Total: c.Total(),
	}
}

func (a *API) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), a.cfg.Timeout)
}

// deviceID returns the request's device id, or writes 400.
func deviceID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := httpx.DeviceID(r)
	if err := events.ValidateDeviceID(id); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error())
		return "", false
	}
	return id, true
}

func (a *API) handleDevice(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	d, err := a.cfg.Store.Device(ctx, id)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, deviceJSON(d))
}

func (a *API) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f projections.ListFilter
	asCSV, err := wantCSV(r)
	if err != nil {
		badRequest(w, err)
		return
	}
	if f.Status, err = parseStatus(q); err != nil {
		badRequest(w, err)
		return
	}
	if f.Group, err = parseGroup(q); err != nil {
		badRequest(w, err)
		return
	}
	if f.StaleFor, err = parseStaleFor(q); err != nil {
		badRequest(w, err)
		return
	}
	if f.Limit, err = parseLimit(q); err != nil {
		badRequest(w, err)
		return
	}
	if f.IDPrefix, err = parsePrefix(q); err != nil {
		badRequest(w, err)
		return
	}
	if f.Sort, err = single(q, "sort"); err != nil {
		badRequest(w, err)
		return
	}
	f.Cursor = q.Get("cursor")
	ctx, cancel := a.ctx(r)
	defer cancel()
	page, err := a.cfg.Store.List(ctx, f, a.cfg.Clock.Now())
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	if asCSV {
		rows := make([][]string, len(page.Devices))
		for i := range page.Devices {
			rows[i] = DeviceCSVRecord(&page.Devices[i])
		}
		a.writeCSV(w, r, "devices.csv", DeviceCSVColumns, rows, page.NextCursor)
		return
	}
	out := ListJSON{Devices: make([]DeviceJSON, 0, len(page.Devices))}
	for i := range page.Devices {
		out.Devices = append(out.Devices, deviceJSON(&page.Devices[i]))
	}
	if page.NextCursor != "" {
		out.NextCursor = &page.NextCursor
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}

func (a *API) handleTransitions(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	asCSV, err := wantCSV(r)
	if err != nil {
		badRequest(w, err)
		return
	}
	q := r.URL.Query()
	from, to, err := parseFromTo(q)
	if err != nil {
		badRequest(w, err)
		return
	}
	limit, err := parseLimit(q)
	if err != nil {
		badRequest(w, err)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	trs, err := a.cfg.Store.Transitions(ctx, id, from, to, limit)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	if asCSV {
		rows := make([][]string, len(trs))
		for i := range trs {
			rows[i] = TransitionCSVRecord(&trs[i])
		}
		a.writeCSV(w, r, "transitions.csv", TransitionCSVColumns, rows, "")
		return
	}
	out := TransitionsJSON{Transitions: make([]TransitionJSON, 0, len(trs))}
	for _, t := range trs {
		out.Transitions = append(out.Transitions, TransitionJSON{From: t.From, To: t.To, ReasonCode: t.ReasonCode, Reason: t.Reason, At: t.At.UTC()})
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}

func (a *API) handleSummary(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	s, err := a.cfg.Store.Summary(ctx)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	out := SummaryJSON{CountsJSON: countsJSON(s.ByStatus), Groups: make(map[string]CountsJSON, len(s.ByGroup))}
	out.OutageHold, _ = a.hold()
	for g, c := range s.ByGroup {
		out.Groups[g] = countsJSON(c)
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}

// writeStoreError maps a Reader error to the answer.
func (a *API) writeStoreError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, projections.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "no such device")
	case errors.Is(err, projections.ErrInvalidCursor):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "invalid cursor: "+clientDetail(err, projections.ErrInvalidCursor, "not issued by this API"))
	case errors.Is(err, projections.ErrInvalidFilter):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, clientDetail(err, projections.ErrInvalidFilter, "invalid filter"))
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
	default:
		a.log.Error("read failed", slog.String("path", r.URL.Path), slog.Any("err", err))
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the status store is unavailable")
	}
}

// clientDetail returns what follows sentinel in err's message ("projections:
// invalid filter: limit must be in 1..1000" → "limit must be in 1..1000"), so
// an API client never sees a Go package prefix; fallback when nothing
// follows it (or the message does not contain it).
func clientDetail(err, sentinel error, fallback string) string {
	msg, prefix := err.Error(), sentinel.Error()
	i := strings.Index(msg, prefix)
	if i < 0 {
		return fallback
	}
	if d := strings.TrimSpace(strings.TrimPrefix(msg[i+len(prefix):], ":")); d != "" {
		return d
	}
	return fallback
}

// badRequest writes 400 with err's message; err must be one of this
// package's own messages (no Go package prefix): store errors go through
// writeStoreError.
func badRequest(w http.ResponseWriter, err error) {
	httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, err.Error())
}

func noStore(w http.ResponseWriter) { w.Header().Set("Cache-Control", "no-store") }

// single returns the only value of a query parameter; a repeated one is an
// error.
func single(q url.Values, key string) (string, error) {
	vs := q[key]
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	}
	return "", fmt.Errorf("%s is given %d times", key, len(vs))
}

func parseStatus(q url.Values) (events.Status, error) {
	v, err := single(q, "status")
	if err != nil || v == "" {
		return "", err
	}
	if s := events.Status(v); s.Valid() {
		return s, nil
	}
	return "", fmt.Errorf("status must be one of registered, connected, temporarily_offline, disconnected; got %q", v)
}

func parseGroup(q url.Values) (string, error) {
	v, err := single(q, "group")
	if err != nil {
		return "", err
	}
	if !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 || len(v) > 256 {
		return "", errors.New("group must be valid UTF-8 without NUL, at most 256 bytes")
	}
	return v, nil
}

// parseStaleFor accepts integer seconds ("300") or a Go duration ("5m").
func parseStaleFor(q url.Values) (time.Duration, error) {
	v, err := single(q, "stale_for")
	if err != nil || v == "" {
		return 0, err
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n > int64(100*365*24*time.Hour/time.Second) {
			return 0, errors.New("stale_for is too large")
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(v); err != nil {
		return 0, fmt.Errorf("stale_for must be seconds or a duration such as 90s or 5m; got %q", v)
	}
	if d <= 0 {
		return 0, fmt.Errorf("stale_for must be positive; got %q", v)
	}
	return d, nil
}

// parsePrefix reads the id prefix filter (prefix=): valid UTF-8 without
// control characters, at most 128 bytes.
func parsePrefix(q url.Values) (string, error) {
	v, err := single(q, "prefix")
	if err != nil || v == "" {
		return "", err
	}
	if err := events.ValidateDeviceID(v); err != nil {
		return "", fmt.Errorf("prefix: %w", err)
	}
	return v, nil
}

func parseLimit(q url.Values) (int, error) {
	v, err := single(q, "limit")
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > projections.MaxLimit {
		return 0, fmt.Errorf("limit must be an integer in 1..%d; got %q", projections.MaxLimit, v)
	}
	return n, nil
}

// parseFromTo reads the optional RFC 3339 parameters from and to (zero when
// absent); the error says which one is malformed or repeated.
func parseFromTo(q url.Values) (from, to time.Time, err error) {
	if from, err = parseTime(q, "from"); err != nil {
		return from, to, err
	}
	to, err = parseTime(q, "to")
	return from, to, err
}

func parseTime(q url.Values, key string) (time.Time, error) {
	v, err := single(q, key)
	if err != nil || v == "" {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s must be an RFC 3339 time such as 2026-01-02T03:04:05Z; got %q", key, v)
	}
	return t, nil
}
