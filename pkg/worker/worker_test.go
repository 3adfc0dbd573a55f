package worker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// pub publishes input events straight to the input stream, as the bridge
// and ticker do.
type pub struct {
	t *testing.T
	b *bus.Bus
	n int
}

func (p *pub) publish(in *events.Input) {
	p.t.Helper()
	p.n++
	if in.ID == "" {
		in.ID = fmt.Sprintf("test-%d", p.n)
	}
	data, err := events.EncodeInput(in)
	if err != nil {
		p.t.Fatal(err)
	}
	subj := events.DeviceSubject(in.Device, p.b.Partitions())
	if in.Type == events.TypeTick {
		subj = ""
	}
	if subj == "" {
		for part := 0; part < p.b.Partitions(); part++ {
			tick := *in
			tick.ID = fmt.Sprintf("tick-%d-%d", part, in.At.UnixNano())
			data, _ = events.EncodeInput(&tick)
			if _, err := p.b.JS.Publish(context.Background(), events.TickSubject(part), data, jetstream.WithMsgID(tick.ID)); err != nil {
				p.t.Fatal(err)
			}
		}
		return
	}
	if _, err := p.b.JS.Publish(context.Background(), subj, data, jetstream.WithMsgID(in.ID)); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pub) register(id, group string, at time.Time) {
	p.publish(&events.Input{Type: events.TypeDeviceRegistered, Device: id, At: at, Registered: &events.Registered{Group: group}})
}
func (p *pub) heartbeat(id string, at time.Time) {
	p.publish(&events.Input{Type: events.TypeHeartbeat, Device: id, At: at})
}
func (p *pub) tick(at time.Time) { p.publish(&events.Input{Type: events.TypeTick, At: at}) }

// transitions reads the whole transitions stream, waiting until it holds at
// least want messages (or 10 s passed).
func transitions(t *testing.T, b *bus.Bus, want int) []events.StatusChanged {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for int(testenv.StreamState(t, b, events.TransitionStream).Msgs) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var out []events.StatusChanged
	for _, m := range testenv.Messages(t, b, events.TransitionStream) {
		sc, err := events.DecodeStatusChanged(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *sc)
	}
	return out
}

func summarize(trs []events.StatusChanged, t0 time.Time) []string {
	var out []string
	for _, tr := range trs {
		out = append(out, fmt.Sprintf("%s:%s>%s@%s", tr.Device, tr.From, tr.To, tr.At.Sub(t0)))
	}
	sort.Strings(out)
	return out
}

func startWorker(t *testing.T, b *bus.Bus, id string, ttl time.Duration) (stop func()) {
	t.Helper()
	w, err := New(Config{Bus: b, InstanceID: id, Logger: testenv.Logger(t), SnapshotInterval: 50 * time.Millisecond, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	return func() { cancel(); wg.Wait() }
}

func TestWorkerEndToEndOverJetStream(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 4})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ids := []string{"A", "A.x", "*", "B b/ü"}
	for _, id := range ids {
		p.register(id, "", t0.Add(-time.Second))
		p.heartbeat(id, t0)
	}
	stop := startWorker(t, b, "w1", 3*time.Second)
	p.heartbeat("A", t0.Add(30*time.Second))
	p.tick(t0.Add(41 * time.Second))
	got := transitions(t, b, 7)
	want := []string{"*:connected>temporarily_offline@40s", "*:registered>connected@0s", "A.x:connected>temporarily_offline@40s",
		"A.x:registered>connected@0s", "A:registered>connected@0s", "B b/ü:connected>temporarily_offline@40s", "B b/ü:registered>connected@0s"}
	if strings.Join(summarize(got, t0), " ") != strings.Join(want, " ") {
		t.Fatalf("got  %v\nwant %v", summarize(got, t0), want)
	}

	// Restart: stop (final snapshot), publish more, start again: no
	// duplicates, the new run resumes after the snapshot.
	stop()
	p.heartbeat("A.x", t0.Add(45*time.Second))
	p.tick(t0.Add(71 * time.Second))
	stop = startWorker(t, b, "w2", 3*time.Second)
	defer stop()
	got = transitions(t, b, 9)
	if len(got) != 9 {
		t.Fatalf("after restart: %d transitions: %v", len(got), summarize(got, t0))
	}
	seen := map[string]bool{}
	for _, tr := range got {
		if seen[tr.ID] {
			t.Fatalf("duplicate transition %s", tr.ID)
		}
		seen[tr.ID] = true
	}
	last := got[len(got)-2:]
	if s := summarize(last, t0); strings.Join(s, " ") != "A.x:temporarily_offline>connected@45s A:connected>temporarily_offline@1m10s" {
		t.Fatalf("after restart: %v", s)
	}
}

