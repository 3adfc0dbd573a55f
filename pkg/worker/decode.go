package worker

import (
	"bytes"
	"unicode/utf8"

	"github.com/devstatus/devstatus/events"
)

// decodeInput is events.DecodeInput with a fast path for the two events
// that make up the partition's log — heartbeats and ticks — reading only
// what the state machine needs (type, id, device, at) and skipping the
// heartbeat's payload (device time, metrics: for the projections) without
// decoding it. docs/performance.md: encoding/json's reflection over the
// whole envelope, metrics included, was a fifth of the worker's CPU.
//
// The fast path takes only the form events.EncodeInput writes: lowercase
// keys in its order, each once, known, strings without escapes where a
// value is read; anything else (another event type, an escape in the id, an
// unknown or repeated key, a time that does not parse …) goes to
// events.DecodeInput, which stays the authority on validity and errors.
// TestDecodeInputMatches checks the two agree.
func decodeInput(b []byte) (*events.Input, error) {
	if in, ok := fastInput(b); ok {
		return in, nil
	}
	return events.DecodeInput(b)
}

// emptyHeartbeat is the payload of fast-decoded heartbeats (the worker
// never reads it; events.DecodeInput guarantees a non-nil one).
var emptyHeartbeat = &events.Heartbeat{}

type scan struct {
	b []byte
	i int
}

func (s *scan) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string without escapes (aliasing the input).
func (s *scan) str() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	j := bytes.IndexByte(s.b[s.i:], '"')
	if j < 0 {
		return nil, false
	}
	v := s.b[s.i : s.i+j]
	for _, c := range v {
		if c < 0x20 || c == '\\' {
			return nil, false // an escape, or invalid JSON
		}
	}
	if !utf8.Valid(v) {
		return nil, false // encoding/json would replace the bad bytes
	}
	s.i += j + 1
	return v, true
}

// skip skips one JSON value (string, number, literal, object or array),
// escapes included; it does not validate what it skips beyond nesting.
func (s *scan) skip() bool {
	depth := 0
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case '"':
			s.i++
			for {
				if s.i >= len(s.b) {
					return false
				}
				if s.b[s.i] == '\\' {
					s.i += 2
					continue
				}
				if s.b[s.i] == '"' {
					s.i++
					break
				}
				s.i++
			}
			if depth == 0 {
				return true
			}
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			if depth == 0 {
				return true // end of the enclosing object: a scalar just ended
			}
			depth--
			s.i++
			if depth == 0 {
				return true
			}
		case ',', ':':
			if depth == 0 {
				return true
			}
			s.i++
		default:
			s.i++
		}
	}
	return depth == 0
}

func fastInput(b []byte) (*events.Input, bool) {
	s := scan{b: b}
	if !s.eat('{') {
		return nil, false
	}
	var in events.Input
	// Keys in events.EncodeInput's order; each at most once.
	order := [...]string{"v", "type", "id", "device", "at", "actor", "heartbeat"}
	next := 0
	for first := true; ; first = false {
		if s.eat('}') {
			break
		}
		if !first && !s.eat(',') {
			return nil, false
		}
		k, ok := s.str()
		if !ok || !s.eat(':') {
			return nil, false
		}
		f := next
		for f < len(order) && order[f] != string(k) {
			f++
		}
		if f == len(order) {
			return nil, false // unknown, repeated or out of order
		}
		next = f + 1
		switch f {
		case 0: // v: one digit
			if s.i >= len(s.b) || s.b[s.i] < '1' || s.b[s.i] > '9' {
				return nil, false
			}
			in.V = int(s.b[s.i] - '0')
			s.i++
		case 1:
			v, ok := s.str()
			if !ok {
				return nil, false
			}
			switch string(v) {
			case string(events.TypeHeartbeat):
				in.Type = events.TypeHeartbeat
			case string(events.TypeTick):
				in.Type = events.TypeTick
			default:
				return nil, false
			}
		case 2, 3, 5:
			v, ok := s.str()
			if !ok {
				return nil, false
			}
			switch f {
			case 2:
				in.ID = string(v)
			case 3:
				in.Device = string(v)
			case 5:
				in.Actor = string(v)
			}
		case 4:
			start := s.i
			if _, ok := s.str(); !ok {
				return nil, false
			}
			// The parser encoding/json uses for a time.Time.
			if err := in.At.UnmarshalJSON(s.b[start:s.i]); err != nil {
				return nil, false
			}
		case 6:
			if in.Type != events.TypeHeartbeat || s.i >= len(s.b) || s.b[s.i] != '{' || !s.skip() {
				return nil, false
			}
			in.Heartbeat = emptyHeartbeat
		}
	}
	if s.i != len(s.b) || in.V < 1 || in.V > events.Version || in.At.IsZero() {
		return nil, false
	}
	switch in.Type {
	case events.TypeHeartbeat:
		if in.Device == "" {
			return nil, false
		}
		if in.Heartbeat == nil {
			in.Heartbeat = emptyHeartbeat
		}
	case events.TypeTick:
	default:
		return nil, false
	}
	return &in, true
}
