package trace

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// HeartbeatInterval is the period at which a trace node that is up sends
// heartbeats (30 s, the service's default heartbeat interval).
const HeartbeatInterval = 30 * time.Second

// ErrInvalidWindow is wrapped by [Window.Validate] errors.
var ErrInvalidWindow = errors.New("trace: invalid window")

// Window is a span [From, To) of trace time. Both ends are whole seconds
// (the trace's resolution). To is also the replay's end time T_end: the time
// of the final clock tick at which the oracle's final status is evaluated.
type Window struct {
	From, To time.Time
}

// Day returns the window of the UTC calendar day that contains t.
func Day(t time.Time) Window {
	t = t.UTC()
	from := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	return Window{From: from, To: from.Add(24 * time.Hour)}
}

// ParseWindow parses "FROM/TO" or "FROM+DURATION" where FROM and TO are RFC
// 3339 times or YYYY-MM-DD dates (midnight UTC) and DURATION is a Go duration
// ("2006-09-21/2006-09-22", "2006-09-21T06:00:00Z+1h"). A lone date or time
// is its UTC day.
func ParseWindow(s string) (Window, error) {
	parseTime := func(v string) (time.Time, error) {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return t.UTC(), nil
		}
		t, err := time.Parse("2006-01-02", v)
		if err != nil {
			return time.Time{}, fmt.Errorf("%w: %q is neither RFC 3339 nor YYYY-MM-DD", ErrInvalidWindow, v)
		}
		return t, nil
	}
	var w Window
	switch {
	case strings.Contains(s, "/"):
		a, b, _ := strings.Cut(s, "/")
		from, err := parseTime(a)
		if err != nil {
			return w, err
		}
		to, err := parseTime(b)
		if err != nil {
			return w, err
		}
		w = Window{From: from, To: to}
	default:
		if t, err := parseTime(s); err == nil {
			w = Day(t)
			break
		}
		i := strings.LastIndex(s, "+")
		if i < 0 {
			return w, fmt.Errorf("%w: %q: want FROM/TO, FROM+DURATION or a date", ErrInvalidWindow, s)
		}
		from, err := parseTime(s[:i])
		if err != nil {
			return w, err
		}
		d, err := time.ParseDuration(s[i+1:])
		if err != nil {
			return w, fmt.Errorf("%w: duration %q: %v", ErrInvalidWindow, s[i+1:], err)
		}
		w = Window{From: from, To: from.Add(d)}
	}
	return w, w.Validate()
}

// String formats the window as "FROM/TO" in RFC 3339 UTC ([ParseWindow]
// reads it back).
func (w Window) String() string {
	return w.From.UTC().Format(time.RFC3339) + "/" + w.To.UTC().Format(time.RFC3339)
}

// Validate checks that From < To and both are whole seconds.
func (w Window) Validate() error {
	if w.From.IsZero() || w.To.IsZero() {
		return fmt.Errorf("%w: from and to are required", ErrInvalidWindow)
	}
	if !w.From.Before(w.To) {
		return fmt.Errorf("%w: from %s is not before to %s", ErrInvalidWindow, w.From.Format(time.RFC3339), w.To.Format(time.RFC3339))
	}
	if w.From.Nanosecond() != 0 || w.To.Nanosecond() != 0 {
		return fmt.Errorf("%w: from and to must be whole seconds", ErrInvalidWindow)
	}
	return nil
}

// Duration is To − From.
func (w Window) Duration() time.Duration { return w.To.Sub(w.From) }

func (w Window) unix() (from, to int64) { return w.From.Unix(), w.To.Unix() }

// NodeHeartbeats is the heartbeat schedule of one node in a window.
type NodeHeartbeats struct {
	// Node is the node name (the device id).
	Node string
	// Times are the heartbeat times in Unix seconds, strictly increasing,
	// all in [From, To) of the window they were generated for.
	Times []int64
}

