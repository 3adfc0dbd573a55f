package service

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/openapi"
)

const (
	testAdmin = "admin-secret"
	testPing  = "ping-secret"
)

// startInstance starts a service with roles on b (nil: a fresh embedded
// JetStream server that also listens on loopback, so that a second instance
// can join it) and the Postgres schema dsn.
func startInstance(t *testing.T, dsn string, busCfg bus.Config, roles []string) *Service {
	t.Helper()
	if busCfg.URL == "" && busCfg.DataDir == "" {
		busCfg = bus.Config{DataDir: t.TempDir(), ListenAddr: "127.0.0.1:-1", Partitions: 4}
	}
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: busCfg, DatabaseURL: dsn, Roles: roles,
		AdminToken: testAdmin, PingToken: testPing, Migrate: busCfg.URL == "", Logger: testenv.LoggerAt(t, 4)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svc.Stop(ctx)
	})
	return svc
}

// specValidator checks real answers against openapi.json.
type specValidator struct{ v validator.Validator }

func newSpecValidator(t *testing.T) specValidator {
	t.Helper()
	doc, err := libopenapi.NewDocument(openapi.Document())
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return specValidator{v}
}

// answer is a response with its body read.
type answer struct {
	code int
	hdr  http.Header
	body []byte
}

func (a answer) json(t *testing.T, out any) {
	t.Helper()
	if err := json.Unmarshal(a.body, out); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
}

// do sends a request and, unless the answer is a stream, checks the answer
// against the document: status documented, body valid for its schema.
func (sv specValidator) do(t *testing.T, method, base, path, token string, body any) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, base+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, hdr: resp.Header}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return a // a live stream: its status and type are all there is to check
	}
	a.body, _ = io.ReadAll(resp.Body)
	vreq, _ := http.NewRequest(method, path, nil)
	vreq.Header = req.Header.Clone()
	vresp := &http.Response{StatusCode: a.code, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(a.body)), Request: vreq}
	if ok, errs := sv.v.ValidateHttpResponse(vreq, vresp); !ok {
		for _, e := range errs {
			msg := e.Message + " " + e.Reason
			for _, se := range e.SchemaValidationErrors {
				msg += "; " + se.FieldPath + ": " + se.Reason
			}
			t.Errorf("%s %s → %d: answer does not follow openapi.json: %s\n%s", method, path, a.code, msg, a.body)
		}
	}
	return a
}

// TestOpenAPICoversEveryRoute: every pattern the service registers (all
// roles) has an operation in pkg/openapi/openapi.json, and every operation
// there is registered; GET /openapi.json serves the document without a token.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	svc := startInstance(t, dsn, bus.Config{}, nil)
	ops, err := openapi.DocumentOperations()
	if err != nil {
		t.Fatal(err)
	}
	patterns := svc.Patterns()
	if len(patterns) < 25 {
		t.Fatalf("only %d patterns recorded: %v", len(patterns), patterns)
	}
	registered := openapi.Operations{}
	for _, p := range patterns {
		op := openapi.OperationOf(p)
		registered[op] = true
		if !ops.Covers(op) {
			t.Errorf("route %q is registered but pkg/openapi/openapi.json has no operation for it: add paths[%q].%s",
				p, op.Path, strings.ToLower(op.Method))
		}
	}
	for op := range ops {
		if !registered.Covers(op) && !slices.ContainsFunc(patterns, func(p string) bool {
			o := openapi.OperationOf(p)
			return o.Method == op.Method && strings.HasSuffix(o.Path, "/") && strings.HasPrefix(op.Path, o.Path)
		}) {
			t.Errorf("pkg/openapi/openapi.json documents %s, which the service does not register", op)
		}
	}
	resp, err := http.Get("http://" + svc.Addr() + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, openapi.Document()) {
		t.Fatalf("GET /openapi.json: %d, %d bytes", resp.StatusCode, len(b))
	}
}

// fill turns a route pattern into a request path for the test's objects.
func fill(pattern, device, gateway, tokenID string) (method, path string) {
	op := openapi.OperationOf(pattern)
	path = op.Path
	switch {
	case strings.HasPrefix(path, "/v1/devices/{id}"):
		path = strings.Replace(path, "{id}", url.PathEscape(device), 1)
	case strings.HasPrefix(path, "/v1/gateways/{id}"):
		path = strings.Replace(path, "{id}", url.PathEscape(gateway), 1)
	case strings.HasPrefix(path, "/v1/tokens/{id}"):
		path = strings.Replace(path, "{id}", tokenID, 1)
	case path == "/assets/":
		path = "/assets/app.js"
	}
	return op.Method, path
}

