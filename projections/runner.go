package projections

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/internal/backoff"
	"github.com/devstatus/devstatus/pkg/bus"
)

// rawMsg is a stream message as a projection sees it.
type rawMsg struct {
	Seq     uint64
	Subject string
	Data    []byte
	// Time is the time the server stored the message.
	Time time.Time
	// Pending is the number of messages matching the consumer's filter after
	// this one when it was delivered.
	Pending uint64
}

// kind describes one projection: its stream, how to decode a message and how
// to write a batch of decoded messages (without the checkpoint).
type kind[T any] struct {
	name   string
	stream string
	// filter is the consumer's subject filter ("" = whole stream).
	filter string
	// decode turns a message into an item; an error sends the message to
	// dead_letters without retry (decoding is deterministic).
	decode func(m *rawMsg) (T, error)
	// write applies items (in stream order, contiguous with the checkpoint)
	// inside tx. It must be idempotent: every row guarded by sequence.
	write func(ctx context.Context, tx *sqlx.Tx, items []T) (writeResult, error)
}

// writeResult reports side counts of a write.
type writeResult struct {
	// unknown counts events ignored because their device has no row.
	unknown int
}

// slot is one message of a batch.
type slot[T any] struct {
	msg *rawMsg
	v   T
	// err is the decode error, or the write error that set the message
	// aside: a slot with err goes to dead_letters.
	err   error
	tries int
}

// runner runs one projection.
type runner[T any] struct {
	p   *Projector
	k   kind[T]
	st  *projState
	log *slog.Logger
}

func newRunner[T any](p *Projector, k kind[T]) *runner[T] {
	return &runner[T]{p: p, k: k, st: &projState{name: k.name, stream: k.stream},
		log: p.log.With(slog.String("projection", k.name), slog.String("stream", k.stream))}
}

// run consumes until ctx is done (until=false, returns ctx.Err()) or, with
// until=true, until the checkpoint reaches the stream's last matching
// message as of the start (returns nil). The stream is read by a
// [bus.Follower] in batches: each consumer starts at the stored
// checkpoint+1, and a consumer that fails or stalls is replaced after a
// backoff (RetryMin..RetryMax) from the checkpoint again.
func (r *runner[T]) run(ctx context.Context, until bool) error {
	var probeWG sync.WaitGroup
	if !until {
		pctx, cancel := context.WithCancel(ctx)
		defer func() { cancel(); probeWG.Wait() }()
		probeWG.Go(func() { r.probeLoop(pctx) })
	}
	var target uint64 // with until: the last matching sequence as of the start
	failures := 0
	bs := r.p.cfg.BatchSize
	f, err := bus.NewFollower(bus.FollowConfig{
		Name:           "projection-" + r.k.name,
		JetStream:      r.p.cfg.JetStream,
		Stream:         r.k.stream,
		FilterSubjects: filterSubjects(r.k.filter),
		BatchSize:      bs,
		FlushInterval:  r.p.cfg.FlushInterval,
		// Unique per consumer: a name reused with another start sequence
		// (a restart within the inactive threshold) is refused by the server.
		NamePrefix: "devstatus_" + r.k.name,
		BackoffMin: r.p.cfg.RetryMin,
		BackoffMax: max(r.p.cfg.RetryMax, r.p.cfg.RetryMin),
		Logger:     r.log,
		Resume: func(ctx context.Context) (uint64, error) {
			cp, t, err := r.resume(ctx, until)
			target = t
			return cp, err
		},
		// Decoding runs on the reading goroutine while the previous batch
		// is written: on a 2-core machine JSON decoding and Postgres overlap.
		Prepare: func(m *bus.Msg) {
			m.Value = r.decode(&rawMsg{Seq: m.Seq, Subject: m.Subject, Data: m.Data, Time: m.Time, Pending: m.Pending})
		},
		HandleBatch: func(ctx context.Context, batch []*bus.Msg) error {
			slots := make([]slot[T], len(batch))
			for i, m := range batch {
				slots[i] = m.Value.(slot[T])
			}
			if err := r.applySlots(ctx, slots, r.p.cfg.MaxAttempts, time.Time{}); err != nil {
				return err
			}
			failures = 0
			if until && slots[len(slots)-1].msg.Seq >= target {
				return bus.ErrStopFollowing
			}
			return nil
		},
		OnRestart: func(err error) {
			failures++
			r.st.setBusErr(err)
			r.p.m.retries.WithLabelValues(r.k.name, "stream").Inc()
			if logAttempt(failures) {
				r.log.Warn("consumer failed; restarting from the checkpoint", slog.Any("err", err), slog.Int("attempt", failures))
			}
		},
	})
	if err != nil {
		return err
	}
	if err := f.Run(ctx); err != nil {
		return err
	}
	return ctx.Err()
}

