package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// heartbeatResponse is the 200 answer to a heartbeat (design.md).
type heartbeatResponse struct {
	// Status is the status the partition worker last decided for the device
	// ("registered" when it has none yet). The heartbeat being answered is
	// not reflected yet: a device coming back reads its old status once.
	Status               string `json:"status"`
	RemoteControlEnabled bool   `json:"remote_control_enabled"`
	ShouldReconnect      bool   `json:"should_reconnect"`
	HeartbeatIntervalS   int    `json:"heartbeat_interval_s"`
}

// CodeRequestTimeout is the error code of a 408: the request body did not
// arrive within the server's read timeout.
const CodeRequestTimeout = "request_timeout"

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

// validID reads and checks the path's device id; on failure it answers 400.
func validID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := httpx.DeviceID(r)
	if err := events.ValidateDeviceID(id); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error())
		return "", false
	}
	return id, true
}

// readBody applies the content-type and size rules and returns the body.
//
//   - A Content-Type, when present, must be application/json (parameters
//     allowed; a charset must be utf-8), else 415.
//   - Without a Content-Type the body must be empty (it then means "no
//     fields": a heartbeat without metrics); a non-empty body is 415.
//   - More than MaxBodyBytes, declared by Content-Length or found while
//     reading a chunked body, is 413.
//
// A body refused before it is read is not read at all (refuseBody): the
// connection is closed after the answer instead of being drained.
func (b *Bridge) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" || (params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
			refuseBody(w)
			httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "Content-Type must be application/json")
			return nil, false
		}
	} else if r.ContentLength != 0 {
		var one [1]byte
		if r.ContentLength > 0 || func() bool { n, _ := io.ReadFull(r.Body, one[:]); return n > 0 }() {
			refuseBody(w)
			httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "a request body needs Content-Type: application/json")
			return nil, false
		}
		return nil, true
	}
	if r.ContentLength > b.cfg.MaxBodyBytes {
		refuseBody(w)
		httpx.WriteError(w, http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, "request body is larger than the limit")
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, b.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpx.WriteError(w, http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, "request body is larger than the limit")
			return nil, false
		}
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			// The server's ReadTimeout cut a slow client off.
			w.Header().Set("Connection", "close")
			httpx.WriteError(w, http.StatusRequestTimeout, CodeRequestTimeout, "request body not received in time")
			return nil, false
		}
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "reading the request body failed")
		return nil, false
	}
	return body, true
}

// refuseBody prepares the answer to a request whose body will not be read:
// Connection: close, and a read deadline in the past, so that net/http
// neither drains the unread body (it would read up to 256 KiB from a client
// that may send it slowly or never, until ReadTimeout) nor waits for it.
func refuseBody(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// publish sends an input event to the device's subject and waits for the
// PubAck (at most PublishTimeout). It fails at once when NATS is
// disconnected. The request's cancellation does not cut the publish short:
// once sent, its outcome is awaited.
func (b *Bridge) publish(ctx context.Context, in *events.Input) error {
	_, err := b.publishWithID(ctx, in, in.ID)
	return err
}

// publishWithID is publish with an explicit Nats-Msg-Id; it returns the
// PubAck (Duplicate set when JetStream already holds a message with that id
// in its duplicate window: nothing was stored).
func (b *Bridge) publishWithID(ctx context.Context, in *events.Input, msgID string) (*jetstream.PubAck, error) {
	if !b.cfg.Bus.NC.IsConnected() {
		b.m.publishErrors.WithLabelValues(string(in.Type)).Inc()
		return nil, errors.New("bridge: NATS is not connected")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.PublishTimeout)
	defer cancel()
	start := b.cfg.Clock.Now()
	ack, err := b.publisher(b.pubJS()).Publish(ctx, in, msgID)
	if err != nil {
		b.m.publishErrors.WithLabelValues(string(in.Type)).Inc()
		return nil, err
	}
	b.m.publishDuration.WithLabelValues(string(in.Type)).Observe(b.cfg.Clock.Now().Sub(start).Seconds())
	return ack, nil
}

// handleHeartbeat serves POST /v1/devices/{id}/heartbeat.
func (b *Bridge) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	id, ok := validID(w, r)
	if !ok {
		return
	}
	body, ok := b.readBody(w, r)
	if !ok {
		return
	}
	hb, err := decodeHeartbeat(body, b.cfg.MaxMetrics, b.cfg.MaxMetricBytes)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	if !b.checkHeartbeatProbeURL(w, &hb) {
		return
	}
	ent, err := b.reg.Authenticate(r.Context(), id, httpx.BearerToken(r))
	if err != nil {
		b.authFailure(w, r, id, err)
		return
	}
	now := b.cfg.Clock.Now().UTC()
	a, wait, ok := b.admitHeartbeat(id, &hb, ent, now, "")
	if !ok {
		httpx.WriteRetryAfter(w, http.StatusTooManyRequests, httpx.CodeRateLimited, "too many heartbeats for this device", wait)
		return
	}
	ack, err := b.publishWithID(r.Context(), a.in, a.msgID)
	out := b.settleHeartbeat(r.Context(), &a, ack, err, true)
	switch out.status {
	case http.StatusServiceUnavailable:
		b.writeUnavailable(w, "the event bus is unavailable; retry later")
	case http.StatusTooManyRequests:
		httpx.WriteRetryAfter(w, http.StatusTooManyRequests, httpx.CodeRateLimited, "too many heartbeats for this device", out.retryAfter)
	default:
		httpx.WriteJSON(w, http.StatusOK, out.resp)
	}
}

