package sim

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/trace"
)

func seq(e trace.Expectation) string {
	return formatExpected(e.Transitions)
}

func TestNewPlanExpectationsPerBehaviour(t *testing.T) {
	t.Parallel()
	p, err := NewPlan(Scenario{Prefix: "t-", Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	s := p.Scenario
	if s.Interval != time.Second || s.Thresholds.OfflineAfter != 2*time.Second || s.Thresholds.DisconnectAfter != 5*time.Second ||
		s.Jitter != 100*time.Millisecond || s.Margin != 500*time.Millisecond {
		t.Fatalf("defaults %+v", s)
	}
	t.Logf("check at %s, stop %s, %d heartbeats", p.CheckAt, p.Stop, p.Heartbeats())
	want := map[Behaviour]struct {
		seq   string
		final events.Status
	}{
		Steady:                 {"[registered→connected(heartbeat)]", events.StatusConnected},
		Never:                  {"[]", events.StatusRegistered},
		SilentOffline:          {"[registered→connected(heartbeat) connected→temporarily_offline(heartbeat_timeout)]", events.StatusTemporarilyOffline},
		SilentDisconnected:     {"[registered→connected(heartbeat) connected→temporarily_offline(heartbeat_timeout) temporarily_offline→disconnected(liveness_timeout)]", events.StatusDisconnected},
		ReturnFromOffline:      {"[registered→connected(heartbeat) connected→temporarily_offline(heartbeat_timeout) temporarily_offline→connected(heartbeat)]", events.StatusConnected},
		ReturnFromDisconnected: {"[registered→connected(heartbeat) connected→temporarily_offline(heartbeat_timeout) temporarily_offline→disconnected(liveness_timeout) disconnected→connected(heartbeat)]", events.StatusConnected},
		Flapping: {"[registered→connected(heartbeat) connected→temporarily_offline(heartbeat_timeout) temporarily_offline→connected(heartbeat)" +
			" connected→temporarily_offline(heartbeat_timeout) temporarily_offline→connected(heartbeat)]", events.StatusConnected},
	}
	counts := p.Counts()
	for _, b := range Behaviours {
		if counts[b] == 0 {
			t.Errorf("no device is %s", b)
		}
	}
	ids := map[string]bool{}
	awkward := 0
	for _, d := range p.Devices {
		w := want[d.Behaviour]
		if got := seq(d.Expect); got != w.seq || d.Expect.Final != w.final {
			t.Errorf("%s %q: %s / %s, want %s / %s", d.Behaviour, d.ID, got, d.Expect.Final, w.seq, w.final)
		}
		if ids[d.ID] || !strings.HasPrefix(d.ID, "t-") || events.ValidateDeviceID(d.ID) != nil {
			t.Errorf("bad or duplicate id %q", d.ID)
		}
		ids[d.ID] = true
		if !strings.HasPrefix(d.ID, "t-dev-") {
			awkward++
		}
		if !strings.HasPrefix(d.Group, "t-g") {
			t.Errorf("group %q", d.Group)
		}
	}
	if awkward != 33 {
		t.Errorf("%d awkward ids of 100, want 33", awkward)
	}
	// Absolute expectations are shifted by the start.
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	exps := p.Expectations(start)
	for i, e := range exps {
		if len(e.Transitions) > 0 && !e.Transitions[0].At.Equal(start.Add(p.Devices[i].Times[0])) {
			t.Fatalf("device %d: first transition at %s, first heartbeat at +%s", i, e.Transitions[0].At, p.Devices[i].Times[0])
		}
	}
}

func TestNewPlanIsDeterministicAndKeepsMargins(t *testing.T) {
	t.Parallel()
	a, err := NewPlan(Scenario{Prefix: "x-", Seed: 3, Devices: 50})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewPlan(Scenario{Prefix: "x-", Seed: 3, Devices: 50})
	if !reflect.DeepEqual(a.Devices, b.Devices) {
		t.Fatal("same seed, different plans")
	}
	// Many seeds and shapes, including the production thresholds: NewPlan
	// verifies the margins itself and would fail.
	shapes := []Scenario{
		{},
		{Interval: 30 * time.Second, Thresholds: trace.DefaultThresholds()},
		{Interval: 500 * time.Millisecond, Thresholds: trace.Thresholds{OfflineAfter: time.Second, DisconnectAfter: 2500 * time.Millisecond}},
		{Interval: time.Second, Thresholds: trace.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 5 * time.Second}, FlapCycles: 4, Jitter: -1},
		{Interval: 100 * time.Millisecond, Thresholds: trace.Thresholds{OfflineAfter: 300 * time.Millisecond, DisconnectAfter: time.Second}},
	}
	for i, s := range shapes {
		for seed := uint64(1); seed <= 20; seed++ {
			s.Seed, s.Prefix, s.Devices = seed, "p-", 40
			p, err := NewPlan(s)
			if err != nil {
				t.Fatalf("shape %d seed %d: %v", i, seed, err)
			}
			if p.CheckWindow() < p.Scenario.Margin {
				t.Fatalf("shape %d: check window %s", i, p.CheckWindow())
			}
		}
	}
}

func TestNewPlanRefusesTightThresholds(t *testing.T) {
	t.Parallel()
	bad := []Scenario{
		{Thresholds: trace.Thresholds{OfflineAfter: 1200 * time.Millisecond, DisconnectAfter: 5 * time.Second}}, // I=1s too close to O
		{Thresholds: trace.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 2500 * time.Millisecond}}, // O and D too close
		{Thresholds: trace.Thresholds{OfflineAfter: 5 * time.Second, DisconnectAfter: 2 * time.Second}},
		{Jitter: 400 * time.Millisecond},
		{Mix: map[Behaviour]int{"teleport": 1}},
		{Mix: map[Behaviour]int{Steady: 0}},
	}
	for i, s := range bad {
		if _, err := NewPlan(s); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("case %d: want ErrInvalidConfig, got %v", i, err)
		}
	}
}

