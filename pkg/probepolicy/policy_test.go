package probepolicy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for addr, want := range map[string]Category{
		"8.8.8.8": CategoryPublic, "2001:4860:4860::8888": CategoryPublic, "100.63.255.255": CategoryPublic,
		"127.0.0.1": CategoryLoopback, "127.255.0.9": CategoryLoopback, "::1": CategoryLoopback, "::ffff:127.0.0.1": CategoryLoopback,
		"169.254.169.254": CategoryLinkLocal, "fe80::1": CategoryLinkLocal, "::ffff:169.254.1.1": CategoryLinkLocal,
		"0.0.0.0": CategoryUnspecified, "0.1.2.3": CategoryUnspecified, "::": CategoryUnspecified,
		"224.0.0.1": CategoryMulticast, "239.1.1.1": CategoryMulticast, "ff02::1": CategoryMulticast, "ff05::1": CategoryMulticast,
		"255.255.255.255": CategoryReserved, "240.0.0.1": CategoryReserved,
		"10.1.2.3": CategoryPrivate, "172.16.0.1": CategoryPrivate, "192.168.1.1": CategoryPrivate,
		"100.64.0.1": CategoryPrivate, "fd00::1": CategoryPrivate, "fec0::1": CategoryPrivate,
	} {
		if got := Classify(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Classify(%s) = %s, want %s", addr, got, want)
		}
	}
}

func TestCheckURL(t *testing.T) {
	def := Policy{}
	private := Policy{AllowPrivate: true}
	loop := Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	httpsOnly := Policy{Schemes: []string{"https"}}
	cases := []struct {
		name    string
		p       Policy
		url     string
		want    error  // nil: allowed
		msg     string // substring of the error
		normal  string // normalised form when allowed
		categor Category
	}{
		{"public name", def, "http://Kiosk-7.Example.COM:8080/health#x", nil, "", "http://kiosk-7.example.com:8080/health", ""},
		{"public ip https", def, "https://93.184.216.34/", nil, "", "https://93.184.216.34/", ""},
		{"loopback v4", def, "http://127.0.0.1:9000/", ErrForbidden, "loopback address", "", CategoryLoopback},
		{"loopback v6", def, "http://[::1]/", ErrForbidden, "loopback", "", CategoryLoopback},
		{"mapped loopback", def, "http://[::ffff:127.0.0.1]/", ErrForbidden, "loopback", "", CategoryLoopback},
		{"localhost name", def, "http://LOCALHOST:80/", ErrForbidden, "loopback", "", CategoryLoopback},
		{"sub.localhost name", def, "http://app.localhost/", ErrForbidden, "loopback", "", CategoryLoopback},
		{"metadata", def, "http://169.254.169.254/latest/meta-data/", ErrForbidden, "link-local address", "", CategoryLinkLocal},
		{"link-local v6 zone", def, "http://[fe80::1%25eth0]/", ErrForbidden, "link-local", "", CategoryLinkLocal},
		{"unspecified", def, "http://0.0.0.0/", ErrForbidden, "unspecified", "", CategoryUnspecified},
		{"multicast", def, "http://224.0.0.1/", ErrForbidden, "multicast", "", CategoryMulticast},
		{"broadcast", def, "http://255.255.255.255/", ErrForbidden, "reserved", "", CategoryReserved},
		{"private default", def, "http://10.0.0.7/", ErrForbidden, "--probe-allow-private", "", CategoryPrivate},
		{"private allowed", private, "http://10.0.0.7/", nil, "", "http://10.0.0.7/", ""},
		{"loopback still refused with private", private, "http://127.0.0.1/", ErrForbidden, "loopback", "", CategoryLoopback},
		{"loopback allowed by cidr", loop, "http://127.0.0.1:1234/x", nil, "", "http://127.0.0.1:1234/x", ""},
		{"other loopback not in cidr", loop, "http://127.0.0.2/", ErrForbidden, "loopback", "", CategoryLoopback},
		{"localhost allowed with loopback cidr", loop, "http://localhost:1234/", nil, "", "http://localhost:1234/", ""},
		{"ftp", def, "ftp://example.com/", ErrForbidden, `scheme "ftp" is not allowed`, "", ""},
		{"file", def, "file:///etc/passwd", ErrForbidden, `scheme "file"`, "", ""},
		{"gopher", def, "gopher://example.com/", ErrForbidden, "scheme", "", ""},
		{"http when https only", httpsOnly, "http://example.com/", ErrForbidden, "scheme", "", ""},
		{"relative", def, "/health", ErrInvalidURL, "absolute", "", ""},
		{"no scheme", def, "example.com:80", ErrForbidden, "scheme", "", ""},
		{"no host", def, "http:///x", ErrInvalidURL, "no host", "", ""},
		{"opaque", def, "http:example.com", ErrInvalidURL, "no host", "", ""},
		{"credentials", def, "http://user:pw@example.com/", ErrInvalidURL, "credentials", "", ""},
		{"bad port", def, "http://example.com:99999/", ErrInvalidURL, "port", "", ""},
		{"space", def, "http://example.com/a b", ErrInvalidURL, "space", "", ""},
		{"control", def, "http://example.com/\x00", ErrInvalidURL, "control", "", ""},
		{"too long", def, "http://example.com/" + strings.Repeat("a", MaxURLLen), ErrInvalidURL, "longer", "", ""},
		{"empty", def, "", ErrInvalidURL, "absolute", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u, err := c.p.CheckURL(c.url)
			if c.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if u.String() != c.normal {
					t.Fatalf("normalised %q, want %q", u.String(), c.normal)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not say %q", err, c.msg)
			}
			var fe *ForbiddenError
			if c.categor != "" && (!errors.As(err, &fe) || fe.Category != c.categor) {
				t.Errorf("error %#v, want category %s", err, c.categor)
			}
		})
	}
}

