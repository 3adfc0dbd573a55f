package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The identity survives a restart on the same data directory, and a second
// live process on it gets another one.
func TestInstanceIdentity(t *testing.T) {
	dir := t.TempDir()
	id1, shared, unlock1, err := instanceIdentity(dir)
	if err != nil || shared || id1 == "" {
		t.Fatalf("first: %q %v %v", id1, shared, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "instance-id"))
	if err != nil || strings.TrimSpace(string(b)) != id1 {
		t.Fatalf("instance-id file %q %v, want %q", b, err, id1)
	}
	id2, shared, unlock2, err := instanceIdentity(dir)
	if err != nil || !shared || id2 == id1 || id2 == "" {
		t.Fatalf("while the first holds the lock: %q shared=%v %v (first %q)", id2, shared, err, id1)
	}
	unlock2()
	unlock1()
	id3, shared, unlock3, err := instanceIdentity(dir)
	if err != nil || shared || id3 != id1 {
		t.Fatalf("after a restart: %q shared=%v %v, want %q", id3, shared, err, id1)
	}
	unlock3()
}
