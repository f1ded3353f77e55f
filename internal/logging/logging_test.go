package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// keys decodes one JSON line keeping every key as written, repeats included.
func keys(t *testing.T, line string) (names []string, vals map[string]any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	vals = map[string]any{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		names = append(names, k.(string))
		vals[k.(string)] = v
	}
	return names, vals
}

func TestNestedComponents(t *testing.T) {
	var b bytes.Buffer
	root := slog.New(Components(slog.NewJSONHandler(&b, nil)))
	l := root.With("component", "extauthz").With("component", "xds", "server", "cp").With("component", "xdsclient")
	l.Info("hello", "n", 1)
	names, vals := keys(t, b.String())
	count := 0
	for _, n := range names {
		if n == Key {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("%d %q keys in %s", count, Key, b.String())
	}
	if vals[Key] != "extauthz" || vals[SubKey] != "xds.xdsclient" || vals["server"] != "cp" || vals["n"] != float64(1) || vals["msg"] != "hello" {
		t.Fatalf("line %s", b.String())
	}

	b.Reset()
	root.Info("plain")
	if _, vals := keys(t, b.String()); vals[Key] != nil || vals[SubKey] != nil {
		t.Fatalf("a logger without a component gained one: %s", b.String())
	}

	b.Reset()
	root.With("component", "usage").Info("one")
	if _, vals := keys(t, b.String()); vals[Key] != "usage" || vals[SubKey] != nil {
		t.Fatalf("line %s", b.String())
	}
}

func TestGroupKeepsComponentOutside(t *testing.T) {
	var b bytes.Buffer
	l := slog.New(Components(slog.NewJSONHandler(&b, nil))).With("component", "probe").WithGroup("g").With("component", "inner")
	l.Info("x", "k", "v")
	_, vals := keys(t, b.String())
	g, _ := vals["g"].(map[string]any)
	if vals[Key] != "probe" || g == nil || g[Key] != "inner" || g["k"] != "v" {
		t.Fatalf("line %s", b.String())
	}
}

func TestLevelsPassThrough(t *testing.T) {
	var b bytes.Buffer
	l := slog.New(Components(slog.NewJSONHandler(&b, &slog.HandlerOptions{Level: slog.LevelWarn}))).With("component", "a")
	l.Info("dropped")
	if b.Len() != 0 {
		t.Fatalf("info written at level warn: %s", b.String())
	}
	l.Warn("kept")
	if !strings.Contains(b.String(), `"component":"a"`) {
		t.Fatalf("line %s", b.String())
	}
}
