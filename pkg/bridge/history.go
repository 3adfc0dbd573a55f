package bridge

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// PatternEvents is the admin read of a device's input events (the audit
// trail), served from the log by registry.History. It is the one GET route
// the bridge registers under /v1/devices: pkg/readapi serves everything read
// from the projections; this one reads the input stream itself.
const PatternEvents = "GET /v1/devices/{id}/events"

// eventTypes are the values accepted in ?types=.
var eventTypes = []events.Type{events.TypeHeartbeat, events.TypePingResult, events.TypeDeviceRegistered,
	events.TypeDeviceDecommissioned, events.TypeReconnectRequested, events.TypeReconnectDelivered,
	events.TypeRemoteControlChanged}

// historyItem is one event of GET /v1/devices/{id}/events: the stored event
// (events.Input, as on the wire) with its input-stream sequence and, for
// reconnect_delivered, what was delivered.
type historyItem struct {
	Seq uint64 `json:"seq"`
	*events.Input
	Delivered *deliveredInfo `json:"delivered,omitempty"`
}

type deliveredInfo struct {
	// Reason is "operator" or "comeback".
	Reason string `json:"reason"`
	// RequestID is the reconnect_requested event id (operator).
	RequestID string `json:"request_id,omitempty"`
	// TransitionSeq is the transitions-stream sequence of the offline
	// transition the device came back from (comeback).
	TransitionSeq uint64 `json:"transition_seq,omitempty"`
}

// handleEvents serves GET /v1/devices/{id}/events?types=a,b&after=seq&limit=n
// (admin) → 200 {"events": [...], "next_after": seq | null}: the device's
// events from the input stream, oldest first, at most limit (default 100,
// at most 1000) per page; next_after is the cursor of the next page (pass it
// as after), null when the page reached the end of the log. types filters by
// event type (comma-separated; default all). 400 for an unknown type or a
// bad number; 503 when the bus is unavailable. A device that was never
// registered has an empty history (no 404: the log is the authority, and a
// decommissioned device's trail stays readable).
func (b *Bridge) handleEvents(w http.ResponseWriter, r *http.Request) {
	id, ok := validID(w, r)
	if !ok {
		return
	}
	q := registry.HistoryQuery{}
	query := r.URL.Query()
	if v := query.Get("types"); v != "" {
		for _, name := range strings.Split(v, ",") {
			typ := events.Type(strings.TrimSpace(name))
			known := false
			for _, k := range eventTypes {
				known = known || k == typ
			}
			if !known {
				httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "unknown event type "+strconv.Quote(string(typ)))
				return
			}
			q.Types = append(q.Types, typ)
		}
	}
	var err error
	if v := query.Get("after"); v != "" {
		if q.After, err = strconv.ParseUint(v, 10, 64); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "after must be a stream sequence (unsigned integer)")
			return
		}
	}
	if v := query.Get("limit"); v != "" {
		if q.Limit, err = strconv.Atoi(v); err != nil || q.Limit < 1 || q.Limit > registry.MaxHistoryLimit {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "limit must be 1 to "+strconv.Itoa(registry.MaxHistoryLimit))
			return
		}
	}
	page, err := b.reg.History(r.Context(), id, q)
	if err != nil {
		var idErr *registry.InvalidIDError
		if errors.As(err, &idErr) {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, idErr.Err.Error())
			return
		}
		b.registryFailure(w, r, id, err)
		return
	}
	items := make([]historyItem, 0, len(page.Events))
	for _, he := range page.Events {
		it := historyItem{Seq: he.Seq, Input: he.Event}
		if he.Event.Type == events.TypeReconnectDelivered {
			if reason, req, seq, ok := registry.ParseDeliveryID(he.Event.ID); ok {
				it.Delivered = &deliveredInfo{Reason: reason, RequestID: req, TransitionSeq: seq}
			}
		}
		items = append(items, it)
	}
	var next *uint64
	if page.Next != 0 {
		next = &page.Next
	}
	httpx.WriteJSON(w, http.StatusOK, struct {
		Events    []historyItem `json:"events"`
		NextAfter *uint64       `json:"next_after"`
	}{items, next})
}
