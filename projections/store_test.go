package projections

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// A device is silent for longer than stale_for when the time since its last
// heartbeat — or, if it never sent one, since its registration — exceeds
// stale_for; one with neither time counts as stale. (Until this was fixed a
// device registered a minute ago was listed by stale_for=5m.)
func TestListStaleForCountsFromRegistration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	js := openBus(t).JS
	// now = 0:
	//	old     registered 600 s ago, never heard from
	//	new     registered 60 s ago, never heard from
	//	edge    registered exactly 300 s ago, never heard from
	//	hb      registered 600 s ago, heartbeat 10 s ago
	//	hbold   registered 600 s ago, heartbeat 400 s ago
	//	orphan  no registration time, no heartbeat (its row comes from a
	//	        transition after the registration event left the input stream)
	publishInput(t, js, registration("old", "g", -600))
	publishInput(t, js, registration("new", "g", -60))
	publishInput(t, js, registration("edge", "g", -300))
	publishInput(t, js, registration("hb", "g", -600))
	publishInput(t, js, registration("hbold", "g", -600))
	publishInput(t, js, heartbeat("hb", -10, ""))
	lastIn := publishInput(t, js, heartbeat("hbold", -400, ""))
	lastTr := publishTransition(t, js, "orphan", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, -900)
	_, stop := startProjector(t, Config{DB: db, JetStream: js})
	defer stop()
	waitCheckpoint(t, db, ProjectionLiveness, lastIn)
	waitCheckpoint(t, db, ProjectionTransitions, lastTr)

	var orphanNulls bool
	if err := db.Get(&orphanNulls, `SELECT registered_at IS NULL AND last_heartbeat_at IS NULL FROM devices WHERE id = 'orphan'`); err != nil || !orphanNulls {
		t.Fatalf("orphan should have neither time (%v)", err)
	}
	st := NewStore(db)
	for _, c := range []struct {
		staleFor time.Duration
		want     []string
	}{
		{5 * time.Minute, []string{"hbold", "old", "orphan"}}, // new: 60 s; edge: exactly 300 s is not "longer than"
		{30 * time.Second, []string{"edge", "hbold", "new", "old", "orphan"}},
		{9 * time.Second, []string{"edge", "hb", "hbold", "new", "old", "orphan"}},
		{time.Hour, []string{"orphan"}},
	} {
		for _, limit := range []int{0, 2} { // one page, and pages of 2 (the cursor with the filter)
			var ids []string
			f := ListFilter{StaleFor: c.staleFor, Limit: limit}
			for {
				page, err := st.List(ctx, f, at(0).In(time.Local))
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range page.Devices {
					ids = append(ids, d.ID)
				}
				if page.NextCursor == "" {
					break
				}
				f.Cursor = page.NextCursor
			}
			if !reflect.DeepEqual(ids, c.want) {
				t.Errorf("stale for %s (limit %d): %v, want %v", c.staleFor, limit, ids, c.want)
			}
		}
	}
}