// fastScenario runs in about 7 s of wall time.
func fastScenario(prefix string, devices int) Scenario {
	return Scenario{
		Prefix: prefix, Devices: devices, Seed: 11,
		Interval:   time.Second,
		Thresholds: trace.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 5 * time.Second},
	}
}

func TestRunMatchesAFakeService(t *testing.T) {
	skipTimingUnderRace(t)
	t.Parallel()
	s := fastScenario("run-", 60)
	f, srv := newFake(t, s.Thresholds)
	f.lag = 30 * time.Millisecond
	c := newTestClient(t, srv.URL, f.admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, c, s, RunOptions{Check: CheckOptions{AtTolerance: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.String())
	if len(res.Unexplained()) > 0 || !res.Checked || res.CheckAttempts < 1 {
		t.Fatalf("run not OK:\n%s", res)
	}
	if len(res.Disturbed) > 0 {
		// Only a starved machine delays heartbeats past half the margin.
		t.Logf("%d devices disturbed by a loaded machine; their mismatches are excused", len(res.Disturbed))
	} else if !res.OK() {
		t.Fatalf("run not OK:\n%s", res)
	}
	if h := res.Heartbeats; h.Accepted != h.Scheduled || h.Sent != h.Scheduled || h.Failed != 0 {
		t.Fatalf("heartbeats %+v", h)
	}
	if len(f.ids()) != 60 {
		t.Fatalf("fake has %d devices", len(f.ids()))
	}
	// The status-only check agrees too.
	p, _ := NewPlan(s)
	ms, err := Check(ctx, c, p.Expectations(res.Start), CheckOptions{StatusOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	// After Stop every device has stopped: some statuses may have moved on,
	// but none is missing.
	for _, m := range ms {
		if m.Kind == MismatchMissing {
			t.Fatalf("missing %s", m)
		}
	}
}

func TestRunReportsWhatTheServiceGotWrong(t *testing.T) {
	skipTimingUnderRace(t)
	t.Parallel()
	s := fastScenario("bug-", 14)
	s.AwkwardEvery = 2
	p, err := NewPlan(s)
	if err != nil {
		t.Fatal(err)
	}
	// The fake forgets the heartbeats of one returning device, as a buggy
	// service would.
	var victim DevicePlan
	for _, d := range p.Devices {
		if d.Behaviour == ReturnFromOffline {
			victim = d
		}
	}
	f, srv := newFake(t, s.Thresholds)
	f.ignore[victim.ID] = true
	c := newTestClient(t, srv.URL, f.admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := p.Run(ctx, c, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() {
		t.Fatalf("want mismatches:\n%s", res)
	}
	kinds := map[MismatchKind]bool{}
	for _, m := range res.Mismatches {
		if m.Device == victim.ID {
			kinds[m.Kind] = true
		}
	}
	for _, m := range res.Unexplained() {
		if m.Device != victim.ID {
			t.Fatalf("unexpected mismatch %s", m)
		}
	}
	if !kinds[MismatchStatus] || !kinds[MismatchTransitions] {
		t.Fatalf("mismatches %v", res.Mismatches)
	}
	if res.CheckAttempts < 1 {
		t.Fatal("no check")
	}
}

func TestRunMarksRateLimitedDevicesDisturbed(t *testing.T) {
	skipTimingUnderRace(t)
	t.Parallel()
	s := fastScenario("rl-", 8)
	s.Mix = map[Behaviour]int{Steady: 1}
	p, err := NewPlan(s)
	if err != nil {
		t.Fatal(err)
	}
	f, srv := newFake(t, s.Thresholds)
	f.refuse429[p.Devices[3].ID] = 1
	c := newTestClient(t, srv.URL, f.admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := p.Run(ctx, c, RunOptions{NoCheck: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range res.Disturbed {
		found = found || (d.Device == p.Devices[3].ID && strings.Contains(d.Reason, "429"))
	}
	if res.OK() || !found || res.Heartbeats.RateLimited != 1 {
		t.Fatalf("want device 3 disturbed by one 429:\n%s", res)
	}
}

// skipTimingUnderRace skips the real-time self-tests of the simulator
// (TestRun…, TestReplayLive…: a fake service driven on the wall clock with
// sub-second budgets) unless DEVSTATUS_TIMING_TESTS=1, and always under the
// race detector. On a loaded 2-core machine their budgets are missed often
// enough to make them flaky, so `make test` does not run them; the
// simulator's logic is covered by the deterministic tests of this package
// and, against the real service, by the e2e package (whose checks do not
// depend on timing). Run them on a quiet machine with
// `DEVSTATUS_TIMING_TESTS=1 go test ./pkg/sim`.
func skipTimingUnderRace(t *testing.T) {
	t.Helper()
	if raceDetector {
		t.Skip("real-time test with sub-second budgets: not under -race")
	}
	if os.Getenv("DEVSTATUS_TIMING_TESTS") != "1" {
		t.Skip("real-time test with sub-second budgets: set DEVSTATUS_TIMING_TESTS=1 on a quiet machine")
	}
}
