package readapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/projections"
)

// streamServer serves an API with the live stream over the fixture's bus.
func streamServer(t *testing.T, f *fixture, cfg StreamConfig) (*API, *httptest.Server) {
	t.Helper()
	cfg.JetStream = f.js
	a, err := New(Config{Store: projections.NewStore(f.db), AdminToken: token, Logger: testenv.Logger(t), Stream: cfg,
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() { a.CloseStreams(); srv.Close() })
	return a, srv
}

type sseEvent struct{ id, event, data string }

type sseClient struct {
	t      *testing.T
	resp   *http.Response
	lines  chan string
	cancel context.CancelFunc
}

// openStream connects to /v1/stream (query: extra parameters; lastID: the
// Last-Event-ID header, "" for none) and waits for the opening comment, which
// the server writes once its consumer is in place.
func openStream(t *testing.T, base, query, lastID string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/stream?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	c := &sseClient{t: t, resp: resp, lines: make(chan string, 1024), cancel: cancel}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(c.close)
	for {
		l := c.line()
		if l == ": devstatus transitions" {
			return c
		}
	}
}

func (c *sseClient) close() { c.cancel(); c.resp.Body.Close() }

// line returns the next line; it fails the test after 10 s without one.
func (c *sseClient) line() string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "\x00EOF"
		}
		return l
	case <-time.After(10 * time.Second):
		c.t.Fatal("stream: nothing for 10s")
		return ""
	}
}

// next returns the next dispatched event (comments and id-only keep-alives
// skipped); event "EOF" when the server closed the stream.
func (c *sseClient) next() sseEvent {
	c.t.Helper()
	var e sseEvent
	for {
		l := c.line()
		switch {
		case l == "\x00EOF":
			return sseEvent{event: "EOF"}
		case l == "":
			if e.data != "" {
				return e
			}
			e = sseEvent{}
		case strings.HasPrefix(l, ":"), strings.HasPrefix(l, "retry:"):
		case strings.HasPrefix(l, "id: "):
			e.id = l[4:]
		case strings.HasPrefix(l, "event: "):
			e.event = l[7:]
		case strings.HasPrefix(l, "data: "):
			e.data = l[6:]
		default:
			c.t.Fatalf("stream: unexpected line %q", l)
		}
	}
}

// transition reads the next event and checks it is the transition with
// stream sequence seq of device dev.
func (c *sseClient) transition(seq uint64, dev string) TransitionEventJSON {
	c.t.Helper()
	e := c.next()
	var tr TransitionEventJSON
	if e.event != EventTransition || json.Unmarshal([]byte(e.data), &tr) != nil {
		c.t.Fatalf("got %+v, want transition %d of %q", e, seq, dev)
	}
	if e.id != fmt.Sprint(seq) || tr.Seq != seq || tr.Device != dev {
		c.t.Fatalf("got id %s %+v, want transition %d of %q", e.id, tr, seq, dev)
	}
	return tr
}

func TestStreamResumesWithLastEventID(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, srv := streamServer(t, f, StreamConfig{})
	c := openStream(t, srv.URL, "", "")
	var seqs []uint64
	for i := range 3 {
		seqs = append(seqs, f.transition(t, fmt.Sprintf("d%d", i), events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, float64(i)))
	}
	for i, s := range seqs {
		tr := c.transition(s, fmt.Sprintf("d%d", i))
		if tr.From != events.StatusRegistered || tr.To != events.StatusConnected || tr.ReasonCode != "heartbeat" ||
			!tr.At.Equal(at(float64(i))) || tr.Reason != fmt.Sprintf("heartbeat at %d", i) {
			t.Errorf("event %+v", tr)
		}
	}
	last := seqs[len(seqs)-1]
	c.close()

	// Missed while away.
	var missed []uint64
	for i := range 5 {
		missed = append(missed, f.transition(t, fmt.Sprintf("m%d", i), events.StatusConnected, events.StatusTemporarilyOffline,
			events.ReasonHeartbeatTimeout, float64(10+i)))
	}
	c = openStream(t, srv.URL, "", fmt.Sprint(last))
	for i, s := range missed {
		c.transition(s, fmt.Sprintf("m%d", i))
	}
	// Exactly those: the next event is the one published now.
	s := f.transition(t, "after", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 20)
	c.transition(s, "after")

	// The same through the last_event_id parameter, from further back.
	c2 := openStream(t, srv.URL, "last_event_id="+fmt.Sprint(seqs[0]), "")
	c2.transition(seqs[1], "d1")
	c2.transition(seqs[2], "d2")
	c2.transition(missed[0], "m0")
}

