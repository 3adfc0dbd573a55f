package bridge

import (
	"encoding/json"
	"time"
)

// Fast path of heartbeat decoding (docs/performance.md: JSON validation was
// 18 % of the bridge's CPU in gateway batches, most of it allocation by
// encoding/json's token API). It reads the plain form devices send — one
// object whose keys are among the allowed ones, each once; device_time and
// probe_url null or strings; metrics null or a flat object of numbers,
// strings, booleans and nulls — in one pass, allocating only the results.
// It gives up (ok false) on anything else: escapes, any byte that is not
// printable ASCII or JSON white space, nested metric values, exponents,
// numbers over 300 characters, unknown or repeated keys, limits exceeded,
// a device_time that does not parse. The caller then runs the full decoder
// (decodeHeartbeat, parseObject), which stays the only authority on every
// refusal and its message. What the fast path accepts, the full decoder
// accepts with the same result (FuzzFastHeartbeat checks it): printable
// ASCII is valid UTF-8 without NUL or surrogates, a flat object has depth 1,
// a number without exponent under 300 characters is a finite float64, and
// the compacted metrics are the input without its white space.

// fastScan is a cursor over a body.
type fastScan struct {
	b []byte
	i int
}

func (s *fastScan) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// byte consumes c after white space.
func (s *fastScan) byte(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *fastScan) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// str reads a string of printable ASCII without escapes; it returns the
// bytes between the quotes (aliasing the body).
func (s *fastScan) str() ([]byte, bool) {
	if s.peek() != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c == '\\' || c < 0x20 || c > 0x7e:
			return nil, false
		}
	}
	return nil, false
}

func (s *fastScan) lit(l string) bool {
	if len(s.b)-s.i >= len(l) && string(s.b[s.i:s.i+len(l)]) == l {
		s.i += len(l)
		return true
	}
	return false
}

// null consumes a null.
func (s *fastScan) null() bool { s.ws(); return s.lit("null") }

// num reads a JSON number without exponent, at most 300 characters.
func (s *fastScan) num() bool {
	s.ws()
	j := s.i
	if j < len(s.b) && s.b[j] == '-' {
		j++
	}
	digits := func() int {
		k := j
		for j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9' {
			j++
		}
		return j - k
	}
	n := digits()
	if n == 0 || (n > 1 && s.b[j-n] == '0') {
		return false
	}
	if j < len(s.b) && s.b[j] == '.' {
		j++
		if digits() == 0 {
			return false
		}
	}
	if j < len(s.b) && (s.b[j] == 'e' || s.b[j] == 'E') {
		return false
	}
	if j-s.i > 300 {
		return false
	}
	s.i = j
	return true
}

// scalar reads a flat metric value and returns its bytes.
func (s *fastScan) scalar() ([]byte, bool) {
	s.ws()
	start := s.i
	if s.i >= len(s.b) {
		return nil, false
	}
	ok := false
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok = s.str()
	case c == '-' || (c >= '0' && c <= '9'):
		ok = s.num()
	case c == 't':
		ok = s.lit("true")
	case c == 'f':
		ok = s.lit("false")
	case c == 'n':
		ok = s.lit("null")
	}
	return s.b[start:s.i], ok
}

