package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
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

// Hash is the content hash Load would report for path, without parsing anything: the
// control plane compares it first, so an unchanged file costs a read, not a decode.
func Hash(path string) (string, error) {
	files, err := Files(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		hashFile(h, f, b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashFile adds one file to a content hash: its name matters (a rename in a directory is
// an edit), and the length prefix keeps file boundaries unambiguous.
func hashFile(h io.Writer, name string, b []byte) {
	fmt.Fprintf(h, "%s\x00%d\x00", filepath.Base(name), len(b))
	h.Write(b)
}

// Load reads and strictly decodes the routes YAML at path (a file or a directory). It does
// not validate semantics; see Validate. Every error it returns is an Errors value. The
// Source (files and content hash) is returned with the error whenever the files could be
// read, so callers can tell an unchanged broken file from a new edit.
func Load(path string) (*Source, error) {
	files, err := Files(path)
	if err != nil {
		return nil, Errors{{Path: path, Msg: err.Error()}}
	}
	var c collector
	h := sha256.New()
	v := viper.New()
	v.SetConfigType("yaml")
	owner := map[string]string{} // "section.name" -> file that defines it
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			c.add(f, "%v", err)
			continue
		}
		hashFile(h, f, b)
		doc, ok := checkNames(f, b, owner, &c)
		if !ok || doc == nil {
			continue
		}
		// Hand viper the tree yaml.v3 already parsed rather than the text: at 1,000
		// routes, parsing the YAML once instead of twice is a good part of a reload.
		var m map[string]any
		if err := doc.Decode(&m); err != nil {
			c.add(f, "%v", err)
			continue
		}
		if err := v.MergeConfigMap(m); err != nil {
			c.add(f, "%v", err)
		}
	}
	src := &Source{Files: files, Hash: hex.EncodeToString(h.Sum(nil))}
	if err := c.err(); err != nil {
		return src, err
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	var doc File
	err = v.Unmarshal(&doc, func(dc *mapstructure.DecoderConfig) {
		dc.ErrorUnused = true
		dc.ZeroFields = true
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToTimeHookFunc(time.RFC3339),
		)
	})
	if err != nil {
		decodeErrors(err, &c)
		return src, c.err()
	}
	src.File = doc
	return src, nil
}

// checkNames parses one file with yaml.v3 (for syntax errors with line numbers) and checks
// what viper would silently hide: it lower-cases keys and deep-merges files, so an upper-case
// name or one defined in two files would otherwise change meaning without a word.
func checkNames(file string, b []byte, owner map[string]string, c *collector) (*yaml.Node, bool) {
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
