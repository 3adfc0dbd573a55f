// Command devicesim is the fleet simulator, trace replayer and load generator
// of devstatus. It is a thin command line over packages sim, load and trace:
//
//	devicesim sim            scripted fleet over HTTP, checks statuses and transitions (exit 1 on mismatch)
//	devicesim replay-live    Grid'5000 trace window over HTTP, time-compressed, final status vs the oracle
//	devicesim replay-virtual trace window published straight to JetStream in trace time (service without ticker)
//	devicesim load           load phases: throughput as a ratio to a plain handler, latency, lag, detection (package load)
//	devicesim baseline-server the plain net/http handler the load rounds compare with
//	devicesim wait-worker    time a restarted worker from its /metrics
//	devicesim plot           redraw a load report (text and SVG)
//	devicesim summary        outages and expected transitions of a trace window
//	devicesim excerpt        write a window's rows (how pkg/trace/testdata was made)
//
// Every flag also reads DEVICESIM_<FLAG> from the environment
// (--admin-token ↔ DEVICESIM_ADMIN_TOKEN). Exit status: 0 matched, 1 the
// service disagreed with the expectations, 2 error or bad usage.
//
// It holds no logic of its own (everything is callable from Go tests through
// the packages) and is a test tool: it must not be part of the product's
// deployment.
package main