func TestValidateAndParseCIDRs(t *testing.T) {
	if err := (&Policy{Schemes: []string{"https", "ftp"}}).Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("ftp scheme accepted: %v", err)
	}
	if err := (&Policy{}).Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := ParseCIDRs(" 10.20.0.0/16, 127.0.0.1 ,fd00::1/8,")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.20.0.0/16", "127.0.0.1/32", "fd00::/8"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("got %v, want %v", got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0/8"} {
		if _, err := ParseCIDRs(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParseCIDRs(%q) = %v", bad, err)
		}
	}
	if got, err := ParseCIDRs(""); err != nil || got != nil {
		t.Errorf("empty: %v %v", got, err)
	}
}

// TestControlRefusesResolvedAddress dials a host name that resolves to
// loopback: the dial-time check refuses it before connecting (DNS
// rebinding), and allows it once loopback is allowed.
func TestControlRefusesResolvedAddress(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	// The URL check accepts a public-looking host name; only the dial sees
	// what it resolves to. "localhost" is refused by name at CheckURL, so
	// dial it directly here as a name that resolves to loopback.
	get := func(p *Policy) error {
		tr := &http.Transport{Proxy: nil, DisableKeepAlives: true,
			DialContext: (&net.Dialer{Timeout: 2 * time.Second, Control: p.Control}).DialContext}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://localhost:"+port+"/", nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	err := get(&Policy{})
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("dial to loopback via a name: %v", err)
	}
	var fe *ForbiddenError
	if !errors.As(err, &fe) || fe.Category != CategoryLoopback {
		t.Fatalf("error %v", err)
	}
	if hits != 0 {
		t.Fatal("the forbidden target was contacted")
	}
	if err := get(&Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}); err != nil {
		t.Fatalf("allowed loopback refused: %v", err)
	}
	if hits != 1 {
		t.Fatalf("hits = %d", hits)
	}
}
