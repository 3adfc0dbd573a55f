package bus_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.LeakOptions()...)
}

// restartable is an embedded server on a fixed loopback port and store
// directory that a test can restart under its clients.
type restartable struct {
	t    *testing.T
	dir  string
	addr string
	s    *server.Server
}

func startRestartable(t *testing.T) *restartable {
	t.Helper()
	r := &restartable{t: t, dir: t.TempDir(), addr: "127.0.0.1:-1"}
	r.start()
	host, port, _ := net.SplitHostPort(r.s.Addr().String())
	r.addr = net.JoinHostPort(host, port)
	t.Cleanup(r.stop)
	return r
}

func (r *restartable) start() {
	r.t.Helper()
	s, err := bus.StartEmbedded(bus.EmbeddedConfig{StoreDir: r.dir, ListenAddr: r.addr, ServerName: "follow-test"})
	if err != nil {
		r.t.Fatalf("start server: %v", err)
	}
	r.s = s
}

func (r *restartable) stop() {
	if r.s != nil {
		r.s.Shutdown()
		r.s.WaitForShutdown()
		r.s = nil
	}
}

func (r *restartable) restart() {
	r.t.Helper()
	r.stop()
	r.start()
}

func (r *restartable) url() string { return "nats://" + r.addr }

func connect(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

const testStream = "FOLLOW"

func createStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: testStream, Subjects: []string{"follow.>"},
		Storage: jetstream.FileStorage, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// publish stores message i (1-based, payload "i") and retries until the
// server acknowledges it; the message id makes a retry after a lost PubAck
// a duplicate rather than a second copy.
func publish(t *testing.T, js jetstream.JetStream, subj string, i int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.Publish(ctx, subj, []byte(strconv.Itoa(i)), jetstream.WithMsgID("m-"+strconv.Itoa(i)))
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish %d: %v", i, err)
		}
		time.Sleep(10 * time.Millisecond) // retry pacing, not waiting for an effect
	}
}

// recorder is a handler that keeps what it was handed.
type recorder struct {
	mu   sync.Mutex
	seqs []uint64
	vals []int
}

func (r *recorder) handle(_ context.Context, m *bus.Msg) error {
	v, err := strconv.Atoi(string(m.Data))
	if err != nil {
		return fmt.Errorf("payload %q: %w", m.Data, err)
	}
	r.mu.Lock()
	r.seqs = append(r.seqs, m.Seq)
	r.vals = append(r.vals, v)
	r.mu.Unlock()
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.vals)
}

// check fails unless exactly the values 1..n were handled, once each, in
// stream order.
func (r *recorder) check(t *testing.T, n int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.vals) != n {
		t.Fatalf("handled %d messages, want %d", len(r.vals), n)
	}
	for i, v := range r.vals {
		if v != i+1 {
			t.Fatalf("message %d handled is %d, want %d (missed, doubled or out of order)", i, v, i+1)
		}
		if i > 0 && r.seqs[i] <= r.seqs[i-1] {
			t.Fatalf("sequence %d after %d", r.seqs[i], r.seqs[i-1])
		}
	}
}

