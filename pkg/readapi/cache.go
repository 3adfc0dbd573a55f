package readapi

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/projections"
)

var _ Reader = (*Cache)(nil)

// CacheConfig configures a [Cache].
type CacheConfig struct {
	// Store is read on a miss. Required.
	Store Reader
	// JetStream feeds [Cache.Run] with the transitions stream. Required for
	// Run; without Run entries expire after TTL only.
	JetStream jetstream.JetStream
	// TTL bounds how long an entry is served: the staleness of the liveness
	// fields (last_heartbeat_at, last_ping_*, metrics), which change without
	// a transition. Default 2s.
	TTL time.Duration
	// MaxEntries bounds the cache (least recently used entries go first).
	// Default 100000 (about 50 MB at most).
	MaxEntries int
	// MaxTombstones bounds the remembered transitions of devices that are
	// not cached (see [Cache.Invalidate]); the oldest go first. Default 65536.
	MaxTombstones int
	// FeedStallTimeout: a transitions consumer that has transitions pending
	// but delivers none for this long is replaced (nats.go #1729). Default
	// 10s.
	FeedStallTimeout time.Duration
	// Logger receives invalidation-feed errors. Default slog.Default().
	Logger *slog.Logger
}

// Cache is a per-device read cache in front of a [Reader]: reads go through
// a per-device cache invalidated by that device's transitions only, never a
// global flush. Only Device reads are cached; List,
// Transitions and Summary go to the store.
//
// Invalidation is by sequence: each transition of device D with stream
// sequence S raises D's minimum to S, and an entry (or a fresh read whose
// status_seq is still below S because the projection lags the stream) is
// never served or stored below it. So a status change is visible as soon as
// the projection has it, while an unchanged device is read from memory for
// up to TTL.
//
// A transition only ever touches its own device: the cached entry of that
// device is dropped; a device that is not cached gets a tombstone (its
// sequence) in a separate bounded FIFO, so that a read racing the
// projection is not cached below it. Tombstones never take the place of
// cached entries: a transition of device B never evicts device A.
//
// Safe for concurrent use. It implements Reader.
type Cache struct {
	cfg CacheConfig
	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*list.Element // of *cacheEntry
	lru     *list.List               // front: most recent
	tombs   map[string]int64         // device → highest transition sequence seen, for devices not cached
	tombQ   []tomb                   // FIFO of tombstones (ring, oldest at tombHead)
	tombHd  int
	stats   CacheStats
	// fed is the last transitions-stream sequence Run has applied.
	fed atomic.Uint64
	// follower feeds Run (nil without CacheConfig.JetStream).
	follower *bus.Follower
}

type tomb struct {
	id  string
	seq int64
}

// CacheStats are the cache's counters since it was made.
type CacheStats struct {
	// Hits and Misses count Device reads answered from memory and from the store.
	Hits, Misses uint64
	// Invalidations counts cached entries dropped by their device's transition.
	Invalidations uint64
	// Evictions counts entries dropped to stay within MaxEntries.
	Evictions uint64
	// Entries is the number of cached devices now.
	Entries int
}

type cacheEntry struct {
	id      string
	dev     *projections.Device
	expires time.Time
	// minSeq is the highest transition sequence seen for the device.
	minSeq int64
}

