package worker

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/gob"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/statemachine"
)

// Thresholds maps device groups to their thresholds; devices of groups not
// listed use Default.
type Thresholds struct {
	Default statemachine.Thresholds
	Groups  map[string]statemachine.Thresholds
}

// Validate checks the default and every group's thresholds.
func (t Thresholds) Validate() error {
	if err := t.Default.Validate(); err != nil {
		return fmt.Errorf("default thresholds: %w", err)
	}
	for g, th := range t.Groups {
		if err := th.Validate(); err != nil {
			return fmt.Errorf("thresholds of group %q: %w", g, err)
		}
	}
	return nil
}

func (t Thresholds) of(group string) statemachine.Thresholds {
	if th, ok := t.Groups[group]; ok {
		return th
	}
	return t.Default
}

// partition is the state of one partition: every device's compact state, a
// deadline heap, and the position in the input log. It is pure: no I/O, no
// clock, no goroutines; the runner feeds it the log in order.
//
// Memory per device: the map entry and id string (~50 B + id length), the
// 40-byte statemachine.Device, an 8-byte scheduled deadline, and at most one
// 16-byte heap entry.
type partition struct {
	p, partitions int
	th            Thresholds
	m             *statemachine.Machine

	index map[string]int32
	ids   []string // "" marks a free slot
	devs  []statemachine.Device
	sched []int64 // deadline of the device's heap entry, 0 = none
	free  []int32

	groups   []string
	groupTh  []statemachine.Thresholds
	groupIdx map[string]uint16

	dl deadlines

	now int64  // newest tick time applied, Unix ns
	seq uint64 // last input stream sequence applied

	scratch []statemachine.Transition
	due     []int32
}

func newPartition(p, partitions int, th Thresholds) *partition {
	return &partition{
		p: p, partitions: partitions, th: th, m: statemachine.NewMachine(),
		index: make(map[string]int32), groupIdx: make(map[string]uint16),
	}
}

func (s *partition) group(name string) uint16 {
	if g, ok := s.groupIdx[name]; ok {
		return g
	}
	g := uint16(len(s.groups))
	s.groups = append(s.groups, name)
	s.groupTh = append(s.groupTh, s.th.of(name))
	s.groupIdx[name] = g
	return g
}

func (s *partition) add(id string, d statemachine.Device) int32 {
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
		s.ids[i], s.devs[i], s.sched[i] = id, d, 0
	} else {
		i = int32(len(s.ids))
		s.ids = append(s.ids, id)
		s.devs = append(s.devs, d)
		s.sched = append(s.sched, 0)
	}
	s.index[id] = i
	s.schedule(i)
	return i
}

func (s *partition) remove(i int32) {
	delete(s.index, s.ids[i])
	s.ids[i], s.devs[i], s.sched[i] = "", statemachine.Device{}, 0
	s.free = append(s.free, i)
}

// schedule keeps the invariant: a device with a pending timeout has a heap
// entry no later than that timeout (sched[i] is the entry's time). Entries
// left behind by later deadlines are found stale when popped.
func (s *partition) schedule(i int32) {
	d := &s.devs[i]
	nd := statemachine.Deadline(d, s.groupTh[d.Group])
	if nd != 0 && (s.sched[i] == 0 || nd < s.sched[i]) {
		s.sched[i] = nd
		heap.Push(&s.dl, deadline{at: nd, i: i})
	}
}

// applyResult says what happened to one input.
type applyResult struct {
	// Skipped: at or below the last applied sequence (a redelivery).
	Skipped bool
	// Ignored names why an event had no effect ("unknown_device", "stale_tick", …), "" otherwise.
	Ignored string
}

