package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/devstatus/devstatus/pkg/load"
)

// namedList is a repeatable flag of name=value pairs.
type namedList []string

func (n *namedList) String() string { return strings.Join(*n, ",") }
func (n *namedList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if !strings.Contains(p, "=") {
				return fmt.Errorf("%q: want name=value", p)
			}
			*n = append(*n, p)
		}
	}
	return nil
}

func loadCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                  load.Config
		logLevel, out, plot  string
		label                string
		metrics, pids, extra namedList
	)
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "base URL of the devstatus service")
	fs.StringVar(&cfg.AdminToken, "admin-token", "", "admin bearer token (registration, reads)")
	registerLogLevel(fs, &logLevel)
	fs.IntVar(&cfg.Devices, "devices", 20000, "devices sending single heartbeats (at least the expected rate × the service's --rate-min-interval)")
	fs.IntVar(&cfg.GatewayDevices, "gateway-devices", 0, "devices behind gateways (0: no gateway phases)")
	fs.IntVar(&cfg.GatewayBatch, "gateway-batch", 1000, "devices per gateway = heartbeats per batch request (1..1000)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 128, "connections of the single-heartbeat phases")
	fs.IntVar(&cfg.GatewayConcurrency, "gateway-concurrency", 8, "connections of the gateway phases")
	fs.IntVar(&cfg.RegisterConcurrency, "register-concurrency", 64, "registrations in flight")
	fs.StringVar(&cfg.Prefix, "prefix", "", `id prefix (default "ld-<random>-")`)
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "timeout of one request")
	fs.BoolVar(&cfg.NoWarmup, "no-warmup", false, "skip the warm-up (one heartbeat of every device, then wait for the lag to drain)")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds of baseline then service closed loops (-1: none)")
	fs.DurationVar(&cfg.RoundDuration, "round-duration", 10*time.Second, "duration of each closed loop of a round")
	fs.StringVar(&cfg.BaselineURL, "baseline-url", "", "a running baseline server (default: start `devicesim baseline-server`)")
	fs.DurationVar(&cfg.SustainDuration, "sustain-duration", 30*time.Second, "open loop at the rounds' whole-chain maximum (0: skip)")
	fs.Float64Var(&cfg.SustainFraction, "sustain-fraction", 1.0, "fraction of the whole-chain maximum offered in the sustain phase")
	fs.DurationVar(&cfg.SteadyDuration, "steady-duration", 75*time.Second, "open loop with detection latency (0: skip; at least --offline-after + 15s)")
	fs.Float64Var(&cfg.SteadyFraction, "steady-fraction", 0.7, "fraction of the sustained maximum offered in the steady phase")
	fs.Float64Var(&cfg.SteadyRate, "steady-rate", 0, "heartbeats/s of the steady phase instead of the fraction")
	fs.IntVar(&cfg.Sentinels, "sentinels", 200, "devices that go silent in the steady phase (detection latency)")
	fs.DurationVar(&cfg.OfflineAfter, "offline-after", 40*time.Second, "the service's --offline-after")
	fs.DurationVar(&cfg.GatewayMaxDuration, "gateway-max-duration", 0, "closed loop of gateway batches (0: skip)")
	fs.Float64Var(&cfg.GatewayRate, "gateway-rate", 0, "heartbeats/s of the gateway open loop (0: skip)")
	fs.DurationVar(&cfg.GatewayDuration, "gateway-duration", time.Minute, "duration of the gateway open loop")
	fs.DurationVar(&cfg.GatewayRamp, "gateway-ramp", 0, "bring the gateways online one after another over this time (0: all at once)")
	fs.Var(&metrics, "metrics", "name=URL of a /metrics page of the service (repeatable): service=http://…/metrics,worker=http://…/metrics")
	fs.StringVar(&cfg.WorkerMetrics, "worker-metrics", "", `name of the --metrics entry that is the worker process (default "worker" or the first)`)
	fs.Var(&pids, "cpu-pid", "name=PID of another process whose CPU (with its children) is reported, e.g. postgres=1234 (repeatable)")
	fs.StringVar(&out, "out", "", "write the JSON report here")
	fs.StringVar(&plot, "plot", "", "write the SVG plot here")
	fs.StringVar(&label, "label", "", "label of the run in the report and plot")
	fs.Var(&extra, "extra", "name=JSON value added to the report's extra object (repeatable)")
	return &ffcli.Command{
		Name:       "load",
		ShortUsage: "devicesim load --url URL --admin-token TOKEN [flags]",
		ShortHelp:  "measure throughput (as a ratio to a plain net/http handler), latency, lag, detection latency, CPU and memory",
		LongHelp: "Registers --devices single devices and --gateway-devices devices behind gateways, then runs, each optional:\n" +
			"  rounds       closed loops against the baseline (a plain net/http JSON handler, started by this command) and\n" +
			"               the service, alternately: the ratio in each round survives a noisy machine;\n" +
			"  sustain      open loop at the rounds' whole-chain maximum: is the lag flat?\n" +
			"  steady       open loop at --steady-fraction of the sustained maximum; --sentinels devices go silent and\n" +
			"               the time until their timeout is visible in Postgres (read API list) is the detection latency;\n" +
			"  gateway-max  closed loop of gateway batches;  gateway  open loop of gateway batches at --gateway-rate.\n" +
			"HTTP/1.1 keep-alive connections with a minimal client. Reads the service's /metrics (--metrics) for lag, CPU and\n" +
			"memory. Writes a JSON report (--out) and an SVG plot (--plot). The service's rate limit must allow the schedule.\n" + envHelp,
		FlagSet: fs,
		Options: options(),
		Exec: func(ctx context.Context, _ []string) error {
			log, err := newLogger(stderr, logLevel)
			if err != nil {
				return err
			}
			if cfg.AdminToken == "" {
				return errors.New("--admin-token (or DEVICESIM_ADMIN_TOKEN) is required")
			}
			for _, m := range metrics {
				k, v, _ := strings.Cut(m, "=")
				cfg.Metrics = append(cfg.Metrics, load.NamedURL{Name: k, URL: v})
			}
			for _, p := range pids {
				k, v, _ := strings.Cut(p, "=")
				pid, err := strconv.Atoi(v)
				if err != nil {
					return fmt.Errorf("--cpu-pid %q: %w", p, err)
				}
				cfg.CPUPIDs = append(cfg.CPUPIDs, load.NamedPID{Name: k, PID: pid})
			}
			cfg.Logger = log
			rep, err := load.Run(ctx, cfg)
			if rep != nil {
				rep.Label = label
				if len(extra) > 0 {
					rep.Extra = map[string]any{}
					for _, e := range extra {
						k, v, _ := strings.Cut(e, "=")
						var x any
						if json.Unmarshal([]byte(v), &x) != nil {
							x = v
						}
						rep.Extra[k] = x
					}
				}
				fmt.Fprint(stdout, rep)
				if out != "" {
					if werr := rep.WriteJSON(out); werr != nil {
						return werr
					}
				}
				if plot != "" {
					if werr := rep.WriteSVG(plot); werr != nil {
						return werr
					}
				}
			}
			return err
		},
	}
}

func baselineCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim baseline-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	return &ffcli.Command{
		Name:       "baseline-server",
		ShortUsage: "devicesim baseline-server [--addr host:port]",
		ShortHelp:  "serve the load baseline: a plain net/http JSON heartbeat handler (prints \"listening <addr>\")",
		FlagSet:    fs,
		Options:    options(),
		Exec: func(ctx context.Context, _ []string) error {
			return load.ServeBaseline(ctx, *addr, stdout)
		},
	}
}

func waitWorkerCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim wait-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		url        string
		since      float64
		partitions int
		lagBelow   float64
		timeout    time.Duration
	)
	fs.StringVar(&url, "metrics", "http://127.0.0.1:8080/metrics", "the /metrics page of the (re)started worker process")
	fs.Float64Var(&since, "since", 0, "Unix time (seconds, fractional) the worker process was started; default now")
	fs.IntVar(&partitions, "partitions", 16, "partitions the worker must own")
	fs.Float64Var(&lagBelow, "lag-below", 1000, "consumer lag that counts as caught up")
	fs.DurationVar(&timeout, "timeout", 2*time.Minute, "give up after")
	return &ffcli.Command{
		Name:       "wait-worker",
		ShortUsage: "devicesim wait-worker --metrics URL --since UNIXTIME",
		ShortHelp:  "time a (re)started worker: until it serves metrics, owns every partition, applies events again, has caught up",
		FlagSet:    fs,
		Options:    options(),
		Exec: func(ctx context.Context, _ []string) error {
			start := time.Now()
			if since > 0 {
				start = time.Unix(0, int64(since*1e9))
			}
			res, err := load.WaitWorker(ctx, url, start, partitions, lagBelow, timeout)
			b, _ := json.MarshalIndent(res, "", "  ")
			fmt.Fprintln(stdout, string(b))
			if err != nil {
				fmt.Fprintln(os.Stderr, "devicesim: wait-worker:", err)
			}
			return err
		},
	}
}

func plotCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "write the SVG plot here (default: print the text report only)")
	return &ffcli.Command{
		Name:       "plot",
		ShortUsage: "devicesim plot [--out plot.svg] report.json",
		ShortHelp:  "redraw a load report: the text summary on stdout and, with --out, the SVG plot",
		FlagSet:    fs,
		Options:    options(),
		Exec: func(_ context.Context, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("devicesim plot: one report.json expected, got %d arguments", len(args))
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var rep load.Report
			if err := json.Unmarshal(b, &rep); err != nil {
				return fmt.Errorf("devicesim plot: %s: %w", args[0], err)
			}
			fmt.Fprint(stdout, rep.String())
			if *out != "" {
				return rep.WriteSVG(*out)
			}
			return nil
		},
	}
}
