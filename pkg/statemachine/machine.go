// Package statemachine decides device connectivity: it applies one input
// (heartbeat, ping result, clock tick) to one device's compact state and
// returns the transitions it causes, by the rules of README.md ("The rules")
// and docs/architecture.md (Contract).
//
// It is deterministic: it never reads the clock (time arrives inside the
// inputs) and holds no per-device goroutines, timers or locks. One [Machine]
// serves every device of a partition from one goroutine; it is not safe for
// concurrent use. It must not do I/O.
//
// The transition graph is a github.com/looplab/fsm machine, shared by all
// devices of the partition (SetState, then Event): looplab validates that a
// transition is allowed, this package decides when one is due.
package statemachine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/looplab/fsm"

	"github.com/devstatus/devstatus/events"
)

// ErrInvalidThresholds wraps every threshold validation error.
var ErrInvalidThresholds = errors.New("statemachine: invalid thresholds")

// Thresholds are the timing rules of the state machine.
type Thresholds struct {
	// OfflineAfter: a connected device whose silence (time since its last
	// heartbeat) exceeds this becomes temporarily_offline. Default 40s.
	OfflineAfter time.Duration
	// DisconnectAfter: a device without liveness (heartbeat or successful
	// probe) for this long or more becomes disconnected. Default 300s.
	DisconnectAfter time.Duration
	// PingIgnoreWithin: a ping result checked less than this after the last
	// heartbeat is ignored. Default 30s.
	PingIgnoreWithin time.Duration
}

// DefaultThresholds are the defaults: 40s, 300s, 30s.
var DefaultThresholds = Thresholds{OfflineAfter: 40 * time.Second, DisconnectAfter: 300 * time.Second, PingIgnoreWithin: 30 * time.Second}

// Validate refuses a set that cannot work: non-positive durations,
// offline_after >= disconnect_after, or ping_ignore_within > offline_after
// (a ping could then never act before the heartbeat timeout). Errors wrap
// [ErrInvalidThresholds].
func (t Thresholds) Validate() error {
	var errs []error
	if t.OfflineAfter <= 0 {
		errs = append(errs, fmt.Errorf("offline_after must be positive, got %s", t.OfflineAfter))
	}
	if t.DisconnectAfter <= 0 {
		errs = append(errs, fmt.Errorf("disconnect_after must be positive, got %s", t.DisconnectAfter))
	}
	if t.PingIgnoreWithin < 0 {
		errs = append(errs, fmt.Errorf("ping_ignore_within must not be negative, got %s", t.PingIgnoreWithin))
	}
	if t.OfflineAfter > 0 && t.DisconnectAfter > 0 && t.OfflineAfter >= t.DisconnectAfter {
		errs = append(errs, fmt.Errorf("offline_after (%s) must be shorter than disconnect_after (%s)", t.OfflineAfter, t.DisconnectAfter))
	}
	if t.PingIgnoreWithin > t.OfflineAfter {
		errs = append(errs, fmt.Errorf("ping_ignore_within (%s) must not exceed offline_after (%s)", t.PingIgnoreWithin, t.OfflineAfter))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidThresholds, err)
	}
	return nil
}

// Status is the compact (one byte) form of [events.Status].
type Status uint8

// Compact statuses. The zero value is Registered.
const (
	Registered Status = iota
	Connected
	TemporarilyOffline
	Disconnected
)

var statusNames = [...]events.Status{events.StatusRegistered, events.StatusConnected, events.StatusTemporarilyOffline, events.StatusDisconnected}

// Wire returns the wire name of s.
func (s Status) Wire() events.Status {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return events.Status(fmt.Sprintf("invalid(%d)", s))
}

// ParseStatus maps a wire name to its compact form.
func ParseStatus(s events.Status) (Status, bool) {
	for i, n := range statusNames {
		if n == s {
			return Status(i), true
		}
	}
	return 0, false
}

// Device is the compact state of one device: 40 bytes. Times are Unix
// nanoseconds in the observer's clock; 0 means never.
type Device struct {
	// LastHeartbeat is the receive time of the newest heartbeat.
	LastHeartbeat int64
	// LastLiveness is the newest of LastHeartbeat and the checked_at of
	// successful probes that counted (judged against a stale heartbeat).
	LastLiveness int64
	// LastPing is the checked_at of the newest ping result considered.
	LastPing int64
	// Since is when the current status took effect.
	Since int64
	// Status is the current status.
	Status Status
	// LastPingOK is the outcome of the newest ping result considered.
	LastPingOK bool
	// Group indexes the partition's table of group names and thresholds.
	Group uint16
}

