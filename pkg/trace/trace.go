package trace

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ulikunitz/xz"

	"github.com/devstatus/devstatus/events"
)

// DefaultPath is where the full Grid'5000 event table is looked for when
// $DEVSTATUS_TRACE is unset, relative to the repository root: a data folder
// beside the checkout. Use [FullPath], which applies the setting; most tests
// use the committed one-day excerpt ([TestdataDay]) instead.
const DefaultPath = "../shared/data/traces/grid5000/event_trace.tab.xz"

// Header is the column header line of the event table, written by
// [WriteExcerpt] and accepted (any line starting with '#') by [Read] as the
// first line.
const Header = "# event_id component_id node_id platform_id node_name event_type event_start_time event_stop_time event_end_reason"

// numFields is the number of tab-separated columns of a row.
const numFields = 9

// ErrMalformed is wrapped by every [*ParseError].
var ErrMalformed = errors.New("trace: malformed event table")

// ParseError reports a row [Read] refused. It unwraps to [ErrMalformed].
type ParseError struct {
	// Line is the 1-based line number in the (decompressed) table.
	Line int
	// Msg says what is wrong.
	Msg string
}

func (e *ParseError) Error() string { return fmt.Sprintf("trace: line %d: %s", e.Line, e.Msg) }

// Unwrap returns [ErrMalformed].
func (e *ParseError) Unwrap() error { return ErrMalformed }

// Interval is one row of the trace: a node was up (Up) or down over
// [Start, End), in Unix seconds. Zero-length intervals (Start == End) occur in
// the Grid'5000 trace (25 rows) and are kept.
type Interval struct {
	Start, End int64
	Up         bool
	// EventID is the row's event_id column (unique per node, not globally).
	EventID int64
}

// Len is the interval's length in seconds.
func (iv Interval) Len() int64 { return iv.End - iv.Start }

// Node is one machine of the trace and its intervals, in time order. Each
// interval starts where the previous one ended and up and down alternate
// ([Read] checks both).
type Node struct {
	// Name is the node_name column, e.g. "G1/site1/c1/node1"; it is the device
	// id devstatus sees.
	Name string
	// ID is the node_id column.
	ID        int64
	Intervals []Interval
}

// Trace is a parsed event table.
type Trace struct {
	// Nodes in order of first appearance in the table.
	Nodes  []*Node
	byName map[string]*Node
}

// Node returns the node called name, or nil.
func (t *Trace) Node(name string) *Node { return t.byName[name] }

// Rows is the number of intervals over all nodes.
func (t *Trace) Rows() int {
	n := 0
	for _, nd := range t.Nodes {
		n += len(nd.Intervals)
	}
	return n
}

// Span returns the earliest interval start and the latest interval end over
// all nodes, in Unix seconds (0, 0 for an empty trace).
func (t *Trace) Span() (first, last int64) {
	for i, nd := range t.Nodes {
		if len(nd.Intervals) == 0 {
			continue
		}
		s, e := nd.Intervals[0].Start, nd.Intervals[len(nd.Intervals)-1].End
		if i == 0 || s < first {
			first = s
		}
		if e > last {
			last = e
		}
	}
	return first, last
}

// Open reads an event table from a file; a name ending in ".xz" is
// decompressed on the fly (github.com/ulikunitz/xz, no external tool).
func Open(path string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	var r io.Reader = bufio.NewReaderSize(f, 1<<16)
	if strings.HasSuffix(path, ".xz") {
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("trace: %s: xz: %w", filepath.Base(path), err)
		}
		r = xr
	}
	t, err := Read(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return t, nil
}

