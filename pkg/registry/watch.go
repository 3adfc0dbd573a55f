package registry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrAlreadyRunning is returned by [Registry.Run] when another Run of the
// same registry is active.
var ErrAlreadyRunning = errors.New("registry: Run is already running")

// Run watches the devices bucket (kv.WatchAll with UpdatesOnly) and brings
// the cached entry of each key that changes up to date (its new value, or
// dropped when deleted), until ctx is done; it returns nil
// then. While it runs the cache is used; without it every Lookup reads KV.
//
// When the NATS connection is lost, caching stops and the cache is emptied
// (the watch may miss updates while disconnected); after the reconnect the
// watch is re-created and caching resumes. The same happens when the watch
// stalls while connected (nats.go #1729: a consumer that stops delivering
// after a broker restart): every Config.WatchCheckInterval the bucket's last
// revision is compared with the last one the watch applied, and a watch that
// stays behind without moving across two checks is dropped with the cache
// and re-created (CacheStats.WatchStalls counts it; Watching is false
// meanwhile, so the bridge reports not ready). Run retries failures itself; it
// returns [ErrAlreadyRunning] if called twice concurrently.
func (r *Registry) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer r.running.Store(false)
	defer r.cache.disable()

	var status chan nats.Status
	if r.nc != nil {
		status = r.nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
		defer r.nc.RemoveStatusListener(status)
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.watchOnce(ctx, status)
		r.watchOK.Store(false)
		r.cache.disable()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.Warn("registry: device watch stopped; retrying", slog.Any("err", err), slog.Duration("in", backoff))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
		if err == nil {
			backoff = 100 * time.Millisecond
		}
	}
	return nil
}

var errConnLost = errors.New("nats connection lost")

// watchOnce runs one watch until it fails, the connection drops or ctx ends.
func (r *Registry) watchOnce(ctx context.Context, status chan nats.Status) error {
	if r.nc != nil && !r.nc.IsConnected() {
		// Wait for the reconnect before creating a new watch.
		for !r.nc.IsConnected() {
			select {
			case <-ctx.Done():
				return nil
			case s := <-status:
				if s == nats.CLOSED {
					return nats.ErrConnectionClosed
				}
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := r.kv.WatchAll(wctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	// Every change after the watch was created is delivered to it: what the
	// bucket holds now is the baseline the stall check measures from.
	head, err := r.bucketHead(wctx)
	if err != nil {
		return err
	}
	r.cache.watched.Store(max(r.cache.watched.Load(), head))
	r.cache.enable()
	r.watchOK.Store(true)
	check := time.NewTicker(r.cfg.WatchCheckInterval)
	defer check.Stop()
	var stall stallCheck
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-status:
			if s != nats.CONNECTED {
				return errConnLost
			}
		case <-check.C:
			head, err := r.bucketHead(wctx)
			if err != nil {
				continue // a lost connection is reported on status
			}
			if seen := r.cache.watched.Load(); stall.observe(seen, head) {
				r.cache.stalls.Add(1)
				r.log.Warn("registry: device watch stalled (connected, behind the bucket and not moving); re-creating it",
					slog.Uint64("seen", seen), slog.Uint64("bucket_last", head))
				return errWatchStalled
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch closed")
			}
			if e == nil { // end of initial values (none with UpdatesOnly)
				continue
			}
			r.applyWatched(e)
			r.cache.watched.Store(max(r.cache.watched.Load(), e.Revision())) // single writer: this loop
		}
	}
}

var errWatchStalled = errors.New("device watch stalled")

// applyWatched brings the cache up to a change of the devices bucket: a put
// whose value decodes replaces the cached entry (the device stays cached:
// a comeback's compare-and-swap or a patch costs its next heartbeat no KV
// read); a delete, a purge, an undecodable value and any gateway or token
// index key drop it.
func (r *Registry) applyWatched(e jetstream.KeyValueEntry) {
	key := e.Key()
	if e.Operation() == jetstream.KeyValuePut && !strings.HasPrefix(key, gatewayKeyPrefix) && !strings.HasPrefix(key, tokenIndexPrefix) {
		var d Device
		if json.Unmarshal(e.Value(), &d) == nil {
			d.Revision = e.Revision()
			if ent, err := entryOf(&d); err == nil {
				r.cache.update(key, e.Revision(), ent)
				return
			}
		}
	}
	r.cache.invalidate(key, e.Revision())
}

// bucketHead returns the devices bucket's last revision (its stream's last
// sequence).
func (r *Registry) bucketHead(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	st, err := r.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, errors.New("registry: bucket status without stream info")
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// stallCheck detects a follower (a watch, a consumer) that is connected but
// stalled: behind the head it follows at two consecutive checks without
// having moved in between. A follower that is merely busy moves; one that is
// caught up is not behind. Detection takes one to two check intervals.
type stallCheck struct {
	prevSeen uint64
	behind   bool
}

func (s *stallCheck) observe(seen, head uint64) bool {
	behind := head > seen
	stalled := behind && s.behind && seen == s.prevSeen
	s.prevSeen, s.behind = seen, behind
	return stalled
}

// Watching reports whether the KV watch is established (caching is on).
func (r *Registry) Watching() bool { return r.watchOK.Load() }
