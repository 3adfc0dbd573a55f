// Package worker runs the partition workers: for every input partition it
// owns (by a lease in JetStream KV), it reads the partition's log in order on
// one goroutine, applies each event to the device's compact state with the
// shared state machine (package statemachine), and publishes the resulting
// transitions to the transitions stream, deduplicated and fenced.
//
// Guarantees: transitions come out in log order; a redelivered input never
// produces a second transition (inputs at or below the last applied sequence
// are skipped, transitions carry Nats-Msg-Id tr-<p>-<seq>-<k>); a worker that
// lost its lease cannot publish (Nats-Expected-Last-Subject-Sequence on the
// partition's transitions); a restarted worker loads its snapshot and replays
// only the tail, publishing nothing twice.
//
// It must not read the wall clock to decide anything (time comes from the
// events), must not write to Postgres, and must not call the state machine
// from any goroutine but the partition's own.
package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/statemachine"
)

// ErrInvalidConfig wraps every configuration error of [New].
var ErrInvalidConfig = errors.New("worker: invalid config")

// ErrFenced is returned by a partition run when another worker published to
// the partition's transitions: this worker lost ownership.
var ErrFenced = errors.New("worker: fenced: another worker owns the partition")

// Config configures a [Worker].
type Config struct {
	// Bus is the open JetStream connection (required).
	Bus *bus.Bus
	// Thresholds are the state machine's timing rules (default: design.md's
	// 40s / 300s / 30s for every group).
	Thresholds Thresholds
	// Probing schedules probe requests for silent devices (defaults: first
	// at last heartbeat + 35s, backing off up to 5 min; After < 0 disables).
	Probing Probing
	// InstanceID names this worker in leases and logs. Default: host-pid-random.
	InstanceID string
	// Partitions lists the partitions this instance may own; nil means all.
	Partitions []int
	// SnapshotInterval is the longest time between snapshots of a busy
	// partition. Default 30s.
	SnapshotInterval time.Duration
	// SnapshotEvents snapshots after this many events. Default 200 000.
	SnapshotEvents int
	// LeaseTTL must match the lease bucket's TTL (bus.Config.LeaseTTL).
	// Default 10s. Leases are renewed every LeaseTTL/3.
	LeaseTTL time.Duration
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Registerer for Prometheus metrics; nil registers nowhere.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Thresholds.Default == (statemachine.Thresholds{}) {
		c.Thresholds.Default = statemachine.DefaultThresholds
	}
	if c.InstanceID == "" {
		host, _ := os.Hostname()
		var b [3]byte
		_, _ = rand.Read(b[:])
		c.InstanceID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.SnapshotEvents == 0 {
		c.SnapshotEvents = 200_000
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	if c.Bus == nil {
		return fmt.Errorf("%w: Bus is required", ErrInvalidConfig)
	}
	if err := c.Thresholds.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	for _, p := range c.Partitions {
		if p < 0 || p >= c.Bus.Partitions() {
			return fmt.Errorf("%w: partition %d outside 0..%d", ErrInvalidConfig, p, c.Bus.Partitions()-1)
		}
	}
	return nil
}

// Worker owns partitions and runs them. Create with [New], run with [Worker.Run].
type Worker struct {
	cfg Config
	m   *metrics
	log *slog.Logger

	mu    sync.Mutex
	parts map[int]*PartitionStatus
}

// PartitionStatus describes a partition this instance runs.
type PartitionStatus struct {
	Partition int
	// Seq is the last input sequence applied.
	Seq uint64
	// Pending is how many input events of the partition wait behind Seq
	// (the consumer lag), as of the last message.
	Pending uint64
	// Restored is the sequence the run resumed from (0: from the start).
	Restored uint64
	// Replayed counts events applied since the run started.
	Replayed uint64
}

// New validates the config and builds a Worker. Errors wrap [ErrInvalidConfig].
func New(cfg Config) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Worker{cfg: cfg, m: newMetrics(cfg.Registerer), log: cfg.Logger.With(slog.String("component", "worker"), slog.String("instance", cfg.InstanceID)), parts: map[int]*PartitionStatus{}}, nil
}

// Status returns the partitions this instance runs now.
func (w *Worker) Status() []PartitionStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]PartitionStatus, 0, len(w.parts))
	for _, s := range w.parts {
		out = append(out, *s)
	}
	return out
}

