package sim_test

import (
	"fmt"
	"time"

	"github.com/devstatus/devstatus/pkg/sim"
	"github.com/devstatus/devstatus/pkg/trace"
)

// A plan is pure: behaviours, heartbeat times and expectations, before any
// request. Plan.Run then drives a service and checks it.
func ExampleNewPlan() {
	p, err := sim.NewPlan(sim.Scenario{
		Devices: 14, Prefix: "demo-", Seed: 1,
		Interval:   time.Second,
		Thresholds: trace.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 5 * time.Second},
	})
	if err != nil {
		panic(err)
	}
	for _, d := range p.Devices {
		if d.Behaviour == sim.ReturnFromDisconnected {
			for _, tr := range d.Expect.Transitions {
				fmt.Printf("%s→%s (%s)\n", tr.From, tr.To, tr.ReasonCode)
			}
			break
		}
	}
	fmt.Println("check at", p.CheckAt, "stop at", p.Stop)
	// Output:
	// registered→connected (heartbeat)
	// connected→temporarily_offline (heartbeat_timeout)
	// temporarily_offline→disconnected (liveness_timeout)
	// disconnected→connected (heartbeat)
	// check at 11.9s stop at 13.7s
}
