// Command devstatus runs the device connectivity status service.
//
//	devstatus serve            run the roles (bridge, worker, ticker, projector, api, pinger)
//	devstatus migrate          apply the Postgres schema
//	devstatus migrate status   list the embedded migrations, applied or pending
//	devstatus rebuild          rebuild the Postgres projections from the streams
//	devstatus version          the build: module version, VCS revision and time, Go version
//
// Every flag also reads from the environment as DEVSTATUS_ + the flag in
// upper snake case (--offline-after ↔ DEVSTATUS_OFFLINE_AFTER); DATABASE_URL
// is honoured too. `devstatus <command> -h` lists the command's flags (on
// stdout); no default it shows comes from the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/service"
)

const usage = `devstatus: device connectivity status service

Usage:
  devstatus serve   [flags]          run the service (all roles by default)
  devstatus migrate [flags]          apply the Postgres schema and exit
  devstatus migrate status [flags]   list the schema migrations, applied or pending
  devstatus rebuild [flags]          rebuild the Postgres projections from the streams and exit
  devstatus version                  print the build (version, VCS revision and time, Go version)

Run "devstatus <command> -h" for the flags. Each flag also reads DEVSTATUS_<FLAG>
(upper snake case); DATABASE_URL sets --database-url.
`

func main() {
	// With the output piped (devstatus serve | tee log), Ctrl-C reaches the
	// reader too; a log write to the broken pipe must then fail quietly
	// (EPIPE) instead of killing the process in the middle of its graceful
	// shutdown.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, rest := args[0], args[1:]
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, rest, stdout, stderr)
	case "migrate":
		err = migrate(ctx, rest, stdout, stderr)
	case "rebuild":
		err = rebuild(ctx, rest, stdout, stderr)
	case "version", "-version", "--version":
		err = version(rest, stdout)
	default:
		fmt.Fprintf(stderr, "devstatus: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "devstatus %s: %v\n(devstatus %s -h lists the flags)\n", cmd, err, cmd)
		return 2
	default:
		fmt.Fprintf(stderr, "devstatus %s: %v\n", cmd, err)
		return 1
	}
}

// setup parses the flags of command name (synopsis for its -h) and builds
// the logger. With -h it prints the command's flags on stdout and returns
// flag.ErrHelp.
func setup(name, synopsis string, args []string, stdout io.Writer) (*config, *slog.Logger, error) {
	c, fs, err := parse(name, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usageOf(stdout, fs, synopsis)
		}
		return nil, nil, err
	}
	log, err := newLogger(c.LogLevel, c.LogFormat)
	if err != nil {
		return nil, nil, err
	}
	slog.SetDefault(log)
	for _, w := range c.warnings {
		log.Warn(w)
	}
	return c, log, nil
}