// A worker that lost its partition cannot publish for a device the new
// owner published for: the expected last sequence of the device's
// transitions subject no longer matches.
func TestPublisherFenced(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 1})
	ctx := context.Background()
	mk := func() *publisher { return newFencePublisher(t, b) }
	a, c := mk(), mk()
	tr := func(seq uint64) *events.StatusChanged {
		sc := &events.StatusChanged{V: 1, Device: "A", From: events.StatusRegistered, To: events.StatusConnected,
			ReasonCode: events.ReasonHeartbeat, At: time.Now(), Cause: events.Cause{Seq: seq}}
		sc.ID = sc.MsgID()
		return sc
	}
	if err := a.publish(ctx, tr(1)); err != nil {
		t.Fatal(err)
	}
	if err := c.publish(ctx, tr(2)); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale owner published: %v", err)
	}
	if err := a.publish(ctx, tr(3)); err != nil {
		t.Fatal(err)
	}
	// A fresh publisher (a restarted worker) skips what was published.
	d := mk()
	if d.lastCause.seq != 3 {
		t.Fatalf("last cause %d", d.lastCause.seq)
	}
	if err := d.publish(ctx, tr(2)); err != nil {
		t.Fatal(err)
	}
	if got := transitions(t, b, 2); len(got) != 2 {
		t.Fatalf("%d transitions", len(got))
	}
}

