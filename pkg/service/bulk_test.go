package service

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bridge"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/readapi"
)

// bulkClient keeps no connection open after a request: goleak checks the
// package's goroutines when its tests end.
var bulkClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// bcall is call (service_test.go) over bulkClient.
func bcall(t *testing.T, method, u, token string, body any, out any) int {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, u, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := bulkClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// startBulk starts every role on a fresh schema and JetStream store.
func startBulk(t *testing.T) string {
	t.Helper()
	dsn, _ := testenv.Postgres(t)
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: t.TempDir(), Partitions: 4},
		DatabaseURL: dsn, Tick: 100 * time.Millisecond, HeartbeatInterval: time.Second,
		AdminToken: "admin", PingToken: "ping", Migrate: true, Logger: testenv.LoggerAt(t, 4)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Stop(context.Background())
	})
	return "http://" + svc.Addr()
}

// post sends body with a content type and returns the status, headers and body.
func postBody(t *testing.T, u, contentType, accept string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin")
	req.Header.Set("Content-Type", contentType)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := bulkClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func getAdmin(t *testing.T, u string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer admin")
	resp, err := bulkClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func importJSON(t *testing.T, base, contentType string, body []byte) bridge.ImportAnswer {
	t.Helper()
	code, _, b := postBody(t, base+"/v1/devices/import", contentType, "", body)
	if code != 200 {
		t.Fatalf("import: %d %s", code, b)
	}
	var ans bridge.ImportAnswer
	if err := json.Unmarshal(b, &ans); err != nil {
		t.Fatalf("import answer %s: %v", b, err)
	}
	return ans
}

// want is the expected answer of one import line.
type want struct {
	line   int
	id     string
	status int
	code   string
}

func checkResults(t *testing.T, got []bridge.ImportResult, wants []want) map[string]string {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("%d results, want %d: %+v", len(got), len(wants), got)
	}
	tokens := map[string]string{}
	for i, w := range wants {
		g := got[i]
		code := ""
		if g.Error != nil {
			code = g.Error.Code
		}
		if g.Line != w.line || g.ID != w.id || g.Status != w.status || code != w.code {
			t.Errorf("result %d = %+v (error %+v), want %+v", i, g, g.Error, w)
		}
		if (g.Status == 201) != (g.Token != "") {
			t.Errorf("line %d: status %d with token %q", g.Line, g.Status, g.Token)
		}
		if g.Status == 201 {
			tokens[g.ID] = g.Token
		}
	}
	return tokens
}

func heartbeat(t *testing.T, base, id, token string) {
	t.Helper()
	if code := bcall(t, "POST", base+"/v1/devices/"+url.PathEscape(id)+"/heartbeat", token, map[string]any{}, nil); code != 200 {
		t.Errorf("heartbeat of %q with its imported token: %d", id, code)
	}
}

// TestImport registers devices from NDJSON and CSV bodies that mix good,
// duplicate, malformed and over-long lines, checks every line's answer, and
// that each imported token is accepted for heartbeats.
func TestImport(t *testing.T) {
	base := startBulk(t)
	if code := bcall(t, "POST", base+"/v1/devices", "admin", map[string]string{"id": "dup-1"}, nil); code != 201 {
		t.Fatalf("register dup-1: %d", code)
	}
	long := `{"id":"long","group":"` + strings.Repeat("g", bridge.MaxImportLineBytes) + `"}`
	nd := strings.Join([]string{
		`{"id":"a,1","group":"lobby"}`, // 1
		`{"id":"q\"uote"}`,             // 2
		``,                             // 3: skipped
		`{"id":"ünï/ç","group":"kiosk"}` + "\r", // 4: CRLF
		`{"id":"dup-1"}`,               // 5: 409, registered before
		`{"id":"twice"}`,               // 6
		`{"id":"twice"}`,               // 7: 409, the line before
		`{"id":`,                       // 8: malformed
		`{"id":"x","colour":"red"}`,    // 9: unknown field
		long,                           // 10
		`{"id":""}`,                    // 11: invalid id
		`{"id":"=SUM(1)","group":7}`,   // 12: group not a string
		`{"id":"-7","gateway":"gw 1"}`, // 13
	}, "\n")
	ans := importJSON(t, base, "application/x-ndjson", []byte(nd))
	tokens := checkResults(t, ans.Results, []want{
		{1, "a,1", 201, ""}, {2, `q"uote`, 201, ""}, {4, "ünï/ç", 201, ""}, {5, "dup-1", 409, "conflict"},
		{6, "twice", 201, ""}, {7, "twice", 409, "conflict"}, {8, "", 400, "malformed_json"},
		{9, "x", 400, "bad_request"}, {10, "", 400, bridge.CodeLineTooLong}, {11, "", 400, "invalid_device_id"},
		{12, "=SUM(1)", 400, "invalid_field"}, {13, "-7", 201, ""},
	})
	if ans.Created != 5 || ans.Failed != 7 {
		t.Errorf("created %d failed %d, want 5 and 7", ans.Created, ans.Failed)
	}
	for id, tok := range tokens {
		heartbeat(t, base, id, tok)
	}

	// CSV: columns in any order, quoting, a record over several lines, a bad
	// quote, too many fields, an over-long record; NDJSON answer.
	csvBody := "\xef\xbb\xbfgroup,id,metrics\n" + // 1 (with a byte-order mark; metrics: an export's column, ignored)
		`lobby,"c,1"` + "\n" + // 2
		`,"c""2"` + "\n" + // 3
		`kiosk,dup-1` + "\n" + // 4: 409
		`x,c"3` + "\n" + // 5: bare quote
		`x,c4,{},extra` + "\n" + // 6: too many fields
		`"multi` + "\n" + `line",c5` + "\n" + // 7-8: valid group? no: a newline in a group
		strings.Repeat("g", bridge.MaxImportLineBytes) + ",c6\n" + // 9
		`,"c 7 ü"` + "\r\n" + // 10
		`,c8,"{""k"":""` + strings.Repeat("m", 2*bridge.MaxImportLineBytes) + `""}"` + "\n" + // 11: a long ignored field
		",c9\xff\n" // 12: not UTF-8 (the answer names it with U+FFFD)
	code, h, b := postBody(t, base+"/v1/devices/import", "text/csv; charset=utf-8", "application/x-ndjson", []byte(csvBody))
	if code != 200 || h.Get("Content-Type") != bridge.MediaNDJSON {
		t.Fatalf("csv import: %d %s %s", code, h.Get("Content-Type"), b)
	}
	var results []bridge.ImportResult
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var r bridge.ImportResult
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	if n := bytes.Count(b, []byte("\n")); n != len(results) {
		t.Errorf("NDJSON answer has %d lines for %d results", n, len(results))
	}
	tokens = checkResults(t, results, []want{
		{2, "c,1", 201, ""}, {3, `c"2`, 201, ""}, {4, "dup-1", 409, "conflict"}, {5, "", 400, bridge.CodeMalformedCSV},
		{6, "c4", 400, bridge.CodeMalformedCSV}, {7, "c5", 400, "invalid_field"}, {9, "c6", 400, bridge.CodeLineTooLong},
		{10, "c 7 ü", 201, ""}, {11, "c8", 201, ""}, {12, "c9\uFFFD", 400, bridge.CodeMalformedCSV},
	})
	for id, tok := range tokens {
		heartbeat(t, base, id, tok)
	}

	// Refused whole, nothing registered.
	var big bytes.Buffer
	for i := range bridge.MaxImportDevices + 1 {
		fmt.Fprintf(&big, "{\"id\":\"big-%d\"}\n", i)
	}
	code, _, b = postBody(t, base+"/v1/devices/import", "application/x-ndjson", "", big.Bytes())
	if code != 413 || !strings.Contains(string(b), "at most 10000 devices") {
		t.Errorf("10 001 lines: %d %s", code, b)
	}
	if code := bcall(t, "POST", base+"/v1/devices", "admin", map[string]string{"id": "big-0"}, nil); code != 201 {
		t.Errorf("big-0 after the refused import: %d, want 201 (not registered)", code)
	}
	// A declared body over the limit is refused before it is sent (the
	// server does not read it, so the request goes over a raw connection).
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1/devices/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin\r\n"+
		"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n", bridge.MaxImportBodyBytes+1)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over %d bytes: %v %v", bridge.MaxImportBodyBytes, resp, err)
	}
	conn.Close()
	for _, tc := range []struct {
		ct, body string
		code     int
	}{
		{"application/json", `{"id":"j"}`, 415},
		{"text/csv", "name,id\nx,y\n", 400},
		{"text/csv", "group\nx\n", 400},
		{"text/csv", "", 400},
	} {
		if code, _, b := postBody(t, base+"/v1/devices/import", tc.ct, "", []byte(tc.body)); code != tc.code {
			t.Errorf("%s %q: %d %s, want %d", tc.ct, tc.body, code, b, tc.code)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/devices/import", strings.NewReader(`{"id":"anon"}`))
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err = bulkClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("import without the admin token: %d", resp.StatusCode)
	}
	// GET /v1/devices/import is still the device "import".
	if code, _, b := getAdmin(t, base+"/v1/devices/import"); code != 404 {
		t.Errorf("GET /v1/devices/import: %d %s, want 404 (no such device)", code, b)
	}
	// The device "import" keeps its other routes.
	var reg struct{ ID, Token string }
	if code := bcall(t, "POST", base+"/v1/devices", "admin", map[string]string{"id": "import"}, &reg); code != 201 {
		t.Fatalf("register the device import: %d", code)
	}
	heartbeat(t, base, "import", reg.Token)
	if code := bcall(t, "PATCH", base+"/v1/devices/import", "admin", map[string]bool{"remote_control_enabled": true}, nil); code != 200 {
		t.Errorf("PATCH /v1/devices/import: %d", code)
	}
	if code := bcall(t, "DELETE", base+"/v1/devices/import", "admin", nil, nil); code != 204 {
		t.Errorf("DELETE /v1/devices/import: %d", code)
	}
}