// busConfig is the bus configuration of the flags. With the embedded
// server listening for other processes, clients need a token (generated
// once, kept in --data-dir/nats-token): the input stream is trusted input.
func (c *config) busConfig(log *slog.Logger) (bus.Config, error) {
	bc := bus.Config{URL: c.NATSURL, DataDir: c.DataDir, SyncAlways: c.Sync == "always", Partitions: c.Partitions,
		Replicas: c.Replicas, InputMaxAge: c.InputRetention, LeaseTTL: c.LeaseTTL, Logger: log}
	bc.TransitionMaxAge = c.TransitionsMaxAge
	if c.NATSURL == "" && c.NATSListen != "" {
		bc.ListenAddr = c.NATSListen
		tok, _, err := devToken(c.DataDir, "nats-token")
		if err != nil {
			return bc, fmt.Errorf("generating the embedded NATS token: %w", err)
		}
		bc.ListenToken = tok
	}
	return bc, nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, log, err := setup("serve", "serve [flags]", args, stdout)
	if err != nil {
		return err
	}
	var generated []string
	for _, t := range []struct {
		val  *string
		name string
		flag string
	}{{&c.AdminToken, "admin-token", "--admin-token"}, {&c.PingToken, "ping-token", "--ping-token"}} {
		if *t.val != "" {
			continue
		}
		if !c.devRun() {
			return fmt.Errorf("%w: %s (or %s-file) is required when --nats-url is set (a dev run on the embedded server generates one)", errUsage, t.flag, t.flag)
		}
		tok, created, err := devToken(c.DataDir, t.name)
		if err != nil {
			return fmt.Errorf("generating a dev %s: %w", t.name, err)
		}
		*t.val = tok
		if created {
			generated = append(generated, t.name)
		}
	}
	if c.InstanceID == "" {
		id, shared, unlock, err := instanceIdentity(c.DataDir)
		if err != nil {
			return fmt.Errorf("instance identity in %s: %w", c.DataDir, err)
		}
		defer unlock()
		if shared {
			log.Warn("another process uses this data directory's instance identity; this one runs under a fresh identity (after a crash its partitions move only after --lease-ttl)",
				slog.String("data_dir", c.DataDir), slog.String("instance", id))
		}
		c.InstanceID = id
	}
	bc, err := c.busConfig(log)
	if err != nil {
		return err
	}
	svc, err := service.Start(ctx, service.Config{
		HTTPAddr: c.HTTPAddr, TLSCertFile: c.TLSCert, TLSKeyFile: c.TLSKey, MetricsAddr: c.MetricsAddr, Pprof: c.Pprof,
		Bus: bc, DatabaseURL: c.DatabaseURL, Roles: c.Roles,
		Thresholds: c.Thresholds, Tick: c.Tick, HeartbeatInterval: c.HeartbeatEvery,
		GroupHeartbeatIntervals: c.groupIntervals,
		RateMinInterval:         c.RateMinInterval, RatePerMinute: c.RatePerMinute,
		AdminToken: c.AdminToken, PingToken: c.PingToken, Migrate: c.Migrate,
		InstanceID: c.InstanceID, WorkerPartitions: c.workerParts, Logger: log,
		ProbeAfter: c.ProbeAfter, PingMaxInterval: c.PingMaxInterval, Pinger: c.pinger,
		HistoryRetention: c.HistoryRetention, HistoryPruneInterval: c.HistoryPruneInterval,
		OutageHold: c.OutageHold,
	})
	if err != nil {
		return err
	}
	log.Info("started", slog.String("http", svc.Addr()), slog.Any("roles", c.Roles), slog.Int("partitions", svc.Bus.Partitions()))
	// The banner comes once the service is ready (or after 15 s, saying what
	// is not), so it is the last thing printed at start, not lost among the
	// start-up log lines.
	failing := waitReady(ctx, svc, 15*time.Second)
	if ctx.Err() == nil {
		printBanner(stdout, c, svc, generated, failing)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-svc.Errors():
	}
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
	defer cancel()
	svc.Stop(sctx)
	log.Info("stopped")
	return runErr
}

