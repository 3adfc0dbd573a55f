package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for n, w := range want {
		if d := p.Delay(n); d != w*time.Millisecond {
			t.Errorf("Delay(%d) = %s, want %s", n, d, w*time.Millisecond)
		}
	}
	if d := (Policy{}).Delay(3); d != 0 {
		t.Errorf("zero policy: %s", d)
	}
	j := Policy{Min: time.Second, Max: time.Second, Jitter: 0.2}
	for range 1000 {
		if d := j.Delay(0); d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("jittered delay %s outside ±10%%", d)
		}
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled sleep: %v", err)
	}
	if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("zero sleep on a done ctx: %v", err)
	}
}
