package service

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/readapi"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

// holdFleet is a service with short thresholds (offline_after 2s,
// disconnect_after 6s) and n registered devices.
type holdFleet struct {
	t      *testing.T
	svc    *Service
	base   string
	ids    []string
	tokens map[string]string
}

func startHoldFleet(t *testing.T, n int, hold OutageHoldConfig) *holdFleet {
	t.Helper()
	dsn, _ := testenv.Postgres(t)
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 6 * time.Second, PingIgnoreWithin: time.Second}}
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4},
		DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond, HeartbeatInterval: time.Second, ProbeAfter: -1,
		AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.Logger(t), OutageHold: hold})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop(context.Background()) })
	f := &holdFleet{t: t, svc: svc, base: "http://" + svc.Addr(), tokens: map[string]string{}}
	for i := range n {
		id := fmt.Sprintf("site/kiosk %02d", i)
		var reg struct{ ID, Token string }
		if code := call(t, "POST", f.base+"/v1/devices", "admin", map[string]string{"id": id}, &reg); code != 201 {
			t.Fatalf("register %s: %d", id, code)
		}
		f.ids = append(f.ids, id)
		f.tokens[id] = reg.Token
	}
	return f
}

// heartbeat sends one heartbeat per device, all at once (a fleet
// heartbeats concurrently; one after the other they would spread over more
// than offline_after on a loaded machine).
func (f *holdFleet) heartbeat(ids []string) {
	f.t.Helper()
	codes := make([]int, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = post(f.base+"/v1/devices/"+url.PathEscape(id)+"/heartbeat", f.tokens[id])
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			f.t.Fatalf("heartbeat %s: %d", ids[i], c)
		}
	}
}

