package httpx

import "net/http"

// StatusRecorder is a ResponseWriter that remembers the first status code
// written through it (an implicit 200 on the first Write), for middleware
// that counts answers by code.
type StatusRecorder struct {
	http.ResponseWriter
	code int
}

// WriteHeader records code (the first one only) and passes it on.
func (s *StatusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Write records 200 when no status was written yet and passes b on.
func (s *StatusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap returns the wrapped ResponseWriter (for http.ResponseController).
func (s *StatusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Status returns the status code of the answer: the one written, or 200 when
// the handler wrote nothing (net/http then answers 200).
func (s *StatusRecorder) Status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}