// Run acquires the leases of free partitions and runs each owned partition on
// its own goroutine until ctx is cancelled; then it writes a final snapshot
// per partition, releases the leases and returns nil. A partition whose run
// fails (lost lease, fenced, bus error) is released and retried.
func (w *Worker) Run(ctx context.Context) error {
	parts := w.cfg.Partitions
	if parts == nil {
		for p := 0; p < w.cfg.Bus.Partitions(); p++ {
			parts = append(parts, p)
		}
	}
	var wg sync.WaitGroup
	running := map[int]bool{}
	done := make(chan int, len(parts))
	tick := time.NewTicker(w.cfg.LeaseTTL / 3)
	defer tick.Stop()
	for {
		for _, p := range parts {
			if running[p] || ctx.Err() != nil {
				continue
			}
			l, err := acquireLease(ctx, w.cfg.Bus.Leases, p, w.cfg.InstanceID, w.cfg.LeaseTTL)
			if err != nil {
				if !errors.Is(err, errLeaseHeld) {
					w.log.Warn("lease acquire failed", slog.Int("partition", p), slog.Any("err", err))
				}
				continue
			}
			running[p] = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { done <- p }()
				w.runOwned(ctx, p, l)
			}()
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case p := <-done:
			delete(running, p)
		case <-tick.C:
		}
	}
}

