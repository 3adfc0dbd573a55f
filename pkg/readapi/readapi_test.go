package readapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/projections"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testenv.LeakOptions()...) }

const (
	token      = "admin-secret"
	partitions = 4
)

// t0 is the fixture's event-time origin; now is 10 minutes later.
var t0 = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// oddIDs are valid device ids that are hard to put in a URL path.
var oddIDs = []string{"a/b", "a b", "%2F", "a%2Fb", "東京/Gerät", ".", "..", "x/transitions", "~", "?#&=", "a//b", "/lead", "trail/",
	strings.Repeat("é", 64)}

// fixture is a projected fleet behind a test server.
type fixture struct {
	db   *sqlx.DB
	js   jetstream.JetStream
	srv  *httptest.Server
	proj *projections.Projector
	seq  atomic.Uint64 // transition cause counter
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs Postgres and JetStream (skipped with -short)")
	}
	_, db := testenv.Postgres(t)
	if err := projections.Migrate(context.Background(), db.DB, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	b := testenv.NATS(t, bus.Config{Partitions: partitions})
	p, err := projections.New(projections.Config{DB: db, JetStream: b.JS, Logger: testenv.Logger(t), FlushInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, p.Run)
	api, err := New(Config{Store: projections.NewStore(db), AdminToken: token, Logger: testenv.Logger(t),
		Clock: clock.NewFake(at(600))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &fixture{db: db, js: b.JS, srv: srv, proj: p}
}

func (f *fixture) input(t *testing.T, e *events.Input) uint64 {
	t.Helper()
	e.ID = fmt.Sprintf("in-%d", rand.Uint64())
	data, err := events.EncodeInput(e)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := f.js.Publish(context.Background(), events.DeviceSubject(e.Device, partitions), data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func (f *fixture) transition(t *testing.T, dev string, from, to events.Status, code events.ReasonCode, s float64) uint64 {
	t.Helper()
	n := f.seq.Add(1)
	e := &events.StatusChanged{ID: fmt.Sprintf("tr-%d", n), Device: dev, From: from, To: to, ReasonCode: code,
		Reason: fmt.Sprintf("%s at %g", code, s), At: at(s), ObservedAt: at(s),
		Cause: events.Cause{EventID: fmt.Sprintf("c-%d", n), Type: events.TypeHeartbeat, Seq: n}, Partition: events.Partition(dev, partitions)}
	data, err := events.EncodeStatusChanged(e)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := f.js.Publish(context.Background(), events.TransitionSubject(dev, partitions), data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func (f *fixture) register(t *testing.T, dev, group string) uint64 {
	return f.input(t, &events.Input{Type: events.TypeDeviceRegistered, Device: dev, At: at(0), Registered: &events.Registered{Group: group}})
}

func (f *fixture) heartbeat(t *testing.T, dev string, s float64, metrics string) uint64 {
	hb := &events.Heartbeat{}
	if metrics != "" {
		hb.Metrics = json.RawMessage(metrics)
	}
	return f.input(t, &events.Input{Type: events.TypeHeartbeat, Device: dev, At: at(s), Heartbeat: hb})
}

// wait blocks until both projections stored at least the given sequences.
func (f *fixture) wait(t *testing.T, in, tr uint64) {
	t.Helper()
	st := projections.NewStore(f.db)
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, err1 := st.Checkpoint(context.Background(), projections.ProjectionLiveness)
		b, err2 := st.Checkpoint(context.Background(), projections.ProjectionTransitions)
		if err1 == nil && err2 == nil && a >= in && b >= tr {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("projection did not reach input %d / transitions %d (at %d / %d)", in, tr, a, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// escape percent-encodes every byte outside A-Z a-z 0-9 - _ ~ (so "." and
// ".." cannot be read as path segments).
func escape(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// get requests path (already escaped) with the admin token and decodes the
// JSON answer into out (when non-nil); it returns the status and the body.
func (f *fixture) get(t *testing.T, path string, out any) (int, string) {
	t.Helper()
	return doGet(t, f.srv.URL+path, "Bearer "+token, out)
}

func doGet(t *testing.T, u, auth string, out any) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: content type %q, body %s", u, ct, body)
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v: %s", u, err, body)
		}
	}
	return resp.StatusCode, string(body)
}

// populate projects a small fleet:
//
//	c1..c4   group "lobby", connected (heartbeat at 590, 580, 500, 100)
//	o1, o2   group "lab", temporarily_offline (heartbeat at 60)
//	d1       group "lab", disconnected (heartbeat at 60)
//	r1       group "",    registered, never heard from
//	gone     decommissioned
//	odd ids  group "odd", connected
func populate(t *testing.T, f *fixture) {
	t.Helper()
	var in, tr uint64
	conn := func(id, group string, hb float64) {
		f.register(t, id, group)
		in = f.heartbeat(t, id, hb, `{"battery":`+fmt.Sprint(int(hb)%100)+`}`)
		tr = f.transition(t, id, events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, hb)
	}
	conn("c1", "lobby", 590)
	conn("c2", "lobby", 580)
	conn("c3", "lobby", 500)
	conn("c4", "lobby", 100)
	for _, id := range []string{"o1", "o2", "d1"} {
		conn(id, "lab", 60)
		tr = f.transition(t, id, events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 100)
	}
	tr = f.transition(t, "d1", events.StatusTemporarilyOffline, events.StatusDisconnected, events.ReasonLivenessTimeout, 360)
	f.register(t, "r1", "")
	conn("gone", "lobby", 10)
	in = f.input(t, &events.Input{Type: events.TypeDeviceDecommissioned, Device: "gone", At: at(20)})
	for _, id := range oddIDs {
		conn(id, "odd", 300)
	}
	in = f.input(t, &events.Input{Type: events.TypePingResult, Device: "o1", At: at(120),
		Ping: &events.PingResult{OK: false, RTTMs: 2000, CheckedAt: at(119), Error: "timeout"}})
	f.wait(t, in, tr)
}

func TestDevice(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	populate(t, f)

	// The exact wire shape.
	code, body := f.get(t, "/v1/devices/o1", nil)
	if code != 200 {
		t.Fatalf("GET o1: %d %s", code, body)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "group", "status", "status_since", "reason", "last_heartbeat_at", "last_ping_at",
		"last_ping_ok", "metrics", "remote_control_enabled"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("device JSON lacks %q: %s", k, body)
		}
	}
	want := map[string]string{
		"id": `"o1"`, "group": `"lab"`, "status": `"temporarily_offline"`, "status_since": `"2026-01-02T03:01:40Z"`,
		"reason": `"heartbeat_timeout at 100"`, "reason_code": `"heartbeat_timeout"`,
		"last_heartbeat_at": `"2026-01-02T03:01:00Z"`, "last_ping_at": `"2026-01-02T03:01:59Z"`, "last_ping_ok": `false`,
		"metrics": `{"battery":60}`, "remote_control_enabled": `false`, "gateway": `null`, "registered_at": `"2026-01-02T03:00:00Z"`,
	}
	for k, v := range want {
		if got := compactJSON(t, raw[k]); got != v {
			t.Errorf("%s = %s, want %s", k, got, v)
		}
	}

	// Never heard from: nulls, not zero times.
	var r1 DeviceJSON
	if code, body := f.get(t, "/v1/devices/r1", &r1); code != 200 {
		t.Fatalf("r1: %d %s", code, body)
	}
	if r1.Status != events.StatusRegistered || r1.LastHeartbeatAt != nil || r1.LastPingAt != nil || r1.LastPingOK != nil || string(r1.Metrics) != "null" {
		t.Errorf("r1 = %+v", r1)
	}
	if _, body := f.get(t, "/v1/devices/r1", nil); !strings.Contains(body, `"last_ping_at":null`) || !strings.Contains(body, `"metrics":null`) {
		t.Errorf("r1 body: %s", body)
	}

	// Every odd id, escaped, routes to itself (device and history).
	for _, id := range oddIDs {
		var d DeviceJSON
		if code, body := f.get(t, "/v1/devices/"+escape(id), &d); code != 200 || d.ID != id || d.Status != events.StatusConnected {
			t.Errorf("GET device %q: %d %s", id, code, body)
		}
		var trs TransitionsJSON
		if code, body := f.get(t, "/v1/devices/"+escape(id)+"/transitions", &trs); code != 200 || len(trs.Transitions) != 1 {
			t.Errorf("GET transitions of %q: %d %s", id, code, body)
		}
		// The form browsers can send for "." and ".." (they drop those
		// segments, even as %2E): "~" with the id in the query.
		if code, body := f.get(t, "/v1/devices/~?id="+url.QueryEscape(id), &d); code != 200 || d.ID != id {
			t.Errorf("GET device %q (~?id=): %d %s", id, code, body)
		}
		var av AvailabilityJSON
		if code, body := f.get(t, "/v1/devices/~/availability?id="+url.QueryEscape(id), &av); code != 200 || av.ID != id {
			t.Errorf("GET availability of %q (~?id=): %d %s", id, code, body)
		}
		// url.PathEscape leaves "." and ".." alone; the others route that way too.
		if id != "." && id != ".." {
			if code, body := f.get(t, "/v1/devices/"+url.PathEscape(id), &d); code != 200 || d.ID != id {
				t.Errorf("GET device %q (PathEscape): %d %s", id, code, body)
			}
		}
	}
}

func compactJSON(t *testing.T, b json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func TestErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	populate(t, f)
	cases := []struct {
		name, path, auth string
		code             int
		errCode          string
	}{
		{"no token", "/v1/devices/c1", "", 401, httpx.CodeUnauthorized},
		{"wrong token", "/v1/devices/c1", "Bearer nope", 401, httpx.CodeUnauthorized},
		{"basic auth", "/v1/summary", "Basic YWRtaW46c2VjcmV0", 401, httpx.CodeUnauthorized},
		{"no token list", "/v1/devices", "", 401, httpx.CodeUnauthorized},
		{"no token transitions", "/v1/devices/c1/transitions", "", 401, httpx.CodeUnauthorized},
		{"unknown device", "/v1/devices/nope", "", 404, httpx.CodeNotFound},
		{"decommissioned", "/v1/devices/gone", "", 404, httpx.CodeNotFound},
		{"transitions of unknown", "/v1/devices/nope/transitions", "", 404, httpx.CodeNotFound},
		{"transitions of decommissioned", "/v1/devices/gone/transitions", "", 404, httpx.CodeNotFound},
		{"NUL id", "/v1/devices/a%00b", "", 400, httpx.CodeInvalidDeviceID},
		{"control id", "/v1/devices/a%0Ab", "", 400, httpx.CodeInvalidDeviceID},
		{"invalid UTF-8 id", "/v1/devices/%FF", "", 400, httpx.CodeInvalidDeviceID},
		{"long id", "/v1/devices/" + strings.Repeat("x", 129), "", 400, httpx.CodeInvalidDeviceID},
		{"bad status", "/v1/devices?status=online", "", 400, httpx.CodeBadRequest},
		{"two statuses", "/v1/devices?status=connected&status=registered", "", 400, httpx.CodeBadRequest},
		{"limit 0", "/v1/devices?limit=0", "", 400, httpx.CodeBadRequest},
		{"limit too big", "/v1/devices?limit=1001", "", 400, httpx.CodeBadRequest},
		{"limit not a number", "/v1/devices?limit=ten", "", 400, httpx.CodeBadRequest},
		{"bad cursor", "/v1/devices?cursor=%21%21", "", 400, httpx.CodeBadRequest},
		{"cursor of a NUL id", "/v1/devices?cursor=AA", "", 400, httpx.CodeBadRequest},
		{"negative stale_for", "/v1/devices?stale_for=-5", "", 400, httpx.CodeBadRequest},
		{"zero stale_for", "/v1/devices?stale_for=0", "", 400, httpx.CodeBadRequest},
		{"bad stale_for", "/v1/devices?stale_for=soon", "", 400, httpx.CodeBadRequest},
		{"NUL group", "/v1/devices?group=a%00", "", 400, httpx.CodeBadRequest},
		{"bad from", "/v1/devices/c1/transitions?from=yesterday", "", 400, httpx.CodeBadRequest},
		{"from after to", "/v1/devices/c1/transitions?from=2026-01-02T04:00:00Z&to=2026-01-02T03:00:00Z", "", 400, httpx.CodeBadRequest},
		{"transitions limit", "/v1/devices/c1/transitions?limit=100000", "", 400, httpx.CodeBadRequest},
		{"bad sort", "/v1/devices?sort=name", "", 400, httpx.CodeBadRequest},
		{"id cursor with another sort", "/v1/devices?sort=-id&cursor=YzE", "", 400, httpx.CodeBadRequest},
		{"sorted cursor with id sort", "/v1/devices?cursor=k.eyJzIjoiLWlkIiwidCI6bnVsbCwiaWQiOiJjMSJ9", "", 400, httpx.CodeBadRequest},
		{"NUL prefix", "/v1/devices?prefix=a%00", "", 400, httpx.CodeBadRequest},
		{"long prefix", "/v1/devices?prefix=" + strings.Repeat("x", 129), "", 400, httpx.CodeBadRequest},
		{"no token status at", "/v1/devices/c1/status", "", 401, httpx.CodeUnauthorized},
		{"no token availability", "/v1/devices/c1/availability", "", 401, httpx.CodeUnauthorized},
		{"status at unknown", "/v1/devices/nope/status", "", 404, httpx.CodeNotFound},
		{"status at decommissioned", "/v1/devices/gone/status?at=2026-01-02T03:00:00Z", "", 404, httpx.CodeNotFound},
		{"availability of unknown", "/v1/devices/nope/availability", "", 404, httpx.CodeNotFound},
		{"bad at", "/v1/devices/c1/status?at=noon", "", 400, httpx.CodeBadRequest},
		{"availability from after to", "/v1/devices/c1/availability?from=2026-01-02T03:05:00Z&to=2026-01-02T03:04:00Z", "", 400, httpx.CodeBadRequest},
		{"availability from after now", "/v1/devices/c1/availability?from=2026-01-02T04:00:00Z", "", 400, httpx.CodeBadRequest},
		{"availability bad to", "/v1/devices/c1/availability?to=later", "", 400, httpx.CodeBadRequest},
		{"availability over 100 years", "/v1/devices/c1/availability?from=1900-01-01T00:00:00Z", "", 400, httpx.CodeBadRequest},
	}
	// Exact messages of 400s that come from the store's errors (which carry
	// the Go package prefix "projections: invalid filter: …").
	messages := map[string]string{
		"bad sort":                    `sort must be one of id, -id, status_since, -status_since, last_heartbeat_at, -last_heartbeat_at; got "name"`,
		"bad cursor":                  "invalid cursor: not base64url",
		"cursor of a NUL id":          "invalid cursor: device id contains a control or non-printable character (at byte 0)",
		"id cursor with another sort": "invalid cursor: the cursor belongs to sort=id, not sort=-id",
		"sorted cursor with id sort":  "invalid cursor: the cursor belongs to sort=-id, not sort=id",
	}
	goPrefix := regexp.MustCompile(`\b(projections|readapi|events|httpx|registry|bridge|sql|pq|pgx)(/[a-z]+)?: `)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			auth := c.auth
			if auth == "" && c.code != 401 {
				auth = "Bearer " + token
			}
			code, body := doGet(t, f.srv.URL+c.path, auth, nil)
			if code != c.code {
				t.Fatalf("%s: %d %s, want %d", c.path, code, body, c.code)
			}
			var eb httpx.ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Code != c.errCode || eb.Error.Message == "" {
				t.Errorf("%s: error body %s, want code %q", c.path, body, c.errCode)
			}
			if goPrefix.MatchString(eb.Error.Message) {
				t.Errorf("%s: the message leaks a Go package prefix: %q", c.path, eb.Error.Message)
			}
			if want, ok := messages[c.name]; ok && eb.Error.Message != want {
				t.Errorf("%s: message %q, want %q", c.path, eb.Error.Message, want)
			}
		})
	}
}

func TestListFilters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	populate(t, f)
	odd := append([]string(nil), oddIDs...)
	sortBytes(odd)
	cases := []struct {
		query string
		want  []string
	}{
		{"status=connected&group=lobby", []string{"c1", "c2", "c3", "c4"}},
		{"status=temporarily_offline", []string{"o1", "o2"}},
		{"status=disconnected", []string{"d1"}},
		{"status=registered", []string{"r1"}},
		{"group=lab", []string{"d1", "o1", "o2"}},
		{"group=nope", nil},
		// now = 600: silent for longer than 30 s → heartbeat before 570 (or,
		// never heard from, registered before 570).
		{"group=lobby&stale_for=30", []string{"c3", "c4"}},
		{"group=lobby&stale_for=30s", []string{"c3", "c4"}},
		{"group=lobby&stale_for=2m", []string{"c4"}},
		{"stale_for=539", []string{"d1", "o1", "o2", "r1"}}, // heartbeat at 60; r1 registered at 0, never heard
		{"stale_for=9m", []string{"r1"}},                    // silent 600 s
		{"stale_for=10m", nil},                              // exactly 600 s is not "longer than"
		{"stale_for=1h", nil},                               // r1 was registered 10 min ago: not silent for an hour
		{"status=registered&stale_for=10", []string{"r1"}},
		{"group=odd", odd},
		{"group=odd&status=disconnected", nil},
		// id prefix: bytes, LIKE wildcards taken literally.
		{"prefix=c", []string{"c1", "c2", "c3", "c4"}},
		{"prefix=a", []string{"a b", "a%2Fb", "a//b", "a/b"}},
		{"prefix=%25", []string{"%2F"}},
		{"prefix=a_", nil},
		{"prefix=a%25", []string{"a%2Fb"}},
		{"prefix=%E6%9D%B1", []string{"東京/Gerät"}},
		{"prefix=c&status=connected&group=lobby&stale_for=30", []string{"c3", "c4"}},
		// sorting, ties by id.
		{"group=lab&sort=-id", []string{"o2", "o1", "d1"}},
		{"group=lab&sort=status_since", []string{"o1", "o2", "d1"}},
		{"group=lab&sort=-status_since", []string{"d1", "o2", "o1"}},
		{"group=lobby&sort=last_heartbeat_at", []string{"c4", "c3", "c2", "c1"}},
		{"group=lobby&sort=-last_heartbeat_at", []string{"c1", "c2", "c3", "c4"}},
		{"prefix=r&sort=-last_heartbeat_at", []string{"r1"}},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			var page ListJSON
			if code, body := f.get(t, "/v1/devices?"+c.query, &page); code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			var ids []string
			for _, d := range page.Devices {
				ids = append(ids, d.ID)
			}
			if !reflect.DeepEqual(ids, c.want) || page.NextCursor != nil {
				t.Errorf("got %q (next %v), want %q", ids, page.NextCursor, c.want)
			}
		})
	}
	// An empty page is [] and null, not null and "".
	if _, body := f.get(t, "/v1/devices?group=nope", nil); strings.TrimSpace(body) != `{"devices":[],"next_cursor":null}` {
		t.Errorf("empty page: %s", body)
	}
	// The whole fleet in pages of 4: every live device once, in byte order.
	all := walk(t, f, "limit=4")
	want := append([]string{"c1", "c2", "c3", "c4", "d1", "o1", "o2", "r1"}, oddIDs...)
	sortBytes(want)
	if !reflect.DeepEqual(all, want) {
		t.Errorf("walk:\n got %q\nwant %q", all, want)
	}
	// Every sort, walked in pages of 3 (cursors across ties and the null
	// heartbeat of r1), gives the order of one big page.
	for _, sort := range projections.SortKeys {
		var page ListJSON
		if code, body := f.get(t, "/v1/devices?limit=1000&sort="+sort, &page); code != 200 {
			t.Fatalf("%s: %d %s", sort, code, body)
		}
		var one []string
		for _, d := range page.Devices {
			one = append(one, d.ID)
		}
		if got := walk(t, f, "limit=3&sort="+sort); !reflect.DeepEqual(got, one) || len(one) != len(want) {
			t.Errorf("sort=%s walk:\n got %q\nwant %q", sort, got, one)
		}
		key := func(d DeviceJSON) time.Time {
			switch strings.TrimPrefix(sort, "-") {
			case "status_since":
				return d.StatusSince
			case "last_heartbeat_at":
				if d.LastHeartbeatAt == nil {
					return time.Time{}
				}
				return *d.LastHeartbeatAt
			}
			return time.Time{}
		}
		for i := 1; i < len(page.Devices); i++ {
			a, b := page.Devices[i-1], page.Devices[i]
			less := key(a).Before(key(b)) || key(a).Equal(key(b)) && a.ID < b.ID
			if strings.HasPrefix(sort, "-") {
				less = key(a).After(key(b)) || key(a).Equal(key(b)) && a.ID > b.ID
			}
			if !less {
				t.Errorf("sort=%s: %q before %q", sort, a.ID, b.ID)
			}
		}
	}
}

func sortBytes(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// walk follows next_cursor from the first page and returns the ids seen.
func walk(t *testing.T, f *fixture, query string) []string {
	t.Helper()
	var ids []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatal("pagination does not end")
		}
		q := query
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		var page ListJSON
		if code, body := f.get(t, "/v1/devices?"+q, &page); code != 200 {
			t.Fatalf("page %d: %d %s", pages, code, body)
		}
		for _, d := range page.Devices {
			ids = append(ids, d.ID)
		}
		if page.NextCursor == nil {
			return ids
		}
		cursor = *page.NextCursor
	}
}

