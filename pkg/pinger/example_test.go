package pinger_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"time"

	"github.com/devstatus/devstatus/pkg/pinger"
	"github.com/devstatus/devstatus/pkg/probepolicy"
)

// A Prober on its own: the pinger role uses one per instance. Loopback is
// forbidden by default; this example allows it for its test server.
func ExampleProber_Probe() {
	device := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer device.Close()
	p := pinger.NewProber(pinger.ProberConfig{Timeout: time.Second,
		Policy: probepolicy.Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	for _, path := range []string{"/health", "/broken"} {
		r := p.Probe(context.Background(), device.URL+path)
		fmt.Printf("%s: ok=%v class=%q status=%d\n", path, r.OK, r.Class, r.Status)
	}
	r := pinger.NewProber(pinger.ProberConfig{}).Probe(context.Background(), device.URL)
	fmt.Println("default policy, loopback target probed:", !r.NotProbed())
	// Output:
	// /health: ok=true class="" status=200
	// /broken: ok=false class="http_status" status=500
	// default policy, loopback target probed: false
}
