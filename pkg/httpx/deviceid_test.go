package httpx

import (
	"net/http"
	"net/http/httptest"
	"net/url"
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
