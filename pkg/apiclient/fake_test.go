package apiclient_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/readapi"
	"github.com/devstatus/devstatus/projections"
)

const admin = "admin-secret"

// edge serves the API the client speaks: the reads through the real read
// API handlers (package readapi) over an in-memory store, and the writes
// (registration, heartbeats) with the bridge's JSON shapes and error bodies
// (package httpx). A heartbeat connects its device at once, with one
// transition; there is no timeout. It exists to test the client's requests
// and decoding; it is not a model of the service.
type edge struct {
	mu      sync.Mutex
	devices map[string]*projections.Device
	tokens  map[string]string
	trs     map[string][]projections.Transition
	// refuse makes the next answers of a device's heartbeats this status
	// (429 or 503), with Retry-After 1 s.
	refuse map[string][]int
	// seen records every id that reached a write handler, decoded.
	seen map[string]bool
	// bodies counts heartbeat bodies with device_time and metrics.
	bodies int
}

func newEdge(t *testing.T) (*edge, *httptest.Server) {
	t.Helper()
	e := &edge{devices: map[string]*projections.Device{}, tokens: map[string]string{}, trs: map[string][]projections.Transition{},
		refuse: map[string][]int{}, seen: map[string]bool{}}
	api, err := readapi.New(readapi.Config{Store: e, AdminToken: admin})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Routes(mux)
	mux.HandleFunc("POST /v1/devices", e.register)
	mux.HandleFunc("POST /v1/devices/{id}/heartbeat", e.heartbeat)
	srv := httptest.NewServer(httpx.DeviceIDs(mux))
	t.Cleanup(srv.Close)
	return e, srv
}

func (e *edge) register(w http.ResponseWriter, r *http.Request) {
	if httpx.BearerToken(r) != admin {
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "admin token")
		return
	}
	var body struct{ ID, Group string }
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || events.ValidateDeviceID(body.ID) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "bad body")
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seen[body.ID] = true
	if _, ok := e.devices[body.ID]; ok {
		httpx.WriteError(w, http.StatusConflict, httpx.CodeConflict, "exists")
		return
	}
	now := time.Now().UTC()
	e.devices[body.ID] = &projections.Device{ID: body.ID, Group: body.Group, Status: events.StatusRegistered, StatusSince: now, RegisteredAt: &now}
	e.tokens[body.ID] = "tok-" + strconv.Itoa(len(e.tokens))
	httpx.WriteJSON(w, http.StatusCreated, map[string]string{"id": body.ID, "token": e.tokens[body.ID]})
}

func (e *edge) heartbeat(w http.ResponseWriter, r *http.Request) {
	id := httpx.DeviceID(r)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seen[id] = true
	d := e.devices[id]
	switch {
	case d == nil:
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "unknown device")
		return
	case httpx.BearerToken(r) != e.tokens[id]:
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "device token")
		return
	case r.Header.Get("Content-Type") != "application/json":
		httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "json please")
		return
	}
	var body struct {
		DeviceTime *time.Time      `json:"device_time"`
		Metrics    json.RawMessage `json:"metrics"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeMalformedJSON, err.Error())
		return
	}
	if q := e.refuse[id]; len(q) > 0 {
		e.refuse[id] = q[1:]
		httpx.WriteRetryAfter(w, q[0], map[int]string{429: httpx.CodeRateLimited, 503: httpx.CodeUnavailable}[q[0]], "later", time.Second)
		return
	}
	if body.DeviceTime != nil && len(body.Metrics) > 2 {
		e.bodies++
		d.Metrics = body.Metrics
	}
	was := d.Status
	now := time.Now().UTC()
	d.LastHeartbeatAt = &now
	if was != events.StatusConnected {
		d.Status, d.StatusSince, d.ReasonCode, d.Reason = events.StatusConnected, now, string(events.ReasonHeartbeat), "heartbeat received"
		e.trs[id] = append(e.trs[id], projections.Transition{DeviceID: id, From: was, To: events.StatusConnected,
			ReasonCode: string(events.ReasonHeartbeat), Reason: d.Reason, At: now})
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"status": was, "remote_control_enabled": false, "should_reconnect": false, "heartbeat_interval_s": 30})
}

// The read side: readapi.Reader over the map.

func (e *edge) Device(_ context.Context, id string) (*projections.Device, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d, ok := e.devices[id]; ok {
		c := *d
		return &c, nil
	}
	return nil, projections.ErrNotFound
}

// List pages in id order; the cursor is the last id of the previous page.
func (e *edge) List(_ context.Context, f projections.ListFilter, _ time.Time) (*projections.Page, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.devices))
	for id := range e.devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	limit := min(max(f.Limit, 1), 100) // capped at 100 to exercise paging
	page := &projections.Page{Devices: []projections.Device{}}
	for _, id := range ids {
		d := e.devices[id]
		if id <= f.Cursor || (f.Status != "" && d.Status != f.Status) || (f.Group != "" && d.Group != f.Group) || !strings.HasPrefix(id, f.IDPrefix) {
			continue
		}
		if len(page.Devices) == limit {
			page.NextCursor = page.Devices[limit-1].ID
			break
		}
		page.Devices = append(page.Devices, *d)
	}
	return page, nil
}

func (e *edge) Transitions(_ context.Context, id string, _, _ time.Time, _ int) ([]projections.Transition, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.devices[id]; !ok {
		return nil, projections.ErrNotFound
	}
	return slices.Clone(e.trs[id]), nil
}

func (e *edge) Summary(context.Context) (*projections.Summary, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &projections.Summary{ByStatus: projections.Counts{}, ByGroup: map[string]projections.Counts{}}
	for _, d := range e.devices {
		s.ByStatus[d.Status]++
		if s.ByGroup[d.Group] == nil {
			s.ByGroup[d.Group] = projections.Counts{}
		}
		s.ByGroup[d.Group][d.Status]++
	}
	return s, nil
}

func (e *edge) StatusAt(context.Context, string, time.Time) (*projections.PastStatus, error) {
	return nil, projections.ErrNotFound
}

func (e *edge) Availability(context.Context, string, time.Time, time.Time) (*projections.Availability, error) {
	return nil, projections.ErrNotFound
}

func (e *edge) FleetTransitions(context.Context, projections.TransitionFilter) (*projections.TransitionPage, error) {
	return &projections.TransitionPage{Transitions: []projections.Transition{}}, nil
}
