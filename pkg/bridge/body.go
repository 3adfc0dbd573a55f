package bridge

// Request bodies: every endpoint that takes a body reads it with readBody
// (the import, whose bodies are NDJSON or CSV, with readLimited after its own
// media-type check), so that a body is refused alike whichever endpoint it
// is sent to.

import (
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// CodeRequestTimeout is the error code of a 408: the request body did not
// arrive within the server's read timeout.
const CodeRequestTimeout = "request_timeout"

// bodyRule says whether an endpoint accepts a request without a body.
type bodyRule bool

const (
	// emptyAllowed: no Content-Type and no body mean "no fields" (a heartbeat
	// without metrics, a PATCH with nothing to change).
	emptyAllowed bodyRule = false
	// bodyRequired: the request must be application/json (a batch, a
	// registration).
	bodyRequired bodyRule = true
)

// readBody reads a request body of at most limit bytes and answers the
// refusal itself (ok false):
//
//   - A Content-Type, when present, must be application/json (parameters
//     allowed; a charset must be utf-8), else 415. Without one, rule
//     emptyAllowed accepts an empty body (nil, ok) and refuses any other
//     with 415; rule bodyRequired refuses the request with 415.
//   - More than limit bytes, declared by Content-Length or found while
//     reading a chunked body, is 413.
//   - A body that does not arrive within the server's ReadTimeout is 408
//     (code request_timeout), and the connection is closed.
//   - Any other read failure is 400. Whether the bytes are well-formed JSON
//     is the endpoint's decoder's to say (also 400).
//
// A body refused before it is read is not read at all (refuseBody): the
// connection is closed after the answer instead of being drained.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, rule bodyRule) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" || (params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
			refuseBody(w)
			httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "Content-Type must be application/json")
			return nil, false
		}
	} else if rule == bodyRequired {
		refuseBody(w)
		httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "Content-Type must be application/json")
		return nil, false
	} else if r.ContentLength != 0 {
		var one [1]byte
		if r.ContentLength > 0 || func() bool { n, _ := io.ReadFull(r.Body, one[:]); return n > 0 }() {
			refuseBody(w)
			httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia, "a request body needs Content-Type: application/json")
			return nil, false
		}
		return nil, true
	}
	return readLimited(w, r, limit)
}

// readLimited reads a body whose media type the caller has accepted: the
// size, time and read-failure rules of [readBody] (413, 408, 400), answered
// by itself (ok false). POST /v1/devices/import, which takes NDJSON or CSV,
// checks its own media types and then reads through it.
func readLimited(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	if r.ContentLength > limit {
		refuseBody(w)
		writeTooLarge(w, limit)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeTooLarge(w, limit)
			return nil, false
		}
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			// The server's ReadTimeout cut a slow client off.
			w.Header().Set("Connection", "close")
			httpx.WriteError(w, http.StatusRequestTimeout, CodeRequestTimeout, "request body not received in time")
			return nil, false
		}
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeBadRequest, "reading the request body failed")
		return nil, false
	}
	return body, true
}

// writeTooLarge answers 413, naming the limit.
func writeTooLarge(w http.ResponseWriter, limit int64) {
	httpx.WriteError(w, http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, "request body is larger than the limit ("+byteSize(limit)+")")
}

// byteSize writes n bytes the way the limits are documented: 64 KiB, 4 MiB.
func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// refuseBody prepares the answer to a request whose body will not be read:
// Connection: close, and a read deadline in the past, so that net/http
// neither drains the unread body (it would read up to 256 KiB from a client
// that may send it slowly or never, until ReadTimeout) nor waits for it.
func refuseBody(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}
