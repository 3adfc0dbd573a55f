package bridge

import (
	"net/http"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// PatternRekey rotates a device's token (admin).
const PatternRekey = "POST /v1/devices/{id}/token"

// handleRekey serves POST /v1/devices/{id}/token (admin, no body) → 200
// {"id", "token"}: a new device token, shown once; the old one fails from
// this answer on (on other bridge instances within their KV watch's delivery
// latency), and only this device's cached entry is dropped. 404 for an
// unknown or decommissioned device.
func (b *Bridge) handleRekey(w http.ResponseWriter, r *http.Request) {
	id, ok := validID(w, r)
	if !ok {
		return
	}
	token, err := b.reg.Rekey(r.Context(), id)
	if err != nil {
		b.writeAdminError(w, r, id, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"id": id, "token": token})
}
