package tokens

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// Route patterns registered by [Store.Routes]; all need an admin token.
const (
	PatternCreate = "POST /v1/tokens"
	PatternList   = "GET /v1/tokens"
	PatternDelete = "DELETE /v1/tokens/{id}"
)

// maxBody bounds the body of POST /v1/tokens.
const maxBody = 4 << 10

// Routes registers the token routes on mux, each behind auth with the admin
// role (a viewer may not see even the list of tokens):
//
//   - POST /v1/tokens {"name", "role": "viewer"|"admin"} → 201 {"id",
//     "name", "role", "created_at", "token"}; the token is shown only here.
//     400 for a bad name, role or body, 415 without application/json.
//   - GET /v1/tokens → 200 {"tokens": [{"id", "name", "role", "created_at"}]}.
//   - DELETE /v1/tokens/{id} → 204; 404 for an unknown id.
//
// 503 when the bucket is unavailable.
func (s *Store) Routes(mux httpx.Mux, auth httpx.Authorizer) {
	admin := func(h http.HandlerFunc) http.Handler { return httpx.RequireRole(auth, httpx.RoleAdmin, h) }
	mux.Handle(PatternCreate, admin(s.handleCreate))
	mux.Handle(PatternList, admin(s.handleList))
	mux.Handle(PatternDelete, admin(s.handleDelete))
}

func writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeUnprocessableEntity, err.Error()[len("tokens: "):])
	case errors.Is(err, ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "no such token")
	default:
		w.Header().Set("Retry-After", "5")
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the token store is unavailable; retry later")
	}
}

type createRequest struct {
	Name string     `json:"name"`
	Role httpx.Role `json:"role"`
}

type createResponse struct {
	Token
	Secret string `json:"token"`
}

func (s *Store) handleCreate(w http.ResponseWriter, r *http.Request) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "Content-Type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		httpx.WriteError(w, http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, "request body is larger than 4 KiB")
		return
	}
	var req createRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeMalformedJSON, `body must be {"name": string, "role": "viewer"|"admin"}`)
		return
	}
	t, secret, err := s.Create(r.Context(), req.Name, req.Role)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteJSON(w, http.StatusCreated, createResponse{Token: t, Secret: secret})
}

func (s *Store) handleList(w http.ResponseWriter, r *http.Request) {
	ts, err := s.List(r.Context())
	if err != nil {
		writeStoreError(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteJSON(w, http.StatusOK, map[string][]Token{"tokens": ts})
}

func (s *Store) handleDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.Delete(r.Context(), r.PathValue("id")); err != nil {
		writeStoreError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
