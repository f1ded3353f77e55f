package page_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmedge/llmedge/controlplane/page"
)

func TestServesPageAndAssets(t *testing.T) {
	h := page.Handler()
	for _, tc := range []struct {
		path     string
		status   int
		ctype    string
		contains string
	}{
		{"/", 200, "text/html", `<script src="/page/page.js" defer></script>`},
		{"/page/page.js", 200, "javascript", "fetch("},
		{"/page/page.css", 200, "text/css", "@media"},
		{"/page/nope.js", 404, "", ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != tc.status {
			t.Errorf("GET %s: %d, want %d", tc.path, rec.Code, tc.status)
			continue
		}
		if rec.Code != 200 {
			continue
		}
		if ct := rec.Header().Get("Content-Type"); !strings.Contains(ct, tc.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, ct, tc.ctype)
		}
		if !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
		csp := rec.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: Content-Security-Policy %q; want own-origin scripts and fetches only", tc.path, csp)
		}
	}
}

// TestPageBuildsNoMarkupFromData pins how the script writes data: with textContent, never
// as HTML, and it loads nothing from another origin.
func TestPageBuildsNoMarkupFromData(t *testing.T) {
	for _, name := range []string{"/", "/page/page.js", "/page/page.css"} {
		rec := httptest.NewRecorder()
		page.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, name, nil))
		body := rec.Body.String()
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "http://", "https://", "//cdn"} {
			if strings.Contains(strings.ReplaceAll(body, "http://www.w3.org/2000/svg", ""), bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
	}
}
