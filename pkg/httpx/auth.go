package httpx

import (
	"context"
	"errors"
	"net/http"
)

// Role is what an API token may do: [RoleViewer] reads (every GET route,
// the live stream and the dashboard), [RoleAdmin] also changes things.
type Role string

// Roles of API tokens.
const (
	RoleViewer Role = "viewer"
	RoleAdmin  Role = "admin"
)

// Allows reports whether a token of role r may use a route that needs role
// need: an admin may do everything a viewer may.
func (r Role) Allows(need Role) bool {
	switch r {
	case RoleAdmin:
		return true
	case RoleViewer:
		return need == RoleViewer
	}
	return false
}

// ErrUnknownToken is what an [Authorizer] returns for a missing, wrong or
// deleted token (answered 401).
var ErrUnknownToken = errors.New("httpx: unknown token")

// Authorizer tells the role of an API bearer token. Errors: [ErrUnknownToken]
// for a token it does not know (401); any other error means it could not
// tell (503).
type Authorizer interface {
	Authorize(ctx context.Context, token string) (Role, error)
}

// StaticToken is an [Authorizer] that knows one admin token (the bootstrap
// --admin-token) and nothing else.
type StaticToken string

// Authorize returns RoleAdmin for the token itself, [ErrUnknownToken] for
// anything else (compared in constant time).
func (s StaticToken) Authorize(_ context.Context, token string) (Role, error) {
	if token != "" && s != "" && TokenEqual(token, string(s)) {
		return RoleAdmin, nil
	}
	return "", ErrUnknownToken
}

// RequireRole wraps h so that it runs only with "Authorization: Bearer
// <token>" of a token whose role allows need: a missing or unknown token is
// 401 (with WWW-Authenticate), a known token of too small a role 403, an
// authorizer that cannot tell 503.
func RequireRole(auth Authorizer, need Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if CheckRole(w, r, auth, need, BearerToken(r)) {
			h.ServeHTTP(w, r)
		}
	})
}

// CheckRole checks token against need like [RequireRole] and writes the
// error answer when it fails; it reports whether the request may go on.
func CheckRole(w http.ResponseWriter, r *http.Request, auth Authorizer, need Role, token string) bool {
	if token == "" {
		writeUnknownToken(w)
		return false
	}
	role, err := auth.Authorize(r.Context(), token)
	switch {
	case errors.Is(err, ErrUnknownToken):
		writeUnknownToken(w)
		return false
	case err != nil:
		w.Header().Set("Retry-After", "5")
		WriteError(w, http.StatusServiceUnavailable, CodeUnavailable, "the token store is unavailable; retry later")
		return false
	case !role.Allows(need):
		WriteError(w, http.StatusForbidden, CodeForbidden, "a "+string(role)+" token may not do this; it needs the "+string(need)+" role")
		return false
	}
	return true
}

func writeUnknownToken(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="devstatus"`)
	WriteError(w, http.StatusUnauthorized, CodeUnauthorized, "missing or wrong bearer token")
}

// Mux is where a component registers its routes: *http.ServeMux, or a
// [RecordingMux] that also remembers the patterns.
type Mux interface {
	Handle(pattern string, handler http.Handler)
	HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request))
}

// RecordingMux is an *http.ServeMux that remembers every pattern registered
// on it, in order, so that the set of routes a server serves can be listed
// (the OpenAPI coverage test reads it).
type RecordingMux struct {
	*http.ServeMux
	patterns []string
}

// NewRecordingMux returns an empty RecordingMux.
func NewRecordingMux() *RecordingMux { return &RecordingMux{ServeMux: http.NewServeMux()} }

// Handle registers handler for pattern (see http.ServeMux.Handle).
func (m *RecordingMux) Handle(pattern string, handler http.Handler) {
	m.ServeMux.Handle(pattern, handler)
	m.patterns = append(m.patterns, pattern)
}

// HandleFunc registers handler for pattern (see http.ServeMux.HandleFunc).
func (m *RecordingMux) HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request)) {
	m.ServeMux.HandleFunc(pattern, handler)
	m.patterns = append(m.patterns, pattern)
}

// Patterns returns the patterns registered so far, in registration order.
func (m *RecordingMux) Patterns() []string { return append([]string(nil), m.patterns...) }
