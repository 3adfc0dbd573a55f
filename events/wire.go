package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// This file is the input envelope's codec: the one encoder ([EncodeInput],
// [AppendInput]) and the one decoder ([ScanInput], [DecodeInput]) of the
// wire format. Both have a fast path for the events that make up nearly
// all of the input stream, heartbeats and ticks, that writes or reads the
// bytes by hand instead of through encoding/json's reflection (a fifth of
// the worker's CPU and the projector's largest cost after Postgres, before
// it existed; docs/performance.md). The fast paths take only what they are
// sure encoding/json writes or reads the same way and hand everything else
// to encoding/json, which stays the definition of the format (the golden
// files under testdata/ pin it). TestWireEquivalence and FuzzInput check
// that the two agree.

// checkVersion is the one version check of every decoder: versions
// 1..[Version] are read, anything else is refused with
// [ErrUnsupportedVersion].
func checkVersion(v int) error {
	if v < 1 || v > Version {
		return fmt.Errorf("%w: %d", ErrUnsupportedVersion, v)
	}
	return nil
}

// EncodeInput marshals an input envelope as encoding/json does, setting V
// to [Version] when zero. Heartbeats are appended by hand (same bytes, no
// reflection, one allocation). Errors are encoding/json's (a time outside
// years 0–9999, metrics that are not valid JSON).
func EncodeInput(e *Input) ([]byte, error) {
	n := 240 + len(e.ID) + len(e.Device) + len(e.Actor)
	if e.Heartbeat != nil {
		n += len(e.Heartbeat.Metrics) + len(e.Heartbeat.Via)
	}
	return AppendInput(make([]byte, 0, n), e)
}

// AppendInput appends the encoding of e ([EncodeInput]'s bytes) to b and
// returns the extended slice; on error b is returned unchanged.
func AppendInput(b []byte, e *Input) ([]byte, error) {
	if e.V == 0 {
		e.V = Version
	}
	if out, ok := appendHeartbeat(b, e); ok {
		return out, nil
	}
	j, err := json.Marshal(e)
	if err != nil {
		return b, err
	}
	return append(b, j...), nil
}

// plainString reports whether encoding/json writes s as is between quotes:
// printable ASCII without ", \, <, > and & (encoding/json escapes the last
// three too).
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// plainRaw reports whether encoding/json writes the raw JSON b unchanged:
// compact (no white space outside strings), no <, > or & (escaped inside
// strings) and no U+2028/U+2029 (first byte 0xE2: conservatively, any
// such byte). Validity is checked by the caller.
func plainRaw(b []byte) bool {
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

// appendTime appends t as time.Time.MarshalJSON does; ok is false when
// MarshalJSON would fail (a year outside 0–9999, an odd zone offset).
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	out, err := t.AppendText(append(b, '"')) // MarshalJSON is this, quoted
	if err != nil {
		return b, false
	}
	return append(out, '"'), true
}

