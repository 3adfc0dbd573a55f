package bridge

// Bulk registration: POST /v1/devices/import (admin) registers up to
// MaxImportDevices devices from one NDJSON or CSV body, each line exactly as
// POST /v1/devices would (the same fields, checks and registry call), a few
// at a time (Config.ImportParallel), and answers every line: a failed line
// never blocks the others.

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// PatternImport is the bulk registration route.
const PatternImport = "POST /v1/devices/import"

// Limits of POST /v1/devices/import.
const (
	// MaxImportDevices is the most devices (non-empty lines or CSV records
	// after the header) one request may carry; more is refused whole (413)
	// before anything is registered.
	MaxImportDevices = 10000
	// MaxImportLineBytes bounds one NDJSON line, or the fields of one CSV
	// record that the import registers (id, group, gateway, probe_url: the
	// other columns of an export, metrics included, do not count); a longer
	// one is answered 400 (line_too_long) and the others are registered.
	MaxImportLineBytes = 4096
	// MaxImportBodyBytes bounds the whole body (413 over it).
	MaxImportBodyBytes = 16 << 20
	// DefaultImportParallel is Config.ImportParallel's default.
	DefaultImportParallel = 32
)

// Media types POST /v1/devices/import accepts.
const (
	MediaNDJSON = "application/x-ndjson"
	MediaCSV    = "text/csv"
)

// Error codes of import lines (besides those of POST /v1/devices).
const (
	CodeLineTooLong  = "line_too_long"
	CodeMalformedCSV = "malformed_csv"
)

// importBodyTimeout and importWriteTimeout replace the server's read and
// write deadlines for an import: a 16 MiB body and 10 000 registrations
// take longer than a heartbeat.
const (
	importBodyTimeout  = 2 * time.Minute
	importWriteTimeout = 10 * time.Minute
)

// ImportResult is the answer for one line of an import.
type ImportResult struct {
	// Line is the 1-based line number in the body (CSV: the line the record
	// starts on; the header is line 1).
	Line int `json:"line"`
	// ID is the device id read from the line ("" when none could be read).
	ID string `json:"id"`
	// Status is what POST /v1/devices would have answered: 201, 400, 409,
	// 503 (retry that line later) or 500.
	Status int `json:"status"`
	// Token is the new device token (201 only), shown this once.
	Token string `json:"token,omitempty"`
	// Error says why the line was refused (any status but 201).
	Error *httpx.ErrorDetail `json:"error,omitempty"`
}

// ImportAnswer is the JSON answer of an import: one result per non-empty
// line, in line order, and the counts.
type ImportAnswer struct {
	Results []ImportResult `json:"results"`
	Created int            `json:"created"`
	Failed  int            `json:"failed"`
}

// importLine is one device line to register, or the reason it cannot be.
type importLine struct {
	line int
	reg  registration
	err  error // *requestError: answered 400 without registering
}

// registration is what POST /v1/devices and each import line ask for.
type registration struct {
	id, group, gateway, probeURL string
}

// decodeRegistration reads the fields of POST /v1/devices (id, group,
// gateway, probe_url) from a decoded JSON object, checking the probe URL
// against the policy. Errors are *requestError (400).
func (b *Bridge) decodeRegistration(f map[string]json.RawMessage) (registration, error) {
	var reg registration
	if isNull(f["id"]) || json.Unmarshal(f["id"], &reg.id) != nil {
		return reg, &requestError{code: httpx.CodeInvalidDeviceID, msg: "id (string) is required"}
	}
	for _, fd := range []struct {
		name string
		dst  *string
	}{{"group", &reg.group}, {"gateway", &reg.gateway}} {
		if !isNull(f[fd.name]) && json.Unmarshal(f[fd.name], fd.dst) != nil {
			return reg, invalidField("%s must be a string", fd.name)
		}
	}
	p, err := parseProbeURL(f["probe_url"])
	if err != nil {
		return reg, err
	}
	if p != nil {
		if reg.probeURL, err = b.checkProbeURL(*p); err != nil {
			return reg, err
		}
	}
	return reg, nil
}

// register registers one device through the registry and returns its token.
// Errors are the registry's (see [registry.Registry.Register]).
func (b *Bridge) register(ctx context.Context, reg registration) (string, error) {
	return b.reg.Register(ctx, reg.id, reg.group, reg.gateway, registry.WithProbeURL(reg.probeURL))
}

