package bridge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// slowHeartbeat is decodeHeartbeat without its fast path.
func slowHeartbeat(body []byte) (heartbeatBody, error) {
	f, unknown, err := parseObjectLenient(body, "device_time", "metrics", "probe_url")
	if err != nil {
		return heartbeatBody{}, err
	}
	hb, err := decodeHeartbeatFields(f, DefaultMaxMetrics, DefaultMaxMetricBytes)
	hb.UnknownFields = unknown
	return hb, err
}

// slowItem decodes a gateway batch item as decodeGatewayItem does.
func slowItem(raw []byte) (string, heartbeatBody, error) {
	f, unknown, err := parseObjectLenient(raw, "device", "device_time", "metrics", "probe_url")
	if err != nil {
		return "", heartbeatBody{}, err
	}
	var id string
	if isNull(f["device"]) || json.Unmarshal(f["device"], &id) != nil {
		return "", heartbeatBody{}, fmt.Errorf("no device")
	}
	hb, err := decodeHeartbeatFields(f, DefaultMaxMetrics, DefaultMaxMetricBytes)
	hb.UnknownFields = unknown
	return id, hb, err
}

func sameHB(a, b heartbeatBody) bool {
	return reflect.DeepEqual(a.DeviceTime, b.DeviceTime) && bytes.Equal(a.Metrics, b.Metrics) && reflect.DeepEqual(a.ProbeURL, b.ProbeURL) &&
		a.UnknownFields == b.UnknownFields
}

// checkFast asserts that what the fast path accepts, the full decoder
// accepts with the same result.
func checkFast(t *testing.T, body []byte) (fastOK bool) {
	t.Helper()
	if hb, ok := fastHeartbeatBody(body, DefaultMaxMetrics, DefaultMaxMetricBytes); ok {
		slow, err := slowHeartbeat(body)
		if err != nil {
			t.Fatalf("fast path accepted what the decoder refuses (%v): %q", err, body)
		}
		if !sameHB(hb, slow) {
			t.Fatalf("fast %+v (%s) != slow %+v (%s) for %q", hb, hb.Metrics, slow, slow.Metrics, body)
		}
		fastOK = true
	}
	s := fastScan{b: body}
	if id, hb, ok := s.heartbeat(true, DefaultMaxMetrics, DefaultMaxMetricBytes); ok {
		s.ws()
		if s.i != len(body) {
			return fastOK
		}
		sid, slow, err := slowItem(body)
		if err != nil || sid != id || !sameHB(hb, slow) {
			t.Fatalf("fast item %q %+v, slow %q %+v %v for %q", id, hb, sid, slow, err, body)
		}
	}
	return fastOK
}

var fastSeeds = []string{
	`{}`, ` { } `, `{"metrics":{"battery":87,"signal":-61,"app_version":"4.2.1"}}`,
	`{"device_time":"2026-01-02T03:04:05.123Z","metrics":{"battery":87.5,"ok":true,"x":null,"y":false}}`,
	`{"metrics":null,"device_time":null,"probe_url":null}`, `{"probe_url":"http://10.0.0.1/health"}`,
	`{"metrics":{}}`, `{"metrics":{"a":1,"A":2}}`, `{"metrics":{"a":1,"a":2}}`, `{"metrics":{"a":1e5}}`,
	`{"metrics":{"a":01}}`, `{"metrics":{"a":-0}}`, `{"metrics":{"a":1.}}`, `{"metrics":{"a":"é"}}`,
	`{"metrics":{"a":"\u0000"}}`, `{"metrics":{"a":[1]}}`, `{"metrics":{"a":{"b":1}}}`, `{"metrics":{"":1}}`,
	`{"device_time":"yesterday"}`, `{"device_time":5}`, `{"device":"x"}`, `{"typo":1}`, `{"metrics":1}`,
	`{"metrics":{"a":1}} x`, `{"metrics":{"a":1},}`, `{"metrics":{"a" 1}}`, `[]`, `null`, ``, ` `,
	`{"device":"d1","metrics":{"battery":3}}`, `{"device":"d1","device":"d2"}`, `{"device":null}`,
	`{"metrics":{"a":1},"metrics":{"b":2}}`, "{\"metrics\":{\"a\":\"\t\"}}", `{"metrics":{"a":"x\"y"}}`,
	`{"metrics":{"k":` + strings.Repeat("9", 301) + `}}`, `{"metrics":{"k":` + strings.Repeat("9", 300) + `}}`,
	`{"metrics":{"` + strings.Repeat("k", 129) + `":1}}`, `{"metrics":{"` + strings.Repeat("k", 128) + `":1}}`,
	`{"fw":"2.0","metrics":{"a":1}}`, `{"Metrics":{"a":1}}`, `{"metrics":{"a":1},"extra":{"n":[1,{"x":null}]}}`,
	`{"device":"d1","fw":2}`, `{"x":1,"x":2}`, `{"x":}`,
}