// Pagination while statuses change underneath: every device is seen exactly
// once per walk.
func TestPaginationUnderConcurrentUpdates(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const n = 120
	ids := make([]string, n)
	var in, tr uint64
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%03d", i)
		in = f.register(t, ids[i], "fleet")
		tr = f.transition(t, ids[i], events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	}
	f.wait(t, in, tr)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var published atomic.Int64
	wg.Go(func() { // flap random devices as fast as the projector takes it
		states := []events.Status{events.StatusConnected, events.StatusTemporarilyOffline}
		cur := make([]int, n)
		for k := 0; ctx.Err() == nil; k++ {
			i := rand.IntN(n)
			from, to := states[cur[i]], states[1-cur[i]]
			cur[i] = 1 - cur[i]
			f.transition(t, ids[i], from, to, events.ReasonHeartbeatTimeout, float64(2+k))
			f.heartbeat(t, ids[i], float64(2+k), "")
			published.Add(1)
		}
	})
	rev := slices.Clone(ids)
	slices.Reverse(rev)
	for walkN := range 5 {
		got := walk(t, f, "group=fleet&limit=7")
		if !reflect.DeepEqual(got, ids) {
			t.Errorf("walk %d: %d devices, want every one of %d exactly once", walkN, len(got), n)
		}
		// Descending by id: the same guarantee.
		got = walk(t, f, "group=fleet&limit=7&sort=-id")
		if !reflect.DeepEqual(got, rev) {
			t.Errorf("walk %d (sort=-id): %d devices, want every one of %d exactly once", walkN, len(got), n)
		}
	}
	cancel()
	wg.Wait()
	if published.Load() == 0 {
		t.Error("no concurrent updates happened")
	}
	t.Logf("%d transitions published during the walks", published.Load())
}

