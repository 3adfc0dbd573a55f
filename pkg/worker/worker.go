// Package worker runs the partition workers: for every input partition it
// owns (by a lease in JetStream KV), it reads the partition's log in order on
// one goroutine, applies each event to the device's compact state with the
// shared state machine (package statemachine), and publishes the resulting
// transitions to the transitions stream, deduplicated and fenced.
//
// Guarantees: transitions come out in log order; a redelivered input never
// produces a second transition (inputs at or below the last applied sequence
// are skipped, transitions carry Nats-Msg-Id tr-<p>-<seq>-<k>); a worker that
// lost its lease cannot publish a transition of a device another worker has
// published for since (Nats-Expected-Last-Subject-Sequence on the device's
// transitions subject, see publisher); a restarted worker loads its snapshot
// and replays only the tail, publishing nothing twice.
//
// It must not read the wall clock to decide anything (time comes from the
// events), must not write to Postgres, and must not call the state machine
// from any goroutine but the partition's own.
package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
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
	// Thresholds are the state machine's timing rules (default: 40s / 300s /
	// 30s for every group).
	Thresholds Thresholds
	// Probing schedules probe requests for silent devices (defaults: first
	// at last heartbeat + 35s, backing off up to 5 min; After < 0 disables).
	Probing Probing
	// InstanceID names this worker in leases and logs. Default: host-pid-random.
	// An instance takes over its own leases at once (a restart after a
	// crash): the id must name one running process (cmd/devstatus keeps it
	// in the data directory, under a lock).
	InstanceID string
	// Partitions lists the partitions this instance may own; nil means all.
	// The instance owns at most its fair share of all partitions (see Run).
	Partitions []int
	// Roles are this instance's roles, shown in its membership key.
	Roles []string
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

	// crashed (tests only) makes the partitions stop as after a SIGKILL: no
	// final flush or snapshot, no lease release.
	crashed atomic.Bool
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
	return &Worker{cfg: cfg, m: newMetrics(cfg.Registerer, cfg.InstanceID), log: cfg.Logger.With(slog.String("component", "worker"), slog.String("instance", cfg.InstanceID)), parts: map[int]*PartitionStatus{}}, nil
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
// per partition, releases the leases, deletes its membership key and returns
// nil. A partition whose run fails (lost lease, fenced, bus error) is
// released and retried.
//
// Fair share: every LeaseTTL/3 it renews its membership key ([Member]) and
// counts the k live instances; it owns at most ⌊n/k⌋ or ⌈n/k⌉ of the n
// partitions ([fairShare]), handing the highest ones over when above (each
// stops cleanly: final snapshot, release) and taking free ones when below.
func (w *Worker) Run(ctx context.Context) error {
	parts := w.cfg.Partitions
	if parts == nil {
		for p := 0; p < w.cfg.Bus.Partitions(); p++ {
			parts = append(parts, p)
		}
	}
	var wg sync.WaitGroup
	running := map[int]context.CancelFunc{} // partitions run, and how to hand each over
	releasing := map[int]bool{}             // handed over, still stopping
	done := make(chan int, len(parts))
	tick := time.NewTicker(w.cfg.LeaseTTL / 3)
	defer tick.Stop()
	n, share := w.cfg.Bus.Partitions(), len(parts)
	since := time.Now().UTC().Truncate(time.Millisecond)
	for {
		if ctx.Err() == nil {
			share = w.share(ctx, n, share, since)
			owned := len(running) - len(releasing)
			// Above the fair share: hand the highest partitions over (final
			// snapshot, release); another instance takes them at once.
			for p := n - 1; p >= 0 && owned > share; p-- {
				if stop, ok := running[p]; ok && !releasing[p] {
					w.log.Info("handing partition over (fair share)", slog.Int("partition", p), slog.Int("share", share))
					releasing[p] = true
					stop()
					owned--
				}
			}
			for _, p := range parts {
				if owned >= share {
					break
				}
				if running[p] != nil {
					continue
				}
				l, err := acquireLease(ctx, w.cfg.Bus.Leases, p, w.cfg.InstanceID, w.cfg.LeaseTTL)
				if err != nil {
					if !errors.Is(err, errLeaseHeld) {
						w.log.Warn("lease acquire failed", slog.Int("partition", p), slog.Any("err", err))
					}
					continue
				}
				pctx, stop := context.WithCancel(ctx)
				running[p] = stop
				owned++
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { done <- p }()
					defer stop()
					w.runOwned(pctx, p, l)
				}()
			}
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			if !w.crashed.Load() {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				_ = w.cfg.Bus.Leases.Delete(dctx, memberKey(w.cfg.InstanceID))
				cancel()
			}
			return nil
		case p := <-done:
			delete(running, p)
			delete(releasing, p)
		case <-tick.C:
		}
	}
}

