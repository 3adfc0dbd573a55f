package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The masks ScanInput is checked with: each one alone, the callers' and
// every combination.
var masks = []Fields{FieldsHeader, FieldsMetrics, FieldsDeviceTime, FieldsVia, FieldsMetrics | FieldsVia, FieldsAll}

// encodeJSON is the definition of the encoder: encoding/json.
func encodeJSON(e *Input) ([]byte, error) {
	c := *e
	if c.V == 0 {
		c.V = Version
	}
	return json.Marshal(&c)
}

// masked is e with the heartbeat payload fields outside mask cleared.
func masked(e *Input, mask Fields) Input {
	c := *e
	if c.Heartbeat != nil {
		hb := *c.Heartbeat
		if mask&FieldsMetrics == 0 {
			hb.Metrics = nil
		}
		if mask&FieldsDeviceTime == 0 {
			hb.DeviceTime = nil
		}
		if mask&FieldsVia == 0 {
			hb.Via = ""
		}
		c.Heartbeat = &hb
	}
	return c
}

// checkScan asserts that ScanInput agrees with encoding/json (decodeJSON)
// on b for every mask: the same inputs accepted, the same errors, the
// same fields in the mask. It reports whether the fast path took b.
func checkScan(t *testing.T, b []byte) (fast bool) {
	t.Helper()
	want, werr := decodeJSON(b)
	for _, m := range masks {
		got, gerr := ScanInput(b, m)
		if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
			t.Fatalf("mask %d, %q:\nscan %v\njson %v", m, b, gerr, werr)
		}
		if _, ok := scanFast(b, m); ok {
			fast = true
			if werr != nil {
				t.Fatalf("mask %d: the fast path took what encoding/json refuses (%v): %q", m, werr, b)
			}
		}
		if werr != nil {
			continue
		}
		if g, w := masked(got, m), masked(want, m); !reflect.DeepEqual(g, w) {
			t.Fatalf("mask %d, %q:\nscan %+v %+v\njson %+v %+v", m, b, g, g.Heartbeat, w, w.Heartbeat)
		}
	}
	return fast
}

// checkEncode asserts that EncodeInput writes encoding/json's bytes for
// e, and reports whether the fast path took it.
func checkEncode(t *testing.T, e *Input) (fast bool) {
	t.Helper()
	want, werr := encodeJSON(e)
	c := *e
	got, gerr := EncodeInput(&c)
	if (gerr == nil) != (werr == nil) || !bytes.Equal(got, want) {
		t.Fatalf("EncodeInput %s (%v)\nencoding/json %s (%v)", got, gerr, want, werr)
	}
	if c.V == 0 && gerr == nil {
		t.Fatal("EncodeInput did not set V")
	}
	c = *e
	if c.V == 0 {
		c.V = Version
	}
	_, fast = appendHeartbeat(nil, &c)
	return fast
}

// goldenFiles returns the input golden files, as stored (indented) and
// compact (as EncodeInput writes them).
func goldenFiles(t testing.TB) map[string][]byte {
	paths, err := filepath.Glob(filepath.Join("testdata", "input_*.golden.json"))
	if err != nil || len(paths) < len(goldenInputs()) {
		t.Fatalf("golden files: %v %v", paths, err)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
		out[filepath.Base(p)+" compact"] = c.Bytes()
	}
	return out
}