// A crashed worker's partitions move to another instance after the lease
// TTL, and nothing is lost or duplicated.
func TestFailoverAfterCrash(t *testing.T) {
	b1 := testenv.NATS(t, bus.Config{Partitions: 2, ListenAddr: "127.0.0.1:-1", LeaseTTL: 2 * time.Second})
	b2, err := bus.Open(context.Background(), bus.Config{URL: b1.ClientURL(), Logger: testenv.Logger(t), LeaseTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p := &pub{t: t, b: b1}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// Five devices in each of the two partitions.
	perPart := map[int]int{}
	for i := 0; len(perPart) < 2 || perPart[0] < 5 || perPart[1] < 5; i++ {
		id := fmt.Sprintf("device %d", i*7919)
		if perPart[events.Partition(id, 2)] == 5 {
			continue
		}
		perPart[events.Partition(id, 2)]++
		p.register(id, "", t0)
		p.heartbeat(id, t0)
	}
	stop1 := startWorker(t, b2, "crashing", 2*time.Second)
	transitions(t, b1, 10)
	b2.NC.Close() // crash: no release, no final snapshot
	stop1()
	p.tick(t0.Add(41 * time.Second))
	stop3 := startWorker(t, b1, "survivor", 2*time.Second)
	defer stop3()
	got := transitions(t, b1, 20)
	if len(got) != 20 {
		t.Fatalf("%d transitions after failover: %v", len(got), summarize(got, t0))
	}
	seen := map[string]bool{}
	for _, tr := range got {
		if seen[tr.ID] {
			t.Fatalf("duplicate %s", tr.ID)
		}
		seen[tr.ID] = true
	}
}

// Scenario 8 (a stalled consumer after a broker restart): the NATS server
// restarts under a running worker; the worker's consumer recovers by itself
// and heartbeats published after the restart are applied.
func TestWorkerSurvivesServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, ListenAddr: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.ClientURL()
	addr := strings.TrimPrefix(url, "nats://")
	b, err := bus.Open(context.Background(), bus.Config{URL: url, Partitions: 2, Logger: testenv.Logger(t), LeaseTTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p.register("A", "", t0)
	p.heartbeat("A", t0)
	stop := startWorker(t, b, "w", 3*time.Second)
	defer stop()
	transitions(t, b, 1)

	srv.Shutdown()
	srv.WaitForShutdown()
	srv, err = bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: dir, ListenAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for !b.NC.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("client did not reconnect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.tick(t0.Add(41 * time.Second))
	p.heartbeat("A", t0.Add(60*time.Second))
	got := transitions(t, b, 3)
	want := "A:connected>temporarily_offline@40s A:registered>connected@0s A:temporarily_offline>connected@1m0s"
	if s := summarize(got, t0); strings.Join(s, " ") != want {
		t.Fatalf("after restart: %v", s)
	}
}

// Scenario 9 for the worker: an input it cannot decode is logged, counted
// and skipped; the device behind it in the same partition is processed.
func TestWorkerSkipsMalformedInput(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 1})
	p := &pub{t: t, b: b}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p.register("A", "", t0)
	p.register("B", "", t0)
	if _, err := b.JS.Publish(context.Background(), events.DeviceSubject("A", 1), []byte(`{"v":1,"type":"heartbeat","device":"A","at":"not a time"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.JS.Publish(context.Background(), events.DeviceSubject("A", 1), []byte("\x00\xff garbage")); err != nil {
		t.Fatal(err)
	}
	p.heartbeat("B", t0)
	stop := startWorker(t, b, "w", 3*time.Second)
	defer stop()
	got := transitions(t, b, 1)
	if len(got) != 1 || got[0].Device != "B" {
		t.Fatalf("got %v", summarize(got, t0))
	}
}

// JetStream checks the expected last sequence before the Nats-Msg-Id: the
// same transition published again (a retry after a lost ack, or a second
// worker running the same log during a switch-over) must count as stored,
// not as a fence, and must not be stored twice.
func TestPublisherSameTransitionTwiceIsNotAFence(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 1})
	ctx := context.Background()
	mk := func() *publisher { return newFencePublisher(t, b) }
	sc := &events.StatusChanged{V: 1, Device: "A", From: events.StatusRegistered, To: events.StatusConnected,
		ReasonCode: events.ReasonHeartbeat, At: time.Now(), Cause: events.Cause{Seq: 7}}
	sc.ID = sc.MsgID()
	a, c := mk(), mk()
	if err := a.publish(ctx, sc); err != nil {
		t.Fatal(err)
	}
	again := *sc
	if err := c.publish(ctx, &again); err != nil {
		t.Fatalf("the same transition from a second worker: %v", err)
	}
	if got := transitions(t, b, 1); len(got) != 1 {
		t.Fatalf("%d transitions stored", len(got))
	}
}

// waitOwned waits until w runs all n partitions and returns how long it took.
func waitOwned(t *testing.T, w *Worker, n int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for len(w.Status()) < n {
		if time.Since(start) > within {
			t.Fatalf("%s owns %d of %d partitions after %s", w.cfg.InstanceID, len(w.Status()), n, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func runWorker(t *testing.T, b *bus.Bus, id string, ttl time.Duration) (*Worker, func()) {
	t.Helper()
	w, err := New(Config{Bus: b, InstanceID: id, Logger: testenv.Logger(t), SnapshotInterval: 50 * time.Millisecond, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return w, testenv.Start(t, w.Run)
}

// crashWorker starts a worker on its own connection and kills it: the
// connection closes under it, so it neither releases its leases nor writes a
// final snapshot (as after a SIGKILL).
func crashWorker(t *testing.T, b1 *bus.Bus, id string, ttl time.Duration, before func()) {
	t.Helper()
	b2, err := bus.Open(context.Background(), bus.Config{URL: b1.ClientURL(), Logger: testenv.Logger(t), LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	w, stop := runWorker(t, b2, id, ttl)
	waitOwned(t, w, b1.Partitions(), 10*time.Second)
	if before != nil {
		before()
	}
	w.crashed.Store(true)
	b2.NC.Close()
	stop()
	for p := 0; p < b1.Partitions(); p++ {
		e, err := b1.Leases.Get(context.Background(), LeaseKey(p))
		if err != nil || ParseLeaseValue(e.Value()).Owner != id {
			t.Fatalf("partition %d's lease after the crash: %v %v", p, e, err)
		}
	}
}

// Issue 13, bug 3: a worker restarted with the identity of one that was
// killed takes its partitions over at once, not after the lease TTL, and
// goes on where the killed one stopped; a worker of another identity waits
// for the TTL.
func TestRestartReclaimsOwnLeases(t *testing.T) {
	const ttl = 4 * time.Second
	b1 := testenv.NATS(t, bus.Config{Partitions: 4, ListenAddr: "127.0.0.1:-1", LeaseTTL: ttl})
	p := &pub{t: t, b: b1}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := 0; i < 8; i++ {
		id := fmt.Sprintf("dev-%d", i)
		p.register(id, "", t0)
		p.heartbeat(id, t0)
	}

	t.Run("same identity", func(t *testing.T) {
		crashWorker(t, b1, "node-a", ttl, func() { transitions(t, b1, 8) })
		killed := time.Now()
		w, stop := runWorker(t, b1, "node-a", ttl)
		defer stop()
		took := waitOwned(t, w, 4, ttl)
		if since := time.Since(killed); since > ttl/4 {
			t.Fatalf("owned all partitions %s after the kill (acquire %s); the lease TTL is %s", since, took, ttl)
		}
		p.tick(t0.Add(41 * time.Second))
		got := transitions(t, b1, 16)
		if len(got) != 16 {
			t.Fatalf("%d transitions after the restart: %v", len(got), summarize(got, t0))
		}
		seen := map[string]bool{}
		for _, tr := range got {
			if seen[tr.ID] {
				t.Fatalf("duplicate %s", tr.ID)
			}
			seen[tr.ID] = true
		}
	})

	t.Run("another identity", func(t *testing.T) {
		crashWorker(t, b1, "node-b", ttl, nil)
		killed := time.Now()
		w, stop := runWorker(t, b1, "node-c", ttl)
		defer stop()
		waitOwned(t, w, 4, 2*ttl)
		// The killed worker's last renewal was at most ttl/3 before the kill.
		if since := time.Since(killed); since < ttl-ttl/3-200*time.Millisecond {
			t.Fatalf("another identity owned all partitions %s after the kill, before the lease TTL %s", since, ttl)
		}
	})
}

// devstatus_worker_partitions_owned is labelled with the instance's id.
func TestPartitionsOwnedMetric(t *testing.T) {
	b := testenv.NATS(t, bus.Config{Partitions: 3})
	reg := prometheus.NewRegistry()
	w, err := New(Config{Bus: b, InstanceID: "node-m", Logger: testenv.Logger(t), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	stop := testenv.Start(t, w.Run)
	defer stop()
	waitOwned(t, w, 3, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, mf := range mfs {
			if mf.GetName() != "devstatus_worker_partitions_owned" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					got = append(got, fmt.Sprintf("%s=%s %g", l.GetName(), l.GetValue(), m.GetGauge().GetValue()))
				}
			}
		}
		if strings.Join(got, ";") == "instance=node-m 3" {
			err = nil
		} else {
			err = fmt.Errorf("devstatus_worker_partitions_owned: %v", got)
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newFencePublisher returns a publisher of partition 0 (of 1) on b whose
// state holds device A registered, initialised from the transitions stream.
func newFencePublisher(t *testing.T, b *bus.Bus) *publisher {
	t.Helper()
	st := newPartition(0, 1, testThresholds, Probing{})
	mustApply(t, st, 1, &events.Input{Type: events.TypeDeviceRegistered, Device: "A", At: time.Now()})
	o := &publisher{js: b.JS, p: 0, partitions: 1, log: testenv.Logger(t), m: newMetrics(nil, "test"), st: st}
	if err := o.init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return o
}
