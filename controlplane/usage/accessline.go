package usage

import (
	"net"
	"net/url"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"

	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

// Line is one access log line: the ledger's record plus what an audit of the request
// needs from Envoy's entry. It is built from chosen fields only — never from the request
// or response header maps, which carry the caller's token and the provider's key — and
// every string the caller chose passes through the masking below first.
type Line struct {
	Record
	Method string `json:"method"`
	// Path is the request path without its query string (Gemini's ?key= and anything a
	// caller appends), with segments shaped like a credential masked.
	Path      string `json:"path"`
	UserAgent string `json:"user_agent,omitempty"`
	// ClientAddress is the caller as the edge saw it: Envoy's downstream remote address,
	// which honours use_remote_address and the trusted X-Forwarded-For hops. PeerAddress
	// is the TCP peer (a load balancer in front of the edge, say).
	ClientAddress   string   `json:"client_address,omitempty"`
	PeerAddress     string   `json:"peer_address,omitempty"`
	ResponseFlags   []string `json:"response_flags,omitempty"`
	ResponseDetails string   `json:"response_details,omitempty"`
	UpstreamHost    string   `json:"upstream_host,omitempty"`
	UpstreamCluster string   `json:"upstream_cluster,omitempty"`
}

// Masked stands in for anything that looks like a credential (Envoy's own access log
// writes the same).
const Masked = wire.Masked

// LineFromEntry builds the access log line of a record the ledger accepted (priced, with
// its request id) and the entry it was read from.
func LineFromEntry(r Record, e *accesslogdatav3.HTTPAccessLogEntry) Line {
	return entryOf(e).line(r)
}

// line is the access log line of r, read from e.
func (e *logEntry) line(r Record) Line {
	r.RequestID = maskWords(r.RequestID)
	r.RequestedModel = maskWords(r.RequestedModel)
	r.ReportedModel = maskWords(r.ReportedModel)
	l := Line{
		Record:          r,
		Path:            MaskPath(e.path),
		UserAgent:       clip(maskWords(e.userAgent)),
		ClientAddress:   e.client.text(false),
		PeerAddress:     e.peer.text(true),
		ResponseFlags:   flagList(e.flags),
		ResponseDetails: clip(e.details),
		UpstreamHost:    e.upstreamHost.text(true),
		UpstreamCluster: clip(e.cluster),
	}
	if e.method != int32(corev3.RequestMethod_METHOD_UNSPECIFIED) {
		l.Method = corev3.RequestMethod(e.method).String()
	}
	return l
}

// MaskPath drops the query string and fragment and masks every path segment shaped like
// a credential. Segments are checked percent-decoded, so an encoded key is caught too.
func MaskPath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		d, err := url.PathUnescape(s)
		if err != nil {
			d = s
		}
		if i := strings.IndexAny(d, "?#"); i >= 0 { // an encoded query: drop it as well
			d, s = d[:i], url.PathEscape(d[:i])
		}
		if secretWord(d) || opaque(d) {
			s = Masked
		}
		segs[i] = s
	}
	return clip(strings.Join(segs, "/"))
}

// maskWords masks the space-separated words of s shaped like a credential (a user agent
// can carry anything its author put there).
func maskWords(s string) string {
	if s == "" {
		return s
	}
	words := strings.Fields(s)
	changed := false
	for i, w := range words {
		if secretWord(w) {
			words[i], changed = Masked, true
		}
	}
	if !changed {
		return s
	}
	return strings.Join(words, " ")
}

// secretPrefixes start the credentials the edge handles: llmedge caller tokens and the
// providers' API keys (OpenAI and Anthropic sk-, Google AIza, Groq gsk_, xAI xai-).
var secretPrefixes = []string{"sk-", "sk_", "AIza", "gsk_", "xai-", "Bearer", "bearer"}

func secretWord(w string) bool {
	// "key=...", "token:..." and friends: look at what follows the separator too.
	for _, part := range strings.FieldsFunc(w, func(r rune) bool { return r == '=' || r == ':' || r == ',' || r == ';' }) {
		if token.LooksLike(part) {
			return true
		}
		for _, p := range secretPrefixes {
			if strings.HasPrefix(part, p) {
				return true
			}
		}
	}
	return false
}

// opaque reports a run of 32 or more letters, digits, '-' and '_' mixing letters and
// digits: the shape of a key or token with an unknown prefix. Provider paths are words
// ("chat", "completions", "gemini-2.5-pro:generateContent"); resource ids this long (a
// response id, say) are masked too, which an audit log can afford.
func opaque(s string) bool {
	if len(s) < 32 {
		return false
	}
	letters, digits := false, false
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
			letters = true
		case r >= '0' && r <= '9':
			digits = true
		case r == '-', r == '_':
		default:
			return false
		}
	}
	return letters && digits
}

// text prints the address: the IP alone when the port says nothing (a client address
// Envoy took from X-Forwarded-For has port 0).
func (a endpoint) text(withPort bool) string {
	switch {
	case a.kind == addressPipe:
		return "unix:" + a.pipe
	case a.kind != addressSocket || a.ip == "":
		return ""
	case !withPort || a.port == 0:
		return a.ip
	}
	return net.JoinHostPort(a.ip, strconv.FormatUint(uint64(a.port), 10))
}
