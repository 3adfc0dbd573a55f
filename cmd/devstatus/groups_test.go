package main

import (
	"strings"
	"testing"
	"time"
)

func TestGroupThresholdsInterval(t *testing.T) {
	c, _, err := parse("serve", []string{"--group-thresholds", "kiosk=60s/600s/30s/20s,lab=90s/900s//45s,old=50s/500s,pi=50s/500s/10s"})
	if err != nil {
		t.Fatal(err)
	}
	g := c.Thresholds.Groups
	if g["kiosk"].OfflineAfter != 60*time.Second || g["kiosk"].DisconnectAfter != 600*time.Second || g["kiosk"].PingIgnoreWithin != 30*time.Second {
		t.Errorf("kiosk %+v", g["kiosk"])
	}
	// An empty ping-ignore part is the global value.
	if g["lab"].PingIgnoreWithin != c.Thresholds.Default.PingIgnoreWithin || g["pi"].PingIgnoreWithin != 10*time.Second {
		t.Errorf("lab %+v pi %+v", g["lab"], g["pi"])
	}
	want := map[string]time.Duration{"kiosk": 20 * time.Second, "lab": 45 * time.Second}
	if len(c.groupIntervals) != len(want) || c.groupIntervals["kiosk"] != want["kiosk"] || c.groupIntervals["lab"] != want["lab"] {
		t.Errorf("intervals %v, want %v (groups without one keep --heartbeat-interval)", c.groupIntervals, want)
	}
	if len(c.warnings) != 0 {
		t.Errorf("warnings %v", c.warnings)
	}

	// An interval not shorter than the group's offline_after warns.
	c, _, err = parse("serve", []string{"--group-thresholds", "slow=40s/300s/30s/40s"})
	if err != nil || len(c.warnings) != 1 || !strings.Contains(c.warnings[0], "group slow") {
		t.Errorf("slow: %v %v", err, c.warnings)
	}
	for _, bad := range []string{"k=60s/600s/30s/0s", "k=60s/600s/30s/1500ms", "k=60s/600s/30s/x", "k=60s/600s/30s/20s/1s", "k=60s"} {
		if _, _, err := parse("serve", []string{"--group-thresholds", bad}); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