// At returns heartbeat i as a UTC time.
func (h NodeHeartbeats) At(i int) time.Time { return time.Unix(h.Times[i], 0).UTC() }

// TimesUTC returns the heartbeat times as UTC times.
func (h NodeHeartbeats) TimesUTC() []time.Time {
	out := make([]time.Time, len(h.Times))
	for i := range h.Times {
		out[i] = h.At(i)
	}
	return out
}

// Heartbeats returns the times (Unix seconds) at which the node heartbeats
// inside w, with period every (whole seconds; 0 means [HeartbeatInterval]).
//
// The phase is the interval's own: an up interval [s, e) yields s, s+every,
// s+2·every, … while < e, and of those only the ones in [w.From, w.To) are
// kept. A node up across the window start therefore first heartbeats at the
// first s+k·every ≥ From (somewhere in [From, From+every)), exactly as it
// would have in the full trace; an excerpt that keeps the rows overlapping the
// window gives the same heartbeats as the whole trace. A node up across the
// window end heartbeats up to the last s+k·every < To. Down intervals and
// time outside the node's rows yield nothing; zero-length up intervals yield
// nothing.
func (n *Node) Heartbeats(w Window, every time.Duration) []int64 {
	step := stepSeconds(every)
	from, to := w.unix()
	var out []int64
	for _, iv := range n.Intervals {
		if !iv.Up || iv.End <= from || iv.Start >= to {
			continue
		}
		t := iv.Start
		if t < from {
			k := (from - t + step - 1) / step
			t += k * step
		}
		end := min(iv.End, to)
		for ; t < end; t += step {
			out = append(out, t)
		}
	}
	return out
}

func stepSeconds(every time.Duration) int64 {
	if every == 0 {
		every = HeartbeatInterval
	}
	s := int64(every / time.Second)
	if s < 1 || every%time.Second != 0 {
		panic(fmt.Sprintf("trace: heartbeat period %s is not a positive whole number of seconds", every))
	}
	return s
}

// Heartbeats returns the heartbeat schedule of every node of the trace in w
// (see [Node.Heartbeats]), in trace order; nodes with no heartbeat in the
// window are included with empty Times (they are still registered by
// [Import] and stay "registered" in the oracle). every must be a whole number
// of seconds (0: [HeartbeatInterval]); other values panic.
func (t *Trace) Heartbeats(w Window, every time.Duration) []NodeHeartbeats {
	out := make([]NodeHeartbeats, len(t.Nodes))
	for i, nd := range t.Nodes {
		out[i] = NodeHeartbeats{Node: nd.Name, Times: nd.Heartbeats(w, every)}
	}
	return out
}

// Excerpt returns a trace with only the rows of t that overlap w: intervals
// with Start < To and End > From, plus zero-length intervals with Start in
// [From, To). So that the excerpt still names every node, a node with no
// such row keeps one row that does not overlap the window: its first row
// after the window, or else its last row before it. The heartbeats of the
// excerpt in w equal those of t in w (a test checks it on the full trace).
func (t *Trace) Excerpt(w Window) *Trace {
	from, to := w.unix()
	out := &Trace{byName: make(map[string]*Node, len(t.Nodes))}
	for _, nd := range t.Nodes {
		c := &Node{Name: nd.Name, ID: nd.ID}
		for _, iv := range nd.Intervals {
			if (iv.Start < to && iv.End > from) || (iv.Start == iv.End && iv.Start >= from && iv.Start < to) {
				c.Intervals = append(c.Intervals, iv)
			}
		}
		if len(c.Intervals) == 0 && len(nd.Intervals) > 0 {
			keep := nd.Intervals[len(nd.Intervals)-1]
			for _, iv := range nd.Intervals {
				if iv.Start >= to {
					keep = iv
					break
				}
			}
			c.Intervals = append(c.Intervals, keep)
		}
		out.Nodes = append(out.Nodes, c)
		out.byName[c.Name] = c
	}
	return out
}