func TestTransitionsAndSummary(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	populate(t, f)

	var trs TransitionsJSON
	if code, body := f.get(t, "/v1/devices/d1/transitions", &trs); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	got := []string{}
	for _, x := range trs.Transitions {
		got = append(got, fmt.Sprintf("%s>%s %s %s", x.From, x.To, x.ReasonCode, x.At.Format(time.RFC3339)))
	}
	want := []string{
		"registered>connected heartbeat 2026-01-02T03:01:00Z",
		"connected>temporarily_offline heartbeat_timeout 2026-01-02T03:01:40Z",
		"temporarily_offline>disconnected liveness_timeout 2026-01-02T03:06:00Z",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("history:\n got %q\nwant %q", got, want)
	}
	_, body := f.get(t, "/v1/devices/d1/transitions", nil)
	if !strings.Contains(body, `{"from":"registered","to":"connected","reason_code":"heartbeat","reason":"heartbeat at 60","at":"2026-01-02T03:01:00Z"}`) {
		t.Errorf("transition shape: %s", body)
	}
	windows := []struct {
		query string
		n     int
		first string
	}{
		{"limit=1", 1, "2026-01-02T03:06:00Z"}, // no from: the latest
		{"from=2026-01-02T03:01:00Z&limit=1", 1, "2026-01-02T03:01:00Z"},
		{"from=2026-01-02T03:01:00.000001Z", 2, "2026-01-02T03:01:40Z"},
		{"to=2026-01-02T03:06:00Z", 2, "2026-01-02T03:01:00Z"},
		{"from=2026-01-02T03:01:40Z&to=2026-01-02T03:01:40.5Z", 1, "2026-01-02T03:01:40Z"},
		{"from=2027-01-01T00:00:00Z", 0, ""},
	}
	for _, w := range windows {
		var trs TransitionsJSON
		if code, body := f.get(t, "/v1/devices/d1/transitions?"+w.query, &trs); code != 200 || len(trs.Transitions) != w.n ||
			(w.n > 0 && trs.Transitions[0].At.Format(time.RFC3339) != w.first) {
			t.Errorf("%s: %d %s", w.query, code, body)
		}
	}

	var sum SummaryJSON
	if code, body := f.get(t, "/v1/summary", &sum); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	wantSum := CountsJSON{Registered: 1, Connected: 4 + int64(len(oddIDs)), TemporarilyOffline: 2, Disconnected: 1, Total: 8 + int64(len(oddIDs))}
	if sum.CountsJSON != wantSum {
		t.Errorf("summary %+v, want %+v", sum.CountsJSON, wantSum)
	}
	if sum.Groups["lab"] != (CountsJSON{TemporarilyOffline: 2, Disconnected: 1, Total: 3}) || sum.Groups[""].Registered != 1 ||
		sum.Groups["lobby"].Connected != 4 || len(sum.Groups) != 4 {
		t.Errorf("groups %+v", sum.Groups)
	}
	_, body = f.get(t, "/v1/summary", nil)
	for _, k := range []string{`"registered":`, `"connected":`, `"temporarily_offline":`, `"disconnected":`} {
		if !strings.HasPrefix(body, "{") || !strings.Contains(body, k) {
			t.Errorf("summary lacks %s: %s", k, body)
		}
	}
}

