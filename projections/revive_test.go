package projections

import (
	"context"
	"testing"

	"github.com/devstatus/devstatus/events"
)

// A device decommissioned and registered again starts over: registered, no
// liveness, remote control off — not its old incarnation's status (the
// worker publishes no transition for a registration).
func TestReRegisteredDeviceStartsOver(t *testing.T) {
	db := openDB(t)
	b := openBus(t)
	_, stop := startProjector(t, Config{DB: db, JetStream: b.JS})
	defer stop()
	publishInput(t, b.JS, registration("rereg", "g", 0))
	publishInput(t, b.JS, heartbeat("rereg", 1, `{"x":1}`))
	publishInput(t, b.JS, ping("rereg", 40, 41, true))
	publishInput(t, b.JS, &events.Input{V: 1, Type: events.TypeRemoteControlChanged, ID: "rc", Device: "rereg", At: at(2), RemoteControl: &events.RemoteControl{Enabled: true}})
	publishTransition(t, b.JS, "rereg", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	dec := publishInput(t, b.JS, &events.Input{V: 1, Type: events.TypeDeviceDecommissioned, ID: "dec", Device: "rereg", At: at(50)})
	waitCheckpoint(t, db, ProjectionLiveness, dec)
	waitCheckpoint(t, db, ProjectionTransitions, 1)
	seq := publishInput(t, b.JS, registration("rereg", "h", 60))
	waitCheckpoint(t, db, ProjectionLiveness, seq)

	d, err := NewStore(db).Device(context.Background(), "rereg")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != events.StatusRegistered || !d.StatusSince.Equal(at(60)) || d.LastHeartbeatAt != nil ||
		d.LastPingAt != nil || d.Metrics != nil || d.RemoteControlEnabled || d.Group != "h" {
		t.Fatalf("re-registered device: %+v", d)
	}
	// The transitions projection's stale transitions of the old incarnation
	// cannot overwrite it (status_seq guard); a new one does.
	publishTransition(t, b.JS, "rereg", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 70)
	waitCheckpoint(t, db, ProjectionTransitions, 2)
	if d, _ = NewStore(db).Device(context.Background(), "rereg"); d.Status != events.StatusConnected {
		t.Fatalf("after the new incarnation's heartbeat: %+v", d)
	}
}