// fastHeartbeat decodes a heartbeat object starting at the scanner's
// position: the body of POST /v1/devices/{id}/heartbeat (withDevice false),
// or an item of a gateway batch (withDevice true: "device" is required).
func (s *fastScan) heartbeat(withDevice bool, maxMetrics, maxMetricBytes int) (id string, hb heartbeatBody, ok bool) {
	if !s.byte('{') {
		return "", hb, false
	}
	var seen [4]bool // device, device_time, metrics, probe_url
	if s.peek() == '}' {
		s.i++
		return "", hb, !withDevice
	}
	for {
		k, ok := s.str()
		if !ok || !s.byte(':') {
			return "", hb, false
		}
		var f int
		switch string(k) {
		case "device":
			f = 0
		case "device_time":
			f = 1
		case "metrics":
			f = 2
		case "probe_url":
			f = 3
		default:
			return "", hb, false
		}
		if seen[f] || (f == 0 && !withDevice) {
			return "", hb, false
		}
		seen[f] = true
		switch f {
		case 0:
			v, ok := s.str()
			if !ok {
				return "", hb, false
			}
			id = string(v)
		case 1:
			if !s.null() {
				v, ok := s.str()
				if !ok {
					return "", hb, false
				}
				t, err := time.Parse(time.RFC3339Nano, string(v))
				if err != nil {
					return "", hb, false
				}
				t = t.UTC()
				hb.DeviceTime = &t
			}
		case 2:
			if !s.null() {
				if hb.Metrics, ok = s.metrics(maxMetrics, maxMetricBytes); !ok {
					return "", hb, false
				}
			}
		case 3:
			if !s.null() {
				v, ok := s.str()
				if !ok {
					return "", hb, false
				}
				u := string(v)
				hb.ProbeURL = &u
			}
		}
		if s.byte(',') {
			continue
		}
		if s.byte('}') {
			break
		}
		return "", hb, false
	}
	if withDevice && !seen[0] {
		return "", hb, false
	}
	return id, hb, true
}

// metrics reads a flat metrics object and returns it compacted.
func (s *fastScan) metrics(maxMetrics, maxMetricBytes int) (json.RawMessage, bool) {
	if !s.byte('{') {
		return nil, false
	}
	var keys [][]byte
	var kbuf [16][]byte
	keys = kbuf[:0]
	out := make([]byte, 0, 64)
	out = append(out, '{')
	if s.peek() == '}' {
		s.i++
		return append(out, '}'), true
	}
	for {
		k, ok := s.str()
		if !ok || len(k) == 0 || len(k) > MaxMetricKeyLen || len(keys) >= maxMetrics || !s.byte(':') {
			return nil, false
		}
		for _, o := range keys {
			if asciiFoldEqual(o, k) {
				return nil, false
			}
		}
		keys = append(keys, k)
		v, ok := s.scalar()
		if !ok || len(v) > maxMetricBytes {
			return nil, false
		}
		if len(keys) > 1 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = append(out, k...)
		out = append(out, '"', ':')
		out = append(out, v...)
		if s.byte(',') {
			continue
		}
		if s.byte('}') {
			break
		}
		return nil, false
	}
	return append(out, '}'), true
}

func asciiFoldEqual(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// fastHeartbeatBody is the fast path of decodeHeartbeat.
func fastHeartbeatBody(body []byte, maxMetrics, maxMetricBytes int) (heartbeatBody, bool) {
	s := fastScan{b: body}
	_, hb, ok := s.heartbeat(false, maxMetrics, maxMetricBytes)
	if !ok {
		return heartbeatBody{}, false
	}
	s.ws()
	return hb, s.i == len(body)
}

// fastGatewayItem is one decoded item of a fast-parsed gateway batch.
type fastGatewayItem struct {
	id string
	hb heartbeatBody
}

// fastGatewayBatch is the fast path of a gateway batch body
// {"heartbeats": [item, …]}: every item must take the fast path, else the
// whole batch goes through parseObject and decodeGatewayItem.
func fastGatewayBatch(body []byte, maxMetrics, maxMetricBytes int) ([]fastGatewayItem, bool) {
	s := fastScan{b: body}
	if !s.byte('{') {
		return nil, false
	}
	if k, ok := s.str(); !ok || string(k) != "heartbeats" || !s.byte(':') || !s.byte('[') {
		return nil, false
	}
	items := make([]fastGatewayItem, 0, 64)
	if s.peek() == ']' {
		s.i++
	} else {
		for {
			id, hb, ok := s.heartbeat(true, maxMetrics, maxMetricBytes)
			if !ok || len(items) >= MaxGatewayBatch {
				return nil, false
			}
			items = append(items, fastGatewayItem{id, hb})
			if s.byte(',') {
				continue
			}
			if s.byte(']') {
				break
			}
			return nil, false
		}
	}
	if !s.byte('}') {
		return nil, false
	}
	s.ws()
	return items, s.i == len(body)
}
