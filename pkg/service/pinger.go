package service

import (
	"context"
	"time"

	"github.com/devstatus/devstatus/pkg/pinger"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/registry"
)

// PingerConfig configures the pinger role and the probe policy. The policy
// also applies where probe URLs are set (the bridge role: registration,
// PATCH, heartbeats). Zero values take the documented defaults.
type PingerConfig struct {
	// Policy decides which probe targets are allowed (--probe-schemes,
	// --probe-allow-private, --probe-allow-cidrs). Zero: http and https to
	// public addresses only.
	Policy probepolicy.Policy
	// Timeout of one probe (--ping-timeout). Default 2s.
	Timeout time.Duration
	// Concurrency is the most probes one instance runs at once
	// (--ping-concurrency). Default 128.
	Concurrency int
	// InsecureTLS skips certificate verification of https probe URLs
	// (--ping-insecure-tls). Default false.
	InsecureTLS bool
}

// startPinger starts the pinger role: it pulls probe requests from the
// shared work queue, probes, and publishes ping results.
func (s *Service) startPinger(runCtx context.Context) error {
	cfg := s.cfg
	reg, err := registry.New(registry.Config{Bus: s.Bus, Clock: cfg.Clock, Logger: s.log})
	if err != nil {
		return err
	}
	p, err := pinger.New(pinger.Config{Bus: s.Bus, Registry: reg, Policy: cfg.Pinger.Policy,
		Timeout: cfg.Pinger.Timeout, Concurrency: cfg.Pinger.Concurrency, InsecureTLS: cfg.Pinger.InsecureTLS,
		InstanceID: cfg.InstanceID, Clock: cfg.Clock, Logger: s.log, Registerer: s.reg})
	if err != nil {
		return err
	}
	s.run(runCtx, RolePinger, p.Run)
	s.addReady("pinger", p.Ready)
	return nil
}