// runOwned runs partition p while the lease l is held.
func (w *Worker) runOwned(ctx context.Context, p int, l *lease) {
	log := w.log.With(slog.Int("partition", p))
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	kept := make(chan struct{})
	go func() { defer close(kept); l.keep(pctx, func(err error) { cancel(err) }) }()
	w.m.owned.Inc()
	defer w.m.owned.Dec()
	log.Info("partition acquired")
	err := w.runPartition(pctx, p, log)
	if cause := context.Cause(pctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	w.mu.Lock()
	delete(w.parts, p)
	w.mu.Unlock()
	cancel(nil)
	<-kept // the lease's revision is no longer being renewed
	l.release(context.WithoutCancel(ctx))
	if err != nil {
		log.Warn("partition stopped", slog.Any("err", err))
		return
	}
	log.Info("partition released")
}

// runPartition restores partition p, then applies its log until ctx ends.
func (w *Worker) runPartition(ctx context.Context, p int, log *slog.Logger) error {
	b := w.cfg.Bus
	st := newPartition(p, b.Partitions(), w.cfg.Thresholds, w.cfg.Probing)
	snapName := "partition-" + strconv.Itoa(p)
	if data, err := b.Snapshots.GetBytes(ctx, snapName); err == nil {
		sn, err := decodeSnapshot(data)
		if err == nil {
			err = st.restore(sn)
		}
		if err != nil {
			log.Warn("ignoring unusable snapshot; replaying the log from the start", slog.Any("err", err))
			st = newPartition(p, b.Partitions(), w.cfg.Thresholds, w.cfg.Probing)
		}
	} else if !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("worker: load snapshot: %w", err)
	}

	out := &publisher{js: b.JS, p: p, partitions: b.Partitions(), log: log, m: w.m}
	if err := out.init(ctx); err != nil {
		return err
	}
	status := &PartitionStatus{Partition: p, Seq: st.seq, Restored: st.seq}
	w.mu.Lock()
	w.parts[p] = status
	w.mu.Unlock()
	log.Info("partition restored", slog.Uint64("snapshot_seq", st.seq), slog.Int("devices", len(st.index)),
		slog.Uint64("last_published_cause", out.lastCause.seq))

	cons, err := b.JS.OrderedConsumer(ctx, events.InputStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.PartitionFilter(p)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    st.seq + 1,
	})
	if err != nil {
		return fmt.Errorf("worker: consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		return fmt.Errorf("worker: consume: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	snap := &snapshotter{store: b.Snapshots, name: snapName, log: log, m: w.m}
	defer snap.wait()
	lastSnap, sinceSnap := time.Now(), 0
	lastGauge := time.Time{}
	var trs []events.StatusChanged
	var probes []events.ProbeRequest
	partLabel := strconv.Itoa(p)
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				break
			}
			return fmt.Errorf("worker: next: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("worker: metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		in, err := events.DecodeInput(msg.Data())
		if err != nil {
			// A malformed input can never be applied; the log keeps it for
			// inspection. Skip it rather than block the partition.
			log.Error("skipping malformed input", slog.Uint64("seq", seq), slog.String("subject", msg.Subject()), slog.Any("err", err))
			w.m.ignored.WithLabelValues("malformed").Inc()
			st.seq = max(st.seq, seq)
			continue
		}
		var res applyResult
		trs, probes, res, err = st.applyAll(seq, in, trs[:0], probes[:0])
		if err != nil {
			return fmt.Errorf("worker: apply seq %d: %w", seq, err)
		}
		if res.Skipped {
			continue
		}
		w.m.events.WithLabelValues(string(in.Type)).Inc()
		if res.Ignored != "" {
			w.m.ignored.WithLabelValues(res.Ignored).Inc()
		}
		for i := range trs {
			if err := out.publish(ctx, &trs[i]); err != nil {
				return err
			}
		}
		if len(probes) > 0 {
			if err := out.publishProbes(ctx, probes); err != nil {
				return err
			}
		}
		w.mu.Lock()
		status.Seq, status.Pending = seq, meta.NumPending
		status.Replayed++
		w.mu.Unlock()
		w.m.lag.WithLabelValues(partLabel).Set(float64(meta.NumPending))
		sinceSnap++
		now := time.Now() // scheduling only; never reaches the state machine
		if sinceSnap >= w.cfg.SnapshotEvents || (now.Sub(lastSnap) >= w.cfg.SnapshotInterval && sinceSnap > 0) {
			if snap.start(ctx, st.takeSnapshot()) {
				lastSnap, sinceSnap = now, 0
			}
		}
		if now.Sub(lastGauge) >= 2*time.Second {
			lastGauge = now
			w.m.setCounts(partLabel, st.counts())
		}
	}
	// Final snapshot so that the next owner replays nothing.
	snap.wait()
	if sinceSnap > 0 {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		snap.start(fctx, st.takeSnapshot())
		snap.wait()
	}
	return nil
}

// publisher publishes one partition's transitions in order, fenced by the
// last sequence of the partition's transitions subject filter.
type publisher struct {
	js         jetstream.JetStream
	p          int
	partitions int
	log        *slog.Logger
	m          *metrics
	// lastSeq is the transitions-stream sequence of the partition's last
	// transition (the fencing token).
	lastSeq uint64
	// lastCause is the (input seq, index) of the last transition published;
	// transitions at or below it were published by an earlier run.
	lastCause struct {
		seq   uint64
		index int
	}
}

func (o *publisher) init(ctx context.Context) error {
	st, err := o.js.Stream(ctx, events.TransitionStream)
	if err != nil {
		return fmt.Errorf("worker: transitions stream: %w", err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, events.TransitionPartitionFilter(o.p))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("worker: last transition of partition %d: %w", o.p, err)
	}
	sc, err := events.DecodeStatusChanged(msg.Data)
	if err != nil {
		return fmt.Errorf("worker: last transition of partition %d (seq %d): %w", o.p, msg.Sequence, err)
	}
	o.lastSeq = msg.Sequence
	o.lastCause.seq, o.lastCause.index = sc.Cause.Seq, sc.Index
	return nil
}