// admitted is a heartbeat that passed validation, authentication and the
// rate limit and is ready to publish. The single endpoint and gateway
// batches (gateway.go) share admitHeartbeat and settleHeartbeat, so that a
// heartbeat is limited, published and answered alike whichever way it came.
type admitted struct {
	id       string
	ent      registry.Entry
	probeURL *string
	now      time.Time
	tk       ticket
	in       *events.Input
	// msgID is the Nats-Msg-Id: the device's rate window (shared guard
	// across bridge instances, see limiter); the event keeps its own
	// random id. windowEnd is the end of that window.
	msgID     string
	windowEnd time.Time
	// status and offlineSeq are what the heartbeat is answered with (the
	// status the worker last decided, and the comeback candidate), read
	// before it is published: once published, the worker may decide its
	// → connected and the transitions feed apply it before the PubAck is
	// handled; read then, the answer would say connected and the comeback
	// would be lost.
	status     events.Status
	offlineSeq uint64
}

// admitHeartbeat applies the device's rate limit at now (the receive time),
// builds the event (via: the gateway id of a batch, "" for the single
// endpoint) and reads the status it is answered with; it must run before the
// event is published. Refused: ok false and how long until one would be
// accepted.
func (b *Bridge) admitHeartbeat(id string, hb *heartbeatBody, ent registry.Entry, now time.Time, via string) (admitted, time.Duration, bool) {
	tk, wait, ok := b.lim.allow(id, now)
	if !ok {
		b.m.rateLimited.Inc()
		return admitted{}, wait, false
	}
	in := &events.Input{Type: events.TypeHeartbeat, ID: "hb-" + nuid.Next(), Device: id, At: now,
		Heartbeat: &events.Heartbeat{DeviceTime: hb.DeviceTime, Metrics: hb.Metrics, Via: via}}
	msgID, windowEnd, windowed := b.lim.windowID(id, now)
	if !windowed {
		msgID = in.ID
	}
	status, offlineSeq := b.status.forHeartbeat(id)
	return admitted{id: id, ent: ent, probeURL: hb.ProbeURL, now: now, tk: tk, in: in, msgID: msgID, windowEnd: windowEnd,
		status: status, offlineSeq: offlineSeq}, 0, true
}

// hbOutcome is the answer to one heartbeat: 200 with resp, 429 with
// retryAfter, or 503.
type hbOutcome struct {
	status     int
	resp       heartbeatResponse
	retryAfter time.Duration
}

