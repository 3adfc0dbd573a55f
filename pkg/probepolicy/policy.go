package probepolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"unicode/utf8"
)

// Sentinel errors; branch on them with errors.Is.
var (
	// ErrForbidden is wrapped by every *[ForbiddenError]: the policy refuses
	// the target.
	ErrForbidden = errors.New("probe target forbidden by the probe policy")
	// ErrInvalidURL: the probe URL is not an absolute http(s) URL the ping
	// service can use (unparsable, no host, credentials, too long …).
	ErrInvalidURL = errors.New("invalid probe URL")
	// ErrInvalidConfig wraps the errors of [Policy.Validate] and [ParseCIDRs].
	ErrInvalidConfig = errors.New("probepolicy: invalid config")
)

// MaxURLLen is the longest probe URL accepted, in bytes.
const MaxURLLen = 2048

// Category names a class of addresses the policy knows. Categories are
// stable strings (used in error messages and metrics).
type Category string

// Address categories. [CategoryPublic] is always allowed; [CategoryPrivate]
// when [Policy.AllowPrivate] is set; the others only through
// [Policy.AllowCIDRs].
const (
	CategoryPublic      Category = "public"
	CategoryPrivate     Category = "private"
	CategoryLoopback    Category = "loopback"
	CategoryLinkLocal   Category = "link_local"
	CategoryUnspecified Category = "unspecified"
	CategoryMulticast   Category = "multicast"
	CategoryReserved    Category = "reserved"
)

var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	sharedCGNAT = netip.MustParsePrefix("100.64.0.0/10")
	reservedV4  = netip.MustParsePrefix("240.0.0.0/4") // includes 255.255.255.255
	siteLocalV6 = netip.MustParsePrefix("fec0::/10")
)

// Classify returns the category of an address (IPv4-mapped IPv6 addresses
// are classified as the IPv4 address they carry).
func Classify(ip netip.Addr) Category {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid(), ip.IsUnspecified(), ip.Is4() && thisNetwork.Contains(ip):
		return CategoryUnspecified
	case ip.IsLoopback():
		return CategoryLoopback
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast(), ip.IsLinkLocalMulticast():
		return CategoryMulticast
	case ip.IsLinkLocalUnicast():
		return CategoryLinkLocal
	case ip.Is4() && reservedV4.Contains(ip):
		return CategoryReserved
	case ip.IsPrivate(), ip.Is4() && sharedCGNAT.Contains(ip), ip.Is6() && siteLocalV6.Contains(ip):
		return CategoryPrivate
	}
	return CategoryPublic
}

// ForbiddenError says why the policy refuses a target. It unwraps to
// [ErrForbidden].
type ForbiddenError struct {
	// Target is the URL or dialled address that was refused.
	Target string
	// Scheme is set when the scheme was refused.
	Scheme string
	// Addr is the refused address (invalid when the scheme was refused).
	Addr netip.Addr
	// Category is the refused address's category.
	Category Category
}

func (e *ForbiddenError) Error() string {
	if e.Scheme != "" {
		return fmt.Sprintf("probe URL scheme %q is not allowed (allowed: http, https)", e.Scheme)
	}
	hint := "allow the range with --probe-allow-cidrs"
	if e.Category == CategoryPrivate {
		hint = "allow private ranges with --probe-allow-private or this range with --probe-allow-cidrs"
	}
	return fmt.Sprintf("probe target %s is a %s address, which the probe policy forbids (%s)",
		e.Addr, strings.ReplaceAll(string(e.Category), "_", "-"), hint)
}

func (e *ForbiddenError) Unwrap() error { return ErrForbidden }

// Policy says which targets may be probed. The zero value is the secure
// default: schemes http and https, public addresses only.
type Policy struct {
	// Schemes allowed in probe URLs; a subset of {"http", "https"}.
	// Default (nil): both.
	Schemes []string
	// AllowPrivate allows private ranges (RFC 1918 10/8, 172.16/12,
	// 192.168/16; RFC 6598 100.64/10; RFC 4193 fc00::/7; fec0::/10).
	// Default false: a fleet reachable on a private network should list its
	// range in AllowCIDRs instead, so the rest of the internal network stays
	// out of reach.
	AllowPrivate bool
	// AllowCIDRs are ranges allowed whatever their category (loopback and
	// link-local included). Default none.
	AllowCIDRs []netip.Prefix
}

var defaultSchemes = []string{"http", "https"}

func (p *Policy) schemes() []string {
	if len(p.Schemes) == 0 {
		return defaultSchemes
	}
	return p.Schemes
}

