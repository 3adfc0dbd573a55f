package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// MaxMetricKeyLen is the longest metric key in bytes.
const MaxMetricKeyLen = 128

// requestError is a refusal of a request body: always HTTP 400.
type requestError struct {
	code, msg string
}

func (e *requestError) Error() string { return e.msg }

func malformed(format string, a ...any) error {
	return &requestError{code: httpx.CodeMalformedJSON, msg: fmt.Sprintf(format, a...)}
}

func invalidField(format string, a ...any) error {
	return &requestError{code: httpx.CodeUnprocessableEntity, msg: fmt.Sprintf(format, a...)}
}

func badRequest(format string, a ...any) error {
	return &requestError{code: httpx.CodeBadRequest, msg: fmt.Sprintf(format, a...)}
}

// checkText refuses what JSON decoding would silently accept but the rest of
// the pipeline cannot store: invalid UTF-8 (encoding/json would replace it
// with U+FFFD), the escape \u0000 (Postgres refuses NUL in text and jsonb)
// and unpaired UTF-16 surrogate escapes (Postgres jsonb refuses them). A raw
// NUL or other control byte is invalid JSON anyway.
func checkText(b []byte) error {
	if !utf8.Valid(b) {
		return malformed("body is not valid UTF-8")
	}
	if bytes.IndexByte(b, 0) >= 0 {
		return malformed("body contains a NUL byte")
	}
	inStr := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inStr {
			if c == '"' {
				inStr = true
			}
			continue
		}
		switch c {
		case '"':
			inStr = false
		case '\\':
			if i+1 >= len(b) {
				return nil // unterminated: the JSON decoder reports it
			}
			i++
			if b[i] != 'u' {
				continue
			}
			r, ok := hex4(b, i+1)
			if !ok {
				return nil // invalid escape: the JSON decoder reports it
			}
			i += 4
			switch {
			case r == 0:
				return malformed(`strings must not contain NUL (\u0000)`)
			case r >= 0xDC00 && r <= 0xDFFF:
				return malformed("strings must not contain an unpaired UTF-16 surrogate")
			case r >= 0xD800 && r <= 0xDBFF:
				if i+2 < len(b) && b[i+1] == '\\' && b[i+2] == 'u' {
					if lo, ok := hex4(b, i+3); ok && lo >= 0xDC00 && lo <= 0xDFFF {
						i += 6
						continue
					}
				}
				return malformed("strings must not contain an unpaired UTF-16 surrogate")
			}
		}
	}
	return nil
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		default:
			return 0, false
		}
	}
	return r, true
}

// parseObject parses body as exactly one JSON object whose keys are among
// allowed (matched exactly, case-sensitively), each at most once, with
// nothing but white space after it. It returns the raw value of each key
// present. Unknown keys, duplicate keys, a non-object and trailing data are
// refused (400).
func parseObject(body []byte, allowed ...string) (map[string]json.RawMessage, error) {
	f, _, err := parseObjectKeys(body, false, allowed)
	return f, err
}

// parseObjectLenient is parseObject for the bodies devices send (a
// heartbeat, a gateway batch item): a key not among allowed is skipped (its
// value must still be valid JSON) and counted in unknown, so that firmware
// newer than the server can add fields. Keys match case-sensitively, so
// "Metrics" is an unknown key too. A known key twice is still refused.
func parseObjectLenient(body []byte, allowed ...string) (f map[string]json.RawMessage, unknown int, err error) {
	return parseObjectKeys(body, true, allowed)
}

func parseObjectKeys(body []byte, lenient bool, allowed []string) (map[string]json.RawMessage, int, error) {
	if err := checkText(body); err != nil {
		return nil, 0, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return nil, 0, malformed("body is not JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, 0, malformed("body must be a JSON object")
	}
	out := make(map[string]json.RawMessage, len(allowed))
	unknown := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, 0, malformed("malformed JSON: %v", err)
		}
		key, _ := tok.(string)
		known := false
		for _, a := range allowed {
			if key == a {
				known = true
				break
			}
		}
		if !known && lenient {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, 0, malformed("malformed JSON: %v", err)
			}
			unknown++
			continue
		}
		if !known {
			return nil, 0, badRequest("unknown field %q", key)
		}
		if _, dup := out[key]; dup {
			return nil, 0, badRequest("field %q appears twice", key)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, 0, malformed("malformed JSON: %v", err)
		}
		out[key] = raw
	}
	if _, err := dec.Token(); err != nil {
		return nil, 0, malformed("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, 0, malformed("trailing data after the JSON object")
	}
	return out, unknown, nil
}

