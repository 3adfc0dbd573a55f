package load

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"
)

func TestHistPercentilesOfKnownDurations(t *testing.T) {
	t.Parallel()
	var h hist
	if h.summary() != (LatencySummary{}) {
		t.Fatal("empty histogram has percentiles")
	}
	// 1..1000 ms, once each: p50 ≈ 500 ms, p99 ≈ 990 ms, max ≈ 1 s, each
	// within the 2 % width of a bucket.
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	s := h.summary()
	near := func(got, want float64) bool { return math.Abs(got-want) <= 0.02*want }
	if s.Count != 1000 || !near(s.P50, 500) || !near(s.P90, 900) || !near(s.P99, 990) || !near(s.P999, 999) || !near(s.Max, 1000) {
		t.Fatalf("summary %+v", s)
	}
	var o hist
	o.add(0)
	o.add(time.Hour) // beyond the last bucket: counted there
	h.merge(&o)
	if h.count() != 1002 || histBucket(time.Hour) != histBuckets-1 || histBucket(0) != 0 {
		t.Fatalf("count %d", h.count())
	}
	for _, d := range []time.Duration{time.Microsecond, 37 * time.Microsecond, 3 * time.Millisecond, 2 * time.Second} {
		if v := histValue(histBucket(d)); math.Abs(float64(v-d)) > 0.02*float64(d) {
			t.Errorf("%s lands in a bucket whose middle is %s", d, v)
		}
	}
}

const metricsPage = `# HELP devstatus_consumer_lag_events x
# TYPE devstatus_consumer_lag_events gauge
devstatus_consumer_lag_events{partition="0"} 10
devstatus_consumer_lag_events{partition="1"} 32
devstatus_projection_lag_events{projection="liveness"} 5
devstatus_projection_lag_events{projection="transitions"} 7
devstatus_projection_lag_seconds{projection="liveness"} 0.25
devstatus_projection_events_total{projection="liveness"} 1200
devstatus_worker_events_total{type="heartbeat"} 1000
devstatus_worker_events_total{type="tick"} 50
devstatus_worker_devices{partition="0",status="connected"} 300
devstatus_worker_devices{partition="1",status="registered"} 20
devstatus_transitions_total{from="registered",to="connected"} 320
devstatus_worker_partitions_owned 16
process_cpu_seconds_total 12.5
process_resident_memory_bytes 1.048576e+08
go_memstats_heap_inuse_bytes 5.24288e+07
go_goroutines 41
unrelated_metric 99
malformed line
`

func TestScrapeKeepsTheSeriesTheReportNeeds(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(metricsPage))
	}))
	defer srv.Close()
	s := scrape(context.Background(), srv.Client(), srv.URL+"/metrics")
	if !s.ok || s.ConsumerLag != 42 || s.ProjLag["liveness"] != 5 || s.ProjLag["transitions"] != 7 || s.ProjLagSeconds["liveness"] != 0.25 ||
		s.ProjEvents["liveness"] != 1200 || s.WorkerEvents != 1050 || s.Tracked != 320 || s.Transitions != 320 ||
		s.Owned != 16 || !s.hasWork || s.CPUSeconds != 12.5 || s.RSS != 100<<20 || s.HeapInuse != 50<<20 || s.Goroutines != 41 {
		t.Fatalf("scraped %+v", s)
	}
	if s := scrape(context.Background(), srv.Client(), srv.URL+"/nothing"); s.ok {
		t.Fatal("a 404 page counted as a scrape")
	}
	if got := label([]byte(`{a="x",projection="liveness"}`), "projection"); got != "liveness" {
		t.Fatalf("label %q", got)
	}
	if got := label([]byte(`{a="x"}`), "projection"); got != "" {
		t.Fatalf("absent label %q", got)
	}
}

