package sim

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/trace"
)

// TestCheckReportsEveryKindOfMismatch drives the fake by hand (no timing:
// the default thresholds are far away) and checks what Check and
// CheckUntil report.
func TestCheckReportsEveryKindOfMismatch(t *testing.T) {
	t.Parallel()
	f, srv := newFake(t, trace.DefaultThresholds())
	c := newTestClient(t, srv.URL, f.admin)
	ctx := context.Background()
	sent := time.Now()
	for _, id := range []string{"a/1", "b 2", "c.3"} {
		reg, err := c.Register(ctx, id, "g")
		if err != nil {
			t.Fatal(err)
		}
		if id != "c.3" {
			if _, err := c.Heartbeat(ctx, id, reg.Token, apiclient.HeartbeatRequest{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	connected := []trace.Transition{{From: events.StatusRegistered, To: events.StatusConnected, ReasonCode: events.ReasonHeartbeat, At: sent}}
	exps := []trace.Expectation{
		{Device: "a/1", Final: events.StatusConnected, Transitions: connected}, // right
		{Device: "b 2", Final: events.StatusDisconnected},                      // wrong status and history
		{Device: "c.3", Final: events.StatusRegistered},                        // right: never heartbeated
		{Device: "ghost", Final: events.StatusConnected},                       // unknown to the service
	}
	kinds := func(ms []Mismatch) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Device+":"+string(m.Kind)+":"+m.Got)
		}
		return out
	}
	ms, err := Check(ctx, c, exps, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := kinds(ms), []string{
		"b 2:status:connected", "b 2:transitions:[registered→connected(heartbeat)]", "ghost:missing:404",
	}; !slices.Equal(got, want) {
		t.Fatalf("full check:\n got %q\nwant %q", got, want)
	}
	ms, err = Check(ctx, c, exps, CheckOptions{StatusOnly: true, PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := kinds(ms), []string{"b 2:status:connected", "ghost:missing:not listed"}; !slices.Equal(got, want) {
		t.Fatalf("status-only check:\n got %q\nwant %q", got, want)
	}
	// Times: the fake stamps the heartbeat on arrival, well within a second
	// of sent, and an hour away from a shifted expectation.
	early := []trace.Expectation{exps[0]}
	if ms, err := Check(ctx, c, early, CheckOptions{AtTolerance: time.Second}); err != nil || len(ms) != 0 {
		t.Fatalf("within tolerance: %v %v", ms, err)
	}
	early[0].Transitions = []trace.Transition{connected[0]}
	early[0].Transitions[0].At = sent.Add(-time.Hour)
	if ms, err := Check(ctx, c, early, CheckOptions{AtTolerance: time.Second}); err != nil || len(ms) != 1 || ms[0].Kind != MismatchTransitionTime {
		t.Fatalf("an hour off: %v %v", ms, err)
	}

	// CheckUntil: one read when everything matches, several until the
	// deadline when something never will.
	if ms, n, err := CheckUntil(ctx, c, exps[:1], CheckOptions{}, time.Now().Add(time.Minute), 10*time.Millisecond); err != nil || len(ms) != 0 || n != 1 {
		t.Fatalf("matching: %v after %d reads, %v", ms, n, err)
	}
	ms, n, err := CheckUntil(ctx, c, exps[1:2], CheckOptions{StatusOnly: true}, time.Now().Add(200*time.Millisecond), 20*time.Millisecond)
	if err != nil || len(ms) != 1 || n < 2 {
		t.Fatalf("never matching: %v after %d reads, %v", ms, n, err)
	}
}