// Kind is the kind of an input to [Machine.Apply].
type Kind uint8

// Input kinds.
const (
	KindHeartbeat Kind = iota + 1
	KindPingOK
	KindPingFailed
	KindTick
)

// Input is one event as the machine needs it.
type Input struct {
	Kind Kind
	// At is the event's observer time (bridge receive time, tick time), Unix ns.
	At int64
	// CheckedAt is when a probe was made (pings only), Unix ns; never later than At.
	CheckedAt int64
	// Hold is the partition's outage hold when the input is applied.
	Hold Hold
}

// Hold is the outage hold of the fleet as the machine needs it (the
// partition applies the hold events of its log and passes the result with
// every input). The zero value is "no hold, never held".
type Hold struct {
	// Active: while a hold is on, no device becomes disconnected (devices
	// still become temporarily_offline, with the hold named in the reason).
	Active bool
	// End is when the last hold ended, Unix ns (0: never). A device whose
	// last liveness is older than End becomes disconnected at End +
	// disconnect_after at the earliest: the rule is max(last liveness,
	// End) + disconnect_after, and the transition is stamped with it.
	End int64
	// Reason is the active hold's reason, quoted in the reason of the
	// transitions to temporarily_offline it sees.
	Reason string
}

// disconnectBase is the instant from which disconnect_after counts: the
// last liveness, or the end of the last hold if later.
func disconnectBase(d *Device, h Hold) int64 {
	return max(d.LastLiveness, h.End)
}

// Transition is one status change decided by the machine; the caller adds
// identity and cause.
type Transition struct {
	From, To   Status
	ReasonCode events.ReasonCode
	Reason     string
	// At is when the change took effect, ObservedAt the time of the input
	// that observed it; Unix ns.
	At, ObservedAt int64
}

// fsm event names: one per reason code.
const (
	evHeartbeat        = string(events.ReasonHeartbeat)
	evHeartbeatTimeout = string(events.ReasonHeartbeatTimeout)
	evPingFailed       = string(events.ReasonPingFailed)
	evPingOK           = string(events.ReasonPingOK)
	evLivenessTimeout  = string(events.ReasonLivenessTimeout)
)

// Machine applies inputs to devices. Create one per partition worker with
// [NewMachine]; it holds a single looplab/fsm instance (≈1.5 KB) whatever the
// number of devices.
type Machine struct {
	f *fsm.FSM
}

// NewMachine builds the transition graph:
//
//	heartbeat:         registered, connected*, temporarily_offline, disconnected → connected
//	heartbeat_timeout: connected → temporarily_offline
//	ping_failed:       connected → temporarily_offline
//	liveness_timeout:  temporarily_offline → disconnected
//	ping_ok:           disconnected → temporarily_offline
//
// (*connected → connected is looplab's NoTransitionError: a no-op.) There is
// no edge to disconnected except from temporarily_offline: a device is never
// disconnected straight from connected.
func NewMachine() *Machine {
	r, c, t, d := string(events.StatusRegistered), string(events.StatusConnected), string(events.StatusTemporarilyOffline), string(events.StatusDisconnected)
	f := fsm.NewFSM(r, fsm.Events{
		{Name: evHeartbeat, Src: []string{r, c, t, d}, Dst: c},
		{Name: evHeartbeatTimeout, Src: []string{c}, Dst: t},
		{Name: evPingFailed, Src: []string{c}, Dst: t},
		{Name: evLivenessTimeout, Src: []string{t}, Dst: d},
		{Name: evPingOK, Src: []string{d}, Dst: t},
	}, nil) // no callbacks: nothing can re-enter the machine (looplab/fsm #36, #102)
	return &Machine{f: f}
}

// fire runs one fsm event from state from. A same-state event is a no-op
// (ok=false, err=nil). The context is detached from cancellation: a cancelled
// context would leave looplab stuck in a transition forever (looplab/fsm #115).
func (m *Machine) fire(ctx context.Context, from Status, event string) (Status, bool, error) {
	m.f.SetState(string(from.Wire()))
	err := m.f.Event(context.WithoutCancel(ctx), event)
	if err != nil {
		var nt fsm.NoTransitionError
		if errors.As(err, &nt) {
			return from, false, nil
		}
		return from, false, fmt.Errorf("statemachine: %s from %s: %w", event, from.Wire(), err)
	}
	to, ok := ParseStatus(events.Status(m.f.Current()))
	if !ok {
		return from, false, fmt.Errorf("statemachine: fsm reached unknown state %q", m.f.Current())
	}
	return to, true, nil
}