// An empty fleet still answers every status key with 0, and the outage
// hold (off without a hold source).
func TestSummaryEmpty(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, body := f.get(t, "/v1/summary", nil)
	if strings.TrimSpace(body) != `{"registered":0,"connected":0,"temporarily_offline":0,"disconnected":0,"total":0,"groups":{},"outage_hold":{"active":false,"since":null,"reason":""}}` {
		t.Errorf("empty summary: %s", body)
	}
}

// The read API shares one mux with the bridge's patterns without a conflict
// (ServeMux panics on conflicting patterns), and each method reaches its own
// handler.
func TestRoutesCoexistWithBridgePatterns(t *testing.T) {
	t.Parallel()
	a, err := New(Config{Store: nilReader{}, AdminToken: token})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	bridge := []string{
		"POST /v1/devices/{id}/heartbeat", "POST /v1/devices/{id}/ping", "POST /v1/devices",
		"PATCH /v1/devices/{id}", "DELETE /v1/devices/{id}", "POST /v1/devices/{id}/reconnect",
		"POST /v1/gateways", "POST /v1/gateways/{id}/heartbeats", "GET /{$}", "GET /assets/",
	}
	for _, p := range bridge {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-Route", p) })
	}
	a.Routes(mux)
	h := httpx.DeviceIDs(mux)
	for _, c := range []struct{ method, path, route string }{
		{"POST", "/v1/devices/x/heartbeat", "POST /v1/devices/{id}/heartbeat"},
		{"PATCH", "/v1/devices/x", "PATCH /v1/devices/{id}"},
		{"DELETE", "/v1/devices/..", "DELETE /v1/devices/{id}"},
		{"POST", "/v1/devices", "POST /v1/devices"},
		{"GET", "/v1/devices/x", ""},
		{"GET", "/v1/devices/x/transitions", ""},
		{"GET", "/v1/devices", ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if got := rec.Header().Get("X-Route"); got != c.route {
			t.Errorf("%s %s routed to %q, want %q", c.method, c.path, got, c.route)
		}
		if c.route == "" && rec.Code != http.StatusUnauthorized {
			t.Errorf("%s %s: %d, want the read API's 401", c.method, c.path, rec.Code)
		}
	}
}

type nilReader struct{}

func (nilReader) Device(context.Context, string) (*projections.Device, error) {
	return nil, projections.ErrNotFound
}
func (nilReader) List(context.Context, projections.ListFilter, time.Time) (*projections.Page, error) {
	return &projections.Page{}, nil
}
func (nilReader) Transitions(context.Context, string, time.Time, time.Time, int) ([]projections.Transition, error) {
	return nil, nil
}
func (nilReader) Summary(context.Context) (*projections.Summary, error) {
	return &projections.Summary{}, nil
}
func (nilReader) StatusAt(context.Context, string, time.Time) (*projections.PastStatus, error) {
	return nil, projections.ErrNotFound
}
func (nilReader) Availability(context.Context, string, time.Time, time.Time) (*projections.Availability, error) {
	return nil, projections.ErrNotFound
}
func (nilReader) FleetTransitions(context.Context, projections.TransitionFilter) (*projections.TransitionPage, error) {
	return &projections.TransitionPage{}, nil
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{AdminToken: token}); err == nil {
		t.Error("no store accepted")
	}
	if _, err := New(Config{Store: nilReader{}}); err == nil {
		t.Error("no admin token accepted")
	}
}

// GET /v1/summary carries the hold source's state: active with its start
// (RFC 3339 UTC) and reason, and since null once it ended.
func TestSummaryOutageHold(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := OutageHold{Active: true, Since: &since, Reason: "12 of 20 connected devices went silent within 40s"}
	a, err := New(Config{Store: nilReader{}, AdminToken: token, Hold: func() (OutageHold, <-chan struct{}) { return st, nil }})
	if err != nil {
		t.Fatal(err)
	}
	get := func() string {
		req := httptest.NewRequest(http.MethodGet, "/v1/summary", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("summary: %d %s", rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	if body := get(); !strings.Contains(body, `"outage_hold":{"active":true,"since":"2026-01-02T03:04:05Z","reason":"12 of 20 connected devices went silent within 40s"}`) {
		t.Errorf("active hold: %s", body)
	}
	st = OutageHold{Reason: "released by admin"}
	if body := get(); !strings.Contains(body, `"outage_hold":{"active":false,"since":null,"reason":"released by admin"}`) {
		t.Errorf("ended hold: %s", body)
	}
}
