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

// "." and ".." cannot come from a browser in the path (it drops dot segments,
// percent-encoded or not): "~" with the id in the query names any device, on
// every route; "~" alone is still the device "~".
func TestDeviceIDInQuery(t *testing.T) {
	mux := http.NewServeMux()
	var got, route string
	mux.HandleFunc("GET /v1/devices/{id}", func(w http.ResponseWriter, r *http.Request) { got, route = DeviceID(r), "get" })
	mux.HandleFunc("POST /v1/devices/{id}/reconnect", func(w http.ResponseWriter, r *http.Request) { got, route = DeviceID(r), "reconnect" })
	h := DeviceIDs(mux)
	for _, c := range []struct {
		method, target string
		code           int
		id, route      string
	}{
		{"GET", "/v1/devices/~?id=..", 200, "..", "get"},
		{"GET", "/v1/devices/~?id=.", 200, ".", "get"},
		{"GET", "/v1/devices/%7E?id=.", 200, ".", "get"},
		{"POST", "/v1/devices/~/reconnect?id=..", 200, "..", "reconnect"},
		{"POST", "/v1/devices/~/reconnect?id=a%2Fb", 200, "a/b", "reconnect"},
		{"GET", "/v1/devices/~?id=%E6%9D%B1%20x", 200, "東 x", "get"},
		{"GET", "/v1/devices/~", 200, "~", "get"},
		{"GET", "/v1/devices/~?other=1", 200, "~", "get"},
		{"GET", "/v1/devices/x?id=..", 200, "x", "get"}, // only "~" takes the id from the query
		{"GET", "/v1/devices/~?id=", 200, "", "get"},    // (handlers refuse the empty id)
		{"GET", "/v1/devices/~?id=a&id=b", 400, "", ""},
	} {
		got, route = "", ""
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, "http://x"+c.target, nil))
		if rec.Code != c.code || got != c.id || route != c.route {
			t.Errorf("%s %s: %d, routed to %q with id %q; want %d %q %q", c.method, c.target, rec.Code, route, got, c.code, c.route, c.id)
		}
	}
}

// DevicePath, requested through DeviceIDs, names the device again, for every
// id (the Location of a registration).
func TestDevicePathRoundTrip(t *testing.T) {
	mux := http.NewServeMux()
	var got string
	mux.HandleFunc("GET /v1/devices/{id}", func(w http.ResponseWriter, r *http.Request) { got = DeviceID(r) })
	h := DeviceIDs(mux)
	for _, id := range []string{"a", ".", "..", "...", "a/../b", "A.x", "~", "%7E", "a b", "Gerät 東京", "x?y#z&id=1", "/"} {
		p := DevicePath(id)
		u, err := url.Parse(p)
		if err != nil {
			t.Fatal(err)
		}
		// What a browser would do to the path: drop "." and ".." segments,
		// percent-encoded or not (a Location is resolved that way).
		for _, seg := range strings.Split(u.EscapedPath(), "/") {
			if s := strings.ToLower(seg); s == "." || s == ".." || s == "%2e" || s == "%2e%2e" || s == ".%2e" || s == "%2e." {
				t.Errorf("DevicePath(%q) = %q has a dot segment", id, p)
			}
		}
		got = ""
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://x"+p, nil))
		if rec.Code != 200 || got != id {
			t.Errorf("GET %s: %d, id %q, want %q", p, rec.Code, got, id)
		}
	}
}
