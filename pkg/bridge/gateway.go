package bridge

// Gateway batch ingest: the way one node reaches 1 000 000 devices. A
// gateway (POST /v1/gateways, admin) reports the heartbeats of the devices
// registered behind it (POST /v1/devices {"gateway": "<id>"}) in batches of
// up to MaxGatewayBatch:
//
//	POST /v1/gateways/{id}/heartbeats   Authorization: Bearer <gateway token>
//	{"heartbeats": [{"device": "<id>", "device_time"?, "metrics"?, "probe_url"?}, …]}
//
// Each item is validated, rate-limited, published and answered exactly as
// the body of POST /v1/devices/{id}/heartbeat would be (decodeHeartbeatFields,
// admitHeartbeat, settleHeartbeat are the single endpoint's own code), except
// that the gateway's token stands for the device's: the device must be
// registered behind this gateway (else 403 for that item). The events are
// published asynchronously, at most gatewayPublishWindow of a request in
// flight, and the answer is written only after every PubAck (or its
// failure): an item answered 200 is stored.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// Route patterns of the gateway endpoints (registered by [Bridge.Routes]).
const (
	PatternGatewayRegister   = "POST /v1/gateways"
	PatternGatewayHeartbeats = "POST /v1/gateways/{id}/heartbeats"
)

// MaxGatewayBatch is the most heartbeats one gateway request may carry.
const MaxGatewayBatch = 1000

// MaxGatewayBatchBytes bounds the body of a gateway batch, in bytes (4 KiB
// per heartbeat on average; a batch with bigger metrics must be split).
const MaxGatewayBatchBytes = 4 << 20

// gatewayPublishWindow bounds the PubAcks one gateway request awaits at
// once: enough to keep the JetStream file store busy, few enough that
// several concurrent batches stay well under the client's async publish
// limit (nats.go's PublishAsyncMaxPending, 4 000).
const gatewayPublishWindow = 256

// gatewaySettlers bounds the registry round trips of one batch in flight:
// devices read into the registry cache before the checks (Prefetch), and
// heartbeats whose settling needs a compare-and-swap (see gatewayBatch).
const gatewaySettlers = 32

// gatewayItem is the answer for one heartbeat of a batch, in request order:
// HTTPStatus is what POST /v1/devices/{id}/heartbeat would have answered;
// with 200 the item carries that answer's fields (status,
// remote_control_enabled, should_reconnect, heartbeat_interval_s), else an
// error (and retry_after_s with 429 and 503).
type gatewayItem struct {
	Device               string             `json:"device"`
	HTTPStatus           int                `json:"http_status"`
	Status               string             `json:"status,omitempty"`
	RemoteControlEnabled *bool              `json:"remote_control_enabled,omitempty"`
	ShouldReconnect      *bool              `json:"should_reconnect,omitempty"`
	HeartbeatIntervalS   int                `json:"heartbeat_interval_s,omitempty"`
	RetryAfterS          int                `json:"retry_after_s,omitempty"`
	Error                *httpx.ErrorDetail `json:"error,omitempty"`
}

// gatewayBatchResponse is the 200 answer of a gateway batch.
type gatewayBatchResponse struct {
	Results  []gatewayItem `json:"results"`
	Accepted int           `json:"accepted"`
	Rejected int           `json:"rejected"`
}

// gatewayID returns the {id} of /v1/gateways/{id}/heartbeats, unescaped
// from the escaped path (so that an id with "/" sent as %2F routes).
func gatewayID(r *http.Request) (string, error) {
	esc := strings.TrimPrefix(r.URL.EscapedPath(), "/v1/gateways/")
	seg, _, _ := strings.Cut(esc, "/")
	if seg == esc || seg == "" {
		return r.PathValue("id"), nil
	}
	return url.PathUnescape(seg)
}

