package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// startHTTP listens on HTTPAddr (HTTPS with a certificate) and serves mux
// behind the shared middleware: refusal of ambiguous framing (both
// Content-Length and Transfer-Encoding), device ids in paths, JSON errors of
// the mux.
func (s *Service) startHTTP(ctx context.Context, mux *http.ServeMux) error {
	cfg := s.cfg
	var tlsCfg *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("%w: TLS certificate: %w", ErrInvalidConfig, err)
		}
		// HTTP/1.1 only: the framing guard needs to see the plaintext, which
		// net/http's HTTP/2 path (a *tls.Conn handed to it directly) hides.
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("service: listen on %s: %w", cfg.HTTPAddr, err)
	}
	s.listener = l
	served := l
	if tlsCfg != nil {
		served = tls.NewListener(l, tlsCfg)
	}
	served = httpx.GuardFraming(served)
	s.server = &http.Server{
		Handler:           httpx.RejectAmbiguousFraming(httpx.DeviceIDs(httpx.JSONErrors(mux))),
		ConnContext:       httpx.FramingConnContext,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second, // long-lived streams extend their own deadline
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.server.Serve(served); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("service: http: %w", err)
		}
	}()
	return nil
}

// startMetrics serves /metrics (and /debug/pprof/ with Pprof) on
// MetricsAddr.
func (s *Service) startMetrics(ctx context.Context, metrics http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("service: listen on %s (metrics): %w", s.cfg.MetricsAddr, err)
	}
	s.metricsL = l
	s.metricsS = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
		// no WriteTimeout: a CPU profile or trace streams for its ?seconds=
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.metricsS.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("service: metrics http: %w", err)
		}
	}()
	return nil
}

// MetricsAddr is the metrics listener's address, "" without MetricsAddr.
func (s *Service) MetricsAddr() string {
	if s.metricsL == nil {
		return ""
	}
	return s.metricsL.Addr().String()
}

// TLS reports whether the HTTP listener serves HTTPS.
func (s *Service) TLS() bool { return s.cfg.TLSCertFile != "" }
