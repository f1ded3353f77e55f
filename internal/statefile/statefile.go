// Package statefile keeps a component's last good configuration on local disk, so the
// component can start on it while the source it normally gets it from (the control plane,
// the routes YAML) is away. It owns the on-disk rules every llmedge state file follows:
// a directory only this user can open (0700), files only this user can read (0600), and
// writes that are atomic (temp file, fsync, rename, fsync of the directory), so a crash
// leaves either the old copy or the new one, never half of one.
//
// A state file is a small JSON envelope with a kind, the time it was written and a
// SHA-256 of its payload: Load refuses a file of another kind, a damaged one, and one
// that others could have written, with an error saying which.
package statefile

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// MaxSize bounds what Load reads: a state file is a config, not a database.
const MaxSize = 64 << 20

// ErrNotFound is returned by Load when no state file exists yet.
var ErrNotFound = errors.New("no saved state")

// envelope is the file format.
type envelope struct {
	Kind    string          `json:"kind"`
	SavedAt time.Time       `json:"saved_at"`
	SHA256  string          `json:"sha256"`
	Payload json.RawMessage `json:"payload"`
}

// Dir prepares dir for state files: it is created 0700 if missing. An existing directory
// that others can write to is refused, since whoever can replace a state file chooses the
// config the component starts on.
func Dir(dir string) error {
	if dir == "" {
		return errors.New("state dir: empty path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir %q: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state dir %q: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %q: not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state dir %q: mode %04o lets other users write; want 0700", dir, fi.Mode().Perm())
	}
	return nil
}

// Save writes payload (marshalled as JSON) under dir/name, atomically, mode 0600.
func Save(dir, name, kind string, payload any, now time.Time) error {
	body, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	sum := sha256.Sum256(body)
	data, err := json.Marshal(envelope{Kind: kind, SavedAt: now.UTC(), SHA256: hex.EncodeToString(sum[:]), Payload: body})
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	if err := Dir(dir); err != nil {
		return err
	}
	path := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, "."+name+".*.tmp") // CreateTemp makes it 0600
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save %s: fsync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	// The rename is durable only once the directory entry is.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Load reads dir/name into payload and returns when it was saved. It returns an error
// wrapping ErrNotFound when there is no such file, and a descriptive error for a file
// others can write, of another kind, damaged or undecodable.
func Load(dir, name, kind string, payload any) (time.Time, error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, fmt.Errorf("%s: %w", path, ErrNotFound)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return time.Time{}, fmt.Errorf("read %s: %w", path, err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return time.Time{}, fmt.Errorf("read %s: not a regular file", path)
	case fi.Mode().Perm()&0o022 != 0:
		return time.Time{}, fmt.Errorf("read %s: mode %04o lets other users write; want 0600", path, fi.Mode().Perm())
	case fi.Size() > MaxSize:
		return time.Time{}, fmt.Errorf("read %s: %d bytes, more than the %d a state file may have", path, fi.Size(), MaxSize)
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return time.Time{}, fmt.Errorf("read %s: %w", path, err)
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return time.Time{}, fmt.Errorf("read %s: damaged (not a state file): %w", path, err)
	}
	if env.Kind != kind {
		return time.Time{}, fmt.Errorf("read %s: holds %q, want %q", path, env.Kind, kind)
	}
	sum := sha256.Sum256(env.Payload)
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return time.Time{}, fmt.Errorf("read %s: damaged (checksum mismatch)", path)
	}
	if err := json.Unmarshal(env.Payload, payload); err != nil {
		return time.Time{}, fmt.Errorf("read %s: decode: %w", path, err)
	}
	return env.SavedAt, nil
}