// Validate checks the policy. Errors wrap [ErrInvalidConfig].
func (p *Policy) Validate() error {
	var errs []error
	for _, s := range p.Schemes {
		if s != "http" && s != "https" {
			errs = append(errs, fmt.Errorf("probe scheme %q is not supported (http, https)", s))
		}
	}
	for _, c := range p.AllowCIDRs {
		if !c.IsValid() {
			errs = append(errs, fmt.Errorf("invalid allowed range %v", c))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// CheckAddr returns nil when the policy allows probing ip, else a
// *[ForbiddenError].
func (p *Policy) CheckAddr(ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	for _, c := range p.AllowCIDRs {
		if c.Contains(ip) {
			return nil
		}
	}
	switch cat := Classify(ip); cat {
	case CategoryPublic:
		return nil
	case CategoryPrivate:
		if p.AllowPrivate {
			return nil
		}
		fallthrough
	default:
		return &ForbiddenError{Target: ip.String(), Addr: ip, Category: cat}
	}
}

// isLocalhostName reports the names that always resolve to loopback
// (RFC 6761 §6.3).
func isLocalhostName(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// CheckURL parses and checks a probe URL as it is set (registration, PATCH,
// heartbeat) and returns it normalised (scheme and host lower case, no
// fragment). It refuses, with an error wrapping [ErrInvalidURL]: more than
// [MaxURLLen] bytes, invalid UTF-8 or control characters, a relative URL, no
// host, credentials (user:password@), an invalid port; and, with a
// *[ForbiddenError]: a scheme other than the allowed ones, a literal IP
// address the policy forbids, and "localhost" names unless loopback is
// allowed. Host names are otherwise accepted here: their addresses are
// checked when the ping service dials ([Policy.Control]).
func (p *Policy) CheckURL(raw string) (*url.URL, error) {
	if len(raw) > MaxURLLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidURL, MaxURLLen)
	}
	if !utf8.ValidString(raw) {
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrInvalidURL)
	}
	for _, r := range raw {
		if r < 0x20 || r == 0x7f || r == ' ' {
			return nil, fmt.Errorf("%w: contains a space or control character", ErrInvalidURL)
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("%w: %q is not an absolute URL (http://host[:port]/path)", ErrInvalidURL, raw)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if !slices.Contains(p.schemes(), u.Scheme) {
		return nil, &ForbiddenError{Target: raw, Scheme: u.Scheme}
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w: %q has no host", ErrInvalidURL, raw)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: credentials in the URL are not allowed", ErrInvalidURL)
	}
	if port := u.Port(); port != "" {
		var n int
		if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != port {
			return nil, fmt.Errorf("%w: invalid port %q", ErrInvalidURL, port)
		}
	}
	host := strings.ToLower(u.Hostname())
	if ip, err := netip.ParseAddr(host); err == nil {
		if err := p.CheckAddr(ip); err != nil {
			var fe *ForbiddenError
			if errors.As(err, &fe) {
				fe.Target = raw
			}
			return nil, err
		}
	} else if isLocalhostName(host) {
		if err := p.CheckAddr(netip.AddrFrom4([4]byte{127, 0, 0, 1})); err != nil {
			var fe *ForbiddenError
			if errors.As(err, &fe) {
				fe.Target = raw
			}
			return nil, err
		}
	} else if strings.ContainsAny(host, "%") {
		return nil, fmt.Errorf("%w: invalid host %q", ErrInvalidURL, host)
	}
	u.Host = strings.ToLower(u.Host)
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// Control is a net.Dialer Control function: it runs after DNS resolution,
// before the connection is made, with the address actually dialled, and
// refuses it with a *[ForbiddenError] when the policy forbids it. Use it (and
// no HTTP proxy) for every probe connection, so a host name that resolves to
// a forbidden address — at registration or later, DNS rebinding included —
// is never contacted.
func (p *Policy) Control(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%w: dial address %q: %v", ErrForbidden, address, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: dial address %q is not an IP address", ErrForbidden, address)
	}
	if err := p.CheckAddr(ip); err != nil {
		var fe *ForbiddenError
		if errors.As(err, &fe) {
			fe.Target = address
		}
		return err
	}
	return nil
}

// ParseCIDRs parses a comma-separated list of ranges ("10.20.0.0/16,
// 127.0.0.1, fd00::/8"); a bare address means that one address. Empty input
// gives nil. Errors wrap [ErrInvalidConfig].
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if !strings.Contains(item, "/") {
			ip, err := netip.ParseAddr(item)
			if err != nil {
				return nil, fmt.Errorf("%w: %q is not an address or CIDR range", ErrInvalidConfig, item)
			}
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
			continue
		}
		pfx, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("%w: %q is not a CIDR range: %v", ErrInvalidConfig, item, err)
		}
		out = append(out, pfx.Masked())
	}
	return out, nil
}
