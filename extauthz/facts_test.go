package extauthz

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRequestFacts(t *testing.T) {
	for _, c := range []struct {
		name, path, body string
		want             Facts
	}{
		{"openai", "/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			Facts{Model: "gpt-4o", Stream: true, StreamSet: true}},
		{"spaces and order", "/v1/messages", " \n{ \"messages\" : [ {\"model\":\"inner\"} ] ,\t\"stream\" : false , \"model\" : \"claude\" }\n",
			Facts{Model: "claude", StreamSet: true}},
		{"nested model is not the request's", "/v1/chat", `{"metadata":{"model":"x","stream":true},"input":"a"}`, Facts{}},
		{"escaped key and value", "/v1/chat", `{"mod\u0065l":"gpt-\u00e9\"q","stream":true}`,
			Facts{Model: "gpt-é\"q", Stream: true, StreamSet: true}},
		{"a key is case-sensitive", "/v1/chat", `{"Model":"a","STREAM":true}`, Facts{}},
		{"the last of a key given twice", "/v1/chat", `{"model":"a","model":"b","stream":true,"stream":false}`,
			Facts{Model: "b", StreamSet: true}},
		{"not a string, not a boolean", "/v1/chat", `{"model":12,"stream":"true"}`, Facts{}},
		{"null", "/v1/chat", `{"model":null,"stream":null}`, Facts{}},
		{"empty model", "/v1/chat", `{"model":""}`, Facts{}},
		{"strings holding braces", "/v1/chat", `{"a":"}{][\"\\","b":[1,{"c":"]"}],"model":"m"}`, Facts{Model: "m"}},
		{"not UTF-8", "/v1/chat", "{\"model\":\"a\xffb\"}", Facts{Model: "a\ufffdb"}},
		{"not JSON", "/v1/chat", `{"model":"a",`, Facts{}},
		{"trailing bytes", "/v1/chat", `{"model":"a"} x`, Facts{}},
		{"an array", "/v1/chat", `[{"model":"a"}]`, Facts{}},
		{"gemini path", "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=AIzaX", `{"contents":[]}`,
			Facts{Model: "gemini-2.5-pro"}},
		{"gemini path, no body", "/v1beta/models/gemini-2.5-flash:generateContent", "", Facts{Model: "gemini-2.5-flash"}},
		{"a body's model wins over the path's", "/v1beta/models/a:generateContent", `{"model":"b"}`, Facts{Model: "b"}},
		{"the path's when the body's is empty", "/v1beta/models/a:generateContent", `{"model":""}`, Facts{Model: "a"}},
		{"gemini path, not UTF-8", "/v1beta/models/g\xff:generateContent", "", Facts{Model: "g\ufffd"}},
		{"no model in other paths", "/v1beta/models/x:countTokens?key=AIzaSECRET", "", Facts{}},
		{"never the query", "/v1beta/models?key=AIzaSECRET", "", Facts{}},
	} {
		if got := RequestFacts(c.path, []byte(c.body)); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}

// reference reads the facts with encoding/json (exact keys, the last of duplicates).
func reference(body []byte) (model string, stream, streamSet bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return
	}
	if v, ok := m["model"]; ok && len(v) > 0 && v[0] == '"' {
		_ = json.Unmarshal(v, &model)
	}
	if v, ok := m["stream"]; ok {
		switch string(v) {
		case "true":
			stream, streamSet = true, true
		case "false":
			streamSet = true
		}
	}
	return
}

// The hand-written scanner agrees with encoding/json on every prefix and single-byte
// corruption of a set of request bodies.
func TestRequestFactsAgreesWithEncodingJSON(t *testing.T) {
	bodies := []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"a \"quoted\" }{ text \\"}],"stream":true,"n":1.5e3,"x":null,"y":[true,false,{}]}`,
		`{"input":{"model":"nested","stream":true},"model":"top","temperature":-0.2,"stream":false}`,
		` { "stream" : true , "tools" : [ { "type" : "function" , "function" : { "name" : "f" , "parameters" : { } } } ] , "model" : "m\u00e9" } `,
	}
	seen := 0
	for _, b := range bodies {
		var cases [][]byte
		for i := 0; i <= len(b); i++ {
			cases = append(cases, []byte(b[:i]))
		}
		for i := 0; i < len(b); i++ {
			for _, c := range []byte(`"{}[],: x\`) {
				mut := []byte(b)
				mut[i] = c
				cases = append(cases, mut)
			}
		}
		for _, body := range cases {
			got := RequestFacts("/v1/chat/completions", body)
			model, stream, set := reference(body)
			if model != "" && json.Valid(body) {
				seen++
			}
			if got.Model != model || got.Stream != stream || got.StreamSet != set {
				t.Fatalf("%q: got %+v, encoding/json reads model %q stream %v (set %v)", body, got, model, stream, set)
			}
		}
	}
	if seen < 100 {
		t.Fatalf("only %d valid bodies with a model among the cases", seen)
	}
}

func FuzzRequestFacts(f *testing.F) {
	f.Add([]byte(`{"model":"a","stream":true}`))
	f.Add([]byte(`{"a":[{"model":"b"}],"model":"c\u0022"}`))
	f.Add([]byte("{\"model\":\"\xff\xfe\"}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		got := RequestFacts("/", body)
		model, stream, set := reference(body)
		if !json.Valid(body) || !strings.HasPrefix(strings.TrimLeft(string(body), " \t\r\n"), "{") {
			model, stream, set = "", false, false
		}
		if got.Model != model || got.Stream != stream || got.StreamSet != set || !utf8.ValidString(got.Model) {
			t.Fatalf("%q: got %+v, encoding/json reads model %q stream %v (set %v)", body, got, model, stream, set)
		}
	})
}

func BenchmarkRequestFacts(b *testing.B) {
	body := []byte(`{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one word."}],"stream":false,"max_tokens":16}`)
	for b.Loop() {
		RequestFacts("/openai/v1/chat/completions", body)
	}
}
