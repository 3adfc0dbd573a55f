package bridge

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// tracked reports whether the limiter holds state (spent budget) for id.
func (l *limiter) tracked(id string) bool {
	s := l.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[id]
	return ok
}

// TestHeartbeatAuth: every authentication case of the heartbeat, with the
// rate limit on: no refused request publishes or spends rate budget, and
// refusals that could reveal whether an id exists answer identically.
//
// Decisions (README): missing, malformed or wrong token → 401, the same body
// whether the id exists or not; the valid token of another device → 403,
// whether the target id exists or not; the device's own token after it was
// decommissioned → 404; service and admin tokens are not device tokens (401).
func TestHeartbeatAuth(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d1", "")
	tok2 := e.register("d2", "")
	tok3 := e.register("d3", "")
	if r := e.do("DELETE", devPath("d3", ""), adminToken, "", nil); r.code != 204 {
		t.Fatalf("decommission: %d", r.code)
	}
	cases := []struct {
		name, id, auth string
		code           int
		ecode          string
	}{
		{"no token", "d1", "", 401, httpx.CodeUnauthorized},
		{"empty bearer", "d1", "Bearer ", 401, httpx.CodeUnauthorized},
		{"wrong token", "d1", "nope", 401, httpx.CodeUnauthorized},
		{"basic scheme", "d1", "Basic " + tok, 401, httpx.CodeUnauthorized},
		{"token without scheme", "d1", "=" + tok, 401, httpx.CodeUnauthorized},
		{"admin token", "d1", adminToken, 401, httpx.CodeUnauthorized},
		{"ping service token", "d1", pingToken, 401, httpx.CodeUnauthorized},
		{"unknown device, random token", "ghost", "nope", 401, httpx.CodeUnauthorized},
		{"unknown device, no token", "ghost", "", 401, httpx.CodeUnauthorized},
		{"decommissioned, wrong token", "d3", "nope", 401, httpx.CodeUnauthorized},
		{"decommissioned device's token on another", "d1", tok3, 401, httpx.CodeUnauthorized},
		{"other device's token", "d1", tok2, 403, httpx.CodeForbidden},
		{"other device's token, unknown device", "ghost", tok2, 403, httpx.CodeForbidden},
		{"decommissioned, its own token", "d3", tok3, 404, httpx.CodeNotFound},
	}
	before := len(e.inputEvents())
	bodies := map[int][]byte{}
	for _, c := range cases {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+devPath(c.id, "/heartbeat"), nil)
		switch {
		case c.auth == "":
		case strings.HasPrefix(c.auth, "="):
			req.Header.Set("Authorization", c.auth[1:])
		case strings.Contains(c.auth, " "):
			req.Header.Set("Authorization", c.auth)
		default:
			req.Header.Set("Authorization", "Bearer "+c.auth)
		}
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r := result{code: resp.StatusCode, hdr: resp.Header, body: body}
		if r.code != c.code || r.errCode(t) != c.ecode {
			t.Errorf("%s: %d %s, want %d %s", c.name, r.code, body, c.code, c.ecode)
			continue
		}
		if prev, ok := bodies[c.code]; ok && !bytes.Equal(prev, body) {
			t.Errorf("%s: %d body %s differs from %s (ids could be probed)", c.name, c.code, body, prev)
		}
		bodies[c.code] = body
		if c.code == 401 && r.hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", c.name)
		}
	}
	if n := len(e.inputEvents()); n != before {
		t.Errorf("refused heartbeats published %d events", n-before)
	}
	for _, id := range []string{"d1", "d2", "d3", "ghost"} {
		if e.br.lim.tracked(id) {
			t.Errorf("a refused heartbeat spent %q's rate budget", id)
		}
	}
	// The right token, any case of the scheme: accepted (budget intact).
	for i, scheme := range []string{"Bearer ", "bearer ", "BEARER "} {
		e.clk.Advance(10 * time.Second)
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+devPath("d1", "/heartbeat"), nil)
		req.Header.Set("Authorization", scheme+tok)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("#%d %q: %d", i, scheme, resp.StatusCode)
		}
	}
	if n := len(heartbeatsOf(e.inputEvents(), "d1")); n != 3 {
		t.Errorf("%d heartbeats stored for d1, want the 3 accepted", n)
	}
}

// TestServiceTokens: the ping endpoint takes only the service token, the
// admin endpoints only the admin token.
func TestServiceTokens(t *testing.T) {
	e := newEnv(t)
	dev := e.register("d", "")
	before := len(e.inputEvents())
	for _, c := range []struct {
		name, method, path, token, body string
	}{
		{"device token on ping", "POST", devPath("d", "/ping"), dev, `{"ok":true}`},
		{"admin token on ping", "POST", devPath("d", "/ping"), adminToken, `{"ok":true}`},
		{"device token on register", "POST", "/v1/devices", dev, `{"id":"x"}`},
		{"ping token on register", "POST", "/v1/devices", pingToken, `{"id":"x"}`},
		{"device token on reconnect", "POST", devPath("d", "/reconnect"), dev, ``},
		{"device token on re-key", "POST", devPath("d", "/token"), dev, ``},
		{"ping token on re-key", "POST", devPath("d", "/token"), pingToken, ``},
		{"device token on patch", "PATCH", devPath("d", ""), dev, `{"remote_control_enabled":true}`},
		{"device token on delete", "DELETE", devPath("d", ""), dev, ``},
		{"device token on events", "GET", devPath("d", "/events"), dev, ``},
		{"no token on events", "GET", devPath("d", "/events"), "", ``},
	} {
		var body io.Reader
		ct := ""
		if c.body != "" {
			body, ct = strings.NewReader(c.body), "application/json"
		}
		if r := e.do(c.method, c.path, c.token, ct, body); r.code != 401 || r.errCode(t) != httpx.CodeUnauthorized {
			t.Errorf("%s: %d %s", c.name, r.code, r.body)
		}
	}
	if n := len(e.inputEvents()); n != before {
		t.Errorf("refused calls published %d events", n-before)
	}
	if r := e.do("POST", devPath("d", "/ping"), pingToken, "application/json", strings.NewReader(`{"ok":true}`)); r.code != 202 {
		t.Errorf("ping with the service token: %d", r.code)
	}
}

