package readapi

import (
	"cmp"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// DefaultAvailabilityWindow is the window of GET /v1/devices/{id}/availability
// when from is not given: the 24 hours before to.
const DefaultAvailabilityWindow = 24 * time.Hour

// MaxAvailabilityWindow is the longest window GET
// /v1/devices/{id}/availability accepts (400 beyond): 100 years, well inside
// what a time.Duration holds (292 years), so no duration saturates.
const MaxAvailabilityWindow = 100 * 365 * 24 * time.Hour

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
// the window before the device was registered): whole seconds (see
// [AvailabilityJSON] for how they are rounded).
type StatusDurationsJSON struct {
	Registered         int64 `json:"registered"`
	Connected          int64 `json:"connected"`
	TemporarilyOffline int64 `json:"temporarily_offline"`
	Disconnected       int64 `json:"disconnected"`
	Unknown            int64 `json:"unknown"`
}

// StatusPercentJSON has the share of the window, in percent, of each status
// and "unknown".
type StatusPercentJSON struct {
	Registered         float64 `json:"registered"`
	Connected          float64 `json:"connected"`
	TemporarilyOffline float64 `json:"temporarily_offline"`
	Disconnected       float64 `json:"disconnected"`
	Unknown            float64 `json:"unknown"`
}

// AvailabilityJSON is the answer of GET /v1/devices/{id}/availability:
// the time the device spent in each status over [from, to), computed from
// the transition history. to is the asked to, or now when that is later (the
// future has no status yet).
//
// Durations are integer seconds, as every _s key of the API: window_s is
// to − from rounded to the nearest second, and the seconds are apportioned
// so that they add up to window_s exactly (largest remainder: each status
// gets its exact duration truncated to whole seconds, then the seconds still
// missing go one each to the statuses with the largest sub-second remainders,
// ties in key order). So each value is its exact duration rounded down or up
// (off by less than one second), a status never held in the window is 0, and
// a window shorter than half a second has window_s 0.
//
// percent is the exact share of the window (from the microsecond durations,
// not from the rounded seconds; not rounded): the five values add up to 100
// (up to float rounding) and may differ from seconds / window_s × 100 by less
// than one second's share.
type AvailabilityJSON struct {
	ID          string              `json:"id"`
	From        time.Time           `json:"from"`
	To          time.Time           `json:"to"`
	WindowS     int64               `json:"window_s"`
	Transitions int                 `json:"transitions"`
	Seconds     StatusDurationsJSON `json:"seconds"`
	Percent     StatusPercentJSON   `json:"percent"`
}

// wholeSeconds apportions durations to whole seconds by the largest
// remainder method: total is their sum rounded to the nearest second; each
// duration gets its truncated seconds, and the seconds still missing to reach
// total go one each to the largest sub-second remainders (ties: the earlier
// in ds). The result adds up to total; each value is its duration truncated
// or rounded up; a zero duration gets 0. Durations must not be negative.
func wholeSeconds(ds []time.Duration) (total int64, secs []int64) {
	var sum time.Duration
	secs = make([]int64, len(ds))
	order := make([]int, len(ds))
	var floors int64
	for i, d := range ds {
		sum += d
		secs[i] = int64(d / time.Second)
		floors += secs[i]
		order[i] = i
	}
	total = int64(sum.Round(time.Second) / time.Second)
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(ds[b]%time.Second, ds[a]%time.Second) })
	// 0 <= total − floors <= the number of non-zero remainders (the
	// remainders, each under 1 s, add up to sum − floors, and
	// total <= sum + ½ s), so only a duration with a remainder gets a second.
	for k := 0; k < int(total-floors) && k < len(order); k++ {
		secs[order[k]]++
	}
	return total, secs
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
// to − 24h; the window is at most [MaxAvailabilityWindow]).
func (a *API) handleAvailability(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	from, to, err := parseFromTo(q)
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
	if to.Sub(from) > MaxAvailabilityWindow {
		badRequest(w, errors.New("the window from..to must be at most 100 years"))
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	av, err := a.cfg.Store.Availability(ctx, id, from, to)
	if err != nil {
		a.writeStoreError(w, r, err)
		return
	}
	ds := []time.Duration{
		av.ByStatus[events.StatusRegistered], av.ByStatus[events.StatusConnected],
		av.ByStatus[events.StatusTemporarilyOffline], av.ByStatus[events.StatusDisconnected], av.Unknown,
	}
	windowS, secs := wholeSeconds(ds)
	var window time.Duration
	for _, d := range ds {
		window += d // = to − from
	}
	pct := func(d time.Duration) float64 { return float64(d) / float64(window) * 100 }
	out := AvailabilityJSON{ID: id, From: av.From.UTC(), To: av.To.UTC(), WindowS: windowS, Transitions: av.Transitions,
		Seconds: StatusDurationsJSON{
			Registered: secs[0], Connected: secs[1], TemporarilyOffline: secs[2], Disconnected: secs[3], Unknown: secs[4],
		},
		Percent: StatusPercentJSON{
			Registered: pct(ds[0]), Connected: pct(ds[1]), TemporarilyOffline: pct(ds[2]), Disconnected: pct(ds[3]), Unknown: pct(ds[4]),
		}}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, out)
}
