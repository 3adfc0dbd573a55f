package readapi

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// apiMetrics are the read API's Prometheus collectors:
//
//	devstatus_readapi_request_duration_seconds{route,code} histogram  time to answer a read (not the stream)
//	devstatus_sse_clients                                  gauge      open /v1/stream connections
//	devstatus_sse_events_total                             counter    transition events written to stream clients
//	devstatus_sse_dropped_total{reason}                    counter    stream clients dropped by the server:
//	                                                                  lagging (too far behind, told first), write (a write
//	                                                                  did not complete in time), consumer (the stream failed)
//
// The cache's collectors are separate ([Cache.Collectors]).
type apiMetrics struct {
	requests *prometheus.HistogramVec
	clients  prometheus.Gauge
	events   prometheus.Counter
	dropped  *prometheus.CounterVec
}

// Drop reasons of devstatus_sse_dropped_total.
const (
	dropLagging  = "lagging"
	dropWrite    = "write"
	dropConsumer = "consumer"
)

func newAPIMetrics(reg prometheus.Registerer) (*apiMetrics, error) {
	m := &apiMetrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "devstatus_readapi_request_duration_seconds",
			Help:    "Time to answer a read API request, by route and HTTP status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"route", "code"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_sse_clients",
			Help: "Open /v1/stream (server-sent events) connections."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_sse_events_total",
			Help: "Transition events written to /v1/stream clients."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_sse_dropped_total",
			Help: "Stream clients dropped by the server, by reason (lagging: too far behind, told first; write: a write timed out; consumer: the transitions stream failed)."},
			[]string{"reason"}),
	}
	for _, r := range []string{dropLagging, dropWrite, dropConsumer} {
		m.dropped.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.requests, m.clients, m.events, m.dropped} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

// instrument records the duration of each request of route.
func (m *apiMetrics) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &httpx.StatusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		m.requests.WithLabelValues(route, strconv.Itoa(rec.Status())).Observe(time.Since(start).Seconds())
	})
}