// share renews this instance's membership key and returns its fair share
// of the n partitions; on a bus error it keeps the previous share.
func (w *Worker) share(ctx context.Context, n, prev int, since time.Time) int {
	val, _ := json.Marshal(Member{ID: w.cfg.InstanceID, Roles: w.cfg.Roles, Since: since})
	if _, err := w.cfg.Bus.Leases.Put(ctx, memberKey(w.cfg.InstanceID), val); err != nil {
		w.log.Warn("membership renewal failed", slog.Any("err", err))
		return prev
	}
	members, err := Members(ctx, w.cfg.Bus.Leases)
	if err != nil {
		w.log.Warn("listing members failed", slog.Any("err", err))
		return prev
	}
	share := fairShare(n, members, w.cfg.InstanceID)
	if share != prev {
		w.log.Info("fair share", slog.Int("share", share), slog.Int("instances", max(len(members), 1)), slog.Int("partitions", n))
	}
	return share
}

// runOwned runs partition p while the lease l is held.
func (w *Worker) runOwned(ctx context.Context, p int, l *lease) {
	log := w.log.With(slog.Int("partition", p))
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	l.progress = func() (uint64, uint64) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if st := w.parts[p]; st != nil {
			return st.Seq, st.Pending
		}
		return 0, 0
	}
	kept := make(chan struct{})
	go func() { defer close(kept); l.keep(pctx, func(err error) { cancel(err) }) }()
	w.m.owned.Inc()
	defer w.m.owned.Dec()
	if l.reclaimed {
		log.Info("partition acquired", slog.String("from", "an earlier process of this instance"))
	} else {
		log.Info("partition acquired")
	}
	err := w.runPartition(pctx, p, log)
	if cause := context.Cause(pctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	w.mu.Lock()
	delete(w.parts, p)
	w.mu.Unlock()
	cancel(nil)
	<-kept // the lease's revision is no longer being renewed
	if !w.crashed.Load() {
		l.release(context.WithoutCancel(ctx))
	}
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

	out := &publisher{js: b.JS, p: p, partitions: b.Partitions(), log: log, m: w.m, st: st}
	if err := out.init(ctx); err != nil {
		return err
	}
	defer func() {
		// A run that ends on an error may leave transitions in flight, some
		// of them stored: settle them so that each stored one is logged.
		if len(out.inflight) > 0 && !w.crashed.Load() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			out.drain(dctx)
		}
	}()
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
	// A stop (ctx cancelled) while settling PubAcks between inputs leaves the
	// loop for the final flush and snapshot below; a stop in the middle of an
	// input (its transitions not all enqueued) returns without a snapshot, so
	// that the next owner replays that input.