// adminErrorAnswer maps a registry error of an admin call to its status and
// error body; ok is false for an error that is not about the request
// (registry unavailable: 503, anything else 500).
func adminErrorAnswer(err error) (status int, code, msg string, ok bool) {
	var idErr *registry.InvalidIDError
	switch {
	case errors.As(err, &idErr):
		return http.StatusBadRequest, httpx.CodeInvalidDeviceID, idErr.Err.Error(), true
	case errors.Is(err, registry.ErrInvalidGroup), errors.Is(err, registry.ErrInvalidGateway):
		return http.StatusBadRequest, httpx.CodeUnprocessableEntity, err.Error(), true
	case errors.Is(err, registry.ErrExists):
		return http.StatusConflict, httpx.CodeConflict, "device already registered", true
	case errors.Is(err, registry.ErrNotFound):
		return http.StatusNotFound, httpx.CodeNotFound, "unknown device", true
	case errors.Is(err, registry.ErrDecommissioned):
		return http.StatusNotFound, httpx.CodeNotFound, "device is decommissioned", true
	case errors.Is(err, registry.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, httpx.CodeUnavailable, "the device registry is unavailable; retry later", false
	}
	return http.StatusInternalServerError, httpx.CodeInternal, "internal error", false
}

// handleImport serves POST /v1/devices/import. The body is NDJSON
// (Content-Type application/x-ndjson: one POST /v1/devices object per line)
// or CSV (text/csv: a header row naming the columns id, group, gateway,
// probe_url in any order; the other columns of a device export are
// ignored, any other column refuses the request). Empty lines are skipped; a
// UTF-8 byte-order mark is allowed.
//
// Answer 200 with [ImportAnswer], or, with Accept: application/x-ndjson, one
// [ImportResult] per line of NDJSON. Refused whole (nothing registered): 413
// over MaxImportDevices devices or MaxImportBodyBytes, 415 another media
// type, 400 a CSV header that is missing, lacks id or names an unknown
// column, 408 a body that does not arrive in time.
func (b *Bridge) handleImport(w http.ResponseWriter, r *http.Request) {
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || (mt != MediaNDJSON && mt != MediaCSV) ||
		(params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
		refuseBody(w)
		httpx.WriteError(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMedia,
			"Content-Type must be "+MediaNDJSON+" or "+MediaCSV+" (UTF-8)")
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(importBodyTimeout))
	_ = rc.SetWriteDeadline(time.Now().Add(importWriteTimeout))
	body, ok := readLimited(w, r, MaxImportBodyBytes)
	if !ok {
		return
	}
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	var lines []importLine
	if mt == MediaCSV {
		lines, err = b.parseImportCSV(body)
	} else {
		lines, err = b.parseImportNDJSON(body)
	}
	var tooMany tooManyDevicesError
	switch {
	case errors.As(err, &tooMany):
		httpx.WriteError(w, http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, err.Error())
		return
	case err != nil:
		writeRequestError(w, err)
		return
	}
	markDuplicates(lines)
	results := b.importLines(r.Context(), lines)
	if r.Context().Err() != nil {
		return // the client went away: nobody reads the tokens
	}
	writeImportAnswer(w, r, results)
}

// tooManyDevicesError refuses a body with more than MaxImportDevices lines.
type tooManyDevicesError struct{ n int }

func (e tooManyDevicesError) Error() string {
	return fmt.Sprintf("an import carries at most %d devices, this one has more than %d: split the file into requests of %d",
		MaxImportDevices, e.n-1, MaxImportDevices)
}

// parseImportNDJSON splits body into lines and decodes each as a
// POST /v1/devices object; undecodable lines keep their error.
func (b *Bridge) parseImportNDJSON(body []byte) ([]importLine, error) {
	var out []importLine
	for n := 1; len(body) > 0; n++ {
		var line []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			line, body = body, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if len(out) == MaxImportDevices {
			return nil, tooManyDevicesError{MaxImportDevices + 1}
		}
		il := importLine{line: n}
		if len(line) > MaxImportLineBytes {
			il.err = &requestError{code: CodeLineTooLong, msg: fmt.Sprintf("line is %d bytes, at most %d", len(line), MaxImportLineBytes)}
		} else if f, err := parseObject(line, "id", "group", "gateway", "probe_url"); err != nil {
			il.err = err
			il.reg.id = bestEffortID(line)
		} else {
			il.reg, il.err = b.decodeRegistration(f)
		}
		out = append(out, il)
	}
	return out, nil
}

// bestEffortID returns the "id" string of a line that was refused for
// another reason (an unknown field …), so that its answer names the device;
// "" when there is none.
func bestEffortID(line []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(line, &v) != nil {
		return ""
	}
	return v.ID
}

// importCSVColumns are the CSV columns an import registers; ignoredCSVColumns
// the other columns of a device export (GET /v1/devices?format=csv), so that
// an export of one fleet imports into another.
var (
	importCSVColumns  = []string{"id", "group", "gateway", "probe_url"}
	ignoredCSVColumns = []string{"status", "status_since", "reason_code", "reason", "last_heartbeat_at",
		"last_ping_at", "last_ping_ok", "remote_control_enabled", "registered_at", "metrics_at", "metrics"}
)

// parseImportCSV reads the header and the records of a CSV import. A record
// that is not valid CSV, has more fields than the header or is too long
// keeps its error; a record with fewer fields leaves the missing columns
// empty. An empty field means "not given".
func (b *Bridge) parseImportCSV(body []byte) ([]importLine, error) {
	cr := csv.NewReader(bytes.NewReader(body))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &requestError{code: CodeMalformedCSV, msg: "the CSV body needs a header row naming its columns (id, group, gateway, probe_url)"}
		}
		return nil, &requestError{code: CodeMalformedCSV, msg: "header row: " + err.Error()}
	}
	col := map[string]int{}
	for i, name := range header {
		name = strings.TrimSpace(name)
		switch {
		case slices.Contains(importCSVColumns, name):
			if _, dup := col[name]; dup {
				return nil, &requestError{code: CodeMalformedCSV, msg: fmt.Sprintf("column %q appears twice in the header", name)}
			}
			col[name] = i
		case slices.Contains(ignoredCSVColumns, name):
		default:
			return nil, &requestError{code: CodeMalformedCSV, msg: fmt.Sprintf("unknown column %q: the columns are %s (and those of a device export, ignored)",
				name, strings.Join(importCSVColumns, ", "))}
		}
	}
	if _, ok := col["id"]; !ok {
		return nil, &requestError{code: CodeMalformedCSV, msg: "the header has no id column"}
	}
	var out []importLine
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if len(out) == MaxImportDevices {
			return nil, tooManyDevicesError{MaxImportDevices + 1}
		}
		var il importLine
		var pe *csv.ParseError
		switch {
		case errors.As(err, &pe):
			il = importLine{line: pe.StartLine, err: &requestError{code: CodeMalformedCSV, msg: pe.Error()}}
		case err != nil:
			return nil, &requestError{code: CodeMalformedCSV, msg: err.Error()}
		default:
			line, _ := cr.FieldPos(0)
			il = importLine{line: line}
			il.reg.id = field(rec, col, "id")
			switch size := usedBytes(rec, col); {
			case size > MaxImportLineBytes:
				il.err = &requestError{code: CodeLineTooLong, msg: fmt.Sprintf("the record's %s fields hold %d bytes, at most %d",
					strings.Join(importCSVColumns, ", "), size, MaxImportLineBytes)}
			case len(rec) > len(header):
				il.err = &requestError{code: CodeMalformedCSV, msg: fmt.Sprintf("record has %d fields, the header %d", len(rec), len(header))}
			default:
				il.reg, il.err = b.decodeCSVRegistration(rec, col)
			}
		}
		out = append(out, il)
	}
}

