package bridge

import (
	"errors"
	"net/http"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// Gateway administration routes (registry/gateway_admin.go does the work).
const (
	PatternGatewayList   = "GET /v1/gateways"
	PatternGatewayRekey  = "POST /v1/gateways/{id}/token"
	PatternGatewayDelete = "DELETE /v1/gateways/{id}"
)

// gatewayJSON is a gateway in GET /v1/gateways.
type gatewayJSON struct {
	ID           string    `json:"id"`
	RegisteredAt time.Time `json:"registered_at"`
}

// handleGatewayList serves GET /v1/gateways (viewer) → 200 {"gateways":
// [{"id", "registered_at"}]}, ordered by id; 503 when the registry is
// unavailable.
func (b *Bridge) handleGatewayList(w http.ResponseWriter, r *http.Request) {
	gs, err := b.reg.ListGateways(r.Context())
	if err != nil {
		b.registryFailure(w, r, "", err)
		return
	}
	out := make([]gatewayJSON, 0, len(gs))
	for _, g := range gs {
		out = append(out, gatewayJSON{ID: g.ID, RegisteredAt: g.RegisteredAt.UTC()})
	}
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteJSON(w, http.StatusOK, map[string][]gatewayJSON{"gateways": out})
}

// gatewayAdminID reads the path's gateway id; on failure it answers 400.
func gatewayAdminID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id, err := gatewayID(r)
	if err == nil {
		err = registry.ValidateGatewayID(id)
	}
	if err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error())
		return "", false
	}
	return id, true
}

func (b *Bridge) writeGatewayError(w http.ResponseWriter, r *http.Request, id string, err error) {
	switch {
	case errors.Is(err, registry.ErrInvalidGateway):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalidDeviceID, err.Error())
	case errors.Is(err, registry.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "unknown gateway")
	default:
		b.registryFailure(w, r, id, err)
	}
}

// handleGatewayRekey serves POST /v1/gateways/{id}/token (admin, no body) →
// 200 {"id", "token"}: a new gateway token, shown once; the old one is
// refused from then on. 404 for an unknown gateway.
func (b *Bridge) handleGatewayRekey(w http.ResponseWriter, r *http.Request) {
	id, ok := gatewayAdminID(w, r)
	if !ok {
		return
	}
	token, err := b.reg.RekeyGateway(r.Context(), id)
	if err != nil {
		b.writeGatewayError(w, r, id, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"id": id, "token": token})
}

// handleGatewayDelete serves DELETE /v1/gateways/{id} (admin) → 204; 404
// for an unknown gateway. The devices behind it stay registered.
func (b *Bridge) handleGatewayDelete(w http.ResponseWriter, r *http.Request) {
	id, ok := gatewayAdminID(w, r)
	if !ok {
		return
	}
	if err := b.reg.DeleteGateway(r.Context(), id); err != nil {
		b.writeGatewayError(w, r, id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