// settleHeartbeat completes an admitted heartbeat once its publish
// returned (ack, or err when JetStream did not acknowledge it): a failed
// publish gives the rate-limit slot back (503: nothing was stored); a
// duplicate of the device's rate window means another bridge instance (or
// an earlier attempt whose answer was lost) already stored a heartbeat of
// the device in this window (429); otherwise the heartbeat is accepted and
// the answer is built (the status read at admission, should_reconnect).
func (b *Bridge) settleHeartbeat(ctx context.Context, a *admitted, ack *jetstream.PubAck, err error, logFailure bool) hbOutcome {
	if err != nil {
		b.lim.cancel(a.tk)
		if logFailure {
			b.log.Warn("bridge: heartbeat not acknowledged by JetStream", "device", a.id, "err", err)
		}
		return hbOutcome{status: http.StatusServiceUnavailable}
	}
	if ack.Duplicate {
		b.lim.rebase(a.tk, a.windowEnd.Add(-b.cfg.RateMinInterval).UnixNano())
		b.m.rateLimited.Inc()
		b.m.rateWindowRefused.Inc()
		return hbOutcome{status: http.StatusTooManyRequests, retryAfter: a.windowEnd.Sub(a.now)}
	}
	b.lastAccepted.Store(a.now.UnixNano())
	b.storeProbeURL(ctx, a.id, a.probeURL)
	b.m.lastAccepted.Set(float64(a.now.UnixNano()) / 1e9)

	resp := heartbeatResponse{RemoteControlEnabled: a.ent.RemoteControlEnabled,
		HeartbeatIntervalS: int(b.cfg.HeartbeatInterval / time.Second)}
	resp.Status = string(a.status)
	resp.ShouldReconnect = b.deliver(ctx, a.id, a.ent, a.offlineSeq)
	return hbOutcome{status: http.StatusOK, resp: resp}
}

// authFailure answers a failed device authentication (see
// registry.Authenticate for the cases).
func (b *Bridge) authFailure(w http.ResponseWriter, r *http.Request, id string, err error) {
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrBadToken):
		// Unknown device and wrong token answer alike: no probing for ids.
		writeUnauthorized(w)
	case errors.Is(err, registry.ErrForeignToken):
		httpx.WriteError(w, http.StatusForbidden, httpx.CodeForbidden, "this token belongs to another device")
	case errors.Is(err, registry.ErrDecommissioned):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "device is decommissioned")
	default:
		b.registryFailure(w, r, id, err)
	}
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
	id, ok := validID(w, r)
	if !ok {
		return
	}
	body, ok := b.readBody(w, r)
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
	ent, err := b.reg.Lookup(r.Context(), id)
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

// writeAdminError maps registry errors of admin calls to statuses.
func (b *Bridge) writeAdminError(w http.ResponseWriter, r *http.Request, id string, err error) {
	var idErr *registry.InvalidIDError
	switch {
	case errors.As(err, &idErr):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, idErr.Err.Error())
	case errors.Is(err, registry.ErrInvalidGroup), errors.Is(err, registry.ErrInvalidGateway):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, err.Error())
	case errors.Is(err, registry.ErrExists):
		httpx.WriteError(w, http.StatusConflict, httpx.CodeConflict, "device already registered")
	case errors.Is(err, registry.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "unknown device")
	case errors.Is(err, registry.ErrDecommissioned):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "device is decommissioned")
	default:
		b.registryFailure(w, r, id, err)
	}
}

// handleRegister serves POST /v1/devices {"id", "group", "gateway"?} →
// 201 {"id", "token"}; the token is shown only here.
func (b *Bridge) handleRegister(w http.ResponseWriter, r *http.Request) {
	body, ok := b.readBody(w, r)
	if !ok {
		return
	}
	f, err := parseObject(body, "id", "group", "gateway", "probe_url")
	if err != nil {
		writeRequestError(w, err)
		return
	}
	var id, group, gateway string
	if isNull(f["id"]) || json.Unmarshal(f["id"], &id) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, "id (string) is required")
		return
	}
	for name, dst := range map[string]*string{"group": &group, "gateway": &gateway} {
		if !isNull(f[name]) && json.Unmarshal(f[name], dst) != nil {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, name+" must be a string")
			return
		}
	}
	probeURL, ok := b.probeURLField(w, f["probe_url"])
	if !ok {
		return
	}
	token, err := b.reg.Register(r.Context(), id, group, gateway, registry.WithProbeURL(probeURL))
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
	id, ok := validID(w, r)
	if !ok {
		return
	}
	body, ok := b.readBody(w, r)
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
