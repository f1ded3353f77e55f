package config

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/go-viper/mapstructure/v2"
)

// FieldError is one problem in the routes YAML, tied to the field (or file) at fault.
type FieldError struct {
	Path string `json:"path"`
	Msg  string `json:"message"`
}

func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errors is every problem found in one load; a routes YAML with any of them is rejected whole.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// AsErrors returns the field errors inside err, or one pathless error carrying err's text.
func AsErrors(err error) Errors {
	if err == nil {
		return nil
	}
	var es Errors
	if errors.As(err, &es) {
		return es
	}
	return Errors{{Msg: err.Error()}}
}

type collector struct{ errs Errors }

func (c *collector) add(path, format string, args ...any) {
	c.errs = append(c.errs, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	sort.SliceStable(c.errs, func(i, j int) bool { return c.errs[i].Path < c.errs[j].Path })
	return c.errs
}

// mapKey matches the "[key]" segments mapstructure uses for map keys and slice indexes.
var mapKey = regexp.MustCompile(`\[([^\]]*)\]`)

// decodePath turns mapstructure's "upstreams[gemini].tls" into the YAML path
// "upstreams.gemini.tls", keeping "[3]" for list indexes.
func decodePath(name string) string {
	return mapKey.ReplaceAllStringFunc(name, func(s string) string {
		k := s[1 : len(s)-1]
		if k != "" && strings.Trim(k, "0123456789") == "" {
			return s
		}
		return "." + k
	})
}

// decodeErrors flattens mapstructure's joined, nested errors into field errors.
func decodeErrors(err error, c *collector) {
	if err == nil {
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			decodeErrors(e, c)
		}
		return
	}
	var de *mapstructure.DecodeError
	if errors.As(err, &de) {
		if _, ok := err.(*mapstructure.DecodeError); !ok {
			// A wrapper, such as viper's "decoding failed due to the following error(s)" around
			// mapstructure's joined errors: errors.As would stop at the first of them.
			if inner := errors.Unwrap(err); inner != nil {
				decodeErrors(inner, c)
				return
			}
		}
		inner := de.Unwrap()
		if _, nested := inner.(interface{ Unwrap() []error }); nested {
			decodeErrors(inner, c)
			return
		}
		var innerDE *mapstructure.DecodeError
		if errors.As(inner, &innerDE) {
			decodeErrors(inner, c)
			return
		}
		path := decodePath(de.Name())
		msg := inner.Error()
		if keys, ok := strings.CutPrefix(msg, "has invalid keys: "); ok {
			for _, k := range strings.Split(keys, ", ") {
				c.add(joinPath(path, k), "unknown field (check the spelling; see docs/CONFIG.md)")
			}
			return
		}
		c.add(path, "%s", msg)
		return
	}
	c.add("", "%s", err.Error())
}

func joinPath(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}
