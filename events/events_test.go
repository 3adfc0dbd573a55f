package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite golden files")

func ts(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

// goldenInputs pins the wire format of every input event type.
func goldenInputs() map[string]*Input {
	dt := ts("2026-01-02T03:04:00Z")
	return map[string]*Input{
		"heartbeat": {Type: TypeHeartbeat, ID: "hb-1", Device: "G1/site1/c1/node1", At: ts("2026-01-02T03:04:05.123Z"),
			Heartbeat: &Heartbeat{DeviceTime: &dt, Metrics: json.RawMessage(`{"battery":87,"signal":-61}`)}},
		"ping_result": {Type: TypePingResult, ID: "pg-1", Device: "kiosk-7", At: ts("2026-01-02T03:04:06Z"),
			Ping: &PingResult{OK: false, RTTMs: 2000, CheckedAt: ts("2026-01-02T03:04:04Z"), Error: "timeout"}},
		"tick":                  {Type: TypeTick, ID: "tick-3-1767323045000000000", At: ts("2026-01-02T03:04:05Z")},
		"device_registered":     {Type: TypeDeviceRegistered, ID: "reg-1", Device: "kiosk-7", At: ts("2026-01-02T03:00:00Z"), Actor: "admin", Registered: &Registered{Group: "lobby", Gateway: "gw-1"}},
		"device_decommissioned": {Type: TypeDeviceDecommissioned, ID: "dec-1", Device: "kiosk-7", At: ts("2026-01-02T04:00:00Z"), Actor: "admin"},
		"reconnect_requested":   {Type: TypeReconnectRequested, ID: "rr-1", Device: "kiosk-7", At: ts("2026-01-02T03:10:00Z"), Actor: "admin"},
		"reconnect_delivered":   {Type: TypeReconnectDelivered, ID: "rd-1", Device: "kiosk-7", At: ts("2026-01-02T03:10:30Z")},
		"outage_hold_started": {Type: TypeOutageHoldStarted, ID: "hold-start-1767323085000000000", At: ts("2026-01-02T03:04:45Z"),
			Hold: &OutageHold{Reason: "12 of 20 connected devices went silent within 40s", Silent: 12, Connected: 8}},
		"outage_hold_ended": {Type: TypeOutageHoldEnded, ID: "hold-end-1767323385000000000", At: ts("2026-01-02T03:09:45Z"), Actor: "admin",
			Hold: &OutageHold{Reason: "released by admin", Since: ts("2026-01-02T03:04:45Z")}},
		"remote_control_changed": {Type: TypeRemoteControlChanged, ID: "rc-1", Device: "kiosk-7", At: ts("2026-01-02T03:11:00Z"), Actor: "admin", RemoteControl: &RemoteControl{Enabled: true}},
	}
}

func goldenTransition() *StatusChanged {
	lh := ts("2026-01-02T03:04:05.123Z")
	return &StatusChanged{ID: "tr-3-42-0", Device: "G1/site1/c1/node1", Group: "lobby",
		From: StatusConnected, To: StatusTemporarilyOffline, ReasonCode: ReasonHeartbeatTimeout,
		Reason: "no heartbeat for 41s", At: ts("2026-01-02T03:04:45.123Z"), ObservedAt: ts("2026-01-02T03:04:46Z"),
		Cause: Cause{EventID: "tick-3-1767323086000000000", Type: TypeTick, Seq: 42}, Partition: 3, LastHeartbeatAt: &lh}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, got, "", "  "); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	path := filepath.Join("testdata", name+".golden.json")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./events -update to create)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("%s: wire format changed\n got: %s\nwant: %s", name, buf.Bytes(), want)
	}
}

func TestInputGolden(t *testing.T) {
	for name, in := range goldenInputs() {
		t.Run(name, func(t *testing.T) {
			b, err := EncodeInput(in)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, "input_"+name, b)
			back, err := DecodeInput(b)
			if err != nil {
				t.Fatal(err)
			}
			b2, _ := EncodeInput(back)
			if !bytes.Equal(b, b2) {
				t.Errorf("round trip differs:\n%s\n%s", b, b2)
			}
		})
	}
}

