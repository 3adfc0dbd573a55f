package pinger

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devstatus/devstatus/pkg/probepolicy"
)

// loopback allows the test servers (127.0.0.1) and nothing else beyond the
// default policy.
var loopback = probepolicy.Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}

// counted is a loopback HTTP server that counts requests.
type counted struct {
	*httptest.Server
	hits atomic.Int64
}

func newCounted(t *testing.T, h http.HandlerFunc) *counted {
	t.Helper()
	c := &counted{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(c.Close)
	return c
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }
}

// hang answers only after the client gave up (or 10 s).
func hang(w http.ResponseWriter, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

// refusedURL returns a loopback URL on which nothing listens.
func refusedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/"
}

func TestProbeOutcomes(t *testing.T) {
	ok := newCounted(t, status(200))
	noContent := newCounted(t, status(204))
	fail := newCounted(t, status(500))
	notFound := newCounted(t, status(404))
	slow := newCounted(t, hang)
	other := newCounted(t, status(200))
	_, otherPort, _ := net.SplitHostPort(other.Listener.Addr().String())
	redir := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/same":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/other-host":
			// "localhost" is another host name than 127.0.0.1: not followed.
			http.Redirect(w, r, "http://localhost:"+otherPort+"/", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/ok":
			w.WriteHeader(http.StatusOK)
		}
	})
	tlsSrv := httptest.NewUnstartedServer(status(200))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are the point
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)

	// The "timeout" case needs a short timeout; every other case a generous
	// one, so that a TLS handshake on a loaded machine under -race is not
	// mistaken for a timeout.
	short := NewProber(ProberConfig{Policy: loopback, Timeout: 300 * time.Millisecond})
	p := NewProber(ProberConfig{Policy: loopback, Timeout: 10 * time.Second})
	p.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "localhost":
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		case "device.example":
			// a forbidden address first, then an allowed one
			return []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	short.lookup = p.lookup
	_, okPort, _ := net.SplitHostPort(ok.Listener.Addr().String())
	cases := []struct {
		name   string
		url    string
		ok     bool
		class  string
		status int
	}{
		{"200", ok.URL + "/health", true, "", 200},
		{"204", noContent.URL, true, "", 204},
		{"500", fail.URL, false, ClassHTTPStatus, 500},
		{"404", notFound.URL, false, ClassHTTPStatus, 404},
		{"timeout", slow.URL, false, ClassTimeout, 0},
		{"refused", refusedURL(t), false, ClassRefused, 0},
		{"same-host redirect followed", redir.URL + "/same", true, "", 200},
		{"other-host redirect not followed", redir.URL + "/other-host", false, ClassHTTPStatus, 302},
		{"redirect loop", redir.URL + "/loop", false, ClassHTTPStatus, 302},
		{"self-signed certificate", tlsSrv.URL, false, ClassTLS, 0},
		{"https to a plain HTTP server", strings.Replace(ok.URL, "http://", "https://", 1), false, ClassTLS, 0},
		{"dns", "http://no-such-device.example:80/", false, ClassDNS, 0},
		{"name with a forbidden and an allowed address", "http://device.example:" + okPort + "/", true, "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			prober := p
			if c.class == ClassTimeout {
				prober = short
			}
			r := prober.Probe(context.Background(), c.url)
			if r.NotProbed() {
				t.Fatalf("not probed: %v", r.Err)
			}
			if r.OK != c.ok || r.Class != c.class || r.Status != c.status {
				t.Fatalf("got ok=%v class=%q status=%d err=%v; want ok=%v class=%q status=%d", r.OK, r.Class, r.Status, r.Err, c.ok, c.class, c.status)
			}
			if r.RTT <= 0 {
				t.Errorf("rtt %s", r.RTT)
			}
		})
	}
	if n := other.hits.Load(); n != 0 {
		t.Errorf("the other host was contacted %d times through a redirect", n)
	}
	if n := redir.hits.Load(); n != 2+1+1+MaxRedirects {
		t.Errorf("redirect server saw %d requests", n)
	}

	insecure := NewProber(ProberConfig{Policy: loopback, Timeout: time.Second, InsecureTLS: true})
	if r := insecure.Probe(context.Background(), tlsSrv.URL); !r.OK {
		t.Errorf("InsecureTLS: %+v", r)
	}
}

// TestProbeRefusesForbiddenTargets: the policy is applied at probe time to
// the URL and to the address a host name resolves to (DNS rebinding); a
// refused target is not contacted.
func TestProbeRefusesForbiddenTargets(t *testing.T) {
	srv := newCounted(t, status(200))
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	strict := NewProber(ProberConfig{Timeout: time.Second}) // default policy: loopback forbidden
	strict.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}, nil // rebound to loopback
	}
	for _, u := range []string{
		srv.URL,                                 // literal loopback
		"http://localhost:" + port + "/",        // loopback by name
		"http://rebind.example:" + port + "/",   // a public-looking name resolving to loopback
		"ftp://rebind.example:" + port + "/",    // scheme
		"http://169.254.169.254/latest/",        // metadata endpoint
		"http://user:pw@rebind.example:" + port, // credentials
	} {
		r := strict.Probe(context.Background(), u)
		if !r.NotProbed() {
			t.Errorf("%s: probed: %+v", u, r)
		}
	}
	var fe *probepolicy.ForbiddenError
	if r := strict.Probe(context.Background(), "http://rebind.example:"+port+"/"); !errors.As(r.Err, &fe) || fe.Category != probepolicy.CategoryLoopback {
		t.Errorf("rebinding refusal: %v", r.Err)
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("forbidden target contacted %d times", n)
	}
}