// csvPages walks a CSV export by its Link headers and returns the header
// row and every record; it checks that Next-Cursor and Link agree.
func csvPages(t *testing.T, base, first string) ([]string, [][]string, int) {
	t.Helper()
	link := regexp.MustCompile(`^<([^>]+)>; rel="next"$`)
	var (
		header []string
		rows   [][]string
		pages  int
	)
	for u := base + first; u != ""; pages++ {
		code, h, b := getAdmin(t, u)
		if code != 200 || h.Get("Content-Type") != readapi.CSVContentType {
			t.Fatalf("GET %s: %d %s %s", u, code, h.Get("Content-Type"), b)
		}
		recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
		if err != nil {
			t.Fatalf("export is not CSV: %v\n%s", err, b)
		}
		if header == nil {
			header = recs[0]
		} else if !slices.Equal(header, recs[0]) {
			t.Fatalf("header %v then %v", header, recs[0])
		}
		rows = append(rows, recs[1:]...)
		u = ""
		if l := h.Get("Link"); l != "" {
			m := link.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("Link %q", l)
			}
			nu, _ := url.Parse(m[1])
			if nu.Query().Get("cursor") != h.Get(readapi.NextCursorHeader) {
				t.Errorf("Link %q and Next-Cursor %q disagree", l, h.Get(readapi.NextCursorHeader))
			}
			u = base + m[1]
		} else if h.Get(readapi.NextCursorHeader) != "" {
			t.Errorf("Next-Cursor without Link")
		}
	}
	return header, rows, pages
}

