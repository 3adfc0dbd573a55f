package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"

	"github.com/devstatus/devstatus/pkg/service"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

// config is every flag of `devstatus serve` (and the subset the other
// commands use). Each flag also reads DEVSTATUS_<FLAG_IN_UPPER_SNAKE_CASE>.
type config struct {
	HTTPAddr         string
	NATSURL          string
	NATSListen       string
	DataDir          string
	DatabaseURL      string
	Roles            []string
	Partitions       int
	Replicas         int
	Thresholds       worker.Thresholds
	GroupThresholds  string
	Tick             time.Duration
	HeartbeatEvery   time.Duration
	RateMinInterval  time.Duration
	RatePerMinute    int
	AdminToken       string
	PingToken        string
	Sync             string
	InputRetention   time.Duration
	LeaseTTL         time.Duration
	Migrate          bool
	LogLevel         string
	LogFormat        string
	ShutdownTimeout  time.Duration
	InstanceID       string
	WorkerPartitions string
	// Ping service (role pinger) and probe scheduling (worker).
	ProbeAfter        time.Duration
	PingMaxInterval   time.Duration
	PingTimeout       time.Duration
	PingConcurrency   int
	PingInsecureTLS   bool
	ProbeSchemes      string
	ProbeAllowPrivate bool
	ProbeAllowCIDRs   string
	// History retention (retention.go).
	retentionConfig

	rolesRaw    string
	warnings    []string // logged once the logger exists
	workerParts []int
	pinger      service.PingerConfig
}

// errUsage marks errors that come from bad flags (exit code 2).
var errUsage = errors.New("usage")

func newFlagSet(name string, c *config) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&c.HTTPAddr, "http-addr", ":8080", "HTTP listen address (API, heartbeats, dashboard, /metrics)")
	fs.StringVar(&c.NATSURL, "nats-url", "", "NATS server URL(s), comma-separated; empty starts an embedded JetStream server in --data-dir")
	fs.StringVar(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "with the embedded server: also accept NATS clients (devicesim, nats CLI) on this address; empty for in-process only")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "directory of the embedded JetStream store and of generated dev tokens")
	fs.StringVar(&c.DatabaseURL, "database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
	fs.StringVar(&c.rolesRaw, "roles", "all", "comma-separated roles to run: bridge,worker,ticker,projector,api,pinger or all")
	fs.IntVar(&c.Partitions, "partitions", 16, "input partitions; fixed when the streams are first created")
	fs.IntVar(&c.Replicas, "replicas", 1, "stream and bucket replicas (3 on a NATS cluster)")
	fs.DurationVar(&c.Thresholds.Default.OfflineAfter, "offline-after", 40*time.Second, "silence after which a connected device is temporarily_offline (exclusive)")
	fs.DurationVar(&c.Thresholds.Default.DisconnectAfter, "disconnect-after", 300*time.Second, "time without liveness after which a device is disconnected (inclusive)")
	fs.DurationVar(&c.Thresholds.Default.PingIgnoreWithin, "ping-ignore-within", 30*time.Second, "ping results checked within this time after the last heartbeat are ignored")
	fs.StringVar(&c.GroupThresholds, "group-thresholds", "", "per-group thresholds: group=offline/disconnect/ping-ignore,… e.g. kiosk=60s/600s/30s")
	fs.DurationVar(&c.Tick, "tick", time.Second, "clock tick period: bounds detection latency")
	fs.DurationVar(&c.HeartbeatEvery, "heartbeat-interval", 30*time.Second, "heartbeat interval told to devices")
	fs.DurationVar(&c.RateMinInterval, "rate-min-interval", 10*time.Second, "least time between accepted heartbeats of one device (0 turns it off)")
	fs.IntVar(&c.RatePerMinute, "rate-per-minute", 10, "most heartbeats of one device per rolling minute (0 turns it off)")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token of the admin and read APIs; required outside a dev run (embedded NATS), where one is generated, stored in --data-dir and printed")
	fs.StringVar(&c.PingToken, "ping-token", "", "bearer token of the ping service; like --admin-token")
	fs.StringVar(&c.Sync, "sync", "default", "embedded JetStream durability: default (periodic fsync) or always (fsync before every PubAck)")
	fs.DurationVar(&c.InputRetention, "input-retention", 7*24*time.Hour, "how long input events are kept (replay, rebuild)")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", 10*time.Second, "partition lease TTL: a dead worker's partitions move after this")
	fs.BoolVar(&c.Migrate, "migrate", true, "apply the Postgres schema at start")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "json", "json or text")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "longest graceful shutdown")
	fs.StringVar(&c.InstanceID, "instance-id", "", "name of this instance in leases and logs (default host-pid-random)")
	fs.StringVar(&c.WorkerPartitions, "worker-partitions", "", "partitions this instance's worker may own, e.g. 0-7 or 1,3,5 (default all)")
	fs.DurationVar(&c.ProbeAfter, "probe-after", 35*time.Second, "the worker asks for the first probe of a device this long after its last heartbeat (at least --ping-ignore-within; negative: never)")
	fs.DurationVar(&c.PingMaxInterval, "ping-max-interval", 5*time.Minute, "longest interval between probes of a silent device (backing off 30s, 1m, 2m, … up to this)")
	fs.DurationVar(&c.PingTimeout, "ping-timeout", 2*time.Second, "timeout of one probe (connect, TLS, response headers); at most 30s")
	fs.IntVar(&c.PingConcurrency, "ping-concurrency", 128, "most probes one pinger instance runs at once")
	fs.BoolVar(&c.PingInsecureTLS, "ping-insecure-tls", false, "do not verify the certificates of https probe URLs (devices with self-signed certificates)")
	fs.StringVar(&c.ProbeSchemes, "probe-schemes", "http,https", "schemes allowed in probe URLs (a subset of http,https)")
	fs.BoolVar(&c.ProbeAllowPrivate, "probe-allow-private", false, "allow probe targets in private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)")
	fs.StringVar(&c.ProbeAllowCIDRs, "probe-allow-cidrs", "", "comma-separated ranges probe targets may be in whatever their kind (loopback and link-local included), e.g. 10.20.0.0/16")
	c.retentionConfig.flags(fs)
	return fs
}

