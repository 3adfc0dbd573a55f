package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// FS returns the dashboard's files: index.html and assets/….
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}

// Patterns registered by [Routes]. "GET /{$}" matches "/" only, so unknown
// paths still get the mux's 404 rather than the page.
const (
	PatternIndex  = "GET /{$}"
	PatternAssets = "GET /assets/"
)

// contentSecurityPolicy allows nothing but this origin: no inline script,
// no third-party resource.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

type file struct {
	data  []byte
	etag  string
	ctype string
}

// Handler serves the dashboard: "/" is index.html, "/assets/…" the assets,
// each with a strong ETag (revalidated on every load: Cache-Control
// no-cache) and a strict Content-Security-Policy. Other paths get 404.
func Handler() http.Handler {
	files := map[string]file{}
	_ = fs.WalkDir(FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(FS(), p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = http.DetectContentType(b)
		}
		files["/"+p] = file{data: b, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, ctype: ct}
		return nil
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if p == "/" {
			p = "/index.html"
		}
		f, ok := files[p]
		if !ok || strings.HasPrefix(p, "/index.html") && r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("ETag", f.etag)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.data))
	})
}

// Routes registers the dashboard on mux: PatternIndex and PatternAssets.
//
// mux is an *http.ServeMux or an httpx.RecordingMux.
func Routes(mux interface{ Handle(string, http.Handler) }) {
	h := Handler()
	mux.Handle(PatternIndex, h)
	mux.Handle(PatternAssets, h)
}
