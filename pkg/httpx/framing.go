package httpx

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// A request that carries both Content-Length and Transfer-Encoding is the
// classic request-smuggling shape: a proxy in front may frame the body by one
// header and this server by the other. net/http (Go 1.26) follows RFC 9112's
// lenient option: it drops Content-Length, reads the body as chunked and
// keeps the connection open, and the handler never sees that the request was
// ambiguous (the header is gone from r.Header). RFC 9112 §6.1 also allows
// refusing such a request and requires closing the connection after it; we
// refuse it (400) and close.
//
// Because the evidence is removed before any handler runs, it is gathered
// below net/http: [GuardFraming] wraps the listener so that each connection's
// plaintext is watched line by line for a header block (lines up to a blank
// line) holding both fields; [FramingConnContext] puts the connection into
// the request context and [RejectAmbiguousFraming] answers every request of
// a flagged connection 400 with "Connection: close".
//
// The watch is a line scanner, not a second HTTP parser: it cannot tell a
// header block from body lines, so a body that itself contains such lines
// flags its own connection too (it is then refused and closed, which only
// affects that client). Once flagged, a connection stays flagged.

// GuardFraming wraps l so that the connections it accepts are watched for a
// header block with both Content-Length and Transfer-Encoding. Wrap the
// listener that yields plaintext (for HTTPS: the tls.Listener), serve it with
// an http.Server whose ConnContext is [FramingConnContext], and put
// [RejectAmbiguousFraming] in front of the handler.
func GuardFraming(l net.Listener) net.Listener { return &framingListener{Listener: l} }

type framingListener struct{ net.Listener }

func (l *framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c}, nil
}

type connKey struct{}

// FramingConnContext is an http.Server ConnContext that makes the connection
// of [GuardFraming] visible to [RejectAmbiguousFraming].
func FramingConnContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*framingConn); ok {
		return context.WithValue(ctx, connKey{}, fc)
	}
	return ctx
}

// RejectAmbiguousFraming answers 400 (code bad_request) and closes the
// connection when the request's connection carried a header block with both
// Content-Length and Transfer-Encoding; other requests go to next.
func RejectAmbiguousFraming(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fc, ok := r.Context().Value(connKey{}).(*framingConn); ok && fc.ambiguous.Load() {
			w.Header().Set("Connection", "close")
			WriteError(w, http.StatusBadRequest, CodeBadRequest, "a request must not carry both Content-Length and Transfer-Encoding")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// framingConn scans what is read from the connection.
type framingConn struct {
	net.Conn
	ambiguous atomic.Bool

	mu      sync.Mutex
	line    [len("transfer-encoding:")]byte // lower-cased start of the current line
	lineLen int
	cl, te  bool // seen in the current header block
}

var (
	clName = []byte("content-length:")
	teName = []byte("transfer-encoding:")
)

func (c *framingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.ambiguous.Load() {
		c.scan(p[:n])
	}
	return n, err
}

func (c *framingConn) scan(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range p {
		if b == '\n' {
			if c.lineLen == 0 || (c.lineLen == 1 && c.line[0] == '\r') {
				if c.cl && c.te {
					c.ambiguous.Store(true)
					return
				}
				c.cl, c.te = false, false
			} else {
				start := c.line[:min(c.lineLen, len(c.line))]
				c.cl = c.cl || hasPrefix(start, clName)
				c.te = c.te || hasPrefix(start, teName)
			}
			c.lineLen = 0
			continue
		}
		if c.lineLen < len(c.line) {
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			c.line[c.lineLen] = b
		}
		c.lineLen++
	}
}

func hasPrefix(s, prefix []byte) bool {
	return len(s) >= len(prefix) && string(s[:len(prefix)]) == string(prefix)
}