// change fires event and, when it changes the state, records the transition.
func (m *Machine) change(ctx context.Context, d *Device, event string, code events.ReasonCode, reason string, at, observed int64, out []Transition) ([]Transition, error) {
	to, changed, err := m.fire(ctx, d.Status, event)
	if err != nil || !changed {
		return out, err
	}
	if at < d.Since { // never stamp a change before the current status began
		at = d.Since
	}
	out = append(out, Transition{From: d.Status, To: to, ReasonCode: code, Reason: reason, At: at, ObservedAt: observed})
	d.Status, d.Since = to, at
	return out, nil
}

// Deadline returns when the device's next timeout becomes due, in Unix ns:
// the first instant at which [Machine.Apply] with a tick would change it, or
// 0 when no timeout is pending (registered, disconnected, and
// temporarily_offline while a hold is on: the partition reschedules its
// devices when the hold ends). Silence of exactly offline_after is still
// connected, so a connected device's deadline is last heartbeat +
// offline_after + 1 ns; a temporarily_offline one's is max(last liveness,
// end of the last hold) + disconnect_after.
func Deadline(d *Device, th Thresholds, h Hold) int64 {
	switch d.Status {
	case Connected:
		return d.LastHeartbeat + int64(th.OfflineAfter) + 1
	case TemporarilyOffline:
		if d.LastLiveness == 0 || h.Active {
			return 0
		}
		return disconnectBase(d, h) + int64(th.DisconnectAfter)
	}
	return 0
}

// timeouts applies the timeouts due at now (catch-up): connected →
// temporarily_offline when now − last heartbeat > offline_after, stamped last
// heartbeat + offline_after; temporarily_offline → disconnected when no hold
// is on and now − max(last liveness, end of the last hold) ≥
// disconnect_after, stamped with that instant.
func (m *Machine) timeouts(ctx context.Context, d *Device, th Thresholds, h Hold, now, observed int64, out []Transition) ([]Transition, error) {
	var err error
	if d.Status == Connected && now-d.LastHeartbeat > int64(th.OfflineAfter) {
		silence := time.Duration(observed - d.LastHeartbeat).Truncate(time.Second)
		reason := fmt.Sprintf("no heartbeat for %s (offline_after %s)", fmtDur(silence), fmtDur(th.OfflineAfter))
		if d.LastPingOK && d.LastPing > d.LastHeartbeat {
			reason += "; answers probes"
		}
		if h.Active {
			reason += "; outage hold on, not disconnected while it lasts"
			if h.Reason != "" {
				reason += " (" + h.Reason + ")"
			}
		}
		out, err = m.change(ctx, d, evHeartbeatTimeout, events.ReasonHeartbeatTimeout, reason,
			d.LastHeartbeat+int64(th.OfflineAfter), observed, out)
		if err != nil {
			return out, err
		}
	}
	if d.Status == TemporarilyOffline && d.LastLiveness != 0 && !h.Active && now-disconnectBase(d, h) >= int64(th.DisconnectAfter) {
		reason := fmt.Sprintf("no heartbeat for %s (disconnect_after %s)", fmtDur(time.Duration(observed-d.LastHeartbeat).Truncate(time.Second)), fmtDur(th.DisconnectAfter))
		if d.LastLiveness > d.LastHeartbeat {
			reason = fmt.Sprintf("no heartbeat and no successful probe for %s (disconnect_after %s)", fmtDur(time.Duration(observed-d.LastLiveness).Truncate(time.Second)), fmtDur(th.DisconnectAfter))
		}
		if h.End > d.LastLiveness {
			reason += fmt.Sprintf("; counted from the end of the outage hold at %s", time.Unix(0, h.End).UTC().Format(time.RFC3339))
		}
		out, err = m.change(ctx, d, evLivenessTimeout, events.ReasonLivenessTimeout, reason,
			disconnectBase(d, h)+int64(th.DisconnectAfter), observed, out)
	}
	return out, err
}