func runFollower(t *testing.T, cfg bus.FollowConfig) *bus.Follower {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	f, err := bus.NewFollower(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return f
}

// TestFollowerAcrossServerRestarts restarts the server (same store, same
// port) twice under a running follower while messages are published, with
// and without the connection watch, and checks that every message is
// handled once, in order.
func TestFollowerAcrossServerRestarts(t *testing.T) {
	for _, watchConn := range []bool{true, false} {
		t.Run(fmt.Sprintf("conn_watch=%v", watchConn), func(t *testing.T) {
			srv := startRestartable(t)
			nc, js := connect(t, srv.url())
			createStream(t, js)
			var rec recorder
			cfg := bus.FollowConfig{Name: "restart", JetStream: js, Stream: testStream,
				FilterSubjects: []string{"follow.>"}, Handle: rec.handle,
				BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond, StallTimeout: 500 * time.Millisecond,
				OpTimeout: time.Second}
			if watchConn {
				cfg.Conn = nc
			}
			f := runFollower(t, cfg)

			const n = 300
			for i := 1; i <= n; i++ {
				publish(t, js, "follow.a", i)
				if i == n/3 || i == 2*n/3 {
					// Pull the server away under the follower (which may be
					// behind, in the middle of a pull).
					srv.restart()
				}
			}
			testenv.Eventually(t, 60*time.Second, "every message handled", func() bool { return rec.count() >= n })
			rec.check(t, n)
			if f.Restarts() == 0 && watchConn {
				t.Errorf("Restarts = 0 after two server restarts with the connection watched")
			}
			if f.LastSeq() != n {
				t.Errorf("LastSeq = %d, want %d", f.LastSeq(), n)
			}
		})
	}
}

// TestFollowerStallWatchdog simulates nats.go #1729 (a consumer that is
// connected and exists but no longer delivers): the server-side consumer is
// paused, so it keeps answering but delivers nothing. The watchdog must
// replace it and every message must still be handled once, in order.
func TestFollowerStallWatchdog(t *testing.T) {
	srv := startRestartable(t)
	_, js := connect(t, srv.url())
	st := createStream(t, js)
	var rec recorder
	f := runFollower(t, bus.FollowConfig{Name: "stall", JetStream: js, Stream: testStream, Handle: rec.handle,
		BackoffMin: 10 * time.Millisecond, StallTimeout: 300 * time.Millisecond, NamePrefix: "stalltest"})
	for i := 1; i <= 10; i++ {
		publish(t, js, "follow.a", i)
	}
	testenv.Eventually(t, 10*time.Second, "the first messages", func() bool { return rec.count() == 10 })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var paused int
	for name := range st.ListConsumers(ctx).Info() {
		if _, err := st.PauseConsumer(ctx, name.Name, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		paused++
	}
	if paused != 1 {
		t.Fatalf("paused %d consumers, want the follower's one", paused)
	}
	for i := 11; i <= 20; i++ {
		publish(t, js, "follow.a", i)
	}
	testenv.Eventually(t, 20*time.Second, "the watchdog to replace the paused consumer", func() bool { return rec.count() == 20 })
	rec.check(t, 20)
	if f.Stalls() == 0 {
		t.Fatalf("Stalls = 0: the messages after the pause came some other way")
	}
}

// TestFollowerConsumerDeleted deletes the consumer server-side; the
// follower (the ordered consumer or the watchdog, whichever sees it first)
// resumes after the last message handled.
func TestFollowerConsumerDeleted(t *testing.T) {
	srv := startRestartable(t)
	_, js := connect(t, srv.url())
	st := createStream(t, js)
	var rec recorder
	runFollower(t, bus.FollowConfig{Name: "deleted", JetStream: js, Stream: testStream, Handle: rec.handle,
		BackoffMin: 10 * time.Millisecond, StallTimeout: 300 * time.Millisecond})
	for i := 1; i <= 10; i++ {
		publish(t, js, "follow.a", i)
	}
	testenv.Eventually(t, 10*time.Second, "the first messages", func() bool { return rec.count() == 10 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name := range st.ListConsumers(ctx).Info() {
		if err := st.DeleteConsumer(ctx, name.Name); err != nil {
			t.Fatal(err)
		}
	}
	for i := 11; i <= 20; i++ {
		publish(t, js, "follow.a", i)
	}
	testenv.Eventually(t, 20*time.Second, "the messages after the deletion", func() bool { return rec.count() == 20 })
	rec.check(t, 20)
}

// TestFollowerHandlerErrorRedelivers: a handler error replaces the
// consumer, which starts again at the failed message.
func TestFollowerHandlerErrorRedelivers(t *testing.T) {
	srv := startRestartable(t)
	_, js := connect(t, srv.url())
	createStream(t, js)
	var rec recorder
	failed := false
	f := runFollower(t, bus.FollowConfig{Name: "handler-error", JetStream: js, Stream: testStream,
		BackoffMin: time.Millisecond,
		Handle: func(ctx context.Context, m *bus.Msg) error {
			if string(m.Data) == "5" && !failed {
				failed = true
				return errors.New("refused once")
			}
			return rec.handle(ctx, m)
		}})
	for i := 1; i <= 10; i++ {
		publish(t, js, "follow.a", i)
	}
	testenv.Eventually(t, 10*time.Second, "every message", func() bool { return rec.count() == 10 })
	rec.check(t, 10)
	if f.Restarts() != 1 {
		t.Fatalf("Restarts = %d, want 1", f.Restarts())
	}
}

// TestFollowerBatchesResumeAndStop: the batch form hands over messages in
// order, resumes from Resume's checkpoint after a restart, and ends Run with
// nil on ErrStopFollowing.
func TestFollowerBatchesResumeAndStop(t *testing.T) {
	srv := startRestartable(t)
	_, js := connect(t, srv.url())
	createStream(t, js)
	for i := 1; i <= 50; i++ {
		publish(t, js, "follow.a", i)
	}
	var (
		mu         sync.Mutex
		checkpoint uint64
		got        []int
		resumes    int
	)
	f, err := bus.NewFollower(bus.FollowConfig{Name: "batch", JetStream: js, Stream: testStream, BatchSize: 8,
		FlushInterval: 10 * time.Millisecond, BackoffMin: time.Millisecond, Logger: testenv.Logger(t),
		Prepare: func(m *bus.Msg) { m.Value, _ = strconv.Atoi(string(m.Data)) },
		Resume: func(context.Context) (uint64, error) {
			mu.Lock()
			defer mu.Unlock()
			resumes++
			return checkpoint, nil
		},
		HandleBatch: func(_ context.Context, b []*bus.Msg) error {
			mu.Lock()
			defer mu.Unlock()
			if len(b) > 8 {
				return fmt.Errorf("batch of %d", len(b))
			}
			if resumes == 1 && checkpoint >= 20 {
				return errors.New("fail once after 20, before committing")
			}
			for _, m := range b {
				got = append(got, m.Value.(int))
			}
			checkpoint = b[len(b)-1].Seq
			if checkpoint >= 50 {
				return bus.ErrStopFollowing
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run returned only at the deadline: ErrStopFollowing was not honoured")
	}
	if resumes != 2 {
		t.Fatalf("Resume called %d times, want 2", resumes)
	}
	if len(got) != 50 {
		t.Fatalf("handled %d, want 50", len(got))
	}
	for i, v := range got {
		if v != i+1 {
			t.Fatalf("got[%d] = %d", i, v)
		}
	}
}

func TestFollowerInvalidConfig(t *testing.T) {
	_, err := bus.NewFollower(bus.FollowConfig{Name: "x"})
	if !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("err = %v", err)
	}
}
