package trace

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

const hdr = Header + "\n"

func row(fields ...string) string { return strings.Join(fields, "\t") + "\n" }

func TestReadParsesPaddedRows(t *testing.T) {
	t.Parallel()
	in := hdr +
		"    0\t    0\t    0\t    5\tG1/site1/c1/node1\t         0\t   1000\t   1100\t       NULL\n" +
		"    1\t    0\t    0\t    5\tG1/site1/c1/node1\t         1\t   1100\t   1200\t       NULL\n" +
		"    0\t    0\t    7\t    5\tG1/site2/c1/node3\t         1\t   1050\t   1050\t       NULL\n" +
		"    1\t    0\t    7\t    5\tG1/site2/c1/node3\t         0\t   1050\t   1300\t       NULL\n"
	tr, err := Read(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Nodes) != 2 || tr.Rows() != 4 {
		t.Fatalf("nodes %d rows %d", len(tr.Nodes), tr.Rows())
	}
	n := tr.Node("G1/site1/c1/node1")
	want := []Interval{{Start: 1000, End: 1100, Up: false, EventID: 0}, {Start: 1100, End: 1200, Up: true, EventID: 1}}
	if !reflect.DeepEqual(n.Intervals, want) {
		t.Fatalf("intervals %+v", n.Intervals)
	}
	if tr.Node("G1/site2/c1/node3").ID != 7 {
		t.Fatal("node id")
	}
	if f, l := tr.Span(); f != 1000 || l != 1300 {
		t.Fatalf("span %d %d", f, l)
	}
	// Write then Read gives the same trace.
	var buf bytes.Buffer
	if err := tr.Write(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Nodes, tr.Nodes) {
		t.Fatal("round trip differs")
	}
}

func TestReadRefusesMalformedRows(t *testing.T) {
	t.Parallel()
	ok := row("0", "0", "0", "5", "n1", "1", "100", "200", "NULL")
	cases := []struct {
		name, in, msg string
		line          int
	}{
		{"too few columns", hdr + row("0", "0", "0", "5", "n1", "1", "100", "200"), "want 9 tab-separated columns, got 8", 2},
		{"too many columns", hdr + row("0", "0", "0", "5", "n1", "1", "100", "200", "NULL", "x"), "got 10", 2},
		{"space separated", hdr + "0 0 0 5 n1 1 100 200 NULL\n", "got 1", 2},
		{"bad type", hdr + row("0", "0", "0", "5", "n1", "2", "100", "200", "NULL"), "event_type: want 0 (down) or 1 (up), got 2", 2},
		{"non numeric start", hdr + row("0", "0", "0", "5", "n1", "1", "1e3", "200", "NULL"), `event_start_time: "1e3" is not an integer`, 2},
		{"empty stop", hdr + row("0", "0", "0", "5", "n1", "1", "100", " ", "NULL"), `event_stop_time: "" is not an integer`, 2},
		{"stop before start", hdr + row("0", "0", "0", "5", "n1", "1", "300", "200", "NULL"), "stops at 200 before it starts at 300", 2},
		{"empty name", hdr + row("0", "0", "0", "5", " ", "1", "100", "200", "NULL"), "not a valid device id", 2},
		{"gap", hdr + ok + row("1", "0", "0", "5", "n1", "0", "201", "300", "NULL"), "starts at 201 but the previous one ended at 200", 3},
		{"overlap", hdr + ok + row("1", "0", "0", "5", "n1", "0", "150", "300", "NULL"), "gap or overlap", 3},
		{"two ups", hdr + ok + row("1", "0", "0", "5", "n1", "1", "200", "300", "NULL"), "two up intervals in a row", 3},
		{"node id changes", hdr + ok + row("1", "0", "9", "5", "n1", "0", "200", "300", "NULL"), "node_id 9, earlier rows said 0", 3},
		{"empty line inside", hdr + ok + "\n" + row("1", "0", "0", "5", "n1", "0", "200", "300", "NULL"), "empty line", 3},
		{"second header", hdr + ok + hdr, "want 9 tab-separated columns", 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Read(strings.NewReader(c.in))
			var pe *ParseError
			if !errors.As(err, &pe) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("want *ParseError wrapping ErrMalformed, got %v", err)
			}
			if pe.Line != c.line || !strings.Contains(pe.Msg, c.msg) {
				t.Fatalf("got line %d %q, want line %d containing %q", pe.Line, pe.Msg, c.line, c.msg)
			}
		})
	}
}