// Apply applies one input to one device, appends the transitions it causes
// to out (in the order they took effect) and returns it. The rules:
//
//   - Heartbeat at t newer than the last one: first any timeout that was
//     already due at t (so history does not depend on tick placement), then
//     → connected at t. A heartbeat not newer than the last (late or
//     duplicated) changes nothing.
//   - Outage hold (in.Hold): while it is active no device becomes
//     disconnected; after it ended, disconnect_after counts from the later
//     of the last liveness and the end of the hold.
//   - Tick at T: the timeouts due at T. Silence of exactly offline_after is
//     still connected; temporarily_offline starts when silence exceeds it;
//     disconnected starts when silence (since the last liveness) reaches
//     disconnect_after. Timeout transitions are stamped with the moment the
//     threshold was crossed and carry T as ObservedAt.
//   - Ping result, judged at its checked_at c: ignored when the device has
//     never sent a heartbeat or c − last heartbeat < ping_ignore_within (a
//     failure observed before the latest heartbeat is therefore ignored
//     however late it arrives), and when not newer than the last ping.
//     Otherwise, after the timeouts due at c: a failure moves connected →
//     temporarily_offline at c (never straight to disconnected); a success is
//     liveness (holds off disconnected) and moves disconnected →
//     temporarily_offline, but never to connected: only a heartbeat does.
//
// Errors come only from the transition graph rejecting a change, which the
// guards above rule out; the device is left consistent either way.
func (m *Machine) Apply(ctx context.Context, d *Device, th Thresholds, in Input, out []Transition) ([]Transition, error) {
	var err error
	switch in.Kind {
	case KindTick:
		return m.timeouts(ctx, d, th, in.Hold, in.At, in.At, out)

	case KindHeartbeat:
		if in.At <= d.LastHeartbeat {
			return out, nil // late or duplicate: never moves anything backwards
		}
		if d.LastHeartbeat != 0 {
			if out, err = m.timeouts(ctx, d, th, in.Hold, in.At, in.At, out); err != nil {
				return out, err
			}
		}
		prev := d.LastHeartbeat
		d.LastHeartbeat = in.At
		if in.At > d.LastLiveness {
			d.LastLiveness = in.At
		}
		if d.Status == Connected {
			return out, nil // fast path: no fsm call for the common case
		}
		reason := "heartbeat received"
		if prev != 0 {
			reason = fmt.Sprintf("heartbeat after %s of silence", fmtDur(time.Duration(in.At-prev).Truncate(time.Second)))
		}
		return m.change(ctx, d, evHeartbeat, events.ReasonHeartbeat, reason, in.At, in.At, out)

	case KindPingOK, KindPingFailed:
		c := in.CheckedAt
		if c == 0 || c > in.At {
			c = in.At
		}
		if PingIgnored(d, th, in) != "" {
			return out, nil
		}
		d.LastPing, d.LastPingOK = c, in.Kind == KindPingOK
		if out, err = m.timeouts(ctx, d, th, in.Hold, c, in.At, out); err != nil {
			return out, err
		}
		age := fmtDur(time.Duration(c - d.LastHeartbeat).Truncate(time.Second))
		if in.Kind == KindPingFailed {
			if d.Status != Connected {
				return out, nil
			}
			return m.change(ctx, d, evPingFailed, events.ReasonPingFailed,
				fmt.Sprintf("probe failed %s after the last heartbeat", age), c, in.At, out)
		}
		if c > d.LastLiveness {
			d.LastLiveness = c
		}
		if d.Status != Disconnected {
			return out, nil
		}
		return m.change(ctx, d, evPingOK, events.ReasonPingOK,
			fmt.Sprintf("answers probes but sent no heartbeat for %s", age), c, in.At, out)
	}
	return out, fmt.Errorf("statemachine: unknown input kind %d", in.Kind)
}

// Reasons a ping result is ignored, as returned by [PingIgnored].
const (
	PingNoHeartbeat    = "ping_no_heartbeat"
	PingHeartbeatFresh = "ping_heartbeat_fresh"
	PingNotNewer       = "ping_not_newer"
)

// PingIgnored says why [Machine.Apply] ignores the ping result in (judged
// at its checked_at, clamped to its receive time): the device has never sent
// a heartbeat, its last heartbeat is younger than ping_ignore_within at
// checked_at (a failure observed before the newest heartbeat included), or a
// newer ping result was already considered. It returns "" when the result
// counts, and for inputs that are not ping results.
func PingIgnored(d *Device, th Thresholds, in Input) string {
	if in.Kind != KindPingOK && in.Kind != KindPingFailed {
		return ""
	}
	c := in.CheckedAt
	if c == 0 || c > in.At {
		c = in.At
	}
	switch {
	case d.LastHeartbeat == 0:
		return PingNoHeartbeat
	case c-d.LastHeartbeat < int64(th.PingIgnoreWithin):
		return PingHeartbeatFresh
	case c <= d.LastPing:
		return PingNotNewer
	}
	return ""
}

// fmtDur prints a duration in whole seconds, truncated: "41s", "300s" (never
// "5m0s"), as the README promises for human reasons.
func fmtDur(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) + "s" }
