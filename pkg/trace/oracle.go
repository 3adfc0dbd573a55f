package trace

import (
	"errors"
	"fmt"
	"time"

	"github.com/devstatus/devstatus/events"
)

// ErrInvalidThresholds is wrapped by [Thresholds.Validate] errors.
var ErrInvalidThresholds = errors.New("trace: invalid thresholds")

// Thresholds are the state machine's timeouts the oracle applies.
type Thresholds struct {
	// OfflineAfter (O): silence strictly longer than this moves connected to
	// temporarily_offline. Default 40 s.
	OfflineAfter time.Duration
	// DisconnectAfter (D): silence of this or longer moves to disconnected.
	// Default 300 s. Must be greater than OfflineAfter.
	DisconnectAfter time.Duration
}

// DefaultThresholds are the service's defaults: 40 s and 300 s.
func DefaultThresholds() Thresholds {
	return Thresholds{OfflineAfter: 40 * time.Second, DisconnectAfter: 300 * time.Second}
}

// Validate checks 0 < OfflineAfter < DisconnectAfter (the service refuses
// any other set at start).
func (th Thresholds) Validate() error {
	if th.OfflineAfter <= 0 || th.DisconnectAfter <= 0 {
		return fmt.Errorf("%w: offline_after (%s) and disconnect_after (%s) must be positive", ErrInvalidThresholds, th.OfflineAfter, th.DisconnectAfter)
	}
	if th.OfflineAfter >= th.DisconnectAfter {
		return fmt.Errorf("%w: offline_after (%s) must be less than disconnect_after (%s)", ErrInvalidThresholds, th.OfflineAfter, th.DisconnectAfter)
	}
	return nil
}

// Scale divides both thresholds by k (time compression for live replay).
func (th Thresholds) Scale(k float64) Thresholds {
	return Thresholds{OfflineAfter: ScaleDuration(th.OfflineAfter, k), DisconnectAfter: ScaleDuration(th.DisconnectAfter, k)}
}

// ScaleDuration returns d/k rounded to the nanosecond.
func ScaleDuration(d time.Duration, k float64) time.Duration {
	return time.Duration(float64(d)/k + 0.5)
}

// StatusAfter is the status of a device that has heartbeated and then been
// silent for silence: connected while silence ≤ OfflineAfter,
// temporarily_offline while OfflineAfter < silence < DisconnectAfter,
// disconnected from silence ≥ DisconnectAfter.
func (th Thresholds) StatusAfter(silence time.Duration) events.Status {
	switch {
	case silence >= th.DisconnectAfter:
		return events.StatusDisconnected
	case silence > th.OfflineAfter:
		return events.StatusTemporarilyOffline
	default:
		return events.StatusConnected
	}
}

// Transition is one status change the oracle expects.
type Transition struct {
	From, To   events.Status
	ReasonCode events.ReasonCode
	// At is when the transition takes effect: the heartbeat's time for
	// →connected, last heartbeat + threshold for a timeout.
	At time.Time
}

// String formats the transition as "from→to (reason) at RFC3339".
func (t Transition) String() string {
	return fmt.Sprintf("%s→%s (%s) at %s", t.From, t.To, t.ReasonCode, t.At.UTC().Format(time.RFC3339Nano))
}

// Expectation is what the service must show for one device after a replay.
type Expectation struct {
	// Device is the device id.
	Device string
	// Transitions the service must record, oldest first. Registration itself
	// is not a transition: the list starts with registered→connected.
	Transitions []Transition
	// Final is the status at End.
	Final events.Status
	// End is the time the final status is evaluated at (T_end: the last
	// clock tick of the replay).
	End time.Time
	// LastHeartbeat is the last heartbeat time (zero when there was none).
	LastHeartbeat time.Time
	// Heartbeats is how many heartbeats the device sent.
	Heartbeats int
	// Thresholds the expectation was computed with.
	Thresholds Thresholds
}

// StatusAt is the device's status at t ≥ LastHeartbeat, had it sent nothing
// after its last heartbeat: registered if it never heartbeat, else
// [Thresholds.StatusAfter] of t − LastHeartbeat. For t = End it equals Final.
func (e Expectation) StatusAt(t time.Time) events.Status {
	if e.Heartbeats == 0 {
		return events.StatusRegistered
	}
	return e.Thresholds.StatusAfter(t.Sub(e.LastHeartbeat))
}