// handleGatewayRegister serves POST /v1/gateways {"id"} → 201 {"id",
// "token"}; 409 when it exists. The token is shown only here.
func (b *Bridge) handleGatewayRegister(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, b.cfg.MaxBodyBytes, emptyAllowed)
	if !ok {
		return
	}
	f, err := parseObject(body, "id")
	if err != nil {
		writeRequestError(w, err)
		return
	}
	var id string
	if isNull(f["id"]) || json.Unmarshal(f["id"], &id) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, "id (string) is required")
		return
	}
	token, err := b.reg.RegisterGateway(r.Context(), id)
	switch {
	case errors.Is(err, registry.ErrInvalidGateway):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error())
		return
	case errors.Is(err, registry.ErrGatewayExists):
		httpx.WriteError(w, http.StatusConflict, httpx.CodeConflict, "gateway already registered")
		return
	case err != nil:
		b.registryFailure(w, r, id, err)
		return
	}
	w.Header().Set("Location", "/v1/gateways/"+url.PathEscape(id))
	httpx.WriteJSON(w, http.StatusCreated, map[string]string{"id": id, "token": token})
}

// handleGatewayHeartbeats serves POST /v1/gateways/{id}/heartbeats. The
// answer is 200 with one item per heartbeat, in order (gatewayItem); valid
// heartbeats are recorded even when others of the batch are refused. The
// whole request is refused only for a wrong gateway or token (401), a
// malformed envelope, text the pipeline cannot store anywhere in the body
// or more than MaxGatewayBatch heartbeats (400), a wrong content type (415)
// or a body over 4 MiB (413), and 503 when the registry cannot say whether
// the gateway exists.
func (b *Bridge) handleGatewayHeartbeats(w http.ResponseWriter, r *http.Request) {
	gw, err := gatewayID(r)
	if err != nil || registry.ValidateGatewayID(gw) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, "invalid gateway id in the path")
		return
	}
	if err := b.hot.AuthenticateGateway(r.Context(), gw, httpx.BearerToken(r)); err != nil {
		if errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrBadToken) {
			writeUnauthorized(w)
			return
		}
		b.registryFailure(w, r, gw, err)
		return
	}
	body, ok := readBody(w, r, MaxGatewayBatchBytes, bodyRequired)
	if !ok {
		return
	}
	if fast, ok := fastGatewayBatch(body, b.cfg.MaxMetrics, b.cfg.MaxMetricBytes); ok {
		// The plain form, read in one pass (fastjson.go). Devices the
		// registry cache does not hold (a gateway's first batch, entries
		// evicted from a full cache) are read gatewaySettlers at a time
		// first, rather than one after another by the checks below.
		ids := make([]string, len(fast))
		for i := range fast {
			ids[i] = fast[i].id
		}
		b.hot.Prefetch(r.Context(), ids, gatewaySettlers)
		httpx.WriteJSON(w, http.StatusOK, b.gatewayBatch(r.Context(), gw, len(fast), func(i int) (string, gatewayHB, int, string, string) {
			return b.checkGatewayItem(r.Context(), gw, fast[i].id, fast[i].hb)
		}))
		return
	}
	f, err := parseObject(body, "heartbeats")
	if err != nil {
		writeRequestError(w, err)
		return
	}
	var items []json.RawMessage
	if isNull(f["heartbeats"]) || json.Unmarshal(f["heartbeats"], &items) != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, "heartbeats must be an array of heartbeats")
		return
	}
	if len(items) > MaxGatewayBatch {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, "at most 1000 heartbeats per request")
		return
	}
	out := b.gatewayBatch(r.Context(), gw, len(items), func(i int) (string, gatewayHB, int, string, string) {
		return b.decodeGatewayItem(r.Context(), gw, items[i])
	})
	httpx.WriteJSON(w, http.StatusOK, out)
}

