package service

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo says which build is running, from runtime/debug.ReadBuildInfo.
type BuildInfo struct {
	// Version is the main module's version: a tag such as v1.2.0 when built
	// with `go install …@v1.2.0`, a pseudo-version or "(devel)" when built
	// from a checkout.
	Version string
	// Revision is the VCS commit (vcs.revision), with "-dirty" appended when
	// the tree had uncommitted changes; "unknown" without VCS stamping
	// (go build -buildvcs=false, or go run).
	Revision string
	// Time is the commit time (vcs.time, RFC 3339), empty when unknown.
	Time string
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string
}

// ReadBuildInfo returns this binary's [BuildInfo].
func ReadBuildInfo() BuildInfo {
	bi := BuildInfo{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	if v := info.Main.Version; v != "" {
		bi.Version = v
	}
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Revision = s.Value
		case "vcs.time":
			bi.Time = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && bi.Revision != "unknown" {
		bi.Revision += "-dirty"
	}
	return bi
}

// buildInfoGauge is devstatus_build_info{version,revision,goversion} = 1.
func buildInfoGauge(bi BuildInfo) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "devstatus_build_info",
		Help:        "Always 1; the labels say which build runs (main module version, VCS revision, Go version).",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
	})
	g.Set(1)
	return g
}
