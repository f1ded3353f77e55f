package translate

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/llmedge/llmedge/internal/wire"
)

// The Gemini path rewrite writes only the model into metadata that travels to the ledger:
// never any other path, and never the query, which may carry ?key=.
func TestGeminiModelPath(t *testing.T) {
	re := regexp.MustCompile(wire.GeminiModelPath)
	for path, want := range map[string]string{
		"/v1beta/models/gemini-2.5-flash:generateContent":                    "gemini-2.5-flash",
		"/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse": "gemini-2.5-pro",
		"/v1beta/models/gemini-x:generateContent?key=AIzaSECRET":             "gemini-x",
		"/v1/chat/completions":                               "",
		"/v1beta/models?key=AIzaSECRET":                      "",
		"/v1beta/models/gemini-x:countTokens?key=AIzaSECRET": "",
		"/v1beta/models/x:generateContent/extra?key=s":       "",
	} {
		if got := re.ReplaceAllString(path, `${1}`); got != want {
			t.Errorf("%s -> %q, want %q", path, got, want)
		}
	}
}

// smallBodyRegex admits exactly the Content-Lengths json_to_metadata may hold.
func TestSmallBodyRegex(t *testing.T) {
	re := regexp.MustCompile(smallBodyRegex)
	for _, n := range []int{0, 9, 99, 9999, 10000, 29999, 31999, 32699, 32759, 32767} {
		if !re.MatchString(strconv.Itoa(n)) {
			t.Errorf("%d not admitted", n)
		}
	}
	for _, s := range []string{"32768", "32770", "40000", "99999", "100000", "", "-1", "1e3", " 12"} {
		if re.MatchString(s) {
			t.Errorf("%q admitted", s)
		}
	}
	if bufferLimitBytes != 32768 {
		t.Errorf("smallBodyRegex assumes a 32 KiB buffer limit, not %d", bufferLimitBytes)
	}
	// The module reads bodies up to the same length.
	if wire.BodyReadLimit != bufferLimitBytes-1 {
		t.Errorf("wire.BodyReadLimit %d, want %d", wire.BodyReadLimit, bufferLimitBytes-1)
	}
}