// Routes outside the viewer/admin rule: open ones, and ingest routes that
// take a device, gateway or ping-service token (an API token gets 401).
var (
	openRoutes   = []string{"GET /healthz", "GET /readyz", "GET /metrics", openapi.Pattern, "GET /{$}", "GET /assets/"}
	ingestRoutes = []string{"POST /v1/devices/{id}/heartbeat", "POST /v1/devices/{id}/ping", "POST /v1/pings", "POST /v1/gateways/{id}/heartbeats"}
	// adminReads are GET routes a viewer may not use: the token list.
	adminReads = []string{"GET /v1/tokens", "GET /v1/partitions"}
	// viewerPosts are POST routes that change nothing and a viewer needs:
	// the live stream's ticket.
	viewerPosts = []string{"POST /v1/stream/ticket"}
)

// TestViewerReadsEverythingAndChangesNothing walks every registered route
// with a viewer token: every GET answers 200 (the live stream included),
// every change 403 and changes nothing; an unknown token is 401 everywhere
// a token is needed. Every answer is checked against openapi.json.
func TestViewerReadsEverythingAndChangesNothing(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	svc := startInstance(t, dsn, bus.Config{}, nil)
	base := "http://" + svc.Addr()
	sv := newSpecValidator(t)

	var viewer struct{ ID, Name, Role, Token string }
	a := sv.do(t, "POST", base, "/v1/tokens", testAdmin, map[string]string{"name": "wall screen", "role": "viewer"})
	if a.code != 201 {
		t.Fatalf("create viewer token: %d %s", a.code, a.body)
	}
	a.json(t, &viewer)
	if viewer.Role != "viewer" || !strings.HasPrefix(viewer.Token, "dst_") || a.hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("created %+v (%s)", viewer, a.hdr.Get("Cache-Control"))
	}
	if a := sv.do(t, "POST", base, "/v1/devices", testAdmin, map[string]string{"id": "d1", "group": "lobby"}); a.code != 201 {
		t.Fatalf("register: %d %s", a.code, a.body)
	}
	if a := sv.do(t, "POST", base, "/v1/gateways", testAdmin, map[string]string{"id": "g1"}); a.code != 201 {
		t.Fatalf("register gateway: %d %s", a.code, a.body)
	}
	// The device reaches the projection (a GET of it is 200, not 404).
	deadline := time.Now().Add(15 * time.Second)
	for sv.do(t, "GET", base, "/v1/devices/d1", testAdmin, nil).code != 200 {
		if time.Now().After(deadline) {
			t.Fatal("device never projected")
		}
		time.Sleep(50 * time.Millisecond)
	}

	for sv.do(t, "GET", base, "/readyz", "", nil).code != 200 {
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Valid bodies for the ingest routes, so that only the token is wrong.
	ingestBodies := map[string]any{
		"POST /v1/devices/{id}/heartbeat":   map[string]any{},
		"POST /v1/devices/{id}/ping":        map[string]any{"ok": true, "rtt_ms": 3},
		"POST /v1/pings":                    map[string]any{"results": []map[string]any{{"device": "d1", "ok": true}}},
		"POST /v1/gateways/{id}/heartbeats": map[string]any{"heartbeats": []map[string]any{{"device": "d1"}}},
	}

	reads, changes := 0, 0
	for _, p := range svc.Patterns() {
		method, path := fill(p, "d1", "g1", viewer.ID)
		var body any
		if method != "GET" && method != "DELETE" {
			body = map[string]any{}
		}
		switch {
		case slices.Contains(openRoutes, p):
			if a := sv.do(t, method, base, path, "", nil); a.code != 200 {
				t.Errorf("%s (open) without a token: %d %s", p, a.code, a.body)
			}
			continue
		case slices.Contains(ingestRoutes, p):
			for _, tok := range []string{viewer.Token, testAdmin} {
				if a := sv.do(t, method, base, path, tok, ingestBodies[p]); a.code != 401 {
					t.Errorf("%s with an API token: %d %s, want 401 (it takes a device, gateway or ping token)", p, a.code, a.body)
				}
			}
			continue
		}
		if a := sv.do(t, method, base, path, "no-such-token", body); a.code != 401 || a.hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("%s with an unknown token: %d %s, want 401", p, a.code, a.body)
		}
		if a := sv.do(t, method, base, path, "", body); a.code != 401 {
			t.Errorf("%s without a token: %d %s, want 401", p, a.code, a.body)
		}
		a := sv.do(t, method, base, path, viewer.Token, body)
		switch {
		case method == "GET" && !slices.Contains(adminReads, p), slices.Contains(viewerPosts, p):
			reads++
			if a.code != 200 {
				t.Errorf("viewer %s %s: %d %s, want 200", method, path, a.code, a.body)
			}
		default:
			changes++
			var e struct{ Error struct{ Code string } }
			a.json(t, &e)
			if a.code != 403 || e.Error.Code != "forbidden" {
				t.Errorf("viewer %s %s: %d %s, want 403 forbidden", method, path, a.code, a.body)
			}
		}
	}
	if reads < 9 || changes < 11 {
		t.Fatalf("only %d reads and %d changes tried", reads, changes)
	}
	// Nothing changed: the device is live, the gateway and the token exist.
	var dev struct{ Status string }
	sv.do(t, "GET", base, "/v1/devices/d1", testAdmin, nil).json(t, &dev)
	if dev.Status != "registered" {
		t.Errorf("device after the viewer's attempts: %+v", dev)
	}
	var gws struct{ Gateways []struct{ ID string } }
	sv.do(t, "GET", base, "/v1/gateways", viewer.Token, nil).json(t, &gws)
	if len(gws.Gateways) != 1 || gws.Gateways[0].ID != "g1" {
		t.Errorf("gateways: %+v", gws)
	}
	var list struct{ Tokens []struct{ ID, Role string } }
	a = sv.do(t, "GET", base, "/v1/tokens", testAdmin, nil)
	a.json(t, &list)
	if len(list.Tokens) != 1 || list.Tokens[0].ID != viewer.ID || bytes.Contains(a.body, []byte(viewer.Token)) {
		t.Errorf("tokens: %s", a.body)
	}
}

