package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/service"
	"github.com/devstatus/devstatus/pkg/statemachine"
	"github.com/devstatus/devstatus/pkg/worker"
)

// chromiumPath is Debian's chromium package (.ci/run installs it).
const chromiumPath = "/usr/bin/chromium"

const admin = "admin-secret"

// post sends JSON with a bearer token and returns the status code and the
// decoded answer.
func post(t *testing.T, method, u, token string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, u, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestDashboardInChromium starts the whole service in-process, signs in to
// the dashboard in headless Chromium, watches a device change status live
// (no reload), opens the device page and finds its status timeline, and uses
// the admin actions. With DEVSTATUS_SCREENSHOTS=<dir> it writes
// dashboard.png and dashboard-device.png there (docs/ has the committed ones:
// `DEVSTATUS_SCREENSHOTS=$PWD/docs make test PKGS=./web`).
func TestDashboardInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: skipped with -short")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("browser test skipped: %s is absent (install Debian's chromium: apt-get install -y chromium; .ci/run does)", chromiumPath)
	}
	dsn, _ := testenv.Postgres(t)
	th := worker.Thresholds{Default: statemachine.Thresholds{OfflineAfter: 2 * time.Second, DisconnectAfter: 4 * time.Second, PingIgnoreWithin: time.Second}}
	svc, err := service.Start(context.Background(), service.Config{HTTPAddr: "127.0.0.1:0",
		Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4}, DatabaseURL: dsn, Thresholds: th, Tick: 100 * time.Millisecond,
		HeartbeatInterval: time.Second, AdminToken: admin, PingToken: "ping", Migrate: true, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	base := "http://" + svc.Addr()

	// A small fleet: steady devices (kept connected), devices that go quiet
	// (offline, then disconnected), devices never heard from.
	var tokMu sync.Mutex // devices are registered while the steady ones heartbeat
	tokens := map[string]string{}
	setToken := func(id, tok string) { tokMu.Lock(); tokens[id] = tok; tokMu.Unlock() }
	token := func(id string) string { tokMu.Lock(); defer tokMu.Unlock(); return tokens[id] }
	register := func(id, group string) {
		code, out := post(t, "POST", base+"/v1/devices", admin, map[string]string{"id": id, "group": group})
		if code != 201 {
			t.Fatalf("register %s: %d %v", id, code, out)
		}
		setToken(id, out["token"].(string))
	}
	heartbeat := func(id string, metrics map[string]any) {
		code, out := post(t, "POST", base+"/v1/devices/"+url.PathEscape(id)+"/heartbeat", token(id), map[string]any{"metrics": metrics})
		if code != 200 {
			t.Errorf("heartbeat %s: %d %v", id, code, out)
		}
	}
	var steady, quiet []string
	for i := 1; i <= 6; i++ {
		steady = append(steady, fmt.Sprintf("lobby/kiosk-%02d", i))
		register(steady[i-1], "lobby")
	}
	for i := 1; i <= 3; i++ {
		quiet = append(quiet, fmt.Sprintf("warehouse/scanner-%02d", i))
		register(quiet[i-1], "warehouse")
	}
	register("lab/gateway-1", "lab")
	register("lab/player 2", "lab")
	const live = "lobby/kiosk-live"
	register(live, "lobby")
	for _, id := range quiet {
		heartbeat(id, map[string]any{"battery": 40})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the steady devices heartbeat every 500 ms until the end
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for n := 0; ; n++ {
			for i, id := range steady {
				heartbeat(id, map[string]any{"battery": 90 - i*7 - n%3, "app_version": "4.2.1"})
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.Headless, chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1440, 1000),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	get := func(what string, a chromedp.Action[string]) string {
		t.Helper()
		v, err := chromedp.Run(ctx, a)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	shot := func(what string) []byte {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return png
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	poll := func(expr string) chromedp.Action[chromedp.Void] { return chromedp.Poll[chromedp.Void](expr) }
	row := func(id string) string { return fmt.Sprintf(`tr[data-id=%q]`, id) }

	// Sign in; the fleet page opens and follows the stream.
	run("sign in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(css(`#token`)),
		chromedp.SendKeys(css(`#token`), admin),
		chromedp.Click(css(`#login button[type=submit]`)), // (form.submit() would skip the submit handler)
		chromedp.WaitVisible(css(`#live[data-live="1"]`)),
		chromedp.WaitVisible(css(row(live)+`[data-status="registered"]`)),
		chromedp.Evaluate[chromedp.Void](`window.__notReloaded = 42`),
	)
	// The device changes status while the page is open: the row follows.
	heartbeat(live, map[string]any{"battery": 87, "app_version": "4.2.1", "signal_dbm": -61})
	run("live update", chromedp.WaitVisible(css(row(live)+`[data-status="connected"] span.badge.connected`)))
	if marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__notReloaded`)); err != nil || marker != 42 {
		t.Fatalf("the page was reloaded (%v)", err)
	}
	feed := get("live feed", chromedp.Text(css(`#feed`)))
	if !strings.Contains(feed, live) {
		t.Errorf("the live feed lacks the transition: %q", feed)
	}

	// The quiet devices disconnect; the page shows that live too, and the
	// summary counts them.
	for _, id := range quiet {
		run("quiet "+id, chromedp.WaitVisible(css(row(id)+`[data-status="disconnected"]`)))
	}
	run("summary", poll(`document.querySelector('[data-count="disconnected"]').textContent === "3"`))
	shots := os.Getenv("DEVSTATUS_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.WriteFile(filepath.Join(shots, "dashboard.png"), shot("screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The device page: its timeline (registered, then connected) and metrics.
	run("device page",
		chromedp.Click(css(row(live)+` a.dev-link`)),
		chromedp.WaitVisible(css(`#timeline svg.timeline rect.seg[data-status="connected"]`)),
		chromedp.WaitVisible(css(`#metrics`)),
	)
	segs, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#timeline rect.seg').length`))
	if err != nil {
		t.Fatal(err)
	}
	metrics := get("metrics", chromedp.Text(css(`#metrics`)))
	if segs < 2 || !strings.Contains(metrics, "battery") || !strings.Contains(metrics, "87") {
		t.Errorf("device page: %d timeline segments, metrics %q", segs, metrics)
	}
	// Admin actions through the bridge's endpoints.
	run("reconnect", chromedp.Click(css(`#reconnect`)),
		poll(`document.getElementById('action-msg').textContent.startsWith('Reconnect requested')`),
		chromedp.Click(css(`#remote`)),
		poll(`document.getElementById('action-msg').textContent.startsWith('Remote control enabled')`))
	deadline := time.Now().Add(15 * time.Second)
	for {
		var dev map[string]any
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/devices/"+url.PathEscape(live), nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&dev)
			resp.Body.Close()
		}
		if dev["remote_control_enabled"] == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("remote control not enabled through the dashboard: %v", dev)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Let the device go quiet (offline, then disconnected) and come back,
	// then show its whole life.
	run("goes quiet", chromedp.WaitVisible(css(`.dev-head span.badge.disconnected`)))
	heartbeat(live, map[string]any{"battery": 85, "app_version": "4.2.1", "signal_dbm": -58})
	run("comes back", chromedp.WaitVisible(css(`.dev-head span.badge.connected`)),
		chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = '#/device/' + encodeURIComponent(%q) + '?w=all'`, live)),
		chromedp.WaitVisible(css(`#timeline rect.seg[data-status="disconnected"]`)),
		chromedp.WaitVisible(css(`#history tr`)))
	if err := os.WriteFile(filepath.Join(shots, "dashboard-device.png"), shot("device screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", shots)

	// Devices named "." and "..": a browser drops such path segments, even
	// percent-encoded ("/v1/devices/%2E%2E/transitions" is sent as
	// "/v1/transitions"), and the device page said "No such device". They
	// open from the table, with their history and the admin actions.
	// A registration's Location names the device in a form a browser keeps
	// ("/v1/devices/~?id=.."), and reading it gives that device.
	for _, id := range []string{"..", "."} {
		b, _ := json.Marshal(map[string]string{"id": id, "group": "dots"})
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/devices", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusCreated || loc != "/v1/devices/~?id="+url.QueryEscape(id) {
			t.Fatalf("register %q: %d %v, Location %q", id, resp.StatusCode, out, loc)
		}
		setToken(id, out["token"].(string))
		// Resolved the way a browser resolves a Location, then read.
		abs, err := url.Parse(base + "/v1/devices/x")
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := url.Parse(loc)
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) { // (once projected)
			req, _ = http.NewRequest(http.MethodGet, abs.ResolveReference(ref).String(), nil)
			req.Header.Set("Authorization", "Bearer "+admin)
			if resp, err = http.DefaultClient.Do(req); err != nil {
				t.Fatal(err)
			}
			var dev map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&dev)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && dev["id"] == id {
				break
			}
			if resp.StatusCode != http.StatusNotFound || time.Now().After(deadline) {
				t.Fatalf("GET the Location of %q: %d %v", id, resp.StatusCode, dev)
			}
		}
	}
	heartbeat("..", map[string]any{"battery": 12})
	waitListed := func(query string, n int) { // the projection has them (the table is read once per visit)
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			var page struct {
				Devices []map[string]any `json:"devices"`
			}
			req, _ := http.NewRequest(http.MethodGet, base+"/v1/devices?"+query, nil)
			req.Header.Set("Authorization", "Bearer "+admin)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&page)
				resp.Body.Close()
			}
			if len(page.Devices) == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d devices listed, want %d", query, len(page.Devices), n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitListed("group=dots", 2)
	run("fleet with dot ids",
		chromedp.Evaluate[chromedp.Void](`location.hash = '#/?group=dots'`),
		chromedp.WaitVisible(css(row(".."))),
		chromedp.WaitVisible(css(row("."))))
	for _, id := range []string{"..", "."} {
		run("open "+id,
			chromedp.Evaluate[chromedp.Void](`location.hash = '#/?group=dots'`),
			chromedp.WaitVisible(css(row(id)+` a.dev-link`)),
			chromedp.Click(css(row(id)+` a.dev-link`)),
			poll(fmt.Sprintf(`document.querySelector('.dev-head h1') && document.querySelector('.dev-head h1').textContent === %q && !!document.querySelector('.dev-head span.badge')`, id)),
			chromedp.WaitVisible(css(`#timeline svg.timeline rect.seg`)),
			chromedp.WaitVisible(css(`#history tr`)))
		if head := get("head "+id, chromedp.Text(css(`.dev-head`))); strings.Contains(head, "No such device") {
			t.Errorf("device page of %q: %q", id, head)
		}
		if hash := get("hash "+id, chromedp.Evaluate[string](`location.hash`)); strings.Contains(strings.TrimPrefix(hash, "#/device/"), ".") {
			t.Errorf("device link of %q: %q (dots not encoded)", id, hash)
		}
	}
	// ".." was heard from: its metrics, its transition, and the admin actions
	// reach it (bridge routes).
	run("open ..", chromedp.Evaluate[chromedp.Void](`location.hash = '#/device/' + encodeId('..')`),
		chromedp.WaitVisible(css(`#metrics`)),
		chromedp.WaitVisible(css(`#history span.badge.connected`)),
		chromedp.Click(css(`#reconnect`)),
		poll(`document.getElementById('action-msg').textContent.startsWith('Reconnect requested')`))
	if code, out := post(t, "POST", base+"/v1/devices/%2E%2E/heartbeat", token(".."), map[string]any{}); code != 200 || out["should_reconnect"] != true {
		t.Errorf("heartbeat of .. after the dashboard's reconnect: %d %v", code, out)
	}
	// Every URL the page builds for odd ids reaches exactly that device,
	// fetched by the page (so with the browser's URL rules).
	oddIDs := []string{"..", ".", "~", "...", "%2E%2E", "a/../b", "x?y#z&id=1"}
	for _, id := range oddIDs[2:] {
		register(id, "odd")
	}
	waitListed("group=odd", len(oddIDs)-2)
	ids, _ := json.Marshal(oddIDs)
	fetched := get("fetch odd ids", chromedp.Evaluate[string](fmt.Sprintf(`(async () => {
		const bad = [];
		for (const id of %s) {
			for (const sub of ['', 'transitions', 'status', 'availability']) {
				const u = devURL(id, sub, sub === 'transitions' ? { limit: 5 } : {});
				const r = await fetch(u, { headers: { Authorization: 'Bearer ' + %q } });
				const b = await r.json();
				if (r.status !== 200 || (sub !== 'transitions' && b.id !== id)) bad.push(id + ' ' + sub + ' ' + u + ': ' + r.status + ' ' + JSON.stringify(b));
			}
		}
		return bad.join('\n');
	})()`, ids, admin), chromedp.EvalAwaitPromise))
	if fetched != "" {
		t.Errorf("dashboard URLs that miss their device:\n%s", fetched)
	}
}
