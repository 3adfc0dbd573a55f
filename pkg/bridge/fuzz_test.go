package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// FuzzHeartbeatDecode: the decoder never panics, and whatever it accepts is
// a well-formed, bounded, storable heartbeat: metrics are a JSON object
// within the limits, valid UTF-8 with no NUL and no unpaired surrogate, and
// the event that carries them round-trips through the wire format.
func FuzzHeartbeatDecode(f *testing.F) {
	for _, s := range []string{
		``, `{}`, ` {"metrics":{}} `, `{"metrics":null}`, `{"device_time":"2026-01-02T03:04:05.123+01:00"}`,
		`{"metrics":{"battery":87,"signal":-61,"app_version":"1.2.3","free_storage_mb":1024,"uptime_s":3600}}`,
		`{"metrics":{"a":"x\u0000"}}`, `{"metrics":{"a":"\ud83d\ude00"}}`, `{"metrics":{"a":"\udc00"}}`,
		`{"metrics":{"a":1,"a":2}}`, `{"metrics":[1]}`, `{} {}`, `{"x":1}`, "{\"metrics\":{\"a\":\"\xff\"}}",
		`{"metrics":{"n":{"deep":[1,{"x":null}]}}}`, `{"metrics":{"big":1e400}}`, `[]`, `null`, `"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		hb, err := decodeHeartbeat(body, 8, 64)
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if hb.Metrics != nil {
			if !utf8.Valid(hb.Metrics) || bytes.IndexByte(hb.Metrics, 0) >= 0 {
				t.Fatalf("accepted metrics with invalid text: %q", hb.Metrics)
			}
			if err := checkText(hb.Metrics); err != nil {
				t.Fatalf("accepted metrics fail the text check: %v", err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(hb.Metrics, &m); err != nil {
				t.Fatalf("accepted metrics are not a JSON object: %q: %v", hb.Metrics, err)
			}
			if err := checkValues(hb.Metrics); err != nil {
				t.Fatalf("accepted metrics fail the value check: %v", err)
			}
			if len(m) > 8 {
				t.Fatalf("%d metrics accepted, limit 8", len(m))
			}
			keys := topLevelKeys(t, hb.Metrics)
			for i := range keys {
				for j := i + 1; j < len(keys); j++ {
					if strings.EqualFold(keys[i], keys[j]) {
						t.Fatalf("accepted metric keys %q and %q that differ only in case", keys[i], keys[j])
					}
				}
			}
			for k, v := range m {
				if k == "" || len(k) > MaxMetricKeyLen || len(v) > 64 {
					t.Fatalf("metric %q=%s beyond the limits", k, v)
				}
			}
		}
		in := &events.Input{Type: events.TypeHeartbeat, ID: "hb-x", Device: "d", At: time.Unix(1, 0).UTC(),
			Heartbeat: &events.Heartbeat{DeviceTime: hb.DeviceTime, Metrics: hb.Metrics}}
		b, err := events.EncodeInput(in)
		if err != nil {
			t.Fatalf("accepted heartbeat does not encode: %v", err)
		}
		back, err := events.DecodeInput(b)
		if err != nil {
			t.Fatalf("accepted heartbeat does not decode: %v", err)
		}
		// The wire may escape differently (json.Marshal writes & as \u0026),
		// the value must be the same.
		if hb.Metrics != nil && !reflect.DeepEqual(jsonValue(t, back.Heartbeat.Metrics), jsonValue(t, hb.Metrics)) {
			t.Fatalf("metrics changed on the wire: %q → %q", hb.Metrics, back.Heartbeat.Metrics)
		}
	})
}

// topLevelKeys lists an object's keys in order, duplicates included.
func topLevelKeys(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// FuzzPingDecode: the ping-result decoder never panics; what it accepts is
// a valid result (rtt >= 0, a known error class, a real time) whose event
// round-trips through the wire format.
func FuzzPingDecode(f *testing.F) {
	for _, s := range []string{
		`{"ok":true}`, `{"ok":false,"rtt_ms":2000,"checked_at":"2026-01-02T03:04:30Z","error":"timeout"}`,
		`{"ok":true,"rtt_ms":0,"checked_at":null,"error":null}`, `{"ok":"yes"}`, `{"ok":true,"rtt_ms":-1}`,
		`{"ok":true,"rtt_ms":1.5}`, `{"ok":true,"rtt_ms":1e30}`, `{"ok":true,"error":"boom"}`, `{"ok":true,"ok":false}`,
		`{"OK":true}`, `{"ok":true} x`, `{"ok":true,"checked_at":"2026-13-40T00:00:00Z"}`, `{"ok":true,"checked_at":"\u0000"}`,
		"{\"ok\":true,\"error\":\"\xff\"}", `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodePing(body)
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if p.RTTMs < 0 || (p.Error != "" && !pingErrors[p.Error]) {
			t.Fatalf("accepted %+v", p)
		}
		checked := time.Unix(100, 0).UTC()
		if p.CheckedAt != nil {
			if p.CheckedAt.Location() != time.UTC || p.CheckedAt.Year() < 0 || p.CheckedAt.Year() > 9999 {
				t.Fatalf("checked_at %v", p.CheckedAt)
			}
			checked = *p.CheckedAt
		}
		in := &events.Input{Type: events.TypePingResult, ID: "pg-x", Device: "d", At: time.Unix(100, 0).UTC(),
			Ping: &events.PingResult{OK: p.OK, RTTMs: p.RTTMs, CheckedAt: checked, Error: p.Error}}
		b, err := events.EncodeInput(in)
		if err != nil {
			t.Fatalf("accepted ping does not encode: %v", err)
		}
		back, err := events.DecodeInput(b)
		if err != nil || back.Ping.OK != p.OK || back.Ping.RTTMs != p.RTTMs || !back.Ping.CheckedAt.Equal(checked) || back.Ping.Error != p.Error {
			t.Fatalf("accepted ping changed on the wire: %+v → %+v (%v)", p, back.Ping, err)
		}
	})
}

