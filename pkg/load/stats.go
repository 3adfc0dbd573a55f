package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// hist is a latency histogram with logarithmic buckets (2 % wide, 1 µs to
// ~2 min), safe for concurrent adds: percentiles of millions of requests
// without keeping every duration.
type hist struct {
	n [histBuckets]atomic.Uint64
}

const (
	histBuckets = 950
	histGrowth  = 1.02
)

var lnHistGrowth = math.Log(histGrowth)

func histBucket(d time.Duration) int {
	if d < time.Microsecond {
		return 0
	}
	i := int(math.Log(float64(d)/float64(time.Microsecond))/lnHistGrowth) + 1
	return min(i, histBuckets-1)
}

// histValue is the middle of bucket i.
func histValue(i int) time.Duration {
	if i == 0 {
		return time.Microsecond / 2
	}
	lo := float64(time.Microsecond) * math.Pow(histGrowth, float64(i-1))
	return time.Duration(lo * (1 + histGrowth) / 2)
}

func (h *hist) add(d time.Duration) { h.n[histBucket(d)].Add(1) }

func (h *hist) merge(o *hist) {
	for i := range h.n {
		if v := o.n[i].Load(); v != 0 {
			h.n[i].Add(v)
		}
	}
}

func (h *hist) count() uint64 {
	var c uint64
	for i := range h.n {
		c += h.n[i].Load()
	}
	return c
}

// summary returns the percentiles; zero when empty.
func (h *hist) summary() LatencySummary {
	var counts [histBuckets]uint64
	var total uint64
	for i := range h.n {
		counts[i] = h.n[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return LatencySummary{}
	}
	q := func(p float64) time.Duration {
		rank := uint64(math.Ceil(p * float64(total)))
		rank = max(rank, 1)
		var c uint64
		for i, n := range counts {
			c += n
			if c >= rank {
				return histValue(i)
			}
		}
		return histValue(histBuckets - 1)
	}
	return LatencySummary{Count: total, P50: ms(q(0.50)), P90: ms(q(0.90)), P99: ms(q(0.99)), P999: ms(q(0.999)), Max: ms(q(1))}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// LatencySummary is a latency distribution in milliseconds (2 % buckets).
type LatencySummary struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func (l LatencySummary) String() string {
	return fmt.Sprintf("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.1f ms (n=%d)", l.P50, l.P90, l.P99, l.P999, l.Max, l.Count)
}

// promSample is what one scrape of a devstatus /metrics page tells the load
// run. Counters are cumulative.
type promSample struct {
	ok bool
	// ConsumerLag: devstatus_consumer_lag_events summed over partitions.
	ConsumerLag float64
	// ProjLag, ProjLagSeconds: devstatus_projection_lag_events / _seconds by projection.
	ProjLag, ProjLagSeconds map[string]float64
	// ProjEvents: devstatus_projection_events_total by projection.
	ProjEvents map[string]float64
	// WorkerEvents: devstatus_worker_events_total summed over types.
	WorkerEvents float64
	// Tracked: devstatus_worker_devices summed over partitions and statuses.
	Tracked float64
	// Transitions: devstatus_transitions_total summed.
	Transitions float64
	// Owned: devstatus_worker_partitions_owned.
	Owned   float64
	hasWork bool
	// CPUSeconds, RSS: process_cpu_seconds_total, process_resident_memory_bytes.
	CPUSeconds, RSS float64
	// HeapInuse: go_memstats_heap_inuse_bytes.
	HeapInuse float64
	// Goroutines: go_goroutines.
	Goroutines float64
}

// scrape reads one /metrics page (Prometheus text format) and keeps the
// series the report needs.
func scrape(ctx context.Context, hc *http.Client, url string) promSample {
	s := promSample{ProjLag: map[string]float64{}, ProjLagSeconds: map[string]float64{}, ProjEvents: map[string]float64{}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return s
	}
	resp, err := hc.Do(req)
	if err != nil {
		return s
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return s
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		sp := bytes.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(string(line[sp+1:]), 64)
		if err != nil {
			continue
		}
		name, labels := line[:sp], []byte(nil)
		if i := bytes.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], name[i:]
		}
		switch string(name) {
		case "devstatus_consumer_lag_events":
			s.ConsumerLag += v
		case "devstatus_projection_lag_events":
			s.ProjLag[label(labels, "projection")] = v
		case "devstatus_projection_lag_seconds":
			s.ProjLagSeconds[label(labels, "projection")] = v
		case "devstatus_projection_events_total":
			s.ProjEvents[label(labels, "projection")] = v
		case "devstatus_worker_events_total":
			s.WorkerEvents += v
		case "devstatus_worker_devices":
			s.Tracked += v
		case "devstatus_transitions_total":
			s.Transitions += v
		case "devstatus_worker_partitions_owned":
			s.Owned, s.hasWork = v, true
		case "process_cpu_seconds_total":
			s.CPUSeconds = v
		case "process_resident_memory_bytes":
			s.RSS = v
		case "go_memstats_heap_inuse_bytes":
			s.HeapInuse = v
		case "go_goroutines":
			s.Goroutines = v
		}
	}
	s.ok = sc.Err() == nil
	return s
}

// label returns the value of label k in `{a="x",k="y"}`.
func label(labels []byte, k string) string {
	i := bytes.Index(labels, []byte(k+`="`))
	if i < 0 {
		return ""
	}
	rest := labels[i+len(k)+2:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}
