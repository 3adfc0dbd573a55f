// Package httpx holds the HTTP conventions every devstatus endpoint shares:
// the JSON error body ({"error": {"code", "message"}}), JSON
// responses, and bearer-token extraction and comparison.
//
// It must not know about devices, events or the bus.
package httpx

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error codes used in error bodies. They are part of the API.
const (
	CodeBadRequest          = "bad_request"
	CodeInvalidDeviceID     = "invalid_device_id"
	CodeMalformedJSON       = "malformed_json"
	CodeUnauthorized        = "unauthorized"
	CodeForbidden           = "forbidden"
	CodeNotFound            = "not_found"
	CodeConflict            = "conflict"
	CodeTooLarge            = "body_too_large"
	CodeUnsupportedMedia    = "unsupported_media_type"
	CodeRateLimited         = "rate_limited"
	CodeUnavailable         = "unavailable"
	CodeInternal            = "internal"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeUnprocessableEntity = "invalid_field"
)

// ErrorBody is the JSON shape of every error answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
	// RetryAfterS is the Retry-After header's value, in whole seconds, on
	// the answers written by [WriteRetryAfter] (429, 503); absent otherwise.
	RetryAfterS int `json:"retry_after_s,omitempty"`
}

// ErrorDetail is the inner object of [ErrorBody].
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, CodeInternal, "encoding the answer failed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// WriteError writes the design's error body.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	WriteJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: message}})
}

// WriteRetryAfter writes an error with a Retry-After header in whole seconds
// (rounded up, at least 1), the same number in the body's retry_after_s
// (for clients that read the body but not the headers):
//
//	{"error": {"code", "message"}, "retry_after_s": 7}
func WriteRetryAfter(w http.ResponseWriter, status int, code, message string, after time.Duration) {
	secs := int((after + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	WriteJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: message}, RetryAfterS: secs})
}

// BearerToken returns the token of an "Authorization: Bearer <token>" header,
// or "" when there is none.
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return ""
	}
	return strings.TrimSpace(h[len(prefix):])
}

// TokenEqual compares two secrets in constant time (over their SHA-256, so the
// length does not leak either).
func TokenEqual(a, b string) bool {
	ha := sha256.Sum256([]byte(a))
	hb := sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// RequireBearer wraps h so that it runs only with "Authorization: Bearer
// <token>"; otherwise it answers 401 with the design's error body.
func RequireBearer(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := BearerToken(r)
		if got == "" || !TokenEqual(got, token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="devstatus"`)
			WriteError(w, http.StatusUnauthorized, CodeUnauthorized, "missing or wrong bearer token")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// JSONErrors wraps a mux so that the answers the mux itself gives — 404 for
// a path no pattern matches, 405 for a method no pattern of the path
// allows — carry the design's JSON error body instead of net/http's plain
// text. Handlers' own answers pass through untouched.
func JSONErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(&muxErrorWriter{ResponseWriter: w, path: r.URL.Path, method: r.Method}, r)
	})
}

// muxErrorWriter replaces the mux's plain-text error with a JSON one.
type muxErrorWriter struct {
	http.ResponseWriter
	path, method string
	wrote        bool
	passthrough  bool
}

func (m *muxErrorWriter) WriteHeader(code int) {
	if m.wrote {
		return
	}
	m.wrote = true
	switch code {
	case http.StatusNotFound:
		WriteError(m.ResponseWriter, code, CodeNotFound, "no such endpoint: "+m.path)
	case http.StatusMethodNotAllowed:
		WriteError(m.ResponseWriter, code, CodeMethodNotAllowed, "method "+m.method+" is not allowed on "+m.path)
	default: // a redirect (path cleaning) or anything else: as the mux says
		m.passthrough = true
		m.ResponseWriter.WriteHeader(code)
	}
}

func (m *muxErrorWriter) Write(b []byte) (int, error) {
	if !m.wrote {
		m.WriteHeader(http.StatusOK)
	}
	if m.passthrough {
		return m.ResponseWriter.Write(b)
	}
	return len(b), nil // the mux's plain-text body is replaced
}
