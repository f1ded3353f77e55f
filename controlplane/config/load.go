package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/watch"
)

// EnvPrefix prefixes environment overrides: LLMEDGE_UPSTREAMS_OPENAI_URL overrides
// upstreams.openai.url. Only keys present in the YAML can be overridden.
const EnvPrefix = "LLMEDGE"

// Source is what one load read: the files, their combined content hash (so an edit that
// changes nothing is recognised and pushes nothing) and the decoded document.
type Source struct {
	Files []string
	Hash  string
	File  File
}

// sections are the top-level maps whose keys are names and may be split across files.
var sections = []string{"regions", "upstreams", "routes", "callers"}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)

// Files lists the YAML files a path stands for: the file itself, or the *.yaml and *.yml
// files directly inside a directory, sorted. Hidden files (editor swap files, Kubernetes'
// ..data links) are skipped.
func Files(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read routes %q: %w", path, err)
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("read routes directory %q: %w", path, err)
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		ext := filepath.Ext(name)
		if ext != ".yaml" && ext != ".yml" {
			continue
		}
		full := filepath.Join(path, name)
		if st, err := os.Stat(full); err != nil || st.IsDir() {
			continue
		}
		files = append(files, full)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("read routes directory %q: no .yaml or .yml files", path)
	}
	sort.Strings(files)
	return files, nil
}

// Limits bound what one load reads, so that a runaway generator or a pasted dump is refused
// with a clear error instead of stalling the control plane. Zero fields take the defaults.
type Limits struct {
	MaxBytes   int64 // all files together (default 32 MiB)
	MaxFiles   int   // files in a directory (default 1,000)
	MaxEntries int   // names in each of regions, upstreams, routes and callers (default 100,000)
}

// The default limits; docs/CONFIG.md#size-limits documents them.
const (
	DefaultMaxBytes   = 32 << 20
	DefaultMaxFiles   = 1000
	DefaultMaxEntries = 100_000
)

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	return l
}

// Load reads and strictly decodes the routes YAML at path (a file or a directory). It does
// not validate semantics; see Validate. Every error it returns is an Errors value. The
// Source (files and content hash) is returned with the error whenever the files could be
// read, so callers can tell an unchanged broken file from a new edit.
func Load(path string) (*Source, error) {
	ctx := context.Background()
	snap, err := NewProvider(path, Limits{}, watch.Options{}, nil).Load(ctx)
	if err != nil {
		return nil, err
	}
	return Parse(ctx, snap, Limits{})
}

// Parse strictly decodes the documents of a snapshot into one File. It takes time linear in
// the documents' size, stops early when ctx ends (returning ctx's error), and refuses
// documents past the entry limits. The Source it returns (files and hash) comes back with
// decoding errors too.
func Parse(ctx context.Context, snap *Snapshot, limits Limits) (*Source, error) {
	limits = limits.withDefaults()
	src := &Source{Files: snap.Files(), Hash: snap.Hash}
	var c collector
	owner := map[string]string{} // "section.name" -> file that defines it
	entries := map[string]int{}  // section -> names across files
	roots := make([]*yaml.Node, len(snap.Docs))
	for i, d := range snap.Docs {
		if err := ctx.Err(); err != nil {
			return src, err
		}
		doc, ok := checkNames(d.Name, d.Data, owner, entries, &c)
		if ok {
			roots[i] = doc
		}
	}
	for _, s := range sections {
		if n := entries[s]; n > limits.MaxEntries {
			c.add(s, "%d entries; at most %d are accepted (see docs/CONFIG.md#size-limits)", n, limits.MaxEntries)
		}
	}
	if err := c.err(); err != nil {
		return src, err
	}
	var maps []map[string]any
	for i, doc := range roots {
		if doc == nil {
			continue
		}
		name := snap.Docs[i].Name
		// Convert the tree here rather than with yaml.v3's Decode into a map: yaml.v3
		// checks mapping keys for duplicates pair by pair, quadratic in the number of
		// routes (a 10,000-route file spent most of a second there).
		cv := converter{ctx: ctx, budget: 2*len(snap.Docs[i].Data) + 1024}
		m, err := cv.mapping(doc)
		if err := ctx.Err(); err != nil {
			return src, err
		}
		if len(cv.errs) > 0 {
			for _, e := range cv.errs {
				c.add(name, "%s", e)
			}
			continue
		}
		if err != nil {
			c.add(name, "%v", err)
			continue
		}
		maps = append(maps, m)
	}
	if err := c.err(); err != nil {
		return src, err
	}
	if err := ctx.Err(); err != nil {
		return src, err
	}
	input, ok := settings(maps, os.Environ())
	if !ok {
		input = viperSettings(maps)
	}
	doc, err := decodeFile(ctx, input, true)
	if err := ctx.Err(); err != nil {
		return src, err
	}
	if err != nil {
		decodeErrors(err, &c)
		return src, c.err()
	}
	src.File = doc
	return src, nil
}

