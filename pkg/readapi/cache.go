package readapi

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/projections"
)

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
	// Logger receives invalidation-feed errors. Default slog.Default().
	Logger *slog.Logger
}

// Cache is a per-device read cache in front of a [Reader] (design.md: reads
// go through a per-device cache invalidated by that device's transitions
// only, never a global flush). Only Device reads are cached; List,
// Transitions and Summary go to the store.
//
// Invalidation is by sequence: each transition of device D with stream
// sequence S raises D's minimum to S, and an entry (or a fresh read whose
// status_seq is still below S because the projection lags the stream) is
// never served or stored below it. So a status change is visible as soon as
// the projection has it, while an unchanged device is read from memory for
// up to TTL.
//
// Safe for concurrent use. It implements Reader.
type Cache struct {
	cfg CacheConfig
	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*list.Element // of *cacheEntry
	lru     *list.List               // front: most recent
	hits    uint64
	misses  uint64
}

type cacheEntry struct {
	id string
	// dev is nil for a tombstone (an invalidation of a device not cached).
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.Store == nil:
		return nil, fmt.Errorf("%w: cache: Store is required", ErrInvalidConfig)
	case cfg.TTL < 0 || cfg.MaxEntries < 1:
		return nil, fmt.Errorf("%w: cache: TTL must be >= 0 and MaxEntries >= 1", ErrInvalidConfig)
	}
	return &Cache{cfg: cfg, log: cfg.Logger.With(slog.String("component", "readapi-cache")),
		entries: map[string]*list.Element{}, lru: list.New()}, nil
}

// Device returns the cached device when it is fresh and not older than the
// device's last transition seen, otherwise reads the store (errors are not
// cached).
func (c *Cache) Device(ctx context.Context, id string) (*projections.Device, error) {
	now := time.Now()
	c.mu.Lock()
	if el, ok := c.entries[id]; ok {
		e := el.Value.(*cacheEntry)
		if e.dev != nil && now.Before(e.expires) && e.dev.StatusSeq >= e.minSeq {
			c.lru.MoveToFront(el)
			c.hits++
			d := *e.dev
			c.mu.Unlock()
			return &d, nil
		}
	}
	c.misses++
	c.mu.Unlock()

	d, err := c.cfg.Store.Device(ctx, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(id)
	if d.StatusSeq >= e.minSeq { // else the projection lags a transition already seen: do not keep it
		cp := *d
		e.dev, e.expires = &cp, now.Add(c.cfg.TTL)
	}
	return d, nil
}

// entry returns id's entry, creating it (and evicting the least recently
// used beyond MaxEntries). c.mu must be held.
func (c *Cache) entry(id string) *cacheEntry {
	if el, ok := c.entries[id]; ok {
		c.lru.MoveToFront(el)
		return el.Value.(*cacheEntry)
	}
	e := &cacheEntry{id: id}
	c.entries[id] = c.lru.PushFront(e)
	for c.lru.Len() > c.cfg.MaxEntries {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*cacheEntry).id)
	}
	return e
}

// Invalidate records that device id changed status at transitions-stream
// sequence seq: its entry is dropped and no read older than seq is cached.
func (c *Cache) Invalidate(id string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(id)
	if int64(seq) > e.minSeq {
		e.minSeq = int64(seq)
	}
	if e.dev != nil && e.dev.StatusSeq < e.minSeq {
		e.dev = nil
	}
}

// Stats returns the hit and miss counts.
func (c *Cache) Stats() (hits, misses uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
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

// Run invalidates entries from the transitions stream (new transitions only;
// after a consumer failure it resumes after the last one seen) until ctx is
// done, then returns nil. It reads only subjects and sequences, never
// payloads. Errors other than ctx's are retried with backoff.
func (c *Cache) Run(ctx context.Context) error {
	if c.cfg.JetStream == nil {
		return fmt.Errorf("%w: cache: JetStream is required to run", ErrInvalidConfig)
	}
	var last uint64
	backoff := 100 * time.Millisecond
	for {
		err := c.follow(ctx, &last)
		select {
		case <-ctx.Done():
			return nil
		default:
		}
		// Resuming after the last transition seen misses none, so no
		// global flush is needed; entries expire by TTL meanwhile.
		c.log.Warn("transition feed failed; resuming", slog.Any("err", err), slog.Uint64("after_seq", last))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *Cache) follow(ctx context.Context, last *uint64) error {
	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy, HeadersOnly: true}
	if *last > 0 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, *last+1
	}
	cons, err := c.cfg.JetStream.OrderedConsumer(ctx, events.TransitionStream, occ)
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		m, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		subj := m.Subject()
		id, err := events.DeviceIDFromToken(subj[strings.LastIndexByte(subj, '.')+1:])
		if err != nil {
			c.log.Warn("transition subject without a device", slog.String("subject", subj))
		} else {
			c.Invalidate(id, md.Sequence.Stream)
		}
		*last = md.Sequence.Stream
	}
}
