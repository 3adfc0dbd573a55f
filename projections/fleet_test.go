package projections

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/devstatus/devstatus/events"
)

// FleetTransitions pages through every device's history in (at, seq) order,
// each row exactly once whatever the page size, ties in at included, and a
// [from, to) range selects exactly the rows inside it.
func TestFleetTransitionsPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	js := openBus(t).JS
	// 7 devices, 3 transitions each; devices d0..d3 share their times, so
	// the order among them is by sequence.
	type row struct {
		seq uint64
		s   float64
	}
	var rows []row
	for k := range 3 {
		for d := range 7 {
			s := float64(10*k + d/4*d) // d0..d3 at 10k; d4, d5, d6 later
			from, to := events.StatusRegistered, events.StatusConnected
			if k > 0 {
				from, to = events.StatusConnected, events.StatusTemporarilyOffline
				if k == 2 {
					from, to = to, events.StatusConnected
				}
			}
			seq := publishTransition(t, js, fmt.Sprintf("d%d", d), from, to, events.ReasonHeartbeat, s)
			rows = append(rows, row{seq, s})
		}
	}
	_, stop := startProjector(t, Config{DB: db, JetStream: js})
	defer stop()
	waitCheckpoint(t, db, ProjectionTransitions, rows[len(rows)-1].seq)
	slices.SortStableFunc(rows, func(a, b row) int {
		if a.s != b.s {
			if a.s < b.s {
				return -1
			}
			return 1
		}
		return int(a.seq) - int(b.seq)
	})
	want := func(from, to float64) []int64 {
		var out []int64
		for _, r := range rows {
			if r.s >= from && r.s < to {
				out = append(out, int64(r.seq))
			}
		}
		return out
	}
	st := NewStore(db)
	walk := func(f TransitionFilter) []int64 {
		t.Helper()
		var got []int64
		for pages := 0; ; pages++ {
			page, err := st.FleetTransitions(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			if f.Limit > 0 && len(page.Transitions) > f.Limit {
				t.Fatalf("page of %d with limit %d", len(page.Transitions), f.Limit)
			}
			for _, tr := range page.Transitions {
				got = append(got, tr.Seq)
			}
			if page.NextCursor == "" {
				return got
			}
			if pages > 100 {
				t.Fatal("no end")
			}
			f.Cursor = page.NextCursor
		}
	}
	for _, limit := range []int{0, 1, 2, 3, 4, 21, 22} {
		if got, w := walk(TransitionFilter{Limit: limit}), want(-1e9, 1e9); !slices.Equal(got, w) {
			t.Errorf("limit %d: %v, want %v", limit, got, w)
		}
	}
	for _, r := range [][2]float64{{10, 20}, {0, 10}, {11, 25}, {20, 21}, {5, 5}} {
		got := walk(TransitionFilter{From: at(r[0]), To: at(r[1]), Limit: 2})
		if w := want(r[0], r[1]); !slices.Equal(got, w) {
			t.Errorf("[%v, %v): %v, want %v", r[0], r[1], got, w)
		}
	}
	for _, f := range []TransitionFilter{{Cursor: "bogus"}, {Cursor: EncodeCursor("d1")}, {Cursor: "t.!!"}} {
		if _, err := st.FleetTransitions(ctx, f); !errors.Is(err, ErrInvalidCursor) {
			t.Errorf("cursor %q: %v", f.Cursor, err)
		}
	}
	if _, err := st.FleetTransitions(ctx, TransitionFilter{From: at(2), To: at(1)}); !errors.Is(err, ErrInvalidFilter) {
		t.Errorf("from after to: %v", err)
	}
}