// NewCache checks cfg and returns an empty Cache. Errors wrap [ErrInvalidConfig].
func NewCache(cfg CacheConfig) (*Cache, error) {
	if cfg.TTL == 0 {
		cfg.TTL = 2 * time.Second
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = 100000
	}
	if cfg.MaxTombstones == 0 {
		cfg.MaxTombstones = 65536
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.Store == nil:
		return nil, fmt.Errorf("%w: cache: Store is required", ErrInvalidConfig)
	case cfg.TTL < 0 || cfg.MaxEntries < 1 || cfg.MaxTombstones < 1:
		return nil, fmt.Errorf("%w: cache: TTL must be >= 0, MaxEntries and MaxTombstones >= 1", ErrInvalidConfig)
	}
	c := &Cache{cfg: cfg, log: cfg.Logger.With(slog.String("component", "readapi-cache")),
		entries: map[string]*list.Element{}, lru: list.New(), tombs: map[string]int64{}}
	if cfg.JetStream != nil {
		f, err := bus.NewFollower(bus.FollowConfig{
			Name: "readapi-cache", JetStream: cfg.JetStream, Stream: events.TransitionStream,
			DeliverPolicy: jetstream.DeliverNewPolicy, HeadersOnly: true,
			StallTimeout: cfg.FeedStallTimeout, Logger: c.log, Handle: c.handleTransition,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: cache: %w", ErrInvalidConfig, err)
		}
		c.follower = f
	}
	return c, nil
}

// Device returns the cached device when it is fresh and not older than the
// device's last transition seen, otherwise reads the store (errors are not
// cached).
func (c *Cache) Device(ctx context.Context, id string) (*projections.Device, error) {
	now := time.Now()
	c.mu.Lock()
	if el, ok := c.entries[id]; ok {
		e := el.Value.(*cacheEntry)
		if now.Before(e.expires) && e.dev.StatusSeq >= e.minSeq {
			c.lru.MoveToFront(el)
			c.stats.Hits++
			d := *e.dev
			c.mu.Unlock()
			return &d, nil
		}
	}
	c.stats.Misses++
	c.mu.Unlock()

	d, err := c.cfg.Store.Device(ctx, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	minSeq := c.tombs[id]
	if el, ok := c.entries[id]; ok {
		minSeq = max(minSeq, el.Value.(*cacheEntry).minSeq)
	}
	if d.StatusSeq < minSeq {
		// The projection lags a transition already seen: do not keep it.
		return d, nil
	}
	cp := *d
	if el, ok := c.entries[id]; ok {
		e := el.Value.(*cacheEntry)
		e.dev, e.expires = &cp, now.Add(c.cfg.TTL)
		c.lru.MoveToFront(el)
		return d, nil
	}
	delete(c.tombs, id) // the entry carries the sequence from now on
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, dev: &cp, expires: now.Add(c.cfg.TTL), minSeq: minSeq})
	for c.lru.Len() > c.cfg.MaxEntries {
		old := c.lru.Back()
		c.lru.Remove(old)
		e := old.Value.(*cacheEntry)
		delete(c.entries, e.id)
		c.addTomb(e.id, e.minSeq)
		c.stats.Evictions++
	}
	return d, nil
}

// addTomb remembers seq for a device that is not cached. c.mu must be held.
func (c *Cache) addTomb(id string, seq int64) {
	if seq == 0 {
		return
	}
	if old, ok := c.tombs[id]; ok && old >= seq {
		return
	}
	c.tombs[id] = seq
	t := tomb{id: id, seq: seq}
	if len(c.tombQ) < c.cfg.MaxTombstones {
		c.tombQ = append(c.tombQ, t)
		return
	}
	// Full: overwrite the oldest, forgetting it unless a newer one replaced it.
	old := c.tombQ[c.tombHd]
	if c.tombs[old.id] == old.seq && old.id != id {
		delete(c.tombs, old.id)
	}
	c.tombQ[c.tombHd] = t
	c.tombHd = (c.tombHd + 1) % len(c.tombQ)
}

// Invalidate records that device id changed status at transitions-stream
// sequence seq: its entry is dropped (only its own), and no read of it
// older than seq is cached from now on.
func (c *Cache) Invalidate(id string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[id]; ok {
		e := el.Value.(*cacheEntry)
		c.lru.Remove(el)
		delete(c.entries, id)
		c.stats.Invalidations++
		c.addTomb(id, max(e.minSeq, int64(seq)))
		return
	}
	c.addTomb(id, int64(seq))
}

// FedSeq returns the last transitions-stream sequence [Cache.Run] has
// applied (0: none yet).
func (c *Cache) FedSeq() uint64 { return c.fed.Load() }

// Stats returns the counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.Entries = c.lru.Len()
	return st
}