func isNull(raw json.RawMessage) bool { return raw == nil || string(raw) == "null" }

// parseTime decodes an RFC 3339 time field (null or absent: nil).
func parseTime(field string, raw json.RawMessage) (*time.Time, error) {
	if isNull(raw) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, invalidField("%s must be an RFC 3339 time string", field)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil, invalidField("%s must be an RFC 3339 time: %v", field, err)
	}
	t = t.UTC()
	return &t, nil
}

// heartbeatBody is a decoded heartbeat request.
type heartbeatBody struct {
	DeviceTime *time.Time
	Metrics    json.RawMessage // compact JSON object, or nil
	// ProbeURL is the device's probe URL as reported (nil: not reported,
	// "": clear it); the handler checks it against the probe policy.
	ProbeURL *string
	// UnknownFields is how many top-level fields the decoder does not know
	// (skipped; counted in devstatus_heartbeat_unknown_fields_total).
	UnknownFields int
}

// decodeHeartbeat decodes a heartbeat body:
//
//	{"device_time": "<RFC 3339>", "metrics": {"battery": 87, ...}}
//
// Both fields are optional; an empty (or all white space) body is a heartbeat
// without metrics. Unknown top-level fields are skipped and counted
// (UnknownFields), never refused, so that firmware newer than the server
// (one that sends a field this version does not know) is not turned away;
// their values must still be valid JSON. Names match case-sensitively:
// "Metrics" is an unknown field, skipped like any other. Unknown metric keys are kept
// verbatim.
// Metrics: a JSON object (or null) of at most maxMetrics keys, each key 1–128
// bytes, each value's JSON at most maxMetricBytes bytes, no duplicate keys,
// nesting at most MaxMetricDepth, numbers finite as 64-bit floats. Anywhere
// in the body: valid UTF-8, no NUL (raw or \u0000), no unpaired surrogate.
func decodeHeartbeat(body []byte, maxMetrics, maxMetricBytes int) (heartbeatBody, error) {
	if hb, ok := fastHeartbeatBody(body, maxMetrics, maxMetricBytes); ok {
		return hb, nil // the plain form, read in one pass (fastjson.go)
	}
	var hb heartbeatBody
	if len(bytes.TrimSpace(body)) == 0 {
		return hb, nil
	}
	f, unknown, err := parseObjectLenient(body, "device_time", "metrics", "probe_url")
	if err != nil {
		return hb, err
	}
	hb, err = decodeHeartbeatFields(f, maxMetrics, maxMetricBytes)
	hb.UnknownFields = unknown
	return hb, err
}

// decodeHeartbeatFields checks the fields of a heartbeat parsed by
// parseObject (decodeHeartbeat; a gateway batch item, see gateway.go).
func decodeHeartbeatFields(f map[string]json.RawMessage, maxMetrics, maxMetricBytes int) (heartbeatBody, error) {
	var hb heartbeatBody
	var err error
	if hb.DeviceTime, err = parseTime("device_time", f["device_time"]); err != nil {
		return hb, err
	}
	if hb.Metrics, err = checkMetrics(f["metrics"], maxMetrics, maxMetricBytes); err != nil {
		return hb, err
	}
	if hb.ProbeURL, err = parseProbeURL(f["probe_url"]); err != nil {
		return hb, err
	}
	return hb, nil
}

// checkMetrics validates the metrics object and returns it compacted.
func checkMetrics(raw json.RawMessage, maxMetrics, maxMetricBytes int) (json.RawMessage, error) {
	if isNull(raw) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, malformed("malformed metrics: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, invalidField("metrics must be a JSON object")
	}
	n := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, malformed("malformed metrics: %v", err)
		}
		key, _ := tok.(string)
		if key == "" || len(key) > MaxMetricKeyLen {
			return nil, invalidField("metric keys must be 1 to %d bytes", MaxMetricKeyLen)
		}
		if n++; n > maxMetrics {
			return nil, invalidField("more than %d metrics", maxMetrics)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, malformed("malformed metrics: %v", err)
		}
		if len(v) > maxMetricBytes {
			return nil, invalidField("metric %q is larger than %d bytes", key, maxMetricBytes)
		}
	}
	if err := checkValues(raw); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, malformed("malformed metrics: %v", err)
	}
	return buf.Bytes(), nil
}

