package projections

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the projector; every series has the label projection
// ("transitions" or "liveness").
//
//	devstatus_projection_lag_events              gauge   stream sequences not yet applied (see Lag.Events)
//	devstatus_projection_lag_seconds             gauge   age of the oldest unapplied event, seconds
//	devstatus_projection_checkpoint              gauge   last stream sequence applied
//	devstatus_projection_batches_total           counter batches committed
//	devstatus_projection_events_total            counter messages committed (applied or dead-lettered)
//	devstatus_projection_batch_duration_seconds  histogram time to write and commit one batch
//	devstatus_projection_dead_letters_total      counter messages set aside in dead_letters
//	devstatus_projection_retries_total{kind}     counter retries: kind=database (unreachable), poison (data error), stream
//	devstatus_projection_unknown_device_events_total counter liveness events ignored: no such device
type metrics struct {
	lagEvents    *prometheus.GaugeVec
	lagSeconds   *prometheus.GaugeVec
	checkpoint   *prometheus.GaugeVec
	batches      *prometheus.CounterVec
	events       *prometheus.CounterVec
	batchSeconds *prometheus.HistogramVec
	deadLetters  *prometheus.CounterVec
	retries      *prometheus.CounterVec
	unknown      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	p := []string{"projection"}
	m := &metrics{
		lagEvents: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devstatus_projection_lag_events",
			Help: "Stream sequences after the projection checkpoint up to the stream's last matching message."}, p),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devstatus_projection_lag_seconds",
			Help: "Age in seconds of the oldest event the projection has not applied yet (0 when caught up)."}, p),
		checkpoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devstatus_projection_checkpoint",
			Help: "Last stream sequence applied by the projection."}, p),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_projection_batches_total",
			Help: "Batches committed by the projection."}, p),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_projection_events_total",
			Help: "Stream messages committed by the projection (applied or dead-lettered)."}, p),
		batchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "devstatus_projection_batch_duration_seconds",
			Help:    "Time to write and commit one batch, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, p),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_projection_dead_letters_total",
			Help: "Messages the projection set aside in dead_letters."}, p),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_projection_retries_total",
			Help: "Retries by cause: database (Postgres unreachable), poison (data error), stream (consumer failed)."},
			[]string{"projection", "kind"}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devstatus_projection_unknown_device_events_total",
			Help: "Liveness events ignored because the device is not registered."}, p),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.lagEvents, err = register(reg, m.lagEvents)
	if err == nil {
		m.lagSeconds, err = register(reg, m.lagSeconds)
	}
	if err == nil {
		m.checkpoint, err = register(reg, m.checkpoint)
	}
	if err == nil {
		m.batches, err = register(reg, m.batches)
	}
	if err == nil {
		m.events, err = register(reg, m.events)
	}
	if err == nil {
		m.batchSeconds, err = register(reg, m.batchSeconds)
	}
	if err == nil {
		m.deadLetters, err = register(reg, m.deadLetters)
	}
	if err == nil {
		m.retries, err = register(reg, m.retries)
	}
	if err == nil {
		m.unknown, err = register(reg, m.unknown)
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// the same description.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
