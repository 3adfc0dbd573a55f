package trace

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzRead: the parser never panics, and whatever it accepts it writes back
// to a table that parses to the same trace.
func FuzzRead(f *testing.F) {
	f.Add([]byte(hdr + "    0\t    0\t    0\t    5\tG1/site1/c1/node1\t         0\t   1000\t   1100\t       NULL\n"))
	f.Add([]byte(hdr + row("0", "0", "0", "5", "n1", "1", "100", "200", "NULL") + row("1", "0", "0", "5", "n1", "0", "200", "300", "NULL")))
	f.Add([]byte(row("0", "0", "0", "5", "a b/ü", "1", "5", "5", "NULL") + "\n"))
	f.Add([]byte("#\n\t\t\t\t\t\t\t\t\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		tr, err := Read(bytes.NewReader(in))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := tr.Write(&buf); err != nil {
			t.Fatal(err)
		}
		back, err := Read(&buf)
		if err != nil {
			t.Fatalf("re-read of a written trace: %v\n%s", err, buf.String())
		}
		if !reflect.DeepEqual(back.Nodes, tr.Nodes) {
			t.Fatalf("round trip differs")
		}
	})
}
