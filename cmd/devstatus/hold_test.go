package main

import (
	"errors"
	"testing"
	"time"
)

// TestOutageHoldFlags: the hold is on by default with the documented
// values; --outage-hold=false (or DEVSTATUS_OUTAGE_HOLD=false) turns it
// off; a fraction outside (0, 1) is refused.
func TestOutageHoldFlags(t *testing.T) {
	c, _, err := parse("serve", nil)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.OutageHold; h.Disabled || h.Fraction != 0.5 || h.MinDevices != 10 || h.Window != 0 {
		t.Fatalf("defaults %+v", h)
	}
	c, _, err = parse("serve", []string{"--outage-hold=false", "--outage-hold-fraction", "0.6", "--outage-hold-min-devices", "50", "--outage-hold-window", "1m"})
	if err != nil {
		t.Fatal(err)
	}
	if h := c.OutageHold; !h.Disabled || h.Fraction != 0.6 || h.MinDevices != 50 || h.Window != time.Minute {
		t.Fatalf("set %+v", h)
	}
	t.Setenv("DEVSTATUS_OUTAGE_HOLD", "false")
	if c, _, err = parse("serve", nil); err != nil || !c.OutageHold.Disabled {
		t.Fatalf("from the environment: %+v %v", c.OutageHold, err)
	}
	for _, bad := range [][]string{{"--outage-hold-fraction", "1"}, {"--outage-hold-fraction", "-0.1"}, {"--outage-hold-min-devices", "0"}, {"--outage-hold=maybe"}} {
		if _, _, err := parse("serve", bad); !errors.Is(err, errUsage) {
			t.Errorf("%v accepted: %v", bad, err)
		}
	}
}
