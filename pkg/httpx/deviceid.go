package httpx

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// DevicesPrefix is the path prefix under which the device id is the next
// path segment.
const DevicesPrefix = "/v1/devices/"

// idPlaceholder replaces the id segment in the path the mux sees.
const idPlaceholder = "~"

// IDInQuery is the id segment that takes the device id from the "id" query
// parameter (see [DeviceIDs]).
const IDInQuery = "~"

// CollectionPaths are paths under [DevicesPrefix] that name an action on the
// collection, not a device: [DeviceIDs] passes them to the mux unchanged, so
// that a pattern such as "POST /v1/devices/import" matches. The same path
// still names the device "import" for the routes that have no such pattern
// (GET, PATCH, DELETE /v1/devices/{id}: the mux's {id} value).
var CollectionPaths = []string{DevicesPrefix + "import"}

type deviceIDKey struct{}

// DeviceIDs wraps a mux so that every device id works in a path, including
// ".", "..", ids with "/" (sent as %2F), spaces and non-ASCII. net/http's
// ServeMux cleans paths ("/v1/devices/../x" is redirected) and would split an
// id at a decoded "/"; this handler takes the id segment from the escaped
// path before the mux sees it, unescapes it, stores it in the request context
// and hands the mux a path with a placeholder segment, so a pattern such as
// "POST /v1/devices/{id}/heartbeat" matches. Handlers read the id with
// [DeviceID]. A segment that is not valid percent-encoding gets 400.
//
// Browsers cannot send the ids "." and "..": the WHATWG URL standard removes
// the segments ".", "..", "%2E" and "%2E%2E" (any case) before the request
// leaves, so "/v1/devices/%2E%2E/transitions" arrives as "/v1/transitions".
// For them (and for any id) the segment may be [IDInQuery], "~", with the id
// in the "id" query parameter: "/v1/devices/~/transitions?id=..". Without an
// "id" parameter "~" is the device "~"; a repeated "id" gets 400.
func DeviceIDs(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		esc := r.URL.EscapedPath()
		if !strings.HasPrefix(esc, DevicesPrefix) || len(esc) == len(DevicesPrefix) || slices.Contains(CollectionPaths, esc) {
			next.ServeHTTP(w, r)
			return
		}
		rest := esc[len(DevicesPrefix):]
		seg, tail, _ := strings.Cut(rest, "/")
		id, err := url.PathUnescape(seg)
		if err != nil {
			WriteError(w, http.StatusBadRequest, CodeInvalidDeviceID, "device id in the path is not valid percent-encoding")
			return
		}
		if id == IDInQuery {
			if vs, ok := r.URL.Query()["id"]; ok {
				if len(vs) != 1 {
					WriteError(w, http.StatusBadRequest, CodeInvalidDeviceID, "id is given more than once")
					return
				}
				id = vs[0]
			}
		}
		r2 := r.WithContext(context.WithValue(r.Context(), deviceIDKey{}, id))
		u := *r.URL
		u.Path = DevicesPrefix + idPlaceholder
		if strings.Contains(rest, "/") {
			t, err := url.PathUnescape(tail)
			if err != nil {
				WriteError(w, http.StatusBadRequest, CodeBadRequest, "path is not valid percent-encoding")
				return
			}
			u.Path += "/" + t
		}
		u.RawPath = ""
		r2.URL = &u
		next.ServeHTTP(w, r2)
	})
}

// DevicePath returns the path of a device's resource (for a Location header
// or a link): [DevicesPrefix] and the id escaped as one path segment, or, for
// "." and ".." (which clients drop as dot segments however they are
// escaped), DevicesPrefix + "~?id=" and the escaped id (see [DeviceIDs]).
func DevicePath(id string) string {
	if id == "." || id == ".." {
		return DevicesPrefix + IDInQuery + "?id=" + url.QueryEscape(id)
	}
	return DevicesPrefix + url.PathEscape(id)
}

// DeviceID returns the device id of a request routed through [DeviceIDs],
// falling back to the mux's {id} path value.
func DeviceID(r *http.Request) string {
	if id, ok := r.Context().Value(deviceIDKey{}).(string); ok {
		return id
	}
	return r.PathValue("id")
}