func TestStreamFilters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, srv := streamServer(t, f, StreamConfig{})
	pub := func(dev, group string, from, to events.Status) uint64 {
		e := &events.StatusChanged{ID: dev, Device: dev, Group: group, From: from, To: to, ReasonCode: events.ReasonHeartbeat,
			Reason: "r", At: at(1), ObservedAt: at(1), Partition: events.Partition(dev, partitions)}
		data, _ := events.EncodeStatusChanged(e)
		ack, err := f.js.Publish(context.Background(), events.TransitionSubject(dev, partitions), data)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	byStatus := openStream(t, srv.URL, "status=disconnected", "")
	byGroup := openStream(t, srv.URL, "group=lab&group=a,b", "")
	both := openStream(t, srv.URL, "status=connected,temporarily_offline&group=lab", "")
	byDevice := openStream(t, srv.URL, "device=x%2Fy", "")
	s1 := pub("a", "lab", events.StatusConnected, events.StatusTemporarilyOffline)
	s2 := pub("b", "lobby", events.StatusTemporarilyOffline, events.StatusDisconnected)
	s3 := pub("c", "lab", events.StatusTemporarilyOffline, events.StatusDisconnected)
	s4 := pub("x/y", "a,b", events.StatusDisconnected, events.StatusConnected)
	s5 := pub("e", "", events.StatusRegistered, events.StatusConnected)
	byStatus.transition(s2, "b") // into disconnected
	byStatus.transition(s3, "c")
	byStatus.transition(s4, "x/y") // out of disconnected
	byGroup.transition(s1, "a")
	byGroup.transition(s3, "c")
	byGroup.transition(s4, "x/y") // the group "a,b" is one group
	both.transition(s1, "a")
	both.transition(s3, "c") // from temporarily_offline
	byDevice.transition(s4, "x/y")
	_ = s5
	// Nothing else: each stream's next event is the one that matches all.
	s6 := pub("x/y", "lab", events.StatusConnected, events.StatusDisconnected)
	for _, c := range []*sseClient{byStatus, byGroup, both, byDevice} {
		c.transition(s6, "x/y")
	}
	if code, body := doGet(t, srv.URL+"/v1/stream?status=online", "Bearer "+token, nil); code != 400 {
		t.Errorf("bad status: %d %s", code, body)
	}
	if code, body := doGet(t, srv.URL+"/v1/stream?last_event_id=x", "Bearer "+token, nil); code != 400 {
		t.Errorf("bad last_event_id: %d %s", code, body)
	}
}

