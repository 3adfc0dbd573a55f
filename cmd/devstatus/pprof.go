//go:build pprof

package main

// Profiling build (make bench-profile, docs/performance.md): `go build -tags
// pprof ./cmd/devstatus` serves net/http/pprof on DEVSTATUS_PPROF_ADDR (e.g.
// 127.0.0.1:6060), on its own listener, apart from the API. The default build
// has no profiling endpoint.

import (
	"log/slog"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"runtime"
)

func init() {
	addr := os.Getenv("DEVSTATUS_PPROF_ADDR")
	if addr == "" {
		return
	}
	runtime.SetMutexProfileFraction(100)
	runtime.SetBlockProfileRate(100_000) // one sample per 100 µs blocked
	go func() {
		if err := http.ListenAndServe(addr, nil); err != nil {
			slog.Error("pprof listener", slog.Any("err", err))
		}
	}()
}
