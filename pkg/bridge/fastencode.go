package bridge

import (
	"time"

	"github.com/devstatus/devstatus/events"
)

// encodeInput is events.EncodeInput with a fast path for heartbeats: the
// same bytes (the wire format is events' JSON, pinned by its golden files)
// appended by hand instead of through encoding/json's reflection, ~10×
// cheaper. Anything the fast path is not sure to write exactly as
// encoding/json would — a string needing an escape (encoding/json escapes
// <, > and & too), metrics with such characters, a year outside 0–9999 —
// goes through events.EncodeInput. TestEncodeInputMatches checks the two
// agree.
func encodeInput(in *events.Input) ([]byte, error) {
	n := 240 + len(in.ID) + len(in.Device) + len(in.Actor)
	if in.Heartbeat != nil {
		n += len(in.Heartbeat.Metrics) + len(in.Heartbeat.Via)
	}
	if b, ok := appendHeartbeatEvent(make([]byte, 0, n), in); ok {
		return b, nil
	}
	return events.EncodeInput(in)
}

// plainJSONString reports whether s is written by encoding/json as is
// between quotes: printable ASCII without ", \, <, > and &.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// plainRawJSON reports whether JSON b is written by encoding/json
// unchanged: compact (no white space outside strings), no <, > or &
// (escaped inside strings) and no U+2028/U+2029 (first byte 0xE2:
// conservatively, any such byte).
func plainRawJSON(b []byte) bool {
	inStr := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '<' || c == '>' || c == '&' || c == 0xe2:
			return false
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case !inStr && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			return false
		}
	}
	return true
}

func appendTime(b []byte, t time.Time) ([]byte, bool) {
	if y := t.Year(); y < 0 || y > 9999 {
		return b, false
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), true
}

func appendHeartbeatEvent(b []byte, in *events.Input) ([]byte, bool) {
	hb := in.Heartbeat
	if in.Type != events.TypeHeartbeat || hb == nil || in.Ping != nil || in.Registered != nil || in.RemoteControl != nil ||
		!plainJSONString(in.ID) || !plainJSONString(in.Device) || !plainJSONString(in.Actor) || !plainJSONString(hb.Via) ||
		(len(hb.Metrics) > 0 && !plainRawJSON(hb.Metrics)) || in.V < 0 || in.V > 9 {
		return b, false
	}
	if in.V == 0 {
		in.V = events.Version // as events.EncodeInput does
	}
	b = append(b, `{"v":`...)
	b = append(b, byte('0'+in.V))
	b = append(b, `,"type":"heartbeat","id":"`...)
	b = append(b, in.ID...)
	b = append(b, '"')
	if in.Device != "" {
		b = append(b, `,"device":"`...)
		b = append(b, in.Device...)
		b = append(b, '"')
	}
	b = append(b, `,"at":`...)
	var ok bool
	if b, ok = appendTime(b, in.At); !ok {
		return b, false
	}
	if in.Actor != "" {
		b = append(b, `,"actor":"`...)
		b = append(b, in.Actor...)
		b = append(b, '"')
	}
	b = append(b, `,"heartbeat":{`...)
	sep := false
	if hb.DeviceTime != nil {
		b = append(b, `"device_time":`...)
		if b, ok = appendTime(b, *hb.DeviceTime); !ok {
			return b, false
		}
		sep = true
	}
	if len(hb.Metrics) > 0 {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"metrics":`...)
		b = append(b, hb.Metrics...)
		sep = true
	}
	if hb.Via != "" {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"via":"`...)
		b = append(b, hb.Via...)
		b = append(b, '"')
	}
	return append(b, "}}"...), true
}
