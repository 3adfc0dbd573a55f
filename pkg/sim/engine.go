package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devstatus/devstatus/pkg/apiclient"
)

// HeartbeatStats counts what happened to the heartbeats of a run.
type HeartbeatStats struct {
	// Scheduled is the number of heartbeats the run meant to send.
	Scheduled int64
	// Sent counts HTTP attempts, Accepted the 200 answers.
	Sent, Accepted int64
	// RateLimited counts 429 answers, Unavailable 503 answers (each retried
	// after Retry-After while the run lasts), Failed the heartbeats given up
	// (other errors, or no time left to retry).
	RateLimited, Unavailable, Failed int64
	// MaxLateness is the worst delay between a heartbeat's intended time and
	// the answer to it (an upper bound of how late the service stamped it).
	MaxLateness time.Duration
	// Latency of the accepted requests.
	Latency Latency
}

// Latency summarizes request durations.
type Latency struct {
	Count              int
	P50, P90, P99, Max time.Duration
}

func (l Latency) String() string {
	return fmt.Sprintf("n=%d p50=%s p90=%s p99=%s max=%s", l.Count, l.P50, l.P90, l.P99, l.Max)
}

// recorder collects heartbeat outcomes from many goroutines.
type recorder struct {
	sent, accepted, limited, unavailable, failed atomic.Int64
	maxLate                                      atomic.Int64
	mu                                           sync.Mutex
	lat                                          []time.Duration
	// lateness[dev] is the worst lateness of the device (nil: not tracked).
	lateness []atomic.Int64
}

func newRecorder(devices int) *recorder {
	return &recorder{lateness: make([]atomic.Int64, devices)}
}

func (r *recorder) late(dev int, d time.Duration) {
	for {
		cur := r.maxLate.Load()
		if int64(d) <= cur || r.maxLate.CompareAndSwap(cur, int64(d)) {
			break
		}
	}
	if dev >= 0 && dev < len(r.lateness) {
		for {
			cur := r.lateness[dev].Load()
			if int64(d) <= cur || r.lateness[dev].CompareAndSwap(cur, int64(d)) {
				break
			}
		}
	}
}

func (r *recorder) stats(scheduled int) HeartbeatStats {
	r.mu.Lock()
	lat := slices.Clone(r.lat)
	r.mu.Unlock()
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	var l Latency
	if len(lat) > 0 {
		l = Latency{Count: len(lat), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Max: lat[len(lat)-1]}
	}
	return HeartbeatStats{Scheduled: int64(scheduled), Sent: r.sent.Load(), Accepted: r.accepted.Load(),
		RateLimited: r.limited.Load(), Unavailable: r.unavailable.Load(), Failed: r.failed.Load(),
		MaxLateness: time.Duration(r.maxLate.Load()), Latency: l}
}

// beatOutcome is what happened to one scheduled heartbeat.
type beatOutcome struct {
	// Answered is when the accepted attempt was answered (zero if none).
	Answered time.Time
	// Retried: a 429 or 503 came first.
	Retried bool
	Err     error
	// Canceled: the run's context ended first (Err is set, not counted failed).
	Canceled bool
}

// beat sends one heartbeat due at due, retrying 429 and 503 after their
// Retry-After (or the client's RetryWait) as long as the retry starts before
// deadline.
func (r *recorder) beat(ctx context.Context, c *apiclient.Client, dev int, id, token string, due, deadline time.Time) beatOutcome {
	var out beatOutcome
	for {
		now := time.Now()
		req := apiclient.HeartbeatRequest{DeviceTime: &now, Metrics: map[string]any{
			"battery": 20 + rand.IntN(81), "signal": -50 - rand.IntN(40), "app_version": "devicesim/1",
		}}
		r.sent.Add(1)
		_, err := c.HeartbeatOnce(ctx, id, token, req)
		answered := time.Now()
		if err == nil {
			r.accepted.Add(1)
			r.late(dev, answered.Sub(due))
			r.mu.Lock()
			r.lat = append(r.lat, answered.Sub(now))
			r.mu.Unlock()
			out.Answered = answered
			return out
		}
		if ctx.Err() != nil {
			// The run is over: not a failure of the service.
			out.Err, out.Canceled = err, true
			return out
		}
		var ae *apiclient.APIError
		if !errors.As(err, &ae) || (ae.Status != 429 && ae.Status != 503) {
			r.failed.Add(1)
			out.Err = err
			return out
		}
		if ae.Status == 429 {
			r.limited.Add(1)
		} else {
			r.unavailable.Add(1)
		}
		out.Retried = true
		wait := ae.RetryAfter
		if wait == 0 {
			wait = c.RetryWait()
		}
		if time.Now().Add(wait).After(deadline) {
			r.failed.Add(1)
			out.Err = err
			return out
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			out.Err, out.Canceled = err, true
			return out
		case <-t.C:
		}
	}
}

// item is one scheduled heartbeat: device dev at offset at from the start.
type item struct {
	at  time.Duration
	dev int32
	// k is the index of the heartbeat among its device's.
	k int32
}

// source yields items in time order.
type source interface {
	next() (item, bool)
}

type sliceSource struct {
	items []item
	i     int
}

func (s *sliceSource) next() (item, bool) {
	if s.i >= len(s.items) {
		return item{}, false
	}
	s.i++
	return s.items[s.i-1], true
}

// dispatch runs the schedule: it waits for each item's time (start + at)
// and hands it to one of workers goroutines calling do. It returns when the
// source is exhausted and every call returned, or when ctx is done (pending
// items are dropped, running calls see ctx canceled).
func dispatch(ctx context.Context, start time.Time, src source, workers int, do func(ctx context.Context, it item, due time.Time)) {
	type job struct {
		it  item
		due time.Time
	}
	jobs := make(chan job, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				do(ctx, j.it, j.due)
			}
		}()
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
loop:
	for {
		it, ok := src.next()
		if !ok {
			break
		}
		due := start.Add(it.at)
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				break loop
			}
		}
		select {
		case jobs <- job{it: it, due: due}:
		case <-ctx.Done():
			break loop
		}
	}
	close(jobs)
	wg.Wait()
}

// registerAll registers ids[i] in groups[i] with concurrency workers and
// returns the tokens.
func registerAll(ctx context.Context, c *apiclient.Client, ids, groups []string, workers int, log *slog.Logger) ([]string, error) {
	tokens := make([]string, len(ids))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		next     atomic.Int64
	)
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				reg, err := c.Register(ctx, ids[i], groups[i])
				if err == nil && reg.Token == "" {
					err = fmt.Errorf("sim: register %q: empty token in the answer", ids[i])
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("register %q: %w", ids[i], err)
					}
					mu.Unlock()
					cancel()
					return
				}
				tokens[i] = reg.Token
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	log.Info("devices registered", slog.Int("devices", len(ids)))
	return tokens, nil
}
