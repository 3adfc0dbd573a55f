package bridge

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// TestEveryBodyReadAlike: every endpoint that takes a body refuses a body
// over its limit (413, declared or found while reading a chunked body), a
// wrong content type (415), a body that arrives too slowly (408) and a
// malformed one (400) alike, with the error body of the API, and publishes
// nothing for any of them.
func TestEveryBodyReadAlike(t *testing.T) {
	e := newEnv(t)
	devTok := e.register("dev", "")
	gwTok := e.registerGateway("gw")
	// The slow body is sent to a server with the service's timeouts scaled
	// down (as in TestSlowClientsAreCutOff); the other cases to e.srv,
	// whose lack of timeouts leaves a loaded machine time for 4 MiB.
	srv := &http.Server{Handler: e.srv.Config.Handler,
		ReadHeaderTimeout: 200 * time.Millisecond, ReadTimeout: 600 * time.Millisecond,
		WriteTimeout: 1200 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	before := len(e.inputEvents())

	endpoints := []struct {
		name, method, path, token string
		limit                     int
	}{
		{"heartbeat", "POST", devPath("dev", "/heartbeat"), devTok, DefaultMaxBodyBytes},
		{"ping", "POST", devPath("dev", "/ping"), pingToken, DefaultMaxBodyBytes},
		{"ping batch", "POST", "/v1/pings", pingToken, MaxPingBatchBytes},
		{"register", "POST", "/v1/devices", adminToken, DefaultMaxBodyBytes},
		{"patch", "PATCH", devPath("dev", ""), adminToken, DefaultMaxBodyBytes},
		{"register gateway", "POST", "/v1/gateways", adminToken, DefaultMaxBodyBytes},
		{"gateway batch", "POST", gwPath("gw"), gwTok, MaxGatewayBatchBytes},
	}
	head := func(method, path, token, ctype, length string) string {
		h := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: devstatus\r\nAuthorization: Bearer %s\r\n", method, path, token)
		if ctype != "" {
			h += "Content-Type: " + ctype + "\r\n"
		}
		return h + length + "\r\n"
	}
	const guard = 20 * time.Second
	for _, ep := range endpoints {
		cases := []struct {
			name  string
			send  string // head and what of the body is sent
			more  string // sent after, in the background (may be cut off)
			code  int
			ecode string
			slow  bool // to the server with the short ReadTimeout
		}{
			{"over the limit, declared", head(ep.method, ep.path, ep.token, "application/json", fmt.Sprintf("Content-Length: %d\r\n", ep.limit+1)),
				"", http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, false},
			{"over the limit, chunked", head(ep.method, ep.path, ep.token, "application/json", "Transfer-Encoding: chunked\r\n"),
				fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", ep.limit+1, strings.Repeat(" ", ep.limit+1)), http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, false},
			{"wrong content type", head(ep.method, ep.path, ep.token, "text/plain", "Content-Length: 2\r\n") + "{}",
				"", http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, false},
			{"slow body", head(ep.method, ep.path, ep.token, "application/json", "Content-Length: 100\r\n") + `{"id":`,
				"", http.StatusRequestTimeout, CodeRequestTimeout, true},
			{"malformed", head(ep.method, ep.path, ep.token, "application/json", "Content-Length: 1\r\n") + "{",
				"", http.StatusBadRequest, "", false},
		}
		for _, c := range cases {
			t.Run(ep.name+"/"+c.name, func(t *testing.T) {
				addr := e.srv.Listener.Addr().String()
				if c.slow {
					addr = ln.Addr().String()
				}
				rc := dialRaw(t, addr)
				if err := rc.send(c.send); err != nil {
					t.Fatal(err)
				}
				if c.more != "" {
					go func() { _ = rc.send(c.more) }()
				}
				resp, err := rc.response(guard)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				code := (result{code: resp.StatusCode, body: body}).errCode(t)
				if resp.StatusCode != c.code || (c.ecode != "" && code != c.ecode) {
					t.Errorf("%d %s, want %d %s", resp.StatusCode, body, c.code, c.ecode)
				}
			})
		}
	}
	if n := len(e.inputEvents()); n != before {
		t.Errorf("%d events published by refused requests", n-before)
	}
}
