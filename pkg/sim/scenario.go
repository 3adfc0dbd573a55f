package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/trace"
)

// ErrInvalidConfig wraps the errors of a bad [Scenario] or [LiveConfig].
var ErrInvalidConfig = errors.New("sim: invalid config")

// Behaviour is what a simulated device does over a scenario.
type Behaviour string

// Behaviours. Every silence is designed to lie at least Scenario.Margin away
// from both thresholds, so the expected transitions are exact.
const (
	// Steady heartbeats every interval (with jitter) throughout: connected.
	Steady Behaviour = "steady"
	// SilentOffline goes silent and stays silent: temporarily_offline at the
	// check (silence O+Margin+Jitter at CheckAt, under D−Margin until Stop).
	SilentOffline Behaviour = "silent_offline"
	// SilentDisconnected goes silent for D+Margin+Jitter by the check: disconnected.
	SilentDisconnected Behaviour = "silent_disconnected"
	// ReturnFromOffline is silent for (O+D)/2, then heartbeats again:
	// connected → temporarily_offline → connected.
	ReturnFromOffline Behaviour = "return_from_offline"
	// ReturnFromDisconnected is silent for D+interval, then heartbeats again:
	// → temporarily_offline → disconnected → connected.
	ReturnFromDisconnected Behaviour = "return_from_disconnected"
	// Flapping goes offline and comes back Scenario.FlapCycles times.
	Flapping Behaviour = "flapping"
	// Never is registered and never heartbeats: stays registered.
	Never Behaviour = "never"
)

// Behaviours lists every behaviour.
var Behaviours = []Behaviour{Steady, SilentOffline, SilentDisconnected, ReturnFromOffline, ReturnFromDisconnected, Flapping, Never}

// DefaultMix weighs the behaviours assigned to devices.
var DefaultMix = map[Behaviour]int{Steady: 3, SilentOffline: 2, SilentDisconnected: 2, ReturnFromOffline: 2, ReturnFromDisconnected: 2, Flapping: 2, Never: 1}

// Scenario describes a fleet to simulate against a running service. Times
// are wall-clock durations from the start of the heartbeats.
type Scenario struct {
	// Devices is the fleet size. Default 100.
	Devices int
	// Groups is the number of groups devices are spread over ("<prefix>g0", …).
	// Default 3.
	Groups int
	// Interval (I) is the heartbeat period. Default 1 s.
	Interval time.Duration
	// Jitter is the largest random offset (±) of each heartbeat from its
	// nominal time. Default min(I/10, (O−I)/5); negative: none.
	Jitter time.Duration
	// Thresholds the service runs with (its --offline-after and
	// --disconnect-after). Default O = 2 s, D = 5 s.
	Thresholds trace.Thresholds
	// Margin is the least distance, in intended send times, between any
	// silence the service will measure and a threshold. Half of it is the
	// budget for a heartbeat sent late (a later one marks the device
	// disturbed); the check also waits Margin after the last expected
	// transition. Default min(I/2, O−I−2·Jitter).
	Margin time.Duration
	// FlapCycles is how many times a Flapping device goes offline and
	// returns. Default 2.
	FlapCycles int
	// Mix weighs the behaviours (nil: [DefaultMix]). Devices get behaviours
	// in proportion, shuffled; with Devices ≥ the sum of weights every
	// weighted behaviour occurs.
	Mix map[Behaviour]int
	// AwkwardEvery makes every n-th device id awkward on purpose ('/', ':',
	// '.', '*', '>', spaces, non-ASCII, '%', '?', '#', '+'). Default 3; -1: none.
	AwkwardEvery int
	// Prefix starts every device id and group, so runs against one service
	// do not collide. Default "sim-<8 random hex>-".
	Prefix string
	// Seed drives behaviours, phases and jitter. Default 1.
	Seed uint64
}

func (s *Scenario) setDefaults() {
	if s.Devices == 0 {
		s.Devices = 100
	}
	if s.Groups == 0 {
		s.Groups = 3
	}
	if s.Interval == 0 {
		s.Interval = time.Second
	}
	if s.Thresholds == (trace.Thresholds{}) {
		s.Thresholds = trace.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 5 * time.Second}
	}
	o := s.Thresholds.OfflineAfter
	if s.Jitter == 0 {
		s.Jitter = max(min(s.Interval/10, (o-s.Interval)/5), 0)
	} else if s.Jitter < 0 {
		s.Jitter = 0
	}
	if s.Margin == 0 {
		s.Margin = min(s.Interval/2, o-s.Interval-2*s.Jitter)
	}
	if s.FlapCycles == 0 {
		s.FlapCycles = 2
	}
	if s.Mix == nil {
		s.Mix = DefaultMix
	}
	if s.AwkwardEvery == 0 {
		s.AwkwardEvery = 3
	}
	if s.Prefix == "" {
		s.Prefix = randomPrefix("sim")
	}
	if s.Seed == 0 {
		s.Seed = 1
	}
}