func TestStatusChangedGolden(t *testing.T) {
	s := goldenTransition()
	b, err := EncodeStatusChanged(s)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "status_changed", b)
	back, err := DecodeStatusChanged(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.MsgID() != "tr-3-42-0" {
		t.Errorf("MsgID = %q", back.MsgID())
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := map[string]struct {
		in   string
		want error
	}{
		"not json":             {`{`, ErrMalformed},
		"future version":       {`{"v":99,"type":"tick","id":"x","at":"2026-01-01T00:00:00Z"}`, ErrUnsupportedVersion},
		"no version":           {`{"type":"tick","id":"x","at":"2026-01-01T00:00:00Z"}`, ErrUnsupportedVersion},
		"hold without payload": {`{"v":1,"type":"outage_hold_started","id":"x","at":"2026-01-01T00:00:00Z"}`, ErrMalformed},
		"unknown type":         {`{"v":1,"type":"boom","id":"x","device":"a","at":"2026-01-01T00:00:00Z"}`, ErrMalformed},
		"ping no payload":      {`{"v":1,"type":"ping_result","id":"x","device":"a","at":"2026-01-01T00:00:00Z"}`, ErrMalformed},
		"no device":            {`{"v":1,"type":"heartbeat","id":"x","at":"2026-01-01T00:00:00Z"}`, ErrMalformed},
		"no time":              {`{"v":1,"type":"heartbeat","id":"x","device":"a"}`, ErrMalformed},
	}
	for name, c := range cases {
		if _, err := DecodeInput([]byte(c.in)); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
	if _, err := DecodeStatusChanged([]byte(`{"v":1,"device":"a","from":"connected","to":"bogus","at":"2026-01-01T00:00:00Z"}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad status accepted: %v", err)
	}
}

func TestValidateDeviceID(t *testing.T) {
	ok := []string{"a", "A.x", "*", ">", "a b", "G1/site1/c1/node1", "dev:01", "Gerät-ß-東京", strings.Repeat("x", 128), "ünï " + "😀"}
	for _, id := range ok {
		if err := ValidateDeviceID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	bad := map[string]error{
		"":                       ErrDeviceIDEmpty,
		strings.Repeat("x", 129): ErrDeviceIDTooLong,
		"a\x00b":                 ErrDeviceIDControl,
		"a\nb":                   ErrDeviceIDControl,
		"tab\there":              ErrDeviceIDControl,
		"\x7f":                   ErrDeviceIDControl,
		"bad\xffutf8":            ErrDeviceIDUTF8,
		"\xc3":                   ErrDeviceIDUTF8,
		"zero\u200bwidth":        ErrDeviceIDControl, // format character, not printable
	}
	for id, want := range bad {
		if err := ValidateDeviceID(id); !errors.Is(err, want) {
			t.Errorf("%q: err = %v, want %v", id, err, want)
		}
	}
	// A valid U+FFFD written as UTF-8 is printable and accepted.
	if err := ValidateDeviceID("x\uFFFDy"); err != nil {
		t.Errorf("U+FFFD refused: %v", err)
	}
}

func TestSubjectTokenSafeAndInjective(t *testing.T) {
	ids := []string{"A", "A.x", "A.", ".A", "*", ">", "A*", "A >", "a b", "A/x", "Ā"}
	seen := map[string]string{}
	for _, id := range ids {
		tok := SubjectToken(id)
		if strings.ContainsAny(tok, ".*> \t\r\n") || tok == "" {
			t.Errorf("token %q of %q is not a safe subject token", tok, id)
		}
		if other, dup := seen[tok]; dup {
			t.Errorf("%q and %q share token %q", id, other, tok)
		}
		seen[tok] = id
		back, err := DeviceIDFromToken(tok)
		if err != nil || back != id {
			t.Errorf("round trip of %q gave %q, %v", id, back, err)
		}
		p, dev, err := ParseInputSubject(DeviceSubject(id, 16))
		if err != nil || dev != id || p != Partition(id, 16) {
			t.Errorf("ParseInputSubject(%q) = %d %q %v", DeviceSubject(id, 16), p, dev, err)
		}
	}
	if p, dev, err := ParseInputSubject(TickSubject(7)); err != nil || p != 7 || dev != "" {
		t.Errorf("tick subject parsed as %d %q %v", p, dev, err)
	}
	if p, dev, err := ParseInputSubject(HoldSubject(5)); err != nil || p != 5 || dev != "" {
		t.Errorf("hold subject parsed as %d %q %v", p, dev, err)
	}
}

func TestPartitionStableAndSpread(t *testing.T) {
	// Pinned values: changing the function would reshuffle every fleet.
	if got := Partition("G1/site1/c1/node1", 16); got != Partition("G1/site1/c1/node1", 16) {
		t.Fatal("not deterministic")
	}
	counts := make([]int, 16)
	for i := 0; i < 16000; i++ {
		counts[Partition("device-"+string(rune('a'+i%26))+"-"+itoa(i), 16)]++
	}
	for p, c := range counts {
		if c < 700 || c > 1300 {
			t.Errorf("partition %d holds %d of 16000 devices: poor spread", p, c)
		}
	}
}

func itoa(i int) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		i /= 10
		if i == 0 {
			return string(b)
		}
	}
}

func FuzzDeviceIDEncoding(f *testing.F) {
	for _, s := range []string{"a", "A.x", "*", ">", "a b", "\x00", "\xff", "G1/site1/c1/node1", "東京"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateDeviceID(id)
		if err != nil {
			return
		}
		if !utf8.ValidString(id) || len(id) == 0 || len(id) > MaxDeviceIDLen || strings.ContainsRune(id, 0) {
			t.Fatalf("accepted invalid id %q", id)
		}
		subj := DeviceSubject(id, 16)
		p, back, err := ParseInputSubject(subj)
		if err != nil || back != id || p < 0 || p >= 16 {
			t.Fatalf("subject %q of %q parsed as %d %q %v", subj, id, p, back, err)
		}
		if strings.Count(subj, ".") != 4 {
			t.Fatalf("subject %q has extra tokens", subj)
		}
	})
}

func TestProbeRequestGolden(t *testing.T) {
	r := &ProbeRequest{ID: "probe-3-42-0", Device: "kiosk-7", DueAt: ts("2026-01-02T03:04:40Z"), Attempt: 1,
		LastHeartbeatAt: ts("2026-01-02T03:04:05Z"), Cause: Cause{EventID: "tick-3-1", Type: TypeTick, Seq: 42}, Partition: 3}
	b, err := EncodeProbeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "probe_request", b)
	back, err := DecodeProbeRequest(b)
	if err != nil || back.Device != "kiosk-7" || back.Attempt != 1 {
		t.Fatalf("%+v %v", back, err)
	}
	if _, err := DecodeProbeRequest([]byte(`{"v":1}`)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty request accepted: %v", err)
	}
}
