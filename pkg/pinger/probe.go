package pinger

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/devstatus/devstatus/pkg/probepolicy"
)

// MaxRedirects is the most same-host redirects a probe follows.
const MaxRedirects = 3

// Failure classes of a probe, as carried in events.PingResult.Error.
const (
	ClassTimeout    = "timeout"
	ClassRefused    = "refused"
	ClassDNS        = "dns"
	ClassTLS        = "tls"
	ClassHTTPStatus = "http_status"
	ClassOther      = "other"
)

// maxBodyRead bounds how much of a response body a probe reads (and
// discards), in bytes.
const maxBodyRead = 4 << 10

// Result is the outcome of one probe.
type Result struct {
	// OK: the final response status was 2xx.
	OK bool
	// Class is "" when OK, else one of the Class… constants.
	Class string
	// Status is the final HTTP status code (0 when no response came).
	Status int
	// RTT is the time from the start of the probe to the final response's
	// headers, or to the failure. Measured with the monotonic clock.
	RTT time.Duration
	// Err is the transport error (nil when a response came).
	Err error
}

// NotProbed reports whether the target was refused before any connection
// was made: the probe policy forbids it (after DNS resolution too) or the
// URL is unusable. Such results are not published.
func (r Result) NotProbed() bool {
	return errors.Is(r.Err, probepolicy.ErrForbidden) || errors.Is(r.Err, probepolicy.ErrInvalidURL)
}

// ProberConfig configures [NewProber].
type ProberConfig struct {
	// Policy decides which targets may be probed; checked on the URL and on
	// every dialled address. Zero: the secure default.
	Policy probepolicy.Policy
	// Timeout bounds one probe (connect, TLS handshake, redirects, response
	// headers). Default 2s.
	Timeout time.Duration
	// InsecureTLS skips certificate verification (devices with self-signed
	// certificates). Default false: a certificate error is class "tls".
	InsecureTLS bool
	// UserAgent sent with every probe. Default "devstatus-pinger/1".
	UserAgent string
}

// Prober makes probes. Safe for concurrent use.
type Prober struct {
	cfg    ProberConfig
	client *http.Client
	dialer *net.Dialer
	// lookup resolves a host name (net.DefaultResolver; tests replace it).
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// NewProber builds a prober: an HTTP client without proxy and keep-alive
// whose dialer checks every address against the policy.
func NewProber(cfg ProberConfig) *Prober {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "devstatus-pinger/1"
	}
	policy := cfg.Policy
	p := &Prober{cfg: cfg,
		// Control is the backstop: whatever dials, the address is checked.
		dialer: &net.Dialer{Timeout: cfg.Timeout, KeepAlive: -1, Control: policy.Control},
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
	}
	tr := &http.Transport{
		Proxy:                  nil, // a proxy would hide the dialled address from the policy
		DialContext:            p.dial,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxResponseHeaderBytes: 64 << 10,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureTLS}, //nolint:gosec // operator's choice, off by default
	}
	p.client = &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > MaxRedirects {
				return http.ErrUseLastResponse
			}
			if !strings.EqualFold(req.URL.Hostname(), via[0].URL.Hostname()) {
				return http.ErrUseLastResponse // never follow to another host
			}
			if _, err := policy.CheckURL(req.URL.String()); err != nil {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
	return p
}

// dial resolves the host itself, checks every address against the policy
// and dials the allowed ones in turn (by IP, so the address checked is the
// address connected to: a name re-resolving to another address between
// check and connect — DNS rebinding — cannot slip through). When every
// address is forbidden it returns the *probepolicy.ForbiddenError; when
// some were allowed but failed, the first dial error.
func (p *Prober) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = p.lookup(ctx, host); err != nil {
		return nil, err
	}
	var forbidden, dialErr error
	for _, ip := range ips {
		if err := p.cfg.Policy.CheckAddr(ip); err != nil {
			if forbidden == nil {
				forbidden = err
			}
			continue
		}
		c, err := p.dialer.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		if dialErr == nil {
			dialErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	switch {
	case dialErr != nil:
		return nil, dialErr
	case forbidden != nil:
		return nil, forbidden
	}
	return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
}

// Probe GETs rawURL once and classifies the outcome. The URL is checked
// against the policy first (it may have changed since the URL was stored); a
// refused URL yields a Result whose NotProbed is true.
func (p *Prober) Probe(ctx context.Context, rawURL string) Result {
	u, err := p.cfg.Policy.CheckURL(rawURL)
	if err != nil {
		return Result{Class: ClassOther, Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Result{Class: ClassOther, Err: err}
	}
	req.Header.Set("User-Agent", p.cfg.UserAgent)
	req.Header.Set("Accept", "*/*")
	start := time.Now()
	resp, err := p.client.Do(req)
	rtt := time.Since(start)
	if err != nil {
		return Result{Class: Classify(err), RTT: rtt, Err: err}
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxBodyRead)
	_ = resp.Body.Close()
	r := Result{Status: resp.StatusCode, RTT: rtt}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		r.OK = true
	} else {
		r.Class = ClassHTTPStatus
	}
	return r
}

// Classify maps a transport error to a failure class: "dns" (name not
// resolved), "timeout" (deadline exceeded anywhere), "refused" (connection
// refused), "tls" (handshake or certificate failure), "other".
func Classify(err error) string {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return ClassDNS
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return ClassTimeout
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return ClassRefused
	}
	var (
		certErr   *tls.CertificateVerificationError
		recErr    tls.RecordHeaderError
		alertErr  tls.AlertError
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	if errors.As(err, &certErr) || errors.As(err, &recErr) || errors.As(err, &alertErr) ||
		errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid) {
		return ClassTLS
	}
	// An https URL answered in plain HTTP: net/http replaces the
	// tls.RecordHeaderError by this fixed error (transport.go), so only its
	// text identifies it.
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return ClassTLS
	}
	// A TLS alert from the peer (crypto/tls wraps it in a net.OpError whose
	// Op is "remote error").
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "remote error" {
		return ClassTLS
	}
	return ClassOther
}
