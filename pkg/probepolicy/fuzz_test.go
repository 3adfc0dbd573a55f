package probepolicy

import (
	"errors"
	"net/netip"
	"testing"
)

// FuzzCheckURL: whatever a device reports, CheckURL either refuses it with
// one of the package's errors or returns an http(s) URL with a host, no
// credentials, no fragment, whose literal address (if any) the policy allows,
// and which CheckURL accepts again unchanged.
func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{
		"http://kiosk.example.com:8080/health", "https://[2001:db8::1]/", "http://127.0.0.1/", "http://[::ffff:127.0.0.1]/",
		"http://[fe80::1%25eth0]/", "ftp://x/", "http://user@x/", "http://x:0/", "http://x:65536/", "//x/", "http:x",
		"http://LOCALHOST./", "http://0x7f.1/", "http://2130706433/", "http://10.0.0.1/#frag", "HTTP://X.EXAMPLE/", "",
	} {
		f.Add(s)
	}
	p := Policy{}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := p.CheckURL(raw)
		if err != nil {
			if !errors.Is(err, ErrForbidden) && !errors.Is(err, ErrInvalidURL) {
				t.Fatalf("error %v wraps neither ErrForbidden nor ErrInvalidURL", err)
			}
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			t.Fatalf("scheme %q accepted", u.Scheme)
		}
		if u.Hostname() == "" || u.User != nil || u.Fragment != "" {
			t.Fatalf("accepted %q", u)
		}
		if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
			if err := p.CheckAddr(ip); err != nil {
				t.Fatalf("accepted a forbidden address: %q", u)
			}
		}
		if isLocalhostName(u.Hostname()) {
			t.Fatalf("accepted a localhost name: %q", u)
		}
		again, err := p.CheckURL(u.String())
		if err != nil || again.String() != u.String() {
			t.Fatalf("normalised %q → %q is not stable: %v %v", raw, u, again, err)
		}
	})
}
