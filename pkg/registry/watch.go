package registry

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/pkg/bus"
)

// ErrAlreadyRunning is returned by [Registry.Run] when another Run of the
// same registry is active.
var ErrAlreadyRunning = errors.New("registry: Run is already running")

// Run follows the devices bucket (its stream, new changes only, with a
// [bus.Follower]) and brings the cached entry of each key that changes up
// to date (its new value, or dropped when deleted), until ctx is done; it
// returns nil then. While it runs the cache is used; without it every
// Lookup reads KV.
//
// When the NATS connection is lost, caching stops and the cache is emptied
// (changes may be missed while disconnected); after the reconnect a new
// consumer is created and caching resumes. The same happens when the
// consumer stalls while connected (nats.go #1729: a consumer that stops
// delivering after a broker restart): one that has changes pending but
// delivers none for two Config.WatchCheckIntervals is dropped with the
// cache and re-created (CacheStats.WatchStalls counts it; Watching is false
// meanwhile, so the bridge reports not ready). Run retries failures itself;
// it returns [ErrAlreadyRunning] if called twice concurrently.
func (r *Registry) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer r.running.Store(false)
	defer r.cache.disable()
	defer r.watchOK.Store(false)
	return r.watch.Run(ctx)
}

// newWatch makes the follower of the devices bucket's stream that Run runs.
func (r *Registry) newWatch() (*bus.Follower, error) {
	bucket := r.cfg.Bus.Devices.Bucket()
	prefix := "$KV." + bucket + "."
	return bus.NewFollower(bus.FollowConfig{
		Name:           "registry-watch",
		JetStream:      r.js,
		Conn:           r.nc,
		Stream:         "KV_" + bucket,
		FilterSubjects: []string{prefix + ">"},
		// Each consumer starts with the changes after its creation: the
		// cache is empty then (disabled when the last one ended).
		Resume:        func(context.Context) (uint64, error) { return 0, nil },
		DeliverPolicy: jetstream.DeliverNewPolicy,
		StallTimeout:  2 * r.cfg.WatchCheckInterval,
		OpTimeout:     r.cfg.OpTimeout,
		Logger:        r.log,
		OnSession: func(up bool, _ error) {
			if up {
				r.cache.enable()
			} else {
				r.cache.disable()
			}
			r.watchOK.Store(up)
		},
		Handle: func(_ context.Context, m *bus.Msg) error {
			op := jetstream.KeyValuePut
			switch m.Header.Get("KV-Operation") {
			case "DEL":
				op = jetstream.KeyValueDelete
			case "PURGE":
				op = jetstream.KeyValuePurge
			}
			r.applyWatched(strings.TrimPrefix(m.Subject, prefix), op, m.Data, m.Seq)
			r.cache.watched.Store(max(r.cache.watched.Load(), m.Seq)) // single writer: the follower
			return nil
		},
	})
}

// applyWatched brings the cache up to a change of the devices bucket: a put
// whose value decodes replaces the cached entry (the device stays cached:
// a comeback's compare-and-swap or a patch costs its next heartbeat no KV
// read); a delete, a purge, an undecodable value and any gateway or token
// index key drop it.
func (r *Registry) applyWatched(key string, op jetstream.KeyValueOp, value []byte, rev uint64) {
	if op == jetstream.KeyValuePut && !strings.HasPrefix(key, gatewayKeyPrefix) && !strings.HasPrefix(key, tokenIndexPrefix) {
		var d Device
		if json.Unmarshal(value, &d) == nil {
			d.Revision = rev
			if ent, err := entryOf(&d); err == nil {
				r.cache.update(key, rev, ent)
				return
			}
		}
	}
	r.cache.invalidate(key, rev)
}

// Watching reports whether the KV watch is established (caching is on).
func (r *Registry) Watching() bool { return r.watchOK.Load() }
