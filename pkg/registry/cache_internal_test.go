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

// TestCacheUpdate: the watch's new value replaces an older cached entry (the
// device stays cached), never a newer one; a read in flight is held to the
// new revision; a key not cached is not added.
func TestCacheUpdate(t *testing.T) {
	c := newCache(10)
	c.enable()
	c.fill("a", c.reserve("a"), Entry{Revision: 3, Group: "old"}, true)
	if !c.update("a", 5, Entry{Revision: 5, Group: "new"}) {
		t.Fatal("older entry not replaced")
	}
	if e, found, ok := c.get("a"); !ok || !found || e.Group != "new" || e.Revision != 5 {
		t.Fatalf("after update: %+v %v %v", e, found, ok)
	}
	if c.update("a", 4, Entry{Revision: 4, Group: "stale"}) || c.update("a", 5, Entry{Revision: 5, Group: "same"}) {
		t.Error("replaced by an older or equal revision")
	}
	if e, _, _ := c.get("a"); e.Group != "new" {
		t.Errorf("group %q", e.Group)
	}
	// A negative entry takes a registration.
	c.fill("g", c.reserve("g"), Entry{}, false)
	if !c.update("g", 7, Entry{Revision: 7}) {
		t.Error("negative entry not replaced")
	}
	if _, found, ok := c.get("g"); !ok || !found {
		t.Error("registered device still cached as unknown")
	}
	// A read in flight that read an older value is not stored.
	s := c.reserve("b")
	if c.update("b", 9, Entry{Revision: 9}) {
		t.Error("a placeholder was replaced")
	}
	c.fill("b", s, Entry{Revision: 8}, true)
	if c.has("b") {
		t.Error("a value older than the update was cached")
	}
	if c.update("z", 1, Entry{Revision: 1}) || c.has("z") {
		t.Error("an uncached key was added")
	}
	if s := c.stats(); s.Refreshes != 2 {
		t.Errorf("refreshes %d, want 2", s.Refreshes)
	}
}