// randomPrefix is "<kind>-<8 random hex>-".
func randomPrefix(kind string) string {
	return fmt.Sprintf("%s-%08x-", kind, rand.Uint32())
}

func (s *Scenario) validate() error {
	var errs []error
	if err := s.Thresholds.Validate(); err != nil {
		errs = append(errs, err)
	}
	I, J, M := s.Interval, s.Jitter, s.Margin
	O, D := s.Thresholds.OfflineAfter, s.Thresholds.DisconnectAfter
	if s.Devices < 1 || s.Groups < 1 || s.FlapCycles < 1 {
		errs = append(errs, fmt.Errorf("devices (%d), groups (%d) and flap cycles (%d) must be ≥ 1", s.Devices, s.Groups, s.FlapCycles))
	}
	if I <= 0 || M <= 0 {
		errs = append(errs, fmt.Errorf("interval (%s) and margin (%s) must be positive (margin defaults to min(I/2, O−I−2·jitter))", I, M))
	}
	if M < I/5 {
		errs = append(errs, fmt.Errorf("margin %s must be at least interval/5 (%s): offline_after %s is too close to the interval %s", M, I/5, O, I))
	}
	if J > I/4 {
		errs = append(errs, fmt.Errorf("jitter %s must be at most interval/4 (%s)", J, I/4))
	}
	if I+2*J > O-M {
		errs = append(errs, fmt.Errorf("interval + 2·jitter (%s) must be ≤ offline_after − margin (%s): steady devices would flap", I+2*J, O-M))
	}
	if (D-O)/2-2*J < M {
		errs = append(errs, fmt.Errorf("(disconnect_after − offline_after)/2 − 2·jitter (%s) must be ≥ margin (%s)", (D-O)/2-2*J, M))
	}
	total := 0
	for b, w := range s.Mix {
		if !slices.Contains(Behaviours, b) || w < 0 {
			errs = append(errs, fmt.Errorf("mix: unknown behaviour %q or negative weight %d", b, w))
		}
		total += w
	}
	if total == 0 {
		errs = append(errs, errors.New("mix: all weights are zero"))
	}
	if len(s.Prefix) > 40 {
		errs = append(errs, fmt.Errorf("prefix %q is longer than 40 bytes", s.Prefix))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: scenario: %w", ErrInvalidConfig, err)
	}
	return nil
}

// DevicePlan is one simulated device and what the service must show for it.
type DevicePlan struct {
	ID, Group string
	Behaviour Behaviour
	// Times are the intended send times of its heartbeats, as offsets from
	// the start of the run (jitter included), strictly increasing, all ≤ Stop.
	Times []time.Duration
	// Continues says the device heartbeats until Stop (through the check).
	Continues bool
	// Expect is the oracle's expectation at CheckAt, with times as offsets
	// from 2000-01-01T00:00:00Z (see [Plan.Expectations] for real times).
	Expect trace.Expectation
}

// Plan is a scenario laid out in time: every device's heartbeat times and
// the expected outcome, ready to run.
type Plan struct {
	// Scenario with its defaults applied.
	Scenario Scenario
	Devices  []DevicePlan
	// CheckAt (Tc) is when the expected state is reached: every expected
	// transition is stamped at least Margin before it.
	CheckAt time.Duration
	// Stop is when the run ends. Every device's expected status and
	// transitions hold over the whole of [CheckAt, Stop], so a check may read
	// the service anywhere in it (and retry while it lags).
	Stop time.Duration
}

// CheckWindow is Stop − CheckAt.
func (p *Plan) CheckWindow() time.Duration { return p.Stop - p.CheckAt }

// Heartbeats is the number of heartbeats the plan sends.
func (p *Plan) Heartbeats() int {
	n := 0
	for _, d := range p.Devices {
		n += len(d.Times)
	}
	return n
}

