package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/sim"
	"github.com/devstatus/devstatus/pkg/trace"
)

// Exit codes.
const (
	exitOK       = 0
	exitMismatch = 1 // the run worked and the service disagreed with the expectations
	exitError    = 2 // bad usage, or the run could not be done
)

// envPrefix: every flag also reads DEVICESIM_<FLAG_IN_UPPER_SNAKE_CASE>.
const envPrefix = "DEVICESIM"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errMismatch makes run exit with exitMismatch.
var errMismatch = errors.New("the service did not match the expectations")

// run parses args, runs the chosen subcommand and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "devicesim: %v\n", err)
		return exitError
	}
	err := root.Run(ctx)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(stderr, ffcli.DefaultUsageFunc(root))
		return exitError
	case errors.Is(err, errMismatch):
		fmt.Fprintf(stderr, "devicesim: %v\n", err)
		return exitMismatch
	default:
		fmt.Fprintf(stderr, "devicesim: %v\n", err)
		return exitError
	}
}

// common flags of the commands that talk to the service over HTTP.
type httpFlags struct {
	url, adminToken, logLevel string
	timeout                   time.Duration
}

func (h *httpFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&h.url, "url", "http://127.0.0.1:8080", "base URL of the devstatus service")
	fs.StringVar(&h.adminToken, "admin-token", "", "admin bearer token (registration and reads)")
	fs.DurationVar(&h.timeout, "timeout", 10*time.Second, "timeout of one HTTP request")
	registerLogLevel(fs, &h.logLevel)
}

func (h *httpFlags) client() (*apiclient.Client, error) {
	if h.adminToken == "" {
		return nil, errors.New("--admin-token (or DEVICESIM_ADMIN_TOKEN) is required")
	}
	return apiclient.NewClient(apiclient.ClientConfig{URL: h.url, AdminToken: h.adminToken, Timeout: h.timeout})
}

func registerLogLevel(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "log-level", "info", "log level on stderr: debug, info, warn, error")
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func options() []ff.Option { return []ff.Option{ff.WithEnvVarPrefix(envPrefix)} }

const envHelp = "Every flag also reads the environment variable DEVICESIM_<FLAG> (upper snake case, e.g. --admin-token ↔ DEVICESIM_ADMIN_TOKEN); a flag on the command line wins."

func newRoot(stdout, stderr io.Writer) *ffcli.Command {
	rootFS := flag.NewFlagSet("devicesim", flag.ContinueOnError)
	rootFS.SetOutput(stderr)
	return &ffcli.Command{
		Name:       "devicesim",
		ShortUsage: "devicesim <subcommand> [flags]",
		LongHelp: "Fleet simulator, trace replayer and load generator for devstatus.\n\n" +
			"Exit status: 0 when the run matched its expectations, 1 when the service disagreed, 2 on error.\n" + envHelp,
		FlagSet: rootFS,
		Options: options(),
		Subcommands: []*ffcli.Command{
			simCommand(stdout, stderr),
			replayLiveCommand(stdout, stderr),
			replayVirtualCommand(stdout, stderr),
			loadCommand(stdout, stderr),
			baselineCommand(stdout, stderr),
			waitWorkerCommand(stdout, stderr),
			plotCommand(stdout, stderr),
			summaryCommand(stdout, stderr),
			excerptCommand(stdout, stderr),
		},
		Exec: func(context.Context, []string) error { return flag.ErrHelp },
	}
}

func simCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		hf                                 httpFlags
		s                                  sim.Scenario
		check                              bool
		checkTimes                         time.Duration
		concurrency                        int
		offline, disconnect, jitter, margn time.Duration
		seed                               uint64
	)
	hf.register(fs)
	fs.IntVar(&s.Devices, "devices", 100, "number of simulated devices")
	fs.IntVar(&s.Groups, "groups", 3, "number of device groups")
	fs.DurationVar(&s.Interval, "interval", time.Second, "heartbeat interval I")
	fs.DurationVar(&jitter, "jitter", 0, "largest ± offset of a heartbeat (0: min(I/10, (O−I)/5); negative: none)")
	fs.DurationVar(&offline, "offline-after", 2*time.Second, "the service's --offline-after (O), for the expectations")
	fs.DurationVar(&disconnect, "disconnect-after", 5*time.Second, "the service's --disconnect-after (D), for the expectations")
	fs.DurationVar(&margn, "margin", 0, "least distance of any silence from O and D (0: min(I/2, O−I−2·jitter))")
	fs.IntVar(&s.FlapCycles, "flap-cycles", 2, "offline/back cycles of a flapping device")
	fs.IntVar(&s.AwkwardEvery, "awkward-every", 3, "every n-th device id has '/', ':', '.', '*', '>', spaces, non-ASCII… (-1: none)")
	fs.StringVar(&s.Prefix, "prefix", "", `device id and group prefix (default "sim-<random>-")`)
	fs.Uint64Var(&seed, "seed", 1, "seed of behaviours, phases and jitter")
	fs.BoolVar(&check, "check", true, "read the service at the end and compare statuses and transitions with the expectations")
	fs.DurationVar(&checkTimes, "check-times", 0, "also compare transition times within this tolerance (0: off; needs the service on this host)")
	fs.IntVar(&concurrency, "concurrency", 64, "heartbeats in flight at most")
	return &ffcli.Command{
		Name:       "sim",
		ShortUsage: "devicesim sim --url URL --admin-token TOKEN [flags]",
		ShortHelp:  "simulate a fleet with scripted behaviours and check the service's statuses and transitions",
		LongHelp: "Registers --devices devices and drives them for about 20 intervals: steady, going silent (→ temporarily_offline or\n" +
			"→ disconnected), coming back, flapping, or never heartbeating. Every silence stays at least --margin away from the\n" +
			"thresholds, so each device's final status and transition list are exact. Run the service with the same\n" +
			"--offline-after/--disconnect-after and with its rate limit off (--rate-min-interval 0 --rate-per-minute 0).\n" + envHelp,
		FlagSet: fs,
		Options: options(),
		Exec: func(ctx context.Context, _ []string) error {
			log, err := newLogger(stderr, hf.logLevel)
			if err != nil {
				return err
			}
			c, err := hf.client()
			if err != nil {
				return err
			}
			s.Thresholds = trace.Thresholds{OfflineAfter: offline, DisconnectAfter: disconnect}
			s.Jitter, s.Margin, s.Seed = jitter, margn, seed
			p, err := sim.NewPlan(s)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "plan: %d devices, %d heartbeats, check at +%s, stop at +%s, margin %s, jitter %s\n",
				len(p.Devices), p.Heartbeats(), p.CheckAt, p.Stop, p.Scenario.Margin, p.Scenario.Jitter)
			res, err := p.Run(ctx, c, sim.RunOptions{NoCheck: !check, Concurrency: concurrency, Logger: log,
				Check: sim.CheckOptions{AtTolerance: checkTimes}})
			if res != nil {
				fmt.Fprintln(stdout, res)
			}
			if err != nil {
				return err
			}
			if !res.OK() {
				return fmt.Errorf("%w: %d mismatches (%d unexplained), %d disturbed devices", errMismatch, len(res.Mismatches), len(res.Unexplained()), len(res.Disturbed))
			}
			return nil
		},
	}
}

// traceFlags select a trace and a window.
type traceFlags struct {
	path, window string
}

func (t *traceFlags) register(fs *flag.FlagSet, defaultWindow string) {
	fs.StringVar(&t.path, "trace", trace.FullPath(), "event table of the trace (.tab or .tab.xz); relative to the working directory; default $"+trace.EnvPath+", else "+trace.DefaultPath+" from the repository root")
	fs.StringVar(&t.window, "window", defaultWindow, "trace window: FROM/TO, FROM+DURATION, or a date (RFC 3339 times or YYYY-MM-DD)")
}

func (t *traceFlags) load() (*trace.Trace, trace.Window, error) {
	w, err := trace.ParseWindow(t.window)
	if err != nil {
		return nil, w, err
	}
	tr, err := trace.Open(t.path)
	if err != nil {
		return nil, w, fmt.Errorf("%w (the full trace is %s; pkg/trace/testdata/g5k-2006-09-21.tab.xz holds one day)", err, trace.Source)
	}
	return tr, w, nil
}

func replayLiveCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim replay-live", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		hf                  httpFlags
		tf                  traceFlags
		cfg                 sim.LiveConfig
		offline, disconnect time.Duration
		tick                time.Duration
		maxNodes            int
		concurrency         int
		settle, tol, budget time.Duration
	)
	hf.register(fs)
	tf.register(fs, "2006-09-21T15:45:00Z+15m")
	fs.Float64Var(&cfg.Factor, "factor", 10, "time compression k: trace time t is sent at start + (t − from)/k")
	fs.DurationVar(&offline, "offline-after", 40*time.Second, "O in trace time (the service runs with O/k)")
	fs.DurationVar(&disconnect, "disconnect-after", 300*time.Second, "D in trace time (the service runs with D/k)")
	fs.DurationVar(&tick, "tick", time.Second, "the service's tick in trace time, only for the printed service settings (it runs with tick/k)")
	fs.IntVar(&maxNodes, "max-nodes", 0, "replay only the first N nodes of the trace (0: all)")
	fs.StringVar(&cfg.IDPrefix, "id-prefix", "", "prefix of the device ids (node names otherwise), to replay twice into one service")
	fs.StringVar(&cfg.Group, "group", "grid5000", "group of the registered nodes")
	fs.IntVar(&concurrency, "concurrency", 128, "heartbeats in flight at most")
	fs.DurationVar(&settle, "settle", 2*time.Second, "wall time the read API may lag behind (tick/k + pipeline + projection)")
	fs.DurationVar(&tol, "tolerance", 250*time.Millisecond, "wall time a heartbeat may be stamped late before its node is not compared")
	fs.DurationVar(&budget, "read-budget", time.Second, "wall time allowed to read every status")
	return &ffcli.Command{
		Name:       "replay-live",
		ShortUsage: "devicesim replay-live --url URL --admin-token TOKEN [--window W] [--factor K] [flags]",
		ShortHelp:  "replay a trace window over HTTP, time-compressed, and compare every node's final status with the oracle",
		LongHelp: "Registers every node, sends each heartbeat of the window at wall time (trace time − from)/k, keeps following the\n" +
			"trace while it reads every status at a comparison time T ≥ the window's end chosen so that no node's expected status\n" +
			"changes within k·(settle+tolerance) before T or k·read-budget after it, and compares with the oracle at T.\n" +
			"Start the service with thresholds, heartbeat interval and tick divided by k and its rate limit off (the command\n" +
			"prints the settings).\n" + envHelp,
		FlagSet: fs,
		Options: options(),
		Exec: func(ctx context.Context, _ []string) error {
			log, err := newLogger(stderr, hf.logLevel)
			if err != nil {
				return err
			}
			c, err := hf.client()
			if err != nil {
				return err
			}
			tr, w, err := tf.load()
			if err != nil {
				return err
			}
			cfg.Trace, cfg.Window, cfg.Logger = tr, w, log
			cfg.Thresholds = trace.Thresholds{OfflineAfter: offline, DisconnectAfter: disconnect}
			cfg.Concurrency, cfg.Settle, cfg.Tolerance, cfg.ReadBudget = concurrency, settle, tol, budget
			if maxNodes > 0 && maxNodes < len(tr.Nodes) {
				for _, n := range tr.Nodes[:maxNodes] {
					cfg.Nodes = append(cfg.Nodes, n.Name)
				}
			}
			if cfg.Factor > 0 {
				th := cfg.Thresholds.Scale(cfg.Factor)
				fmt.Fprintf(stdout, "service settings: --offline-after %s --disconnect-after %s --heartbeat-interval %s --tick %s --rate-min-interval 0 --rate-per-minute 0\n",
					th.OfflineAfter, th.DisconnectAfter, trace.ScaleDuration(trace.HeartbeatInterval, cfg.Factor), trace.ScaleDuration(tick, cfg.Factor))
			}
			res, err := sim.ReplayLive(ctx, c, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, res)
			if !res.OK() {
				return fmt.Errorf("%w: %d mismatches, %d disturbed nodes", errMismatch, len(res.Mismatches), len(res.Disturbed))
			}
			return nil
		},
	}
}

func replayVirtualCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim replay-virtual", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		tf              traceFlags
		cfg             trace.ImportConfig
		natsURL, logLvl string
		th              trace.Thresholds
		hf              httpFlags
		checkTimeout    time.Duration
		checkTrans      int
	)
	tf.register(fs, "2006-09-21")
	fs.StringVar(&natsURL, "nats-url", "", "NATS server of the devstatus service (required)")
	fs.IntVar(&cfg.Partitions, "partitions", 0, "input partitions (0: read from the input stream's metadata)")
	fs.DurationVar(&cfg.TickEvery, "tick", 10*time.Second, "virtual-time period of the clock ticks per partition")
	fs.StringVar(&cfg.Group, "group", "grid5000", "group of the registered nodes")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", 2048, "async publishes awaiting their PubAck at most")
	fs.DurationVar(&th.OfflineAfter, "offline-after", 40*time.Second, "the service's O, for the oracle")
	fs.DurationVar(&th.DisconnectAfter, "disconnect-after", 300*time.Second, "the service's D, for the oracle")
	fs.StringVar(&hf.url, "check-url", "", "when set, the service's base URL: wait for it to show the oracle's final status of every node (read API)")
	fs.StringVar(&hf.adminToken, "admin-token", "", "admin bearer token, with --check-url")
	fs.DurationVar(&hf.timeout, "timeout", 30*time.Second, "timeout of one HTTP request, with --check-url")
	fs.DurationVar(&checkTimeout, "check-timeout", 10*time.Minute, "how long to wait for the service to catch up, with --check-url")
	fs.IntVar(&checkTrans, "check-transitions", 50, "with --check-url, also compare the full transition history (and exact times) of this many nodes, the busiest first")
	registerLogLevel(fs, &logLvl)
	return &ffcli.Command{
		Name:       "replay-virtual",
		ShortUsage: "devicesim replay-virtual --nats-url URL [--window W] [flags]",
		ShortHelp:  "publish a trace window straight to the input stream in virtual (trace) time",
		LongHelp: "A trusted importer: publishes a device_registered event per node, then every heartbeat and a clock tick per\n" +
			"partition every --tick, all stamped with trace time (2005–2006), in trace-time order, to the input stream.\n" +
			"The service must run WITHOUT its ticker role: its wall-clock ticks would overtake every trace time.\n" +
			"Prints the events/s and the oracle's expected summary for the window. With --check-url it then waits until\n" +
			"the service's read API shows the oracle's final status of every node and compares the busiest nodes' histories.\n" + envHelp,
		FlagSet: fs,
		Options: options(),
		Exec: func(ctx context.Context, _ []string) error {
			log, err := newLogger(stderr, logLvl)
			if err != nil {
				return err
			}
			if natsURL == "" {
				return errors.New("--nats-url (or DEVICESIM_NATS_URL) is required")
			}
			tr, w, err := tf.load()
			if err != nil {
				return err
			}
			nc, err := nats.Connect(natsURL, nats.Name("devicesim"))
			if err != nil {
				return fmt.Errorf("connect %s: %w", natsURL, err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			if cfg.Partitions == 0 {
				if cfg.Partitions, err = streamPartitions(ctx, js); err != nil {
					return err
				}
			}
			cfg.Window, cfg.Logger = w, log
			st, err := trace.Import(ctx, js, tr.Heartbeats(w, 0), cfg)
			fmt.Fprintf(stdout, "published %d events (%d registrations, %d heartbeats, %d ticks on %d partitions) in %s: %.0f events/s; duplicates %d, retries %d\n",
				st.Events(), st.Registered, st.Heartbeats, st.Ticks, cfg.Partitions, st.Elapsed.Round(time.Millisecond), st.EventsPerSecond(), st.Duplicates, st.Retries)
			if err != nil {
				return err
			}
			if sum, err := tr.Summarize(w, th); err == nil {
				fmt.Fprintf(stdout, "oracle:\n%s\n", sum)
			}
			if hf.url == "" {
				return nil
			}
			return checkVirtual(ctx, stdout, &hf, tr, w, th, checkTimeout, checkTrans)
		},
	}
}

// checkVirtual waits until the service shows the oracle's final status of
// every node at the window's end, then compares the busiest nodes' full
// histories, times included (virtual time stamps are exact).
func checkVirtual(ctx context.Context, stdout io.Writer, hf *httpFlags, tr *trace.Trace, w trace.Window, th trace.Thresholds, timeout time.Duration, nTrans int) error {
	c, err := hf.client()
	if err != nil {
		return err
	}
	exps, err := trace.ExpectAll(tr.Heartbeats(w, 0), w.To, th)
	if err != nil {
		return err
	}
	t0 := time.Now()
	ms, reads, err := sim.CheckUntil(ctx, c, exps, sim.CheckOptions{StatusOnly: true, PageSize: 1000}, t0.Add(timeout), time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "final statuses: %d nodes, %d mismatches after %d reads (%s)\n", len(exps), len(ms), reads, time.Since(t0).Round(time.Millisecond))
	busiest := slices.Clone(exps)
	slices.SortStableFunc(busiest, func(a, b trace.Expectation) int { return len(b.Transitions) - len(a.Transitions) })
	busiest = busiest[:min(nTrans, len(busiest))]
	tms, err := sim.Check(ctx, c, busiest, sim.CheckOptions{AtTolerance: time.Millisecond})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "transition histories of the %d busiest nodes: %d mismatches\n", len(busiest), len(tms))
	for _, m := range append(ms, tms...)[:min(len(ms)+len(tms), 50)] {
		fmt.Fprintf(stdout, "  %s\n", m)
	}
	if len(ms)+len(tms) > 0 {
		return fmt.Errorf("%w: %d status and %d history mismatches", errMismatch, len(ms), len(tms))
	}
	return nil
}