loop:
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				break loop
			}
			return fmt.Errorf("worker: next: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("worker: metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		in, err := events.ScanInput(msg.Data(), events.FieldsHeader) // the header is all the machine reads
		if err != nil {
			// A malformed input can never be applied; the log keeps it for
			// inspection. Skip it rather than block the partition.
			log.Error("skipping malformed input", slog.Uint64("seq", seq), slog.String("subject", msg.Subject()), slog.Any("err", err))
			w.m.ignored.WithLabelValues("malformed").Inc()
			st.seq = max(st.seq, seq)
			continue
		}
		switch in.Type {
		case events.TypeHeartbeat, events.TypePingResult, events.TypeTick:
		default:
			// Registrations and decommissions move device slots: settle the
			// transitions in flight first (they update their device's slot).
			if err := out.flush(ctx); err != nil {
				if ctx.Err() != nil {
					break loop
				}
				return err
			}
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
		if res.HoldChanged {
			log.Info("outage hold "+map[bool]string{true: "on", false: "off"}[st.hold.Active], slog.String("type", string(in.Type)),
				slog.String("reason", in.Hold.Reason), slog.Time("at", in.At), slog.Uint64("seq", seq))
		}
		for i := range trs {
			if err := out.enqueue(ctx, &trs[i]); err != nil {
				return err
			}
		}
		if len(probes) > 0 {
			if err := out.publishProbes(ctx, probes); err != nil {
				return err
			}
		}
		// Settle the transitions in flight when the log has nothing more for
		// now (they are published at once when the partition is quiet, and in
		// pipelined windows during a burst).
		if meta.NumPending == 0 || out.full() {
			if err := out.flush(ctx); err != nil {
				if ctx.Err() != nil {
					break loop
				}
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
			// A snapshot must not run ahead of what is published: a crash
			// would otherwise lose the transitions still in flight.
			if err := out.flush(ctx); err != nil {
				if ctx.Err() != nil {
					break loop
				}
				return err
			}
			if snap.start(ctx, st.takeSnapshot()) {
				lastSnap, sinceSnap = now, 0
			}
		}
		if now.Sub(lastGauge) >= 2*time.Second {
			lastGauge = now
			w.m.setCounts(partLabel, st.counts())
		}
	}
	// Final snapshot so that the next owner replays nothing (after the
	// transitions in flight are settled; if they cannot be, no snapshot).
	snap.wait()
	if w.crashed.Load() {
		return nil
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer fcancel()
	if err := out.flush(fctx); err != nil {
		return err
	}
	if sinceSnap > 0 {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		snap.start(fctx, st.takeSnapshot())
		snap.wait()
	}
	return nil
}

// publisher publishes one partition's transitions in log order.
//
// Fencing: each transition carries Nats-Expected-Last-Subject-Sequence for
// its device's own subject (devstatus.tr.<p>.<token>): the sequence of the
// device's last transition as this worker knows it (partition.trSeq). A
// worker that lost its partition and still runs fails (ErrFenced) as soon as
// it publishes for a device the new owner has published for. The check is on
// one literal subject, which JetStream answers from its per-subject index in
// constant time; a check on the partition's wildcard filter
// (devstatus.tr.<p>.*) makes the server walk every device subject of the
// partition on each transition (docs/performance.md: it took 53 % of the
// service's CPU with 130 000 devices).
//
// Pipelining: transitions are published asynchronously (in log order, on one
// connection, so JetStream stores them in that order) and their PubAcks
// settled by flush: when the partition's log has nothing more for now, when
// maxInFlight are in flight, before a snapshot, before a registration or
// decommission is applied, and before a second transition of a device that
// has one in flight (its expected sequence is the first one's).
type publisher struct {
	js         jetstream.JetStream
	p          int
	partitions int
	log        *slog.Logger
	m          *metrics
	// st is the partition state: trSeq per device slot (nil in tests that
	// drive the publisher alone: the stream is then asked every time).
	st *partition
	// lastCause is the (input seq, index) of the last transition published;
	// transitions at or below it were published by an earlier run.
	lastCause struct {
		seq   uint64
		index int
	}
	inflight []inflightTransition
	busy     map[int32]struct{} // device slots with a transition in flight
}

// maxInFlight bounds the transitions awaiting their PubAck.
const maxInFlight = 512

type inflightTransition struct {
	sc    events.StatusChanged
	slot  int32 // -1: no partition state
	subj  string
	data  []byte
	exp   uint64
	start time.Time
	f     jetstream.PubAckFuture
	// retried: an attempt of this worker may have been stored without its
	// PubAck reaching us (a retry after a failure other than the fence).
	retried bool
	// refused: the fence refused it (another worker published for the
	// device since); it is not stored and never will be by this run.
	refused bool
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
	o.lastCause.seq, o.lastCause.index = sc.Cause.Seq, sc.Index
	return nil
}

func (o *publisher) suppressed(sc *events.StatusChanged) bool {
	return sc.Cause.Seq < o.lastCause.seq || (sc.Cause.Seq == o.lastCause.seq && sc.Index <= o.lastCause.index)
}

func (o *publisher) full() bool { return len(o.inflight) >= maxInFlight }

// slotOf returns the partition slot of the transition's device (-1 without
// partition state).
func (o *publisher) slotOf(sc *events.StatusChanged) int32 {
	if o.st == nil {
		return -1
	}
	if i, ok := o.st.index[sc.Device]; ok {
		return i
	}
	return -1
}

// expected returns the sequence the device's transitions subject must end
// at: from the partition state, or read from the stream when it does not
// know it (then remembered).
func (o *publisher) expected(ctx context.Context, slot int32, subj string) (uint64, error) {
	if slot >= 0 && o.st.trSeq[slot] != trSeqUnknown {
		return o.st.trSeq[slot], nil
	}
	var last uint64
	for backoff := 50 * time.Millisecond; ; backoff = min(backoff*2, 2*time.Second) {
		st, err := o.js.Stream(ctx, events.TransitionStream)
		if err == nil {
			var m *jetstream.RawStreamMsg
			m, err = st.GetLastMsgForSubject(ctx, subj)
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
				last, err = 0, nil
			case err == nil:
				last = m.Sequence
			}
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		o.log.Warn("reading a device's last transition failed; retrying", slog.String("subject", subj), slog.Any("err", err))
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(backoff):
		}
	}
	if slot >= 0 {
		o.st.trSeq[slot] = last
	}
	return last, nil
}

// enqueue publishes one transition asynchronously unless an earlier run
// already published it.
func (o *publisher) enqueue(ctx context.Context, sc *events.StatusChanged) error {
	slot := o.slotOf(sc)
	if o.suppressed(sc) {
		o.m.suppressed.Inc()
		if slot >= 0 {
			// Published by an earlier run, at a sequence this state does not know.
			o.st.trSeq[slot] = trSeqUnknown
		}
		return nil
	}
	if _, dup := o.busy[slot]; dup || slot < 0 {
		if err := o.flush(ctx); err != nil {
			return err
		}
	}
	it := inflightTransition{sc: *sc, slot: slot, subj: events.TransitionSubject(sc.Device, o.partitions), start: time.Now()}
	var err error
	if it.exp, err = o.expected(ctx, slot, it.subj); err != nil {
		return err
	}
	if it.data, err = events.EncodeStatusChanged(sc); err != nil {
		return fmt.Errorf("worker: encode transition: %w", err)
	}
	it.f, err = o.js.PublishAsync(it.subj, it.data, jetstream.WithMsgID(sc.ID), jetstream.WithExpectLastSequencePerSubject(it.exp))
	if err != nil {
		it.f = nil // flush publishes it again
	}
	o.inflight = append(o.inflight, it)
	if o.busy == nil {
		o.busy = map[int32]struct{}{}
	}
	o.busy[slot] = struct{}{}
	return nil
}

// publish publishes one transition and waits for its PubAck.
func (o *publisher) publish(ctx context.Context, sc *events.StatusChanged) error {
	if err := o.enqueue(ctx, sc); err != nil {
		return err
	}
	return o.flush(ctx)
}

func isFenceError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// errNotSent stands for a PublishAsync that failed at once.
var errNotSent = errors.New("worker: transition not sent")

// flush settles the transitions in flight, in order: each acknowledged one
// updates its device's sequence, is counted and logged; one that failed for
// another reason than the fence is published again (synchronously, with the
// same expected sequence) until it succeeds or ctx ends. It returns
// [ErrFenced] when another worker published for one of the devices since.
func (o *publisher) flush(ctx context.Context) error {
	for k := range o.inflight {
		it := &o.inflight[k]
		// keep leaves the unsettled transitions (from this one on) in
		// flight, so that a later flush (the final one, with a fresh
		// context) settles them before any snapshot is taken.
		keep := func(err error) error {
			n := copy(o.inflight, o.inflight[k:])
			o.inflight = o.inflight[:n]
			clear(o.busy)
			for _, r := range o.inflight {
				if r.slot >= 0 {
					o.busy[r.slot] = struct{}{}
				}
			}
			return err
		}
		var ack *jetstream.PubAck
		err := errNotSent
		if it.refused {
			return keep(fmt.Errorf("%w (partition %d, device %q, expected last seq %d)", ErrFenced, o.p, it.sc.Device, it.exp))
		}
		if it.f != nil {
			select {
			case ack = <-it.f.Ok():
				err = nil
			case err = <-it.f.Err():
			case <-ctx.Done():
				return keep(ctx.Err())
			}
			it.f = nil // consumed: a retry publishes again
		}
		backoff := 50 * time.Millisecond
		for err != nil {
			if isFenceError(err) {
				// JetStream checks the expected sequence before the
				// Nats-Msg-Id, so a retry of a publish that was stored but
				// whose ack was lost, or the same transition published by
				// another worker running the same log, fails here too: that
				// is not a fence if the device's last transition is this one.
				if seq, ok := o.alreadyStored(ctx, it); ok {
					ack = &jetstream.PubAck{Stream: events.TransitionStream, Sequence: seq, Duplicate: true}
					break
				}
				// Not stored. It stays first in flight (refused), so that
				// every later flush fails too: no snapshot may cover it.
				it.refused = true
				return keep(fmt.Errorf("%w (partition %d, device %q, expected last seq %d): %v", ErrFenced, o.p, it.sc.Device, it.exp, err))
			}
			if ctx.Err() != nil {
				return keep(ctx.Err())
			}
			o.log.Warn("publishing transition failed; retrying", slog.String("device", it.sc.Device), slog.Any("err", err))
			select {
			case <-ctx.Done():
				return keep(ctx.Err())
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			it.retried = true
			ack, err = o.js.Publish(ctx, it.subj, it.data, jetstream.WithMsgID(it.sc.ID), jetstream.WithExpectLastSequencePerSubject(it.exp))
		}
		o.settled(it, ack)
	}
	o.inflight = o.inflight[:0]
	clear(o.busy)
	return nil
}

// drain settles what is still in flight when a run ends on an error (lost
// lease, cancelled context, fence, bus error) without publishing anything
// again: a transition whose PubAck arrives, or that is found stored after
// its expected sequence on its device's subject, is settled (counted and
// logged once); one refused by the fence, or never sent, is dropped. So
// every transition this worker stored has its log line, and none it did not.
// ctx bounds the wait.
func (o *publisher) drain(ctx context.Context) {
	for k := range o.inflight {
		it := &o.inflight[k]
		if it.refused {
			continue
		}
		if it.f != nil {
			select {
			case ack := <-it.f.Ok():
				o.settled(it, ack)
				continue
			case err := <-it.f.Err():
				if isFenceError(err) && !it.retried {
					continue // refused: not stored by this attempt
				}
			case <-ctx.Done():
			}
		} else if !it.retried {
			continue // never sent
		}
		seq, found, err := o.storedAfter(ctx, it)
		switch {
		case err != nil:
			o.log.Warn("outcome of a transition publish unknown", slog.String("device", it.sc.Device), slog.String("id", it.sc.ID), slog.Any("err", err))
		case found:
			it.retried = true // this worker's attempt is what stored it
			o.settled(it, &jetstream.PubAck{Stream: events.TransitionStream, Sequence: seq})
		}
	}
	o.inflight = o.inflight[:0]
	clear(o.busy)
}

// storedAfter reports whether the first transition stored on the device's
// subject after the expected sequence is it (that is where the fence lets it
// in, and only there), and its sequence.
func (o *publisher) storedAfter(ctx context.Context, it *inflightTransition) (uint64, bool, error) {
	st, err := o.js.Stream(ctx, events.TransitionStream)
	if err != nil {
		return 0, false, err
	}
	m, err := st.GetMsg(ctx, it.exp+1, jetstream.WithGetMsgSubject(it.subj))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	sc, err := events.DecodeStatusChanged(m.Data)
	if err != nil {
		return 0, false, err
	}
	return m.Sequence, sc.ID == it.sc.ID, nil
}

// alreadyStored reports whether the device's last transition in the stream
// is it (same transition id), and its sequence.
func (o *publisher) alreadyStored(ctx context.Context, it *inflightTransition) (uint64, bool) {
	st, err := o.js.Stream(ctx, events.TransitionStream)
	if err != nil {
		return 0, false
	}
	m, err := st.GetLastMsgForSubject(ctx, it.subj)
	if err != nil {
		return 0, false
	}
	sc, err := events.DecodeStatusChanged(m.Data)
	if err != nil || sc.ID != it.sc.ID {
		return 0, false
	}
	return m.Sequence, true
}

// settled records a stored transition. It is counted and logged (the one
// "transition" line) when this worker's publish stored it: not when the
// first attempt was answered as a duplicate or met the transition already
// stored (another worker running the same log stored it, and logs it).
func (o *publisher) settled(it *inflightTransition, ack *jetstream.PubAck) {
	sc := &it.sc
	if it.slot >= 0 && o.st.ids[it.slot] == sc.Device {
		o.st.trSeq[it.slot] = ack.Sequence
	}
	o.lastCause.seq, o.lastCause.index = sc.Cause.Seq, sc.Index
	if ack.Duplicate && !it.retried {
		return
	}
	o.m.publishSeconds.Observe(time.Since(it.start).Seconds())
	o.m.transitions.WithLabelValues(string(sc.From), string(sc.To), string(sc.ReasonCode)).Inc()
	o.log.Info("transition", slog.String("device", sc.Device), slog.String("from", string(sc.From)),
		slog.String("to", string(sc.To)), slog.String("reason_code", string(sc.ReasonCode)),
		slog.String("reason", sc.Reason), slog.Time("at", sc.At), slog.Uint64("cause_seq", sc.Cause.Seq))
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
