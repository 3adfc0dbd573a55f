package trace_test

import (
	"fmt"
	"time"

	"github.com/devstatus/devstatus/pkg/trace"
)

// A node heartbeats at 0 s and 30 s, is down until 400 s, then heartbeats
// once more; the replay ends at 430 s.
func ExampleExpect() {
	t0 := time.Date(2006, 9, 21, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	e, err := trace.Expect("G1/site1/c1/node1", []time.Time{at(0), at(30), at(400)}, at(430), trace.DefaultThresholds())
	if err != nil {
		panic(err)
	}
	for _, tr := range e.Transitions {
		fmt.Printf("+%s %s→%s (%s)\n", tr.At.Sub(t0), tr.From, tr.To, tr.ReasonCode)
	}
	fmt.Println("final:", e.Final)
	// Output:
	// +0s registered→connected (heartbeat)
	// +1m10s connected→temporarily_offline (heartbeat_timeout)
	// +5m30s temporarily_offline→disconnected (liveness_timeout)
	// +6m40s disconnected→connected (heartbeat)
	// final: connected
}

// The committed excerpt: one busy day of the Grid'5000 trace.
func ExampleTrace_Summarize() {
	tr, err := trace.Open(trace.TestdataDay())
	if err != nil {
		panic(err)
	}
	s, err := tr.Summarize(trace.TestdataDayWindow(), trace.DefaultThresholds())
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Outages.UpTo40s, s.Outages.To300s, s.Outages.Over300s, s.Final["disconnected"])
	// Output: 132 821 309 25
}
