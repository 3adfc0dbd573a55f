package bridge

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// TestBusStopMidRun is Done-when 6 under load: 16 devices heartbeat
// continuously from 16 clients while the embedded NATS server is stopped
// and later restarted on the same address and store. Every answer is 200 or
// 503 (503 always with Retry-After); no request made while the bus was known
// to be down got 200; /readyz answers 503 while it is down and 200 after;
// heartbeats succeed again after the restart without any intervention; and
// every heartbeat answered 200, before, during or after, is in the stream.
func TestBusStopMidRun(t *testing.T) {
	dir := t.TempDir()
	var srvMu sync.Mutex
	srv, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, ListenAddr: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srvMu.Lock()
		defer srvMu.Unlock()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	addr := strings.TrimPrefix(srv.ClientURL(), "nats://")
	b := testenv.NATS(t, bus.Config{URL: srv.ClientURL(), Partitions: 4})
	e := newEnvOnBus(t, b, func(c *Config) { c.RateMinInterval, c.RatePerMinute = 0, 0 })
	const devices = 16
	toks := make([]string, devices)
	for i := range toks {
		toks[i] = e.register(fmt.Sprint("dev-", i), "")
	}
	readyz := func() int { return e.do("GET", "/readyz", "", "", nil).code }
	if c := readyz(); c != 200 {
		t.Fatalf("/readyz before: %d", c)
	}

	const (
		up = iota
		down
		restarting
	)
	var phase atomic.Int32
	type answer struct {
		device, n      int
		code           int
		retryAfter     string
		startPh, endPh int32
	}
	var (
		mu       sync.Mutex
		answers  []answer
		stop     atomic.Bool
		accepted [3]atomic.Int32
		wg       sync.WaitGroup
	)
	client := e.srv.Client()
	for d := 0; d < devices; d++ {
		wg.Add(1)
		go func(d int) {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				a := answer{device: d, n: n, startPh: phase.Load()}
				req, _ := http.NewRequest(http.MethodPost, e.srv.URL+devPath(fmt.Sprint("dev-", d), "/heartbeat"),
					strings.NewReader(fmt.Sprintf(`{"metrics":{"d":%d,"n":%d}}`, d, n)))
				req.Header.Set("Authorization", "Bearer "+toks[d])
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				a.code, a.retryAfter, a.endPh = resp.StatusCode, resp.Header.Get("Retry-After"), phase.Load()
				if a.code == 200 {
					accepted[a.endPh].Add(1)
				}
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			}
		}(d)
	}
	testenv.Eventually(t, 20*time.Second, "load running", func() bool { return accepted[up].Load() >= 200 })

	srvMu.Lock()
	srv.Shutdown()
	srv.WaitForShutdown()
	srvMu.Unlock()
	testenv.Eventually(t, 20*time.Second, "/readyz fails", func() bool { return readyz() == 503 })
	phase.Store(down)
	testenv.Eventually(t, 20*time.Second, "requests refused while down", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, a := range answers {
			if a.startPh == down {
				n++
			}
		}
		return n >= 200
	})
	if c := readyz(); c != 503 {
		t.Errorf("/readyz while down: %d", c)
	}

	phase.Store(restarting)
	srvMu.Lock()
	srv, err = bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, ListenAddr: addr})
	srvMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "/readyz after the restart", func() bool { return readyz() == 200 })
	testenv.Eventually(t, 20*time.Second, "ingest resumed", func() bool { return accepted[restarting].Load() >= 200 })
	stop.Store(true)
	wg.Wait()

	stored := map[[2]int]bool{}
	for _, ev := range e.inputEvents() {
		if ev.In.Heartbeat == nil {
			continue
		}
		var m struct{ D, N int }
		if err := json.Unmarshal(ev.In.Heartbeat.Metrics, &m); err != nil {
			t.Fatal(err)
		}
		stored[[2]int{m.D, m.N}] = true
	}
	codes := map[int]int{}
	for _, a := range answers {
		codes[a.code]++
		switch a.code {
		case 200:
			if !stored[[2]int{a.device, a.n}] {
				t.Errorf("heartbeat %d of dev-%d was answered 200 but is not in the stream", a.n, a.device)
			}
			if a.startPh == down && a.endPh == down {
				t.Errorf("heartbeat %d of dev-%d got 200 while the bus was down", a.n, a.device)
			}
		case 503:
			if a.retryAfter == "" {
				t.Errorf("503 without Retry-After")
			}
		default:
			t.Errorf("heartbeat %d of dev-%d: %d", a.n, a.device, a.code)
		}
	}
	t.Logf("answers %v; accepted before %d, during %d, after %d; stored %d",
		codes, accepted[up].Load(), accepted[down].Load(), accepted[restarting].Load(), len(stored))
}
