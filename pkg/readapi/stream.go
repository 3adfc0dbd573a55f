package readapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// StreamConfig configures GET /v1/stream. Zero values take the defaults.
type StreamConfig struct {
	// JetStream reads the transitions stream (events.TransitionStream).
	// Without it GET /v1/stream answers 503.
	JetStream jetstream.JetStream
	// Buffer is each client's buffer, in transitions read from the stream
	// and not yet written to the client (the consumer's pull buffer is the
	// same size). Default 256.
	Buffer int
	// MaxLag: when the next transition to send a client has more than MaxLag
	// newer transitions behind it in the stream, the client is told (event
	// "lagging") and dropped. Default 10000.
	MaxLag uint64
	// Heartbeat is the period of keep-alive lines while nothing else is
	// written (proxies close idle connections). Default 15s.
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a client: one that does not read
	// for that long is dropped. Default 10s.
	WriteTimeout time.Duration
	// Retry is the reconnection delay told to EventSource clients
	// ("retry:" field). Default 2s.
	Retry time.Duration
}

func (c *StreamConfig) setDefaults() error {
	if c.Buffer == 0 {
		c.Buffer = 256
	}
	if c.MaxLag == 0 {
		c.MaxLag = 10000
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.Retry == 0 {
		c.Retry = 2 * time.Second
	}
	if c.Buffer < 1 || c.Heartbeat < 0 || c.WriteTimeout < 0 || c.Retry < 0 {
		return errors.New("stream: Buffer must be >= 1 and durations must not be negative")
	}
	return nil
}

// Stream event types (the SSE "event:" field).
const (
	// EventTransition carries a [TransitionEventJSON]; its SSE id is the
	// transitions-stream sequence.
	EventTransition = "transition"
	// EventLagging carries a [LaggingJSON]: the client fell too far behind
	// and the server closes the connection. Reload the state (summary,
	// lists) and reconnect without Last-Event-ID.
	EventLagging = "lagging"
	// EventOutageHold carries an [OutageHold]: sent first on every stream,
	// then whenever the hold starts or ends (it has no SSE id). Only with
	// a hold source (Config.Hold).
	EventOutageHold = "outage_hold"
)

// TransitionEventJSON is the data of a "transition" event of GET /v1/stream.
type TransitionEventJSON struct {
	// Seq is the transitions-stream sequence (also the SSE id).
	Seq        uint64        `json:"seq"`
	Device     string        `json:"device"`
	Group      string        `json:"group"`
	From       events.Status `json:"from"`
	To         events.Status `json:"to"`
	ReasonCode string        `json:"reason_code"`
	Reason     string        `json:"reason"`
	At         time.Time     `json:"at"`
}

// LaggingJSON is the data of a "lagging" event: seq is the next transition
// the client would have received, pending how many newer ones wait behind
// it, max_lag the limit.
type LaggingJSON struct {
	Seq     uint64 `json:"seq"`
	Pending uint64 `json:"pending"`
	MaxLag  uint64 `json:"max_lag"`
}

// streams tracks the open streams so that they end on [API.CloseStreams] or
// when the HTTP server shuts down (http.Server.Shutdown waits for active
// requests, and a stream never finishes by itself).
type streams struct {
	a         *API
	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	servers   map[*http.Server]bool
}

func newStreams(a *API) *streams {
	return &streams{a: a, done: make(chan struct{}), servers: map[*http.Server]bool{}}
}

func (s *streams) close() { s.closeOnce.Do(func() { close(s.done) }) }

// watchServer makes the server's Shutdown end the streams (once per server).
func (s *streams) watchServer(r *http.Request) {
	srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.servers[srv] {
		s.servers[srv] = true
		srv.RegisterOnShutdown(s.close)
	}
}

// CloseStreams ends every open GET /v1/stream connection and refuses new
// ones (503). The server's Shutdown calls it too. Clients reconnect (to
// another instance) with Last-Event-ID and miss nothing.
func (a *API) CloseStreams() { a.streams.close() }

// requireStreamToken accepts a viewer or admin token (Config.Auth) as a
// bearer header, or a stream ticket (POST /v1/stream/ticket) as the ticket
// query parameter: the browser's EventSource cannot send a header, and no
// token goes in a URL or a cookie. A wrong, forged or expired ticket is 401.
func (a *API) requireStreamToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok := httpx.BearerToken(r); tok != "" {
			if !httpx.CheckRole(w, r, a.cfg.Auth, httpx.RoleViewer, tok) {
				return
			}
		} else if t := r.URL.Query().Get("ticket"); t == "" {
			streamUnauthorized(w, "missing token: Authorization: Bearer, or ?ticket= from POST /v1/stream/ticket")
			return
		} else if !a.checkTicket(t, a.cfg.Clock.Now()) {
			streamUnauthorized(w, "wrong or expired ticket: get a new one from POST /v1/stream/ticket")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func streamUnauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="devstatus"`)
	httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, msg)
}

// streamFilter keeps the transitions a client asked for.
type streamFilter struct {
	statuses []events.Status
	groups   []string
	devices  []string
}

func (f *streamFilter) match(e *events.StatusChanged) bool {
	if len(f.statuses) > 0 && !slices.Contains(f.statuses, e.From) && !slices.Contains(f.statuses, e.To) {
		return false
	}
	if len(f.groups) > 0 && !slices.Contains(f.groups, e.Group) {
		return false
	}
	if len(f.devices) > 0 && !slices.Contains(f.devices, e.Device) {
		return false
	}
	return true
}

// listParam returns the values of a repeatable, comma-separated parameter.
func listParam(q url.Values, key string) []string {
	var out []string
	for _, v := range q[key] {
		for _, p := range strings.Split(v, ",") {
			if p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func parseStreamFilter(q url.Values) (*streamFilter, error) {
	f := &streamFilter{}
	for _, s := range listParam(q, "status") {
		st := events.Status(s)
		if !st.Valid() {
			return nil, fmt.Errorf("status must be one of registered, connected, temporarily_offline, disconnected; got %q", s)
		}
		f.statuses = append(f.statuses, st)
	}
	// A group may contain a comma: groups are repeated, never split.
	f.groups = q["group"]
	for _, d := range q["device"] {
		if err := events.ValidateDeviceID(d); err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
		f.devices = append(f.devices, d)
	}
	return f, nil
}

// lastEventID returns the sequence to resume after: the Last-Event-ID header
// (sent by EventSource on reconnection) or the last_event_id parameter.
func lastEventID(r *http.Request) (seq uint64, ok bool, err error) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("last_event_id")
	}
	if v == "" {
		return 0, false, nil
	}
	seq, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("Last-Event-ID must be a transitions-stream sequence; got %q", v)
	}
	return seq, true, nil
}

// handleStream serves GET /v1/stream: server-sent events, one "transition"
// event per transition of the transitions stream, in stream order, with
// id = the stream sequence.
//
// Parameters: status (repeatable or comma-separated: transitions into or out
// of these statuses, so a view filtered on a status sees devices enter and
// leave it), group (repeatable), device (repeatable); last_event_id, or the
// Last-Event-ID header that EventSource sends when it reconnects: resume
// with the transitions after that sequence (exactly the missed ones, read
// from the stream, not from memory). Without it the stream starts with the
// next transition.
//
// Each client has its own ordered consumer and a bounded buffer, so a slow
// or stalled client costs the service nothing but that buffer: it stops
// pulling, and JetStream keeps the transitions. A client more than MaxLag
// transitions behind gets a "lagging" event and is dropped; one that does
// not read for WriteTimeout is dropped. While idle the server writes a
// keep-alive every Heartbeat: an "id:" line carrying the last sequence
// examined when filters skipped transitions since the last event (so a
// reconnection does not scan them again), else a ": ping" comment.
func (a *API) handleStream(w http.ResponseWriter, r *http.Request) {
	st, cfg := a.streams, a.cfg.Stream
	select {
	case <-st.done:
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the server is shutting down")
		return
	default:
	}
	if cfg.JetStream == nil {
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the live stream is not configured on this instance")
		return
	}
	filter, err := parseStreamFilter(r.URL.Query())
	if err != nil {
		badRequest(w, err)
		return
	}
	after, resume, err := lastEventID(r)
	if err != nil {
		badRequest(w, err)
		return
	}
	st.watchServer(r)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-st.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}
	if resume {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	cons, err := cfg.JetStream.OrderedConsumer(ctx, events.TransitionStream, occ)
	if err != nil {
		a.log.Warn("stream: consumer", slog.Any("err", err))
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the transitions stream is unavailable")
		return
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(cfg.Buffer))
	if err != nil {
		a.log.Warn("stream: messages", slog.Any("err", err))
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the transitions stream is unavailable")
		return
	}
	msgs := make(chan jetstream.Msg, cfg.Buffer)
	readErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() { // bounded: blocks (stops pulling) while the buffer is full
		defer close(readerDone)
		for {
			m, err := it.Next()
			if err != nil {
				readErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { cancel(); it.Stop(); <-readerDone }()

	a.m.clients.Inc()
	defer a.m.clients.Dec()
	rc := http.NewResponseController(w)
	// The server's ReadTimeout would cancel the request after a while; the
	// write deadline is set per write below.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	var buf bytes.Buffer
	write := func() error {
		_ = rc.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
		buf.Reset()
		return rc.Flush()
	}
	fmt.Fprintf(&buf, "retry: %d\n: devstatus transitions\n\n", cfg.Retry.Milliseconds())
	hold, holdChanged := a.hold()
	appendHold := func() {
		data, _ := json.Marshal(hold)
		fmt.Fprintf(&buf, "event: %s\ndata: %s\n\n", EventOutageHold, data)
	}
	if a.cfg.Hold != nil {
		appendHold()
	}
	if err := write(); err != nil {
		return
	}
	drop := func(reason string) { a.m.dropped.WithLabelValues(reason).Inc() }
	hb := time.NewTicker(cfg.Heartbeat)
	defer hb.Stop()
	lastSeen, lastSent := after, after
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-readErr:
			if ctx.Err() == nil {
				a.log.Warn("stream: transitions consumer failed", slog.Any("err", err))
				drop(dropConsumer)
			}
			return
		case <-holdChanged:
			hold, holdChanged = a.hold()
			appendHold()
			if err := write(); err != nil {
				drop(dropWrite)
				return
			}
		case <-hb.C:
			if lastSeen > lastSent {
				fmt.Fprintf(&buf, "id: %d\n\n", lastSeen)
				lastSent = lastSeen
			} else {
				buf.WriteString(": ping\n\n")
			}
			if err := write(); err != nil {
				drop(dropWrite)
				return
			}
		case m := <-msgs:
			// Write this one and whatever is already buffered in one go.
			ok := a.appendEvent(&buf, m, filter, cfg.MaxLag, &lastSeen, &lastSent)
			for more := ok; more && buf.Len() < 64<<10; {
				select {
				case m2 := <-msgs:
					ok = a.appendEvent(&buf, m2, filter, cfg.MaxLag, &lastSeen, &lastSent)
					more = ok
				default:
					more = false
				}
			}
			if !ok {
				_ = write()
				drop(dropLagging)
				return
			}
			if buf.Len() > 0 {
				if err := write(); err != nil {
					drop(dropWrite)
					return
				}
			}
		}
	}
}

// appendEvent appends m's event to buf when it matches; it returns false
// (after appending a "lagging" event) when the client is too far behind.
func (a *API) appendEvent(buf *bytes.Buffer, m jetstream.Msg, filter *streamFilter, maxLag uint64, lastSeen, lastSent *uint64) bool {
	md, err := m.Metadata()
	if err != nil {
		return true
	}
	seq := md.Sequence.Stream
	if md.NumPending > maxLag {
		lag, _ := json.Marshal(LaggingJSON{Seq: seq, Pending: md.NumPending, MaxLag: maxLag})
		fmt.Fprintf(buf, "event: %s\ndata: %s\n\n", EventLagging, lag)
		return false
	}
	*lastSeen = seq
	e, err := events.DecodeStatusChanged(m.Data())
	if err != nil {
		a.log.Warn("stream: undecodable transition", slog.Uint64("seq", seq), slog.Any("err", err))
		return true
	}
	if !filter.match(e) {
		return true
	}
	data, _ := json.Marshal(TransitionEventJSON{Seq: seq, Device: e.Device, Group: e.Group, From: e.From, To: e.To,
		ReasonCode: string(e.ReasonCode), Reason: e.Reason, At: e.At.UTC()})
	fmt.Fprintf(buf, "id: %d\nevent: %s\ndata: %s\n\n", seq, EventTransition, data)
	*lastSent = seq
	a.m.events.Inc()
	return true
}