// TestDeletedTokenStopsAtOnceEverywhere: two instances on one NATS; tokens
// made on one work on both, and once DELETE has answered on one, the very
// next request with that token is 401 on both — an admin API token's
// changes included.
func TestDeletedTokenStopsAtOnceEverywhere(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	s1 := startInstance(t, dsn, bus.Config{}, nil)
	s2 := startInstance(t, dsn, bus.Config{URL: s1.Bus.ClientURL()}, []string{RoleBridge, RoleAPI})
	b1, b2 := "http://"+s1.Addr(), "http://"+s2.Addr()
	sv := newSpecValidator(t)

	for _, role := range []string{"viewer", "admin"} {
		var tok struct{ ID, Token string }
		sv.do(t, "POST", b1, "/v1/tokens", testAdmin, map[string]string{"name": role + " one", "role": role}).json(t, &tok)
		for _, b := range []string{b1, b2} {
			if a := sv.do(t, "GET", b, "/v1/summary", tok.Token, nil); a.code != 200 {
				t.Fatalf("%s token on %s: %d %s", role, b, a.code, a.body)
			}
		}
		if role == "admin" {
			if a := sv.do(t, "POST", b2, "/v1/devices", tok.Token, map[string]string{"id": "made-by-token"}); a.code != 201 {
				t.Fatalf("admin API token registers: %d %s", a.code, a.body)
			}
		}
		if a := sv.do(t, "DELETE", b2, "/v1/tokens/"+tok.ID, testAdmin, nil); a.code != 204 {
			t.Fatalf("delete: %d %s", a.code, a.body)
		}
		for _, b := range []string{b1, b2} {
			if a := sv.do(t, "GET", b, "/v1/summary", tok.Token, nil); a.code != 401 {
				t.Errorf("deleted %s token on %s: %d %s, want 401", role, b, a.code, a.body)
			}
			if a := sv.do(t, "POST", b, "/v1/devices/x/reconnect", tok.Token, nil); a.code != 401 {
				t.Errorf("deleted %s token changing on %s: %d %s, want 401", role, b, a.code, a.body)
			}
		}
		if a := sv.do(t, "DELETE", b1, "/v1/tokens/"+tok.ID, testAdmin, nil); a.code != 404 {
			t.Errorf("second delete: %d %s", a.code, a.body)
		}
	}
	// The bootstrap token keeps working; bad requests are refused clearly.
	for _, body := range []map[string]string{{"name": "x", "role": "root"}, {"name": "", "role": "viewer"}, {"name": "x", "role": "viewer", "extra": "y"}} {
		if a := sv.do(t, "POST", b2, "/v1/tokens", testAdmin, body); a.code != 400 {
			t.Errorf("create %v: %d %s, want 400", body, a.code, a.body)
		}
	}
}