type listPage struct {
	Devices    []readapi.DeviceJSON `json:"devices"`
	NextCursor *string              `json:"next_cursor"`
}

func jsonDevices(t *testing.T, base string) []readapi.DeviceJSON {
	t.Helper()
	var all []readapi.DeviceJSON
	cursor := ""
	for {
		var p listPage
		if code := bcall(t, "GET", base+"/v1/devices?limit=1000&cursor="+url.QueryEscape(cursor), "admin", nil, &p); code != 200 {
			t.Fatalf("list: %d", code)
		}
		all = append(all, p.Devices...)
		if p.NextCursor == nil {
			return all
		}
		cursor = *p.NextCursor
	}
}

// TestExportRoundTrip exports devices and transitions as CSV page by page
// and compares them with the JSON answers; the devices export of one fleet
// is imported into another; time ranges split the history exactly.
func TestExportRoundTrip(t *testing.T) {
	base := startBulk(t)
	ids := []string{"a,1", `q"uote`, "ünï/ç", "=SUM(A1)", "+1", "@x", "-7", "plain", "semi;colon", "sp ace", "z"}
	var nd bytes.Buffer
	for i, id := range ids {
		line, _ := json.Marshal(map[string]string{"id": id, "group": fmt.Sprintf("g,%d", i%3)})
		nd.Write(append(line, '\n'))
	}
	ans := importJSON(t, base, "application/x-ndjson", nd.Bytes())
	if ans.Created != len(ids) {
		t.Fatalf("created %d of %d: %+v", ans.Created, len(ids), ans.Results)
	}
	for _, r := range ans.Results[:8] { // the first 8 get a heartbeat: registered → connected
		heartbeat(t, base, r.ID, r.Token)
	}
	// Wait until the projections have every device and the 8 transitions.
	deadline := time.Now().Add(20 * time.Second)
	for {
		devs := jsonDevices(t, base)
		connected := 0
		for _, d := range devs {
			if d.Status == "connected" {
				connected++
			}
		}
		if len(devs) == len(ids) && connected == 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d devices, %d connected", len(devs), connected)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Devices: the CSV pages (5 a page) hold the JSON list, field by field.
	header, rows, pages := csvPages(t, base, "/v1/devices?format=csv&limit=5")
	if !slices.Equal(header, readapi.DeviceCSVColumns) || pages != 3 {
		t.Fatalf("header %v, %d pages", header, pages)
	}
	byID := map[string][]string{}
	for _, r := range rows {
		if _, dup := byID[r[0]]; dup {
			t.Errorf("device %q on two pages", r[0])
		}
		byID[r[0]] = r
	}
	devs := jsonDevices(t, base)
	if len(byID) != len(devs) {
		t.Fatalf("CSV has %d devices, JSON %d", len(byID), len(devs))
	}
	for _, d := range devs {
		r, ok := byID[d.ID]
		if !ok {
			t.Errorf("%q missing from the CSV", d.ID)
			continue
		}
		if r[1] != d.Group || r[3] != string(d.Status) || r[4] != d.StatusSince.Format(time.RFC3339Nano) || r[6] != d.Reason {
			t.Errorf("%q: CSV %q, JSON %+v", d.ID, r, d)
		}
		if (d.LastHeartbeatAt == nil) != (r[7] == "") || (d.LastHeartbeatAt != nil && r[7] != d.LastHeartbeatAt.Format(time.RFC3339Nano)) {
			t.Errorf("%q: last_heartbeat_at CSV %q, JSON %v", d.ID, r[7], d.LastHeartbeatAt)
		}
	}
	// Accept: text/csv asks for the same.
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/devices?limit=1000", nil)
	req.Header.Set("Authorization", "Bearer admin")
	req.Header.Set("Accept", "text/csv")
	resp, err := bulkClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	whole, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if recs, err := csv.NewReader(bytes.NewReader(whole)).ReadAll(); err != nil || len(recs) != len(ids)+1 {
		t.Errorf("Accept: text/csv: %v, %d records", err, len(recs))
	}

	// The export imports into another fleet: the same ids and groups.
	other := startBulk(t)
	ans = importJSON(t, other, "text/csv", whole)
	if ans.Created != len(ids) || ans.Failed != 0 {
		t.Fatalf("import of the export: %+v", ans)
	}
	for _, r := range ans.Results {
		heartbeat(t, other, r.ID, r.Token)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		got := map[string]string{}
		for _, d := range jsonDevices(t, other) {
			got[d.ID] = d.Group
		}
		wantGroups := map[string]string{}
		for id, r := range byID {
			wantGroups[id] = r[1]
		}
		if fmt.Sprint(got) == fmt.Sprint(wantGroups) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("other fleet %v, want %v", got, wantGroups)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Fleet transitions: pages of 3 cover the history exactly once, in
	// (at, seq) order, JSON and CSV alike.
	type ftr = readapi.FleetTransitionJSON
	var all []ftr
	cursor := ""
	for {
		var p readapi.FleetTransitionsJSON
		if code := bcall(t, "GET", base+"/v1/transitions?limit=3&cursor="+url.QueryEscape(cursor), "admin", nil, &p); code != 200 {
			t.Fatalf("transitions: %d", code)
		}
		all = append(all, p.Transitions...)
		if p.NextCursor == nil {
			break
		}
		cursor = *p.NextCursor
	}
	if len(all) != 8 {
		t.Fatalf("%d fleet transitions, want 8: %+v", len(all), all)
	}
	seen := map[string]bool{}
	for i, tr := range all {
		if seen[tr.Device] || tr.From != "registered" || tr.To != "connected" {
			t.Errorf("transition %+v (device seen before: %v)", tr, seen[tr.Device])
		}
		seen[tr.Device] = true
		if i > 0 && (tr.At.Before(all[i-1].At) || (tr.At.Equal(all[i-1].At) && tr.Seq <= all[i-1].Seq)) {
			t.Errorf("out of order: %+v after %+v", tr, all[i-1])
		}
	}
	header, rows, _ = csvPages(t, base, "/v1/transitions?format=csv&limit=3")
	if !slices.Equal(header, readapi.TransitionCSVColumns) || len(rows) != len(all) {
		t.Fatalf("CSV transitions: %v, %d rows", header, len(rows))
	}
	for i, r := range rows {
		tr := all[i]
		if r[0] != fmt.Sprint(tr.Seq) || r[1] != tr.Device || r[2] != tr.From || r[3] != tr.To || r[4] != tr.ReasonCode ||
			r[5] != tr.Reason || r[6] != tr.At.Format(time.RFC3339Nano) {
			t.Errorf("CSV row %q, JSON %+v", r, tr)
		}
	}
	// A time range: [from, to) split at the 4th transition's time.
	mid := all[3].At.Format(time.RFC3339Nano)
	_, before, _ := csvPages(t, base, "/v1/transitions?format=csv&to="+url.QueryEscape(mid))
	_, after, _ := csvPages(t, base, "/v1/transitions?format=csv&limit=2&from="+url.QueryEscape(mid))
	nBefore := 0
	for _, tr := range all {
		if tr.At.Before(all[3].At) {
			nBefore++
		}
	}
	if len(before) != nBefore || len(before)+len(after) != len(all) || after[0][0] != fmt.Sprint(all[nBefore].Seq) {
		t.Errorf("split at %s: %d before (want %d), %d after", mid, len(before), nBefore, len(after))
	}
	// One device's history as CSV.
	_, h, b := getAdmin(t, base+"/v1/devices/"+url.PathEscape(all[0].Device)+"/transitions?format=csv")
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil || len(recs) != 2 || recs[1][1] != all[0].Device || h.Get("Link") != "" {
		t.Errorf("device history CSV: %v %q", err, recs)
	}
	for _, u := range []string{"/v1/transitions?format=xml", "/v1/transitions?cursor=bogus", "/v1/transitions?from=yesterday",
		"/v1/transitions?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"} {
		if code, _, b := getAdmin(t, base+u); code != 400 {
			t.Errorf("%s: %d %s, want 400", u, code, b)
		}
	}
}
