package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/pkg/service"
)

func TestPingerFlags(t *testing.T) {
	c, _, err := parse("serve", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ProbeAfter != 35*time.Second || c.PingMaxInterval != 5*time.Minute || c.pinger.Timeout != 2*time.Second ||
		c.pinger.Concurrency != 128 || c.pinger.Policy.AllowPrivate || len(c.pinger.Policy.AllowCIDRs) != 0 || c.pinger.InsecureTLS {
		t.Fatalf("defaults: %+v %+v", c, c.pinger)
	}
	found := false
	for _, r := range c.Roles {
		found = found || r == service.RolePinger
	}
	if !found {
		t.Fatalf("--roles all without pinger: %v", c.Roles)
	}

	t.Setenv("DEVSTATUS_PROBE_ALLOW_PRIVATE", "true")
	t.Setenv("DEVSTATUS_PING_CONCURRENCY", "16")
	c, _, err = parse("serve", []string{"--probe-allow-cidrs", "127.0.0.1, 10.20.0.0/16", "--ping-timeout", "500ms",
		"--probe-schemes", "https", "--probe-after", "40s", "--ping-max-interval", "2m", "--ping-insecure-tls", "--roles", "pinger"})
	if err != nil {
		t.Fatal(err)
	}
	p := c.pinger
	if !p.Policy.AllowPrivate || p.Concurrency != 16 || p.Timeout != 500*time.Millisecond || !p.InsecureTLS ||
		len(p.Policy.Schemes) != 1 || p.Policy.Schemes[0] != "https" || c.ProbeAfter != 40*time.Second || c.PingMaxInterval != 2*time.Minute {
		t.Fatalf("parsed %+v %+v", c, p)
	}
	if len(p.Policy.AllowCIDRs) != 2 || p.Policy.AllowCIDRs[0] != netip.MustParsePrefix("127.0.0.1/32") {
		t.Fatalf("cidrs %v", p.Policy.AllowCIDRs)
	}
	if len(c.Roles) != 1 || c.Roles[0] != service.RolePinger {
		t.Fatalf("roles %v", c.Roles)
	}

	for _, bad := range [][]string{
		{"--probe-schemes", "ftp"},
		{"--probe-schemes", ""},
		{"--probe-allow-cidrs", "10.0.0.0/40"},
		{"--ping-timeout", "1m"},
		{"--ping-timeout", "0s"},
		{"--ping-concurrency", "0"},
		{"--probe-after", "0s"},
		{"--ping-max-interval", "10ms"},
	} {
		if _, _, err := parse("serve", bad); err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("%v: err = %v", bad, err)
		}
	}
}
