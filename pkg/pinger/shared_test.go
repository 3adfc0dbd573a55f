package pinger

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// fleetServer stands in for many devices: path /d/<n> is device n. It
// counts requests per device, the devices being probed at once (must never
// exceed 1), and the requests in flight per pinger instance (from the
// User-Agent) and in total.
type fleetServer struct {
	mu        sync.Mutex
	hits      map[string]int
	active    map[string]int
	doubled   []string
	perInst   map[string]int
	peakInst  map[string]int
	served    map[string]int
	total     int
	peakTotal int
	hold      time.Duration
}

func (f *fleetServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dev := r.URL.Path
	ua := r.Header.Get("User-Agent")
	inst := ua[strings.IndexByte(ua, '(')+1 : len(ua)-1]
	f.mu.Lock()
	f.hits[dev]++
	f.active[dev]++
	if f.active[dev] > 1 {
		f.doubled = append(f.doubled, dev)
	}
	f.perInst[inst]++
	f.served[inst]++
	f.peakInst[inst] = max(f.peakInst[inst], f.perInst[inst])
	f.total++
	f.peakTotal = max(f.peakTotal, f.total)
	f.mu.Unlock()

	time.Sleep(f.hold) // a device taking its time to answer

	f.mu.Lock()
	f.active[dev]--
	f.perInst[inst]--
	f.total--
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// TestTwoPingersShareWork (issue 4, "done when" 4): two pinger instances on
// separate connections share one queue of probe requests for 1 000 stale
// devices over three schedule steps: every device is probed exactly once per
// step, never twice at once, and neither instance ever has more probes in
// flight than its concurrency limit.
func TestTwoPingersShareWork(t *testing.T) {
	if testing.Short() {
		t.Skip("1 000 devices")
	}
	const (
		devices     = 1000
		steps       = 3
		concurrency = 8
	)
	b1 := testenv.NATS(t, bus.Config{Partitions: 8, ListenAddr: "127.0.0.1:-1"})
	b2, err := bus.Open(context.Background(), bus.Config{URL: b1.ClientURL(), Name: "pinger-2", Partitions: 8, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b2.Close)
	e := &env{t: t, bus: b1, reg: newRegistry(t, b1)}

	fleet := &fleetServer{hits: map[string]int{}, active: map[string]int{}, perInst: map[string]int{},
		peakInst: map[string]int{}, served: map[string]int{}, hold: 5 * time.Millisecond}
	srv := newCounted(t, fleet.ServeHTTP)
	began := time.Now()
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("fleet/%04d", i)
		e.register(ids[i], fmt.Sprintf("%s/d/%04d", srv.URL, i))
	}

	quiet := slog.New(warnOnly{testenv.Logger(t).Handler()})
	start(t, Config{Bus: b1, Registry: e.reg, Policy: loopback, Concurrency: concurrency, InstanceID: "p1", Logger: quiet})
	start(t, Config{Bus: b2, Registry: newRegistry(t, b2), Policy: loopback, Concurrency: concurrency, InstanceID: "p2", Logger: quiet})

	t.Logf("registered %d devices in %s", devices, time.Since(began))
	for step := 1; step <= steps; step++ {
		stepStart := time.Now()
		for _, id := range ids {
			e.request(id, step)
		}
		deadline := time.Now().Add(3 * time.Minute) // generous: a loaded CI machine
		for srv.hits.Load() != int64(devices*step) || !queueEmpty(t, b1) {
			if time.Now().After(deadline) {
				t.Fatalf("step %d: %d probes after 3 min, want %d", step, srv.hits.Load(), devices*step)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("step %d: %s", step, time.Since(stepStart))
		fleet.mu.Lock()
		for i := range ids {
			if n := fleet.hits[fmt.Sprintf("/d/%04d", i)]; n != step {
				t.Errorf("step %d: device %d probed %d times in all", step, i, n)
			}
		}
		fleet.mu.Unlock()
	}
	res := pingResults(t, b1)
	if len(res) != devices {
		t.Fatalf("results for %d devices", len(res))
	}
	for id, rs := range res {
		if len(rs) != steps {
			t.Errorf("%s: %d results, want %d", id, len(rs), steps)
		}
		for _, r := range rs {
			if !r.Ping.OK {
				t.Errorf("%s: %+v", id, r.Ping)
			}
		}
	}
	fleet.mu.Lock()
	defer fleet.mu.Unlock()
	if len(fleet.doubled) > 0 {
		t.Errorf("devices probed twice at once: %v", fleet.doubled)
	}
	for _, inst := range []string{"p1", "p2"} {
		if fleet.peakInst[inst] > concurrency {
			t.Errorf("instance %s had %d probes in flight, limit %d", inst, fleet.peakInst[inst], concurrency)
		}
		if fleet.served[inst] == 0 {
			t.Errorf("instance %s did no work", inst)
		}
	}
	if fleet.peakTotal > 2*concurrency {
		t.Errorf("%d probes in flight in all, limit %d", fleet.peakTotal, 2*concurrency)
	}
	t.Logf("served p1=%d p2=%d, peak in flight p1=%d p2=%d total=%d", fleet.served["p1"], fleet.served["p2"],
		fleet.peakInst["p1"], fleet.peakInst["p2"], fleet.peakTotal)
}

// warnOnly filters a handler to warnings and errors (1 000 devices would
// log thousands of debug lines).
type warnOnly struct{ slog.Handler }

func (h warnOnly) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h warnOnly) WithAttrs(a []slog.Attr) slog.Handler         { return warnOnly{h.Handler.WithAttrs(a)} }
func (h warnOnly) WithGroup(g string) slog.Handler              { return warnOnly{h.Handler.WithGroup(g)} }
