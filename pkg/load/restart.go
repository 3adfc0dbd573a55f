package load

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// RestartResult times a (re)started worker process from the moment it was
// started (seconds).
type RestartResult struct {
	// Metrics: its /metrics page answered (the process is up).
	Metrics float64 `json:"metrics_s"`
	// Owned: it owns every partition (leases acquired, snapshots loaded,
	// consumers created).
	Owned float64 `json:"owned_s"`
	// Processing: owning every partition, its applied-events counter moved
	// (it is processing again).
	Processing float64 `json:"processing_s"`
	// CaughtUp: processing and the consumer lag is below the threshold.
	CaughtUp float64 `json:"caught_up_s"`
	// Tracked is the devices its partitions hold once caught up.
	Tracked float64 `json:"tracked_devices"`
	// RSSMiB is its resident memory once caught up.
	RSSMiB float64 `json:"rss_mib"`
}

// WaitWorker polls a worker's /metrics every 50 ms and reports how long
// after start it answered, owned partitions partitions, applied events
// again, and had a consumer lag below lagBelow.
func WaitWorker(ctx context.Context, url string, start time.Time, partitions int, lagBelow float64, timeout time.Duration) (RestartResult, error) {
	var res RestartResult
	hc := &http.Client{Timeout: time.Second}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var firstEvents float64 = -1
	for {
		s := scrape(ctx, hc, url)
		el := time.Since(start).Seconds()
		if s.ok {
			if res.Metrics == 0 {
				res.Metrics = round3(el)
			}
			if res.Owned == 0 && s.hasWork && int(s.Owned) >= partitions {
				res.Owned = round3(el)
				firstEvents = s.WorkerEvents
			}
			if res.Owned > 0 && res.Processing == 0 && s.WorkerEvents > firstEvents {
				res.Processing = round3(el)
			}
			if res.Processing > 0 && s.ConsumerLag < lagBelow {
				res.CaughtUp = round3(el)
				res.Tracked, res.RSSMiB = s.Tracked, s.RSS/(1<<20)
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("load: worker at %s not caught up after %s: %+v", url, timeout, res)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
