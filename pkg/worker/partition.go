package worker

import (
	"bytes"
	"context"
	"encoding/gob"
	"fmt"
	"maps"
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

// Probing configures the probe requests a partition emits for devices whose
// heartbeat is stale.
type Probing struct {
	// After is how long after the last heartbeat the first probe is due; the
	// group's ping_ignore_within is the floor (a probe earlier than that
	// would be ignored). Negative disables probe requests. Default 35s: a
	// device heartbeating every 30 s with some jitter is never probed.
	After time.Duration
	// MaxInterval caps the backoff between probes of a silent device (30 s,
	// 1 min, 2 min, …). Default 5 min.
	MaxInterval time.Duration
}

func (p *Probing) setDefaults() {
	if p.After == 0 {
		p.After = 35 * time.Second
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = 5 * time.Minute
	}
}

// firstProbeBackoff is the interval after the first probe of a silence; it
// doubles up to Probing.MaxInterval.
const firstProbeBackoff = 30 * time.Second

// probeState is a device's probe schedule: 16 bytes.
type probeState struct {
	// Next is when the next probe is due, Unix ns; 0 = none.
	Next int64
	// Step counts probes issued in this silence.
	Step int32
}

// partition is the state of one partition: every device's compact state, a
// deadline heap, and the position in the input log. It is pure: no I/O, no
// clock, no goroutines; the runner feeds it the log in order.
//
// Memory per device: the map entry and id string (~50 B + id length), the
// 40-byte statemachine.Device, an 8-byte heap-entry time, a 16-byte probe
// schedule, the 8-byte sequence of its last transition, and at most one
// 16-byte heap entry.
type partition struct {
	p, partitions int
	th            Thresholds
	probing       Probing
	m             *statemachine.Machine

	index  map[string]int32
	ids    []string // "" marks a free slot
	devs   []statemachine.Device
	sched  []int64 // time of the device's heap entry, 0 = none
	probes []probeState
	// trSeq is the transitions-stream sequence of the device's last
	// transition (0: it has none; trSeqUnknown: to be read from the stream
	// before its next transition is published). It fences the device's
	// transitions (see publisher).
	trSeq []uint64
	free  []int32
	// retired keeps the trSeq of decommissioned devices, for a
	// re-registration under the same id (its transitions subject keeps its
	// history). trFresh: devices first seen in this state have no
	// transitions yet (false after restoring a snapshot that did not record
	// sequences: their trSeq is unknown).
	retired map[string]uint64
	trFresh bool

	groups   []string
	groupTh  []statemachine.Thresholds
	groupIdx map[string]uint16

	dl deadlines

	now int64  // newest tick time applied, Unix ns
	seq uint64 // last input stream sequence applied

	// hold is the outage hold as the log says (outage_hold_started and
	// outage_hold_ended events, applied in log order); holdSince is when
	// the active hold started, Unix ns (0 when none is on).
	hold      statemachine.Hold
	holdSince int64

	scratch []statemachine.Transition
	due     []int32
}

func newPartition(p, partitions int, th Thresholds, probing Probing) *partition {
	probing.setDefaults()
	return &partition{
		p: p, partitions: partitions, th: th, probing: probing, m: statemachine.NewMachine(),
		index: make(map[string]int32), groupIdx: make(map[string]uint16), retired: map[string]uint64{}, trFresh: true,
	}
}

// trSeqUnknown marks a device whose last transition's sequence must be read
// from the transitions stream.
const trSeqUnknown = ^uint64(0)

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

func (s *partition) add(id string, d statemachine.Device, pr probeState, trSeq uint64) int32 {
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
		s.ids[i], s.devs[i], s.sched[i], s.probes[i], s.trSeq[i] = id, d, 0, pr, trSeq
	} else {
		i = int32(len(s.ids))
		s.ids = append(s.ids, id)
		s.devs = append(s.devs, d)
		s.sched = append(s.sched, 0)
		s.probes = append(s.probes, pr)
		s.trSeq = append(s.trSeq, trSeq)
	}
	s.index[id] = i
	s.schedule(i)
	return i
}

func (s *partition) remove(i int32) {
	if q := s.trSeq[i]; q != 0 {
		s.retired[s.ids[i]] = q
	}
	delete(s.index, s.ids[i])
	s.ids[i], s.devs[i], s.sched[i], s.probes[i], s.trSeq[i] = "", statemachine.Device{}, 0, probeState{}, 0
	s.free = append(s.free, i)
}

