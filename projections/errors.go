package projections

import (
	"errors"
	"fmt"
)

// Sentinel errors. Functions wrap them with %w and context; branch with
// errors.Is.
var (
	// ErrInvalidConfig wraps every configuration error of [New] and [Rebuild].
	ErrInvalidConfig = errors.New("projections: invalid config")
	// ErrNotFound: the device does not exist or is decommissioned.
	ErrNotFound = errors.New("projections: device not found")
	// ErrInvalidFilter: a list or history filter is out of range (unknown
	// status, negative duration, limit outside 1..MaxLimit, from after to).
	ErrInvalidFilter = errors.New("projections: invalid filter")
	// ErrInvalidCursor: a pagination cursor was not produced by [Store.List].
	ErrInvalidCursor = errors.New("projections: invalid cursor")
	// ErrNotReady is wrapped by [Projector.Ready] while a projection cannot
	// make progress (starting, database failing, bus unreachable, stalled).
	ErrNotReady = errors.New("projections: not ready")
	// ErrStreamBehindCheckpoint: the stream's last sequence is lower than the
	// stored checkpoint, i.e. the stream was recreated while Postgres kept the
	// old projection. The projector keeps waiting (it never re-applies a
	// different history over the old one); run a rebuild.
	ErrStreamBehindCheckpoint = errors.New("projections: stream is behind the checkpoint (stream recreated?); run a rebuild")
)

// NotReadyError says which projection is not ready and why; it unwraps to
// [ErrNotReady] and to the cause.
type NotReadyError struct {
	Projection string
	Reason     string
	Err        error
}

func (e *NotReadyError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("projections: %s not ready: %s: %v", e.Projection, e.Reason, e.Err)
	}
	return fmt.Sprintf("projections: %s not ready: %s", e.Projection, e.Reason)
}

// Unwrap returns ErrNotReady and the cause.
func (e *NotReadyError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrNotReady, e.Err}
	}
	return []error{ErrNotReady}
}
