// Package logging keeps one "component" key per log line. A logger made With a component
// under one that already has one (extauthz's xDS client under extauthz) keeps the outer
// component, so that `"component":"extauthz"` finds every line of it, and names the inner
// ones under "subsystem" ("xds.xdsclient"), instead of repeating the key, which JSON
// readers resolve to either value.
package logging

import (
	"context"
	"errors"
	"io"
	"log/slog"
)

const (
	// Key is the attribute that names the process part a line comes from.
	Key = "component"
	// SubKey names the parts within it, outermost first, joined with ".".
	SubKey = "subsystem"
)

// Components wraps h so that nested With(Key, …) calls do not repeat Key.
func Components(h slog.Handler) slog.Handler { return &handler{h: h} }

type handler struct {
	h         slog.Handler // without comp and sub, which Handle adds
	comp, sub string
	grouped   bool // after WithGroup, attributes belong to the group: no rewriting
}

func (c *handler) Enabled(ctx context.Context, l slog.Level) bool { return c.h.Enabled(ctx, l) }

func (c *handler) Handle(ctx context.Context, r slog.Record) error {
	if c.comp != "" {
		r = r.Clone()
		r.AddAttrs(slog.String(Key, c.comp))
		if c.sub != "" {
			r.AddAttrs(slog.String(SubKey, c.sub))
		}
	}
	return c.h.Handle(ctx, r)
}

func (c *handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *c
	if c.grouped {
		n.h = c.h.WithAttrs(as)
		return &n
	}
	rest := make([]slog.Attr, 0, len(as))
	for _, a := range as {
		if a.Key != Key {
			rest = append(rest, a)
			continue
		}
		v := a.Value.Resolve().String()
		switch {
		case n.comp == "":
			n.comp = v
		case n.sub == "":
			n.sub = v
		default:
			n.sub += "." + v
		}
	}
	if len(rest) > 0 {
		n.h = c.h.WithAttrs(rest)
	}
	return &n
}

func (c *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return c
	}
	inner := c.h
	if c.comp != "" {
		as := []slog.Attr{slog.String(Key, c.comp)}
		if c.sub != "" {
			as = append(as, slog.String(SubKey, c.sub))
		}
		inner = inner.WithAttrs(as)
	}
	return &handler{h: inner.WithGroup(name), grouped: true}
}

// ErrFormat is New's answer to a format other than json or text; callers name their own
// flag or variable in the message.
var ErrFormat = errors.New("want json or text")

// New is the logger every llmedge process writes with: JSON or text lines at lv, one
// component key per line.
func New(w io.Writer, format string, lv slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(Components(slog.NewJSONHandler(w, opts))), nil
	case "text":
		return slog.New(Components(slog.NewTextHandler(w, opts))), nil
	}
	return nil, ErrFormat
}
