package statemachine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// s converts seconds (may be fractional) to Unix ns from an arbitrary origin.
const origin = int64(1_700_000_000) * int64(time.Second)

func s(sec float64) int64 { return origin + int64(sec*float64(time.Second)) }

func hb(sec float64) Input   { return Input{Kind: KindHeartbeat, At: s(sec)} }
func tick(sec float64) Input { return Input{Kind: KindTick, At: s(sec)} }
func pingFail(checked, recv float64) Input {
	return Input{Kind: KindPingFailed, CheckedAt: s(checked), At: s(recv)}
}
func pingOK(checked, recv float64) Input {
	return Input{Kind: KindPingOK, CheckedAt: s(checked), At: s(recv)}
}

// tr is a compact expected transition: "from>to@at/reason".
func tr(from, to Status, at float64, code events.ReasonCode) string {
	return fmt.Sprintf("%s>%s@%g/%s", from.Wire(), to.Wire(), at, code)
}

func show(ts []Transition) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = fmt.Sprintf("%s>%s@%g/%s", t.From.Wire(), t.To.Wire(), float64(t.At-origin)/1e9, t.ReasonCode)
	}
	return out
}

func run(t *testing.T, th Thresholds, inputs []Input) (Device, []Transition) {
	t.Helper()
	m := NewMachine()
	var d Device
	var all []Transition
	for _, in := range inputs {
		var err error
		all, err = m.Apply(context.Background(), &d, th, in, all)
		if err != nil {
			t.Fatalf("Apply(%+v): %v", in, err)
		}
	}
	return d, all
}

