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

	"github.com/chromedp/cdproto/network"
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

// shotsDir is where the screenshots go: $DEVSTATUS_SCREENSHOTS, or a
// temporary directory.
func shotsDir(t *testing.T) string {
	if d := os.Getenv("DEVSTATUS_SCREENSHOTS"); d != "" {
		return d
	}
	return t.TempDir()
}

// TestBrowserDashboard starts the whole service in-process, signs in to
// the dashboard in headless Chromium, watches a device change status live
// (no reload), opens the device page and finds its status timeline, and uses
// the admin actions. With DEVSTATUS_SCREENSHOTS=<dir> it writes
// dashboard.png and dashboard-device.png there (docs/ has the committed ones:
// `DEVSTATUS_SCREENSHOTS=$PWD/docs make test PKGS=./web`).
func TestBrowserDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: skipped with -short")
	}
	if raceDetector {
		t.Skip("browser test: skipped under the race detector (too slow for its live-update waits); make test runs it without it (make test-browser)")
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
	ctx, cancel := context.WithTimeout(bctx, 180*time.Second)
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
	// jsClick clicks from the page: the device page's header is redrawn on
	// every transition, and a node the protocol found may be gone by the
	// time it clicks.
	jsClick := func(sel string) chromedp.Action[chromedp.Void] {
		return poll(fmt.Sprintf(`(() => { const el = document.querySelector(%q); if (!el) return false; el.click(); return true; })()`, sel))
	}

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
	shots := shotsDir(t)
	// Sign in; the fleet page opens and follows the stream. Before the
	// sign-in there is no stream, so no "offline" pill.
	run("sign-in page",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(css(`#token`)),
		poll(`document.getElementById('live').hidden === true && document.getElementById('live').offsetParent === null`))
	run("sign in",
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
	// The stream is opened with a ticket, not a cookie: the browser holds no
	// cookie for the stream's URL (nor any other), and the token is in
	// sessionStorage only.
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/v1/stream", base + "/"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cookies.Cookies) != 0 {
		t.Errorf("the dashboard left cookies: %+v", cookies.Cookies[0])
	}
	if got := get("storage", chromedp.Evaluate[string](`sessionStorage.getItem('devstatus_token') + '|' + localStorage.length`)); got != admin+"|0" {
		t.Errorf("token storage: %q", got)
	}
	// A broken stream is reopened with a new ticket, after the last event
	// it had (the quiet devices' transitions below come through it).
	firstURL := get("stream url", chromedp.Evaluate[string](`S.es.url`))
	run("stream reconnects", chromedp.Evaluate[chromedp.Void](`window.__oldES = S.es; S.es.dispatchEvent(new Event('error'))`),
		poll(`S.es && S.es !== window.__oldES && S.es.readyState === EventSource.OPEN && document.getElementById('live').dataset.live === '1'`))
	u, err := url.Parse(get("new stream url", chromedp.Evaluate[string](`S.es.url`)))
	if err != nil {
		t.Fatal(err)
	}
	if u.Query().Get("ticket") == "" || u.Query().Get("last_event_id") == "" || strings.Contains(firstURL, u.Query().Get("ticket")) || strings.Contains(u.String(), admin) {
		t.Errorf("stream reopened at %s (first %s): want a new ticket and last_event_id, no token", u, firstURL)
	}
	if who := get("whoami", chromedp.Text(css(`#who`))); !strings.Contains(who, "admin") {
		t.Errorf("signed in as %q", who)
	}

	// Availability bars: 30 slots a row; a steady device's latest slot is
	// connected.
	defer func() {
		if t.Failed() {
			t.Logf("page state: %s", get("debug", chromedp.Evaluate[string](`document.getElementById('app').innerText.slice(0, 3000)`)))
		}
	}()
	run("availability bars", poll(fmt.Sprintf(`(() => {
		const r = document.querySelector(%q);
		const b = r && r.querySelectorAll('.avail .beat');
		return b && b.length === 30 && b[29].dataset.status === 'connected' && r.querySelector('.avail .pct').textContent.endsWith('%%');
	})()`, row(steady[0]))))
	run("every row has bars", poll(`document.querySelectorAll('#devices .avail .bars.loading').length === 0 && document.querySelectorAll('#devices .avail .beat').length === 30 * document.querySelectorAll('#devices tr[data-id]').length`))

	// No layout overflow (the groups panel's total column spilled out) at
	// 1280 and 800 px.
	overflow := `(() => {
		const bad = [];
		if (document.documentElement.scrollWidth > window.innerWidth) bad.push('page ' + document.documentElement.scrollWidth + ' > ' + window.innerWidth);
		for (const el of document.querySelectorAll('.panel, .cards, .groups, header.top')) {
			if (el.scrollWidth > el.clientWidth + 1) bad.push((el.className || el.tagName) + ' ' + el.scrollWidth + ' > ' + el.clientWidth);
		}
		for (const c of document.querySelectorAll('.groups th:not(:first-child), .groups td:not(:first-child)')) {
			if (c.scrollWidth > c.clientWidth + 1) bad.push('groups cell ' + c.textContent + ' ' + c.scrollWidth + ' > ' + c.clientWidth);
		}
		for (const td of document.querySelectorAll('.groups td')) {
			const t = td.closest('table').getBoundingClientRect(), r = td.getBoundingClientRect();
			if (r.right > t.right + 1) bad.push('groups cell ' + td.textContent + ' ends at ' + r.right + ' > ' + t.right);
		}
		return bad.join('; ');
	})()`
	for _, w := range []int64{1280, 800} {
		run(fmt.Sprintf("viewport %d", w), chromedp.EmulateViewport(w, 900), poll(`document.querySelectorAll('.groups tbody tr').length >= 3`))
		if bad := get("overflow", chromedp.Evaluate[string](overflow)); bad != "" {
			t.Errorf("layout overflows at %d px: %s", w, bad)
		}
	}
	run("viewport back", chromedp.EmulateViewport(1440, 1000))

	run("fleet again", chromedp.Evaluate[chromedp.Void](`location.hash = '#/'`), chromedp.WaitVisible(css(row(quiet[0]))))
	for _, id := range quiet {
		run("quiet "+id, chromedp.WaitVisible(css(row(id)+`[data-status="disconnected"]`)))
	}
	run("summary", poll(`document.querySelector('[data-count="disconnected"]').textContent === "3"`))
	if err := os.WriteFile(filepath.Join(shots, "dashboard.png"), shot("screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Register a device: its token is shown once, with a copy button, and
	// works for a heartbeat.
	const added = "lobby/kiosk-added"
	run("register",
		chromedp.Click(css(`#open-register`)),
		chromedp.WaitVisible(css(`#reg-id`)),
		chromedp.SendKeys(css(`#reg-id`), added),
		chromedp.SendKeys(css(`#reg-group`), "lobby"),
		chromedp.Click(css(`#register button[type=submit]`)),
		chromedp.WaitVisible(css(`#token-box code.token`)),
		chromedp.Click(css(`#token-box button.copy`)),
		poll(`document.querySelector('#token-box .note').textContent !== ''`))
	if err := os.WriteFile(filepath.Join(shots, "dashboard-register.png"), shot("register screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	setToken(added, get("new token", chromedp.Text(css(`#token-box code.token`))))
	heartbeat(added, map[string]any{"battery": 100})
	run("register again", // (the id field was cleared)
		chromedp.SendKeys(css(`#reg-id`), added), chromedp.Click(css(`#register button[type=submit]`)),
		poll(`document.querySelector('#reg-out .error') && document.querySelector('#reg-out .error').textContent.includes('exists')`))
	waitListed("prefix="+url.QueryEscape(added), 1)
	run("added listed", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = '#/?prefix=' + encodeURIComponent(%q)`, added)),
		chromedp.WaitVisible(css(row(added)+` .avail .beat`)))

	// Import a file (when the server has POST /v1/devices/import): the
	// button shows only then.
	importCode, _ := post(t, "POST", base+"/v1/devices/import", admin, nil) // (a JSON body: refused, registers nothing)
	hasImport := importCode != http.StatusNotFound && importCode != http.StatusMethodNotAllowed
	if hidden := get("import button", chromedp.Evaluate[string](`String(document.getElementById('open-import').hidden)`)); hidden != fmt.Sprint(!hasImport) {
		t.Errorf("import button hidden=%s, but the server answers %d", hidden, importCode)
	}
	if hasImport {
		f := filepath.Join(t.TempDir(), "devices.ndjson")
		lines := `{"id":"import/a-1","group":"imported"}` + "\n" + `{"id":"import/a-2","group":"imported"}` + "\n" +
			`{"id":"` + added + `","group":"lobby"}` + "\n" + `{"id":"import/a-3","group":"imported","colour":1}` + "\n"
		if err := os.WriteFile(f, []byte(lines), 0o644); err != nil {
			t.Fatal(err)
		}
		run("import",
			chromedp.Click(css(`#open-import`)),
			chromedp.WaitVisible(css(`#import-file`)),
			chromedp.SetUploadFiles(css(`#import-file`), []string{f}),
			chromedp.Click(css(`#import button[type=submit]`)),
			chromedp.WaitVisible(css(`#import-results`)),
			poll(`document.querySelectorAll('#import-results tbody tr').length === 4`))
		sum := get("import summary", chromedp.Text(css(`#import-summary`)))
		failed := get("failed lines", chromedp.Evaluate[string](`[...document.querySelectorAll('#import-results tr.failed')].map((r) => r.dataset.line).join(',')`))
		if !strings.Contains(sum, "2 registered") || !strings.Contains(sum, "2 failed") || failed != "3,4" {
			t.Errorf("import: %q, failed lines %q", sum, failed)
		}
		if err := os.WriteFile(filepath.Join(shots, "dashboard-import.png"), shot("import screenshot"), 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Logf("import form not tested: this server has no POST /v1/devices/import (%d)", importCode)
	}

	// The quiet devices disconnect; the page shows that live too, and the
	// summary counts them.

	// The device page: its timeline (registered, then connected) and metrics;
	// a device registered a minute ago shows its whole history by default.
	run("device page",
		chromedp.Evaluate[chromedp.Void](`location.hash = '#/'`),
		chromedp.WaitVisible(css(row(live)+` a.dev-link`)),
		chromedp.Click(css(row(live)+` a.dev-link`)),
		chromedp.WaitVisible(css(`#timeline svg.timeline rect.seg[data-status="connected"]`)),
		chromedp.WaitVisible(css(`#metrics`)),
	)
	if w := get("default window", chromedp.Evaluate[string](`document.getElementById('window').value`)); w != "0" {
		t.Errorf("a new device's page opens with window %q, want 0 (since registration)", w)
	}
	segs, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#timeline rect.seg').length`))
	if err != nil {
		t.Fatal(err)
	}
	metrics := get("metrics", chromedp.Text(css(`#metrics`)))
	if segs < 2 || !strings.Contains(metrics, "battery") || !strings.Contains(metrics, "87") {
		t.Errorf("device page: %d timeline segments, metrics %q", segs, metrics)
	}
	// Admin actions through the bridge's endpoints.
	run("reconnect", jsClick(`#reconnect`),
		poll(`document.getElementById('action-msg').textContent.startsWith('Reconnect requested')`),
		jsClick(`#remote`),
		poll(`document.getElementById('action-msg').textContent.startsWith('Remote control enabled')`))
	// The probe URL: the policy's refusal is shown; an allowed one is set.
	run("probe url refused",
		chromedp.SendKeys(css(`#probe-url`), "http://169.254.169.254/latest"),
		chromedp.Click(css(`#probe-form button[type=submit]`)),
		poll(`document.getElementById('action-msg').textContent.startsWith('Probe URL failed') && document.getElementById('action-msg').textContent.includes('link-local')`),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('probe-url').value = ''`),
		chromedp.SendKeys(css(`#probe-url`), "http://203.0.113.7:8080/health"),
		chromedp.Click(css(`#probe-form button[type=submit]`)),
		poll(`document.getElementById('action-msg').textContent === 'Probe URL set: http://203.0.113.7:8080/health'`))
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
		chromedp.WaitVisible(css(`#history tr`)),
		// The audit trail has what was done to it.
		chromedp.WaitVisible(css(`#audit tr[data-type="device_registered"]`)),
		chromedp.WaitVisible(css(`#audit tr[data-type="reconnect_requested"]`)),
		chromedp.WaitVisible(css(`#audit tr[data-type="remote_control_changed"]`)),
		chromedp.Click(css(`#audit-heartbeats`)),
		chromedp.WaitVisible(css(`#audit tr[data-type="heartbeat"]`)))
	if err := os.WriteFile(filepath.Join(shots, "dashboard-device.png"), shot("device screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", shots)

	// Re-key, after a confirmation: the new token is shown once; the old one
	// is refused from then on.
	oldToken := token(live)
	run("re-key", jsClick(`#rekey`), chromedp.WaitVisible(css(`#confirm`)),
		jsClick(`#confirm-yes`),
		chromedp.WaitVisible(css(`#token-box code.token`)),
		poll(`document.getElementById('action-msg').textContent.startsWith('Re-keyed')`))
	newToken := get("re-keyed token", chromedp.Text(css(`#token-box code.token`)))
	if newToken == oldToken || newToken == "" {
		t.Fatalf("re-key showed %q", newToken)
	}
	if code, _ := post(t, "POST", base+"/v1/devices/"+url.PathEscape(live)+"/heartbeat", oldToken, map[string]any{}); code != http.StatusUnauthorized {
		t.Errorf("heartbeat with the old token after re-key: %d", code)
	}
	setToken(live, newToken)
	heartbeat(live, map[string]any{"battery": 84})

	// Decommission, after a confirmation (Cancel first: nothing happens).
	const gone = "lab/player 2"
	run("decommission page",
		chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = '#/device/' + encodeId(%q)`, gone)),
		poll(fmt.Sprintf(`document.querySelector('.dev-head h1') && document.querySelector('.dev-head h1').textContent === %q && !!document.getElementById('decommission')`, gone)),
		jsClick(`#decommission`), chromedp.WaitVisible(css(`#confirm`)), jsClick(`#confirm-no`),
		poll(`!document.getElementById('confirm')`))
	if code, _ := post(t, "POST", base+"/v1/devices/"+url.PathEscape(gone)+"/heartbeat", token(gone), map[string]any{}); code != 200 {
		t.Fatalf("cancelled decommission: heartbeat %d", code)
	}
	run("decommission", jsClick(`#decommission`), chromedp.WaitVisible(css(`#confirm`)), jsClick(`#confirm-yes`),
		poll(`document.getElementById('action-msg').textContent === 'Decommissioned.'`),
		chromedp.WaitVisible(css(`#audit tr[data-type="device_decommissioned"]`)))
	if code, _ := post(t, "POST", base+"/v1/devices/"+url.PathEscape(gone)+"/heartbeat", token(gone), map[string]any{}); code == 200 {
		t.Errorf("heartbeat of a decommissioned device: %d", code)
	}

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
		jsClick(`#reconnect`),
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

	// A viewer signs in with a viewer token (POST /v1/tokens): it sees the
	// fleet, the device pages and the live stream, and no change control.
	code, out := post(t, "POST", base+"/v1/tokens", admin, map[string]string{"name": "wall screen", "role": "viewer"})
	if code == http.StatusNotFound || code == http.StatusMethodNotAllowed {
		t.Logf("viewer sign-in not tested: this server has no POST /v1/tokens (%d)", code)
		return
	}
	if code != 201 {
		t.Fatalf("viewer token: %d %v", code, out)
	}
	viewer := out["token"].(string)
	run("viewer sign-in",
		chromedp.Click(css(`#signout`)),
		chromedp.WaitVisible(css(`#token`)),
		poll(`document.getElementById('live').hidden === true`),
		chromedp.SendKeys(css(`#token`), viewer),
		chromedp.Click(css(`#login button[type=submit]`)),
		chromedp.WaitVisible(css(`#live[data-live="1"]`)),
		chromedp.Evaluate[chromedp.Void](`location.hash = '#/'`),
		chromedp.WaitVisible(css(row(live)+` .avail .beat`)),
		poll(`document.body.dataset.role === 'viewer' && !document.getElementById('open-register') && !document.getElementById('open-import')`))
	if who := get("viewer whoami", chromedp.Text(css(`#who`))); !strings.Contains(who, "wall screen") || !strings.Contains(who, "viewer") {
		t.Errorf("viewer signed in as %q", who)
	}
	heartbeat(quiet[0], map[string]any{"battery": 39}) // a live change the viewer sees
	run("viewer live", chromedp.WaitVisible(css(row(quiet[0])+`[data-status="connected"]`)))
	if err := os.WriteFile(filepath.Join(shots, "dashboard-viewer.png"), shot("viewer screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("viewer device page",
		chromedp.Click(css(row(live)+` a.dev-link`)),
		chromedp.WaitVisible(css(`#timeline svg.timeline rect.seg`)),
		chromedp.WaitVisible(css(`#audit tr`)))
	if n := get("change controls", chromedp.Evaluate[string](`String(document.querySelectorAll('#reconnect, #remote, #rekey, #decommission, #probe-form, .admin-only').length)`)); n != "0" {
		t.Errorf("a viewer's device page has %s change controls", n)
	}
	if err := os.WriteFile(filepath.Join(shots, "dashboard-viewer-device.png"), shot("viewer device screenshot"), 0o644); err != nil {
		t.Fatal(err)
	}
}
