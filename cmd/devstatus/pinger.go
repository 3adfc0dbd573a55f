package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/devstatus/devstatus/pkg/pinger"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/service"
)

// finishPinger checks the ping and probe flags and builds c.pinger.
func (c *config) finishPinger() error {
	var errs []error
	var schemes []string
	for _, s := range strings.Split(c.ProbeSchemes, ",") {
		if s = strings.ToLower(strings.TrimSpace(s)); s != "" {
			schemes = append(schemes, s)
		}
	}
	if len(schemes) == 0 {
		errs = append(errs, errors.New("--probe-schemes must name http, https or both"))
	}
	cidrs, err := probepolicy.ParseCIDRs(c.ProbeAllowCIDRs)
	if err != nil {
		errs = append(errs, fmt.Errorf("--probe-allow-cidrs: %w", err))
	}
	policy := probepolicy.Policy{Schemes: schemes, AllowPrivate: c.ProbeAllowPrivate, AllowCIDRs: cidrs}
	if err := policy.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--probe-schemes: %w", err))
	}
	if c.PingTimeout <= 0 || c.PingTimeout > pinger.MaxTimeout {
		errs = append(errs, fmt.Errorf("--ping-timeout must be in (0, %s], got %s", pinger.MaxTimeout, c.PingTimeout))
	}
	if c.PingConcurrency < 1 {
		errs = append(errs, fmt.Errorf("--ping-concurrency must be at least 1, got %d", c.PingConcurrency))
	}
	if c.PingMaxInterval < time.Second {
		errs = append(errs, fmt.Errorf("--ping-max-interval must be at least 1s, got %s", c.PingMaxInterval))
	}
	if c.ProbeAfter == 0 {
		errs = append(errs, errors.New("--probe-after must not be 0 (negative disables probe requests)"))
	}
	if c.ProbeAfter > 0 && c.ProbeAfter < c.Thresholds.Default.PingIgnoreWithin {
		// An earlier probe's result would be ignored: the worker waits for
		// ping_ignore_within instead.
		slog.Warn("--probe-after is shorter than --ping-ignore-within; the first probe waits for ping_ignore_within",
			slog.Duration("probe_after", c.ProbeAfter), slog.Duration("ping_ignore_within", c.Thresholds.Default.PingIgnoreWithin))
	}
	c.pinger = service.PingerConfig{Policy: policy, Timeout: c.PingTimeout, Concurrency: c.PingConcurrency, InsecureTLS: c.PingInsecureTLS}
	return errors.Join(errs...)
}