// waitReady polls the readiness checks until they pass, max elapses or ctx
// ends, and returns the names of those still failing.
func waitReady(ctx context.Context, svc *service.Service, max time.Duration) []string {
	deadline := time.Now().Add(max)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		failing, _ := svc.Ready(cctx)
		cancel()
		if len(failing) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return failing
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// printBanner says where the service listens and, in a dev run, the tokens
// it generated (in --data-dir). A token the operator supplied (flag,
// environment or file) is never printed, nor credentials in NATS URLs.
func printBanner(w io.Writer, c *config, svc *service.Service, generated, failing []string) {
	natsAt := maskURLs(c.NATSURL)
	if natsAt == "" {
		natsAt = "embedded, store " + c.DataDir + "/jetstream"
		if u := svc.Bus.ClientURL(); u != "" {
			natsAt += ", clients at " + u // its token is generated, in --data-dir/nats-token
		}
	}
	scheme := "http"
	if svc.TLS() {
		scheme = "https"
	}
	shown := svc.Addr()
	if host, port, err := net.SplitHostPort(shown); err == nil && (host == "::" || host == "0.0.0.0" || host == "") {
		shown = "localhost:" + port + " (all interfaces)"
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "devstatus listening on %s://%s  (roles %v, NATS %s, %d partitions)\n", scheme, shown, c.Roles, natsAt, svc.Bus.Partitions())
	if m := svc.MetricsAddr(); m != "" {
		fmt.Fprintf(w, "metrics on http://%s/metrics\n", m)
	}
	for _, t := range []struct {
		label, value, name string
		operator           bool
	}{{"admin token:", c.AdminToken, "admin-token", c.adminFromOperator}, {"ping token: ", c.PingToken, "ping-token", c.pingFromOperator}} {
		switch {
		case t.operator:
			fmt.Fprintf(w, "%s (as configured)\n", t.label)
		case c.devRun():
			fmt.Fprintf(w, "%s %s   (generated, in %s)\n", t.label, t.value, filepath.Join(c.DataDir, t.name))
		}
	}
	if len(generated) > 0 {
		fmt.Fprintf(w, "(generated %v this run; they stay the same on the next run)\n", generated)
	}
	if len(failing) > 0 {
		fmt.Fprintf(w, "not ready yet: %v (see the log; /readyz)\n", failing)
	}
	fmt.Fprintln(w, "Ctrl-C stops.")
}

// maskURLs replaces the credentials of each comma-separated URL (user,
// user:password or token before the @) with "***".
func maskURLs(list string) string {
	if list == "" {
		return ""
	}
	parts := strings.Split(list, ",")
	for i, raw := range parts {
		raw = strings.TrimSpace(raw)
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			u.User = url.User("***")
			parts[i] = u.String()
		} else if at := strings.LastIndex(raw, "@"); at >= 0 {
			// not a parsable URL (host:port without scheme): mask up to the @
			parts[i] = "***" + raw[at:]
		} else {
			parts[i] = raw
		}
	}
	return strings.Join(parts, ",")
}

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	status := len(args) > 0 && args[0] == "status"
	name, synopsis := "migrate", "migrate [flags]   (or: migrate status [flags])"
	if status {
		args = args[1:]
		synopsis = "migrate status [flags]"
	}
	c, log, err := setup(name, synopsis, args, stdout)
	if err != nil {
		return err
	}
	if c.DatabaseURL == "" {
		return fmt.Errorf("%w: --database-url, --database-url-file or DATABASE_URL is required", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if status {
		ms, err := service.MigrationStatusURL(ctx, c.DatabaseURL, log)
		if err != nil {
			return err
		}
		pending := 0
		for _, m := range ms {
			state := "applied " + m.AppliedAt.UTC().Format(time.RFC3339)
			if !m.Applied {
				state = "pending"
				pending++
			}
			fmt.Fprintf(stdout, "%5d  %-40s %s\n", m.Version, m.Name, state)
		}
		fmt.Fprintf(stdout, "%d migrations, %d applied, %d pending\n", len(ms), len(ms)-pending, pending)
		return nil
	}
	if err := service.MigrateURL(ctx, c.DatabaseURL, log); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "schema is up to date")
	return nil
}

func rebuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, log, err := setup("rebuild", "rebuild [flags]", args, stdout)
	if err != nil {
		return err
	}
	if c.DatabaseURL == "" {
		return fmt.Errorf("%w: --database-url, --database-url-file or DATABASE_URL is required", errUsage)
	}
	bc, err := c.busConfig(log)
	if err != nil {
		return err
	}
	bc.ListenAddr, bc.ListenToken = "", ""
	n, err := service.Rebuild(ctx, bc, c.DatabaseURL, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "projections rebuilt from %d events\n", n)
	return nil
}

// version prints the build: module version, VCS revision and commit time,
// Go version and platform.
func version(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "--help" {
			fmt.Fprintln(stdout, "Usage: devstatus version\n\nPrints the module version, the VCS revision and commit time, and the Go version of this build.")
			return nil
		}
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	bi := service.ReadBuildInfo()
	fmt.Fprintf(stdout, "devstatus %s\n", bi.Version)
	if bi.Time != "" {
		fmt.Fprintf(stdout, "revision  %s (%s)\n", bi.Revision, bi.Time)
	} else {
		fmt.Fprintf(stdout, "revision  %s\n", bi.Revision)
	}
	fmt.Fprintf(stdout, "go        %s %s/%s\n", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	return nil
}