// FuzzDeviceIDRoute: any id, URL-encoded into the path, either reaches the
// handler as exactly that id (and is then valid, encodes into one subject
// token that parses back to it, and gets an ASCII rate-window id fit for a
// NATS header), or is refused with 400 invalid_device_id. Nothing in
// between: no id is changed on the way, routed elsewhere or passed raw.
func FuzzDeviceIDRoute(f *testing.F) {
	for _, s := range []string{"a", ".", "..", "a/b", "a/../b", "A.x", "*", ">", "a b", "Gerät 東京", "%41", "~",
		"x?y#z", "/", "", "a\x00b", "\xff", "tab\there", strings.Repeat("x", 128), strings.Repeat("x", 129), "\u202e", "a\u200bb"} {
		f.Add(s)
	}
	lim := newLimiter(DefaultRateMinInterval, DefaultRatePerMinute)
	f.Fuzz(func(t *testing.T, id string) {
		var got string
		reached := false
		mux := http.NewServeMux()
		mux.HandleFunc(PatternHeartbeat, func(w http.ResponseWriter, r *http.Request) {
			if v, ok := validID(w, r); ok {
				got, reached = v, true
			}
		})
		req := httptest.NewRequest(http.MethodPost, "http://x"+devPath(id, "/heartbeat"), nil)
		rec := httptest.NewRecorder()
		httpx.DeviceIDs(mux).ServeHTTP(rec, req)
		valid := events.ValidateDeviceID(id) == nil
		switch {
		case valid && (!reached || got != id):
			t.Fatalf("valid id %q reached the handler as %q (%v), code %d", id, got, reached, rec.Code)
		case !valid && (reached || rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), httpx.CodeInvalidDeviceID)):
			t.Fatalf("invalid id %q: reached %v, %d %s", id, reached, rec.Code, rec.Body)
		case !valid:
			return
		}
		subj := events.DeviceSubject(id, 16)
		if _, back, err := events.ParseInputSubject(subj); err != nil || back != id || strings.Count(subj, ".") != 4 {
			t.Fatalf("subject %q of %q parses to %q %v", subj, id, back, err)
		}
		msgID, _, ok := lim.windowID(id, time.Unix(1e9, 0))
		if !ok || len(msgID) > 64 {
			t.Fatalf("window id %q", msgID)
		}
		for _, c := range []byte(msgID) {
			if c <= ' ' || c >= 0x7f {
				t.Fatalf("window id %q is not printable ASCII", msgID)
			}
		}
	})
}

func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return v
}
