package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// instanceIdentity returns this process's instance id when --instance-id is
// not set: the one kept in dataDir/instance-id (created once), so that a
// process restarted on the same data directory takes its own partition
// leases over at once instead of waiting for them to expire. It holds an
// exclusive lock on dataDir/instance.lock until unlock is called, so two
// live processes never share the identity: when another process holds the
// lock, this one gets a fresh identity of its own (shared=true, its leases
// then wait for their TTL after a crash, as before).
func instanceIdentity(dataDir string) (id string, shared bool, unlock func(), err error) {
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return "", false, nil, err
	}
	f, err := os.OpenFile(filepath.Join(dataDir, "instance.lock"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return "", false, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return "", false, nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		id, err := newInstanceID()
		return id, true, func() {}, err
	}
	unlock = func() { f.Close() } // closing the descriptor drops the lock
	path := filepath.Join(dataDir, "instance-id")
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, false, unlock, nil
		}
	}
	if id, err = newInstanceID(); err == nil {
		err = os.WriteFile(path, []byte(id+"\n"), 0o600)
	}
	if err != nil {
		unlock()
		return "", false, nil, err
	}
	return id, false, unlock, nil
}

// newInstanceID is host-random.
func newInstanceID() (string, error) {
	host, _ := os.Hostname()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return host + "-" + hex.EncodeToString(b[:]), nil
}