// List reads the store.
func (c *Cache) List(ctx context.Context, f projections.ListFilter, now time.Time) (*projections.Page, error) {
	return c.cfg.Store.List(ctx, f, now)
}

// Transitions reads the store.
func (c *Cache) Transitions(ctx context.Context, id string, from, to time.Time, limit int) ([]projections.Transition, error) {
	return c.cfg.Store.Transitions(ctx, id, from, to, limit)
}

// Summary reads the store.
func (c *Cache) Summary(ctx context.Context) (*projections.Summary, error) {
	return c.cfg.Store.Summary(ctx)
}

// StatusAt reads the store (history is not cached).
func (c *Cache) StatusAt(ctx context.Context, id string, at time.Time) (*projections.PastStatus, error) {
	return c.cfg.Store.StatusAt(ctx, id, at)
}

// Availability reads the store (history is not cached).
func (c *Cache) Availability(ctx context.Context, id string, from, to time.Time) (*projections.Availability, error) {
	return c.cfg.Store.Availability(ctx, id, from, to)
}

// FleetTransitions reads the store (history is not cached).
func (c *Cache) FleetTransitions(ctx context.Context, f projections.TransitionFilter) (*projections.TransitionPage, error) {
	return c.cfg.Store.FleetTransitions(ctx, f)
}

// Collectors returns the cache's Prometheus collectors:
//
//	devstatus_readapi_cache_hits_total          counter  device reads answered from memory
//	devstatus_readapi_cache_misses_total        counter  device reads that went to Postgres
//	devstatus_readapi_cache_invalidations_total counter  cached devices dropped by their own transition
//	devstatus_readapi_cache_evictions_total     counter  cached devices dropped to stay within MaxEntries
//	devstatus_readapi_cache_entries             gauge    devices cached now
//
// and, with CacheConfig.JetStream, those of its transitions follower
// ([bus.Follower.Collectors], follower="readapi-cache").
func (c *Cache) Collectors() []prometheus.Collector {
	counter := func(name, help string, f func(CacheStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(c.Stats())) })
	}
	cs := []prometheus.Collector{
		counter("devstatus_readapi_cache_hits_total", "Device reads of the read API answered from its per-device cache.",
			func(s CacheStats) uint64 { return s.Hits }),
		counter("devstatus_readapi_cache_misses_total", "Device reads of the read API that went to Postgres.",
			func(s CacheStats) uint64 { return s.Misses }),
		counter("devstatus_readapi_cache_invalidations_total", "Cached devices dropped because that device had a transition.",
			func(s CacheStats) uint64 { return s.Invalidations }),
		counter("devstatus_readapi_cache_evictions_total", "Cached devices dropped to stay within the cache's size.",
			func(s CacheStats) uint64 { return s.Evictions }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "devstatus_readapi_cache_entries", Help: "Devices in the read API's cache."},
			func() float64 { return float64(c.Stats().Entries) }),
	}
	if c.follower != nil {
		cs = append(cs, c.follower.Collectors()...)
	}
	return cs
}

// Run invalidates entries from the transitions stream (new transitions only;
// after a consumer failure or stall it resumes after the last one seen, so
// no global flush is needed) until ctx is done, then returns nil. It reads
// only subjects and sequences, never payloads. Errors other than ctx's are
// retried with backoff (a [bus.Follower]).
func (c *Cache) Run(ctx context.Context) error {
	if c.follower == nil {
		return fmt.Errorf("%w: cache: JetStream is required to run", ErrInvalidConfig)
	}
	return c.follower.Run(ctx)
}

// handleTransition invalidates the device of one transition.
func (c *Cache) handleTransition(_ context.Context, m *bus.Msg) error {
	subj := m.Subject
	id, err := events.DeviceIDFromToken(subj[strings.LastIndexByte(subj, '.')+1:])
	if err != nil {
		c.log.Warn("transition subject without a device", slog.String("subject", subj))
	} else {
		c.Invalidate(id, m.Seq)
	}
	c.fed.Store(m.Seq)
	return nil
}
