package bridge

// Probe URLs: set at registration (POST /v1/devices {"probe_url"}), by
// PATCH /v1/devices/{id} {"probe_url"}, or reported by the device in its
// heartbeat {"probe_url"}; always checked against Config.ProbePolicy, a
// refused URL answered 400 with code "forbidden_probe_target" (the policy
// refuses the scheme or the address) or "invalid_probe_url", and nothing
// written or published. The registry stores the normalised URL; the ping
// service checks it again, after DNS resolution, when it probes.

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/probepolicy"
	"github.com/devstatus/devstatus/pkg/registry"
)

// Error codes of refused probe URLs (HTTP 400).
const (
	CodeForbiddenProbeTarget = "forbidden_probe_target"
	CodeInvalidProbeURL      = "invalid_probe_url"
)

// checkProbeURL checks a probe URL against the policy and returns its
// normalised form; "" (clearing the URL) is always allowed. Errors are
// *requestError (400).
func (b *Bridge) checkProbeURL(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	u, err := b.cfg.ProbePolicy.CheckURL(raw)
	switch {
	case err == nil:
		return u.String(), nil
	case errors.Is(err, probepolicy.ErrForbidden):
		return "", &requestError{code: CodeForbiddenProbeTarget, msg: "probe_url: " + err.Error()}
	default:
		return "", &requestError{code: CodeInvalidProbeURL, msg: "probe_url: " + err.Error()}
	}
}

// parseProbeURL decodes a probe_url field: absent or null gives nil (no
// change), a string its value ("" clears). Errors are *requestError (400).
func parseProbeURL(raw json.RawMessage) (*string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, &requestError{code: CodeInvalidProbeURL, msg: "probe_url must be a string (an http or https URL, or \"\" for none)"}
	}
	return &s, nil
}

// probeURLField decodes and checks the probe_url field of an admin request,
// answering 400 itself when it is refused.
func (b *Bridge) probeURLField(w http.ResponseWriter, raw json.RawMessage) (string, bool) {
	p, err := parseProbeURL(raw)
	if err == nil && p != nil {
		var u string
		if u, err = b.checkProbeURL(*p); err == nil {
			return u, true
		}
	}
	if err != nil {
		writeRequestError(w, err)
		return "", false
	}
	return "", true
}

// checkHeartbeatProbeURL checks (and normalises in place) the probe_url a
// heartbeat reported, answering 400 when the policy refuses it: the
// heartbeat is then not recorded, so that a misconfigured device shows up at
// once instead of silently never being probed.
func (b *Bridge) checkHeartbeatProbeURL(w http.ResponseWriter, hb *heartbeatBody) bool {
	if hb.ProbeURL == nil {
		return true
	}
	u, err := b.checkProbeURL(*hb.ProbeURL)
	if err != nil {
		writeRequestError(w, err)
		return false
	}
	hb.ProbeURL = &u
	return true
}

// changedProbeURL returns the probe URL a heartbeat reported (already
// checked and normalised) when it differs from the registered one, read
// from the cached entry; nil when there is nothing to store. An unchanged
// URL therefore costs no registry write; a changed one is stored by the
// heartbeat's one registry write (settleRecord, reconnect.go). A failed
// write is logged and not reported to the device: the heartbeat is
// recorded, and the next one tries again.
func changedProbeURL(ent registry.Entry, probeURL *string) *string {
	if probeURL == nil || *probeURL == ent.ProbeURL {
		return nil
	}
	return probeURL
}

// setProbeURL sets d's probe URL inside a compare-and-swap and reports
// whether it changed (a decommissioned device keeps its record).
func setProbeURL(d *registry.Device, u string) bool {
	if d.Decommissioned || d.ProbeURL == u {
		return false
	}
	d.ProbeURL = u
	return true
}

// handlePatchProbeURL serves PATCH /v1/devices/{id} when the body has
// "probe_url" (and optionally "remote_control_enabled"): → 200 {"id",
// "remote_control_enabled", "probe_url"}.
func (b *Bridge) handlePatchProbeURL(w http.ResponseWriter, r *http.Request, id string, f map[string]json.RawMessage) {
	probeURL, ok := b.probeURLField(w, f["probe_url"])
	if !ok {
		return
	}
	var enabled *bool
	if raw, has := f["remote_control_enabled"]; has {
		var v bool
		if isNull(raw) || json.Unmarshal(raw, &v) != nil {
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, "remote_control_enabled must be a boolean")
			return
		}
		enabled = &v
	}
	d, err := b.reg.SetProbeURL(r.Context(), id, probeURL)
	if err == nil && enabled != nil {
		d, err = b.reg.SetRemoteControl(r.Context(), id, *enabled)
	}
	if err != nil {
		b.writeAdminError(w, r, id, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct {
		ID                   string `json:"id"`
		RemoteControlEnabled bool   `json:"remote_control_enabled"`
		ProbeURL             string `json:"probe_url"`
	}{d.ID, d.RemoteControlEnabled, d.ProbeURL})
}
