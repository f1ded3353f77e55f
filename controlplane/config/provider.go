package config

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/llmedge/llmedge/controlplane/watch"
)

// Provider is where the routes YAML comes from: a file, a directory, later a Kubernetes
// ConfigMap or an HTTP/S3 object. It only delivers bytes and says when they may have
// changed; decoding (and viper's quirks) stays in Parse, so every provider reads the same
// schema with the same errors. The control plane, `llmedge validate` and the tests reach
// the routes only through a Provider.
type Provider interface {
	// Load returns the routes YAML documents as they are now. It respects ctx and the
	// size limits; a document past a limit is an Errors value naming it.
	Load(ctx context.Context) (*Snapshot, error)
	// Watch sends on changed, without blocking, whenever the documents may have changed,
	// until ctx ends. A spurious signal is harmless: the reload compares content hashes.
	Watch(ctx context.Context, changed chan<- struct{}) error
	// String names the source in logs and /status (a path or a URL, never a credential).
	String() string
}

// Document is one YAML file of the routes.
type Document struct {
	Name string // a path for file sources; shown in errors and /status
	Data []byte
}

// Snapshot is what one Load read: the documents, in the order they merge, and their
// combined content hash, so an edit that changes nothing is recognised before decoding.
type Snapshot struct {
	Docs []Document
	Hash string
}

// Files lists the document names.
func (s *Snapshot) Files() []string {
	out := make([]string, len(s.Docs))
	for i, d := range s.Docs {
		out[i] = d.Name
	}
	return out
}

// NewSnapshot builds a snapshot and its content hash from documents.
func NewSnapshot(docs []Document) *Snapshot {
	h := sha256.New()
	for _, d := range docs {
		hashFile(h, d.Name, d.Data)
	}
	return &Snapshot{Docs: docs, Hash: hex.EncodeToString(h.Sum(nil))}
}

// hashFile adds one file to a content hash: its name matters (a rename in a directory is
// an edit), and the length prefix keeps file boundaries unambiguous.
func hashFile(h io.Writer, name string, b []byte) {
	fmt.Fprintf(h, "%s\x00%d\x00", filepath.Base(name), len(b))
	h.Write(b)
}

// NewProvider returns the file or directory provider for path, as `--config` takes it. A
// path that does not exist yet is read as a file (the control plane starts and waits for
// it); a directory is read as a directory.
func NewProvider(path string, limits Limits, w watch.Options, log *slog.Logger) Provider {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return &DirProvider{Path: path, Limits: limits, WatchOptions: w, Log: log}
	}
	return &FileProvider{Path: path, Limits: limits, WatchOptions: w, Log: log}
}

// FileProvider reads one YAML file. It watches the file's directory, so editors that save
// by writing a temporary file and renaming it are seen.
type FileProvider struct {
	Path         string
	Limits       Limits
	WatchOptions watch.Options
	Log          *slog.Logger
}

func (p *FileProvider) String() string { return p.Path }

func (p *FileProvider) Load(ctx context.Context) (*Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l := p.Limits.withDefaults()
	b, err := readLimited(p.Path, l.MaxBytes, l.MaxBytes)
	if err != nil {
		return nil, Errors{{Path: p.Path, Msg: err.Error()}}
	}
	return NewSnapshot([]Document{{Name: p.Path, Data: b}}), nil
}

func (p *FileProvider) Watch(ctx context.Context, changed chan<- struct{}) error {
	return watch.Run(ctx, filepath.Dir(filepath.Clean(p.Path)), p.WatchOptions, p.Log, changed)
}

// DirProvider reads the *.yaml and *.yml files directly inside a directory (see Files);
// their sections merge, and a name defined in two files is an error.
type DirProvider struct {
	Path         string
	Limits       Limits
	WatchOptions watch.Options
	Log          *slog.Logger
}

func (p *DirProvider) String() string { return p.Path }

func (p *DirProvider) Load(ctx context.Context) (*Snapshot, error) {
	l := p.Limits.withDefaults()
	files, err := Files(p.Path)
	if err != nil {
		return nil, Errors{{Path: p.Path, Msg: err.Error()}}
	}
	if len(files) > l.MaxFiles {
		return nil, Errors{{Path: p.Path, Msg: fmt.Sprintf("%d YAML files; at most %d are read (see docs/CONFIG.md#size-limits)", len(files), l.MaxFiles)}}
	}
	var c collector
	docs := make([]Document, 0, len(files))
	left := l.MaxBytes
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b, err := readLimited(f, left, l.MaxBytes)
		if err != nil {
			c.add(f, "%v", err)
			continue
		}
		left -= int64(len(b))
		docs = append(docs, Document{Name: f, Data: b})
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	return NewSnapshot(docs), nil
}

func (p *DirProvider) Watch(ctx context.Context, changed chan<- struct{}) error {
	return watch.Run(ctx, filepath.Clean(p.Path), p.WatchOptions, p.Log, changed)
}

// readLimited reads a file of at most left bytes, what remains of the limit max for all
// files. The size is checked while reading: a file may grow while it is read.
func readLimited(path string, left, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read routes %q: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, left+1))
	if err != nil {
		return nil, fmt.Errorf("read routes %q: %w", path, err)
	}
	if int64(len(b)) > left {
		return nil, fmt.Errorf("the routes YAML (all files together) is larger than %s, the most the control plane reads (see docs/CONFIG.md#size-limits)", byteSize(max))
	}
	return b, nil
}

func byteSize(n int64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
