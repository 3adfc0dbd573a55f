package httpx

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestDeviceIDsEveryIDRoutes(t *testing.T) {
	mux := http.NewServeMux()
	var got, route string
	mux.HandleFunc("POST /v1/devices/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		got, route = DeviceID(r), "heartbeat"
	})
	mux.HandleFunc("GET /v1/devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		got, route = DeviceID(r), "get"
	})
	mux.HandleFunc("GET /v1/devices/{id}/transitions", func(w http.ResponseWriter, r *http.Request) {
		got, route = DeviceID(r), "transitions"
	})
	h := DeviceIDs(mux)
	ids := []string{"a", ".", "..", "a/../b", "a//b", "G1/site1/c1/node1", "A.x", "*", ">", "a b", "Gerät 東京", "~", "%41", "x?y#z", "/"}
	for _, id := range ids {
		for _, c := range []struct{ method, suffix, route string }{
			{"POST", "/heartbeat", "heartbeat"}, {"GET", "", "get"}, {"GET", "/transitions", "transitions"},
		} {
			got, route = "", ""
			req := httptest.NewRequest(c.method, "http://x"+DevicesPrefix+url.PathEscape(id)+c.suffix, nil)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != 200 || got != id || route != c.route {
				t.Errorf("%s %q%s: code %d, routed to %q with id %q", c.method, id, c.suffix, rec.Code, route, got)
			}
		}
	}
}

func TestJSONErrorsFromTheMux(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/summary", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, map[string]int{"n": 1}) })
	mux.HandleFunc("GET /v1/mine", func(w http.ResponseWriter, r *http.Request) { WriteError(w, 404, CodeNotFound, "mine") })
	h := DeviceIDs(JSONErrors(mux))
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/v1/summary", 200, `{"n":1}`},
		{"GET", "/v1/nope", 404, `"code":"not_found"`},
		{"POST", "/v1/summary", 405, `"code":"method_not_allowed"`},
		{"GET", "/v1/mine", 404, `"message":"mine"`},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, "http://x"+c.path, nil))
		if rec.Code != c.code || !strings.Contains(rec.Body.String(), c.body) {
			t.Errorf("%s %s: %d %q", c.method, c.path, rec.Code, rec.Body.String())
		}
		if c.code != 200 && rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: content type %q", c.method, c.path, rec.Header().Get("Content-Type"))
		}
	}
}