func filterSubjects(filter string) []string {
	if filter == "" {
		return nil
	}
	return []string{filter}
}

// resume reads the checkpoint and checks the stream against it before a
// consumer is created; with until it also returns the stream's last
// matching sequence, and [bus.ErrStopFollowing] when the checkpoint has
// reached it already.
func (r *runner[T]) resume(ctx context.Context, until bool) (cp, target uint64, err error) {
	cp, err = r.loadCheckpoint(ctx)
	if err != nil {
		return 0, 0, err
	}
	stream, err := r.p.cfg.JetStream.Stream(ctx, r.k.stream)
	if err != nil {
		return 0, 0, fmt.Errorf("look up stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("stream info: %w", err)
	}
	if info.State.LastSeq < cp {
		r.st.setStreamBehind(true)
		r.log.Error("stream is behind the projection checkpoint: the stream was recreated; run `devstatus rebuild`",
			slog.Uint64("checkpoint", cp), slog.Uint64("stream_last_seq", info.State.LastSeq))
	} else {
		r.st.setStreamBehind(false)
	}
	if info.State.Msgs > 0 && info.State.FirstSeq > cp+1 {
		r.log.Warn("events after the checkpoint are no longer in the stream (retention); the projection skips them",
			slog.Uint64("checkpoint", cp), slog.Uint64("stream_first_seq", info.State.FirstSeq))
	}
	if until {
		target, err = r.lastSeq(ctx, stream)
		if err != nil {
			return 0, 0, err
		}
		if cp >= target {
			r.st.start(r.p.cfg.Clock.Now(), cp)
			return cp, target, bus.ErrStopFollowing
		}
	}
	r.st.start(r.p.cfg.Clock.Now(), cp)
	r.log.Info("projecting", slog.Uint64("from_seq", cp+1))
	return cp, target, nil
}

// decode makes the slot of one message.
func (r *runner[T]) decode(m *rawMsg) slot[T] {
	s := slot[T]{msg: m}
	s.v, s.err = r.k.decode(m)
	if s.err != nil {
		s.tries = 1
	}
	return s
}

// lastSeqScan bounds the stream's newest messages lastSeq reads one by one
// looking for one that matches a filter.
const lastSeqScan = 64

// lastSeq is the sequence of the stream's last message for the filter (0
// when there is none).
//
// Asking the server for the last message of a wildcard filter
// (GetLastMsgForSubject with "devstatus.in.*.d.*") makes it match the filter
// against every subject of the stream: one per device, about 0.5 s of CPU
// with 1 000 000 devices, every LagInterval. Instead the stream's last
// sequence is read (stream info, constant time) and its newest messages are
// fetched by sequence (constant time each) until one matches: a device event
// is almost always among the last few (ticks, the only messages the
// liveness filter leaves out, are 16 a second). Only when none of the last
// lastSeqScan matches does it ask the server.
func (r *runner[T]) lastSeq(ctx context.Context, stream jetstream.Stream) (uint64, error) {
	subj := r.k.filter
	if subj == "" || subj == ">" {
		info, err := stream.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("stream info: %w", err)
		}
		if info.State.Msgs == 0 {
			return 0, nil
		}
		return info.State.LastSeq, nil
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
	st := info.State
	for seq, n := st.LastSeq, 0; st.Msgs > 0 && seq >= max(st.FirstSeq, 1) && n < lastSeqScan; seq, n = seq-1, n+1 {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted (a purge, retention)
		}
		if err != nil {
			return 0, fmt.Errorf("message %d: %w", seq, err)
		}
		if subjectMatches(subj, m.Subject) {
			return seq, nil
		}
	}
	m, err := stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last message of %s: %w", subj, err)
	}
	return m.Sequence, nil
}