// ErrBadSchedule is wrapped by [Expect] when heartbeat times are not strictly
// increasing or lie after the end time.
var ErrBadSchedule = errors.New("trace: bad heartbeat schedule")

// Expect is the oracle. Given a device's heartbeat times (strictly
// increasing, observer's time) and the end of the replay (the last clock tick,
// ≥ the last heartbeat), it returns the transitions the state machine must
// emit and the final status, by the state machine's rules:
//
//   - the device is registered until its first heartbeat, and a registered
//     device never times out; the first heartbeat moves it to connected
//     (reason heartbeat);
//   - for consecutive heartbeats a < b: if b−a > O, connected→
//     temporarily_offline at a+O (heartbeat_timeout); if b−a ≥ D, then
//     temporarily_offline→disconnected at a+D (liveness_timeout); if b−a > O,
//     then →connected at b (heartbeat). A gap of exactly O causes nothing;
//   - at the end, the same timeouts with end in place of b, and no
//     →connected.
//
// Because timeouts are stamped with last heartbeat + threshold, and a
// heartbeat that finds an unobserved timeout emits it first, the result does
// not depend on where the clock ticks fell, only on the end time.
func Expect(device string, hbs []time.Time, end time.Time, th Thresholds) (Expectation, error) {
	e := Expectation{Device: device, End: end, Heartbeats: len(hbs), Thresholds: th, Final: events.StatusRegistered}
	if err := th.Validate(); err != nil {
		return e, err
	}
	for i := 1; i < len(hbs); i++ {
		if !hbs[i].After(hbs[i-1]) {
			return e, fmt.Errorf("%w: device %q: heartbeat %d (%s) is not after heartbeat %d (%s)", ErrBadSchedule, device,
				i, hbs[i].Format(time.RFC3339Nano), i-1, hbs[i-1].Format(time.RFC3339Nano))
		}
	}
	if len(hbs) == 0 {
		return e, nil
	}
	last := hbs[len(hbs)-1]
	if end.Before(last) {
		return e, fmt.Errorf("%w: device %q: end %s is before the last heartbeat %s", ErrBadSchedule, device,
			end.Format(time.RFC3339Nano), last.Format(time.RFC3339Nano))
	}
	e.LastHeartbeat = last
	e.Transitions = append(e.Transitions, Transition{From: events.StatusRegistered, To: events.StatusConnected, ReasonCode: events.ReasonHeartbeat, At: hbs[0].UTC()})
	for i := 1; i < len(hbs); i++ {
		if st := appendTimeouts(&e.Transitions, hbs[i-1], hbs[i], th); st != events.StatusConnected {
			e.Transitions = append(e.Transitions, Transition{From: st, To: events.StatusConnected, ReasonCode: events.ReasonHeartbeat, At: hbs[i].UTC()})
		}
	}
	e.Final = appendTimeouts(&e.Transitions, last, end, th)
	return e, nil
}

// appendTimeouts appends the timeouts of a silence from a (a heartbeat, the
// device connected) to b, and returns the status at b (before any heartbeat at b).
func appendTimeouts(trs *[]Transition, a, b time.Time, th Thresholds) events.Status {
	gap := b.Sub(a)
	if gap <= th.OfflineAfter {
		return events.StatusConnected
	}
	*trs = append(*trs, Transition{From: events.StatusConnected, To: events.StatusTemporarilyOffline,
		ReasonCode: events.ReasonHeartbeatTimeout, At: a.Add(th.OfflineAfter).UTC()})
	if gap < th.DisconnectAfter {
		return events.StatusTemporarilyOffline
	}
	*trs = append(*trs, Transition{From: events.StatusTemporarilyOffline, To: events.StatusDisconnected,
		ReasonCode: events.ReasonLivenessTimeout, At: a.Add(th.DisconnectAfter).UTC()})
	return events.StatusDisconnected
}

// ExpectAll runs [Expect] for every node's heartbeats (trace seconds) with the
// replay ending at end, in the order of nodes.
func ExpectAll(nodes []NodeHeartbeats, end time.Time, th Thresholds) ([]Expectation, error) {
	out := make([]Expectation, len(nodes))
	for i, n := range nodes {
		e, err := Expect(n.Node, n.TimesUTC(), end, th)
		if err != nil {
			return nil, err
		}
		out[i] = e
	}
	return out, nil
}