// decodeFile decodes what viper's Unmarshal would decode (settings) as Parse configures it:
// viper's decoder settings (weakly typed input) and ours. direct decodes plain routes
// without mapstructure (decodeRoutes).
func decodeFile(ctx context.Context, input map[string]any, direct bool) (File, error) {
	// mapstructure calls hooks for every value it decodes: the one place a long decode can
	// notice that a newer edit (or shutdown) has made it pointless.
	calls := 0
	cancelled := func(reflect.Type, reflect.Type, any) error {
		if calls++; calls%1024 == 0 {
			return ctx.Err()
		}
		return nil
	}
	var doc File
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		ZeroFields:       true,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			func(f, t reflect.Type, data any) (any, error) { return data, cancelled(f, t, data) },
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToTimeHookFunc(time.RFC3339),
		),
		Result: &doc,
	})
	if err != nil {
		return doc, err
	}
	// The routes are most of a large document and the slowest part of mapstructure's
	// decode; plain ones are decoded directly, the rest as before.
	var routes map[string]Route
	if direct {
		var plain bool
		if routes, plain = decodeRoutes(input["routes"]); plain && routes != nil {
			rest := make(map[string]any, len(input))
			for k, v := range input {
				if k != "routes" {
					rest[k] = v
				}
			}
			input = rest
		} else {
			routes = nil
		}
	}
	err = dec.Decode(input)
	if routes != nil {
		doc.Routes = routes
	}
	return doc, err
}

// viperSettings is what viper's Unmarshal decodes for these documents, merged in order,
// with environment overrides (LLMEDGE_UPSTREAMS_OPENAI_URL for upstreams.openai.url).
func viperSettings(docs []map[string]any) map[string]any {
	v := viper.New()
	v.SetConfigType("yaml")
	for _, m := range docs {
		_ = v.MergeConfigMap(m) // never fails
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(envReplacer)
	v.AutomaticEnv()
	return v.AllSettings()
}

// converter turns a yaml.v3 node tree into the maps, slices and scalars viper merges. It
// reports duplicate keys as yaml.v3 would, but with a map (linear), and bounds alias
// expansion by budget so that a "billion laughs" document cannot blow up memory.
type converter struct {
	ctx    context.Context
	budget int // nodes left to produce
	errs   []string
}

var errTooLarge = errors.New("YAML aliases expand to more than twice the document's size")

func (cv *converter) value(n *yaml.Node) (any, error) {
	if cv.budget--; cv.budget < 0 {
		return nil, errTooLarge
	}
	if cv.budget%4096 == 0 {
		if err := cv.ctx.Err(); err != nil {
			return nil, err
		}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return cv.value(n.Content[0])
	case yaml.AliasNode:
		return cv.value(n.Alias)
	case yaml.SequenceNode:
		out := make([]any, len(n.Content))
		for i, e := range n.Content {
			v, err := cv.value(e)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case yaml.MappingNode:
		return cv.mapping(n)
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return n.Value, nil
		case "!!null":
			return nil, nil
		}
		// Numbers, booleans, timestamps, binary: yaml.v3's own resolution, which involves
		// no mapping and so no pairwise key check.
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, err
		}
		return v, nil
	}
	return nil, fmt.Errorf("line %d: unsupported YAML node", n.Line)
}