// subjectMatches reports whether the literal subject subj matches filter,
// with NATS wildcards: "*" one token, ">" one or more final tokens.
func subjectMatches(filter, subj string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		st, srest, smore := strings.Cut(subj, ".")
		switch {
		case ft == ">":
			return st != ""
		case ft != "*" && ft != st:
			return false
		case !fmore || !smore:
			return fmore == smore
		}
		filter, subj = frest, srest
	}
}

// probeLoop measures the lag every LagInterval.
func (r *runner[T]) probeLoop(ctx context.Context) {
	t := time.NewTicker(r.p.cfg.LagInterval)
	defer t.Stop()
	var stream jetstream.Stream
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.probe(ctx, &stream); err != nil && ctx.Err() == nil {
			stream = nil
			r.st.setBusErr(err)
			r.log.Debug("lag probe failed", slog.Any("err", err))
		}
		pctx, cancel := context.WithTimeout(ctx, max(r.p.cfg.LagInterval, time.Second))
		err := r.p.cfg.DB.PingContext(pctx)
		cancel()
		if ctx.Err() == nil {
			r.st.setPingErr(err)
		}
	}
}

func (r *runner[T]) probe(ctx context.Context, stream *jetstream.Stream) error {
	ctx, cancel := context.WithTimeout(ctx, max(r.p.cfg.LagInterval, time.Second))
	defer cancel()
	if *stream == nil {
		s, err := r.p.cfg.JetStream.Stream(ctx, r.k.stream)
		if err != nil {
			return err
		}
		*stream = s
	}
	last, err := r.lastSeq(ctx, *stream)
	if err != nil {
		return err
	}
	cp := r.st.getCheckpoint()
	now := r.p.cfg.Clock.Now()
	var events uint64
	var seconds float64
	if last > cp {
		events = last - cp
		opts := []jetstream.GetMsgOpt{}
		if r.k.filter != "" {
			opts = append(opts, jetstream.WithGetMsgSubject(r.k.filter))
		}
		next, err := (*stream).GetMsg(ctx, cp+1, opts...)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("oldest pending message: %w", err)
		}
		if next != nil {
			seconds = max(0, now.Sub(next.Time).Seconds())
		}
	}
	r.st.measured(now, events, seconds)
	r.p.m.lagEvents.WithLabelValues(r.k.name).Set(float64(events))
	r.p.m.lagSeconds.WithLabelValues(r.k.name).Set(seconds)
	return nil
}

