package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"strings"
	"syscall"
	"testing"

	"github.com/llmedge/llmedge/extauthz"
)

// bodyCase is a body and what body.h must read from it: model and stream are the raw
// values of the top-level members, "" when absent (a JSON value is never empty).
type bodyCase struct {
	name, in      string
	kind          int
	model, stream string
}

// nested is depth arrays (or objects, `{"a":` each) around 1.
func nested(depth int, objects bool) string {
	if objects {
		return strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth)
	}
	return strings.Repeat("[", depth) + "1" + strings.Repeat("]", depth)
}

var bodyCases = []bodyCase{
	// Values that are not objects.
	{"empty array", `[]`, bodyOther, "", ""},
	{"array", `[1, "a", null, true, false, [], {}]`, bodyOther, "", ""},
	{"string", `"s"`, bodyOther, "", ""},
	{"zero", `0`, bodyOther, "", ""},
	{"minus zero", `-0`, bodyOther, "", ""},
	{"integer", `123`, bodyOther, "", ""},
	{"negative", `-1`, bodyOther, "", ""},
	{"fraction", `1.5`, bodyOther, "", ""},
	{"minus zero fraction", `-0.0`, bodyOther, "", ""},
	{"exponent", `1e5`, bodyOther, "", ""},
	{"capital exponent", `1E5`, bodyOther, "", ""},
	{"exponent plus", `1e+5`, bodyOther, "", ""},
	{"exponent minus", `-1.25E-05`, bodyOther, "", ""},
	{"zero exponent", `0e0`, bodyOther, "", ""},
	{"true", `true`, bodyOther, "", ""},
	{"false", `false`, bodyOther, "", ""},
	{"null", `null`, bodyOther, "", ""},
	{"spaces around a value", " \t\r\n1 \t\r\n", bodyOther, "", ""},
	{"model in an array", `[{"model":"x"}]`, bodyOther, "", ""},
	{"every short escape", `"\"\\\/\b\f\n\r\t"`, bodyOther, "", ""},
	{"unicode escapes", `"\u0041\uabcd\uABCD\uD800"`, bodyOther, "", ""},
	{"bytes from 0x80", "\"\x7f\x80\xbf\xff\"", bodyOther, "", ""},
	{"not UTF-8", "\"\xc3\x28 \xed\xa0\x80 \xf8\x88\x80\x80\x80\"", bodyOther, "", ""},

	// Not JSON.
	{"nothing", ``, bodyInvalid, "", ""},
	{"spaces only", " \t\r\n", bodyInvalid, "", ""},
	{"open object", `{`, bodyInvalid, "", ""},
	{"close object", `}`, bodyInvalid, "", ""},
	{"open array", `[`, bodyInvalid, "", ""},
	{"close array", `]`, bodyInvalid, "", ""},
	{"object closed as array", `{]`, bodyInvalid, "", ""},
	{"array closed as object", `[}`, bodyInvalid, "", ""},
	{"nested mismatch", `{"a":[}]`, bodyInvalid, "", ""},
	{"key only", `{"a"}`, bodyInvalid, "", ""},
	{"no value", `{"a":}`, bodyInvalid, "", ""},
	{"no colon", `{"a" 1}`, bodyInvalid, "", ""},
	{"two colons", `{"a"::1}`, bodyInvalid, "", ""},
	{"bare key", `{a:1}`, bodyInvalid, "", ""},
	{"single quotes", `{'a':1}`, bodyInvalid, "", ""},
	{"number key", `{1:1}`, bodyInvalid, "", ""},
	{"trailing comma in object", `{"a":1,}`, bodyInvalid, "", ""},
	{"trailing comma in array", `[1,]`, bodyInvalid, "", ""},
	{"leading comma", `[,1]`, bodyInvalid, "", ""},
	{"double comma", `[1,,2]`, bodyInvalid, "", ""},
	{"comma only", `{,}`, bodyInvalid, "", ""},
	{"no comma in array", `[1 2]`, bodyInvalid, "", ""},
	{"no comma in object", `{"a":1 "b":2}`, bodyInvalid, "", ""},
	{"extra close", `{"a":1}}`, bodyInvalid, "", ""},
	{"two values", `{"a":1}{}`, bodyInvalid, "", ""},
	{"two numbers", `1 2`, bodyInvalid, "", ""},
	{"trailing slash", `{"a":1}/`, bodyInvalid, "", ""},
	{"comment", `/*c*/{}`, bodyInvalid, "", ""},
	{"leading zero", `01`, bodyInvalid, "", ""},
	{"negative leading zero", `-01`, bodyInvalid, "", ""},
	{"double zero", `[00]`, bodyInvalid, "", ""},
	{"minus alone", `-`, bodyInvalid, "", ""},
	{"minus in array", `[-]`, bodyInvalid, "", ""},
	{"double minus", `--1`, bodyInvalid, "", ""},
	{"plus", `+1`, bodyInvalid, "", ""},
	{"dot at end", `1.`, bodyInvalid, "", ""},
	{"dot before exponent", `1.e5`, bodyInvalid, "", ""},
	{"leading dot", `.1`, bodyInvalid, "", ""},
	{"bare exponent", `1e`, bodyInvalid, "", ""},
	{"exponent sign only", `1e+`, bodyInvalid, "", ""},
	{"exponent in array", `[1E-]`, bodyInvalid, "", ""},
	{"double exponent", `1ee5`, bodyInvalid, "", ""},
	{"two dots", `1.5.3`, bodyInvalid, "", ""},
	{"hex", `0x10`, bodyInvalid, "", ""},
	{"infinity", `Infinity`, bodyInvalid, "", ""},
	{"nan", `[NaN]`, bodyInvalid, "", ""},
	{"short true", `tru`, bodyInvalid, "", ""},
	{"long true", `truee`, bodyInvalid, "", ""},
	{"capital true", `True`, bodyInvalid, "", ""},
	{"short null", `{"a":nul}`, bodyInvalid, "", ""},
	{"long null", `nulll`, bodyInvalid, "", ""},
	{"short false", `fals`, bodyInvalid, "", ""},
	{"literal then letters", `[falsey]`, bodyInvalid, "", ""},
	{"number then letter", `[1true]`, bodyInvalid, "", ""},
	{"open string", `"abc`, bodyInvalid, "", ""},
	{"escaped close quote", `"\"`, bodyInvalid, "", ""},
	{"escape at end", `"\`, bodyInvalid, "", ""},
	{"unknown escape", `"\x41"`, bodyInvalid, "", ""},
	{"capital U escape", `"\U0041"`, bodyInvalid, "", ""},
	{"escaped single quote", `"\'"`, bodyInvalid, "", ""},
	{"escaped zero", `"\0"`, bodyInvalid, "", ""},
	{"three hex digits", `"\u123"`, bodyInvalid, "", ""},
	{"three hex digits at end", `"\u123`, bodyInvalid, "", ""},
	{"not hex", `"\u123g"`, bodyInvalid, "", ""},
	{"NUL in a string", "\"a\x00b\"", bodyInvalid, "", ""},
	{"0x1f in a string", "\"a\x1fb\"", bodyInvalid, "", ""},
	{"newline in a string", "\"a\nb\"", bodyInvalid, "", ""},
	{"tab in a string", "\"a\tb\"", bodyInvalid, "", ""},
	{"NUL alone", "\x00", bodyInvalid, "", ""},
	{"NUL after", "{}\x00", bodyInvalid, "", ""},
	{"NUL before", "\x00{}", bodyInvalid, "", ""},
	{"NUL inside", "{\x00}", bodyInvalid, "", ""},
	{"NUL after a number", "1\x00", bodyInvalid, "", ""},
	{"form feed is not space", "{} \f", bodyInvalid, "", ""},
	{"vertical tab is not space", "\v{}", bodyInvalid, "", ""},
	{"byte order mark", "\xef\xbb\xbf{}", bodyInvalid, "", ""},
	{"no-break space", "{}\xc2\xa0", bodyInvalid, "", ""},
	{"0x80 outside strings", "[\x80]", bodyInvalid, "", ""},

	// Objects and their facts.
	{"empty object", `{}`, bodyObject, "", ""},
	{"spaces around an object", "\t\n\r { \t\n\r } \t\n\r", bodyObject, "", ""},
	{"openai", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`, bodyObject, `"gpt-4o"`, `true`},
	{"spaces and order", " \n{ \"messages\" : [ {\"model\":\"inner\"} ] ,\t\"stream\" : false , \"model\" : \"claude\" }\n",
		bodyObject, `"claude"`, `false`},
	{"spaces in members", "{\r\n\t\"model\"\r\n\t:\r\n\t\"m\"\r\n\t,\"stream\"\t:\ttrue\n}", bodyObject, `"m"`, `true`},
	{"model last", `{"a":[1,2],"b":{},"model":"m"}`, bodyObject, `"m"`, ""},
	{"model a number", `{"model":12.5e3}`, bodyObject, `12.5e3`, ""},
	{"model negative at end", `{"model":-0}`, bodyObject, `-0`, ""},
	{"model an object", `{"model":{"a":[1,"}]"],"b":{"c":null}},"x":1}`, bodyObject, `{"a":[1,"}]"],"b":{"c":null}}`, ""},
	{"model an empty object", `{"model":{}}`, bodyObject, `{}`, ""},
	{"model an array", `{"model":[ ]}`, bodyObject, `[ ]`, ""},
	{"model null", `{"model":null,"stream":null}`, bodyObject, `null`, `null`},
	{"model true", `{"model":true}`, bodyObject, `true`, ""},
	{"model empty", `{"model":""}`, bodyObject, `""`, ""},
	{"model with escapes", `{"model":"gpt-\u00e9\"q\\"}`, bodyObject, `"gpt-\u00e9\"q\\"`, ""},
	{"model not UTF-8", "{\"model\":\"a\xffb\"}", bodyObject, "\"a\xffb\"", ""},
	{"model with 0x80 and up", "{\"model\":\"\xe2\x82\xac\x80\"}", bodyObject, "\"\xe2\x82\xac\x80\"", ""},
	{"stream false", `{"stream":false}`, bodyObject, "", `false`},
	{"stream a string", `{"stream":"true"}`, bodyObject, "", `"true"`},
	{"stream a number", `{"stream":1}`, bodyObject, "", `1`},
	{"stream an object", `{"stream":{"stream":true}}`, bodyObject, "", `{"stream":true}`},
	{"nested model is not the request's", `{"metadata":{"model":"x","stream":true},"input":"a"}`, bodyObject, "", ""},
	{"model in a nested array", `{"messages":[{"model":"x"}],"model":"y"}`, bodyObject, `"y"`, ""},
	{"model in a string", `{"a":"\"model\":\"x\"","b":"stream"}`, bodyObject, "", ""},
	{"model as a value", `{"a":"model","stream":"stream"}`, bodyObject, "", `"stream"`},
	{"keys are case-sensitive", `{"Model":"a","STREAM":true}`, bodyObject, "", ""},
	{"near keys", `{"mode":1,"models":2,"model ":3," model":4,"streams":5,"strea":6}`, bodyObject, "", ""},
	{"empty key", `{"":1,"model":"m"}`, bodyObject, `"m"`, ""},
	{"a key not UTF-8", "{\"mod\xffel\":\"x\",\"model\":\"m\"}", bodyObject, `"m"`, ""},
	{"other keys twice", `{"model":"a","x":1,"x":2,"stream":true}`, bodyObject, `"a"`, `true`},
	{"model twice in a nested object", `{"a":{"model":1,"model":2},"model":"m"}`, bodyObject, `"m"`, ""},
	{"escaped key in a nested object", `{"a":{"b\n":1,"mod\u0065l":2},"model":"m"}`, bodyObject, `"m"`, ""},
	{"escaped values", `{"a":"\\\"\u0000","model":"m"}`, bodyObject, `"m"`, ""},

	// Objects body.h leaves to Go.
	{"model twice", `{"model":"a","model":"b"}`, bodyComplex, "", ""},
	{"model twice, other types", `{"model":1,"stream":true,"model":{}}`, bodyComplex, "", ""},
	{"stream twice", `{"stream":true,"stream":false}`, bodyComplex, "", ""},
	{"escaped model key", `{"mod\u0065l":"x"}`, bodyComplex, "", ""},
	{"all escaped model key", `{"\u006d\u006f\u0064\u0065\u006c":"x"}`, bodyComplex, "", ""},
	{"escaped stream key", `{"stre\u0061m":true}`, bodyComplex, "", ""},
	{"another escaped key", `{"a\"b":1,"model":"m"}`, bodyComplex, "", ""},
	{"escaped slash in a key", `{"model":"m","a\/b":1}`, bodyComplex, "", ""},

	// Objects that are not JSON.
	{"cut after a member", `{"model":"a",`, bodyInvalid, "", ""},
	{"cut in a string", `{"model":"a`, bodyInvalid, "", ""},
	{"cut in a key", `{"mod`, bodyInvalid, "", ""},
	{"trailing bytes", `{"model":"a"} x`, bodyInvalid, "", ""},
	{"a second object", `{"model":"a"}{`, bodyInvalid, "", ""},
	{"twice and not JSON", `{"model":"a","model":"b",}`, bodyInvalid, "", ""},
	{"escaped key and not JSON", `{"mod\u0065l":"x"`, bodyInvalid, "", ""},

	// Nesting: encoding/json accepts 10000 arrays and objects inside each other, not 10001.
	{"10000 arrays", nested(10000, false), bodyOther, "", ""},
	{"10001 arrays", nested(10001, false), bodyInvalid, "", ""},
	{"10000 objects", nested(10000, true), bodyObject, "", ""},
	{"10001 objects", nested(10001, true), bodyInvalid, "", ""},
	{"10000 empty arrays", strings.Repeat("[", 10000) + strings.Repeat("]", 10000), bodyOther, "", ""},
	{"10001 empty arrays", strings.Repeat("[", 10001) + strings.Repeat("]", 10001), bodyInvalid, "", ""},
	{"10000 deep in a body", `{"x":` + nested(9999, false) + `,"model":"m"}`, bodyObject, `"m"`, ""},
	{"10001 deep in a body", `{"x":` + nested(10000, false) + `,"model":"m"}`, bodyInvalid, "", ""},
	{"10000 deep, mixed", strings.Repeat(`[{"a":`, 5000) + "1" + strings.Repeat("}]", 5000), bodyOther, "", ""},
	{"10001 deep, mixed", strings.Repeat(`[{"a":`, 5000) + "[1]" + strings.Repeat("}]", 5000), bodyInvalid, "", ""},
	{"10000 deep model", `{"model":` + nested(9999, true) + `}`, bodyObject, nested(9999, true), ""},
	{"10000 open arrays", strings.Repeat("[", 10000), bodyInvalid, "", ""},
	{"10001 open arrays", strings.Repeat("[", 10001), bodyInvalid, "", ""},
}

var kindNames = map[int]string{bodyInvalid: "INVALID", bodyOther: "OTHER", bodyObject: "OBJECT", bodyComplex: "COMPLEX"}

// show quotes a body for a failure message, cut if it is long.
func show(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%q… (%d bytes)", b[:300], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// fence is memory an inaccessible page follows (see fenced).
var fence []byte

// fenced copies b to the end of fence, right before its inaccessible page, so that body.h
// reading past the end of a body crashes the test. The copy lasts until the next call.
func fenced(t testing.TB, b []byte) []byte {
	page := syscall.Getpagesize()
	if need := (len(b)+page-1)/page*page + page; len(fence) < need {
		if fence != nil {
			if err := syscall.Munmap(fence); err != nil {
				t.Fatal(err)
			}
			fence = nil
		}
		mem, err := syscall.Mmap(-1, 0, need, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mprotect(mem[need-page:], syscall.PROT_NONE); err != nil {
			t.Fatal(err)
		}
		fence = mem
	}
	end := len(fence) - page
	out := fence[end-len(b) : end : end]
	copy(out, b)
	return out
}

func TestBodyCases(t *testing.T) {
	for _, c := range bodyCases {
		t.Run(c.name, func(t *testing.T) {
			b := []byte(c.in)
			kind, model, stream, hasModel, hasStream := scanBody(fenced(t, b))
			if kind != c.kind || string(model) != c.model || string(stream) != c.stream ||
				hasModel != (c.model != "") || hasStream != (c.stream != "") {
				t.Fatalf("body.h reads %s as %s model %q stream %q, want %s model %q stream %q", show(b),
					kindNames[kind], model, stream, kindNames[c.kind], c.model, c.stream)
			}
			checkBody(t, b)
		})
	}
}

// bodyRef is what body.h must read from a body, found with encoding/json alone.
type bodyRef struct {
	kind          int
	model, stream []byte // the members' raw values; nil when absent (or the kind is not OBJECT)
}

// referenceScan reads b with encoding/json: json.Valid, then a Decoder over the top-level
// object, a key at a time (Token) and each value's raw bytes (Decode into a RawMessage).
func referenceScan(b []byte) (bodyRef, error) {
	if !json.Valid(b) {
		return bodyRef{kind: bodyInvalid}, nil
	}
	if b[len(b)-len(bytes.TrimLeft(b, " \t\r\n"))] != '{' {
		return bodyRef{kind: bodyOther}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return bodyRef{}, fmt.Errorf("first token %v, %v", tok, err)
	}
	var ref bodyRef
	count := map[string]int{}
	escaped := false
	for dec.More() {
		from := dec.InputOffset()
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return bodyRef{}, fmt.Errorf("key token %v, %v", tok, err)
		}
		// The key as written: from its opening quote (only space and a comma come before
		// it) to where the Decoder stopped, after its closing quote.
		raw := b[from:dec.InputOffset()]
		raw = bytes.TrimRight(raw[bytes.IndexByte(raw, '"'):], " \t\r\n")
		if raw[0] != '"' || raw[len(raw)-1] != '"' {
			return bodyRef{}, fmt.Errorf("key %q read from %q", key, raw)
		}
		escaped = escaped || bytes.IndexByte(raw, '\\') >= 0
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return bodyRef{}, fmt.Errorf("value of %q: %v", key, err)
		}
		value = bytes.Trim(value, " \t\r\n")
		count[key]++
		switch key {
		case "model":
			ref.model = value
		case "stream":
			ref.stream = value
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return bodyRef{}, fmt.Errorf("last token %v, %v", tok, err)
	}
	if escaped || count["model"] > 1 || count["stream"] > 1 {
		return bodyRef{kind: bodyComplex}, nil
	}
	ref.kind = bodyObject
	return ref, nil
}

// factPaths are the paths checkBody reads facts with: one that names no model, one that
// names Gemini's.
var factPaths = []string{"/v1/chat/completions", "/v1beta/models/gemini-2.5-pro:generateContent"}

// checkBody asserts that body.h reads b as Go does: llmedge_json_valid is json.Valid, the
// kind and members are referenceScan's, and for an OBJECT what body.h gives the fast path
// (the raw values of "model" and "stream") determines extauthz.RequestFacts. It returns
// the kind and whether body.h found each member. body.h reads a fenced copy of b.
func checkBody(t testing.TB, b []byte) (kind int, hasModel, hasStream bool) {
	t.Helper()
	valid := json.Valid(b)
	if got := jsonValidC(fenced(t, b)); got != valid {
		t.Fatalf("llmedge_json_valid(%s) = %v, json.Valid = %v", show(b), got, valid)
	}
	kind, model, stream, hasModel, hasStream := scanBody(fenced(t, b))
	ref, err := referenceScan(b)
	if err != nil {
		t.Fatalf("encoding/json reading %s: %v", show(b), err)
	}
	if kind != ref.kind || !bytes.Equal(model, ref.model) || !bytes.Equal(stream, ref.stream) ||
		hasModel != (ref.model != nil) || hasStream != (ref.stream != nil) {
		t.Fatalf("body.h reads %s as %s model %q (%v) stream %q (%v); encoding/json as %s model %q stream %q", show(b),
			kindNames[kind], model, hasModel, stream, hasStream, kindNames[ref.kind], ref.model, ref.stream)
	}
	for _, path := range factPaths {
		got := extauthz.RequestFacts(path, b)
		want := extauthz.RequestFacts(path, nil) // what the path alone says
		switch kind {
		case bodyComplex:
			continue // left to Go
		case bodyObject:
			if hasModel && model[0] == '"' {
				var s string
				if err := json.Unmarshal(model, &s); err != nil {
					t.Fatalf("model %q of %s: %v", model, show(b), err)
				}
				if s != "" {
					want.Model = s
				}
			}
			switch string(stream) {
			case "true":
				want.Stream, want.StreamSet = true, true
			case "false":
				want.StreamSet = true
			}
		}
		if got != want {
			t.Fatalf("RequestFacts(%q, %s) = %+v, but body.h's %s model %q stream %q say %+v", path, show(b), got,
				kindNames[kind], model, stream, want)
		}
	}
	return kind, hasModel, hasStream
}

// bodySeeds are realistic request bodies, the mutation test's starting points (the last
// three are not objects).
var bodySeeds = []string{
	`{"model":"gpt-4o","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello!"}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.7,"max_tokens":1024}`,
	`{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say \"hi\" in French\n"}], "stream": false, "n": 1, "top_p": 1.0, "presence_penalty": -0.5, "logit_bias": {"50256": -100}}`,
	"{\n  \"model\": \"claude-sonnet-4-5\",\n  \"max_tokens\": 1024,\n  \"system\": [{\"type\": \"text\", \"text\": \"Be brief.\", \"cache_control\": {\"type\": \"ephemeral\"}}],\n  \"messages\": [\n    {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Bonjour, \u00e7a va ?\"}]}\n  ],\n  \"stream\": true\n}\n",
	`{"messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","model":"gpt-4.1","stream":true}`,
	`{"model":"text-embedding-3-small","input":["first \u00e9 line","second\tline"],"encoding_format":"float","dimensions":256}`,
	`{"model":"o3-mini","messages":[{"role":"developer","content":"Reply in JSON: {\"ok\":true}"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":[1,2.5e-3,-7]}"}}]}],"reasoning_effort":"low","seed":42,"stop":["\n\n","END"],"metadata":{"model":"inner","stream":false}}`,
	`{"model":"claude-3-5-haiku-latest","max_tokens":256,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"text","text":"Describe \\ this \/ image"}]}],"temperature":0,"stream":false,"stop_sequences":[]}`,
	"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 and \xff\xfe not UTF-8\"}],\"user\":\"u-1\",\"stream\":true}",
	`{"contents":[{"role":"user","parts":[{"text":"Write a haiku"}]}],"generationConfig":{"temperature":1,"maxOutputTokens":100,"stopSequences":[]},"safetySettings":[]}`,
	`{"stream":true,"model":"","messages":[]}`,
	// Not objects: a batch, and values alone.
	`[{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]},{"model":"o3","stream":false}]`,
	` "gpt-4o" `,
	`-12.5e+3`,
}

// bodyTokens are what the mutations insert besides single bytes: member names, escapes and
// values, so that mutated bodies repeat members, escape their names and change types.
var bodyTokens = []string{
	`"model":`, `"stream":`, `"model":"m",`, `"stream":true,`, `"stream":false,`, `,"model":1`, `{"model":"x"}`,
	`\u0065`, `\u00e9`, `\"`, `\\`, `\u12`, `true`, `false`, `null`, `""`, `{}`, `[]`, `-0.5e+3`, `01`,
	" ", "\n", "\t", "\r", "\xc3\xa9", "\xff",
}

// bodyBytes are the bytes the mutations write: JSON's significant bytes and edges of the
// ranges the grammar tells apart.
var bodyBytes = []byte("{}[]\",:\\ \t\n\r\v\f0123456789eE.+-tfnlu\x00\x1f\x7f\x80\xff")

// mutate changes a copy of b one to three times: a byte rewritten, a span deleted, a byte
// or token inserted, a span repeated elsewhere, the end cut off.
func mutate(r *rand.Rand, b []byte) []byte {
	b = append([]byte(nil), b...)
	for n := 1 + r.Intn(3); n > 0; n-- {
		if len(b) == 0 {
			b = append(b, bodyBytes[r.Intn(len(bodyBytes))])
			continue
		}
		i := r.Intn(len(b))
		switch r.Intn(6) {
		case 0:
			b[i] = bodyBytes[r.Intn(len(bodyBytes))]
		case 1:
			j := min(len(b), i+1+r.Intn(8))
			b = append(b[:i], b[j:]...)
		case 2:
			b = append(b[:i], append([]byte{bodyBytes[r.Intn(len(bodyBytes))]}, b[i:]...)...)
		case 3:
			tok := bodyTokens[r.Intn(len(bodyTokens))]
			b = append(b[:i], append([]byte(tok), b[i:]...)...)
		case 4:
			j := min(len(b), i+1+r.Intn(40))
			span := append([]byte(nil), b[i:j]...)
			k := r.Intn(len(b) + 1)
			b = append(b[:k], append(span, b[k:]...)...)
		case 5:
			b = b[:i]
		}
	}
	return b
}

// TestBodyMutations holds body.h to encoding/json and RequestFacts over mutations of
// realistic bodies, the same ones on every run.
func TestBodyMutations(t *testing.T) {
	const mutations = 200000
	r := rand.New(rand.NewSource(20260817))
	kinds := map[int]int{}
	models, streams := 0, 0
	for i, s := range bodySeeds {
		want := bodyObject
		if i >= len(bodySeeds)-3 {
			want = bodyOther
		}
		if k, _, _ := checkBody(t, []byte(s)); k != want {
			t.Fatalf("seed %q is %s, want %s", s, kindNames[k], kindNames[want])
		}
	}
	for range mutations {
		b := mutate(r, []byte(bodySeeds[r.Intn(len(bodySeeds))]))
		kind, hasModel, hasStream := checkBody(t, b)
		kinds[kind]++
		if kind == bodyObject && hasModel {
			models++
		}
		if kind == bodyObject && hasStream {
			streams++
		}
	}
	t.Logf("%d mutations: %d not JSON, %d not objects, %d objects (%d with a model, %d with a stream), %d left to Go",
		mutations, kinds[bodyInvalid], kinds[bodyOther], kinds[bodyObject], models, streams, kinds[bodyComplex])
	// The mutations must reach every kind, often enough to mean something.
	for _, k := range []int{bodyInvalid, bodyOther, bodyObject, bodyComplex} {
		if kinds[k] < mutations/1000 {
			t.Errorf("only %d of %d mutations are %s", kinds[k], mutations, kindNames[k])
		}
	}
}

func FuzzBodyScan(f *testing.F) {
	for _, c := range bodyCases {
		// The nesting cases are left to TestBodyCases: the fuzzer would spend its time
		// minimizing their tens of kilobytes.
		if len(c.in) <= 1024 {
			f.Add([]byte(c.in))
		}
	}
	for _, s := range bodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkBody(t, b)
	})
}
