package bridge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// rawConn is a hand-driven HTTP/1.1 client connection.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) error {
	_, err := io.WriteString(rc.c, s)
	return err
}

// response reads one response; guard only keeps a broken test from hanging
// (the server's own timeouts, far shorter, are what is under test).
func (rc *rawConn) response(guard time.Duration) (*http.Response, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(guard))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp, nil
}

// closedByServer waits until the server closes the connection (EOF or
// reset); it fails if the guard expires first.
func (rc *rawConn) closedByServer(guard time.Duration) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(guard))
	_, err := io.Copy(io.Discard, rc.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		rc.t.Fatalf("the server kept the connection open for %s", guard)
	}
}

func hbHead(id, tok string, contentLength int) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: devstatus\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		devPath(id, "/heartbeat"), tok, contentLength)
}

// TestRefusedBeforeTheBody: a Content-Length over the limit (413) or a wrong
// content type (415) is refused from the headers alone, before any body byte
// is sent or read; the connection is closed rather than drained.
func TestRefusedBeforeTheBody(t *testing.T) {
	e := newEnv(t)
	tok := e.register("dev", "")
	for _, c := range []struct {
		head  string
		code  int
		ecode string
	}{
		{hbHead("dev", tok, DefaultMaxBodyBytes+1), 413, httpx.CodeTooLarge},
		{hbHead("dev", tok, 1<<40), 413, httpx.CodeTooLarge},
		{strings.Replace(hbHead("dev", tok, 1000), "application/json", "text/plain", 1), 415, httpx.CodeUnsupportedMedia},
		{strings.Replace(hbHead("dev", tok, 1000), "Content-Type: application/json\r\n", "", 1), 415, httpx.CodeUnsupportedMedia},
	} {
		rc := dialRaw(t, e.srv.Listener.Addr().String())
		if err := rc.send(c.head); err != nil {
			t.Fatal(err)
		}
		resp, err := rc.response(10 * time.Second)
		if err != nil {
			t.Fatalf("%d: %v", c.code, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != c.code || (result{code: resp.StatusCode, body: body}).errCode(t) != c.ecode {
			t.Errorf("%d %s, want %d", resp.StatusCode, body, c.code)
		}
		rc.closedByServer(10 * time.Second)
	}
	if len(e.inputEvents()) != 1 || e.br.lim.tracked("dev") { // the registration only
		t.Error("a refusal published or spent rate budget")
	}
}

// TestSlowClientsAreCutOff: a client that sends its headers, its body or
// nothing at all too slowly cannot hold a connection: the server's
// timeouts close it, nothing is published and no rate budget is spent.
// The server here has the service's timeouts (pkg/service: ReadHeaderTimeout
// 5s, ReadTimeout 15s, WriteTimeout 30s, IdleTimeout 120s) scaled down 25
// times, and the bridge's handler chain.
func TestSlowClientsAreCutOff(t *testing.T) {
	e := newEnv(t)
	tok := e.register("dev", "")
	srv := &http.Server{Handler: e.srv.Config.Handler,
		ReadHeaderTimeout: 200 * time.Millisecond, ReadTimeout: 600 * time.Millisecond,
		WriteTimeout: 1200 * time.Millisecond, IdleTimeout: 600 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	addr := ln.Addr().String()
	const guard = 20 * time.Second

	t.Run("headers never finished", func(t *testing.T) {
		rc := dialRaw(t, addr)
		if err := rc.send("POST " + devPath("dev", "/heartbeat") + " HTTP/1.1\r\nHost: devstatus\r\n"); err != nil {
			t.Fatal(err)
		}
		rc.closedByServer(guard)
	})
	t.Run("nothing sent", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.closedByServer(guard)
	})
	t.Run("body stalls", func(t *testing.T) {
		rc := dialRaw(t, addr)
		if err := rc.send(hbHead("dev", tok, 100) + `{"metrics":`); err != nil {
			t.Fatal(err)
		}
		resp, err := rc.response(guard)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestTimeout || (result{code: resp.StatusCode, body: body}).errCode(t) != CodeRequestTimeout {
				t.Errorf("%d %s", resp.StatusCode, body)
			}
		}
		rc.closedByServer(guard)
	})
	t.Run("body dripped byte by byte", func(t *testing.T) {
		// ReadTimeout bounds the whole request, so sending a byte now and
		// then does not keep the connection: the server answers before the
		// declared body is complete.
		rc := dialRaw(t, addr)
		body := `{"metrics":{"x":"` + strings.Repeat("a", 200) + `"}}`
		if err := rc.send(hbHead("dev", tok, len(body))); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		dripped := make(chan int)
		go func() {
			n := 0
			defer func() { dripped <- n }()
			tick := time.NewTicker(25 * time.Millisecond)
			defer tick.Stop()
			for ; n < len(body); n++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if rc.send(body[n:n+1]) != nil {
					return
				}
			}
		}()
		resp, err := rc.response(guard)
		close(stop)
		if n := <-dripped; n >= len(body) {
			t.Fatalf("the whole body (%d bytes) was accepted at a byte per 25ms", n)
		}
		if err == nil && resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("answer %d, want 408 or a closed connection", resp.StatusCode)
		}
		rc.closedByServer(guard)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		rc := dialRaw(t, addr)
		if err := rc.send(hbHead("ghost", "nope", 2) + "{}"); err != nil {
			t.Fatal(err)
		}
		resp, err := rc.response(guard)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%v %v", resp, err)
		}
		rc.closedByServer(guard) // the idle connection is closed after IdleTimeout
	})
	if len(e.inputEvents()) != 1 || e.br.lim.tracked("dev") {
		t.Error("a cut-off request published or spent rate budget")
	}
	// A normal client on the same server is served.
	rc := dialRaw(t, addr)
	if err := rc.send(hbHead("dev", tok, 2) + "{}"); err != nil {
		t.Fatal(err)
	}
	if resp, err := rc.response(guard); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("normal heartbeat: %v %v", resp, err)
	}
}