// newTrSeq is the trSeq of a device registered now: what it had before a
// decommission, 0 for a device this state has never seen (unknown when the
// state came from a snapshot without sequences).
func (s *partition) newTrSeq(id string) uint64 {
	if q, ok := s.retired[id]; ok {
		delete(s.retired, id)
		return q
	}
	if !s.trFresh {
		return trSeqUnknown
	}
	return 0
}

// wake is when the device next needs a tick: its next timeout or its next
// probe, whichever comes first; 0 when neither is pending.
func (s *partition) wake(i int32) int64 {
	d := &s.devs[i]
	nd := statemachine.Deadline(d, s.groupTh[d.Group], s.hold)
	if p := s.probes[i].Next; p != 0 && (nd == 0 || p < nd) {
		nd = p
	}
	return nd
}

// schedule keeps the invariant: a device with a pending timeout or probe has
// a heap entry no later than it (sched[i] is the entry's time). Entries left
// behind by later times are found stale when popped.
func (s *partition) schedule(i int32) {
	nd := s.wake(i)
	if nd != 0 && (s.sched[i] == 0 || nd < s.sched[i]) {
		s.sched[i] = nd
		s.dl.push(deadline{at: nd, i: i})
	}
}

// applyResult says what happened to one input.
type applyResult struct {
	// Skipped: at or below the last applied sequence (a redelivery).
	Skipped bool
	// Ignored names why an event had no effect ("unknown_device", "stale_tick", …), "" otherwise.
	Ignored string
	// HoldChanged: the input started or ended the outage hold.
	HoldChanged bool
}

// apply applies the input at stream sequence seq and appends the transitions
// it causes to out. Inputs at or below the last applied sequence are skipped,
// so a redelivered event never yields a second transition.
func (s *partition) apply(seq uint64, in *events.Input, out []events.StatusChanged) ([]events.StatusChanged, applyResult, error) {
	out, _, res, err := s.applyAll(seq, in, out, nil)
	return out, res, err
}