func appendString(b []byte, key, s string) []byte {
	b = append(b, key...)
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendHeartbeat is the fast path of AppendInput; ok false leaves b's
// content as it was (the caller falls back to encoding/json).
func appendHeartbeat(b []byte, e *Input) (_ []byte, ok bool) {
	hb := e.Heartbeat
	if e.Type != TypeHeartbeat || hb == nil || e.Ping != nil || e.Registered != nil || e.RemoteControl != nil || e.Hold != nil ||
		e.V < 1 || e.V > 9 || !plainString(e.ID) || !plainString(e.Device) || !plainString(e.Actor) || !plainString(hb.Via) ||
		(len(hb.Metrics) > 0 && (!plainRaw(hb.Metrics) || !validValue(hb.Metrics))) {
		return b, false
	}
	start := len(b)
	b = append(b, `{"v":`...)
	b = append(b, byte('0'+e.V))
	b = appendString(b, `,"type":`, string(TypeHeartbeat))
	b = appendString(b, `,"id":`, e.ID)
	if e.Device != "" {
		b = appendString(b, `,"device":`, e.Device)
	}
	b = append(b, `,"at":`...)
	if b, ok = appendTime(b, e.At); !ok {
		return b[:start], false
	}
	if e.Actor != "" {
		b = appendString(b, `,"actor":`, e.Actor)
	}
	b = append(b, `,"heartbeat":{`...)
	sep := ""
	if hb.DeviceTime != nil {
		b = append(b, `"device_time":`...)
		if b, ok = appendTime(b, *hb.DeviceTime); !ok {
			return b[:start], false
		}
		sep = ","
	}
	if len(hb.Metrics) > 0 {
		b = append(b, sep...)
		b = append(b, `"metrics":`...)
		b = append(b, hb.Metrics...)
		sep = ","
	}
	if hb.Via != "" {
		b = append(b, sep...)
		b = appendString(b, `"via":`, hb.Via)
	}
	return append(b, "}}"...), true
}

// Fields selects which fields of a heartbeat's payload [ScanInput] must
// decode. The header (v, type, id, device, at, actor) and the payloads of
// the other types are always decoded. It is a bit set.
type Fields uint8

// The field masks.
const (
	// FieldsHeader decodes no payload field: a heartbeat's payload is
	// checked as [DecodeInput] checks it but not kept (Heartbeat is the
	// shared empty [Heartbeat], which the caller must not modify). The
	// partition worker reads no more.
	FieldsHeader Fields = 0
	// FieldsMetrics adds a heartbeat's metrics, verbatim (a copy): what
	// the liveness projection reads.
	FieldsMetrics Fields = 1
	// FieldsDeviceTime adds a heartbeat's device time.
	FieldsDeviceTime Fields = 2
	// FieldsVia adds a heartbeat's gateway.
	FieldsVia Fields = 4
	// FieldsAll decodes everything, as [DecodeInput] does.
	FieldsAll = FieldsMetrics | FieldsDeviceTime | FieldsVia
)

// emptyHeartbeat is the payload of heartbeats scanned without their
// payload fields (DecodeInput guarantees a non-nil one).
var emptyHeartbeat = &Heartbeat{}

// DecodeInput unmarshals and checks an input envelope: [ScanInput] with
// [FieldsAll]. Errors wrap [ErrMalformed] or [ErrUnsupportedVersion].
func DecodeInput(b []byte) (*Input, error) {
	return ScanInput(b, FieldsAll)
}

// ScanInput decodes and checks an input envelope as encoding/json does,
// accepting and refusing exactly the same inputs, with the same errors.
// The header and the fields selected by mask are equal to encoding/json's;
// fields outside the mask are either equal too or left zero (for a
// heartbeat's payload without any of its fields: the shared empty
// Heartbeat). Heartbeats and ticks in the form [EncodeInput] writes are
// read by hand (no reflection; two or three allocations); anything else
// (another type, white space, an escape in a string, an unknown or
// repeated key …) goes through encoding/json. Errors wrap [ErrMalformed]
// or [ErrUnsupportedVersion].
func ScanInput(b []byte, mask Fields) (*Input, error) {
	if in, ok := scanFast(b, mask); ok {
		return in, nil
	}
	return decodeJSON(b)
}

// decodeJSON is the definition of the decoder, through encoding/json.
func decodeJSON(b []byte) (*Input, error) {
	var e Input
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := checkVersion(e.V); err != nil {
		return nil, err
	}
	if err := checkInput(&e); err != nil {
		return nil, err
	}
	return &e, nil
}

// checkInput checks what each type requires and fills in the payloads a
// type may omit.
func checkInput(e *Input) error {
	var missing string
	switch e.Type {
	case TypeHeartbeat:
		if e.Heartbeat == nil {
			e.Heartbeat = &Heartbeat{}
		}
	case TypePingResult:
		if e.Ping == nil {
			missing = "ping"
		}
	case TypeDeviceRegistered:
		if e.Registered == nil {
			e.Registered = &Registered{}
		}
	case TypeRemoteControlChanged:
		if e.RemoteControl == nil {
			missing = "remote_control"
		}
	case TypeOutageHoldStarted, TypeOutageHoldEnded:
		if e.Hold == nil {
			missing = "hold"
		}
	case TypeTick, TypeDeviceDecommissioned, TypeReconnectRequested, TypeReconnectDelivered:
	default:
		return fmt.Errorf("%w: unknown type %q", ErrMalformed, e.Type)
	}
	if missing != "" {
		return fmt.Errorf("%w: %s event without %q", ErrMalformed, e.Type, missing)
	}
	if e.Type != TypeTick && !e.Type.IsHold() && e.Device == "" {
		return fmt.Errorf("%w: %s event without device", ErrMalformed, e.Type)
	}
	if e.At.IsZero() {
		return fmt.Errorf("%w: %s event without time", ErrMalformed, e.Type)
	}
	return nil
}

// scanBox holds a scanned event and its payload in one allocation.
type scanBox struct {
	in Input
	hb Heartbeat
	dt time.Time
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string without escapes, of valid UTF-8 (encoding/json would
// replace invalid bytes), returning its content's bounds.
func (s *scanner) str() (from, to int, ok bool) {
	if !s.eat('"') {
		return 0, 0, false
	}
	from, ascii := s.i, true
	for i := s.i; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			if !ascii && !utf8.Valid(s.b[from:i]) {
				return 0, 0, false
			}
			s.i = i + 1
			return from, i, true
		case c < 0x20 || c == '\\':
			return 0, 0, false // an escape, or invalid JSON
		case c >= 0x80:
			ascii = false
		}
	}
	return 0, 0, false
}

// key reads a key and its colon; it must be order[f] for some f >= *next
// (the encoder's order, each key once), and *next moves past it.
//
// The key is compared raw: bytes that equal one of the (plain ASCII) keys
// cannot hold an escape, so the quote that ends them ends the key.
func (s *scanner) key(order []string, next *int) (int, bool) {
	if !s.eat('"') {
		return 0, false
	}
	j := bytes.IndexByte(s.b[s.i:], '"')
	if j < 0 {
		return 0, false
	}
	k := s.b[s.i : s.i+j]
	s.i += j + 1
	if !s.eat(':') {
		return 0, false
	}
	for f := *next; f < len(order); f++ {
		if order[f] == string(k) {
			*next = f + 1
			return f, true
		}
	}
	return 0, false
}

// time reads a quoted time as time.Time.UnmarshalJSON does.
func (s *scanner) time(t *time.Time) bool {
	start := s.i
	if _, _, ok := s.str(); !ok {
		return false
	}
	return t.UnmarshalJSON(s.b[start:s.i]) == nil
}

var (
	inputKeys     = [...]string{"v", "type", "id", "device", "at", "actor", "heartbeat"}
	heartbeatKeys = [...]string{"device_time", "metrics", "via"}
)

// scanFast is ScanInput's fast path: heartbeats and ticks in the form
// EncodeInput writes (its keys in its order, each at most once, no white
// space, strings without escapes). ok false means "not sure": the caller
// decodes with encoding/json.
func scanFast(b []byte, mask Fields) (*Input, bool) {
	s := scanner{b: b}
	if !s.eat('{') {
		return nil, false
	}
	// FieldsHeader keeps no payload: the event alone is allocated.
	var box *scanBox
	var in *Input
	if mask == FieldsHeader {
		in = new(Input)
	} else {
		box = new(scanBox)
		in = &box.in
	}
	var id, dev, actor [2]int
	hasDev, hasActor := false, false
	next := 0
	for first := true; !s.eat('}'); first = false {
		if !first && !s.eat(',') {
			return nil, false
		}
		f, ok := s.key(inputKeys[:], &next)
		if !ok {
			return nil, false
		}
		switch f {
		case 0: // v: one digit, as EncodeInput writes it
			if s.i >= len(s.b) || s.b[s.i] < '0' || s.b[s.i] > '9' {
				return nil, false
			}
			in.V = int(s.b[s.i] - '0')
			s.i++
		case 1:
			from, to, ok := s.str()
			if !ok {
				return nil, false
			}
			switch string(s.b[from:to]) {
			case string(TypeHeartbeat):
				in.Type = TypeHeartbeat
			case string(TypeTick):
				in.Type = TypeTick
			default:
				return nil, false
			}
		case 2, 3, 5:
			from, to, ok := s.str()
			if !ok {
				return nil, false
			}
			switch f {
			case 2:
				id = [2]int{from, to}
			case 3:
				dev, hasDev = [2]int{from, to}, true
			default:
				actor, hasActor = [2]int{from, to}, true
			}
		case 4:
			if !s.time(&in.At) {
				return nil, false
			}
		case 6:
			if in.Type != TypeHeartbeat || !s.heartbeat(box, mask) {
				return nil, false
			}
		}
	}
	if s.i != len(s.b) || checkVersion(in.V) != nil || in.At.IsZero() {
		return nil, false
	}
	switch in.Type {
	case TypeHeartbeat:
		if !hasDev || dev[0] == dev[1] {
			return nil, false
		}
		if box == nil {
			in.Heartbeat = emptyHeartbeat
		} else {
			in.Heartbeat = &box.hb
		}
	case TypeTick:
	default:
		return nil, false
	}
	// One string for id and device (id comes first, as EncodeInput writes
	// it): both are substrings of it.
	if hasDev {
		span := string(b[id[0]:dev[1]])
		in.ID, in.Device = span[:id[1]-id[0]], span[dev[0]-id[0]:]
	} else {
		in.ID = string(b[id[0]:id[1]])
	}
	if hasActor && actor[0] != actor[1] {
		in.Actor = string(b[actor[0]:actor[1]])
	}
	return in, true
}

// heartbeat reads the heartbeat payload (device_time, metrics, via, in
// that order, each optional), checking it whole and keeping in box what
// mask selects (nothing when box is nil).
func (s *scanner) heartbeat(box *scanBox, mask Fields) bool {
	keep := func(f Fields) bool { return box != nil && mask&f != 0 }
	if !s.eat('{') {
		return false
	}
	next := 0
	for first := true; !s.eat('}'); first = false {
		if !first && !s.eat(',') {
			return false
		}
		f, ok := s.key(heartbeatKeys[:], &next)
		if !ok {
			return false
		}
		switch f {
		case 0:
			var dt time.Time
			if !s.time(&dt) {
				return false
			}
			if keep(FieldsDeviceTime) {
				box.dt = dt
				box.hb.DeviceTime = &box.dt
			}
		case 1:
			start := s.i
			if s.i >= len(s.b) || s.b[s.i] != '{' || !s.value(0) {
				return false
			}
			if keep(FieldsMetrics) {
				box.hb.Metrics = bytes.Clone(s.b[start:s.i])
			}
		case 2:
			from, to, ok := s.str()
			if !ok {
				return false
			}
			if keep(FieldsVia) && from != to {
				box.hb.Via = string(s.b[from:to])
			}
		}
	}
	return true
}

// maxDepth bounds the nesting the fast path follows (encoding/json's
// limit is far higher; deeper values go to it).
const maxDepth = 64

// validValue reports whether b is exactly one valid JSON value without
// white space (what the fast paths accept; b with white space is refused
// even when valid).
func validValue(b []byte) bool {
	s := scanner{b: b}
	return s.value(0) && s.i == len(b)
}

// value reads one JSON value without white space, checking it as
// encoding/json's scanner does (strings: no control characters, valid
// escapes; numbers: JSON's grammar). ok false may also mean "not sure"
// (too deep).
func (s *scanner) value(depth int) bool {
	if s.i >= len(s.b) || depth > maxDepth {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		s.i++
		if s.eat('}') {
			return true
		}
		for {
			if s.i >= len(s.b) || s.b[s.i] != '"' || !s.jsonString() || !s.eat(':') || !s.value(depth+1) {
				return false
			}
			if s.eat('}') {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	case c == '[':
		s.i++
		if s.eat(']') {
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			if s.eat(']') {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	case c == '"':
		return s.jsonString()
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return false
}

func (s *scanner) literal(l string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(l)) {
		return false
	}
	s.i += len(l)
	return true
}

// jsonString reads a string with escapes as JSON defines it.
func (s *scanner) jsonString() bool {
	s.i++ // the opening quote
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+5 > len(s.b) {
					return false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if (h < '0' || h > '9') && (h < 'a' || h > 'f') && (h < 'A' || h > 'F') {
						return false
					}
				}
				s.i += 5
			default:
				return false
			}
		default:
			s.i++
		}
	}
	return false
}

func (s *scanner) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

// number reads a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	s.eat('-')
	if s.eat('0') {
		// no further integer digits
	} else if s.digits() == 0 {
		return false
	}
	if s.eat('.') && s.digits() == 0 {
		return false
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if s.digits() == 0 {
			return false
		}
	}
	return true
}