// gatewayBatch admits, publishes and settles the n items of one batch, item
// i decoded and checked by item, and returns the answer.
func (b *Bridge) gatewayBatch(ctx context.Context, gw string, n int, item func(i int) (string, gatewayHB, int, string, string)) gatewayBatchResponse {
	out := gatewayBatchResponse{Results: make([]gatewayItem, n)}
	refuse := func(i, status int, code, msg string) {
		out.Results[i].HTTPStatus = status
		out.Results[i].Error = &httpx.ErrorDetail{Code: code, Message: msg}
	}
	now := b.cfg.Clock.Now().UTC()
	type pending struct {
		i int
		a admitted
	}
	admit := make([]pending, 0, n)
	for i := range n {
		id, hb, status, code, msg := item(i)
		out.Results[i].Device = id
		if status != 0 {
			refuse(i, status, code, msg)
			if status == http.StatusServiceUnavailable {
				out.Results[i].RetryAfterS = retrySeconds(errUnavailableRetry)
			}
			continue
		}
		a, wait, ok := b.admitHeartbeat(id, &hb.body, hb.ent, now, gw)
		if !ok {
			refuse(i, http.StatusTooManyRequests, httpx.CodeRateLimited, "too many heartbeats for this device")
			out.Results[i].RetryAfterS = retrySeconds(wait)
			continue
		}
		admit = append(admit, pending{i, a})
	}

	// Publish with a bounded window of PubAcks awaited, then settle each.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.PublishTimeout)
	defer cancel()
	acks := make([]*jetstream.PubAck, len(admit))
	errs := make([]error, len(admit))
	futures := make([]jetstream.PubAckFuture, len(admit))
	await := func(k int) {
		f := futures[k]
		if f == nil {
			return
		}
		select {
		case ack := <-f.Ok():
			acks[k] = ack
		case err := <-f.Err():
			errs[k] = err
		case <-pctx.Done():
			errs[k] = pctx.Err()
		}
	}
	connected := b.cfg.Bus.NC.IsConnected()
	pub := b.publisher(b.pubJS()) // one connection for the whole batch
	waited := 0
	for k := range admit {
		if !connected {
			errs[k] = errors.New("bridge: NATS is not connected")
			continue
		}
		for k-waited >= gatewayPublishWindow {
			await(waited)
			waited++
		}
		futures[k], errs[k] = pub.PublishAsync(admit[k].a.in, admit[k].a.msgID)
	}
	for ; waited < len(admit); waited++ {
		await(waited)
	}
	failed := 0
	results := make([]hbOutcome, len(admit))
	// Settling an accepted heartbeat is local, except when its record
	// changes (mustSettle: a reconnect to be told, an operator's request or
	// a comeback from offline, and/or a new probe URL: one compare-and-swap
	// on its registry entry, and an event per delivery): those round trips
	// run gatewaySettlers at a time, so that a batch of devices coming back
	// together does not wait for them one after another.
	sem := make(chan struct{}, gatewaySettlers)
	var wg sync.WaitGroup
	for k := range admit {
		p := &admit[k]
		if errs[k] == nil && acks[k] == nil {
			errs[k] = errors.New("bridge: no PubAck")
		}
		if errs[k] != nil {
			b.m.publishErrors.WithLabelValues(string(events.TypeHeartbeat)).Inc()
			failed++
		}
		if errs[k] == nil && !acks[k].Duplicate && mustSettle(&p.a) {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				results[k] = b.settleHeartbeat(ctx, &p.a, acks[k], nil, false)
			})
			continue
		}
		results[k] = b.settleHeartbeat(ctx, &p.a, acks[k], errs[k], false)
	}
	wg.Wait()
	for k := range admit {
		p, res := &admit[k], results[k]
		item := &out.Results[p.i]
		switch res.status {
		case http.StatusOK:
			item.HTTPStatus = http.StatusOK
			item.Status = res.resp.Status
			item.RemoteControlEnabled = &res.resp.RemoteControlEnabled
			item.ShouldReconnect = &res.resp.ShouldReconnect
			item.HeartbeatIntervalS = res.resp.HeartbeatIntervalS
		case http.StatusTooManyRequests:
			refuse(p.i, http.StatusTooManyRequests, httpx.CodeRateLimited, "too many heartbeats for this device")
			item.RetryAfterS = retrySeconds(res.retryAfter)
		default:
			refuse(p.i, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the event bus is unavailable; retry this heartbeat later")
			item.RetryAfterS = retrySeconds(errUnavailableRetry)
		}
	}
	if failed > 0 {
		b.log.Warn("bridge: heartbeats of a gateway batch not acknowledged by JetStream", "gateway", gw,
			"failed", failed, "of", len(admit), "err", firstError(errs))
	}
	for _, it := range out.Results {
		if it.HTTPStatus == http.StatusOK {
			out.Accepted++
		} else {
			out.Rejected++
		}
	}
	b.countGatewayItems(out.Results)
	return out
}

