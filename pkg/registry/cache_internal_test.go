package registry

import "testing"

// TestCacheFillProtocol: an invalidation that lands while a miss is reading
// KV keeps a stale value out of the cache, and only a stale one.
func TestCacheFillProtocol(t *testing.T) {
	c := newCache(10)
	c.enable()
	cached := func(key string) bool { _, _, ok := c.get(key); return ok }

	s := c.reserve("a")
	c.invalidate("a", 0) // a local write: whatever was read is suspect
	c.fill("a", s, Entry{Revision: 9}, true)
	if cached("a") {
		t.Error("filled after a local invalidation")
	}
	s = c.reserve("b")
	c.invalidate("b", 5) // the watch reports a change at revision 5
	c.fill("b", s, Entry{Revision: 4}, true)
	if cached("b") {
		t.Error("a value older than the reported change was cached")
	}
	s = c.reserve("c")
	c.invalidate("c", 5)
	c.fill("c", s, Entry{Revision: 5}, true)
	if !cached("c") {
		t.Error("a value that holds the reported change was not cached")
	}
	s = c.reserve("d")
	c.invalidate("d", 3)
	c.fill("d", s, Entry{}, false) // read: not found, but something changed
	if cached("d") {
		t.Error("a negative entry survived a change")
	}
	s = c.reserve("e")
	c.disable()
	c.enable()
	c.fill("e", s, Entry{Revision: 1}, true)
	if cached("e") {
		t.Error("filled after a flush")
	}
	// A ready entry is dropped only by a newer revision.
	c.fill("f", c.reserve("f"), Entry{Revision: 7}, true)
	if c.invalidate("f", 7) || !cached("f") {
		t.Error("dropped by its own revision")
	}
	if !c.invalidate("f", 8) || cached("f") {
		t.Error("kept after a newer revision")
	}
}