func TestFastHeartbeatMatchesDecoder(t *testing.T) {
	accepted := 0
	for _, s := range fastSeeds {
		if checkFast(t, []byte(s)) {
			accepted++
		}
	}
	// Random plain bodies and mutations of them.
	rnd := rand.New(rand.NewPCG(1, 2))
	pieces := []string{`"battery"`, `"Battery"`, `"signal"`, `"app_version"`, `87`, `-61`, `0.5`, `"4.2.1"`, `true`, `null`,
		`false`, `"x"`, `1e3`, `{`, `}`, `[`, `]`, `,`, `:`, ` `, `"é"`, `"a\"b"`, `-`, `00`, `"device_time"`, `"metrics"`, `"fw":1,`}
	for n := 0; n < 20000; n++ {
		var b strings.Builder
		b.WriteString(`{"metrics":{`)
		k := rnd.IntN(5)
		for i := range k {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `"m%d":%s`, rnd.IntN(4), pieces[4+rnd.IntN(8)])
		}
		b.WriteString(`}`)
		if rnd.IntN(2) == 0 {
			b.WriteString(`,"device_time":"2026-11-29T16:00:00.5Z"`)
		}
		b.WriteString(`}`)
		body := []byte(b.String())
		if rnd.IntN(3) == 0 { // mutate
			pos := rnd.IntN(len(body) + 1)
			p := pieces[rnd.IntN(len(pieces))]
			body = append(body[:pos:pos], append([]byte(p), body[pos:]...)...)
		}
		if checkFast(t, body) {
			accepted++
		}
	}
	if accepted < 5000 {
		t.Fatalf("the fast path took only %d bodies", accepted)
	}
}

func TestFastGatewayBatch(t *testing.T) {
	body := []byte(`{"heartbeats":[{"device":"a","metrics":{"b":1}}, {"device":"c"}]}`)
	items, ok := fastGatewayBatch(body, DefaultMaxMetrics, DefaultMaxMetricBytes)
	if !ok || len(items) != 2 || items[0].id != "a" || string(items[0].hb.Metrics) != `{"b":1}` || items[1].id != "c" {
		t.Fatalf("%v %+v", ok, items)
	}
	for _, s := range []string{`{"heartbeats":[{"metrics":{}}]}`, `{"heartbeats":{}}`, `{"heartbeats":[{"device":"a"},]}`,
		`{"heartbeats":[]} x`, `{"heartbeats":[{"device":"a","x":1}]}`, `{"beats":[]}`} {
		if _, ok := fastGatewayBatch([]byte(s), DefaultMaxMetrics, DefaultMaxMetricBytes); ok {
			t.Errorf("fast path took %s", s)
		}
	}
	var b strings.Builder
	b.WriteString(`{"heartbeats":[`)
	for i := range MaxGatewayBatch + 1 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"device":"d"}`)
	}
	b.WriteString(`]}`)
	if _, ok := fastGatewayBatch([]byte(b.String()), DefaultMaxMetrics, DefaultMaxMetricBytes); ok {
		t.Error("fast path took 1001 heartbeats")
	}
}

func FuzzFastHeartbeat(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkFast(t, body)
	})
}

func BenchmarkDecodeHeartbeat(b *testing.B) {
	body := []byte(`{"device_time":"2026-11-29T16:00:00.123456789Z","metrics":{"battery":87,"signal":-61,"app_version":"devicesim/1.0"}}`)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeHeartbeat(body, DefaultMaxMetrics, DefaultMaxMetricBytes); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := slowHeartbeat(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
