package testenv

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
)

// Eventually polls cond every 5 ms until it holds, failing the test when it
// still does not after within. what names the condition in the failure.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// StreamState returns the state (message count, first and last sequence) of
// the stream named stream on b, failing the test on any error.
func StreamState(t testing.TB, b *bus.Bus, stream string) jetstream.StreamState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, state := openStream(ctx, t, b, stream)
	return state
}

// Messages returns every message stored in the stream named stream on b, in
// sequence order (deleted sequences are skipped), failing the test on any
// error.
func Messages(t testing.TB, b *bus.Bus, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, state := openStream(ctx, t, b, stream)
	if state.Msgs == 0 {
		return nil
	}
	var out []*jetstream.RawStreamMsg
	for seq := state.FirstSeq; seq <= state.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func openStream(ctx context.Context, t testing.TB, b *bus.Bus, stream string) (jetstream.Stream, jetstream.StreamState) {
	t.Helper()
	st, err := b.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st, info.State
}

// StoredInput is one event of the input stream with where it is stored.
type StoredInput struct {
	Subject string
	Seq     uint64
	In      *events.Input
}

// InputEvents returns every event on b's input stream, in order, failing the
// test when one does not decode and reporting an error for each device event
// that is not on its device's subject.
func InputEvents(t testing.TB, b *bus.Bus) []StoredInput {
	t.Helper()
	var out []StoredInput
	for _, m := range Messages(t, b, events.InputStream) {
		in, err := events.DecodeInput(m.Data)
		if err != nil {
			t.Fatalf("seq %d: %v", m.Sequence, err)
		}
		if in.Device != "" {
			if want := events.DeviceSubject(in.Device, b.Partitions()); m.Subject != want {
				t.Errorf("event %s of device %q on subject %q, want %q", in.ID, in.Device, m.Subject, want)
			}
			if _, dev, err := events.ParseInputSubject(m.Subject); err != nil || dev != in.Device {
				t.Errorf("subject %q parses to %q (%v), event says %q", m.Subject, dev, err, in.Device)
			}
		}
		out = append(out, StoredInput{Subject: m.Subject, Seq: m.Sequence, In: in})
	}
	return out
}

// Inputs is InputEvents without where each is stored.
func Inputs(t testing.TB, b *bus.Bus) []*events.Input {
	t.Helper()
	var out []*events.Input
	for _, s := range InputEvents(t, b) {
		out = append(out, s.In)
	}
	return out
}

// OfType returns the events of evs of type typ, in order.
func OfType(evs []*events.Input, typ events.Type) []*events.Input {
	var out []*events.Input
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// Start runs run in a goroutine with a context that is cancelled by the
// returned stop, which then waits for run to return. stop may be called more
// than once; the test's cleanup calls it too.
func Start(t testing.TB, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = run(ctx) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}
