// Package httpx holds the HTTP conventions every devstatus endpoint shares:
// the JSON error body of design.md ({"error": {"code", "message"}}), JSON
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
// (rounded up, at least 1).
func WriteRetryAfter(w http.ResponseWriter, status int, code, message string, after time.Duration) {
	secs := int((after + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	WriteError(w, status, code, message)
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