func TestReadAcceptsNoHeaderAndTrailingEmptyLines(t *testing.T) {
	t.Parallel()
	tr, err := Read(strings.NewReader(row("0", "0", "0", "5", "n1", "1", "100", "200", "NULL") + "\n\n"))
	if err != nil || tr.Rows() != 1 {
		t.Fatalf("rows %v err %v", tr, err)
	}
}

func TestTestdataDayExcerpt(t *testing.T) {
	t.Parallel()
	fi, err := os.Stat(TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 200<<10 {
		t.Fatalf("excerpt is %d bytes; keep it well under 1 MB", fi.Size())
	}
	tr, err := Open(TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Nodes) != 1288 {
		t.Fatalf("excerpt has %d nodes, want all 1288", len(tr.Nodes))
	}
	w := TestdataDayWindow()
	s, err := tr.Summarize(w, DefaultThresholds())
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + s.String())
	want := OutageClasses{UpTo40s: 132, To300s: 821, Over300s: 309}
	if s.Outages != want {
		t.Fatalf("outages %+v, want %+v", s.Outages, want)
	}
	if s.NodesWithHeartbeats != 1128 || s.Heartbeats != 3128660 {
		t.Fatalf("nodes with heartbeats %d, heartbeats %d", s.NodesWithHeartbeats, s.Heartbeats)
	}
}

// TestExcerptMatchesFullTrace checks, when the full trace is present
// ([FullPath]: $DEVSTATUS_TRACE, by default beside the checkout, as on CI),
// that the committed excerpt gives the same heartbeats as the whole trace in
// the day, and that the whole trace has the README's outage figures.
func TestExcerptMatchesFullTrace(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("-short or -race: the full trace takes seconds (half a minute under -race) to read")
	}
	full := FullPath()
	if _, err := os.Stat(full); err != nil {
		t.Skipf("full trace not present (%v); it is %s", err, Source)
	}
	t.Parallel()
	tr, err := Open(full)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Nodes) != 1288 || tr.Rows() != 588463 {
		t.Fatalf("nodes %d rows %d", len(tr.Nodes), tr.Rows())
	}
	all := OutageClasses{}
	for _, nd := range tr.Nodes {
		for _, iv := range nd.Intervals {
			if !iv.Up {
				all.add(iv.Len())
			}
		}
	}
	if (all != OutageClasses{UpTo40s: 2439, To300s: 188430, Over300s: 103276}) {
		t.Fatalf("whole-trace outages %+v differ from the README's figures", all)
	}
	ex, err := Open(TestdataDay())
	if err != nil {
		t.Fatal(err)
	}
	w := TestdataDayWindow()
	if !reflect.DeepEqual(ex.Heartbeats(w, 0), tr.Heartbeats(w, 0)) {
		t.Fatal("excerpt heartbeats differ from the full trace's")
	}
	if !reflect.DeepEqual(ex.Nodes, tr.Excerpt(w).Nodes) {
		t.Fatal("committed excerpt differs from Excerpt(full trace); regenerate it with devicesim excerpt")
	}
	// A window inside the day: the excerpt still matches.
	sub := Window{From: w.From.Add(7 * time.Hour), To: w.From.Add(9*time.Hour + 17*time.Second)}
	if !reflect.DeepEqual(ex.Heartbeats(sub, 0), tr.Heartbeats(sub, 0)) {
		t.Fatal("excerpt heartbeats differ in a sub-window")
	}
}

// TestFullPath checks how DEVSTATUS_TRACE is resolved: unset, the default
// beside the repository root; relative, against the root; absolute, as is.
func TestFullPath(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	t.Setenv(EnvPath, "")
	if got, want := FullPath(), filepath.Join(root, DefaultPath); got != want {
		t.Fatalf("unset: %q, want %q", got, want)
	}
	t.Setenv(EnvPath, "data/t.tab")
	if got, want := FullPath(), filepath.Join(root, "data/t.tab"); got != want {
		t.Fatalf("relative: %q, want %q", got, want)
	}
	abs := filepath.Join(t.TempDir(), "event_trace.tab.xz")
	t.Setenv(EnvPath, abs)
	if got := FullPath(); got != abs {
		t.Fatalf("absolute: %q, want %q", got, abs)
	}
	// Outside the repository (no go.mod of ours above the working directory)
	// the root still comes from where the package was built.
	t.Chdir(t.TempDir())
	t.Setenv(EnvPath, "")
	if got, want := FullPath(), filepath.Join(root, DefaultPath); got != want {
		t.Fatalf("outside the repository: %q, want %q", got, want)
	}
}