// streamPartitions reads the partition count recorded in the input stream.
func streamPartitions(ctx context.Context, js jetstream.JetStream) (int, error) {
	st, err := js.Stream(ctx, events.InputStream)
	if err != nil {
		return 0, fmt.Errorf("input stream %s: %w (is the service's NATS at --nats-url?)", events.InputStream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscanf(info.Config.Metadata[events.MetaPartitions], "%d", &n); err != nil || n < 1 {
		return 0, fmt.Errorf("input stream has no partition count in metadata %s; pass --partitions", events.MetaPartitions)
	}
	return n, nil
}

func summaryCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim summary", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		tf  traceFlags
		th  trace.Thresholds
		all bool
	)
	tf.register(fs, "2006-09-21")
	fs.DurationVar(&th.OfflineAfter, "offline-after", 40*time.Second, "O of the oracle")
	fs.DurationVar(&th.DisconnectAfter, "disconnect-after", 300*time.Second, "D of the oracle")
	fs.BoolVar(&all, "all", false, "summarize the whole trace instead of --window (slow: a billion heartbeats)")
	return &ffcli.Command{
		Name:       "summary",
		ShortUsage: "devicesim summary [--trace PATH] [--window W]",
		ShortHelp:  "print a trace window's outages by length class and the oracle's expected transitions",
		FlagSet:    fs,
		Options:    options(),
		Exec: func(context.Context, []string) error {
			if all {
				tf.window = "2000-01-01/2000-01-02" // replaced by the trace's span below
			}
			tr, w, err := tf.load()
			if err != nil {
				return err
			}
			if all {
				first, last := tr.Span()
				w = trace.Window{From: time.Unix(first, 0).UTC(), To: time.Unix(last, 0).UTC()}
			}
			s, err := tr.Summarize(w, th)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "trace %s: %d nodes, %d rows\n%s\n", tf.path, len(tr.Nodes), tr.Rows(), s)
			return nil
		},
	}
}

func excerptCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("devicesim excerpt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		tf  traceFlags
		out string
	)
	tf.register(fs, "2006-09-21")
	fs.StringVar(&out, "out", "", "output file (xz-compressed event table); required")
	return &ffcli.Command{
		Name:       "excerpt",
		ShortUsage: "devicesim excerpt --trace PATH --window W --out FILE.tab.xz",
		ShortHelp:  "write the rows of every node that overlap a window (how pkg/trace/testdata was made)",
		FlagSet:    fs,
		Options:    options(),
		Exec: func(context.Context, []string) error {
			if out == "" || !strings.HasSuffix(out, ".xz") {
				return errors.New("--out FILE.tab.xz is required")
			}
			tr, w, err := tf.load()
			if err != nil {
				return err
			}
			ex := tr.Excerpt(w)
			if err := ex.WriteXZ(out); err != nil {
				return err
			}
			fi, err := os.Stat(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote %s: %d nodes, %d rows, %d bytes\n", out, len(ex.Nodes), ex.Rows(), fi.Size())
			return nil
		},
	}
}
