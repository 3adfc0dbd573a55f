package testenv

import "go.uber.org/goleak"

// LeakOptions are the goroutines of code we do not own that goleak must
// ignore in every package's TestMain:
//   - nats-server's process-usage sampler (pse), started once per process;
//   - nats.go v1.55.0's resetPendingAcksOnReconnect: ObjectStore.Put starts
//     it and its cleanup can nil the channel it waits on first, leaving it
//     blocked forever (about 3 in 1 000 PutBytes calls; the worker writes
//     snapshots with PutBytes). Remove when nats.go fixes it.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server/pse.periodic"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server/pse.updateUsage"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	}
}
