package sim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/trace"
)

// fake is a small stand-in for the devstatus HTTP edge: registration,
// heartbeats, and reads whose statuses come from the oracle applied to the
// heartbeats' receive times at read time. It exists to test the simulator's
// checks and timing; it is not a model of the service.
type fake struct {
	t     testing.TB
	th    trace.Thresholds
	admin string

	mu      sync.Mutex
	devices map[string]*fakeDevice
	order   []string
	// refuse429 makes the next n heartbeats of a device answer 429.
	refuse429 map[string]int
	// ignore drops the heartbeats of a device after answering 200 (a bug to catch).
	ignore map[string]bool
	// lag makes reads show the state of lag ago.
	lag time.Duration
}

type fakeDevice struct {
	id, group, token string
	hbs              []time.Time
}

func newFake(t testing.TB, th trace.Thresholds) (*fake, *httptest.Server) {
	f := &fake{t: t, th: th, admin: "admin-secret", devices: map[string]*fakeDevice{}, refuse429: map[string]int{}, ignore: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices", f.register)
	mux.HandleFunc("POST /v1/devices/{id}/heartbeat", f.heartbeat)
	mux.HandleFunc("GET /v1/devices/{id}", f.get)
	mux.HandleFunc("GET /v1/devices/{id}/transitions", f.transitions)
	mux.HandleFunc("GET /v1/devices", f.list)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fake) admin401(w http.ResponseWriter, r *http.Request) bool {
	if httpx.BearerToken(r) != f.admin {
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "admin token")
		return true
	}
	return false
}

func (f *fake) register(w http.ResponseWriter, r *http.Request) {
	if f.admin401(w, r) {
		return
	}
	var body struct{ ID, Group string }
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || events.ValidateDeviceID(body.ID) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "bad body")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devices[body.ID]; ok {
		httpx.WriteError(w, http.StatusConflict, httpx.CodeConflict, "exists")
		return
	}
	d := &fakeDevice{id: body.ID, group: body.Group, token: "tok-" + strconv.Itoa(len(f.order))}
	f.devices[body.ID] = d
	f.order = append(f.order, body.ID)
	httpx.WriteJSON(w, http.StatusCreated, map[string]string{"id": d.id, "token": d.token})
}

func (f *fake) heartbeat(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	id := r.PathValue("id")
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.devices[id]
	if d == nil {
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "unknown device")
		return
	}
	// The request's shape is the client's, tested in package apiclient.
	if httpx.BearerToken(r) != d.token {
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "device token")
		return
	}
	if f.refuse429[id] > 0 {
		f.refuse429[id]--
		httpx.WriteRetryAfter(w, http.StatusTooManyRequests, httpx.CodeRateLimited, "slow down", time.Second)
		return
	}
	status := f.view(d, now).Final
	if !f.ignore[id] {
		d.hbs = append(d.hbs, now)
	}
	httpx.WriteJSON(w, http.StatusOK, apiclient.HeartbeatResponse{Status: status, HeartbeatIntervalS: 30})
}

// view is the oracle over the device's receive times as of at − lag.
func (f *fake) view(d *fakeDevice, at time.Time) trace.Expectation {
	at = at.Add(-f.lag)
	var hbs []time.Time
	for _, t := range d.hbs {
		if !t.After(at) {
			hbs = append(hbs, t)
		}
	}
	e, err := trace.Expect(d.id, hbs, at, f.th)
	if err != nil {
		f.t.Errorf("fake: %v", err)
	}
	return e
}

func (f *fake) deviceJSON(d *fakeDevice, now time.Time) apiclient.Device {
	e := f.view(d, now)
	out := apiclient.Device{ID: d.id, Group: d.group, Status: e.Final}
	if e.Heartbeats > 0 {
		lh := e.LastHeartbeat
		out.LastHeartbeatAt = &lh
	}
	return out
}

func (f *fake) lookup(w http.ResponseWriter, r *http.Request) *fakeDevice {
	if f.admin401(w, r) {
		return nil
	}
	id := r.PathValue("id")
	d := f.devices[id]
	if d == nil {
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "unknown device")
	}
	return d
}

func (f *fake) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.lookup(w, r); d != nil {
		httpx.WriteJSON(w, http.StatusOK, f.deviceJSON(d, time.Now()))
	}
}

func (f *fake) transitions(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.lookup(w, r)
	if d == nil {
		return
	}
	trs := []apiclient.TransitionRecord{}
	for _, tr := range f.view(d, time.Now()).Transitions {
		trs = append(trs, apiclient.TransitionRecord{From: tr.From, To: tr.To, ReasonCode: tr.ReasonCode, Reason: "fake", At: tr.At})
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"transitions": trs})
}

// list pages in registration order; the cursor is the next index.
func (f *fake) list(w http.ResponseWriter, r *http.Request) {
	if f.admin401(w, r) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	limit = min(max(limit, 1), 100) // the fake caps pages at 100 to exercise paging
	i, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
	now := time.Now()
	page := apiclient.DevicePage{Devices: []apiclient.Device{}}
	for ; i < len(f.order) && len(page.Devices) < limit; i++ {
		d := f.devices[f.order[i]]
		if st := r.URL.Query().Get("status"); st != "" && f.view(d, now).Final != events.Status(st) {
			continue
		}
		page.Devices = append(page.Devices, f.deviceJSON(d, now))
	}
	if i < len(f.order) {
		page.NextCursor = strconv.Itoa(i)
	}
	httpx.WriteJSON(w, http.StatusOK, page)
}

func (f *fake) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.order)
}

func newTestClient(t *testing.T, url, admin string) *apiclient.Client {
	t.Helper()
	c, err := apiclient.NewClient(apiclient.ClientConfig{URL: url, AdminToken: admin, RetryWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