// TestRekeyInvalidatesOnlyThatDevice is Done-when 3: re-keying device A
// makes A's old token fail at once, on this instance and (through the KV
// watch) on another one, while device B's cached entry stays warm
// (registry.CacheStats: B's next look-up is a hit, no flush).
func TestRekeyInvalidatesOnlyThatDevice(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RateMinInterval, c.RatePerMinute = 0, 0 })
	e2 := newEnvOnBus(t, e.bus, func(c *Config) { c.RateMinInterval, c.RatePerMinute = 0, 0 })
	tokA := e.register("A", "")
	tokB := e.register("B", "")
	for _, x := range []*env{e, e2} {
		for i := 0; i < 2; i++ { // fill the cache, then hit it
			for id, tok := range map[string]string{"A": tokA, "B": tokB} {
				if r := x.heartbeat(id, tok, ""); r.code != 200 {
					t.Fatalf("%s: %d", id, r.code)
				}
			}
		}
	}
	s1, s2 := e.reg.CacheStats(), e2.reg.CacheStats()
	if s1.Entries < 2 || s2.Entries < 2 {
		t.Fatalf("caches not warm: %+v %+v", s1, s2)
	}

	r := e.do("POST", devPath("A", "/token"), adminToken, "", nil)
	if r.code != 200 {
		t.Fatalf("re-key: %d %s", r.code, r.body)
	}
	m := r.obj(t)
	newA, _ := m["token"].(string)
	if m["id"] != "A" || len(newA) < 43 || newA == tokA || len(m) != 2 {
		t.Fatalf("re-key answer %s", r.body)
	}
	// This instance: at once.
	if r := e.heartbeat("A", tokA, ""); r.code != 401 {
		t.Errorf("old token right after the re-key: %d", r.code)
	}
	if r := e.heartbeat("A", newA, ""); r.code != 200 {
		t.Errorf("new token: %d %s", r.code, r.body)
	}
	if r := e.heartbeat("B", newA, ""); r.code != 403 {
		t.Errorf("A's new token on B: %d", r.code)
	}
	// The other instance: as soon as its watch has applied the change.
	dev, err := e.reg.Get(context.Background(), "A")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "watch of instance 2", func() bool { return e2.reg.CacheStats().WatchedRevision >= dev.Revision })
	if r := e2.heartbeat("A", tokA, ""); r.code != 401 {
		t.Errorf("old token on instance 2: %d", r.code)
	}
	if r := e2.heartbeat("A", newA, ""); r.code != 200 {
		t.Errorf("new token on instance 2: %d", r.code)
	}
	// B stayed warm on both instances; nothing was flushed; A's entry took
	// its new value on each (the writer's own update, the other's watch).
	for i, x := range []*env{e, e2} {
		before := x.reg.CacheStats()
		if r := x.heartbeat("B", tokB, ""); r.code != 200 {
			t.Fatalf("B: %d", r.code)
		}
		after := x.reg.CacheStats()
		if after.Misses != before.Misses || after.Hits != before.Hits+1 {
			t.Errorf("instance %d: B's entry went cold: %+v → %+v", i+1, before, after)
		}
		was := []struct{ inv, ref, fl uint64 }{{s1.Invalidations, s1.Refreshes, s1.Flushes}, {s2.Invalidations, s2.Refreshes, s2.Flushes}}[i]
		if after.Flushes != was.fl || after.Invalidations+after.Refreshes < was.inv+was.ref+1 {
			t.Errorf("instance %d: stats %+v (before the re-key: %d invalidations, %d refreshes, %d flushes)", i+1, after, was.inv, was.ref, was.fl)
		}
	}
	// Errors.
	if r := e.do("POST", devPath("ghost", "/token"), adminToken, "", nil); r.code != 404 {
		t.Errorf("re-key unknown: %d", r.code)
	}
	if r := e.do("DELETE", devPath("B", ""), adminToken, "", nil); r.code != 204 {
		t.Fatal(r.code)
	}
	if r := e.do("POST", devPath("B", "/token"), adminToken, "", nil); r.code != 404 {
		t.Errorf("re-key decommissioned: %d", r.code)
	}
	if r := e.do("POST", "/v1/devices/a%01/token", adminToken, "", nil); r.code != 400 {
		t.Errorf("re-key bad id: %d", r.code)
	}
}
