package httpx

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// framingServer serves a handler that answers 200 with the body it read,
// guarded or not.
func framingServer(t *testing.T, guard bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if guard {
		l = GuardFraming(l)
		srv.Handler = RejectAmbiguousFraming(h)
		srv.ConnContext = FramingConnContext
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

// exchange writes raw to a new connection, reads one response, and then
// reports whether the server closed the connection (EOF on the next read).
func exchange(t *testing.T, addr, raw string, follow string) (first *http.Response, second *http.Response, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	first, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(first.Body)
	if follow != "" {
		_, _ = io.WriteString(c, follow)
	}
	second, err = http.ReadResponse(br, nil)
	switch {
	case err == nil:
		_, _ = io.ReadAll(second.Body)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		closed = true
	default:
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server neither answered the second request nor closed the connection")
		}
		closed = true // connection reset
	}
	return first, second, closed
}

const (
	smuggle = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n0\r\n\r\n"
	smuggleLower = "POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n" +
		"5\r\nhello\r\n0\r\n\r\n"
	chunked  = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	plainGet = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
)

// TestNetHTTPServesAmbiguousFraming pins the behaviour GuardFraming exists
// for: plain net/http serves a request with both headers (by the chunked
// body) and keeps the connection.
func TestNetHTTPServesAmbiguousFraming(t *testing.T) {
	addr := framingServer(t, false)
	first, second, closed := exchange(t, addr, smuggle, plainGet)
	if first.StatusCode != http.StatusOK || closed || second == nil || second.StatusCode != http.StatusOK {
		t.Skipf("net/http changed: first %d, closed %v (GuardFraming may be unnecessary now)", first.StatusCode, closed)
	}
}

func TestGuardFramingRefusesAndCloses(t *testing.T) {
	addr := framingServer(t, true)
	for name, raw := range map[string]string{"canonical": smuggle, "lower case, TE first": smuggleLower} {
		first, _, closed := exchange(t, addr, raw, plainGet)
		if first.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, first.StatusCode)
		}
		if !first.Close {
			t.Errorf("%s: the answer does not say Connection: close", name)
		}
		if !closed {
			t.Errorf("%s: the connection was kept", name)
		}
	}
}

func TestGuardFramingKeepsOrdinaryRequests(t *testing.T) {
	addr := framingServer(t, true)
	first, second, closed := exchange(t, addr, chunked, plainGet)
	if first.StatusCode != http.StatusOK || closed || second == nil || second.StatusCode != http.StatusOK {
		t.Fatalf("chunked then GET: first %d, closed %v", first.StatusCode, closed)
	}
	body := `{"a":1}`
	withLength := "POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n" + body
	first, second, closed = exchange(t, addr, withLength, strings.Replace(withLength, "/x", "/y", 1))
	if first.StatusCode != http.StatusOK || closed || second == nil || second.StatusCode != http.StatusOK {
		t.Fatalf("two Content-Length requests: first %d, closed %v", first.StatusCode, closed)
	}
}
