package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/devstatus/devstatus/events"
)

// MaxProbeURLLen bounds a stored probe URL, in bytes (the probe policy's
// limit, probepolicy.MaxURLLen).
const MaxProbeURLLen = 2048

// ErrInvalidProbeURL is returned for a probe URL longer than
// [MaxProbeURLLen]. The registry
// does not apply the probe policy: callers (the bridge) check URLs with
// probepolicy.Policy.CheckURL and store the normalised form.
var ErrInvalidProbeURL = errors.New("registry: invalid probe URL")

// RegisterOption sets an optional field of a device at [Registry.Register].
type RegisterOption func(*Device)

// WithProbeURL registers the device with a probe URL (already checked
// against the probe policy by the caller; "" means none).
func WithProbeURL(u string) RegisterOption {
	return func(d *Device) { d.ProbeURL = u }
}

// SetProbeURL sets (or, with "", clears) the device's probe URL. Setting the
// URL it already has writes nothing, so the bridge can call it whenever a
// heartbeat reports a URL that differs from its cached entry. The change is
// a revision-checked KV write; no input event is published (probe URLs are
// read by the ping service from the registry, not by the state machine).
// Errors: *[InvalidIDError], [ErrInvalidProbeURL], [ErrNotFound],
// [ErrDecommissioned], [ErrUnavailable].
func (r *Registry) SetProbeURL(ctx context.Context, id, probeURL string) (Device, error) {
	if len(probeURL) > MaxProbeURLLen {
		return Device{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidProbeURL, MaxProbeURLLen)
	}
	return r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		if d.Decommissioned {
			return nil, false, ErrDecommissioned
		}
		if d.ProbeURL == probeURL {
			return nil, false, nil
		}
		d.ProbeURL = probeURL
		return nil, true, nil
	})
}
