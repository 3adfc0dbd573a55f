package registry

import (
	"sync"
	"sync/atomic"
)

// cache is the bounded hot-path cache, keyed by KV key. It stores entries
// only while enabled (the KV watcher is running), so that nothing cached can
// miss its invalidation.
//
// Fill protocol (no stale entry can survive an invalidation): a miss first
// reserves the key with a placeholder slot, then reads KV, then stores the
// value only into that same placeholder. A local invalidation (revision 0)
// or a flush that lands between the reservation and the store removes the
// placeholder, and the store is dropped. A watch invalidation at revision n
// marks the placeholder instead: the value read is stored only if it is at
// revision n or newer (it then already holds that change), so the watch
// event of a device's registration, arriving while its first look-up reads
// it, does not leave the device uncached.
//
// Eviction: when full, an arbitrary entry is dropped (Go map iteration order
// is randomised, so this is random eviction: O(1), no per-entry list).
type cache struct {
	mu      sync.Mutex
	m       map[string]*slot
	max     int
	enabled bool

	hits, misses, invalidations, flushes atomic.Uint64
	refreshes                            atomic.Uint64 // entries replaced by the watch's new value
	watched                              atomic.Uint64 // last KV revision the watch applied
}

type slot struct {
	e     Entry
	found bool
	ready bool
	// minRev: a watch invalidation at this revision hit the placeholder;
	// only a value at least this new may fill it.
	minRev uint64
}

func newCache(max int) *cache {
	return &cache{m: make(map[string]*slot), max: max}
}

// get returns the cached entry; ok is false on a miss.
func (c *cache) get(key string) (e Entry, found, ok bool) {
	c.mu.Lock()
	s := c.m[key]
	if s != nil && s.ready {
		e, found = s.e, s.found
		c.mu.Unlock()
		c.hits.Add(1)
		return e, found, true
	}
	c.mu.Unlock()
	c.misses.Add(1)
	return Entry{}, false, false
}

// reserve places a placeholder for key and returns it (nil when caching is
// off, the cache has size 0, or another miss already reserved the key).
func (c *cache) reserve(key string) *slot {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.enabled || c.max == 0 {
		return nil
	}
	if _, busy := c.m[key]; busy {
		return nil
	}
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	s := &slot{}
	c.m[key] = s
	return s
}

// fill stores the value read for a reservation, if the reservation survived.
func (c *cache) fill(key string, s *slot, e Entry, found bool) {
	if s == nil {
		return
	}
	c.mu.Lock()
	if c.m[key] == s {
		if s.minRev == 0 || (found && e.Revision >= s.minRev) {
			s.e, s.found, s.ready = e, found, true
		} else {
			delete(c.m, key) // read before the change the watch reported
			c.invalidations.Add(1)
		}
	}
	c.mu.Unlock()
}

// abandon drops a reservation whose read failed.
func (c *cache) abandon(key string, s *slot) {
	if s == nil {
		return
	}
	c.mu.Lock()
	if c.m[key] == s {
		delete(c.m, key)
	}
	c.mu.Unlock()
}

// invalidate drops key unless the cached entry is already at revision rev or
// newer (rev 0: drop whatever is there). Returns whether something was dropped.
func (c *cache) invalidate(key string, rev uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	if !ok {
		return false
	}
	if rev != 0 && s.ready && s.found && s.e.Revision >= rev {
		return false
	}
	if rev != 0 && !s.ready {
		s.minRev = max(s.minRev, rev) // judged when the read fills it
		return false
	}
	delete(c.m, key)
	c.invalidations.Add(1)
	return true
}

// update applies a change the watch reported with the entry's new value:
// a cached entry older than rev takes e instead of being dropped, so that a
// device whose entry changed (a comeback's compare-and-swap, a patch) stays
// cached and its next heartbeat reads no KV. A placeholder is marked as by
// invalidate (its own read decides); a key not cached stays uncached (the
// cache holds only devices looked up). Returns whether an entry was replaced.
func (c *cache) update(key string, rev uint64, e Entry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	if !ok {
		return false
	}
	if !s.ready {
		s.minRev = max(s.minRev, rev)
		return false
	}
	if s.found && s.e.Revision >= rev {
		return false
	}
	c.m[key] = &slot{e: e, found: true, ready: true}
	c.refreshes.Add(1)
	return true
}

// has reports whether key is cached or being read, without counting a hit
// or a miss.
func (c *cache) has(key string) bool {
	c.mu.Lock()
	_, ok := c.m[key]
	on := c.enabled && c.max > 0
	c.mu.Unlock()
	return ok || !on
}

// enable turns caching on (the watcher is running).
func (c *cache) enable() {
	c.mu.Lock()
	c.enabled = true
	c.mu.Unlock()
}

// disable turns caching off and empties the cache: used only when the NATS
// connection (and so the watch) was lost and updates may have been missed.
func (c *cache) disable() {
	c.mu.Lock()
	c.enabled = false
	if len(c.m) > 0 {
		c.m = make(map[string]*slot)
		c.flushes.Add(1)
	}
	c.mu.Unlock()
}

func (c *cache) stats() CacheStats {
	c.mu.Lock()
	n := len(c.m)
	c.mu.Unlock()
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(),
		Invalidations: c.invalidations.Load(), Refreshes: c.refreshes.Load(), Flushes: c.flushes.Load(), Entries: n,
		WatchedRevision: c.watched.Load()}
}
