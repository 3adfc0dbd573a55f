package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/nats-io/nuid"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// errUnavailableRetry is the base Retry-After of a 503; up to as much again
// is added at random so that a fleet refused together does not come back
// together.
const errUnavailableRetry = 5 * time.Second

func (b *Bridge) writeUnavailable(w http.ResponseWriter, msg string) {
	after := errUnavailableRetry + rand.N(errUnavailableRetry)
	httpx.WriteRetryAfter(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, msg, after)
}

func writeUnauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="devstatus"`)
	httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "missing or wrong bearer token")
}

func writeRequestError(w http.ResponseWriter, err error) {
	var re *requestError
	if errors.As(err, &re) {
		httpx.WriteError(w, http.StatusBadRequest, re.code, re.msg)
		return
	}
	httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, err.Error())
}

// deviceRequest reads the device id of the path (validID) and then the
// body (readBody, at most MaxBodyBytes, empty allowed) of a request to one
// device's endpoint; when either is refused the error answer is written and
// ok is false.
func (b *Bridge) deviceRequest(w http.ResponseWriter, r *http.Request) (id string, body []byte, ok bool) {
	if id, ok = validID(w, r); !ok {
		return "", nil, false
	}
	body, ok = readBody(w, r, b.cfg.MaxBodyBytes, emptyAllowed)
	return id, body, ok
}

// validID reads and checks the path's device id; on failure it answers 400.
func validID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := httpx.DeviceID(r)
	if err := events.ValidateDeviceID(id); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error())
		return "", false
	}
	return id, true
}

// registryFailure answers a registry error that is not about the request.
func (b *Bridge) registryFailure(w http.ResponseWriter, r *http.Request, id string, err error) {
	if errors.Is(err, registry.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		b.writeUnavailable(w, "the device registry is unavailable; retry later")
		return
	}
	b.log.Error("bridge: registry", "device", id, "path", r.URL.Path, "err", err)
	httpx.WriteError(w, http.StatusInternalServerError, httpx.CodeInternal, "internal error")
}

// handlePing serves POST /v1/devices/{id}/ping (ping service token). The
// answer is 202 {"status": "accepted"} once the event is acknowledged.
func (b *Bridge) handlePing(w http.ResponseWriter, r *http.Request) {
	id, body, ok := b.deviceRequest(w, r)
	if !ok {
		return
	}
	p, err := decodePing(body)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	if tok := httpx.BearerToken(r); tok == "" || !httpx.TokenEqual(tok, b.cfg.PingToken) {
		writeUnauthorized(w)
		return
	}
	ent, err := b.hot.Lookup(r.Context(), id)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "unknown device")
		return
	case err != nil:
		b.registryFailure(w, r, id, err)
		return
	case ent.Decommissioned:
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "device is decommissioned")
		return
	}
	now := b.cfg.Clock.Now().UTC()
	checked := now
	if p.CheckedAt != nil && p.CheckedAt.Before(now) {
		checked = *p.CheckedAt // clamped: never later than the receive time
	}
	in := &events.Input{Type: events.TypePingResult, ID: "pg-" + nuid.Next(), Device: id, At: now,
		Ping: &events.PingResult{OK: p.OK, RTTMs: p.RTTMs, CheckedAt: checked, Error: p.Error}}
	if err := b.publish(r.Context(), in); err != nil {
		b.log.Warn("bridge: ping result not acknowledged by JetStream", "device", id, "err", err)
		b.writeUnavailable(w, "the event bus is unavailable; retry later")
		return
	}
	httpx.WriteJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}

// writeAdminError answers a registry error of an admin call (see
// adminErrorAnswer for the statuses).
func (b *Bridge) writeAdminError(w http.ResponseWriter, r *http.Request, id string, err error) {
	status, code, msg, ok := adminErrorAnswer(err)
	if !ok {
		b.registryFailure(w, r, id, err)
		return
	}
	httpx.WriteError(w, status, code, msg)
}

// handleRegister serves POST /v1/devices {"id", "group", "gateway"?} →
// 201 {"id", "token"}; the token is shown only here.
func (b *Bridge) handleRegister(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, b.cfg.MaxBodyBytes, emptyAllowed)
	if !ok {
		return
	}
	f, err := parseObject(body, "id", "group", "gateway", "probe_url")
	if err != nil {
		writeRequestError(w, err)
		return
	}
	reg, err := b.decodeRegistration(f)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	id := reg.id
	token, err := b.register(r.Context(), reg)
	if err != nil {
		b.writeAdminError(w, r, id, err)
		return
	}
	w.Header().Set("Location", httpx.DevicePath(id)) // "~?id=" for "." and ".."
	httpx.WriteJSON(w, http.StatusCreated, map[string]string{"id": id, "token": token})
}

// handlePatch serves PATCH /v1/devices/{id} {"remote_control_enabled": bool}
// → 200 {"id", "remote_control_enabled"}.
func (b *Bridge) handlePatch(w http.ResponseWriter, r *http.Request) {
	id, body, ok := b.deviceRequest(w, r)
	if !ok {
		return
	}
	f, err := parseObject(body, "remote_control_enabled", "probe_url")
	if len(body) == 0 {
		f, err = map[string]json.RawMessage{}, nil
	}
	if err != nil {
		writeRequestError(w, err)
		return
	}
	if _, has := f["probe_url"]; has {
		b.handlePatchProbeURL(w, r, id, f)
		return
	}
	var enabled bool
	if isNull(f["remote_control_enabled"]) || json.Unmarshal(f["remote_control_enabled"], &enabled) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, "remote_control_enabled (boolean) is required")
		return
	}
	d, err := b.reg.SetRemoteControl(r.Context(), id, enabled)
	if err != nil {
		b.writeAdminError(w, r, id, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct {
		ID                   string `json:"id"`
		RemoteControlEnabled bool   `json:"remote_control_enabled"`
	}{d.ID, d.RemoteControlEnabled})
}

// handleReconnect serves POST /v1/devices/{id}/reconnect → 202
// {"id", "request_id"}: the device's next heartbeat gets should_reconnect.
func (b *Bridge) handleReconnect(w http.ResponseWriter, r *http.Request) {
	id, ok := validID(w, r)
	if !ok {
		return
	}
	reqID, err := b.reg.RequestReconnect(r.Context(), id)
	if err != nil {
		b.writeAdminError(w, r, id, err)
		return
	}
	httpx.WriteJSON(w, http.StatusAccepted, map[string]string{"id": id, "request_id": reqID})
}

// handleDecommission serves DELETE /v1/devices/{id} → 204; 404 for an
// unknown device. Repeating it on a decommissioned device is 204 again
// (idempotent; the event is re-sent with its original id).
func (b *Bridge) handleDecommission(w http.ResponseWriter, r *http.Request) {
	id, ok := validID(w, r)
	if !ok {
		return
	}
	if err := b.reg.Decommission(r.Context(), id); err != nil {
		b.writeAdminError(w, r, id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
