package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// PatternPings is the batch form of the ping-result endpoint.
const PatternPings = "POST /v1/pings"

// MaxPingBatch is the most results one POST /v1/pings may carry.
const MaxPingBatch = 1000

// MaxPingBatchBytes bounds the body of POST /v1/pings, in bytes.
const MaxPingBatchBytes = 1 << 20

// pingItemResult is the answer for one result of a batch, in request order.
type pingItemResult struct {
	Device string `json:"device"`
	// Status is the HTTP status the single endpoint would have answered:
	// 202 accepted, 400 invalid, 404 unknown or decommissioned device, 503
	// not recorded (retry this item).
	Status int                `json:"status"`
	Error  *httpx.ErrorDetail `json:"error,omitempty"`
}

// pingBatchResponse is the 200 answer of POST /v1/pings.
type pingBatchResponse struct {
	Results  []pingItemResult `json:"results"`
	Accepted int              `json:"accepted"`
	Rejected int              `json:"rejected"`
}

// handlePings serves POST /v1/pings (ping service token):
//
//	{"results": [{"device": "<id>", "ok": bool, "rtt_ms": n, "checked_at": "<RFC 3339>", "error": "timeout"}, …]}
//
// with at most [MaxPingBatch] results, each validated exactly like the body
// of POST /v1/devices/{id}/ping (plus its "device"). The answer is 200 with
// one entry per result, in order, carrying the status the single endpoint
// would have given it (see pingItemResult): valid results are recorded even
// when others in the batch are refused. The whole request is refused only
// for a wrong token (401), a malformed envelope, text the pipeline cannot
// store anywhere in the body (invalid UTF-8, NUL, an unpaired surrogate) or
// more than MaxPingBatch results (400), a wrong content type (415) or a body
// over 1 MiB (413).
func (b *Bridge) handlePings(w http.ResponseWriter, r *http.Request) {
	if tok := httpx.BearerToken(r); tok == "" || !httpx.TokenEqual(tok, b.cfg.PingToken) {
		writeUnauthorized(w)
		return
	}
	body, ok := readBody(w, r, MaxPingBatchBytes, bodyRequired)
	if !ok {
		return
	}
	f, err := parseObject(body, "results")
	if err != nil {
		writeRequestError(w, err)
		return
	}
	var items []json.RawMessage
	if isNull(f["results"]) || json.Unmarshal(f["results"], &items) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, "results must be an array of ping results")
		return
	}
	if len(items) > MaxPingBatch {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, "at most 1000 results per request")
		return
	}

	out := pingBatchResponse{Results: make([]pingItemResult, len(items))}
	refuse := func(i, status int, code, msg string) {
		out.Results[i].Status = status
		out.Results[i].Error = &httpx.ErrorDetail{Code: code, Message: msg}
	}
	now := b.cfg.Clock.Now().UTC()
	type pending struct {
		i  int
		in *events.Input
	}
	var toPublish []pending
	for i, raw := range items {
		in, status, code, msg := b.decodePingItem(r.Context(), raw, now)
		if in != nil {
			out.Results[i].Device = in.Device
		} else if id, ok := itemDevice(raw); ok {
			out.Results[i].Device = id
		}
		if status != 0 {
			refuse(i, status, code, msg)
			continue
		}
		toPublish = append(toPublish, pending{i, in})
	}

	// Publish the valid results together, then wait for every PubAck.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), b.cfg.PublishTimeout)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, len(toPublish))
	connected := b.cfg.Bus.NC.IsConnected()
	pub := b.publisher(b.cfg.Bus.JS)
	for k, p := range toPublish {
		if !connected {
			break
		}
		futures[k], _ = pub.PublishAsync(p.in, "")
	}
	for k, p := range toPublish {
		err := errors.New("not published (NATS disconnected or publish refused)")
		if f := futures[k]; f != nil {
			select {
			case <-f.Ok():
				err = nil
			case err = <-f.Err():
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		if err != nil {
			b.log.Debug("bridge: ping result of a batch not acknowledged", "device", p.in.Device, "err", err)
			b.m.publishErrors.WithLabelValues(string(events.TypePingResult)).Inc()
			refuse(p.i, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the event bus is unavailable; retry this result later")
			continue
		}
		out.Results[p.i].Status = http.StatusAccepted
	}
	for _, res := range out.Results {
		if res.Status == http.StatusAccepted {
			out.Accepted++
		} else {
			out.Rejected++
		}
	}
	if out.Rejected > 0 && out.Accepted == 0 && len(toPublish) > 0 {
		b.log.Warn("bridge: ping result batch not acknowledged by JetStream", "results", len(toPublish))
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// itemDevice returns the "device" string of a batch item, if it has one.
func itemDevice(raw json.RawMessage) (string, bool) {
	var v struct {
		Device *string `json:"device"`
	}
	if json.Unmarshal(raw, &v) != nil || v.Device == nil {
		return "", false
	}
	return *v.Device, true
}

// decodePingItem validates one batch item as the single endpoint validates
// its path id and body, and returns the event to publish, or the status,
// error code and message of its refusal.
func (b *Bridge) decodePingItem(ctx context.Context, raw json.RawMessage, now time.Time) (*events.Input, int, string, string) {
	f, err := parseObject(raw, "device", "ok", "rtt_ms", "checked_at", "error")
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			return nil, http.StatusBadRequest, re.code, re.msg
		}
		return nil, http.StatusBadRequest, httpx.CodeBadRequest, err.Error()
	}
	var id string
	if isNull(f["device"]) || json.Unmarshal(f["device"], &id) != nil {
		return nil, http.StatusBadRequest, httpx.CodeInvalidDeviceID, "device (string) is required"
	}
	if err := events.ValidateDeviceID(id); err != nil {
		return nil, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error()
	}
	delete(f, "device")
	rest, _ := json.Marshal(f)
	p, err := decodePing(rest)
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			return &events.Input{Device: id}, http.StatusBadRequest, re.code, re.msg
		}
		return &events.Input{Device: id}, http.StatusBadRequest, httpx.CodeBadRequest, err.Error()
	}
	ent, err := b.hot.Lookup(ctx, id)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return &events.Input{Device: id}, http.StatusNotFound, httpx.CodeNotFound, "unknown device"
	case err != nil:
		return &events.Input{Device: id}, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the device registry is unavailable; retry this result later"
	case ent.Decommissioned:
		return &events.Input{Device: id}, http.StatusNotFound, httpx.CodeNotFound, "device is decommissioned"
	}
	checked := now
	if p.CheckedAt != nil && p.CheckedAt.Before(now) {
		checked = *p.CheckedAt // clamped: never later than the receive time
	}
	return &events.Input{Type: events.TypePingResult, ID: "pg-" + nuid.Next(), Device: id, At: now,
		Ping: &events.PingResult{OK: p.OK, RTTMs: p.RTTMs, CheckedAt: checked, Error: p.Error}}, 0, "", ""
}
