package pinger

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the pinger's Prometheus collectors.
type metrics struct {
	probes     *prometheus.CounterVec   // by outcome
	skipped    *prometheus.CounterVec   // by reason
	errors     *prometheus.CounterVec   // by operation
	latency    *prometheus.HistogramVec // by ok
	delay      prometheus.Histogram
	publish    prometheus.Histogram
	inFlight   prometheus.Gauge
	pending    prometheus.Gauge
	ackPending prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_pinger_probes_total",
			Help: "Probes made and published, by outcome (ok, timeout, refused, dns, tls, http_status, other)."}, []string{"outcome"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_pinger_requests_skipped_total",
			Help: "Probe requests acknowledged without a probe, by reason (no_probe_url, unknown_device, decommissioned, forbidden, in_flight, malformed)."}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_pinger_errors_total",
			Help: "Failed operations of the pinger (fetch, registry, publish, ack); requests are retried."}, []string{"op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "devstatus_pinger_probe_duration_seconds",
			Help:    "Probe round-trip time (to the response headers, or to the failure), by ok.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30}}, []string{"ok"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "devstatus_pinger_probe_delay_seconds",
			Help:    "Time from a probe request's due time to its probe (queueing delay).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "devstatus_pinger_publish_duration_seconds",
			Help:    "Time from publishing a ping result to its PubAck.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_pinger_probes_in_flight",
			Help: "Probes running in this instance now."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_pinger_queue_pending",
			Help: "Probe requests waiting in the queue, not yet handed to any pinger instance (consumer num_pending)."}),
		ackPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "devstatus_pinger_queue_ack_pending",
			Help: "Probe requests handed to a pinger instance and not yet acknowledged, over all instances (consumer num_ack_pending)."}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.probes, m.skipped, m.errors, m.latency, m.delay, m.publish, m.inFlight, m.pending, m.ackPending} {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