// tricky are inputs at the edges of the fast paths.
var tricky = []string{
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"","at":"2026-01-02T03:04:05Z"}`,
	`{"v":2,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`,
	`{"v":0,"type":"tick","id":"x","at":"2026-01-02T03:04:05Z"}`,
	`{"v":12,"type":"tick","id":"x","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1.0,"type":"tick","id":"x","at":"2026-01-02T03:04:05Z"}`,
	`{"type":"tick","id":"x","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","Device":"e"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-13-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"0001-01-01T00:00:00Z"}`,
	`{"v":1,"type":"tick","id":"x","at":"2026-01-02T03:04:05Z","heartbeat":{}}`,
	`{"v":1,"type":"tick","id":"x","device":"d","at":"2026-01-02T03:04:05+05:30"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z"} `,
	`{"type":"heartbeat","v":1,"id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d\xff","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x\u00e9","device":"d\"q","at":"2026-01-02T03:04:05Z"}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":null}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"metrics":{"a":}}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"metrics":{"a":1},"x":2}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"metrics":null}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"metrics":{"a":01}}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"metrics":{"a":"\q"}}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"metrics":{"s":"x\"}y","n":[1,{"a":"}"}],"u":"\u003c","e":-1.5e+3,"t":true,"f":false,"z":null}}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"device_time":"yesterday"}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"device_time":null,"via":"gw"}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"via":"gw","metrics":{}}}`,
	`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","heartbeat":{"via":5}}`,
	`{"v":1,"type":"ping_result","id":"x","device":"d","at":"2026-01-02T03:04:05Z","ping":{"ok":true,"rtt_ms":3,"checked_at":"2026-01-02T03:04:05Z"}}`,
	`{"v":1,"type":"boom","id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`,
	`{`, ``, `null`, `[]`, `{}`,
}

// sampleInputs are random events of every type, with strings and metrics
// that need escapes and times the fast paths must refuse.
func sampleInputs(n int) []*Input {
	rnd := rand.New(rand.NewPCG(5, 6))
	ids := []string{"d1", "lobby/kiosk-7", "a<b", "x&y", "é", "sp ace", `q"uote`, "back\\slash", "tab\tx", "\u2028", "d\xff"}
	metrics := []string{"", `{"battery":87}`, `{"a":"<"}`, `{"a":"x y"}`, `{"a": 1}`, `{"a":"\u2028"}`, `{"a":"é","b":[1,2]}`,
		`null`, `{}`, `{"battery":87,"s":"x\"}y","n":[1,{"a":"}"}]}`, `{"a":}`, `[1]`}
	var out []*Input
	for len(out) < n {
		at := time.Unix(rnd.Int64N(4e9), rnd.Int64N(1e9)).UTC()
		switch rnd.IntN(10) {
		case 0:
			at = at.Truncate(time.Second)
		case 1:
			at = at.In(time.FixedZone("", 5*3600+1800))
		case 2:
			at = time.Date(10000+rnd.IntN(10), 1, 1, 0, 0, 0, 0, time.UTC)
		}
		var e *Input
		switch rnd.IntN(5) {
		case 0:
			e = &Input{Type: TypeTick, ID: fmt.Sprintf("tick-%d-%d", rnd.IntN(16), at.UnixNano()), At: at}
		case 1:
			e = &Input{Type: TypePingResult, ID: "pg-1", Device: ids[rnd.IntN(len(ids))], At: at,
				Ping: &PingResult{OK: rnd.IntN(2) == 0, RTTMs: 12, CheckedAt: at}}
		default:
			e = &Input{Type: TypeHeartbeat, ID: "hb-" + ids[rnd.IntN(3)], Device: ids[rnd.IntN(len(ids))], At: at,
				Heartbeat: &Heartbeat{Metrics: json.RawMessage(metrics[rnd.IntN(len(metrics))])}}
			if rnd.IntN(2) == 0 {
				dt := at.Add(-time.Duration(rnd.Int64N(1e12)))
				e.Heartbeat.DeviceTime = &dt
			}
			if rnd.IntN(2) == 0 {
				e.Heartbeat.Via = ids[rnd.IntN(len(ids))]
			}
			if rnd.IntN(10) == 0 {
				e.Actor = ids[rnd.IntN(len(ids))]
			}
			if rnd.IntN(20) == 0 {
				e.V = rnd.IntN(12)
			}
		}
		out = append(out, e)
	}
	return out
}

// TestWireEquivalence checks the fast paths against encoding/json over
// the golden files, inputs at their edges and random events: ScanInput
// agrees with the full decoder for every mask, EncodeInput writes
// encoding/json's bytes. The fast paths must also take their share of
// the samples, and every golden heartbeat and tick in compact form.
func TestWireEquivalence(t *testing.T) {
	for name, b := range goldenFiles(t) {
		fast := checkScan(t, b)
		compact := strings.HasSuffix(name, " compact")
		if compact != fast && (strings.Contains(name, "heartbeat") || strings.Contains(name, "tick")) {
			t.Errorf("%s: fast path %v", name, fast)
		}
		e, err := DecodeInput(b)
		if err != nil {
			t.Fatal(err)
		}
		checkEncode(t, e)
		if enc, _ := EncodeInput(e); compact && !bytes.Equal(enc, b) {
			t.Errorf("%s: EncodeInput wrote %s", name, enc)
		}
	}
	for _, s := range tricky {
		checkScan(t, []byte(s))
	}
	fastEnc, fastDec, ok := 0, 0, 0
	samples := sampleInputs(4000)
	for _, e := range samples {
		if checkEncode(t, e) {
			fastEnc++
		}
		b, err := encodeJSON(e)
		if err != nil {
			continue
		}
		ok++
		if checkScan(t, b) {
			fastDec++
		}
	}
	if fastEnc < len(samples)/40 || fastDec < ok/5 || !checkEncode(t, benchHeartbeat()) {
		t.Fatalf("fast paths took %d of %d encodings, %d of %d decodings", fastEnc, len(samples), fastDec, ok)
	}
	// A heartbeat without payload fields gets the shared empty one only
	// when no field was asked for.
	b := []byte(tricky[0])
	if e, _ := ScanInput(b, FieldsHeader); e.Heartbeat != emptyHeartbeat {
		t.Error("header scan allocated a payload")
	}
	if e, _ := DecodeInput(b); e.Heartbeat == emptyHeartbeat || e.Heartbeat == nil {
		t.Error("DecodeInput returned the shared payload")
	}
}

func TestValidValue(t *testing.T) {
	for _, s := range append(strings.Fields(`{} [] {"a":[1,-0.5e+7,true,false,null,"\u00e9\n"]} "x" 0 -0 1E5 [[[]]]`), "") {
		if validValue([]byte(s)) != json.Valid([]byte(s)) {
			t.Errorf("validValue(%q) = %v", s, validValue([]byte(s)))
		}
	}
	for _, s := range append(strings.Fields(`{ 01 1. -.5 .5 +1 1e "\x" "\u12" [1,] {"a"} {"a":1,} tru nul {"a":1}x`), "\"\x01\"", "[\"\t\"]") {
		if validValue([]byte(s)) {
			t.Errorf("validValue(%q) = true", s)
		}
	}
	deep := strings.Repeat("[", maxDepth+2) + strings.Repeat("]", maxDepth+2)
	if validValue([]byte(deep)) {
		t.Error("too deep a value accepted")
	}
}

// FuzzInput checks ScanInput against encoding/json for every mask on any
// input, and EncodeInput against encoding/json on whatever decodes.
func FuzzInput(f *testing.F) {
	for _, b := range goldenFiles(f) {
		f.Add(b)
	}
	for _, s := range tricky {
		f.Add([]byte(s))
	}
	for _, e := range sampleInputs(40) {
		if b, err := encodeJSON(e); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkScan(t, b)
		validValue(b) // must not panic
		if e, err := decodeJSON(b); err == nil {
			checkEncode(t, e)
		}
	})
}

