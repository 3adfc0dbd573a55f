// Package backoff is the one retry-delay helper of devstatus: an exponential
// policy with jitter and a sleep that ends early when its context does.
//
// It holds no state and starts no goroutines.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff: the n-th delay (from 0) is Min·2ⁿ capped
// at Max, with ±Jitter/2 of it drawn at random.
type Policy struct {
	// Min is the first delay. Zero: no delay at all.
	Min time.Duration
	// Max caps every delay. Zero or below Min: Min.
	Max time.Duration
	// Jitter is the fraction of the delay drawn at random, in [0, 1]: 0.2
	// gives delays within ±10 %. Zero: no jitter.
	Jitter float64
}

// Delay returns the n-th delay (n from 0; negative n is 0).
func (p Policy) Delay(n int) time.Duration {
	d, hi := p.Min, max(p.Max, p.Min)
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	if d <= 0 {
		return 0
	}
	if j := min(max(p.Jitter, 0), 1); j > 0 {
		span := int64(float64(d) * j)
		if span > 0 {
			d = d - time.Duration(span/2) + time.Duration(rand.Int64N(span+1))
		}
	}
	return d
}

// Sleep waits d or until ctx is done. It returns nil after the full delay,
// else ctx's error. A d of zero or less returns ctx.Err() at once.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