// decodeCSVRegistration builds the registration of one CSV record through
// the same decoder as a JSON line (every field a string; empty: absent).
func (b *Bridge) decodeCSVRegistration(rec []string, col map[string]int) (registration, error) {
	f := make(map[string]json.RawMessage, len(col))
	for name := range col {
		if v := field(rec, col, name); v != "" {
			raw, _ := json.Marshal(v)
			f[name] = raw
		}
	}
	if err := checkText([]byte(strings.Join(rec, ""))); err != nil {
		var re *requestError
		if errors.As(err, &re) {
			err = &requestError{code: CodeMalformedCSV, msg: strings.Replace(re.msg, "body", "record", 1)}
		}
		return registration{id: field(rec, col, "id")}, err
	}
	return b.decodeRegistration(f)
}

// usedBytes is the size of the fields of rec the import registers (the
// columns of importCSVColumns): the ignored columns of an export, such as
// a device's metrics, do not count towards MaxImportLineBytes.
func usedBytes(rec []string, col map[string]int) int {
	n := 0
	for name := range col {
		n += len(field(rec, col, name))
	}
	return n
}

func field(rec []string, col map[string]int, name string) string {
	if i, ok := col[name]; ok && i < len(rec) {
		return rec[i]
	}
	return ""
}

// markDuplicates answers a line whose id an earlier line of the same body
// already has 409 without registering it, so that the first line wins
// whatever the order in which the registrations run.
func markDuplicates(lines []importLine) {
	first := make(map[string]int, len(lines))
	for i := range lines {
		il := &lines[i]
		if il.err != nil {
			continue
		}
		if n, dup := first[il.reg.id]; dup {
			il.err = duplicateLineError{n}
			continue
		}
		first[il.reg.id] = il.line
	}
}

