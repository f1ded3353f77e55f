// Package page is the control plane's read-only status page: static assets embedded in
// the binary, served at / on the control plane's HTTP port. The page's own script polls
// /status (and /usage when the ledger is on) and draws everything in the browser, so the
// page needs no build step, no CDN and no server-side templates; it shows only what
// /status and /usage already expose, which never includes a token or key.
package page

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Prefix is where the page's script and style sheet are served.
const Prefix = "/page/"

// Handler serves the page at / and its assets under Prefix.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		// Unreachable: the directory is embedded at build time.
		return http.NotFoundHandler()
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		header(w)
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux.Handle("GET "+Prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header(w)
		files.ServeHTTP(w, r)
	}))
	return mux
}

// header locks the page to its own origin: no inline script, no third-party anything,
// not framable.
func header(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}