func post(u, token string) int {
	req, _ := http.NewRequest(http.MethodPost, u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (f *holdFleet) summary() readapi.SummaryJSON {
	f.t.Helper()
	var s readapi.SummaryJSON
	if code := call(f.t, "GET", f.base+"/v1/summary", "admin", nil, &s); code != 200 {
		f.t.Fatalf("summary: %d", code)
	}
	return s
}

// waitSummary polls GET /v1/summary until ok (10 s at most).
func (f *holdFleet) waitSummary(what string, ok func(readapi.SummaryJSON) bool) readapi.SummaryJSON {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := f.summary()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("waiting for %s: summary %+v", what, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type histTransition struct {
	From, To string
	At       time.Time
}

func (f *holdFleet) history(id string) []histTransition {
	f.t.Helper()
	var h struct{ Transitions []histTransition }
	call(f.t, "GET", f.base+"/v1/devices/"+url.PathEscape(id)+"/transitions", "admin", nil, &h)
	return h.Transitions
}

// holdEvents opens GET /v1/stream and delivers its outage_hold events.
func (f *holdFleet) holdEvents() <-chan readapi.OutageHold {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.base+"/v1/stream", nil)
	req.Header.Set("Authorization", "Bearer admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		f.t.Fatalf("stream: %v %v", err, resp)
	}
	out := make(chan readapi.OutageHold, 16)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		event := ""
		for sc.Scan() {
			line := sc.Text()
			if e, ok := strings.CutPrefix(line, "event: "); ok {
				event = e
			} else if d, ok := strings.CutPrefix(line, "data: "); ok && event == readapi.EventOutageHold {
				var h readapi.OutageHold
				if json.Unmarshal([]byte(d), &h) == nil {
					out <- h
				}
			} else if line == "" {
				event = ""
			}
		}
	}()
	return out
}

func nextHold(t *testing.T, ch <-chan readapi.OutageHold) readapi.OutageHold {
	t.Helper()
	select {
	case h := <-ch:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no outage_hold event on the stream")
	}
	return readapi.OutageHold{}
}

// cutAll connects every device (one heartbeat each), then they all go
// silent; it returns the time after the last heartbeat was answered.
func (f *holdFleet) cutAll() time.Time {
	f.heartbeat(f.ids)
	return time.Now()
}

// sameMicro compares times as Postgres stores them (microseconds).
func sameMicro(a, b time.Time) bool {
	d := a.Sub(b)
	return d < time.Microsecond && d > -time.Microsecond
}

// TestOutageHoldEndToEnd: the bridge stops receiving from all 12 devices for
// longer than disconnect_after. The hold starts (summary, live stream,
// /metrics), nobody becomes disconnected while it lasts; 9 devices come
// back (connected), the share still silent falls below half and the hold
// ends; the other 3 become disconnected exactly disconnect_after after the
// end.
func TestOutageHoldEndToEnd(t *testing.T) {
	t.Parallel()
	f := startHoldFleet(t, 12, OutageHoldConfig{})
	stream := f.holdEvents()
	if h := nextHold(t, stream); h.Active || h.Since != nil {
		t.Fatalf("first stream event %+v", h)
	}
	last := f.cutAll()
	s := f.waitSummary("the hold", func(s readapi.SummaryJSON) bool { return s.OutageHold.Active })
	if s.OutageHold.Since == nil || !strings.Contains(s.OutageHold.Reason, "went silent within 2s") {
		t.Fatalf("summary hold %+v", s.OutageHold)
	}
	if h := nextHold(t, stream); !h.Active || h.Since == nil || !h.Since.Equal(*s.OutageHold.Since) {
		t.Fatalf("stream hold %+v, summary %+v", h, s.OutageHold)
	}
	if fam := scrape(t, f.base)["devstatus_outage_hold_active"]; fam == nil || value(fam.Metric[0]) != 1 {
		t.Fatalf("devstatus_outage_hold_active: %v", fam)
	}
	// Silent past disconnect_after (+1 s): still nobody disconnected.
	for time.Since(last) < 7*time.Second {
		if s := f.summary(); s.Disconnected != 0 || !s.OutageHold.Active {
			t.Fatalf("during the hold: %+v", s)
		}
		time.Sleep(200 * time.Millisecond)
	}
	back, silent := f.ids[:9], f.ids[9:]
	f.heartbeat(back)
	f.waitSummary("the end of the hold", func(s readapi.SummaryJSON) bool { return !s.OutageHold.Active })
	if h := nextHold(t, stream); h.Active || h.Since != nil || !strings.Contains(h.Reason, "recovered") {
		t.Fatalf("stream end %+v", h)
	}
	st, _ := f.svc.Hold.State()
	end := st.Ended
	f.waitSummary("the silent ones disconnected", func(s readapi.SummaryJSON) bool {
		f.heartbeat(back) // the ones back keep heartbeating
		return s.Disconnected == 3
	})
	for _, id := range back {
		if h := f.history(id); len(h) == 0 || h[len(h)-1].To != "connected" {
			t.Errorf("%s came back but is %v", id, h)
		}
	}
	for _, id := range silent {
		h := f.history(id)
		if len(h) == 0 || h[len(h)-1].To != "disconnected" || !sameMicro(h[len(h)-1].At, end.Add(6*time.Second)) {
			t.Errorf("%s: %v, want disconnected at the end of the hold (%s) + 6s", id, h, end)
		}
	}
}

// TestOutageHoldRelease: an operator ends the hold (202); the silent devices
// become disconnected disconnect_after after the release; a release with no
// hold on answers 200, released false.
func TestOutageHoldRelease(t *testing.T) {
	t.Parallel()
	f := startHoldFleet(t, 10, OutageHoldConfig{})
	var rel OutageHoldReleaseJSON
	code := 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if code = call(t, "POST", f.base+"/v1/outage-hold/release", "admin", nil, &rel); code != 503 {
			break // 503 only until the instance has read the hold's state
		}
	}
	if code != 200 || rel.Released {
		t.Fatalf("release without a hold: %d %+v", code, rel)
	}
	if code := call(t, "POST", f.base+"/v1/outage-hold/release", "", nil, nil); code != 401 {
		t.Fatalf("release without the admin token: %d", code)
	}
	f.cutAll()
	f.waitSummary("the hold", func(s readapi.SummaryJSON) bool { return s.OutageHold.Active })
	if code := call(t, "POST", f.base+"/v1/outage-hold/release", "admin", nil, &rel); code != 202 || !rel.Released || !rel.OutageHold.Active {
		t.Fatalf("release: %d %+v", code, rel)
	}
	f.waitSummary("the end of the hold", func(s readapi.SummaryJSON) bool { return !s.OutageHold.Active })
	st, _ := f.svc.Hold.State()
	if !strings.Contains(st.Reason, "released by admin") {
		t.Fatalf("end %+v", st)
	}
	f.waitSummary("all disconnected", func(s readapi.SummaryJSON) bool { return s.Disconnected == 10 })
	for _, id := range f.ids {
		h := f.history(id)
		if last := h[len(h)-1]; !sameMicro(last.At, st.Ended.Add(6*time.Second)) {
			t.Errorf("%s disconnected at %s, want the release (%s) + 6s", id, last.At, st.Ended)
		}
	}
	if s := f.summary(); s.OutageHold.Active {
		t.Fatalf("a second hold started after the release: %+v", s.OutageHold)
	}
}

// TestOutageHoldDisabled: with the hold off (--outage-hold=false), the whole
// fleet cut off becomes disconnected as usual and no hold ever starts.
func TestOutageHoldDisabled(t *testing.T) {
	t.Parallel()
	f := startHoldFleet(t, 10, OutageHoldConfig{Disabled: true})
	last := f.cutAll()
	f.waitSummary("all disconnected", func(s readapi.SummaryJSON) bool {
		if s.OutageHold.Active {
			t.Fatalf("a hold started: %+v", s.OutageHold)
		}
		return s.Disconnected == 10
	})
	for _, id := range f.ids {
		h := f.history(id)
		if len(h) != 3 || h[2].To != "disconnected" || !h[2].At.Equal(h[0].At.Add(6*time.Second)) || h[0].At.After(last) {
			t.Errorf("%s: %v, want disconnected at its heartbeat + 6s", id, h)
		}
	}
}