// The admin token as a header, or a stream ticket as ?ticket=; nothing else:
// no cookie, no token in the URL, no expired, forged or other deployment's
// ticket. A ticket opens the stream only: it is not a token.
func TestStreamAuth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	clk := clock.NewFake(time.Now())
	a, err := New(Config{Store: projections.NewStore(f.db), AdminToken: token, Logger: testenv.Logger(t), Clock: clk,
		Stream: StreamConfig{JetStream: f.js}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() { a.CloseStreams(); srv.Close() })
	tryAt := func(base, path string, set func(*http.Request)) int {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		set(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode
	}
	try := func(path string, set func(*http.Request)) int { return tryAt(srv.URL, path, set) }
	newTicket := func(auth string) (int, TicketJSON) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/stream/ticket", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tj TicketJSON
		_ = json.NewDecoder(resp.Body).Decode(&tj)
		return resp.StatusCode, tj
	}
	if code, _ := newTicket("Bearer nope"); code != 401 {
		t.Errorf("ticket with a wrong token: %d, want 401", code)
	}
	code, tk := newTicket("Bearer " + token)
	if code != 200 || !strings.HasPrefix(tk.Ticket, "st1.") {
		t.Fatalf("ticket: %d %+v", code, tk)
	}
	if ttl := tk.ExpiresAt.Sub(clk.Now()); ttl <= 50*time.Second || ttl > DefaultTicketTTL {
		t.Errorf("ticket expires in %v, want about %v", ttl, DefaultTicketTTL)
	}
	// Another deployment's key, a changed expiry, a changed signature.
	other, err := New(Config{Store: nilReader{}, AdminToken: "another-admin-token", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	foreign := other.issueTicket(clk.Now().Add(time.Minute))
	parts := strings.Split(tk.Ticket, ".")
	later := strings.Join([]string{parts[0], strconv.FormatInt(clk.Now().Add(time.Hour).Unix(), 10), parts[2], parts[3]}, ".")
	flipped := tk.Ticket[:len(tk.Ticket)-1] + map[bool]string{true: "A", false: "B"}[!strings.HasSuffix(tk.Ticket, "A")]

	none := func(*http.Request) {}
	bearer := func(v string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+v) }
	}
	q := url.QueryEscape
	cases := []struct {
		name string
		path string
		set  func(*http.Request)
		code int
	}{
		{"header", "/v1/stream", bearer(token), 200},
		{"ticket", "/v1/stream?ticket=" + q(tk.Ticket), none, 200},
		{"ticket again (within its TTL)", "/v1/stream?ticket=" + q(tk.Ticket), none, 200},
		{"none", "/v1/stream", none, 401},
		{"token in the URL", "/v1/stream?access_token=" + token, none, 401},
		{"token as a ticket", "/v1/stream?ticket=" + token, none, 401},
		{"cookie", "/v1/stream", func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "devstatus_token", Value: token}) }, 401},
		{"another deployment's ticket", "/v1/stream?ticket=" + q(foreign), none, 401},
		{"expiry changed", "/v1/stream?ticket=" + q(later), none, 401},
		{"signature changed", "/v1/stream?ticket=" + q(flipped), none, 401},
		{"wrong header beats a right ticket", "/v1/stream?ticket=" + q(tk.Ticket), bearer("nope"), 401},
		{"ticket as a bearer token", "/v1/summary", bearer(tk.Ticket), 401},
		{"ticket on another route", "/v1/summary?ticket=" + q(tk.Ticket), none, 401},
		{"ticket on whoami", "/v1/whoami?ticket=" + q(tk.Ticket), none, 401},
	}
	for _, c := range cases {
		if got := try(c.path, c.set); got != c.code {
			t.Errorf("%s: %d, want %d", c.name, got, c.code)
		}
	}
	// Expired: the second it expires.
	clk.Set(tk.ExpiresAt)
	if got := try("/v1/stream?ticket="+q(tk.Ticket), none); got != 401 {
		t.Errorf("expired ticket: %d, want 401", got)
	}
	// A ticket of one instance opens the stream on another (same admin token).
	code, tk = newTicket("Bearer " + token)
	if code != 200 {
		t.Fatalf("ticket: %d", code)
	}
	_, srv2 := streamServer(t, f, StreamConfig{})
	if code := tryAt(srv2.URL, "/v1/stream?ticket="+q(tk.Ticket), func(*http.Request) {}); code != 200 {
		t.Errorf("ticket on another instance: %d", code)
	}
	if code, body := doGet(t, srv.URL+"/v1/whoami", "Bearer "+token, nil); code != 200 || !strings.Contains(body, `"role":"admin"`) {
		t.Errorf("whoami: %d %s", code, body)
	}
	// Without a bus the stream is unavailable, not broken.
	a, err = New(Config{Store: nilReader{}, AdminToken: token})
	if err != nil {
		t.Fatal(err)
	}
	s2 := httptest.NewServer(a.Handler())
	defer s2.Close()
	if code, body := doGet(t, s2.URL+"/v1/stream", "Bearer "+token, nil); code != 503 {
		t.Errorf("no bus: %d %s", code, body)
	}
}

