package registry

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrAlreadyRunning is returned by [Registry.Run] when another Run of the
// same registry is active.
var ErrAlreadyRunning = errors.New("registry: Run is already running")

// Run watches the devices bucket (kv.WatchAll with UpdatesOnly) and drops the
// cached entry of each key that changes, until ctx is done; it returns nil
// then. While it runs the cache is used; without it every Lookup reads KV.
//
// When the NATS connection is lost, caching stops and the cache is emptied
// (the watch may miss updates while disconnected); after the reconnect the
// watch is re-created and caching resumes. Run retries failures itself; it
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
	r.cache.enable()
	r.watchOK.Store(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-status:
			if s != nats.CONNECTED {
				return errConnLost
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch closed")
			}
			if e == nil { // end of initial values (none with UpdatesOnly)
				continue
			}
			r.cache.invalidate(e.Key(), e.Revision())
			r.cache.watched.Store(max(r.cache.watched.Load(), e.Revision())) // single writer: this loop
		}
	}
}

// Watching reports whether the KV watch is established (caching is on).
func (r *Registry) Watching() bool { return r.watchOK.Load() }