func (cv *converter) mapping(n *yaml.Node) (map[string]any, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping", n.Line)
	}
	out := make(map[string]any, len(n.Content)/2)
	lines := make(map[string]int, len(n.Content)/2)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			cv.errs = append(cv.errs, fmt.Sprintf("line %d: a mapping key must be a plain value", k.Line))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if first, dup := lines[k.Value]; dup {
			cv.errs = append(cv.errs, fmt.Sprintf("line %d: mapping key %#v already defined at line %d", k.Line, k.Value, first))
			continue
		}
		lines[k.Value] = k.Line
		v, err := cv.value(val)
		if err != nil {
			return nil, err
		}
		out[k.Value] = v
	}
	// YAML merge keys (<<: *base): explicit keys win over merged ones, and earlier merged
	// mappings over later ones.
	for _, m := range merges {
		if m.Kind == yaml.AliasNode {
			m = m.Alias
		}
		list := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			list = m.Content
		}
		for _, item := range list {
			mm, err := cv.mapping(item)
			if err != nil {
				return nil, err
			}
			for k, v := range mm {
				if _, set := out[k]; !set {
					out[k] = v
				}
			}
		}
	}
	return out, nil
}

// checkNames parses one file with yaml.v3 (for syntax errors with line numbers) and checks
// what viper would silently hide: it lower-cases keys and deep-merges files, so an upper-case
// name or one defined in two files would otherwise change meaning without a word.
func checkNames(file string, b []byte, owner map[string]string, entries map[string]int, c *collector) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var root yaml.Node
	if err := dec.Decode(&root); err == io.EOF {
		return nil, true // an empty file contributes nothing
	} else if err != nil {
		c.add(file, "%v", err)
		return nil, false
	}
	// viper reads only the first document of a file; a second one would be dropped unseen.
	var next yaml.Node
	if err := dec.Decode(&next); err != nil && err != io.EOF {
		c.add(file, "%v", err)
		return nil, false
	} else if err == nil && len(next.Content) > 0 && next.Content[0].Tag != "!!null" {
		c.add(file, "line %d: a second YAML document (after ---); put one document per file, or split it into files in a directory", next.Line)
		return nil, false
	}
	if len(root.Content) == 0 {
		return nil, true
	}
	doc := root.Content[0]
	if doc.Kind == yaml.ScalarNode && doc.Tag == "!!null" {
		return nil, true // a file holding only comments or ---
	}
	if doc.Kind != yaml.MappingNode {
		c.add(file, "line %d: the top level must be a mapping (version, regions, upstreams, routes)", doc.Line)
		return nil, false
	}
	ok := true
	for i := 0; i+1 < len(doc.Content); i += 2 {
		key, val := doc.Content[i], doc.Content[i+1]
		section := strings.ToLower(key.Value) // viper matches keys case-insensitively
		if !isSection(section) {
			continue
		}
		if val.Kind == yaml.ScalarNode && val.Tag == "!!null" {
			continue
		}
		if val.Kind != yaml.MappingNode {
			c.add(section, "line %d of %s: must be a mapping of names to settings", val.Line, filepath.Base(file))
			ok = false
			continue
		}
		entries[section] += len(val.Content) / 2
		for j := 0; j+1 < len(val.Content); j += 2 {
			name := val.Content[j].Value
			path := section + "." + name
			if !nameRE.MatchString(name) {
				c.add(path, "line %d of %s: names must be 1-63 lower-case letters, digits, '-' or '_', starting and ending with a letter or digit", val.Content[j].Line, filepath.Base(file))
				ok = false
			}
			if prev, dup := owner[path]; dup && prev == file {
				c.add(path, "line %d of %s: defined twice in this file", val.Content[j].Line, filepath.Base(file))
				ok = false
			} else if dup {
				c.add(path, "defined in both %s and %s", filepath.Base(prev), filepath.Base(file))
				ok = false
			}
			owner[path] = file
		}
	}
	return doc, ok
}

func isSection(k string) bool {
	for _, s := range sections {
		if s == k {
			return true
		}
	}
	return false
}

// Build parses and validates a snapshot: what the control plane and `llmedge validate` run
// on every edit. Like Parse, it returns the Source with any error once the snapshot is read.
func Build(ctx context.Context, snap *Snapshot, limits Limits) (*Source, *model.Config, error) {
	src, err := Parse(ctx, snap, limits)
	if err != nil {
		return src, nil, err
	}
	cfg, err := Validate(src.File)
	if err != nil {
		return src, nil, err
	}
	return src, cfg, nil
}