// publish publishes one transition unless an earlier run already did,
// retrying transient failures until ctx ends. It returns [ErrFenced] when
// another worker has published to the partition since.
func (o *publisher) publish(ctx context.Context, sc *events.StatusChanged) error {
	if sc.Cause.Seq < o.lastCause.seq || (sc.Cause.Seq == o.lastCause.seq && sc.Index <= o.lastCause.index) {
		o.m.suppressed.Inc()
		return nil
	}
	data, err := events.EncodeStatusChanged(sc)
	if err != nil {
		return fmt.Errorf("worker: encode transition: %w", err)
	}
	subj := events.TransitionSubject(sc.Device, o.partitions)
	backoff := 50 * time.Millisecond
	for {
		start := time.Now()
		ack, err := o.js.Publish(ctx, subj, data, jetstream.WithMsgID(sc.ID),
			jetstream.WithExpectLastSequenceForSubject(o.lastSeq, events.TransitionPartitionFilter(o.p)))
		if err == nil {
			o.m.publishSeconds.Observe(time.Since(start).Seconds())
			if ack.Sequence > o.lastSeq {
				o.lastSeq = ack.Sequence
			}
			o.lastCause.seq, o.lastCause.index = sc.Cause.Seq, sc.Index
			o.m.transitions.WithLabelValues(string(sc.From), string(sc.To), string(sc.ReasonCode)).Inc()
			o.log.Info("transition", slog.String("device", sc.Device), slog.String("from", string(sc.From)),
				slog.String("to", string(sc.To)), slog.String("reason_code", string(sc.ReasonCode)),
				slog.String("reason", sc.Reason), slog.Time("at", sc.At), slog.Uint64("cause_seq", sc.Cause.Seq))
			return nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return fmt.Errorf("%w (partition %d, expected last seq %d): %v", ErrFenced, o.p, o.lastSeq, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		o.log.Warn("publishing transition failed; retrying", slog.String("device", sc.Device), slog.Any("err", err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// publishProbes publishes probe requests (asynchronously, then waits for
// every ack), retrying until ctx ends. Their Nats-Msg-Id is derived from the
// cause, so a replay within the duplicate window does not repeat them; the
// probe stream keeps one pending request per device.
func (o *publisher) publishProbes(ctx context.Context, probes []events.ProbeRequest) error {
	backoff := 50 * time.Millisecond
	for {
		futures := make([]jetstream.PubAckFuture, 0, len(probes))
		var err error
		for i := range probes {
			var data []byte
			if data, err = events.EncodeProbeRequest(&probes[i]); err != nil {
				return fmt.Errorf("worker: encode probe request: %w", err)
			}
			var f jetstream.PubAckFuture
			if f, err = o.js.PublishAsync(events.ProbeSubject(probes[i].Device, o.partitions), data, jetstream.WithMsgID(probes[i].ID)); err != nil {
				break
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case e := <-f.Err():
				err = e
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err == nil {
			o.m.probes.Add(float64(len(probes)))
			return nil
		}
		o.log.Warn("publishing probe requests failed; retrying", slog.Int("count", len(probes)), slog.Any("err", err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// snapshotter writes snapshots in the background, one at a time.
type snapshotter struct {
	store jetstream.ObjectStore
	name  string
	log   *slog.Logger
	m     *metrics
	wg    sync.WaitGroup
	busy  bool
	mu    sync.Mutex
}

// start writes sn unless a write is in flight; it reports whether it started.
func (s *snapshotter) start(ctx context.Context, sn *snapshot) bool {
	s.mu.Lock()
	if s.busy {
		s.mu.Unlock()
		return false
	}
	s.busy = true
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { s.mu.Lock(); s.busy = false; s.mu.Unlock() }()
		start := time.Now()
		data, err := encodeSnapshot(sn)
		if err == nil {
			_, err = s.store.PutBytes(context.WithoutCancel(ctx), s.name, data)
		}
		if err != nil {
			s.log.Warn("snapshot failed", slog.Any("err", err))
			s.m.snapshotErrors.Inc()
			return
		}
		s.m.snapshotSeconds.Observe(time.Since(start).Seconds())
		s.log.Debug("snapshot written", slog.Uint64("seq", sn.Seq), slog.Int("devices", len(sn.IDs)), slog.Int("bytes", len(data)))
	}()
	return true
}

func (s *snapshotter) wait() { s.wg.Wait() }
