package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"
)

// LoadConfig configures [Load].
type LoadConfig struct {
	// Devices is the number of devices registered and driven. Default 1000.
	Devices int
	// Interval is each device's heartbeat period; devices are spread evenly
	// over it, so the offered rate is Devices/Interval. Default 30 s.
	Interval time.Duration
	// Duration is how long heartbeats are sent. Default 1 min.
	Duration time.Duration
	// Concurrency bounds the requests in flight. Default 256.
	Concurrency int
	// RegisterConcurrency bounds the registrations in flight. Default 32.
	RegisterConcurrency int
	// Prefix starts every device id. Default "load-<8 random hex>-".
	Prefix string
	// Group of the devices. Default Prefix + "g".
	Group string
	// Logger receives progress. Default: discard.
	Logger *slog.Logger
}

// LoadResult is the outcome of [Load].
type LoadResult struct {
	Devices    int
	Heartbeats HeartbeatStats
	// Elapsed is the wall time of the heartbeat phase (registration excluded).
	Elapsed time.Duration
	// OfferedPerSec is Devices/Interval; AcceptedPerSec the accepted
	// heartbeats per second of Elapsed.
	OfferedPerSec, AcceptedPerSec float64
}

// String is a short report.
func (r *LoadResult) String() string {
	h := r.Heartbeats
	return fmt.Sprintf("devices %d, offered %.1f/s, accepted %.1f/s over %s\nheartbeats: scheduled %d, sent %d, accepted %d, 429 %d, 503 %d, failed %d, max lateness %s\nlatency %s",
		r.Devices, r.OfferedPerSec, r.AcceptedPerSec, r.Elapsed.Round(time.Millisecond),
		h.Scheduled, h.Sent, h.Accepted, h.RateLimited, h.Unavailable, h.Failed, h.MaxLateness, h.Latency)
}

// loadSource yields device i at (j·N + i)·I/N for round j: every device
// once per interval, evenly spread, until the duration.
type loadSource struct {
	n        int
	interval time.Duration
	duration time.Duration
	j        int64
}

func (s *loadSource) next() (item, bool) {
	at := time.Duration(s.j) * s.interval / time.Duration(s.n)
	if at >= s.duration {
		return item{}, false
	}
	it := item{at: at, dev: int32(s.j % int64(s.n))}
	s.j++
	return it, true
}

// Load registers Devices devices and sends heartbeats for Duration, each
// device every Interval, and reports accepted heartbeats per second and
// request latency percentiles. It is a first load generator: one HTTP
// request per heartbeat (no gateway batches yet). A 429 or 503 is retried
// after Retry-After within the run.
func Load(ctx context.Context, c *Client, cfg LoadConfig) (*LoadResult, error) {
	if cfg.Devices == 0 {
		cfg.Devices = 1000
	}
	if cfg.Interval == 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.Duration == 0 {
		cfg.Duration = time.Minute
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 256
	}
	if cfg.RegisterConcurrency <= 0 {
		cfg.RegisterConcurrency = 32
	}
	if cfg.Prefix == "" {
		cfg.Prefix = randomPrefix("load")
	}
	if cfg.Group == "" {
		cfg.Group = cfg.Prefix + "g"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Devices < 0 || cfg.Interval < 0 || cfg.Duration < 0 {
		return nil, fmt.Errorf("%w: load: devices, interval and duration must be positive", ErrInvalidConf)
	}
	ids := make([]string, cfg.Devices)
	groups := make([]string, cfg.Devices)
	for i := range ids {
		ids[i], groups[i] = cfg.Prefix+"dev-"+strconv.Itoa(i), cfg.Group
	}
	tokens, err := registerAll(ctx, c, ids, groups, cfg.RegisterConcurrency, cfg.Logger)
	if err != nil {
		return nil, err
	}
	src := &loadSource{n: cfg.Devices, interval: cfg.Interval, duration: cfg.Duration}
	scheduled := int((int64(cfg.Duration)*int64(cfg.Devices) + int64(cfg.Interval) - 1) / int64(cfg.Interval))
	rec := newRecorder(0)
	start := time.Now()
	end := start.Add(cfg.Duration)
	dispatch(ctx, start, src, cfg.Concurrency, func(ctx context.Context, it item, due time.Time) {
		rec.beat(ctx, c, -1, ids[it.dev], tokens[it.dev], due, end)
	})
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return nil, err
	}
	res := &LoadResult{Devices: cfg.Devices, Heartbeats: rec.stats(scheduled), Elapsed: elapsed,
		OfferedPerSec: float64(cfg.Devices) / cfg.Interval.Seconds()}
	res.AcceptedPerSec = float64(res.Heartbeats.Accepted) / elapsed.Seconds()
	cfg.Logger.Info("load done", slog.Float64("accepted_per_s", res.AcceptedPerSec), slog.String("latency", res.Heartbeats.Latency.String()))
	return res, nil
}
