package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var errLeaseHeld = errors.New("worker: lease held by another instance")

// lease is ownership of one partition: a key in the lease bucket, created by
// its owner and renewed with a compare-and-set on its revision. The bucket's
// TTL (MaxAge) removes the key of an owner that stopped renewing, and any
// instance may then create it. An instance of the same identity (a process
// restarted on the same data directory) takes its own unexpired lease over at
// once. Ownership during a switch-over is not exclusive by itself; outputs
// are fenced separately (publisher).
type lease struct {
	kv    jetstream.KeyValue
	key   string
	value []byte
	ttl   time.Duration
	rev   uint64
	// since is when the lease was first taken by this identity.
	since time.Time
	// reclaimed: taken over from an earlier process of the same identity.
	reclaimed bool
	// progress (optional) gives the applied sequence and lag written with
	// each renewal.
	progress func() (applied, lag uint64)
}

// LeaseValue is the value of a partition's key in the lease bucket (JSON):
// the owning instance's id and when it took the partition (RFC 3339, UTC).
// A value that is not JSON is an owner id alone (written by older versions).
type LeaseValue struct {
	Owner string    `json:"owner"`
	Since time.Time `json:"since"`
	// AppliedSeq is the last input sequence the owner applied and LagEvents
	// the input events behind it, as of the last renewal (every TTL/3).
	AppliedSeq uint64 `json:"applied_seq"`
	LagEvents  uint64 `json:"lag_events"`
}

// ParseLeaseValue decodes a lease key's value; it never fails (an
// unreadable value is taken as an owner id).
func ParseLeaseValue(b []byte) LeaseValue {
	var v LeaseValue
	if strings.HasPrefix(string(b), "{") && json.Unmarshal(b, &v) == nil {
		return v
	}
	return LeaseValue{Owner: string(b)}
}

// LeaseKey is the lease bucket's key of partition p ("p<p>").
func LeaseKey(p int) string { return "p" + strconv.Itoa(p) }

// acquireLease creates partition p's lease, or takes it over when the key
// holds a lease of the same owner (an earlier process of this identity that
// stopped without releasing it). It returns errLeaseHeld when another owner
// holds it.
func acquireLease(ctx context.Context, kv jetstream.KeyValue, p int, owner string, ttl time.Duration) (*lease, error) {
	return acquireLeaseKey(ctx, kv, LeaseKey(p), owner, ttl)
}

// acquireLeaseKey takes the lease named key (partitions use "p<n>", the
// outage-hold coordinator [HoldLeaseKey]), as acquireLease does.
func acquireLeaseKey(ctx context.Context, kv jetstream.KeyValue, key, owner string, ttl time.Duration) (*lease, error) {
	now := time.Now().UTC().Truncate(time.Millisecond) // shown in GET /v1/partitions; never decides anything
	val, _ := json.Marshal(LeaseValue{Owner: owner, Since: now})
	rev, err := kv.Create(ctx, key, val)
	if err == nil {
		return &lease{kv: kv, key: key, value: val, ttl: ttl, rev: rev, since: now}, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("worker: create lease %s: %w", key, err)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, errLeaseHeld // expired or released since: the next round creates it
	}
	if err != nil {
		return nil, fmt.Errorf("worker: read lease %s: %w", key, err)
	}
	held := ParseLeaseValue(e.Value())
	if held.Owner != owner {
		return nil, errLeaseHeld
	}
	// Our own identity: the process that held it is gone (the data
	// directory's lock keeps two processes of one identity from running), or
	// its run of the partition ended without a release.
	if !held.Since.IsZero() {
		now = held.Since
	}
	val, _ = json.Marshal(LeaseValue{Owner: owner, Since: now})
	rev, err = kv.Update(ctx, key, val, e.Revision())
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, errLeaseHeld
	}
	if err != nil {
		return nil, fmt.Errorf("worker: take over lease %s: %w", key, err)
	}
	return &lease{kv: kv, key: key, value: val, ttl: ttl, rev: rev, since: now, reclaimed: true}, nil
}

// keep renews the lease every ttl/3 until ctx ends. It calls lost (once) when
// the lease is taken by someone else or could not be renewed for a whole TTL,
// after which the partition must stop.
func (l *lease) keep(ctx context.Context, lost func(error)) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.progress != nil {
			v := ParseLeaseValue(l.value)
			v.AppliedSeq, v.LagEvents = l.progress()
			l.value, _ = json.Marshal(v)
		}
		rev, err := l.kv.Update(ctx, l.key, l.value, l.rev)
		switch {
		case err == nil:
			l.rev, lastOK = rev, time.Now()
		case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound):
			lost(fmt.Errorf("worker: lease %s lost: %w", l.key, err))
			return
		case time.Since(lastOK) >= l.ttl:
			lost(fmt.Errorf("worker: lease %s not renewed for %s: %w", l.key, l.ttl, err))
			return
		}
	}
}

// release deletes the lease if still ours, so another instance can take the
// partition at once instead of after the TTL.
func (l *lease) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
}
