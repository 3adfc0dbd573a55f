package httpx

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestStatusRecorder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler func(w http.ResponseWriter)
		want    int
	}{
		{"nothing written", func(http.ResponseWriter) {}, http.StatusOK},
		{"body only", func(w http.ResponseWriter) { _, _ = w.Write([]byte("x")) }, http.StatusOK},
		{"first code kept", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusTooManyRequests)
			w.WriteHeader(http.StatusInternalServerError)
		}, http.StatusTooManyRequests},
		{"code then body", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte("x"))
		}, http.StatusAccepted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := httptest.NewRecorder()
			rec := &StatusRecorder{ResponseWriter: inner}
			tc.handler(rec)
			if rec.Status() != tc.want {
				t.Errorf("Status() = %d, want %d", rec.Status(), tc.want)
			}
			if rec.Unwrap() != inner {
				t.Error("Unwrap does not return the wrapped writer")
			}
		})
	}
}
