package projections

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/internal/testenv"
)

const weirdID = "G1/site 1/Gerät:東京.*>"

func TestProjectorEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	b := openBus(t)
	js := b.JS

	// Input stream: registrations, heartbeats (one late), pings (one late),
	// remote control, a tick, a decommission and a revival, an unknown device.
	publishInput(t, js, registration("A", "lobby", 0))
	publishInput(t, js, registration("B", "lab", 1))
	publishInput(t, js, registration(weirdID, "lab", 2))
	publishInput(t, js, registration("C", "lobby", 3))
	publishInput(t, js, heartbeat("A", 5, `{"battery":80,"app_version":"1.2.3"}`))
	publishInput(t, js, heartbeat("X-unknown", 6, ""))
	publishInput(t, js, ping("B", 10, 11, false))
	publishInput(t, js, &events.Input{Type: events.TypeTick, At: at(12)})
	publishInput(t, js, &events.Input{Type: events.TypeRemoteControlChanged, Device: "A", At: at(20), Actor: "admin",
		RemoteControl: &events.RemoteControl{Enabled: true}})
	publishInput(t, js, heartbeat("A", 35, ""))
	publishInput(t, js, heartbeat("A", 30, `{"battery":1}`)) // late: older than 35
	publishInput(t, js, ping("B", 8, 40, true))              // late probe: checked before the one at 10
	publishInput(t, js, heartbeat(weirdID, 41, `{}`))
	publishInput(t, js, &events.Input{Type: events.TypeDeviceDecommissioned, Device: "C", At: at(42), Actor: "admin"})
	publishInput(t, js, &events.Input{Type: events.TypeDeviceDecommissioned, Device: "B", At: at(43), Actor: "admin"})
	lastIn := publishInput(t, js, registration("B", "lab2", 44)) // revived, new group
	publishInput(t, js, &events.Input{Type: events.TypeTick, At: at(45)})

	// Transitions stream.
	publishTransition(t, js, "A", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 5)
	publishTransition(t, js, "B", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1.5)
	publishTransition(t, js, "A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 75)
	publishTransition(t, js, weirdID, events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 41)
	lastTr := publishTransition(t, js, "A", events.StatusTemporarilyOffline, events.StatusConnected, events.ReasonHeartbeat, 80)

	reg := prometheus.NewRegistry()
	p, stop := startProjector(t, Config{DB: db, JetStream: js, Registerer: reg})
	waitCheckpoint(t, db, ProjectionLiveness, lastIn)
	waitCheckpoint(t, db, ProjectionTransitions, lastTr)
	testenv.Eventually(t, 5*time.Second, "ready", func() bool { return p.Ready(ctx) == nil })

	st := NewStore(db)
	a, err := st.Device(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != events.StatusConnected || !a.StatusSince.Equal(at(80)) || a.ReasonCode != "heartbeat" || a.Group != "lobby" {
		t.Errorf("A status: %+v", a)
	}
	if a.LastHeartbeatAt == nil || !a.LastHeartbeatAt.Equal(at(35)) {
		t.Errorf("A last heartbeat %v, want %v (late heartbeat must not move it back)", a.LastHeartbeatAt, at(35))
	}
	// Metrics are the latest by event time among heartbeats that carry any:
	// the late heartbeat at 30 (the one at 35 had none).
	if string(a.Metrics) != `{"battery": 1}` || a.MetricsAt == nil || !a.MetricsAt.Equal(at(30)) {
		t.Errorf("A metrics %s at %v", a.Metrics, a.MetricsAt)
	}
	if !a.RemoteControlEnabled || a.LastPingAt != nil || a.LastPingOK != nil {
		t.Errorf("A remote control / ping: %+v", a)
	}
	bdev, err := st.Device(ctx, "B")
	if err != nil {
		t.Fatalf("revived B: %v", err)
	}
	if bdev.Group != "lab2" || bdev.LastPingAt == nil || !bdev.LastPingAt.Equal(at(10)) || bdev.LastPingOK == nil || *bdev.LastPingOK {
		t.Errorf("B: %+v (late successful probe must not win)", bdev)
	}
	if bdev.LastHeartbeatAt != nil || bdev.Status != events.StatusConnected {
		t.Errorf("B: %+v", bdev)
	}
	w, err := st.Device(ctx, weirdID)
	if err != nil || w.Status != events.StatusConnected || string(w.Metrics) != `{}` {
		t.Errorf("weird id: %+v %v", w, err)
	}
	if _, err := st.Device(ctx, "C"); !errors.Is(err, ErrNotFound) {
		t.Errorf("decommissioned C: err = %v, want ErrNotFound", err)
	}
	if _, err := st.Device(ctx, "X-unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown X: err = %v, want ErrNotFound", err)
	}
	if n := metricValue(t, p.m.unknown.WithLabelValues(ProjectionLiveness)); n != 1 {
		t.Errorf("unknown device events = %v, want 1", n)
	}
	trs, err := st.Transitions(ctx, "A", time.Time{}, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tr := range trs {
		got = append(got, string(tr.From)+">"+string(tr.To)+"@"+tr.At.Format(time.RFC3339))
	}
	want := []string{
		"registered>connected@" + at(5).Format(time.RFC3339),
		"connected>temporarily_offline@" + at(75).Format(time.RFC3339),
		"temporarily_offline>connected@" + at(80).Format(time.RFC3339),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("A history:\n got %v\nwant %v", got, want)
	}
	if trs[1].ObservedAt == nil || !trs[1].ObservedAt.Equal(at(75.5)) || trs[1].CauseType != "heartbeat" || trs[1].CauseSeq == 0 {
		t.Errorf("history row: %+v", trs[1])
	}
	lag := p.Lag()
	for _, l := range lag {
		if l.Events != 0 || l.Checkpoint == 0 {
			t.Errorf("lag after catching up: %+v", l)
		}
	}
	before := dump(t, db)
	stop()

	// Restart: nothing new, nothing duplicated.
	p2, stop2 := startProjector(t, Config{DB: db, JetStream: js})
	testenv.Eventually(t, 5*time.Second, "ready after restart", func() bool { return p2.Ready(ctx) == nil })
	if after := dump(t, db); !reflect.DeepEqual(before, after) {
		t.Errorf("restart changed the projection:\nbefore %v\nafter  %v", before, after)
	}
	stop2()

	// Re-apply everything: reset the checkpoints to 0.
	if _, err := db.Exec(`UPDATE projection_checkpoints SET last_seq = 0`); err != nil {
		t.Fatal(err)
	}
	_, stop3 := startProjector(t, Config{DB: db, JetStream: js, BatchSize: 3})
	waitCheckpoint(t, db, ProjectionLiveness, lastIn)
	waitCheckpoint(t, db, ProjectionTransitions, lastTr)
	stop3()
	if after := dump(t, db); !reflect.DeepEqual(before, after) {
		t.Errorf("re-applying changed the projection:\nbefore %v\nafter  %v", before, after)
	}

	// New events after a restart are applied.
	publishTransition(t, js, "A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonPingFailed, 90)
	last := publishInput(t, js, heartbeat("A", 95, ""))
	_, stop4 := startProjector(t, Config{DB: db, JetStream: js})
	waitCheckpoint(t, db, ProjectionLiveness, last)
	testenv.Eventually(t, 5*time.Second, "A offline at 90", func() bool {
		d, err := st.Device(ctx, "A")
		return err == nil && d.Status == events.StatusTemporarilyOffline && d.ReasonCode == "ping_failed" && d.LastHeartbeatAt.Equal(at(95))
	})
	stop4()
}

// Scenario 9: a transition whose reason holds a NUL byte is set aside in
// dead_letters; the device behind it in the same partition is projected
// within a second.
func TestScenario9PoisonTransition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	b := openBus(t)
	js := b.JS
	// Two devices of one partition.
	p0 := events.Partition("P", testPartitions)
	q := ""
	for i := 0; q == ""; i++ {
		if id := "Q" + string(rune('a'+i)); events.Partition(id, testPartitions) == p0 {
			q = id
		}
	}
	poison := transition("P", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
	poison.Reason = "bad\x00reason"
	poisonSeq := publishStatusChanged(t, js, poison)
	publishTransition(t, js, q, events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 2)
	notJSON := publishRaw(t, js, events.TransitionSubject("P", testPartitions), []byte("{not json"))
	lastSeq := publishTransition(t, js, "P", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 3)

	start := time.Now()
	p, _ := startProjector(t, Config{DB: db, JetStream: js})
	st := NewStore(db)
	testenv.Eventually(t, time.Second, "the next device is projected within 1s", func() bool {
		d, err := st.Device(ctx, q)
		return err == nil && d.Status == events.StatusConnected
	})
	t.Logf("next device projected %s after start", time.Since(start))
	waitCheckpoint(t, db, ProjectionTransitions, lastSeq)
	var dls []struct {
		Seq   int64  `db:"seq"`
		Error string `db:"error"`
		Data  []byte `db:"data"`
	}
	if err := db.Select(&dls, `SELECT seq, error, data FROM dead_letters WHERE stream = $1 ORDER BY seq`, events.TransitionStream); err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 || dls[0].Seq != int64(poisonSeq) || dls[1].Seq != int64(notJSON) {
		t.Fatalf("dead letters: %+v", dls)
	}
	if !strings.Contains(dls[0].Error, "NUL") || !strings.Contains(string(dls[0].Data), `bad\u0000reason`) {
		t.Errorf("dead letter: %+v", dls[0])
	}
	if d, err := st.Device(ctx, "P"); err != nil || !d.StatusSince.Equal(at(3)) {
		t.Errorf("P after its poison event: %+v %v", d, err)
	}
	if n := metricValue(t, p.m.deadLetters.WithLabelValues(ProjectionTransitions)); n != 2 {
		t.Errorf("dead letter metric = %v", n)
	}
}

// A message that decodes but that Postgres refuses (here: a year-0 time,
// and jsonb metrics with \u0000) fails its batch; after MaxAttempts the
// batch is bisected, the message set aside, every other one applied.
func TestPoisonBisect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	b := openBus(t)
	js := b.JS
	var badTr, badIn uint64
	var lastTr, lastIn uint64
	for i := range 40 {
		id := "dev-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		publishInput(t, js, registration(id, "g", 0))
		if i == 17 {
			e := transition(id, events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
			e.At = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
			badTr = publishStatusChanged(t, js, e)
			badIn = publishInput(t, js, heartbeat(id, 1, `{"note":"nul \u0000 inside"}`))
			continue
		}
		lastTr = publishTransition(t, js, id, events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 1)
		lastIn = publishInput(t, js, heartbeat(id, 1, `{"ok":true}`))
	}
	start := time.Now()
	p, _ := startProjector(t, Config{DB: db, JetStream: js, MaxAttempts: 3})
	waitCheckpoint(t, db, ProjectionTransitions, lastTr)
	waitCheckpoint(t, db, ProjectionLiveness, lastIn)
	t.Logf("caught up %s after start", time.Since(start))

	var n int
	if err := db.Get(&n, `SELECT count(*) FROM devices WHERE status = 'connected' AND last_heartbeat_at IS NOT NULL`); err != nil {
		t.Fatal(err)
	}
	if n != 39 {
		t.Errorf("%d devices fully projected, want 39", n)
	}
	var dls []struct {
		Stream   string `db:"stream"`
		Seq      int64  `db:"seq"`
		Attempts int    `db:"attempts"`
		Error    string `db:"error"`
	}
	if err := db.Select(&dls, `SELECT stream, seq, attempts, error FROM dead_letters ORDER BY stream, seq`); err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 || dls[0].Seq != int64(badIn) || dls[1].Seq != int64(badTr) {
		t.Fatalf("dead letters: %+v", dls)
	}
	for _, dl := range dls {
		if dl.Attempts < 3 || dl.Error == "" {
			t.Errorf("dead letter %+v: want attempts >= MaxAttempts and the error", dl)
		}
	}
	if p.Ready(ctx) != nil {
		t.Errorf("not ready after setting poison aside: %v", p.Ready(ctx))
	}
}

// Scenario 11: one batch touches A twice; it commits; replaying A's first
// event changes nothing.
func TestScenario11BatchTouchesDeviceTwice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	p, err := New(Config{DB: db, JetStream: openBus(t).JS, Logger: nil})
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(p, transitionsKind())
	msg := func(seq uint64, e *events.StatusChanged) rawMsg {
		b, err := events.EncodeStatusChanged(e)
		if err != nil {
			t.Fatal(err)
		}
		return rawMsg{Seq: seq, Subject: events.TransitionSubject(e.Device, testPartitions), Data: b}
	}
	batch := []rawMsg{
		msg(1, transition("A", events.StatusConnected, events.StatusTemporarilyOffline, events.ReasonHeartbeatTimeout, 70)),
		msg(2, transition("A", events.StatusTemporarilyOffline, events.StatusConnected, events.ReasonHeartbeat, 75)),
		msg(3, transition("B", events.StatusRegistered, events.StatusConnected, events.ReasonHeartbeat, 71)),
	}
	if err := r.apply(ctx, batch); err != nil {
		t.Fatal(err)
	}
	st := NewStore(db)
	check := func(when string) {
		t.Helper()
		a, err := st.Device(ctx, "A")
		if err != nil || a.Status != events.StatusConnected || !a.StatusSince.Equal(at(75)) {
			t.Errorf("%s: A = %+v, %v; want connected since 75", when, a, err)
		}
		b, err := st.Device(ctx, "B")
		if err != nil || b.Status != events.StatusConnected || !b.StatusSince.Equal(at(71)) {
			t.Errorf("%s: B = %+v, %v; want connected since 71", when, b, err)
		}
		trs, err := st.Transitions(ctx, "A", time.Time{}, time.Time{}, 0)
		if err != nil || len(trs) != 2 || trs[0].Seq != 1 || trs[1].Seq != 2 {
			t.Errorf("%s: A history %+v, %v", when, trs, err)
		}
	}
	check("after the batch")
	before := dump(t, db)
	if err := r.apply(ctx, batch[:1]); err != nil { // replay A's event at 70
		t.Fatal(err)
	}
	check("after replaying A's 70")
	if err := r.apply(ctx, batch); err != nil { // replay the whole batch
		t.Fatal(err)
	}
	check("after replaying the batch")
	if after := dump(t, db); !reflect.DeepEqual(before, after) {
		t.Errorf("replay changed rows:\n%v\n%v", before, after)
	}
}

// The liveness projection coalesces a batch per device: late heartbeats and
// probes never move times back, the latest lifecycle event wins.
func TestLivenessBatchCoalescing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	p, err := New(Config{DB: db, JetStream: openBus(t).JS})
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(p, livenessKind())
	var seq uint64
	msg := func(e *events.Input) rawMsg {
		seq++
		b, err := events.EncodeInput(e)
		if err != nil {
			t.Fatal(err)
		}
		return rawMsg{Seq: seq, Subject: events.DeviceSubject(e.Device, testPartitions), Data: b}
	}
	batch := []rawMsg{
		msg(registration("A", "g1", 0)),
		msg(heartbeat("A", 30, `{"v":2}`)),
		msg(heartbeat("A", 10, `{"v":1}`)),
		msg(ping("A", 25, 26, false)),
		msg(ping("A", 20, 40, true)),
		msg(&events.Input{Type: events.TypeDeviceDecommissioned, Device: "A", At: at(41)}),
		msg(registration("A", "g2", 42)),
		msg(&events.Input{Type: events.TypeRemoteControlChanged, Device: "A", At: at(43), RemoteControl: &events.RemoteControl{Enabled: true}}),
		msg(&events.Input{Type: events.TypeRemoteControlChanged, Device: "A", At: at(44), RemoteControl: &events.RemoteControl{Enabled: false}}),
		msg(&events.Input{Type: events.TypeReconnectRequested, Device: "A", At: at(45)}),
		msg(registration("D", "g1", 0)),
		msg(&events.Input{Type: events.TypeDeviceDecommissioned, Device: "D", At: at(46)}),
	}
	if err := r.apply(ctx, batch); err != nil {
		t.Fatal(err)
	}
	st := NewStore(db)
	a, err := st.Device(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if a.Group != "g2" || !a.RegisteredAt.Equal(at(42)) || !a.LastHeartbeatAt.Equal(at(30)) || string(a.Metrics) != `{"v": 2}` ||
		!a.LastPingAt.Equal(at(25)) || *a.LastPingOK || a.RemoteControlEnabled || a.Status != events.StatusRegistered || !a.StatusSince.Equal(at(42)) {
		t.Errorf("A = %+v", a)
	}
	if _, err := st.Device(ctx, "D"); !errors.Is(err, ErrNotFound) {
		t.Errorf("D registered then decommissioned in one batch: %v", err)
	}
	// A second batch with older events changes nothing but the sequence.
	before := dump(t, db)
	batch2 := []rawMsg{msg(heartbeat("A", 5, `{"v":0}`)), msg(ping("A", 1, 50, true))}
	if err := r.apply(ctx, batch2); err != nil {
		t.Fatal(err)
	}
	a2, _ := st.Device(ctx, "A")
	a.Metrics, a2.Metrics = nil, nil
	if !reflect.DeepEqual(a, a2) {
		t.Errorf("older events moved A:\n%+v\n%+v", a, a2)
	}
	// Re-applying both batches is a no-op.
	after := dump(t, db)
	if err := r.apply(ctx, append(batch, batch2...)); err != nil {
		t.Fatal(err)
	}
	if again := dump(t, db); !reflect.DeepEqual(after, again) {
		t.Errorf("re-apply changed rows")
	}
	_ = before
	var metrics map[string]int
	var raw []byte
	if err := db.Get(&raw, `SELECT metrics FROM devices WHERE id = 'A'`); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &metrics); err != nil || metrics["v"] != 2 {
		t.Errorf("metrics %s", raw)
	}
}

// metricValue reads a counter or gauge.
func metricValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
