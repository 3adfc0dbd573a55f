package bridge

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/devstatus/devstatus/events"
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
			if _, ok := err.(*requestError); !ok {
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