// TestGatewayAdmin: gateways are listed, re-keyed (the old token is refused
// on both instances, the new one works) and removed.
func TestGatewayAdmin(t *testing.T) {
	dsn, _ := testenv.Postgres(t)
	s1 := startInstance(t, dsn, bus.Config{}, nil)
	s2 := startInstance(t, dsn, bus.Config{URL: s1.Bus.ClientURL()}, []string{RoleBridge, RoleAPI})
	b1, b2 := "http://"+s1.Addr(), "http://"+s2.Addr()
	sv := newSpecValidator(t)

	var gw struct{ ID, Token string }
	sv.do(t, "POST", b1, "/v1/gateways", testAdmin, map[string]string{"id": "site/3"}).json(t, &gw)
	sv.do(t, "POST", b1, "/v1/devices", testAdmin, map[string]string{"id": "m1", "gateway": "site/3"})
	batch := map[string]any{"heartbeats": []map[string]any{{"device": "m1"}}}
	gwPath := "/v1/gateways/" + url.PathEscape("site/3")
	if a := sv.do(t, "POST", b2, gwPath+"/heartbeats", gw.Token, batch); a.code != 200 {
		t.Fatalf("batch: %d %s", a.code, a.body)
	}
	var list struct{ Gateways []struct{ ID string } }
	sv.do(t, "GET", b2, "/v1/gateways", testAdmin, nil).json(t, &list)
	if len(list.Gateways) != 1 || list.Gateways[0].ID != "site/3" {
		t.Fatalf("list: %+v", list)
	}
	var rekeyed struct{ ID, Token string }
	a := sv.do(t, "POST", b1, gwPath+"/token", testAdmin, nil)
	a.json(t, &rekeyed)
	if a.code != 200 || rekeyed.Token == "" || rekeyed.Token == gw.Token {
		t.Fatalf("rekey: %d %s", a.code, a.body)
	}
	waitCode := func(base, token string, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			a := sv.do(t, "POST", base, gwPath+"/heartbeats", token, batch)
			if a.code == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway batch on %s: %d %s, want %d", base, a.code, a.body, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitCode(b1, gw.Token, 401)
	waitCode(b2, gw.Token, 401) // the other instance's cache follows its KV watch
	waitCode(b2, rekeyed.Token, 200)
	if a := sv.do(t, "POST", b1, "/v1/gateways/nope/token", testAdmin, nil); a.code != 404 {
		t.Errorf("rekey unknown: %d %s", a.code, a.body)
	}
	if a := sv.do(t, "DELETE", b1, gwPath, testAdmin, nil); a.code != 204 {
		t.Fatalf("delete: %d %s", a.code, a.body)
	}
	waitCode(b2, rekeyed.Token, 401)
	if a := sv.do(t, "DELETE", b1, gwPath, testAdmin, nil); a.code != 404 {
		t.Errorf("second delete: %d %s", a.code, a.body)
	}
	sv.do(t, "GET", b1, "/v1/gateways", testAdmin, nil).json(t, &list)
	if len(list.Gateways) != 0 {
		t.Errorf("after delete: %+v", list)
	}
}

// TestSpecValidatorRefusesWrongAnswer is the control of the checks above: an
// answer that breaks the document (a summary without total, an error body
// without code) is refused by the same validator.
func TestSpecValidatorRefusesWrongAnswer(t *testing.T) {
	sv := newSpecValidator(t)
	for _, c := range []struct {
		path string
		code int
		body string
	}{
		{"/v1/summary", 200, `{"registered":0,"connected":0,"temporarily_offline":0,"disconnected":0,"groups":{}}`},
		{"/v1/summary", 401, `{"error":{"message":"no"}}`},
		{"/v1/summary", 418, `{}`},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.path, nil)
		resp := &http.Response{StatusCode: c.code, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(c.body)), Request: req}
		if ok, _ := sv.v.ValidateHttpResponse(req, resp); ok {
			t.Errorf("%d %s accepted", c.code, c.body)
		}
	}
}