// apply applies the input at stream sequence seq and appends the transitions
// it causes to out. Inputs at or below the last applied sequence are skipped,
// so a redelivered event never yields a second transition.
func (s *partition) apply(seq uint64, in *events.Input, out []events.StatusChanged) ([]events.StatusChanged, applyResult, error) {
	if seq <= s.seq {
		return out, applyResult{Skipped: true}, nil
	}
	s.seq = seq
	at := in.At.UnixNano()
	ctx := context.Background()
	var res applyResult
	base := len(out)
	emit := func(i int32, ts []statemachine.Transition) {
		d := &s.devs[i]
		for _, t := range ts {
			sc := events.StatusChanged{
				V: events.Version, Device: s.ids[i], Group: s.groups[d.Group],
				From: t.From.Wire(), To: t.To.Wire(), ReasonCode: t.ReasonCode, Reason: t.Reason,
				At: time.Unix(0, t.At).UTC(), ObservedAt: time.Unix(0, t.ObservedAt).UTC(),
				Cause:     events.Cause{EventID: in.ID, Type: in.Type, Seq: seq},
				Partition: s.p, Index: len(out) - base,
			}
			if d.LastHeartbeat != 0 {
				lh := time.Unix(0, d.LastHeartbeat).UTC()
				sc.LastHeartbeatAt = &lh
			}
			sc.ID = sc.MsgID()
			out = append(out, sc)
		}
	}

	switch in.Type {
	case events.TypeTick:
		if at <= s.now {
			res.Ignored = "stale_tick"
			return out, res, nil
		}
		s.now = at
		// Collect every device whose entry is due, then apply in id order:
		// the output (and its indexes) must not depend on heap history, so
		// that a worker restored from a snapshot emits the same transitions.
		s.due = s.due[:0]
		for s.dl.Len() > 0 && s.dl[0].at <= at {
			e := heap.Pop(&s.dl).(deadline)
			if s.sched[e.i] != e.at || s.ids[e.i] == "" {
				continue // stale entry
			}
			s.sched[e.i] = 0
			s.due = append(s.due, e.i)
		}
		slices.SortFunc(s.due, func(a, b int32) int { return strings.Compare(s.ids[a], s.ids[b]) })
		for _, i := range s.due {
			d := &s.devs[i]
			var err error
			s.scratch, err = s.m.Apply(ctx, d, s.groupTh[d.Group], statemachine.Input{Kind: statemachine.KindTick, At: at}, s.scratch[:0])
			if err != nil {
				return out, res, err
			}
			emit(i, s.scratch)
			s.schedule(i)
		}
		return out, res, nil

	case events.TypeDeviceRegistered:
		if _, ok := s.index[in.Device]; ok {
			res.Ignored = "already_registered"
			return out, res, nil
		}
		group := ""
		if in.Registered != nil {
			group = in.Registered.Group
		}
		s.add(in.Device, statemachine.Device{Status: statemachine.Registered, Since: at, Group: s.group(group)})
		return out, res, nil

	case events.TypeDeviceDecommissioned:
		i, ok := s.index[in.Device]
		if !ok {
			res.Ignored = "unknown_device"
			return out, res, nil
		}
		s.remove(i)
		return out, res, nil

	case events.TypeHeartbeat, events.TypePingResult:
		i, ok := s.index[in.Device]
		if !ok {
			res.Ignored = "unknown_device"
			return out, res, nil
		}
		mi := statemachine.Input{Kind: statemachine.KindHeartbeat, At: at}
		if in.Type == events.TypePingResult {
			mi.Kind = statemachine.KindPingFailed
			if in.Ping.OK {
				mi.Kind = statemachine.KindPingOK
			}
			mi.CheckedAt = in.Ping.CheckedAt.UnixNano()
		}
		d := &s.devs[i]
		var err error
		s.scratch, err = s.m.Apply(ctx, d, s.groupTh[d.Group], mi, s.scratch[:0])
		if err != nil {
			return out, res, err
		}
		emit(i, s.scratch)
		s.schedule(i)
		return out, res, nil
	}
	res.Ignored = "not_for_worker"
	return out, res, nil
}

// counts returns the number of devices in each status.
func (s *partition) counts() [4]int {
	var c [4]int
	for i := range s.devs {
		if s.ids[i] != "" {
			c[s.devs[i].Status]++
		}
	}
	return c
}

// deadline is a heap entry.
type deadline struct {
	at int64
	i  int32
}

type deadlines []deadline

func (h deadlines) Len() int { return len(h) }
func (h deadlines) Less(a, b int) bool {
	if h[a].at != h[b].at {
		return h[a].at < h[b].at
	}
	return h[a].i < h[b].i
}
func (h deadlines) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *deadlines) Push(x any)   { *h = append(*h, x.(deadline)) }
func (h *deadlines) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// snapshotVersion is bumped when the snapshot layout changes; an unknown
// version is ignored (the worker replays the log from the start instead).
const snapshotVersion = 1

// snapshot is the persisted state of a partition.
type snapshot struct {
	Version    int
	Partition  int
	Partitions int
	Seq        uint64
	Now        int64
	Groups     []string
	IDs        []string
	Devices    []statemachine.Device
}

// takeSnapshot copies the live state (cheap: ids are shared strings).
func (s *partition) takeSnapshot() *snapshot {
	sn := &snapshot{Version: snapshotVersion, Partition: s.p, Partitions: s.partitions, Seq: s.seq, Now: s.now,
		Groups: slices.Clone(s.groups), IDs: make([]string, 0, len(s.index)), Devices: make([]statemachine.Device, 0, len(s.index))}
	for i, id := range s.ids {
		if id != "" {
			sn.IDs = append(sn.IDs, id)
			sn.Devices = append(sn.Devices, s.devs[i])
		}
	}
	return sn
}

func encodeSnapshot(sn *snapshot) ([]byte, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(sn); err != nil {
		return nil, fmt.Errorf("worker: encode snapshot: %w", err)
	}
	return buf.Bytes(), nil
}

func decodeSnapshot(b []byte) (*snapshot, error) {
	var sn snapshot
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&sn); err != nil {
		return nil, fmt.Errorf("worker: decode snapshot: %w", err)
	}
	if sn.Version != snapshotVersion {
		return nil, fmt.Errorf("worker: snapshot version %d, want %d", sn.Version, snapshotVersion)
	}
	if len(sn.IDs) != len(sn.Devices) {
		return nil, fmt.Errorf("worker: corrupt snapshot: %d ids, %d devices", len(sn.IDs), len(sn.Devices))
	}
	return &sn, nil
}

// restore replaces the state with a snapshot's.
func (s *partition) restore(sn *snapshot) error {
	if sn.Partition != s.p || sn.Partitions != s.partitions {
		return fmt.Errorf("worker: snapshot of partition %d/%d loaded into %d/%d", sn.Partition, sn.Partitions, s.p, s.partitions)
	}
	fresh := newPartition(s.p, s.partitions, s.th)
	*s = *fresh
	s.seq, s.now = sn.Seq, sn.Now
	for _, g := range sn.Groups {
		s.group(g)
	}
	for k, id := range sn.IDs {
		d := sn.Devices[k]
		if int(d.Group) >= len(s.groups) {
			return fmt.Errorf("worker: corrupt snapshot: device %q has group %d of %d", id, d.Group, len(s.groups))
		}
		s.add(id, d)
	}
	return nil
}
