package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var errLeaseHeld = errors.New("worker: lease held by another instance")

// lease is ownership of one partition: a key in the lease bucket, created by
// its owner and renewed with a compare-and-set on its revision. The bucket's
// TTL (MaxAge) removes the key of an owner that stopped renewing, and any
// instance may then create it. Ownership during a switch-over is not
// exclusive by itself; outputs are fenced separately (publisher).
type lease struct {
	kv    jetstream.KeyValue
	key   string
	owner string
	ttl   time.Duration
	rev   uint64
}

func leaseKey(p int) string { return "p" + strconv.Itoa(p) }

func acquireLease(ctx context.Context, kv jetstream.KeyValue, p int, owner string, ttl time.Duration) (*lease, error) {
	key := leaseKey(p)
	rev, err := kv.Create(ctx, key, []byte(owner))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, errLeaseHeld
	}
	if err != nil {
		return nil, fmt.Errorf("worker: create lease %s: %w", key, err)
	}
	return &lease{kv: kv, key: key, owner: owner, ttl: ttl, rev: rev}, nil
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
		rev, err := l.kv.Update(ctx, l.key, []byte(l.owner), l.rev)
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