// MaxMetricDepth bounds the nesting of arrays and objects inside metrics.
const MaxMetricDepth = 16

// checkValues walks every token of the metrics: nesting at most
// MaxMetricDepth deep, every number finite as a 64-bit float, and no object
// (the metrics object or one nested in a value) with two keys that are equal
// or differ only in case. The first two keep a value that JSON allows but
// Postgres jsonb refuses (1e999999 overflows numeric) or that costs deep
// recursion out of the pipeline; the last keeps a value whose meaning
// depends on the reader: jsonb keeps the last of two equal keys, and Go's
// encoding/json (like many decoders) matches keys case-insensitively, so
// {"battery": 80, "Battery": 5} would read as 80 or 5 depending on who reads
// it. Keys are compared by Unicode simple case folding (strings.EqualFold).
func checkValues(raw json.RawMessage) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	type frame struct {
		object  bool
		wantKey bool
		keys    map[string]struct{}
	}
	var stack []frame
	valueDone := func() { // a value ended: the enclosing object wants a key next
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return malformed("malformed metrics: %v", err)
		}
		if len(stack) > 0 && stack[len(stack)-1].object && stack[len(stack)-1].wantKey {
			if key, ok := tok.(string); ok {
				top := &stack[len(stack)-1]
				fk := foldKey(key)
				if _, dup := top.keys[fk]; dup {
					if len(stack) == 1 {
						return invalidField("metric %q appears twice (keys are compared ignoring case)", key)
					}
					return invalidField("key %q appears twice in a metric's object (keys are compared ignoring case)", key)
				}
				top.keys[fk] = struct{}{}
				top.wantKey = false
				continue
			}
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if len(stack) >= MaxMetricDepth+1 { // +1: the metrics object itself
					return invalidField("metrics are nested deeper than %d levels", MaxMetricDepth)
				}
				f := frame{object: v == '{', wantKey: v == '{'}
				if f.object {
					f.keys = make(map[string]struct{})
				}
				stack = append(stack, f)
			default:
				stack = stack[:len(stack)-1]
				valueDone()
			}
		case json.Number:
			if _, err := strconv.ParseFloat(string(v), 64); err != nil {
				return invalidField("metric number %.32s is out of range", v)
			}
			valueDone()
		default:
			valueDone()
		}
	}
}

// foldKey maps a key to a representative of its case-folding class, so that
// two keys are strings.EqualFold exactly when their foldKeys are equal for
// the cases that matter here (ASCII and the usual Unicode letters; the
// special folds K/k/U+212A KELVIN SIGN and s/S/U+017F LONG S included).
func foldKey(k string) string {
	return strings.ToLower(strings.ToUpper(k))
}

// pingBody is a decoded ping result request.
type pingBody struct {
	OK        bool
	RTTMs     int64
	CheckedAt *time.Time
	Error     string
}

// pingErrors are the failure classes a ping result may carry.
var pingErrors = map[string]bool{"timeout": true, "refused": true, "dns": true, "tls": true, "http_status": true, "other": true}

// decodePing decodes {"ok": bool, "rtt_ms": n, "checked_at": "<RFC 3339>",
// "error": "timeout"}: ok is required; rtt_ms is an integer >= 0 (default
// 0); checked_at defaults to the receive time; error is optional, one of
// timeout, refused, dns, tls, http_status, other.
func decodePing(body []byte) (pingBody, error) {
	var p pingBody
	f, err := parseObject(body, "ok", "rtt_ms", "checked_at", "error")
	if err != nil {
		return p, err
	}
	if isNull(f["ok"]) || json.Unmarshal(f["ok"], &p.OK) != nil {
		return p, invalidField("ok (boolean) is required")
	}
	if !isNull(f["rtt_ms"]) {
		if err := json.Unmarshal(f["rtt_ms"], &p.RTTMs); err != nil || p.RTTMs < 0 {
			return p, invalidField("rtt_ms must be an integer >= 0 (milliseconds)")
		}
	}
	if p.CheckedAt, err = parseTime("checked_at", f["checked_at"]); err != nil {
		return p, err
	}
	if !isNull(f["error"]) {
		if err := json.Unmarshal(f["error"], &p.Error); err != nil || !pingErrors[p.Error] {
			return p, invalidField("error must be one of timeout, refused, dns, tls, http_status, other")
		}
	}
	return p, nil
}
