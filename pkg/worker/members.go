package worker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Member is an instance's key in the lease bucket ("m.<id>", JSON), put
// every LeaseTTL/3 while its worker runs and deleted when it stops cleanly;
// the bucket's TTL removes the key of an instance that died. The members are
// the k of the fair share.
type Member struct {
	ID    string    `json:"id"`
	Roles []string  `json:"roles,omitempty"`
	Since time.Time `json:"since"`
}

// MemberKeyPrefix starts every membership key of the lease bucket.
const MemberKeyPrefix = "m."

// memberKey is the key of instance id: characters a KV key cannot hold are
// replaced by '_' (the value keeps the id as it is).
func memberKey(id string) string {
	return MemberKeyPrefix + strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '=':
			return r
		}
		return '_'
	}, id)
}

// Members lists the live instances of the lease bucket, by id.
func Members(ctx context.Context, kv jetstream.KeyValue) ([]Member, error) {
	lister, err := kv.ListKeysFiltered(ctx, MemberKeyPrefix+">")
	if err != nil {
		return nil, err
	}
	var out []Member
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			_ = lister.Stop()
			return nil, err
		}
		var m Member
		if json.Unmarshal(e.Value(), &m) == nil && m.ID != "" {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// fairShare is how many of n partitions instance self should own among
// members (sorted by id; self counted even when its key is not visible
// yet): ⌊n/k⌋, plus one for the first n mod k instances by id, so that the
// shares add up to n.
func fairShare(n int, members []Member, self string) int {
	ids := make([]string, 0, len(members)+1)
	for _, m := range members {
		ids = append(ids, m.ID)
	}
	if !slices.Contains(ids, self) {
		ids = append(ids, self)
		slices.Sort(ids)
	}
	k := len(ids)
	idx := slices.Index(ids, self)
	share := n / k
	if idx < n%k {
		share++
	}
	return share
}

// Ownership is who owns which partition, read from the lease bucket: the
// body of GET /v1/partitions.
type Ownership struct {
	Partitions []PartitionOwner `json:"partitions"`
	Instances  []InstanceOwner  `json:"instances"`
}

// PartitionOwner is one partition's lease: Owner is the owning instance's
// id ("" and no since when none owns it now), AppliedSeq and LagEvents the
// owner's progress as of its last renewal.
type PartitionOwner struct {
	Partition  int        `json:"partition"`
	Owner      string     `json:"owner"`
	Since      *time.Time `json:"since"`
	AppliedSeq uint64     `json:"applied_seq"`
	LagEvents  uint64     `json:"lag_events"`
}

// InstanceOwner is a live worker instance (a member, or an owner of a lease
// without a membership key) and the partitions it owns, ascending.
type InstanceOwner struct {
	ID         string   `json:"id"`
	Roles      []string `json:"roles"`
	Partitions []int    `json:"partitions"`
}

// ReadOwnership reads the leases of the n partitions and the members.
// Errors are the bus's.
func ReadOwnership(ctx context.Context, kv jetstream.KeyValue, n int) (Ownership, error) {
	members, err := Members(ctx, kv)
	if err != nil {
		return Ownership{}, err
	}
	out := Ownership{Partitions: make([]PartitionOwner, 0, n), Instances: []InstanceOwner{}}
	byID := map[string]int{}
	for _, m := range members {
		byID[m.ID] = len(out.Instances)
		out.Instances = append(out.Instances, InstanceOwner{ID: m.ID, Roles: m.Roles, Partitions: []int{}})
	}
	for p := 0; p < n; p++ {
		po := PartitionOwner{Partition: p}
		e, err := kv.Get(ctx, LeaseKey(p))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return Ownership{}, err
		default:
			v := ParseLeaseValue(e.Value())
			po.Owner, po.AppliedSeq, po.LagEvents = v.Owner, v.AppliedSeq, v.LagEvents
			if !v.Since.IsZero() {
				po.Since = &v.Since
			}
			i, ok := byID[v.Owner]
			if !ok {
				i = len(out.Instances)
				byID[v.Owner] = i
				out.Instances = append(out.Instances, InstanceOwner{ID: v.Owner, Roles: []string{}, Partitions: []int{}})
			}
			out.Instances[i].Partitions = append(out.Instances[i].Partitions, p)
		}
		out.Partitions = append(out.Partitions, po)
	}
	for i := range out.Instances {
		if out.Instances[i].Roles == nil {
			out.Instances[i].Roles = []string{}
		}
	}
	return out, nil
}