// A client that resumes further back than MaxLag is told and dropped.
func TestStreamDropsLaggingClient(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, srv := streamServer(t, f, StreamConfig{MaxLag: 5})
	var first uint64
	for i := range 20 {
		s := f.transition(t, fmt.Sprintf("d%d", i), events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
		if i == 0 {
			first = s
		}
	}
	c := openStream(t, srv.URL, "", fmt.Sprint(first-1))
	e := c.next()
	var lag LaggingJSON
	if e.event != EventLagging || json.Unmarshal([]byte(e.data), &lag) != nil || lag.Seq != first || lag.Pending != 19 || lag.MaxLag != 5 {
		t.Fatalf("got %+v, want a lagging event", e)
	}
	if e := c.next(); e.event != "EOF" {
		t.Fatalf("after lagging: %+v, want the end of the stream", e)
	}
	if n := metricValue(a.m.dropped.WithLabelValues(dropLagging)); n != 1 {
		t.Errorf("dropped{lagging} = %g", n)
	}
	// Within the limit, the same client catches up.
	c = openStream(t, srv.URL, "", fmt.Sprint(first+14))
	for i := 15; i < 20; i++ {
		c.transition(first+uint64(i), fmt.Sprintf("d%d", i))
	}
}

// A client that stops reading holds only its own bounded buffer: publishing
// and projecting go on, another client receives everything, and the stalled
// one is dropped once a write times out.
func TestStreamStalledClientDoesNotDelayIngest(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, srv := streamServer(t, f, StreamConfig{Buffer: 16, WriteTimeout: time.Second})
	reader := openStream(t, srv.URL, "", "")

	// The stalled client: a raw connection with a small receive buffer that
	// sends its request and never reads.
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", token)
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(a.m.clients) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the stalled client never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The reading client reads as fast as it can meanwhile: the ids of its
	// events, in order.
	const n = 3000
	got := make(chan []string, 1)
	go func() {
		var ids []string
		for l := range reader.lines {
			if strings.HasPrefix(l, "id: ") {
				ids = append(ids, l[4:])
				if len(ids) == n {
					break
				}
			}
		}
		got <- ids
	}()
	// ~12 MB of transitions: far more than socket buffers hold.
	reason := strings.Repeat("r", 4000)
	var want []string
	var last uint64
	for i := range n {
		dev := fmt.Sprintf("s%04d", i)
		e := &events.StatusChanged{ID: dev, Device: dev, From: events.StatusConnected, To: events.StatusTemporarilyOffline,
			ReasonCode: events.ReasonHeartbeatTimeout, Reason: reason, At: at(1), ObservedAt: at(1), Partition: events.Partition(dev, partitions),
			Cause: events.Cause{Seq: uint64(i + 1)}}
		data, _ := events.EncodeStatusChanged(e)
		ack, err := f.js.Publish(context.Background(), events.TransitionSubject(dev, partitions), data)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprint(ack.Sequence))
		last = ack.Sequence
	}
	in := f.heartbeat(t, "s0000", 2, "")
	f.wait(t, in, last) // the projections went on
	var ids []string
	select {
	case ids = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the reading client did not receive every transition")
	}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("the reading client got %d events, want the %d transitions in order", len(ids), n)
	}
	deadline = time.Now().Add(20 * time.Second)
	for metricValue(a.m.dropped.WithLabelValues(dropWrite)) < 1 || metricValue(a.m.clients) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled client was not dropped: clients %g, dropped{write} %g",
				metricValue(a.m.clients), metricValue(a.m.dropped.WithLabelValues(dropWrite)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The server's Shutdown ends open streams instead of waiting for them.
func TestStreamEndsOnShutdown(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, err := New(Config{Store: projections.NewStore(f.db), AdminToken: token, Logger: testenv.Logger(t), Stream: StreamConfig{JetStream: f.js}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	c := openStream(t, srv.URL, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown waited for the stream: %v", err)
	}
	if e := c.next(); e.event != "EOF" {
		t.Fatalf("after shutdown: %+v", e)
	}
}

// metricValue reads a gauge or counter.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}