// duplicateLineError: the id was already on an earlier line (409).
type duplicateLineError struct{ line int }

func (e duplicateLineError) Error() string {
	return fmt.Sprintf("device already registered by line %d of this import", e.line)
}

// importLines registers the valid lines, Config.ImportParallel at a time,
// and returns one result per line in line order. Lines not yet started when
// ctx is done are not registered (their result says 503).
func (b *Bridge) importLines(ctx context.Context, lines []importLine) []ImportResult {
	results := make([]ImportResult, len(lines))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(b.cfg.ImportParallel, len(lines)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = b.importOne(ctx, &lines[i])
			}
		}()
	}
	for i := range lines {
		next <- i
	}
	close(next)
	wg.Wait()
	return results
}

func (b *Bridge) importOne(ctx context.Context, il *importLine) ImportResult {
	res := ImportResult{Line: il.line, ID: il.reg.id}
	var dup duplicateLineError
	if errors.As(il.err, &dup) {
		res.Status, res.Error = http.StatusConflict, &httpx.ErrorDetail{Code: httpx.CodeConflict, Message: dup.Error()}
		return res
	}
	if il.err != nil {
		var re *requestError
		if !errors.As(il.err, &re) {
			re = &requestError{code: httpx.CodeBadRequest, msg: il.err.Error()}
		}
		res.Status, res.Error = http.StatusBadRequest, &httpx.ErrorDetail{Code: re.code, Message: re.msg}
		return res
	}
	if err := ctx.Err(); err != nil {
		res.Status, res.Error = http.StatusServiceUnavailable, &httpx.ErrorDetail{Code: httpx.CodeUnavailable, Message: "request cancelled"}
		return res
	}
	token, err := b.register(ctx, il.reg)
	if err != nil {
		status, code, msg, ok := adminErrorAnswer(err)
		if !ok && status == http.StatusInternalServerError {
			b.log.Error("bridge: import: registry", "device", il.reg.id, "err", err)
		}
		res.Status, res.Error = status, &httpx.ErrorDetail{Code: code, Message: msg}
		return res
	}
	res.Status, res.Token = http.StatusCreated, token
	return res
}

// writeImportAnswer writes the results as JSON ([ImportAnswer]) or, when the
// client accepts application/x-ndjson, one result per line.
func writeImportAnswer(w http.ResponseWriter, r *http.Request, results []ImportResult) {
	w.Header().Set("Cache-Control", "no-store") // it carries tokens
	ndjson := false
	for _, part := range strings.Split(strings.Join(r.Header.Values("Accept"), ","), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == MediaNDJSON {
			ndjson = true
		}
	}
	if !ndjson {
		ans := ImportAnswer{Results: results}
		for _, res := range results {
			if res.Status == http.StatusCreated {
				ans.Created++
			} else {
				ans.Failed++
			}
		}
		httpx.WriteJSON(w, http.StatusOK, ans)
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // one object and "\n" per Encode
	for i := range results {
		_ = enc.Encode(&results[i])
	}
	w.Header().Set("Content-Type", MediaNDJSON)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}
