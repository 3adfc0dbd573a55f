package bridge

// Heartbeat admission: POST /v1/devices/{id}/heartbeat from the request to
// its answer. The checks, in order: device id, body (readBody), JSON
// (decodeHeartbeat), probe URL (probe.go), device token (one registry
// look-up), rate limit (limiter), then publish and, once JetStream has
// acknowledged it, the answer (settleHeartbeat). Gateway batches
// (gateway.go) admit and settle each of their items with the same
// admitHeartbeat and settleHeartbeat.

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// heartbeatResponse is the 200 answer to a heartbeat.
type heartbeatResponse struct {
	// Status is the status the partition worker last decided for the device
	// ("registered" when it has none yet). The heartbeat being answered is
	// not reflected yet: a device coming back reads its old status once.
	Status               string `json:"status"`
	RemoteControlEnabled bool   `json:"remote_control_enabled"`
	ShouldReconnect      bool   `json:"should_reconnect"`
	// HeartbeatIntervalS is the period, in whole seconds, at which the
	// device should send its next heartbeats: its group's interval
	// (Config.GroupHeartbeatIntervals), else Config.HeartbeatInterval.
	HeartbeatIntervalS int `json:"heartbeat_interval_s"`
}

// handleHeartbeat serves POST /v1/devices/{id}/heartbeat.
func (b *Bridge) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	id, body, ok := b.deviceRequest(w, r)
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
	ent, err := b.hot.Authenticate(r.Context(), id, httpx.BearerToken(r))
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
	// unknownFields: the heartbeat's top-level fields this version does
	// not know, counted once it is accepted.
	unknownFields int
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
		status: status, offlineSeq: offlineSeq, unknownFields: hb.UnknownFields}, 0, true
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
// the answer is built (the status read at admission, should_reconnect and
// the reported probe URL settled by settleRecord, reconnect.go).
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
	b.m.lastAccepted.Set(float64(a.now.UnixNano()) / 1e9)
	if a.unknownFields > 0 {
		b.m.unknownFields.Add(float64(a.unknownFields))
	}

	resp := heartbeatResponse{RemoteControlEnabled: a.ent.RemoteControlEnabled,
		HeartbeatIntervalS: int(b.heartbeatInterval(a.ent.Group) / time.Second)}
	resp.Status = string(a.status)
	resp.ShouldReconnect = b.settleRecord(ctx, a)
	return hbOutcome{status: http.StatusOK, resp: resp}
}

// heartbeatInterval is the interval told to the devices of group: its
// GroupHeartbeatIntervals entry, else HeartbeatInterval.
func (b *Bridge) heartbeatInterval(group string) time.Duration {
	if d, ok := b.cfg.GroupHeartbeatIntervals[group]; ok {
		return d
	}
	return b.cfg.HeartbeatInterval
}

// authFailure answers a failed device authentication
// (registry.Authenticate): an unknown device and a wrong or missing token
// alike 401, so that unauthenticated callers cannot probe which ids exist;
// the valid token of another device 403; a decommissioned device with its
// own token 404; a registry that cannot tell 503.
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
