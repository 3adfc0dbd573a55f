// Command devstatus runs the device connectivity status service.
//
//	devstatus serve     run the roles (bridge, worker, ticker, projector, api, pinger)
//	devstatus migrate   apply the Postgres schema
//	devstatus rebuild   rebuild the Postgres projections from the streams
//
// Every flag also reads from the environment as DEVSTATUS_ + the flag in
// upper snake case (--offline-after ↔ DEVSTATUS_OFFLINE_AFTER); DATABASE_URL
// is honoured too. `devstatus <command> -h` lists the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/service"
)

const usage = `devstatus: device connectivity status service

Usage:
  devstatus serve   [flags]   run the service (all roles by default)
  devstatus migrate [flags]   apply the Postgres schema and exit
  devstatus rebuild [flags]   rebuild the Postgres projections from the streams and exit

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
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
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
		fmt.Fprintf(stderr, "devstatus %s: %v\n", cmd, err)
		return 2
	default:
		fmt.Fprintf(stderr, "devstatus %s: %v\n", cmd, err)
		return 1
	}
}

// setup parses flags and builds the logger.
func setup(name string, args []string, stderr io.Writer) (*config, *slog.Logger, error) {
	c, fs, err := parse(name, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, flag.ErrHelp
		}
		fs.SetOutput(stderr)
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
	c, log, err := setup("serve", args, stderr)
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
			return fmt.Errorf("%w: %s is required when --nats-url is set (a dev run on the embedded server generates one)", errUsage, t.flag)
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
	bc, err := c.busConfig(log)
	if err != nil {
		return err
	}
	svc, err := service.Start(ctx, service.Config{
		HTTPAddr: c.HTTPAddr, Bus: bc, DatabaseURL: c.DatabaseURL, Roles: c.Roles,
		Thresholds: c.Thresholds, Tick: c.Tick, HeartbeatInterval: c.HeartbeatEvery,
		RateMinInterval: c.RateMinInterval, RatePerMinute: c.RatePerMinute,
		AdminToken: c.AdminToken, PingToken: c.PingToken, Migrate: c.Migrate,
		InstanceID: c.InstanceID, WorkerPartitions: c.workerParts, Logger: log,
		ProbeAfter: c.ProbeAfter, PingMaxInterval: c.PingMaxInterval, Pinger: c.pinger,
		HistoryRetention: c.HistoryRetention, HistoryPruneInterval: c.HistoryPruneInterval,
	})
	if err != nil {
		return err
	}
	natsAt := c.NATSURL
	if natsAt == "" {
		natsAt = "embedded, store " + c.DataDir + "/jetstream"
		if u := svc.Bus.ClientURL(); u != "" {
			natsAt += ", clients at " + u
		}
	}
	shown := svc.Addr()
	if host, port, err := net.SplitHostPort(shown); err == nil && (host == "::" || host == "0.0.0.0" || host == "") {
		shown = "localhost:" + port + " (all interfaces)"
	}
	fmt.Fprintf(stdout, "devstatus listening on http://%s  (roles %v, NATS %s, %d partitions)\n", shown, c.Roles, natsAt, svc.Bus.Partitions())
	if c.devRun() {
		fmt.Fprintf(stdout, "admin token: %s\nping token:  %s\n", c.AdminToken, c.PingToken)
		if len(generated) > 0 {
			fmt.Fprintf(stdout, "(generated %v and stored in %s; they stay the same on the next run)\n", generated, c.DataDir)
		}
	}
	fmt.Fprintln(stdout, "Ctrl-C stops.")
	log.Info("started", slog.String("http", svc.Addr()), slog.Any("roles", c.Roles), slog.Int("partitions", svc.Bus.Partitions()))

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

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, log, err := setup("migrate", args, stderr)
	if err != nil {
		return err
	}
	if c.DatabaseURL == "" {
		return fmt.Errorf("%w: --database-url or DATABASE_URL is required", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := service.MigrateURL(ctx, c.DatabaseURL, log); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "schema is up to date")
	return nil
}

func rebuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, log, err := setup("rebuild", args, stderr)
	if err != nil {
		return err
	}
	if c.DatabaseURL == "" {
		return fmt.Errorf("%w: --database-url or DATABASE_URL is required", errUsage)
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
