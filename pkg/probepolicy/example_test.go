package probepolicy_test

import (
	"fmt"
	"net/netip"

	"github.com/devstatus/devstatus/pkg/probepolicy"
)

func ExamplePolicy_CheckURL() {
	var p probepolicy.Policy // the default: http(s), public addresses only
	for _, u := range []string{"http://Kiosk-7.Example.com:8080/health", "http://169.254.169.254/latest/", "ftp://kiosk-7.example.com/"} {
		if n, err := p.CheckURL(u); err != nil {
			fmt.Println("refused:", err)
		} else {
			fmt.Println("allowed:", n)
		}
	}
	fleet := probepolicy.Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}}
	fmt.Println(fleet.CheckAddr(netip.MustParseAddr("10.20.3.7")), fleet.CheckAddr(netip.MustParseAddr("10.0.0.1")) != nil)
	// Output:
	// allowed: http://kiosk-7.example.com:8080/health
	// refused: probe target 169.254.169.254 is a link-local address, which the probe policy forbids (allow the range with --probe-allow-cidrs)
	// refused: probe URL scheme "ftp" is not allowed (allowed: http, https)
	// <nil> true
}