// planEpoch is the time of offset 0 in [DevicePlan.Expect].
var planEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Expectations returns every device's expectation with times made absolute
// for a run whose heartbeats started at start.
func (p *Plan) Expectations(start time.Time) []trace.Expectation {
	out := make([]trace.Expectation, len(p.Devices))
	for i, d := range p.Devices {
		e := d.Expect
		shift := func(t time.Time) time.Time { return start.Add(t.Sub(planEpoch)).UTC() }
		e.End = shift(e.End)
		if e.Heartbeats > 0 {
			e.LastHeartbeat = shift(e.LastHeartbeat)
		}
		e.Transitions = slices.Clone(e.Transitions)
		for k := range e.Transitions {
			e.Transitions[k].At = shift(e.Transitions[k].At)
		}
		out[i] = e
	}
	return out
}

// Counts returns how many devices have each behaviour.
func (p *Plan) Counts() map[Behaviour]int {
	c := map[Behaviour]int{}
	for _, d := range p.Devices {
		c[d.Behaviour]++
	}
	return c
}

// NewPlan lays the scenario out: it assigns behaviours, ids and groups, draws
// phases and jitter (deterministic for a Seed), and computes each device's
// expectation with the oracle ([trace.Expect]). It then checks the margins
// on the intended times (every gap and final silence at least Margin from O
// and D, stable over [CheckAt, Stop]) and refuses a scenario that breaks
// them with an error wrapping [ErrInvalidConfig].
func NewPlan(s Scenario) (*Plan, error) {
	s.setDefaults()
	if err := s.validate(); err != nil {
		return nil, err
	}
	I, J, M := s.Interval, s.Jitter, s.Margin
	O, D := s.Thresholds.OfflineAfter, s.Thresholds.DisconnectAfter
	rng := rand.New(rand.NewPCG(s.Seed, 0x5eed))

	phaseSpread := I / 4
	warm := 2 * I // three heartbeats before anything happens
	gOff := (O + D) / 2
	gDisc := D + max(I, M) + 2*J
	sOff := O + M + J  // silence of SilentOffline at CheckAt
	sDisc := D + M + J // silence of SilentDisconnected at CheckAt
	window := D - O - 2*M - 2*J
	need := []time.Duration{
		phaseSpread + warm + sDisc,
		phaseSpread + warm + gDisc + M + J,
		phaseSpread + warm + time.Duration(s.FlapCycles)*gOff + time.Duration(s.FlapCycles-1)*warm + M + J,
	}
	tc := slices.Max(need)
	tc = (tc + 99*time.Millisecond).Truncate(100 * time.Millisecond)
	p := &Plan{Scenario: s, CheckAt: tc, Stop: tc + window}

	// Behaviours in proportion to the weights, shuffled.
	var pool []Behaviour
	for _, b := range Behaviours {
		for range s.Mix[b] {
			pool = append(pool, b)
		}
	}
	behaviours := make([]Behaviour, s.Devices)
	for i := range behaviours {
		behaviours[i] = pool[i%len(pool)]
	}
	rng.Shuffle(len(behaviours), func(a, b int) { behaviours[a], behaviours[b] = behaviours[b], behaviours[a] })

	jit := func() time.Duration {
		if J == 0 {
			return 0
		}
		return time.Duration(rng.Int64N(int64(2*J)+1)) - J
	}
	grid := func(out []time.Duration, from, to time.Duration) []time.Duration {
		for t := from; t <= to; t += I {
			out = append(out, t)
		}
		return out
	}
	for i := range s.Devices {
		d := DevicePlan{ID: DeviceID(s.Prefix, i, s.AwkwardEvery), Group: s.Prefix + "g" + strconv.Itoa(i%s.Groups), Behaviour: behaviours[i]}
		phase := time.Duration(rng.Int64N(int64(phaseSpread) + 1))
		var nominal []time.Duration
		switch d.Behaviour {
		case Steady:
			nominal = grid(nil, phase, p.Stop)
			d.Continues = true
		case Never:
		case SilentOffline, SilentDisconnected:
			end := tc - sOff
			if d.Behaviour == SilentDisconnected {
				end = tc - sDisc
			}
			// anchored at the end: the last heartbeat is exactly at end
			first := end - (end-phase)/I*I
			nominal = grid(nil, first, end)
		case ReturnFromOffline, ReturnFromDisconnected:
			gap := gOff
			if d.Behaviour == ReturnFromDisconnected {
				gap = gDisc
			}
			nominal = grid(nil, phase, phase+warm)
			nominal = grid(nominal, phase+warm+gap, p.Stop)
			d.Continues = true
		case Flapping:
			t := phase
			nominal = grid(nil, t, t+warm)
			for range s.FlapCycles {
				t += warm + gOff
				nominal = grid(nominal, t, t+warm)
			}
			nominal = grid(nominal, t+warm+I, p.Stop)
			d.Continues = true
		}
		d.Times = make([]time.Duration, len(nominal))
		for k, t := range nominal {
			d.Times[k] = max(t+jit(), 0)
		}
		if n := len(d.Times); n > 0 && d.Times[n-1] > p.Stop {
			d.Times[n-1] = p.Stop
		}
		var hbs []time.Time
		for _, t := range d.Times {
			if t <= tc {
				hbs = append(hbs, planEpoch.Add(t))
			}
		}
		e, err := trace.Expect(d.ID, hbs, planEpoch.Add(tc), s.Thresholds)
		if err != nil {
			return nil, fmt.Errorf("%w: device %d: %w", ErrInvalidConfig, i, err)
		}
		d.Expect = e
		if err := p.checkMargins(&d); err != nil {
			return nil, fmt.Errorf("%w: device %d (%s): %w", ErrInvalidConfig, i, d.Behaviour, err)
		}
		p.Devices = append(p.Devices, d)
	}
	return p, nil
}

