package bridge

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// metrics are the bridge's Prometheus collectors.
type metrics struct {
	heartbeats  *prometheus.CounterVec // by code
	pings       *prometheus.CounterVec // by code
	rateLimited prometheus.Counter
	// rateWindowRefused counts the 429s of the shared rate window (a
	// duplicate Nats-Msg-Id: another instance took the window).
	rateWindowRefused prometheus.Counter
	publishErrors     *prometheus.CounterVec // by type
	publishDuration   *prometheus.HistogramVec
	requestDuration   *prometheus.HistogramVec // by route, code
	shouldReconnect   *prometheus.CounterVec   // by reason
	lastAccepted      prometheus.Gauge
	// unknownFields counts the top-level fields of accepted heartbeats that
	// this version does not know (skipped). No label per field name: names
	// come from devices, so a label would be unbounded.
	unknownFields prometheus.Counter
	collectors    []prometheus.Collector
	clk           clock.Clock // measures durations (the injected clock)
}

const unknownFieldsHelp = "Top-level fields this version does not know, in accepted heartbeats (single endpoint and gateway batch items); skipped, never refused. Rising after a firmware release: the firmware sends a field this server ignores."

func newMetrics(clk clock.Clock, reg *registry.Registry, st *statusCache) *metrics {
	m := &metrics{
		clk: clk,
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devstatus_bridge_heartbeats_total",
			Help: "Heartbeat requests by HTTP status code (200 accepted; anything else rejected).",
		}, []string{"code"}),
		pings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devstatus_bridge_ping_results_total",
			Help: "Ping result requests by HTTP status code.",
		}, []string{"code"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devstatus_bridge_rate_limited_total",
			Help: "Heartbeats refused with 429 by the per-device rate limit.",
		}),
		rateWindowRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devstatus_bridge_rate_window_refused_total",
			Help: "Heartbeats refused with 429 by the shared rate window (JetStream already held one of the device's heartbeats in the window, from another bridge instance or an earlier attempt); included in devstatus_bridge_rate_limited_total.",
		}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devstatus_bridge_publish_errors_total",
			Help: "Input events that JetStream did not acknowledge (answered 503), by event type.",
		}, []string{"type"}),
		publishDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devstatus_bridge_publish_duration_seconds",
			Help:    "Time from publish to PubAck of input events, by event type.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"type"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devstatus_bridge_request_duration_seconds",
			Help:    "HTTP request duration of the ingest and admin endpoints, by route and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "code"}),
		shouldReconnect: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devstatus_bridge_should_reconnect_total",
			Help: "Heartbeat answers with should_reconnect=true, by reason (operator, comeback).",
		}, []string{"reason"}),
		unknownFields: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devstatus_heartbeat_unknown_fields_total",
			Help: unknownFieldsHelp,
		}),
		lastAccepted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devstatus_bridge_last_heartbeat_accepted_timestamp_seconds",
			Help: "Time (bridge clock, Unix seconds) of the last accepted heartbeat; alert when it stops moving (ingest stopped).",
		}),
	}
	cacheCounter := func(name, help string, f func(registry.CacheStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(reg.CacheStats())) })
	}
	m.collectors = []prometheus.Collector{
		m.heartbeats, m.pings, m.rateLimited, m.rateWindowRefused, m.publishErrors, m.publishDuration, m.requestDuration,
		m.shouldReconnect, m.lastAccepted, m.unknownFields,
		cacheCounter("devstatus_registry_cache_hits_total", "Device lookups answered from the registry cache.",
			func(s registry.CacheStats) uint64 { return s.Hits }),
		cacheCounter("devstatus_registry_cache_misses_total", "Device lookups that read the KV bucket.",
			func(s registry.CacheStats) uint64 { return s.Misses }),
		cacheCounter("devstatus_registry_cache_invalidations_total", "Cached devices dropped because their registration changed.",
			func(s registry.CacheStats) uint64 { return s.Invalidations }),
		cacheCounter("devstatus_registry_cache_refreshes_total", "Cached devices given their new registration by the KV watch (kept cached).",
			func(s registry.CacheStats) uint64 { return s.Refreshes }),
		cacheCounter("devstatus_registry_cache_flushes_total", "Whole-cache resets after a lost NATS connection.",
			func(s registry.CacheStats) uint64 { return s.Flushes }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "devstatus_registry_cache_entries", Help: "Devices in the registry cache."},
			func() float64 { return float64(reg.CacheStats().Entries) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "devstatus_bridge_status_cache_devices", Help: "Devices in the bridge's status cache."},
			func() float64 { return float64(st.size()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "devstatus_bridge_status_feed_stalls_total",
			Help: "Transitions feeds re-created because they stalled while connected (behind the stream, not moving)."},
			func() float64 { return float64(st.stallCount()) }),
		cacheCounter("devstatus_registry_watch_stalls_total", "Registry KV watches re-created because they stalled while connected.",
			func(s registry.CacheStats) uint64 { return s.WatchStalls }),
	}
	m.collectors = append(m.collectors, st.follower.Collectors()...)
	m.collectors = append(m.collectors, reg.WatchCollectors()...)
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	var errs []error
	for _, c := range m.collectors {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// instrument records the request duration and, with count, a per-code counter.
func (m *metrics) instrument(route string, count *prometheus.CounterVec, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := m.clk.Now()
		rec := &httpx.StatusRecorder{ResponseWriter: w}
		h(rec, r)
		code := strconv.Itoa(rec.Status())
		m.requestDuration.WithLabelValues(route, code).Observe(m.clk.Now().Sub(start).Seconds())
		if count != nil {
			count.WithLabelValues(code).Inc()
		}
	}
}
