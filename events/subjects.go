package events

import (
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Stream, bucket and subject names. Every subject devstatus publishes is built
// by the functions below; a device id never appears raw in a subject.
const (
	// InputStream holds heartbeats, ping results, ticks, admin events and
	// outage-hold events, subjects "devstatus.in.<partition>.d.<token>",
	// "devstatus.in.<partition>.tick" and "devstatus.in.<partition>.hold".
	InputStream = "DEVSTATUS_IN"
	// TransitionStream holds status changes, subjects "devstatus.tr.<partition>.<token>".
	TransitionStream = "DEVSTATUS_TR"

	// ProbeStream is a work queue of probe requests for the ping service,
	// subjects "devstatus.probe.<partition>.<token>", at most one pending
	// request per device (the newest).
	ProbeStream = "DEVSTATUS_PROBES"

	InputSubjects      = "devstatus.in.>"
	TransitionSubjects = "devstatus.tr.>"
	ProbeSubjects      = "devstatus.probe.>"

	// DevicesBucket is the JetStream KV bucket of device registrations
	// (key: [SubjectToken] of the id).
	DevicesBucket = "devstatus_devices"
	// LeasesBucket holds partition ownership leases (key "p<n>").
	LeasesBucket = "devstatus_leases"
	// SnapshotsBucket is the object store of partition worker snapshots.
	SnapshotsBucket = "devstatus_snapshots"

	// MetaPartitions is the input stream's metadata key that records the
	// partition count fixed at creation.
	MetaPartitions = "devstatus_partitions"
)

// MaxDeviceIDLen is the longest device id in bytes.
const MaxDeviceIDLen = 128

// Device id validation errors (wrapped in *[DeviceIDError]).
var (
	ErrDeviceIDEmpty   = errors.New("device id is empty")
	ErrDeviceIDTooLong = errors.New("device id is longer than 128 bytes")
	ErrDeviceIDUTF8    = errors.New("device id is not valid UTF-8")
	ErrDeviceIDControl = errors.New("device id contains a control or non-printable character")
)

// DeviceIDError reports why an id was refused; it unwraps to one of the
// ErrDeviceID… sentinels.
type DeviceIDError struct {
	// Offset is the byte offset of the offending character (-1 when not applicable).
	Offset int
	Err    error
}

func (e *DeviceIDError) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("%v (at byte %d)", e.Err, e.Offset)
	}
	return e.Err.Error()
}

func (e *DeviceIDError) Unwrap() error { return e.Err }

// ValidateDeviceID checks the design's rule: 1–128 bytes of printable UTF-8
// (letters, marks, numbers, punctuation, symbols and the ASCII space; no
// control characters, no NUL, no invalid UTF-8). It returns a *[DeviceIDError]
// or nil.
func ValidateDeviceID(id string) error {
	if id == "" {
		return &DeviceIDError{Offset: -1, Err: ErrDeviceIDEmpty}
	}
	if len(id) > MaxDeviceIDLen {
		return &DeviceIDError{Offset: -1, Err: ErrDeviceIDTooLong}
	}
	for i, r := range id {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(id[i:]); size <= 1 {
				return &DeviceIDError{Offset: i, Err: ErrDeviceIDUTF8}
			}
		}
		if r != ' ' && !unicode.IsPrint(r) {
			return &DeviceIDError{Offset: i, Err: ErrDeviceIDControl}
		}
	}
	return nil
}

// SubjectToken encodes a device id into one NATS subject token: unpadded
// base64url (RFC 4648 §5), so it only holds [A-Za-z0-9_-] and never '.', '*',
// '>' or whitespace. It is injective: distinct ids give distinct tokens.
func SubjectToken(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(id))
}

// DeviceIDFromToken reverses [SubjectToken].
func DeviceIDFromToken(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("events: bad device token %q: %w", tok, err)
	}
	return string(b), nil
}

// Partition returns the partition of a device: FNV-1a (32 bit) of its subject
// token modulo n — the same function as nats-server's subject-mapping
// partition() (server/subject_transform.go), so a stream transform and this
// code agree. n must be > 0.
func Partition(id string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(SubjectToken(id)))
	return int(h.Sum32() % uint32(n))
}

// DeviceSubject is the input subject of a device event.
func DeviceSubject(id string, partitions int) string {
	return "devstatus.in." + strconv.Itoa(Partition(id, partitions)) + ".d." + SubjectToken(id)
}

// TickSubject is the input subject of partition p's clock ticks.
func TickSubject(p int) string {
	return "devstatus.in." + strconv.Itoa(p) + ".tick"
}

// HoldSubject is the input subject of partition p's outage-hold events.
func HoldSubject(p int) string {
	return "devstatus.in." + strconv.Itoa(p) + ".hold"
}

// PartitionFilter is the subject filter of partition p on the input stream.
func PartitionFilter(p int) string {
	return "devstatus.in." + strconv.Itoa(p) + ".>"
}

// TransitionSubject is the transitions-stream subject of a device.
func TransitionSubject(id string, partitions int) string {
	return "devstatus.tr." + strconv.Itoa(Partition(id, partitions)) + "." + SubjectToken(id)
}

// ProbeSubject is the probe-request subject of a device.
func ProbeSubject(id string, partitions int) string {
	return "devstatus.probe." + strconv.Itoa(Partition(id, partitions)) + "." + SubjectToken(id)
}

// TransitionPartitionFilter is the transitions-stream filter of partition p.
func TransitionPartitionFilter(p int) string {
	return "devstatus.tr." + strconv.Itoa(p) + ".*"
}

// ParseInputSubject returns the partition of an input subject and, for device
// events, the device id (empty for ticks and outage-hold events).
func ParseInputSubject(subj string) (partition int, device string, err error) {
	parts := strings.Split(subj, ".")
	if len(parts) < 4 || parts[0] != "devstatus" || parts[1] != "in" {
		return 0, "", fmt.Errorf("events: not an input subject: %q", subj)
	}
	p, err := strconv.Atoi(parts[2])
	if err != nil {
		return 0, "", fmt.Errorf("events: bad partition in %q", subj)
	}
	switch {
	case len(parts) == 4 && (parts[3] == "tick" || parts[3] == "hold"):
		return p, "", nil
	case len(parts) == 5 && parts[3] == "d":
		id, err := DeviceIDFromToken(parts[4])
		return p, id, err
	}
	return 0, "", fmt.Errorf("events: not an input subject: %q", subj)
}