// countGatewayItems adds a batch's items to devstatus_bridge_heartbeats_total
// by the status each item was answered, as if each had come alone.
func (b *Bridge) countGatewayItems(items []gatewayItem) {
	var n [600]int
	for _, it := range items {
		if it.HTTPStatus > 0 && it.HTTPStatus < len(n) {
			n[it.HTTPStatus]++
		}
	}
	for code, c := range n {
		if c > 0 {
			b.m.heartbeats.WithLabelValues(strconv.Itoa(code)).Add(float64(c))
		}
	}
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// retrySeconds is a Retry-After in whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) int {
	return max(int((d+time.Second-1)/time.Second), 1)
}

// gatewayHB is a decoded batch item.
type gatewayHB struct {
	body heartbeatBody
	ent  registry.Entry
}

// decodeGatewayItem validates one batch item as the single endpoint
// validates its path id and body, checks that the device reports through
// gateway gw, and returns the device id and the heartbeat, or the status,
// error code and message of its refusal.
func (b *Bridge) decodeGatewayItem(ctx context.Context, gw string, raw json.RawMessage) (string, gatewayHB, int, string, string) {
	var hb gatewayHB
	f, unknown, err := parseObjectLenient(raw, "device", "device_time", "metrics", "probe_url")
	if err != nil {
		id, _ := itemDevice(raw)
		code, msg := requestErrorCode(err)
		return id, hb, http.StatusBadRequest, code, msg
	}
	var id string
	if isNull(f["device"]) || json.Unmarshal(f["device"], &id) != nil {
		return "", hb, http.StatusBadRequest, httpx.CodeInvalidDeviceID, "device (string) is required"
	}
	if err := events.ValidateDeviceID(id); err != nil {
		return id, hb, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error()
	}
	if hb.body, err = decodeHeartbeatFields(f, b.cfg.MaxMetrics, b.cfg.MaxMetricBytes); err != nil {
		code, msg := requestErrorCode(err)
		return id, hb, http.StatusBadRequest, code, msg
	}
	hb.body.UnknownFields = unknown
	return b.checkGatewayItem(ctx, gw, id, hb.body)
}

// checkGatewayItem checks a decoded item: its device id, its probe URL
// against the probe policy, and that the device reports through gateway gw.
func (b *Bridge) checkGatewayItem(ctx context.Context, gw, id string, body heartbeatBody) (string, gatewayHB, int, string, string) {
	hb := gatewayHB{body: body}
	if err := events.ValidateDeviceID(id); err != nil {
		return id, hb, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error()
	}
	if hb.body.ProbeURL != nil {
		u, err := b.checkProbeURL(*hb.body.ProbeURL)
		if err != nil {
			code, msg := requestErrorCode(err)
			return id, hb, http.StatusBadRequest, code, msg
		}
		hb.body.ProbeURL = &u
	}
	var err error
	hb.ent, err = b.hot.Lookup(ctx, id)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return id, hb, http.StatusNotFound, httpx.CodeNotFound, "unknown device"
	case err != nil:
		return id, hb, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the device registry is unavailable; retry this heartbeat later"
	case hb.ent.Decommissioned:
		return id, hb, http.StatusNotFound, httpx.CodeNotFound, "device is decommissioned"
	case hb.ent.Gateway != gw:
		return id, hb, http.StatusForbidden, httpx.CodeForbidden, "this device does not report through this gateway"
	}
	return id, hb, 0, "", ""
}

// requestErrorCode is the code and message of a body refusal (400).
func requestErrorCode(err error) (string, string) {
	var re *requestError
	if errors.As(err, &re) {
		return re.code, re.msg
	}
	return httpx.CodeBadRequest, err.Error()
}
