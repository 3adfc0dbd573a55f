package worker

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/devstatus/devstatus/events"
)

// The fast path decodes what events.EncodeInput writes exactly as
// events.DecodeInput does, and leaves everything else to it.
func TestDecodeInputMatches(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	ids := []string{"d1", "lobby/kiosk-7", "a<b", "é", `q"uote`, "tab\tx", "\u2028", "x\\y"}
	var samples [][]byte
	for n := 0; n < 3000; n++ {
		at := time.Unix(rnd.Int64N(4e9), rnd.Int64N(1e9)).UTC()
		var in *events.Input
		switch rnd.IntN(4) {
		case 0:
			in = &events.Input{Type: events.TypeTick, ID: fmt.Sprintf("tick-%d-%d", rnd.IntN(16), at.UnixNano()), At: at}
		case 1:
			in = &events.Input{Type: events.TypePingResult, ID: "pg-1", Device: ids[rnd.IntN(len(ids))], At: at,
				Ping: &events.PingResult{OK: rnd.IntN(2) == 0, RTTMs: 12, CheckedAt: at}}
		default:
			dt := at.Add(-time.Second)
			in = &events.Input{Type: events.TypeHeartbeat, ID: "hb-" + ids[rnd.IntN(2)], Device: ids[rnd.IntN(len(ids))], At: at,
				Heartbeat: &events.Heartbeat{DeviceTime: &dt, Metrics: json.RawMessage(`{"battery":87,"s":"x\"}y","n":[1,{"a":"}"}]}`), Via: "gw"}}
			if rnd.IntN(3) == 0 {
				in.Heartbeat = &events.Heartbeat{}
			}
		}
		b, err := events.EncodeInput(in)
		if err != nil {
			t.Fatal(err)
		}
		samples = append(samples, b)
	}
	samples = append(samples, []byte(`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`),
		[]byte(`{"v":1,"type":"heartbeat","id":"x","at":"2026-01-02T03:04:05Z"}`),
		[]byte(`{"v":2,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`),
		[]byte(`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z","Device":"e"}`),
		[]byte(`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-13-02T03:04:05Z"}`),
		[]byte(`{"v":1,"type":"tick","id":"x","at":"2026-01-02T03:04:05Z","heartbeat":{}}`),
		[]byte(`{"v":1,"type":"heartbeat","id":"x","device":"d","at":"2026-01-02T03:04:05Z"} `),
		[]byte(`{"type":"heartbeat","v":1,"id":"x","device":"d","at":"2026-01-02T03:04:05Z"}`),
		[]byte(`{"v":1,"type":"heartbeat","id":"x","device":"d\xff","at":"2026-01-02T03:04:05Z"}`))
	fast := 0
	for _, b := range samples {
		got, gerr := decodeInput(b)
		want, werr := events.DecodeInput(b)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("%s: fast %v, events %v", b, gerr, werr)
		}
		if _, ok := fastInput(b); ok {
			fast++
		}
		if werr != nil {
			continue
		}
		// The worker reads type, id, device, at, actor, ping and registered.
		if got.V != want.V || got.Type != want.Type || got.ID != want.ID || got.Device != want.Device || !got.At.Equal(want.At) ||
			got.Actor != want.Actor || !reflect.DeepEqual(got.Ping, want.Ping) || !reflect.DeepEqual(got.Registered, want.Registered) ||
			(got.Heartbeat == nil) != (want.Heartbeat == nil) {
			t.Fatalf("%s:\nfast   %+v\nevents %+v", b, got, want)
		}
	}
	if fast < 1000 {
		t.Fatalf("fast path took %d of %d", fast, len(samples))
	}
}

func BenchmarkDecodeInput(b *testing.B) {
	dt := time.Now().UTC()
	data, _ := events.EncodeInput(&events.Input{Type: events.TypeHeartbeat, ID: "hb-Y7sd8dfJZ9h2m5eQk1a2b3", Device: "ld-1234abcd-g12-345",
		At: time.Now().UTC(), Heartbeat: &events.Heartbeat{DeviceTime: &dt, Metrics: json.RawMessage(`{"battery":87,"signal":-61,"app_version":"devicesim/1.0"}`), Via: "gw-12"}})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeInput(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("events.DecodeInput", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := events.DecodeInput(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
