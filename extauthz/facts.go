package extauthz

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/llmedge/llmedge/internal/wire"
)

// Facts are what a request says about itself that the ledger and model-scoped quotas read:
// the model it asks for and whether it asked for a stream. With extauthz as a process,
// Envoy's header_to_metadata (Gemini's path) and json_to_metadata (the body) write them
// into the llmedge.request dynamic metadata; inside Envoy the module reads them itself
// (RequestFacts) and writes the same metadata, so every reader sees the same values.
type Facts struct {
	// Model is the body's top-level "model" string, or else the model a Gemini path names;
	// "" for none.
	Model string
	// Stream is the body's top-level "stream" boolean; StreamSet says the body had one.
	Stream, StreamSet bool
}

var geminiModelPath = regexp.MustCompile(wire.GeminiModelPath)

// RequestFacts reads the facts of a request from its :path and its body (nil when the
// body was not read). It reads what the two Envoy filters read, the same way: a body that
// is not a JSON object gives nothing, a "model" that is not a string and a "stream" that
// is not a boolean are not facts, and a body's model wins over the path's.
func RequestFacts(path string, body []byte) Facts {
	var f Facts
	if strings.Contains(path, "/models/") {
		if m := geminiModelPath.FindStringSubmatch(path); m != nil {
			f.Model = strings.ToValidUTF8(m[1], "\uFFFD")
		}
	}
	if len(body) == 0 || !json.Valid(body) {
		return f
	}
	members(body, func(key, value []byte) {
		switch string(key) {
		case wire.RequestMetadataModel:
			if value[0] != '"' {
				return
			}
			if s := unquote(value); s != "" {
				f.Model = s
			}
		case wire.RequestMetadataStream:
			switch string(value) {
			case "true":
				f.Stream, f.StreamSet = true, true
			case "false":
				f.Stream, f.StreamSet = false, true
			}
		}
	})
	return f
}

// unquote decodes a JSON string (valid, quotes included) as encoding/json does: escapes
// decoded, and bytes that are not UTF-8 replaced with U+FFFD, so what it returns is always
// valid UTF-8 (a model goes into protobuf strings: quota descriptors, the ledger's entry).
func unquote(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b) {
		return string(b[1 : len(b)-1])
	}
	var s string
	if json.Unmarshal(b, &s) != nil {
		return ""
	}
	return s
}

// members calls fn with each top-level member of b, valid JSON, if b is an object: its key
// decoded and its value's raw bytes. A key given twice is called twice, so the last wins.
func members(b []byte, fn func(key, value []byte)) {
	i := space(b, 0)
	if i >= len(b) || b[i] != '{' {
		return
	}
	i = space(b, i+1)
	for i < len(b) && b[i] == '"' {
		end := skip(b, i)
		key := b[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			key = []byte(unquote(b[i:end]))
		}
		i = space(b, end)
		if i >= len(b) || b[i] != ':' {
			return
		}
		i = space(b, i+1)
		end = skip(b, i)
		fn(key, b[i:end])
		i = space(b, end)
		if i >= len(b) || b[i] != ',' {
			return
		}
		i = space(b, i+1)
	}
}

func space(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skip returns the index just past the value that starts at b[i], in valid JSON.
func skip(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1
			}
		}
		return len(b)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skip(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	default: // a number, true, false or null
		j := i
		for j < len(b) && !strings.ContainsRune(",}] \t\n\r", rune(b[j])) {
			j++
		}
		return j
	}
}
