package bridge

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiterCancelGivesTheSlotBack(t *testing.T) {
	l := newLimiter(10*time.Second, 10)
	tk, _, ok := l.allow("d", t0)
	if !ok {
		t.Fatal("first refused")
	}
	if _, wait, ok := l.allow("d", t0.Add(time.Second)); ok || wait != 9*time.Second {
		t.Fatalf("second: ok %v wait %s", ok, wait)
	}
	l.cancel(tk) // its publish failed (503)
	if _, _, ok := l.allow("d", t0.Add(2*time.Second)); !ok {
		t.Fatal("retry after a cancelled heartbeat refused")
	}
}

func TestLimiterSweepBoundsMemory(t *testing.T) {
	l := newLimiter(10*time.Second, 10)
	for i := 0; i < 1000; i++ {
		l.allow(fmt.Sprint("dev-", i), t0)
	}
	l.allow("recent", t0.Add(30*time.Second))
	if n := l.sweep(t0.Add(59 * time.Second)); n != 1001 {
		t.Fatalf("swept too early: %d left", n)
	}
	if n := l.sweep(t0.Add(60 * time.Second)); n != 1 {
		t.Fatalf("%d devices tracked after a minute idle, want 1", n)
	}
	// A swept device is limited exactly as before: its state limited nothing.
	if _, _, ok := l.allow("dev-1", t0.Add(60*time.Second)); !ok {
		t.Fatal("swept device refused")
	}
}

func TestLimiterOff(t *testing.T) {
	l := newLimiter(0, 0)
	for i := 0; i < 100; i++ {
		if _, _, ok := l.allow("d", t0); !ok {
			t.Fatal("refused with limits off")
		}
	}
	if n := l.sweep(t0); n != 0 {
		t.Fatalf("off limiter tracks %d devices", n)
	}
}

func TestCheckTextEscapes(t *testing.T) {
	ok := []string{`{"a":"C:\\u0000dir"}`, `{"a":"\ud83d\ude00"}`, `{"a":"\u00e9\\"}`, `{"a":"x\"\u0001"}`}
	for _, s := range ok {
		if err := checkText([]byte(s)); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
	bad := []string{`{"a":"\u0000"}`, `{"a":"\\\u0000"}`, `{"a":"\ud800"}`, `{"a":"\ud800\u0041"}`, `{"a":"\udc00\ud800"}`, `{"\u0000":1}`}
	for _, s := range bad {
		if err := checkText([]byte(s)); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}