// Read parses an event table (uncompressed): an optional first line starting
// with '#' (the header), then one row per line with 9 tab-separated columns
// (values may be padded with spaces), the Failure Trace Archive format:
// event_id component_id node_id platform_id node_name event_type
// event_start_time event_stop_time event_end_reason. event_type is 1 (up) or
// 0 (down); times are Unix seconds.
//
// Read is strict: a wrong column count, a non-numeric field, an event_type
// other than 0/1, a stop before its start, a node name that is not a valid
// device id, a node_id that changes for one name, or a node whose rows do not
// follow on from each other (gap, overlap, two ups or two downs in a row)
// returns a [*ParseError] with the line number. A trailing empty line is
// accepted; an empty line elsewhere is an error.
func Read(r io.Reader) (*Trace, error) {
	t := &Trace{byName: make(map[string]*Node)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	line := 0
	pendingEmpty := 0
	var fields [numFields][]byte
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if line == 1 && len(b) > 0 && b[0] == '#' {
			continue
		}
		if len(bytes.TrimSpace(b)) == 0 {
			if pendingEmpty == 0 {
				pendingEmpty = line
			}
			continue
		}
		if pendingEmpty != 0 {
			return nil, &ParseError{Line: pendingEmpty, Msg: "empty line inside the table"}
		}
		cols := bytes.Split(b, []byte{'\t'})
		if len(cols) != numFields {
			return nil, &ParseError{Line: line, Msg: fmt.Sprintf("want %d tab-separated columns, got %d", numFields, len(cols))}
		}
		copy(fields[:], cols)
		if err := t.addRow(line, &fields); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("trace: read after line %d: %w", line, err)
	}
	return t, nil
}

var columnNames = [numFields]string{"event_id", "component_id", "node_id", "platform_id", "node_name",
	"event_type", "event_start_time", "event_stop_time", "event_end_reason"}

func (t *Trace) addRow(line int, f *[numFields][]byte) error {
	num := func(col int) (int64, error) {
		s := string(bytes.TrimSpace(f[col]))
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, &ParseError{Line: line, Msg: fmt.Sprintf("column %s: %q is not an integer", columnNames[col], s)}
		}
		return v, nil
	}
	var vals [numFields]int64
	for _, col := range []int{0, 1, 2, 3, 5, 6, 7} {
		v, err := num(col)
		if err != nil {
			return err
		}
		vals[col] = v
	}
	name := string(bytes.TrimSpace(f[4]))
	if err := events.ValidateDeviceID(name); err != nil {
		return &ParseError{Line: line, Msg: fmt.Sprintf("column node_name: %q is not a valid device id: %v", name, err)}
	}
	typ := vals[5]
	if typ != 0 && typ != 1 {
		return &ParseError{Line: line, Msg: fmt.Sprintf("column event_type: want 0 (down) or 1 (up), got %d", typ)}
	}
	iv := Interval{Start: vals[6], End: vals[7], Up: typ == 1, EventID: vals[0]}
	if iv.End < iv.Start {
		return &ParseError{Line: line, Msg: fmt.Sprintf("node %s: interval stops at %d before it starts at %d", name, iv.End, iv.Start)}
	}
	nd := t.byName[name]
	if nd == nil {
		nd = &Node{Name: name, ID: vals[2]}
		t.byName[name] = nd
		t.Nodes = append(t.Nodes, nd)
	} else if nd.ID != vals[2] {
		return &ParseError{Line: line, Msg: fmt.Sprintf("node %s: node_id %d, earlier rows said %d", name, vals[2], nd.ID)}
	}
	if k := len(nd.Intervals); k > 0 {
		prev := nd.Intervals[k-1]
		if iv.Start != prev.End {
			return &ParseError{Line: line, Msg: fmt.Sprintf("node %s: interval starts at %d but the previous one ended at %d (gap or overlap)", name, iv.Start, prev.End)}
		}
		if iv.Up == prev.Up {
			return &ParseError{Line: line, Msg: fmt.Sprintf("node %s: two %s intervals in a row", name, upDown(iv.Up))}
		}
	}
	nd.Intervals = append(nd.Intervals, iv)
	return nil
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
