package rawhttp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestDoAgainstNetHTTP(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/echo":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"method":%q,"auth":%q,"type":%q,"body":%q,"query":%q}`, r.Method, r.Header.Get("Authorization"),
				r.Header.Get("Content-Type"), body, r.URL.RawQuery)
		case "/chunked":
			fl := w.(http.Flusher)
			for _, part := range []string{"ab", "cde", strings.Repeat("x", 40000)} {
				_, _ = w.Write([]byte(part))
				fl.Flush()
			}
		case "/later":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusTooManyRequests)
		case "/close":
			w.Header().Set("Connection", "close")
			_, _ = w.Write([]byte("bye"))
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c, err := New(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Do("POST", "/echo?a=1", "tok", []byte(`{"x":1}`))
	if err != nil || resp.Status != 200 || string(resp.Body) != `{"method":"POST","auth":"Bearer tok","type":"application/json","body":"{\"x\":1}","query":"a=1"}` {
		t.Fatalf("%d %s %v", resp.Status, resp.Body, err)
	}
	resp, err = c.Do("GET", "/echo", "", nil)
	if err != nil || !strings.Contains(string(resp.Body), `"auth":"","type":"","body":""`) {
		t.Fatalf("GET without token or body: %s %v", resp.Body, err)
	}
	resp, err = c.Do("GET", "/chunked", "", nil)
	if err != nil || resp.Status != 200 || string(resp.Body) != "abcde"+strings.Repeat("x", 40000) {
		t.Fatalf("chunked: %d bytes, %v", len(resp.Body), err)
	}
	resp, err = c.Do("GET", "/later", "", nil)
	if err != nil || resp.Status != 429 || resp.RetryAfter != 7*time.Second {
		t.Fatalf("429: %+v %v", resp, err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for four keep-alive requests", n)
	}
	if resp, err = c.Do("GET", "/close", "", nil); err != nil || string(resp.Body) != "bye" {
		t.Fatalf("close: %s %v", resp.Body, err)
	}
	if _, err = c.Do("GET", "/echo", "", nil); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections: Connection: close did not make the next request reconnect", n)
	}
}

// TestMalformedAnswers: a server that does not speak HTTP gives
// ErrBadResponse, and the next request dials again.
func TestMalformedAnswers(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	answers := []string{
		"SMTP ready\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 abc OK\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nto the end",
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, a := range answers {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = bufio.NewReader(c).ReadString('\n')
			_, _ = io.WriteString(c, a)
			_ = c.Close()
		}
	}()
	defer func() { _ = ln.Close(); <-done }()
	c, err := New("http://"+ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 4 {
		if _, err := c.Do("GET", "/", "", nil); !errors.Is(err, ErrBadResponse) {
			t.Errorf("answer %d: want ErrBadResponse, got %v", i, err)
		}
	}
	if resp, err := c.Do("GET", "/", "", nil); err != nil || string(resp.Body) != "to the end" {
		t.Fatalf("HTTP/1.0 without a length: %q %v", resp.Body, err)
	}
	for _, u := range []string{"https://x", "x:80", "http://"} {
		if _, err := New(u, time.Second); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("%q: %v", u, err)
		}
	}
}
