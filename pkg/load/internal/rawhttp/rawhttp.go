package rawhttp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"
)

// Conn is a minimal HTTP/1.1 keep-alive client connection for the load
// generator: one request at a time, the request written with one write
// syscall from a reused buffer, the answer parsed without allocating a
// header map. It costs the generator a fraction of net/http's client CPU
// (no transport goroutines or channels per request), which matters when the
// generator shares two cores with the service it measures; both the
// baseline and the service are driven by this same code, so what it costs
// is the same on both sides of the ratio.
//
// It understands what devstatus and the baseline answer: a status line,
// headers, and a body delimited by Content-Length or chunked encoding.
// "Connection: close" in an answer makes the next request reconnect.
//
// A Conn is not safe for concurrent use: one goroutine owns it.
type Conn struct {
	addr    string // host:port
	host    string // Host header
	timeout time.Duration
	c       net.Conn
	br      *bufio.Reader
	wbuf    []byte
	body    []byte
}

// ErrInvalidURL means the base URL is not http://host[:port].
var ErrInvalidURL = errors.New("rawhttp: the URL must be http://host[:port] (no TLS)")

// ErrBadResponse means the answer is not HTTP/1.x as this client reads it.
var ErrBadResponse = errors.New("rawhttp: malformed HTTP answer")

// New returns a connection to base ("http://host[:port]", port 80 by
// default) whose requests each take at most timeout (dial, write and read).
// It dials on the first request, and again after an error or a
// "Connection: close"; an error wraps [ErrInvalidURL].
func New(base string, timeout time.Duration) (*Conn, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("%w: %q", ErrInvalidURL, base)
	}
	addr := u.Host
	if u.Port() == "" {
		addr += ":80"
	}
	return &Conn{addr: addr, host: u.Host, timeout: timeout}, nil
}

// Response is a parsed answer.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// RetryAfter is the Retry-After header in whole seconds (0: absent).
	RetryAfter time.Duration
	// Body aliases the connection's buffer until its next request.
	Body []byte
}

// Close closes the connection (a later request dials again).
func (rc *Conn) Close() {
	if rc.c != nil {
		_ = rc.c.Close()
		rc.c = nil
	}
}

// Do sends one request and reads the answer: method, path (escaped
// already, with its query), an optional bearer token ("": no Authorization
// header) and an optional JSON body (nil: none). An error closes the
// connection; a malformed answer wraps [ErrBadResponse].
func (rc *Conn) Do(method, path, token string, body []byte) (Response, error) {
	if rc.c == nil {
		d := net.Dialer{Timeout: rc.timeout} // Do has no context: the timeout bounds the dial
		c, err := d.DialContext(context.Background(), "tcp", rc.addr)
		if err != nil {
			return Response{}, err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		rc.c = c
		if rc.br == nil {
			rc.br = bufio.NewReaderSize(c, 16<<10)
		} else {
			rc.br.Reset(c)
		}
	}
	w := rc.wbuf[:0]
	w = append(w, method...)
	w = append(w, ' ')
	w = append(w, path...)
	w = append(w, " HTTP/1.1\r\nHost: "...)
	w = append(w, rc.host...)
	w = append(w, "\r\nUser-Agent: devicesim-load\r\nAccept: application/json\r\n"...)
	if token != "" {
		w = append(w, "Authorization: Bearer "...)
		w = append(w, token...)
		w = append(w, "\r\n"...)
	}
	if body != nil {
		w = append(w, "Content-Type: application/json\r\nContent-Length: "...)
		w = strconv.AppendInt(w, int64(len(body)), 10)
		w = append(w, "\r\n"...)
	}
	w = append(w, "\r\n"...)
	w = append(w, body...)
	rc.wbuf = w
	_ = rc.c.SetDeadline(time.Now().Add(rc.timeout))
	if _, err := rc.c.Write(w); err != nil {
		rc.Close()
		return Response{}, err
	}
	resp, keep, err := rc.read()
	if err != nil || !keep {
		rc.Close()
	}
	return resp, err
}

func (rc *Conn) read() (Response, bool, error) {
	var resp Response
	line, err := rc.line()
	if err != nil {
		return resp, false, err
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return resp, false, fmt.Errorf("%w: status line %q", ErrBadResponse, line)
	}
	st, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return resp, false, fmt.Errorf("%w: status line %q", ErrBadResponse, line)
	}
	resp.Status = st
	keep := line[7] == '1'
	clen, chunked := -1, false
	for {
		h, err := rc.line()
		if err != nil {
			return resp, false, err
		}
		if len(h) == 0 {
			break
		}
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case asciiEqualFold(k, "content-length"):
			if clen, err = strconv.Atoi(string(v)); err != nil || clen < 0 {
				return resp, false, fmt.Errorf("%w: Content-Length %q", ErrBadResponse, v)
			}
		case asciiEqualFold(k, "transfer-encoding"):
			chunked = asciiEqualFold(v, "chunked")
		case asciiEqualFold(k, "connection"):
			if asciiEqualFold(v, "close") {
				keep = false
			}
		case asciiEqualFold(k, "retry-after"):
			if s, err := strconv.Atoi(string(v)); err == nil && s >= 0 {
				resp.RetryAfter = time.Duration(s) * time.Second
			}
		}
	}
	rc.body = rc.body[:0]
	switch {
	case chunked:
		for {
			l, err := rc.line()
			if err != nil {
				return resp, false, err
			}
			if i := bytes.IndexByte(l, ';'); i >= 0 {
				l = l[:i]
			}
			n, err := strconv.ParseInt(string(bytes.TrimSpace(l)), 16, 32)
			if err != nil || n < 0 {
				return resp, false, fmt.Errorf("%w: chunk size %q", ErrBadResponse, l)
			}
			if n == 0 {
				for { // trailers
					t, err := rc.line()
					if err != nil {
						return resp, false, err
					}
					if len(t) == 0 {
						break
					}
				}
				break
			}
			if rc.body, err = readN(rc.br, rc.body, int(n)); err != nil {
				return resp, false, err
			}
			if _, err := rc.line(); err != nil {
				return resp, false, err
			}
		}
	case clen >= 0:
		if rc.body, err = readN(rc.br, rc.body, clen); err != nil {
			return resp, false, err
		}
	default:
		// No length: the body runs to the end of the connection.
		b, err := io.ReadAll(rc.br)
		if err != nil {
			return resp, false, err
		}
		rc.body = append(rc.body, b...)
		keep = false
	}
	resp.Body = rc.body
	return resp, keep, nil
}

// line reads one CRLF-terminated line (without the CRLF); it aliases the
// reader's buffer.
func (rc *Conn) line() ([]byte, error) {
	l, err := rc.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: header line too long", ErrBadResponse)
		}
		return nil, err
	}
	l = l[:len(l)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	return l, nil
}

func readN(r *bufio.Reader, dst []byte, n int) ([]byte, error) {
	start := len(dst)
	if cap(dst)-start < n {
		nb := make([]byte, start, start+n)
		copy(nb, dst)
		dst = nb
	}
	dst = dst[:start+n]
	_, err := io.ReadFull(r, dst[start:])
	return dst, err
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
