package readapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// DefaultAvailabilityWindow is the window of GET /v1/devices/{id}/availability
// when from is not given: the 24 hours before to.
const DefaultAvailabilityWindow = 24 * time.Hour

// StatusAtJSON is the answer of GET /v1/devices/{id}/status?at=T: the status
// in effect at T according to the transition history (the to of the last
// transition with at <= T; before the first transition the device is
// "registered" from its registration on). status and status_since are null
// when T is before the device was registered.
type StatusAtJSON struct {
	ID          string         `json:"id"`
	At          time.Time      `json:"at"`
	Status      *events.Status `json:"status"`
	StatusSince *time.Time     `json:"status_since"`
	ReasonCode  string         `json:"reason_code"`
	Reason      string         `json:"reason"`
}

// StatusDurationsJSON has one value per status, plus "unknown" (the part of
// the window before the device was registered).
type StatusDurationsJSON struct {
	Registered         float64 `json:"registered"`
	Connected          float64 `json:"connected"`
	TemporarilyOffline float64 `json:"temporarily_offline"`
	Disconnected       float64 `json:"disconnected"`
	Unknown            float64 `json:"unknown"`
}

// AvailabilityJSON is the answer of GET /v1/devices/{id}/availability:
// the time the device spent in each status over [from, to), computed from
// the transition history. seconds are fractional seconds (transitions are
// stamped to the microsecond); percent is seconds / window_s × 100 (not
// rounded). to is the asked to, or now when that is later (the future has no
// status yet).
type AvailabilityJSON struct {
	ID          string              `json:"id"`
	From        time.Time           `json:"from"`
	To          time.Time           `json:"to"`
	WindowS     float64             `json:"window_s"`
	Transitions int                 `json:"transitions"`
	Seconds     StatusDurationsJSON `json:"seconds"`
	Percent     StatusDurationsJSON `json:"percent"`
}

// handleStatusAt serves GET /v1/devices/{id}/status?at=RFC3339 (default: now).
func (a *API) handleStatusAt(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	at, err := parseTime(r.URL.Query(), "at")
	if err != nil {
		badRequest(w, err)
		return
	}
	if at.IsZero() {
		at = a.cfg.Clock.Now()
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	ps, err := a.cfg.Store.StatusAt(ctx, id, at)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	out := StatusAtJSON{ID: id, At: at.UTC(), ReasonCode: ps.ReasonCode, Reason: ps.Reason}
	if ps.Known {
		st := ps.Status
		out.Status, out.StatusSince = &st, utc(ps.Since)
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}

// handleAvailability serves GET /v1/devices/{id}/availability?from=&to=
// (RFC 3339; to defaults to now and is capped at now, from defaults to
// to − 24h).
func (a *API) handleAvailability(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	from, err := parseTime(q, "from")
	if err != nil {
		badRequest(w, err)
		return
	}
	to, err := parseTime(q, "to")
	if err != nil {
		badRequest(w, err)
		return
	}
	now := a.cfg.Clock.Now()
	if to.IsZero() || to.After(now) {
		to = now
	}
	if from.IsZero() {
		from = to.Add(-DefaultAvailabilityWindow)
	}
	if !from.Before(to) {
		badRequest(w, errors.New("from must be before to (and before now)"))
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	av, err := a.cfg.Store.Availability(ctx, id, from, to)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	window := av.To.Sub(av.From).Seconds()
	secs := StatusDurationsJSON{
		Registered:         av.ByStatus[events.StatusRegistered].Seconds(),
		Connected:          av.ByStatus[events.StatusConnected].Seconds(),
		TemporarilyOffline: av.ByStatus[events.StatusTemporarilyOffline].Seconds(),
		Disconnected:       av.ByStatus[events.StatusDisconnected].Seconds(),
		Unknown:            av.Unknown.Seconds(),
	}
	pct := func(s float64) float64 { return s / window * 100 }
	out := AvailabilityJSON{ID: id, From: av.From.UTC(), To: av.To.UTC(), WindowS: window, Transitions: av.Transitions,
		Seconds: secs, Percent: StatusDurationsJSON{
			Registered: pct(secs.Registered), Connected: pct(secs.Connected),
			TemporarilyOffline: pct(secs.TemporarilyOffline), Disconnected: pct(secs.Disconnected), Unknown: pct(secs.Unknown),
		}}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}
