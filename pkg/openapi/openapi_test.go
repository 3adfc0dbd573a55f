package openapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
	"github.com/pb33f/libopenapi/orderedmap"

	"github.com/devstatus/devstatus/pkg/openapi"
)

func model(t *testing.T) (libopenapi.Document, *v3.Document) {
	t.Helper()
	doc, err := libopenapi.NewDocument(openapi.Document())
	if err != nil {
		t.Fatalf("parse openapi.json: %v", err)
	}
	m, err := doc.BuildV3Model()
	if err != nil {
		t.Fatalf("build the OpenAPI 3 model (unresolved $ref?): %v", err)
	}
	return doc, &m.Model
}

// TestDocumentIsOpenAPI31 checks openapi.json against the OpenAPI 3.1
// specification's schema (libopenapi-validator's ValidateDocument).
func TestDocumentIsOpenAPI31(t *testing.T) {
	doc, m := model(t)
	if v := doc.GetVersion(); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("openapi version %q, want 3.1.x", v)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("%s: %s (%s)", e.ValidationType, e.Message, e.Reason)
			for _, se := range e.SchemaValidationErrors {
				t.Errorf("  at %s: %s", se.FieldPath, se.Reason)
			}
		}
	}
	if m.Components == nil || m.Components.Schemas.GetOrZero("Error") == nil {
		t.Fatal(`components.schemas.Error (the {"error": {"code", "message"}} body) is missing`)
	}
}

// exampleCase is one example found in the document with the schema it must
// validate against.
type exampleCase struct {
	where   string
	schema  *base.Schema
	example []byte
}

func mediaExamples(t *testing.T, where string, content *orderedmap.Map[string, *v3.MediaType]) []exampleCase {
	t.Helper()
	var out []exampleCase
	for mt, media := range content.FromOldest() {
		if !strings.Contains(mt, "json") || media.Schema == nil {
			continue
		}
		schema, err := media.Schema.BuildSchema()
		if err != nil {
			t.Fatalf("%s %s: schema: %v", where, mt, err)
		}
		add := func(name string, node interface{ Decode(any) error }) {
			var v any
			if err := node.Decode(&v); err != nil {
				t.Fatalf("%s %s %s: decode example: %v", where, mt, name, err)
			}
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s %s %s: %v", where, mt, name, err)
			}
			out = append(out, exampleCase{where: where + " " + mt + " " + name, schema: schema, example: b})
		}
		if media.Example != nil {
			add("example", media.Example)
		}
		for name, ex := range media.Examples.FromOldest() {
			if ex.Value != nil {
				add("examples."+name, ex.Value)
			}
		}
	}
	return out
}

// allExamples walks every operation's request body and responses.
func allExamples(t *testing.T, m *v3.Document) []exampleCase {
	var out []exampleCase
	for path, item := range m.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			where := strings.ToUpper(method) + " " + path
			if op.RequestBody != nil {
				out = append(out, mediaExamples(t, where+" request", op.RequestBody.Content)...)
			}
			if op.Responses == nil {
				t.Errorf("%s: no responses", where)
				continue
			}
			for code, resp := range op.Responses.Codes.FromOldest() {
				out = append(out, mediaExamples(t, where+" "+code, resp.Content)...)
			}
		}
	}
	return out
}

// TestExamplesMatchSchemas: every JSON example of a request body or an
// answer validates against the schema beside it.
func TestExamplesMatchSchemas(t *testing.T) {
	_, m := model(t)
	cases := allExamples(t, m)
	if len(cases) < 40 {
		t.Fatalf("only %d examples found: the walk is broken", len(cases))
	}
	sv := schema_validation.NewSchemaValidator()
	for _, c := range cases {
		if ok, errs := sv.ValidateSchemaBytes(c.schema, c.example); !ok {
			for _, e := range errs {
				msg := e.Message
				for _, se := range e.SchemaValidationErrors {
					msg += "; " + se.FieldPath + ": " + se.Reason
				}
				t.Errorf("%s: example does not match its schema: %s\n%s", c.where, msg, c.example)
			}
		}
	}
}

// TestSchemaValidatorRejects is the control of TestExamplesMatchSchemas: the
// same walk with a broken example (a device answer whose status is not a
// status) is refused, so a wrong example cannot pass unnoticed.
func TestSchemaValidatorRejects(t *testing.T) {
	_, m := model(t)
	var device *base.Schema
	for _, c := range allExamples(t, m) {
		if c.where == "GET /v1/devices/{id} 200 application/json example" {
			device = c.schema
			var v map[string]any
			_ = json.Unmarshal(c.example, &v)
			v["status"] = "online"
			bad, _ := json.Marshal(v)
			if ok, _ := schema_validation.NewSchemaValidator().ValidateSchemaBytes(device, bad); ok {
				t.Fatal("a device with status \"online\" validated")
			}
			delete(v, "status")
			v["status"] = "connected"
			delete(v, "id")
			bad, _ = json.Marshal(v)
			if ok, _ := schema_validation.NewSchemaValidator().ValidateSchemaBytes(device, bad); ok {
				t.Fatal("a device without id validated")
			}
		}
	}
	if device == nil {
		t.Fatal("GET /v1/devices/{id} has no 200 example")
	}
}

func TestOperationOf(t *testing.T) {
	ops, err := openapi.DocumentOperations()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pattern string
		want    openapi.Operation
		covered bool
	}{
		{"GET /{$}", openapi.Operation{Method: "GET", Path: "/"}, true},
		{"GET /assets/", openapi.Operation{Method: "GET", Path: "/assets/"}, true},
		{"DELETE /v1/tokens/{id}", openapi.Operation{Method: "DELETE", Path: "/v1/tokens/{id}"}, true},
		{"PUT /v1/tokens/{id}", openapi.Operation{Method: "PUT", Path: "/v1/tokens/{id}"}, false},
		{"GET /v1/nothing/", openapi.Operation{Method: "GET", Path: "/v1/nothing/"}, false},
	} {
		op := openapi.OperationOf(c.pattern)
		if op != c.want || ops.Covers(op) != c.covered {
			t.Errorf("%q: %v covered %v, want %v %v", c.pattern, op, ops.Covers(op), c.want, c.covered)
		}
	}
}

func TestHandlerServesDocument(t *testing.T) {
	rec := httptest.NewRecorder()
	openapi.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" || !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("%d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
}