// applyAll is apply that also appends the probe requests the input makes due.
func (s *partition) applyAll(seq uint64, in *events.Input, out []events.StatusChanged, probes []events.ProbeRequest) ([]events.StatusChanged, []events.ProbeRequest, applyResult, error) {
	if seq <= s.seq {
		return out, probes, applyResult{Skipped: true}, nil
	}
	s.seq = seq
	at := in.At.UnixNano()
	ctx := context.Background()
	var res applyResult
	base, pbase := len(out), len(probes)
	cause := events.Cause{EventID: in.ID, Type: in.Type, Seq: seq}
	emit := func(i int32, ts []statemachine.Transition) {
		d := &s.devs[i]
		for _, t := range ts {
			sc := events.StatusChanged{
				V: events.Version, Device: s.ids[i], Group: s.groups[d.Group],
				From: t.From.Wire(), To: t.To.Wire(), ReasonCode: t.ReasonCode, Reason: t.Reason,
				At: time.Unix(0, t.At).UTC(), ObservedAt: time.Unix(0, t.ObservedAt).UTC(),
				Cause: cause, Partition: s.p, Index: len(out) - base,
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
			return out, probes, res, nil
		}
		s.now = at
		// Collect every device whose entry is due, then apply in id order:
		// the output (and its indexes) must not depend on heap history, so
		// that a worker restored from a snapshot emits the same transitions.
		s.due = s.due[:0]
		for s.dl.Len() > 0 && s.dl[0].at <= at {
			e := s.dl.pop()
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
			s.scratch, err = s.m.Apply(ctx, d, s.groupTh[d.Group], statemachine.Input{Kind: statemachine.KindTick, At: at, Hold: s.hold}, s.scratch[:0])
			if err != nil {
				return out, probes, res, err
			}
			emit(i, s.scratch)
			if pr := &s.probes[i]; pr.Next != 0 && pr.Next <= at {
				pr.Step++
				probes = append(probes, events.ProbeRequest{
					V: events.Version, ID: fmt.Sprintf("probe-%d-%d-%d", s.p, seq, len(probes)-pbase),
					Device: s.ids[i], DueAt: time.Unix(0, pr.Next).UTC(), Attempt: int(pr.Step),
					LastHeartbeatAt: time.Unix(0, d.LastHeartbeat).UTC(), Cause: cause, Partition: s.p,
				})
				backoff := min(firstProbeBackoff<<min(pr.Step-1, 20), s.probing.MaxInterval)
				pr.Next += int64(backoff)
				if pr.Next <= at { // long gap in ticks: do not fire a burst of catch-up probes
					pr.Next = at + int64(backoff)
				}
			}
			s.schedule(i)
		}
		return out, probes, res, nil

	case events.TypeOutageHoldStarted:
		if s.hold.Active {
			res.Ignored = "hold_already_on"
			return out, probes, res, nil
		}
		s.hold.Active, s.holdSince, s.hold.Reason = true, at, in.Hold.Reason
		res.HoldChanged = true
		return out, probes, res, nil

	case events.TypeOutageHoldEnded:
		if !s.hold.Active {
			res.Ignored = "no_hold_on"
			return out, probes, res, nil
		}
		s.hold = statemachine.Hold{End: max(at, s.hold.End)}
		s.holdSince = 0
		res.HoldChanged = true
		// Held devices had no disconnect deadline: give them theirs,
		// max(last liveness, end) + disconnect_after (statemachine.Deadline).
		for i := range s.devs {
			if s.ids[i] != "" && s.devs[i].Status == statemachine.TemporarilyOffline {
				s.schedule(int32(i))
			}
		}
		return out, probes, res, nil

	case events.TypeDeviceRegistered:
		if _, ok := s.index[in.Device]; ok {
			res.Ignored = "already_registered"
			return out, probes, res, nil
		}
		group := ""
		if in.Registered != nil {
			group = in.Registered.Group
		}
		s.add(in.Device, statemachine.Device{Status: statemachine.Registered, Since: at, Group: s.group(group)}, probeState{}, s.newTrSeq(in.Device))
		return out, probes, res, nil

	case events.TypeDeviceDecommissioned:
		i, ok := s.index[in.Device]
		if !ok {
			res.Ignored = "unknown_device"
			return out, probes, res, nil
		}
		s.remove(i)
		return out, probes, res, nil

	case events.TypeHeartbeat, events.TypePingResult:
		i, ok := s.index[in.Device]
		if !ok {
			res.Ignored = "unknown_device"
			return out, probes, res, nil
		}
		mi := statemachine.Input{Kind: statemachine.KindHeartbeat, At: at, Hold: s.hold}
		if in.Type == events.TypePingResult {
			mi.Kind = statemachine.KindPingFailed
			if in.Ping.OK {
				mi.Kind = statemachine.KindPingOK
			}
			mi.CheckedAt = in.Ping.CheckedAt.UnixNano()
		}
		d := &s.devs[i]
		before := d.LastHeartbeat
		res.Ignored = statemachine.PingIgnored(d, s.groupTh[d.Group], mi)
		var err error
		s.scratch, err = s.m.Apply(ctx, d, s.groupTh[d.Group], mi, s.scratch[:0])
		if err != nil {
			return out, probes, res, err
		}
		emit(i, s.scratch)
		if d.LastHeartbeat != before && s.probing.After >= 0 {
			// A new heartbeat restarts the probe schedule of this silence.
			after := max(s.probing.After, s.groupTh[d.Group].PingIgnoreWithin)
			s.probes[i] = probeState{Next: d.LastHeartbeat + int64(after)}
		}
		s.schedule(i)
		return out, probes, res, nil
	}
	res.Ignored = "not_for_worker"
	return out, probes, res, nil
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

// deadlines is a binary min-heap of entries (by time, then slot). It is
// container/heap's algorithm without its interface: pushing and popping a
// deadline through `any` allocated twice per heartbeat (BenchmarkPartitionHeartbeats).
type deadlines []deadline

func (h deadlines) Len() int { return len(h) }

func (h deadlines) less(a, b int) bool {
	if h[a].at != h[b].at {
		return h[a].at < h[b].at
	}
	return h[a].i < h[b].i
}

func (h *deadlines) push(d deadline) {
	*h = append(*h, d)
	q := *h
	for j := len(q) - 1; j > 0; {
		parent := (j - 1) / 2
		if !q.less(j, parent) {
			break
		}
		q[j], q[parent] = q[parent], q[j]
		j = parent
	}
}

func (h *deadlines) pop() deadline {
	q := *h
	n := len(q) - 1
	top := q[0]
	q[0] = q[n]
	q = q[:n]
	for j := 0; ; {
		l := 2*j + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && q.less(r, l) {
			m = r
		}
		if !q.less(m, j) {
			break
		}
		q[j], q[m] = q[m], q[j]
		j = m
	}
	*h = q
	return top
}

// snapshotVersion is bumped when the snapshot layout changes; an unknown
// version is ignored (the worker replays the log from the start instead).
// Version 2 (no transition sequences) is still read: its devices' trSeq is
// then unknown, read from the stream before their next transition. Version
// 3 (no outage hold) is still read as "no hold, never held".
const snapshotVersion = 4

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
	Probes     []probeState
	// TrSeqs (version 3) are the devices' trSeq; Retired the decommissioned
	// devices' last transition sequences; TrFresh the partition's trFresh.
	TrSeqs  []uint64
	Retired map[string]uint64
	TrFresh bool
	// Version 4: the outage hold (statemachine.Hold and the active hold's
	// start, Unix ns).
	HoldActive bool
	HoldEnd    int64
	HoldReason string
	HoldSince  int64
}

// takeSnapshot copies the live state (cheap: ids are shared strings).
func (s *partition) takeSnapshot() *snapshot {
	sn := &snapshot{Version: snapshotVersion, Partition: s.p, Partitions: s.partitions, Seq: s.seq, Now: s.now,
		Groups: slices.Clone(s.groups), IDs: make([]string, 0, len(s.index)), Devices: make([]statemachine.Device, 0, len(s.index)),
		Probes: make([]probeState, 0, len(s.index)), TrSeqs: make([]uint64, 0, len(s.index)), Retired: maps.Clone(s.retired)}
	for i, id := range s.ids {
		if id != "" {
			sn.IDs = append(sn.IDs, id)
			sn.Devices = append(sn.Devices, s.devs[i])
			sn.Probes = append(sn.Probes, s.probes[i])
			sn.TrSeqs = append(sn.TrSeqs, s.trSeq[i])
		}
	}
	sn.TrFresh = s.trFresh
	sn.HoldActive, sn.HoldEnd, sn.HoldReason, sn.HoldSince = s.hold.Active, s.hold.End, s.hold.Reason, s.holdSince
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
	if sn.Version < 2 || sn.Version > snapshotVersion {
		return nil, fmt.Errorf("worker: snapshot version %d, want %d", sn.Version, snapshotVersion)
	}
	if len(sn.IDs) != len(sn.Devices) || len(sn.IDs) != len(sn.Probes) || (sn.Version >= 3 && len(sn.TrSeqs) != len(sn.IDs)) {
		return nil, fmt.Errorf("worker: corrupt snapshot: %d ids, %d devices, %d probe schedules", len(sn.IDs), len(sn.Devices), len(sn.Probes))
	}
	return &sn, nil
}

// restore replaces the state with a snapshot's.
func (s *partition) restore(sn *snapshot) error {
	if sn.Partition != s.p || sn.Partitions != s.partitions {
		return fmt.Errorf("worker: snapshot of partition %d/%d loaded into %d/%d", sn.Partition, sn.Partitions, s.p, s.partitions)
	}
	fresh := newPartition(s.p, s.partitions, s.th, s.probing)
	*s = *fresh
	s.seq, s.now = sn.Seq, sn.Now
	s.trFresh = sn.Version >= 3 && sn.TrFresh
	s.hold = statemachine.Hold{Active: sn.HoldActive, End: sn.HoldEnd, Reason: sn.HoldReason}
	s.holdSince = sn.HoldSince
	if sn.Retired != nil {
		s.retired = sn.Retired
	}
	for _, g := range sn.Groups {
		s.group(g)
	}
	n := len(sn.IDs)
	s.ids, s.devs, s.sched = make([]string, 0, n), make([]statemachine.Device, 0, n), make([]int64, 0, n)
	s.probes, s.trSeq = make([]probeState, 0, n), make([]uint64, 0, n)
	s.index = make(map[string]int32, n)
	for k, id := range sn.IDs {
		d := sn.Devices[k]
		if int(d.Group) >= len(s.groups) {
			return fmt.Errorf("worker: corrupt snapshot: device %q has group %d of %d", id, d.Group, len(s.groups))
		}
		q := trSeqUnknown
		if sn.Version >= 3 {
			q = sn.TrSeqs[k]
		}
		s.add(id, d, sn.Probes[k], q)
	}
	return nil
}
