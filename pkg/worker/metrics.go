package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/pkg/statemachine"
)

type metrics struct {
	events          *prometheus.CounterVec
	ignored         *prometheus.CounterVec
	transitions     *prometheus.CounterVec
	suppressed      prometheus.Counter
	probes          prometheus.Counter
	lag             *prometheus.GaugeVec
	devices         *prometheus.GaugeVec
	owned           prometheus.Gauge
	publishSeconds  prometheus.Histogram
	snapshotSeconds prometheus.Histogram
	snapshotErrors  prometheus.Counter
}

// newMetrics builds the metrics of the worker of the named instance.
func newMetrics(reg prometheus.Registerer, instance string) *metrics {
	owned := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devstatus_worker_partitions_owned",
		Help: "Partitions this instance owns (label: the owning instance's id)."}, []string{"instance"})
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_worker_events_total",
			Help: "Input events applied by partition workers, by event type."}, []string{"type"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_worker_ignored_events_total",
			Help: "Input events that had no effect, by reason (unknown_device, stale_tick, malformed, …)."}, []string{"reason"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_transitions_total",
			Help: "Status transitions published, by from, to and reason code."}, []string{"from", "to", "reason_code"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_worker_replayed_transitions_total",
			Help: "Transitions recomputed during a replay and not published again (an earlier run published them)."}),
		probes: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_worker_probe_requests_total",
			Help: "Probe requests published for devices whose heartbeat is stale."}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devstatus_consumer_lag_events",
			Help: "Input events waiting behind the partition worker, per partition."}, []string{"partition"}),
		devices: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devstatus_worker_devices",
			Help: "Devices tracked by this instance's partition workers, by partition and status."}, []string{"partition", "status"}),
		owned: owned.WithLabelValues(instance),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "devstatus_worker_transition_publish_seconds",
			Help: "Time to publish one transition and receive its PubAck.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		snapshotSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "devstatus_worker_snapshot_seconds",
			Help: "Time to encode and store a partition snapshot.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		snapshotErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "devstatus_worker_snapshot_errors_total",
			Help: "Snapshots that could not be written."}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.ignored, m.transitions, m.suppressed, m.probes, m.lag, m.devices, owned, m.publishSeconds, m.snapshotSeconds, m.snapshotErrors)
	}
	return m
}

func (m *metrics) setCounts(partition string, c [4]int) {
	for s, n := range c {
		m.devices.WithLabelValues(partition, string(statemachine.Status(s).Wire())).Set(float64(n))
	}
}