// parse reads flags then DEVSTATUS_* environment variables and validates.
func parse(name string, args []string) (*config, *flag.FlagSet, error) {
	c := &config{}
	fs := newFlagSet(name, c)
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix("DEVSTATUS")); err != nil {
		return nil, fs, fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := c.finish(); err != nil {
		return nil, fs, fmt.Errorf("%w: %w", errUsage, err)
	}
	return c, fs, nil
}

func (c *config) finish() error {
	var errs []error
	if c.rolesRaw == "" || c.rolesRaw == "all" {
		c.Roles = slices.Clone(service.AllRoles)
	} else {
		for _, r := range strings.Split(c.rolesRaw, ",") {
			r = strings.TrimSpace(r)
			if !slices.Contains(service.AllRoles, r) {
				errs = append(errs, fmt.Errorf("unknown role %q (roles: %s)", r, strings.Join(service.AllRoles, ",")))
				continue
			}
			if !slices.Contains(c.Roles, r) {
				c.Roles = append(c.Roles, r)
			}
		}
	}
	if c.GroupThresholds != "" {
		g, err := parseGroupThresholds(c.GroupThresholds, c.Thresholds.Default)
		if err != nil {
			errs = append(errs, err)
		}
		c.Thresholds.Groups = g
	}
	if err := c.Thresholds.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Sync != "default" && c.Sync != "always" {
		errs = append(errs, fmt.Errorf("--sync must be default or always, got %q", c.Sync))
	}
	if c.Tick <= 0 {
		errs = append(errs, fmt.Errorf("--tick must be positive"))
	}
	if c.RateMinInterval < 0 || c.RatePerMinute < 0 {
		errs = append(errs, fmt.Errorf("rate limits must not be negative"))
	}
	if c.HeartbeatEvery <= 0 {
		errs = append(errs, fmt.Errorf("--heartbeat-interval must be positive"))
	}
	if c.HeartbeatEvery >= c.Thresholds.Default.OfflineAfter {
		c.warnings = append(c.warnings, fmt.Sprintf("heartbeat interval (%s) is not shorter than offline_after (%s): every device will flap",
			c.HeartbeatEvery, c.Thresholds.Default.OfflineAfter))
	}
	if err := c.finishPinger(); err != nil {
		errs = append(errs, err)
	}
	if err := c.retentionConfig.finish(c.InputRetention); err != nil {
		errs = append(errs, err)
	}
	if c.WorkerPartitions != "" {
		ps, err := parsePartitionList(c.WorkerPartitions, c.Partitions)
		if err != nil {
			errs = append(errs, err)
		}
		c.workerParts = ps
	}
	return errors.Join(errs...)
}

// parsePartitionList parses "0-7" or "1,3,5" (or a mix) into partitions below n.
func parsePartitionList(s string, n int) ([]int, error) {
	var out []int
	for _, item := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(item), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("--worker-partitions: %q is not a partition or range", item)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("--worker-partitions: %q is not a range", item)
			}
		}
		for p := a; p <= b; p++ {
			if p < 0 || p >= n {
				return nil, fmt.Errorf("--worker-partitions: partition %d outside 0..%d", p, n-1)
			}
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// devRun is a run on the embedded NATS server: missing tokens are generated.
func (c *config) devRun() bool { return c.NATSURL == "" }

// parseGroupThresholds parses "g1=40s/300s/30s,g2=60s/600s" (ping-ignore
// defaults to the global value when omitted).
func parseGroupThresholds(s string, def statemachine.Thresholds) (map[string]statemachine.Thresholds, error) {
	out := map[string]statemachine.Thresholds{}
	for _, item := range strings.Split(s, ",") {
		name, spec, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--group-thresholds: %q is not group=offline/disconnect[/ping-ignore]", item)
		}
		parts := strings.Split(spec, "/")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("--group-thresholds: %q is not group=offline/disconnect[/ping-ignore]", item)
		}
		th := def
		var err error
		if th.OfflineAfter, err = time.ParseDuration(parts[0]); err != nil {
			return nil, fmt.Errorf("--group-thresholds %s: %w", name, err)
		}
		if th.DisconnectAfter, err = time.ParseDuration(parts[1]); err != nil {
			return nil, fmt.Errorf("--group-thresholds %s: %w", name, err)
		}
		if len(parts) == 3 {
			if th.PingIgnoreWithin, err = time.ParseDuration(parts[2]); err != nil {
				return nil, fmt.Errorf("--group-thresholds %s: %w", name, err)
			}
		}
		out[name] = th
	}
	return out, nil
}

// devToken returns the token stored in dataDir/name, creating a random one
// (256 bits, base64url) on first use, so that a second dev run keeps it.
func devToken(dataDir, name string) (tok string, created bool, err error) {
	path := filepath.Join(dataDir, name)
	if b, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, false, nil
		}
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", false, err
	}
	tok = base64.RawURLEncoding.EncodeToString(raw[:])
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return "", false, err
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", false, err
	}
	return tok, true, nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level: %w", errUsage, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format must be json or text", errUsage)
}