// benchHeartbeat is a heartbeat as the bridge publishes it.
func benchHeartbeat() *Input {
	dt := time.Now().UTC()
	return &Input{V: 1, Type: TypeHeartbeat, ID: "hb-Y7sd8dfJZ9h2m5eQk1a2b3", Device: "ld-1234abcd-g12-345", At: time.Now().UTC(),
		Heartbeat: &Heartbeat{DeviceTime: &dt, Metrics: json.RawMessage(`{"battery":87,"signal":-61,"app_version":"devicesim/1.0"}`), Via: "gw-12"}}
}

// BenchmarkDecodeInput decodes a heartbeat with each caller's mask
// (header: the partition worker; metrics: the liveness projection; all:
// DecodeInput) and with encoding/json.
func BenchmarkDecodeInput(b *testing.B) {
	data, err := EncodeInput(benchHeartbeat())
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		mask Fields
	}{{"header", FieldsHeader}, {"metrics", FieldsMetrics}, {"all", FieldsAll}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ScanInput(data, c.mask); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeJSON(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEncodeHeartbeatEvent encodes a heartbeat with EncodeInput and
// with encoding/json.
func BenchmarkEncodeHeartbeatEvent(b *testing.B) {
	in := benchHeartbeat()
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := EncodeInput(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeJSON(in); err != nil {
				b.Fatal(err)
			}
		}
	})
}
