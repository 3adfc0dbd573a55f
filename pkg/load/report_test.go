package load

import (
	"strings"
	"testing"
)

// TestMemoryTargetJudgedAtAMillion: the worker's memory per device is judged
// against 1 KiB only with a fleet of a million devices; a smaller fleet's
// figure is reported but not judged (fixed costs dominate it).
func TestMemoryTargetJudgedAtAMillion(t *testing.T) {
	for _, c := range []struct {
		tracked, perDevice float64
		want               *bool
	}{
		{90_000, 1764, nil},
		{1_060_000, 555, yes(true)},
		{1_060_000, 1100, yes(false)},
	} {
		rep := &Report{Memory: &MemoryResult{Process: "worker", TrackedAfter: c.tracked, RSSBytesPerDevice: c.perDevice}}
		var t5 TargetResult
		for _, x := range rep.targets() {
			if x.ID == 5 {
				t5 = x
			}
		}
		switch {
		case c.want == nil && (t5.Met != nil || !strings.Contains(t5.Measured, "judged with 1 000 000 devices")):
			t.Errorf("%v devices: judged %v: %s", c.tracked, t5.Met, t5.Measured)
		case c.want != nil && (t5.Met == nil || *t5.Met != *c.want):
			t.Errorf("%v devices at %v B: met %v, want %v", c.tracked, c.perDevice, t5.Met, *c.want)
		}
	}
}
