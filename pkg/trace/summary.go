package trace

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/ulikunitz/xz"

	"github.com/devstatus/devstatus/events"
)

// OutageClasses counts down intervals by length, with the bounds the traces
// README uses: ≤ 40 s, 40 s < d ≤ 300 s, > 300 s. Zero-length down rows count
// as ≤ 40 s (the README's figures include them).
type OutageClasses struct {
	UpTo40s, To300s, Over300s int
}

// Total is the sum of the three classes.
func (c OutageClasses) Total() int { return c.UpTo40s + c.To300s + c.Over300s }

func (c *OutageClasses) add(d int64) {
	switch {
	case d <= 40:
		c.UpTo40s++
	case d <= 300:
		c.To300s++
	default:
		c.Over300s++
	}
}

// Summary describes a window of the trace and what the oracle expects of it.
type Summary struct {
	Window Window
	// Nodes is the number of nodes in the trace.
	Nodes int
	// NodesWithHeartbeats is the number of nodes that heartbeat at least once
	// in the window (the others stay registered).
	NodesWithHeartbeats int
	// Heartbeats is the number of heartbeats in the window.
	Heartbeats int
	// Outages counts the down intervals that start in [From, To), by their
	// full length (not clipped to the window).
	Outages OutageClasses
	// Transitions counts the oracle's expected transitions by reason code,
	// with the thresholds given to [Trace.Summarize].
	Transitions map[events.ReasonCode]int
	// Final counts the oracle's final statuses at To.
	Final map[events.Status]int
}

// Summarize computes the [Summary] of w, with heartbeats every
// [HeartbeatInterval] and the oracle's thresholds th.
func (t *Trace) Summarize(w Window, th Thresholds) (Summary, error) {
	s := Summary{Window: w, Nodes: len(t.Nodes), Transitions: map[events.ReasonCode]int{}, Final: map[events.Status]int{}}
	if err := w.Validate(); err != nil {
		return s, err
	}
	from, to := w.unix()
	for _, nd := range t.Nodes {
		for _, iv := range nd.Intervals {
			if !iv.Up && iv.Start >= from && iv.Start < to {
				s.Outages.add(iv.Len())
			}
		}
	}
	hbs := t.Heartbeats(w, HeartbeatInterval)
	exps, err := ExpectAll(hbs, w.To, th)
	if err != nil {
		return s, err
	}
	for i, e := range exps {
		s.Heartbeats += len(hbs[i].Times)
		if len(hbs[i].Times) > 0 {
			s.NodesWithHeartbeats++
		}
		for _, tr := range e.Transitions {
			s.Transitions[tr.ReasonCode]++
		}
		s.Final[e.Final]++
	}
	return s, nil
}

// String formats the summary on a few lines.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "window %s\n", s.Window)
	fmt.Fprintf(&b, "nodes %d, with heartbeats %d, heartbeats %d\n", s.Nodes, s.NodesWithHeartbeats, s.Heartbeats)
	fmt.Fprintf(&b, "outages starting in window: ≤40s %d, 40–300s %d, >300s %d\n", s.Outages.UpTo40s, s.Outages.To300s, s.Outages.Over300s)
	fmt.Fprintf(&b, "expected transitions: heartbeat %d, heartbeat_timeout %d, liveness_timeout %d\n",
		s.Transitions[events.ReasonHeartbeat], s.Transitions[events.ReasonHeartbeatTimeout], s.Transitions[events.ReasonLivenessTimeout])
	fmt.Fprintf(&b, "final status at %s:", s.Window.To.UTC().Format(time.RFC3339))
	for _, st := range events.Statuses {
		fmt.Fprintf(&b, " %s %d", st, s.Final[st])
	}
	return b.String()
}

// Write writes the trace as an event table (header line, one row per
// interval, nodes in trace order) that [Read] parses back to an equal trace.
// The component, platform and end-reason columns are written as the
// Grid'5000 trace has them (0, 5, NULL).
func (t *Trace) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, Header)
	for _, nd := range t.Nodes {
		for _, iv := range nd.Intervals {
			typ := 0
			if iv.Up {
				typ = 1
			}
			fmt.Fprintf(bw, "%d\t0\t%d\t5\t%s\t%d\t%d\t%d\tNULL\n", iv.EventID, nd.ID, nd.Name, typ, iv.Start, iv.End)
		}
	}
	return bw.Flush()
}

// WriteXZ writes the trace like [Trace.Write], xz-compressed, to path.
func (t *Trace) WriteXZ(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	zw, err := xz.NewWriter(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("trace: xz: %w", err)
	}
	if err := t.Write(zw); err != nil {
		f.Close()
		return fmt.Errorf("trace: write %s: %w", path, err)
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("trace: xz close: %w", err)
	}
	return f.Close()
}

// TestdataDate is the UTC day of the committed excerpt: 2006-09-21, chosen
// for its many outages of all three lengths (132 of ≤ 40 s, 821 of 40–300 s,
// 309 of > 300 s starting that day) with 1 128 of the 1 288 nodes up.
var TestdataDate = time.Date(2006, time.September, 21, 0, 0, 0, 0, time.UTC)

// TestdataDayWindow is the window of [TestdataDate].
func TestdataDayWindow() Window { return Day(TestdataDate) }

// TestdataDay returns the path of the committed one-day excerpt of the
// Grid'5000 trace (testdata/g5k-2006-09-21.tab.xz next to this source file):
// every node of the trace, with only the rows that overlap [TestdataDayWindow]
// (see [Trace.Excerpt]). The path is found from this package's source
// location, so it works from any test in the repository; it is for tests,
// not for a deployed binary.
func TestdataDay() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("pkg", "trace", "testdata", testdataDayFile)
	}
	return filepath.Join(filepath.Dir(file), "testdata", testdataDayFile)
}

const testdataDayFile = "g5k-2006-09-21.tab.xz"
