package pinger

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/registry"
)

// env is a bus and a registry for pinger tests.
type env struct {
	t   *testing.T
	bus *bus.Bus
	reg *registry.Registry
}

func newEnv(t *testing.T, cfg bus.Config) *env {
	t.Helper()
	if cfg.Partitions == 0 {
		cfg.Partitions = 4
	}
	b := testenv.NATS(t, cfg)
	return &env{t: t, bus: b, reg: newRegistry(t, b)}
}

func newRegistry(t *testing.T, b *bus.Bus) *registry.Registry {
	t.Helper()
	r, err := registry.New(registry.Config{Bus: b, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (e *env) register(id, probeURL string) {
	e.t.Helper()
	if _, err := e.reg.Register(context.Background(), id, "", "", registry.WithProbeURL(probeURL)); err != nil {
		e.t.Fatal(err)
	}
}

// request publishes a probe request as a partition worker would.
func (e *env) request(id string, attempt int) {
	e.t.Helper()
	now := time.Now().UTC()
	r := &events.ProbeRequest{ID: fmt.Sprintf("probe-test-%s-%d", events.SubjectToken(id), attempt), Device: id,
		DueAt: now, Attempt: attempt, LastHeartbeatAt: now.Add(-35 * time.Second), Partition: events.Partition(id, e.bus.Partitions())}
	data, err := events.EncodeProbeRequest(r)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.bus.JS.Publish(context.Background(), events.ProbeSubject(id, e.bus.Partitions()), data, jetstream.WithMsgID(r.ID)); err != nil {
		e.t.Fatal(err)
	}
}

// start runs a pinger until the test ends.
func start(t *testing.T, cfg Config) (*Pinger, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	cfg.Registerer = reg
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, p.Run)
	testenv.Eventually(t, 30*time.Second, "pinger ready", func() bool { return p.Ready(context.Background()) == nil })
	return p, reg
}

// pingResults reads every ping_result event on the input stream, by device.
func pingResults(t *testing.T, b *bus.Bus) map[string][]*events.Input {
	t.Helper()
	out := map[string][]*events.Input{}
	for _, in := range testenv.Inputs(t, b) {
		if in.Type == events.TypePingResult {
			out[in.Device] = append(out[in.Device], in)
		}
	}
	return out
}

// queueEmpty reports whether every probe request was acknowledged.
func queueEmpty(t *testing.T, b *bus.Bus) bool {
	t.Helper()
	return testenv.StreamState(t, b, events.ProbeStream).Msgs == 0
}

// metric returns the value of a counter or gauge with the given labels.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

// TestPingerPublishesResults: one request per device, each answered by one
// published ping result (or, for devices that cannot be probed, an ack and a
// count), and the queue drained.
func TestPingerPublishesResults(t *testing.T) {
	e := newEnv(t, bus.Config{})
	ok := newCounted(t, status(200))
	slow := newCounted(t, hang)
	fail := newCounted(t, status(500))
	devices := map[string]string{ // device → URL
		"dev/ok":      ok.URL + "/health",
		"dev/timeout": slow.URL,
		"dev/refused": refusedURL(t),
		"dev/500":     fail.URL,
	}
	for id, u := range devices {
		e.register(id, u)
	}
	e.register("dev/no-url", "")
	e.register("dev/gone", ok.URL)
	if err := e.reg.Decommission(context.Background(), "dev/gone"); err != nil {
		t.Fatal(err)
	}
	before := time.Now().UTC()
	for _, id := range []string{"dev/ok", "dev/timeout", "dev/refused", "dev/500", "dev/no-url", "dev/gone", "dev/unknown"} {
		e.request(id, 1)
	}
	// a malformed request
	if _, err := e.bus.JS.Publish(context.Background(), events.ProbeSubject("dev/bad", e.bus.Partitions()), []byte("{not json")); err != nil {
		t.Fatal(err)
	}

	_, reg := start(t, Config{Bus: e.bus, Registry: e.reg, Policy: loopback, Timeout: 300 * time.Millisecond,
		Concurrency: 4, QueueInterval: 20 * time.Millisecond, InstanceID: "p1"})
	var res map[string][]*events.Input
	testenv.Eventually(t, 30*time.Second, "four results and an empty queue", func() bool {
		res = pingResults(t, e.bus)
		return len(res) == 4 && queueEmpty(t, e.bus)
	})
	want := map[string]string{"dev/ok": "", "dev/timeout": ClassTimeout, "dev/refused": ClassRefused, "dev/500": ClassHTTPStatus}
	for id, class := range want {
		rs := res[id]
		if len(rs) != 1 {
			t.Fatalf("%s: %d results", id, len(rs))
		}
		r := rs[0]
		if r.Ping.OK != (class == "") || r.Ping.Error != class {
			t.Errorf("%s: ok=%v error=%q, want class %q", id, r.Ping.OK, r.Ping.Error, class)
		}
		if r.Ping.CheckedAt.After(r.At) || r.Ping.CheckedAt.Before(before) {
			t.Errorf("%s: checked_at %s, at %s (requests from %s)", id, r.Ping.CheckedAt, r.At, before)
		}
		if !strings.HasPrefix(r.ID, "pg-") || r.Ping.RTTMs < 0 {
			t.Errorf("%s: %+v", id, r)
		}
	}
	if rtt := res["dev/timeout"][0].Ping.RTTMs; rtt < 250 {
		t.Errorf("timeout after %d ms, want about 300", rtt)
	}
	for _, outcome := range []string{"ok", ClassTimeout, ClassRefused, ClassHTTPStatus} {
		if n := metric(t, reg, "devstatus_pinger_probes_total", "outcome", outcome); n != 1 {
			t.Errorf("probes_total{outcome=%s} = %v", outcome, n)
		}
	}
	for _, reason := range []string{"no_probe_url", "decommissioned", "unknown_device", "malformed"} {
		if n := metric(t, reg, "devstatus_pinger_requests_skipped_total", "reason", reason); n != 1 {
			t.Errorf("requests_skipped_total{reason=%s} = %v", reason, n)
		}
	}
	if n := metric(t, reg, "devstatus_pinger_probe_duration_seconds", "ok", "false"); n != 3 {
		t.Errorf("latency histogram has %v failed samples", n)
	}
	testenv.Eventually(t, 30*time.Second, "queue gauges at zero", func() bool {
		return metric(t, reg, "devstatus_pinger_queue_pending") == 0 && metric(t, reg, "devstatus_pinger_queue_ack_pending") == 0
	})
	if ok.hits.Load() != 1 {
		t.Errorf("the decommissioned device's server was probed (%d hits)", ok.hits.Load()-1)
	}
}

// TestPingerQueueDepth: requests waiting while every probe slot is busy show
// in the queue gauge.
func TestPingerQueueDepth(t *testing.T) {
	e := newEnv(t, bus.Config{})
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	blocked := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	for i := range 5 {
		id := fmt.Sprintf("q%d", i)
		e.register(id, blocked.URL)
		e.request(id, 1)
	}
	_, reg := start(t, Config{Bus: e.bus, Registry: e.reg, Policy: loopback, Timeout: 20 * time.Second,
		Concurrency: 1, QueueInterval: 20 * time.Millisecond})
	// One probe runs; the others wait in the queue or (at most one more,
	// Concurrency) in the instance's buffer.
	testenv.Eventually(t, 30*time.Second, "1 in flight, 4 waiting", func() bool {
		pending, acked := metric(t, reg, "devstatus_pinger_queue_pending"), metric(t, reg, "devstatus_pinger_queue_ack_pending")
		return metric(t, reg, "devstatus_pinger_probes_in_flight") == 1 && pending+acked == 5 && pending >= 3
	})
	once.Do(func() { close(release) })
	testenv.Eventually(t, 30*time.Second, "queue drained", func() bool { return queueEmpty(t, e.bus) })
	if n := blocked.hits.Load(); n != 5 {
		t.Fatalf("%d probes", n)
	}
}

// TestPingerAppliesPolicyAtProbeTime: a stored URL that the pinger's policy
// forbids (the policy changed, or the name resolves to a forbidden address)
// is not probed and no result is published.
func TestPingerAppliesPolicyAtProbeTime(t *testing.T) {
	e := newEnv(t, bus.Config{})
	srv := newCounted(t, status(200))
	e.register("dev/loop", srv.URL) // accepted when loopback was allowed
	e.request("dev/loop", 1)
	_, reg := start(t, Config{Bus: e.bus, Registry: e.reg, Timeout: time.Second}) // default policy
	testenv.Eventually(t, 30*time.Second, "request consumed", func() bool { return queueEmpty(t, e.bus) })
	if n := metric(t, reg, "devstatus_pinger_requests_skipped_total", "reason", "forbidden"); n != 1 {
		t.Fatalf("skipped{forbidden} = %v", n)
	}
	if srv.hits.Load() != 0 || len(pingResults(t, e.bus)) != 0 {
		t.Fatal("a forbidden target was probed")
	}
}

func TestConfigValidation(t *testing.T) {
	e := newEnv(t, bus.Config{})
	for name, cfg := range map[string]Config{
		"no bus":        {Registry: e.reg},
		"timeout":       {Bus: e.bus, Registry: e.reg, Timeout: time.Minute},
		"concurrency":   {Bus: e.bus, Registry: e.reg, Concurrency: -1},
		"ack wait":      {Bus: e.bus, Registry: e.reg, AckWait: time.Second},
		"scheme":        {Bus: e.bus, Registry: e.reg, Policy: probepolicy.Policy{Schemes: []string{"gopher"}}},
		"max ack below": {Bus: e.bus, Registry: e.reg, Concurrency: 100, MaxAckPending: 10},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}