func TestLagTrendAndSecondHalfOfKnownSeries(t *testing.T) {
	t.Parallel()
	// 0..20 s: accepted 1000/s, the workers 900/s, the projection 800/s;
	// the lag grows by 100 events/s in the second half.
	var series []Sample
	for i := 0; i <= 20; i++ {
		lag := 0.0
		if i >= 10 {
			lag = float64(i-10) * 100
		}
		series = append(series, Sample{T: float64(i), Accepted: 1000, WorkerEventsPerSec: 900, ProjectedPerSec: 800,
			ConsumerLag: lag, LivenessLag: 0, TransitionsLag: 0, LivenessLagSeconds: 0.5})
	}
	lt := lagTrend(series, 0, 20, 1000)
	if lt.SlopePerSec != 100 || lt.MaxEvents != 1000 || lt.EndEvents != 1000 || lt.EndConsumer != 1000 || lt.MaxProjectionSeconds != 0.5 || lt.Growing {
		// Growing needs more than one second of input (1000) at the end.
		t.Fatalf("trend %+v", lt)
	}
	if lt := lagTrend(series, 0, 20, 500); !lt.Growing {
		t.Fatalf("at 500/s the same backlog grows: %+v", lt)
	}
	if acc, chain := secondHalf(series, 0, 20, true); acc != 1000 || chain != 800 {
		t.Fatalf("second half %v %v", acc, chain)
	}
	if acc, chain := secondHalf(series, 0, 20, false); acc != 1000 || chain != 1000 {
		t.Fatalf("without metrics %v %v", acc, chain)
	}
	if acc, chain := secondHalf(series, 30, 40, true); acc != 0 || chain != 0 {
		t.Fatalf("no samples %v %v", acc, chain)
	}
	if s := slope([]float64{1, 2, 3}, []float64{5, 7, 9}); s != 2 {
		t.Fatalf("slope %v", s)
	}
	if s := slope([]float64{1, 1}, []float64{5, 7}); s != 0 {
		t.Fatalf("slope of a vertical line %v", s)
	}
	for _, c := range []struct {
		v    []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.v); got != c.want {
			t.Errorf("median(%v) = %v", c.v, got)
		}
	}
}

func TestAcceptedCount(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]int64{
		`{"results":[{"device":"a","http_status":429}],"accepted":999}`: 999,
		`{"accepted":0}`: 0,
		`{"rejected":3}`: -1,
		`{"accepted":}`:  -1,
	} {
		if got := acceptedCount([]byte(body)); got != want {
			t.Errorf("%s: %d, want %d", body, got, want)
		}
	}
}

func TestAddScrapesOfTwoProcesses(t *testing.T) {
	t.Parallel()
	page := func(cpu, worker, proj, lag float64) promSample {
		return promSample{ok: true, CPUSeconds: cpu, WorkerEvents: worker, ProjEvents: map[string]float64{"liveness": proj},
			ProjLag: map[string]float64{"liveness": lag, "transitions": 1}, ProjLagSeconds: map[string]float64{"liveness": lag / 100},
			ConsumerLag: lag, Tracked: 10, Goroutines: 5, RSS: 2 << 20}
	}
	prev := map[string]promSample{"service": page(10, 0, 100, 0), "worker": page(20, 1000, 0, 0)}
	cur := map[string]promSample{"service": page(11, 0, 300, 40), "worker": page(23, 1400, 0, 60), "down": {}}
	s := Sample{CPU: map[string]float64{}, RSSMiB: map[string]float64{}}
	addScrapes(&s, prev, cur, 2)
	want := Sample{ConsumerLag: 100, LivenessLag: 100, TransitionsLag: 2, LivenessLagSeconds: 0.6, Tracked: 20, Goroutines: 10,
		WorkerEventsPerSec: 200, ProjectedPerSec: 100,
		CPU: map[string]float64{"service": 0.5, "worker": 1.5}, RSSMiB: map[string]float64{"service": 2, "worker": 2}}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("sample\n got %+v\nwant %+v", s, want)
	}
	// The first sample has no previous page: no rates, the levels only.
	s = Sample{CPU: map[string]float64{}, RSSMiB: map[string]float64{}}
	addScrapes(&s, nil, cur, 1)
	if len(s.CPU) != 0 || s.WorkerEventsPerSec != 0 || s.ConsumerLag != 100 {
		t.Fatalf("first sample %+v", s)
	}
}