// loadCheckpoint reads the stored checkpoint (0 when none), retrying while
// Postgres is unreachable.
func (r *runner[T]) loadCheckpoint(ctx context.Context) (uint64, error) {
	for n := 0; ; n++ {
		var seq int64
		err := r.p.cfg.DB.GetContext(ctx, &seq,
			`SELECT COALESCE((SELECT last_seq FROM projection_checkpoints WHERE name = $1), 0)`, r.k.name)
		if err == nil {
			r.st.setDBErr(nil)
			return uint64(seq), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		r.st.setDBErr(err)
		r.p.m.retries.WithLabelValues(r.k.name, "database").Inc()
		if logAttempt(n + 1) {
			r.log.Warn("reading the checkpoint failed; retrying", slog.Any("err", err), slog.Int("attempt", n+1))
		}
		if backoff.Sleep(ctx, r.backoff(n)) != nil {
			return 0, ctx.Err()
		}
	}
}

// apply decodes and applies one batch; it returns only ctx's error.
func (r *runner[T]) apply(ctx context.Context, batch []rawMsg) error {
	slots := make([]slot[T], len(batch))
	for i := range batch {
		slots[i] = r.decode(&batch[i])
	}
	return r.applySlots(ctx, slots, r.p.cfg.MaxAttempts, time.Time{})
}

// applySlots commits slots (one transaction with their checkpoint),
// retrying transient failures without limit and data failures maxAttempts
// times before bisecting; a single message that still fails becomes a dead
// letter. It returns only ctx's error.
func (r *runner[T]) applySlots(ctx context.Context, slots []slot[T], maxAttempts int, firstFail time.Time) error {
	attempts, transient := 0, 0
	for {
		start := time.Now()
		res, err := r.commit(ctx, slots, firstFail)
		if err == nil {
			r.committed(slots, res, time.Since(start))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isTransient(err) || (len(slots) == 1 && slots[0].err != nil) {
			// Postgres unreachable, restarting, overloaded, deadlock; or the
			// dead-letter write itself failed: wait and retry, skip nothing.
			r.st.setDBErr(err)
			r.p.m.retries.WithLabelValues(r.k.name, "database").Inc()
			transient++
			if logAttempt(transient) {
				r.log.Warn("applying a batch failed; retrying", slog.Any("err", err), slog.Int("attempt", transient),
					slog.Uint64("first_seq", slots[0].msg.Seq), slog.Int("messages", len(slots)))
			}
			if backoff.Sleep(ctx, r.backoff(transient-1)) != nil {
				return ctx.Err()
			}
			continue
		}
		// A data error: Postgres refused something in this batch.
		attempts++
		for i := range slots {
			slots[i].tries++
		}
		if firstFail.IsZero() {
			firstFail = r.p.cfg.Clock.Now()
		}
		r.p.m.retries.WithLabelValues(r.k.name, "poison").Inc()
		if attempts < maxAttempts {
			r.log.Warn("batch refused by Postgres; retrying", slog.Any("err", err), slog.Int("attempt", attempts),
				slog.Uint64("first_seq", slots[0].msg.Seq), slog.Int("messages", len(slots)))
			if backoff.Sleep(ctx, r.p.cfg.PoisonRetryDelay) != nil {
				return ctx.Err()
			}
			continue
		}
		if len(slots) == 1 {
			slots[0].err = err
			continue // now commits it to dead_letters
		}
		// Bisect: each half is applied (in order) with one attempt.
		mid := len(slots) / 2
		if err := r.applySlots(ctx, slots[:mid], 1, firstFail); err != nil {
			return err
		}
		return r.applySlots(ctx, slots[mid:], 1, firstFail)
	}
}

// commit writes slots and their checkpoint in one transaction.
func (r *runner[T]) commit(ctx context.Context, slots []slot[T], firstFail time.Time) (res writeResult, err error) {
	tx, err := r.p.cfg.DB.BeginTxx(ctx, nil)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if !r.p.cfg.SynchronousCommit {
		if _, err = tx.ExecContext(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return res, err
		}
	}
	items := make([]T, 0, len(slots))
	for i := range slots {
		if slots[i].err == nil {
			items = append(items, slots[i].v)
		}
	}
	if len(items) > 0 {
		if res, err = r.k.write(ctx, tx, items); err != nil {
			return res, err
		}
	}
	now := r.p.cfg.Clock.Now()
	for i := range slots {
		s := &slots[i]
		if s.err == nil {
			continue
		}
		ff := firstFail
		if ff.IsZero() {
			ff = now
		}
		if _, err = tx.ExecContext(ctx, `
INSERT INTO dead_letters (stream, seq, projection, subject, data, error, attempts, first_failed_at, last_failed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (stream, seq) DO UPDATE SET
    error = EXCLUDED.error,
    attempts = dead_letters.attempts + EXCLUDED.attempts,
    last_failed_at = EXCLUDED.last_failed_at`,
			r.k.stream, int64(s.msg.Seq), r.k.name, cleanText(s.msg.Subject), s.msg.Data, cleanText(s.err.Error()),
			max(s.tries, 1), ff.UTC(), now.UTC()); err != nil {
			return res, fmt.Errorf("write dead letter: %w", err)
		}
	}
	if err = saveCheckpoint(ctx, tx, r.k.name, r.k.stream, slots[len(slots)-1].msg.Seq, now); err != nil {
		return res, err
	}
	if err = tx.Commit(); err != nil {
		return res, err
	}
	return res, nil
}

func saveCheckpoint(ctx context.Context, tx *sqlx.Tx, name, stream string, seq uint64, now time.Time) error {
	_, err := tx.ExecContext(ctx, `
INSERT INTO projection_checkpoints (name, stream, last_seq, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET
    stream = EXCLUDED.stream,
    last_seq = GREATEST(projection_checkpoints.last_seq, EXCLUDED.last_seq),
    updated_at = EXCLUDED.updated_at`, name, stream, int64(seq), now.UTC())
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	return nil
}

// committed updates state, metrics and logs after a commit.
func (r *runner[T]) committed(slots []slot[T], res writeResult, took time.Duration) {
	last := slots[len(slots)-1].msg
	r.st.committed(r.p.cfg.Clock.Now(), last)
	m := r.p.m
	m.batches.WithLabelValues(r.k.name).Inc()
	m.events.WithLabelValues(r.k.name).Add(float64(len(slots)))
	m.batchSeconds.WithLabelValues(r.k.name).Observe(took.Seconds())
	m.checkpoint.WithLabelValues(r.k.name).Set(float64(last.Seq))
	if res.unknown > 0 {
		m.unknown.WithLabelValues(r.k.name).Add(float64(res.unknown))
	}
	for i := range slots {
		if s := &slots[i]; s.err != nil {
			m.deadLetters.WithLabelValues(r.k.name).Inc()
			r.log.Error("event set aside in dead_letters", slog.Uint64("seq", s.msg.Seq),
				slog.String("subject", s.msg.Subject), slog.Int("attempts", s.tries), slog.Any("err", s.err))
		}
	}
}

// backoff is the n-th (from 0) retry delay: RetryMin·2ⁿ capped at RetryMax,
// with ±10% jitter.
func (r *runner[T]) backoff(n int) time.Duration {
	return backoff.Policy{Min: r.p.cfg.RetryMin, Max: r.p.cfg.RetryMax, Jitter: 0.2}.Delay(n)
}

// isTransient reports whether err may go away by itself (connection lost,
// server restarting or overloaded, serialization failure, deadlock): such
// failures are retried forever. A Postgres error of another class (data
// exception, constraint violation …) is deterministic: retrying the same
// rows fails the same way.
func isTransient(err error) bool {
	var pe *pq.Error
	if errors.As(err, &pe) {
		switch pe.Code.Class() {
		case "08", // connection exception
			"40", // transaction rollback: serialization failure, deadlock
			"53", // insufficient resources
			"55", // object not in prerequisite state (lock not available)
			"57", // operator intervention: admin shutdown, cannot connect now, query canceled
			"58", // system error (I/O)
			"XX": // internal error
			return true
		}
		return false
	}
	if errors.Is(err, driver.ErrBadConn) {
		return true
	}
	// Network errors, io.EOF, a closed pool, timeouts: not Postgres judging
	// the data.
	return true
}

// cleanText makes s storable in a text column: valid UTF-8 without NUL.
func cleanText(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", `\x00`), "\uFFFD")
}

// logAttempt thins out retry logs: attempts 1, 2, 4, 8, … are logged.
func logAttempt(n int) bool { return n > 0 && n&(n-1) == 0 }
