package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/backoff"
	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/trace"
)

// MismatchKind says what differed.
type MismatchKind string

// Mismatch kinds.
const (
	// MismatchMissing: the service does not know the device (404 or not listed).
	MismatchMissing MismatchKind = "missing"
	// MismatchStatus: the current status differs.
	MismatchStatus MismatchKind = "status"
	// MismatchTransitions: the sequence of (from, to, reason_code) differs.
	MismatchTransitions MismatchKind = "transitions"
	// MismatchTransitionTime: same sequence, but a transition's time is
	// further than CheckOptions.AtTolerance from the expected one.
	MismatchTransitionTime MismatchKind = "transition_time"
)

// Mismatch is one difference between the service and the oracle.
type Mismatch struct {
	Device    string
	Kind      MismatchKind
	Want, Got string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%q: %s: want %s, got %s", m.Device, m.Kind, m.Want, m.Got)
}

// CheckOptions configures [Check].
type CheckOptions struct {
	// StatusOnly compares the current status only (read from the device list,
	// a few requests for the whole fleet). Default: also compare every
	// device's transition history (two requests per device).
	StatusOnly bool
	// AtTolerance, when positive, also compares each transition's time with
	// the expected one (valid only when the expectation's times are the
	// service's receive times, e.g. the simulator's intended send times on
	// the same host). Default 0: times are not compared.
	AtTolerance time.Duration
	// Concurrency is the number of devices read in parallel. Default 16.
	Concurrency int
	// PageSize is the list page size with StatusOnly. Default 500.
	PageSize int
}

// Check reads the service's read API and compares every expected device with
// it: the current status with Final and, unless StatusOnly, the history's
// sequence of (from, to, reason_code) with Transitions. Devices the service
// has beyond the expectations are ignored. It returns the mismatches sorted
// by device (nil when everything matches); an error means the service could
// not be read (a 404 is a mismatch, not an error).
func Check(ctx context.Context, c *apiclient.Client, exps []trace.Expectation, opts CheckOptions) ([]Mismatch, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	var out []Mismatch
	if opts.StatusOnly {
		devs, err := c.AllDevices(ctx, apiclient.ListOptions{Limit: opts.PageSize})
		if err != nil {
			return nil, err
		}
		byID := make(map[string]events.Status, len(devs))
		for _, d := range devs {
			byID[d.ID] = d.Status
		}
		for _, e := range exps {
			st, ok := byID[e.Device]
			switch {
			case !ok:
				out = append(out, Mismatch{Device: e.Device, Kind: MismatchMissing, Want: string(e.Final), Got: "not listed"})
			case st != e.Final:
				out = append(out, Mismatch{Device: e.Device, Kind: MismatchStatus, Want: string(e.Final), Got: string(st)})
			}
		}
		sortMismatches(out)
		return out, nil
	}

	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, opts.Concurrency)
	for _, e := range exps {
		sem <- struct{}{}
		wg.Add(1)
		go func(e trace.Expectation) {
			defer func() { <-sem; wg.Done() }()
			ms, err := checkOne(ctx, c, e, opts)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			out = append(out, ms...)
		}(e)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	sortMismatches(out)
	return out, nil
}

func checkOne(ctx context.Context, c *apiclient.Client, e trace.Expectation, opts CheckOptions) ([]Mismatch, error) {
	d, err := c.Device(ctx, e.Device)
	if errors.Is(err, apiclient.ErrNotFound) {
		return []Mismatch{{Device: e.Device, Kind: MismatchMissing, Want: string(e.Final), Got: "404"}}, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Mismatch
	if d.Status != e.Final {
		out = append(out, Mismatch{Device: e.Device, Kind: MismatchStatus, Want: string(e.Final), Got: string(d.Status)})
	}
	trs, err := c.Transitions(ctx, e.Device)
	if err != nil {
		return nil, err
	}
	want, got := formatExpected(e.Transitions), formatGot(trs)
	if want != got {
		return append(out, Mismatch{Device: e.Device, Kind: MismatchTransitions, Want: want, Got: got}), nil
	}
	if opts.AtTolerance > 0 {
		for i, w := range e.Transitions {
			if diff := trs[i].At.Sub(w.At).Abs(); diff > opts.AtTolerance {
				out = append(out, Mismatch{Device: e.Device, Kind: MismatchTransitionTime,
					Want: w.String(), Got: fmt.Sprintf("%s (off by %s)", trs[i].At.UTC().Format(time.RFC3339Nano), diff)})
				break
			}
		}
	}
	return out, nil
}

func formatExpected(trs []trace.Transition) string {
	parts := make([]string, len(trs))
	for i, t := range trs {
		parts[i] = fmt.Sprintf("%s→%s(%s)", t.From, t.To, t.ReasonCode)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func formatGot(trs []apiclient.TransitionRecord) string {
	parts := make([]string, len(trs))
	for i, t := range trs {
		parts[i] = fmt.Sprintf("%s→%s(%s)", t.From, t.To, t.ReasonCode)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func sortMismatches(ms []Mismatch) {
	slices.SortStableFunc(ms, func(a, b Mismatch) int { return strings.Compare(a.Device, b.Device) })
}

// CheckUntil repeats [Check] every poll until it finds no mismatch, the
// deadline passes or ctx ends, and returns the last mismatches and the number
// of reads. Use it where the service's state converges and only its pipeline
// lags, e.g. after a virtual-time replay whose last tick is in the log: it
// waits out the lag without a fixed sleep. A read error is retried too; the
// last one is returned if the deadline passes on it.
func CheckUntil(ctx context.Context, c *apiclient.Client, exps []trace.Expectation, opts CheckOptions, deadline time.Time, poll time.Duration) ([]Mismatch, int, error) {
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	for n := 1; ; n++ {
		ms, err := Check(ctx, c, exps, opts)
		if err == nil && len(ms) == 0 {
			return nil, n, nil
		}
		if ctx.Err() != nil || time.Now().Add(poll).After(deadline) {
			return ms, n, err
		}
		if err := backoff.Sleep(ctx, poll); err != nil {
			return ms, n, err
		}
	}
}