func TestRules(t *testing.T) {
	C, T, D, R := Connected, TemporarilyOffline, Disconnected, Registered
	cases := []struct {
		name   string
		inputs []Input
		want   []string
		final  Status
	}{
		{"registered stays registered without heartbeat", []Input{tick(0), tick(1000)}, nil, R},
		{"first heartbeat connects", []Input{hb(0)}, []string{tr(R, C, 0, events.ReasonHeartbeat)}, C},
		{"heartbeat while connected: no transition, no error", []Input{hb(0), hb(30), hb(60), tick(61)}, []string{tr(R, C, 0, "heartbeat")}, C},
		{"silence of exactly 40s is still connected", []Input{hb(0), tick(40)}, []string{tr(R, C, 0, "heartbeat")}, C},
		{"silence over 40s: temporarily offline stamped 40", []Input{hb(0), tick(40), tick(40.001)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, events.ReasonHeartbeatTimeout)}, T},
		{"detected by tick 41, stamped 40 (coarse sweep, scenario 4)", []Input{hb(0), tick(41), tick(299), tick(300)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, D, 300, events.ReasonLivenessTimeout)}, D},
		{"silence of 299.999s is not disconnected", []Input{hb(0), tick(41), tick(299.999)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout")}, T},
		{"both thresholds crossed at one tick: two transitions in order", []Input{hb(0), tick(500)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, D, 300, "liveness_timeout")}, D},
		{"heartbeat returns from temporarily offline", []Input{hb(0), tick(41), hb(50)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, C, 50, "heartbeat")}, C},
		{"heartbeat returns from disconnected", []Input{hb(0), tick(301), hb(400)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, D, 300, "liveness_timeout"), tr(D, C, 400, "heartbeat")}, C},
		{"missed timeouts are caught up by the next heartbeat (no tick in between)", []Input{hb(0), hb(350)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, D, 300, "liveness_timeout"), tr(D, C, 350, "heartbeat")}, C},
		{"gap of exactly 40s between heartbeats: nothing", []Input{hb(0), hb(40)}, []string{tr(R, C, 0, "heartbeat")}, C},
		{"late heartbeat never moves state backwards", []Input{hb(0), hb(30), tick(71), hb(20)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 70, "heartbeat_timeout")}, T},
		{"duplicate heartbeat is a no-op", []Input{hb(0), tick(41), hb(0)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout")}, T},
		{"stale tick (clock stepped back) does nothing", []Input{hb(100), tick(100 - 8*3600), hb(130)},
			[]string{tr(R, C, 100, "heartbeat")}, C},
		// ping results
		{"ping failure within 30s of heartbeat ignored", []Input{hb(0), pingFail(29.9, 29.9)}, []string{tr(R, C, 0, "heartbeat")}, C},
		{"ping failure at exactly 30s acts", []Input{hb(0), pingFail(30, 30)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 30, events.ReasonPingFailed)}, T},
		{"ping failure never goes straight to disconnected", []Input{hb(0), pingFail(35, 35), pingFail(400, 400)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 35, "ping_failed"), tr(T, D, 300, "liveness_timeout")}, D},
		{"ping judged at checked_at: failure before the newest heartbeat ignored however late", []Input{hb(0), hb(40), pingFail(35, 61)},
			[]string{tr(R, C, 0, "heartbeat")}, C},
		{"ping checked_at later than receive time is clamped", []Input{hb(0), pingFail(100, 20)}, []string{tr(R, C, 0, "heartbeat")}, C},
		{"ping before any heartbeat ignored", []Input{pingFail(10, 10), pingOK(20, 20)}, nil, R},
		{"ping success holds off disconnected without returning to connected", []Input{hb(0), tick(41), pingOK(200, 200), tick(300), tick(499)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout")}, T},
		{"then disconnected 300s after the last successful probe", []Input{hb(0), tick(41), pingOK(200, 200), tick(500)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, D, 500, "liveness_timeout")}, D},
		{"ping success while connected with stale heartbeat: still times out at 40", []Input{hb(0), pingOK(35, 35), tick(41)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout")}, T},
		{"ping success brings disconnected back to temporarily offline, not connected", []Input{hb(0), tick(301), pingOK(400, 400)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout"), tr(T, D, 300, "liveness_timeout"), tr(D, T, 400, events.ReasonPingOK)}, T},
		{"older ping result after a newer one ignored", []Input{hb(0), pingOK(100, 100), pingFail(90, 101)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout")}, T},
		{"ping failure late after catch-up: timeout stamped at deadline first", []Input{hb(0), pingFail(50, 50)},
			[]string{tr(R, C, 0, "heartbeat"), tr(C, T, 40, "heartbeat_timeout")}, T},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, got := run(t, DefaultThresholds, c.inputs)
			if strings.Join(show(got), " ") != strings.Join(c.want, " ") {
				t.Errorf("transitions\n got: %v\nwant: %v", show(got), c.want)
			}
			if d.Status != c.final {
				t.Errorf("final status %s, want %s", d.Status.Wire(), c.final.Wire())
			}
		})
	}
}

func TestTransitionCarriesObservedAtAndReason(t *testing.T) {
	_, got := run(t, DefaultThresholds, []Input{hb(0), tick(41)})
	to := got[1]
	if to.At != s(40) || to.ObservedAt != s(41) {
		t.Errorf("stamped %d observed %d", to.At-origin, to.ObservedAt-origin)
	}
	if to.Reason != "no heartbeat for 41s (offline_after 40s)" {
		t.Errorf("reason %q", to.Reason)
	}
}

// TestReasonsInWholeSeconds: durations of a minute or more read "300s",
// never "5m0s".
func TestReasonsInWholeSeconds(t *testing.T) {
	_, got := run(t, DefaultThresholds, []Input{hb(0), tick(41), tick(301), hb(400)})
	want := []string{"", "no heartbeat for 41s (offline_after 40s)", "no heartbeat for 301s (disconnect_after 300s)", "heartbeat after 400s of silence"}
	if len(got) != len(want) {
		t.Fatalf("transitions %v", show(got))
	}
	for i, w := range want {
		if w != "" && got[i].Reason != w {
			t.Errorf("transition %d reason %q, want %q", i, got[i].Reason, w)
		}
	}
}

func TestLastHeartbeatNeverDecreases(t *testing.T) {
	m := NewMachine()
	var d Device
	var last int64
	for _, in := range []Input{hb(100), hb(90), hb(130), hb(-8 * 3600), hb(160)} {
		if _, err := m.Apply(context.Background(), &d, DefaultThresholds, in, nil); err != nil {
			t.Fatal(err)
		}
		if d.LastHeartbeat < last {
			t.Fatalf("last heartbeat went back from %d to %d", last, d.LastHeartbeat)
		}
		last = d.LastHeartbeat
	}
}

// Scenario 2 (looplab/fsm #115): a cancelled context must not wedge the machine.
func TestCancelledContextDoesNotWedge(t *testing.T) {
	m := NewMachine()
	var d Device
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out []Transition
	var err error
	for _, in := range []Input{hb(0), tick(41)} {
		if out, err = m.Apply(ctx, &d, DefaultThresholds, in, out); err != nil {
			t.Fatalf("cancelled ctx: %v", err)
		}
	}
	for _, in := range []Input{hb(50), tick(91), hb(80 + 20)} {
		if out, err = m.Apply(context.Background(), &d, DefaultThresholds, in, out); err != nil {
			t.Fatalf("after cancelled ctx: %v", err)
		}
	}
	if d.Status != Connected {
		t.Fatalf("status %s", d.Status.Wire())
	}
}

// Scenario 3: a heartbeat received at 39.990 but processed after the tick for 40.000.
func TestTimerRacingHeartbeat(t *testing.T) {
	d, got := run(t, DefaultThresholds, []Input{hb(0), tick(40), hb(39.990)})
	if len(got) != 1 || d.Status != Connected {
		t.Errorf("got %v, final %s", show(got), d.Status.Wire())
	}
	// At worst (a tick past the deadline first): offline, then connected, in order.
	d, got = run(t, DefaultThresholds, []Input{hb(0), tick(40.5), hb(39.990)})
	if d.Status != Connected || len(got) != 3 || got[1].To != TemporarilyOffline || got[2].To != Connected || got[2].At < got[1].At {
		t.Errorf("got %v, final %s", show(got), d.Status.Wire())
	}
}

// Scenario 1: devices sharing one machine, interleaved, never deadlock.
func TestSharedMachineInterleaved(t *testing.T) {
	m := NewMachine()
	var a, b Device
	steps := []struct {
		d  *Device
		in Input
	}{{&a, hb(0)}, {&a, hb(30)}, {&b, hb(31)}, {&a, tick(31)}, {&b, tick(31)}}
	for _, st := range steps {
		if _, err := m.Apply(context.Background(), st.d, DefaultThresholds, st.in, nil); err != nil {
			t.Fatal(err)
		}
	}
	if a.Status != Connected || b.Status != Connected {
		t.Fatalf("a %s b %s", a.Status.Wire(), b.Status.Wire())
	}
}

func TestDeadline(t *testing.T) {
	th := DefaultThresholds
	d := Device{Status: Connected, LastHeartbeat: s(0), LastLiveness: s(0)}
	if got := Deadline(&d, th, Hold{}); got != s(40)+1 {
		t.Errorf("connected deadline %d", got-origin)
	}
	d.Status = TemporarilyOffline
	if got := Deadline(&d, th, Hold{}); got != s(300) {
		t.Errorf("offline deadline %d", got-origin)
	}
	d.Status = Disconnected
	if Deadline(&d, th, Hold{}) != 0 {
		t.Error("disconnected has no deadline")
	}
	// A tick at the deadline changes the device; one ns earlier does not.
	for _, st := range []Status{Connected, TemporarilyOffline} {
		dv := Device{Status: st, LastHeartbeat: s(0), LastLiveness: s(0)}
		dl := Deadline(&dv, th, Hold{})
		m := NewMachine()
		before := dv
		if out, _ := m.Apply(context.Background(), &before, th, Input{Kind: KindTick, At: dl - 1}, nil); len(out) != 0 {
			t.Errorf("%s: tick before deadline changed it", st.Wire())
		}
		if out, _ := m.Apply(context.Background(), &dv, th, Input{Kind: KindTick, At: dl}, nil); len(out) != 1 {
			t.Errorf("%s: tick at deadline did not change it", st.Wire())
		}
	}
}

func TestThresholdsValidate(t *testing.T) {
	if err := DefaultThresholds.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []Thresholds{
		{OfflineAfter: 300 * time.Second, DisconnectAfter: 300 * time.Second, PingIgnoreWithin: time.Second},
		{OfflineAfter: 0, DisconnectAfter: time.Second},
		{OfflineAfter: 10 * time.Second, DisconnectAfter: 20 * time.Second, PingIgnoreWithin: 11 * time.Second},
	}
	for _, th := range bad {
		if err := th.Validate(); !errors.Is(err, ErrInvalidThresholds) {
			t.Errorf("%+v accepted: %v", th, err)
		}
	}
}

func BenchmarkApplyHeartbeatConnected(b *testing.B) {
	m := NewMachine()
	d := Device{Status: Connected, LastHeartbeat: s(0)}
	ctx := context.Background()
	out := make([]Transition, 0, 4)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		out, _ = m.Apply(ctx, &d, DefaultThresholds, Input{Kind: KindHeartbeat, At: s(0) + int64(i+1)*int64(time.Second)}, out[:0])
	}
}

func BenchmarkApplyTransition(b *testing.B) {
	m := NewMachine()
	ctx := context.Background()
	out := make([]Transition, 0, 4)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		d := Device{Status: Connected, LastHeartbeat: s(0), LastLiveness: s(0)}
		out, _ = m.Apply(ctx, &d, DefaultThresholds, tick(41), out[:0])
	}
}

func TestPingIgnoredReasons(t *testing.T) {
	th := DefaultThresholds
	d := Device{}
	if r := PingIgnored(&d, th, pingFail(10, 10)); r != PingNoHeartbeat {
		t.Errorf("never heard: %q", r)
	}
	d = Device{Status: Connected, LastHeartbeat: s(0), LastLiveness: s(0)}
	if r := PingIgnored(&d, th, pingFail(29, 29)); r != PingHeartbeatFresh {
		t.Errorf("fresh: %q", r)
	}
	if r := PingIgnored(&d, th, pingFail(31, 31)); r != "" {
		t.Errorf("stale: %q", r)
	}
	d.LastPing = s(40)
	if r := PingIgnored(&d, th, pingOK(35, 45)); r != PingNotNewer {
		t.Errorf("older: %q", r)
	}
	if r := PingIgnored(&d, th, hb(50)); r != "" {
		t.Errorf("heartbeat: %q", r)
	}
}

func TestTimeoutReasonSaysDeviceAnswersProbes(t *testing.T) {
	_, got := run(t, DefaultThresholds, []Input{hb(0), pingOK(35, 35), tick(41)})
	if len(got) != 2 || !strings.HasSuffix(got[1].Reason, "; answers probes") {
		t.Fatalf("got %v %q", show(got), got[len(got)-1].Reason)
	}
}

// TestOutageHold: while a hold is on a silent device still becomes
// temporarily_offline (the reason names the hold) but never disconnected,
// however long the silence; after the hold ends at E it becomes
// disconnected at E + disconnect_after, stamped so, and not a ns earlier;
// a device whose silence began after E is judged as usual.
func TestOutageHold(t *testing.T) {
	th := DefaultThresholds
	m := NewMachine()
	ctx := context.Background()
	on := Hold{Active: true, Reason: "most of the fleet went silent"}
	d := Device{Status: Connected, LastHeartbeat: s(0), LastLiveness: s(0)}
	out, err := m.Apply(ctx, &d, th, Input{Kind: KindTick, At: s(41), Hold: on}, nil)
	if err != nil || len(out) != 1 || out[0].To != TemporarilyOffline || !strings.Contains(out[0].Reason, "outage hold on") {
		t.Fatalf("under hold: %+v %v", out, err)
	}
	if Deadline(&d, th, on) != 0 {
		t.Error("a held device has a disconnect deadline")
	}
	if out, _ := m.Apply(ctx, &d, th, Input{Kind: KindTick, At: s(1000), Hold: on}, nil); len(out) != 0 {
		t.Fatalf("disconnected during the hold: %+v", out)
	}
	ended := Hold{End: s(1000)}
	if got := Deadline(&d, th, ended); got != s(1300) {
		t.Fatalf("deadline after the hold %d, want end + 300s", got-origin)
	}
	if out, _ := m.Apply(ctx, &d, th, Input{Kind: KindTick, At: s(1300) - 1, Hold: ended}, nil); len(out) != 0 {
		t.Fatalf("disconnected before end + disconnect_after: %+v", out)
	}
	out, _ = m.Apply(ctx, &d, th, Input{Kind: KindTick, At: s(1301), Hold: ended}, nil)
	if len(out) != 1 || out[0].To != Disconnected || out[0].At != s(1300) {
		t.Fatalf("after the hold: %+v", out)
	}
	// Silence that began after the end: the usual rule.
	e := Device{Status: Connected, LastHeartbeat: s(2000), LastLiveness: s(2000)}
	out, _ = m.Apply(ctx, &e, th, Input{Kind: KindTick, At: s(2400), Hold: ended}, nil)
	if len(out) != 2 || out[1].To != Disconnected || out[1].At != s(2300) || strings.Contains(out[0].Reason, "hold") {
		t.Fatalf("silence after the hold: %+v", out)
	}
	// A heartbeat during the hold brings the device back as usual.
	f := Device{Status: Connected, LastHeartbeat: s(0), LastLiveness: s(0)}
	out, _ = m.Apply(ctx, &f, th, Input{Kind: KindHeartbeat, At: s(500), Hold: on}, nil)
	if len(out) != 2 || out[0].To != TemporarilyOffline || out[1].To != Connected {
		t.Fatalf("comeback during the hold: %+v", out)
	}
}
