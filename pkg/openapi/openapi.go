// Package openapi holds devstatus's HTTP API description: openapi.json, an
// OpenAPI 3.1 document of every route the service registers, kept by hand
// next to the code and embedded in the binary. The service serves it at
// GET /openapi.json without authentication. Tests in this package and in
// pkg/service check it: it is valid OpenAPI 3.1, every registered route has
// an operation, every example validates against its schema, and real
// answers of a running service validate too.
//
// It must not import the packages whose routes it describes.
package openapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Pattern is the route that serves the document.
const Pattern = "GET /openapi.json"

//go:embed openapi.json
var document []byte

// Document returns the OpenAPI 3.1 document (JSON). The caller must not
// modify it.
func Document() []byte { return document }

// Handler serves the document as application/json, cacheable for an hour.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		http.ServeContent(w, r, "openapi.json", time.Time{}, bytes.NewReader(document))
	})
}

// Operation names one operation as a net/http route pattern would: the
// method and the path ("GET /v1/devices/{id}").
type Operation struct{ Method, Path string }

func (o Operation) String() string { return o.Method + " " + o.Path }

// OperationOf turns a net/http ServeMux pattern into the operation that
// documents it: "GET /{$}" is GET "/", and a subtree pattern ending in "/"
// ("GET /assets/") is documented as one path parameter under it
// ("/assets/{file}"; any parameter name). A pattern without a method is
// reported with method "" (every route here names its method).
func OperationOf(pattern string) Operation {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		method, path = "", pattern
	}
	path = strings.TrimSuffix(path, "{$}")
	return Operation{Method: method, Path: path}
}

// Covers reports whether the document has op, matching a subtree path
// ("/assets/") against a documented "/assets/{…}".
func (d Operations) Covers(op Operation) bool {
	if d[op] {
		return true
	}
	if strings.HasSuffix(op.Path, "/") && op.Path != "/" {
		for o := range d {
			if o.Method == op.Method && strings.HasPrefix(o.Path, op.Path+"{") && strings.Count(o.Path[len(op.Path):], "/") == 0 {
				return true
			}
		}
	}
	return false
}

// Operations is the set of operations a document describes.
type Operations map[Operation]bool

// DocumentOperations lists the operations of [Document] (methods in upper
// case). Errors: the document is not JSON of the expected shape.
func DocumentOperations() (Operations, error) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(document, &doc); err != nil {
		return nil, fmt.Errorf("openapi: decode openapi.json: %w", err)
	}
	ops := Operations{}
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
				ops[Operation{Method: strings.ToUpper(method), Path: path}] = true
			}
		}
	}
	return ops, nil
}