// checkMargins verifies, on intended times, that no silence comes within
// Margin of a threshold, that the expectation holds over [CheckAt, Stop],
// and that every transition is stamped at least Margin before CheckAt.
func (p *Plan) checkMargins(d *DevicePlan) error {
	s := p.Scenario
	O, D, M := s.Thresholds.OfflineAfter, s.Thresholds.DisconnectAfter, s.Margin
	clear := func(g time.Duration) bool {
		return g <= O-M || (g >= O+M && g <= D-M) || g >= D+M
	}
	for k := 1; k < len(d.Times); k++ {
		g := d.Times[k] - d.Times[k-1]
		if g <= 0 {
			return fmt.Errorf("heartbeats %d and %d are not in order", k-1, k)
		}
		if !clear(g) {
			return fmt.Errorf("gap %s between heartbeats %d and %d is within %s of a threshold", g, k-1, k, M)
		}
	}
	if n := len(d.Times); n > 0 && !d.Continues {
		s1, s2 := p.CheckAt-d.Times[n-1], p.Stop-d.Times[n-1]
		stable := s2 <= O-M || (s1 >= O+M && s2 <= D-M) || s1 >= D+M
		if !stable {
			return fmt.Errorf("final silence %s..%s is not clear of the thresholds by %s", s1, s2, M)
		}
	}
	if d.Continues && p.Stop-d.Times[len(d.Times)-1] > O-M {
		return fmt.Errorf("stops heartbeating %s before the end", p.Stop-d.Times[len(d.Times)-1])
	}
	for _, tr := range d.Expect.Transitions {
		if tr.At.Sub(planEpoch) > p.CheckAt-M {
			return fmt.Errorf("transition %s is later than check − margin", tr)
		}
	}
	return nil
}

// awkward are id parts chosen to break naive encoders: path separators, NATS
// subject wildcards and separators, spaces, URL specials and non-ASCII.
var awkward = []string{
	"site/3/dev:%d",
	"dev.%d.*.>",
	"kiosk %d mañana",
	"ゲート/%d:α*",
	"a b/c:d.e*f>g %d ü",
	"100%%/q?x=%d#frag+plus",
}

// DeviceID is the id of device i of a scenario with the given prefix: every
// awkwardEvery-th id (i % awkwardEvery == 1) takes one of the awkward forms
// ("<prefix>site/3/dev:7", "<prefix>dev.4.*.>", "<prefix>kiosk 1 mañana",
// "<prefix>ゲート/10:α*", …), the others are "<prefix>dev-<i>". awkwardEvery
// < 1 gives plain ids only. Every id is a valid device id
// (events.ValidateDeviceID) and never "." or "..".
func DeviceID(prefix string, i, awkwardEvery int) string {
	if awkwardEvery >= 1 && i%awkwardEvery == 1%awkwardEvery {
		k := (i / awkwardEvery) % len(awkward)
		id := prefix + fmt.Sprintf(awkward[k], i)
		if events.ValidateDeviceID(id) == nil {
			return id
		}
	}
	return prefix + "dev-" + strconv.Itoa(i)
}
