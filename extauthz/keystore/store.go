// Package keystore holds the upstream provider keys extauthz injects, read from a secret
// directory and rotated live.
//
// The directory has one file per key, <dir>/<upstream>/<name>, as Docker or Kubernetes
// secret volumes and Vault agents mount them. Symbolic links are followed (Kubernetes
// mounts are symlinks into a "..data" directory that is swapped atomically) and entries
// whose name starts with '.' are skipped, as are names ending in ".tmp" or "~" (temporary
// files of writers that write then rename). A file's content, with surrounding white space
// trimmed, is the key; a file that is empty, larger than 8 KiB or holds anything but
// printable ASCII (a CR or LF would let a key inject headers) is skipped with a warning
// that names the file, never its content.
//
// A key file that goes bad after it held a good key — truncated in place, swapped for an
// empty file by a secret mount refresh, made unreadable — keeps serving its last good key
// until it is fixed or removed: such states are transient far more often than they are
// meant, and the alternative is refusing every request with "no key". The store reports
// it (a warning naming the upstream and key, and Problems for /readyz and metrics). To
// retire a key, delete its file. A file that never held a good key is reported and
// ignored.
//
// Lookups are lock-free: Next reads an atomic pointer to an immutable snapshot and bumps an
// atomic counter. A reload builds a complete new snapshot and swaps it in, so a request
// sees either the old keys or the new ones, never a mix, and never an empty set while a
// rotation is in flight.
package keystore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

const (
	// MaxKeySize is the largest key file accepted, in bytes.
	MaxKeySize = 8 << 10

	// debounce is how long the directory must be quiet after an event before a reload.
	debounce = 50 * time.Millisecond
	// maxDelay bounds how long a stream of events can postpone a reload.
	maxDelay = 500 * time.Millisecond
	// maxAttempts is how many consecutive reloads may be put off because the directory
	// looked mid-change (an entry vanished while it was read, or a key file was modified
	// within the last debounce interval and may still be being written) before the store
	// publishes what it found anyway.
	maxAttempts = 5
)

// Store is the set of upstream keys. It is safe for concurrent use.
type Store struct {
	dir string
	log *slog.Logger

	snap atomic.Pointer[snapshot]

	// mu serialises reloads and guards warned and lastErr.
	mu sync.Mutex
	// warned maps a path to the problem last logged for it, so a bad file is reported
	// once rather than on every reload.
	warned map[string]Problem
	// lastErr is the text of the last directory read error Run logged.
	lastErr string
	// problems is what the last reload could not use, sorted by path, for Problems.
	problems atomic.Pointer[[]Problem]
	// open opens key files and upstream directories; tests replace it to simulate read
	// errors, which root (who runs the tests in containers) cannot provoke with
	// permissions.
	open func(name string) (io.ReadCloser, error)

	// onChange, if set, is called after each reload that changed the keys (OnChange).
	onChange atomic.Pointer[func()]

	running atomic.Bool
	// noWatch makes Run poll only (tests of the fallback).
	noWatch bool
}

// snapshot is immutable once published, apart from the round-robin counters.
type snapshot struct {
	pools     map[string]*pool
	upstreams []string // sorted
}

type pool struct {
	keys []Key // sorted by name, never empty
	next atomic.Uint64
}

// New loads the keys under dir once. A missing or unreadable dir is an error; bad key files
// are not (they are skipped with a warning). A nil log discards.
func New(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: filepath.Clean(dir), log: log, warned: map[string]Problem{},
		open: func(name string) (io.ReadCloser, error) { return os.Open(name) }}
	fi, err := os.Stat(s.dir)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("keystore: %s is not a directory", s.dir)
	}
	for attempt := 1; ; attempt++ {
		retry, err := s.reload(attempt >= maxAttempts)
		if err != nil {
			return nil, fmt.Errorf("keystore: %w", err)
		}
		if !retry {
			break
		}
		time.Sleep(debounce)
	}
	return s, nil
}

// Next returns the upstream's keys in turn (round robin). ok is false when the upstream
// has no valid key.
func (s *Store) Next(upstream string) (Key, bool) {
	snap := s.snap.Load()
	if snap == nil {
		return Key{}, false
	}
	p := snap.pools[upstream]
	if p == nil {
		return Key{}, false
	}
	i := p.next.Add(1) - 1
	return p.keys[i%uint64(len(p.keys))], true
}

// Advance counts n more of the upstream's keys as given in turn, as n calls of Next would,
// without returning them: for keys given out elsewhere in the same order (the module's fast
// path gives a pool's keys in turn after the one Next gave its decision).
func (s *Store) Advance(upstream string, n uint64) {
	if n == 0 {
		return
	}
	snap := s.snap.Load()
	if snap == nil {
		return
	}
	if p := snap.pools[upstream]; p != nil {
		p.next.Add(n)
	}
}

// Count returns how many valid keys the upstream has.
func (s *Store) Count(upstream string) int {
	snap := s.snap.Load()
	if snap == nil {
		return 0
	}
	p := snap.pools[upstream]
	if p == nil {
		return 0
	}
	return len(p.keys)
}

// Problem is a key file or directory the last reload could not use as it is. It names
// files, never their content.
type Problem struct {
	// Upstream is the upstream directory's name; Key the key file's name, empty when the
	// problem is with the directory itself.
	Upstream string `json:"upstream"`
	Key      string `json:"key,omitempty"`
	Path     string `json:"path"`
	Reason   string `json:"reason"`
	// Held says the last good key read from this file (or, for a directory, every key of
	// the upstream) is still in use.
	Held bool `json:"held"`
	// Since is when the store first saw the problem.
	Since time.Time `json:"since"`
}

// Problems returns what the last reload could not use, sorted by path.
func (s *Store) Problems() []Problem {
	if p := s.problems.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// Upstreams returns the names of the upstream directories, sorted, including any that
// currently have no valid key.
func (s *Store) Upstreams() []string {
	snap := s.snap.Load()
	if snap == nil {
		return nil
	}
	return slices.Clone(snap.upstreams)
}

// Run watches the directory (the root and every upstream directory, adding new ones as
// they appear) and reloads shortly after anything changes; it also reloads every poll as a
// fallback for file systems without inotify and for missed events (poll <= 0 disables
// polling). It reloads once at start, so nothing changed between New and Run is missed.
// Run returns nil when ctx ends, or an error if it can watch neither way.
func (s *Store) Run(ctx context.Context, poll time.Duration) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("keystore: Run is already running")
	}
	defer s.running.Store(false)

	var (
		w      *fsnotify.Watcher
		events <-chan fsnotify.Event
		errs   <-chan error
	)
	if !s.noWatch {
		var err error
		w, err = fsnotify.NewWatcher()
		switch {
		case err == nil:
			defer w.Close()
			events, errs = w.Events, w.Errors
		case poll <= 0:
			return fmt.Errorf("keystore: cannot watch %s and polling is disabled: %w", s.dir, err)
		default:
			s.log.Warn("keystore: cannot watch the key directory; polling only", "dir", s.dir, "poll", poll, "error", err)
		}
	} else if poll <= 0 {
		return errors.New("keystore: polling is disabled and watching is off")
	}
	watched := map[string]os.FileInfo{}
	s.syncWatches(w, watched)

	var tick <-chan time.Time
	if poll > 0 {
		t := time.NewTicker(poll)
		defer t.Stop()
		tick = t.C
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var (
		pending      bool
		pendingSince time.Time
		attempt      int
	)
	schedule := func() {
		now := time.Now()
		if !pending {
			pending, pendingSince = true, now
		}
		d := debounce
		if left := maxDelay - now.Sub(pendingSince); left < d {
			d = max(left, 0)
		}
		timer.Reset(d)
	}
	reload := func() {
		pending = false
		timer.Stop()
		attempt++
		retry, err := s.reload(attempt >= maxAttempts)
		switch {
		case err != nil:
			if s.noteErr(err) {
				s.log.Error("keystore: cannot read the key directory; keeping the current keys", "dir", s.dir, "error", err)
			}
			attempt = 0
		case retry:
			schedule()
		default:
			attempt = 0
		}
		s.syncWatches(w, watched)
	}
	reload()

	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			schedule()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Most likely an event queue overflow: events were lost, so reload.
			s.log.Warn("keystore: watcher error", "dir", s.dir, "error", err)
			schedule()
		case <-timer.C:
			reload()
		case <-tick:
			reload()
		}
	}
}

// noteErr records a directory read error and reports whether it differs from the last one
// (so a lasting outage is logged once, not on every poll).
func (s *Store) noteErr(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err.Error() == s.lastErr {
		return false
	}
	s.lastErr = err.Error()
	return true
}

// syncWatches makes w watch the root and every upstream directory. A path whose target
// changed (a Kubernetes "..data" swap retargets the upstream symlinks) is watched anew, and
// paths that are gone are dropped.
func (s *Store) syncWatches(w *fsnotify.Watcher, watched map[string]os.FileInfo) {
	if w == nil {
		return
	}
	want := map[string]os.FileInfo{}
	if fi, err := os.Stat(s.dir); err == nil {
		want[s.dir] = fi
	}
	if entries, err := os.ReadDir(s.dir); err == nil {
		for _, e := range entries {
			if skipName(e.Name()) {
				continue
			}
			p := filepath.Join(s.dir, e.Name())
			if fi, err := os.Stat(p); err == nil && fi.IsDir() {
				want[p] = fi
			}
		}
	}
	active := map[string]bool{}
	for _, p := range w.WatchList() {
		active[p] = true
	}
	for p, old := range watched {
		if fi, ok := want[p]; !ok || !os.SameFile(old, fi) {
			_ = w.Remove(p) // may already be gone with its directory
			delete(watched, p)
		}
	}
	for p, fi := range want {
		if _, ok := watched[p]; ok && active[p] {
			continue
		}
		if err := w.Add(p); err != nil {
			// The poll fallback still covers it; a later sync retries.
			s.log.Warn("keystore: cannot watch directory", "dir", p, "error", err)
			continue
		}
		watched[p] = fi
	}
}

// reload reads the directory and publishes a new snapshot if anything changed. It returns
// retry when the directory looked mid-change (see maxAttempts) and final is false: the
// current snapshot is then kept, and the caller should try again shortly.
func (s *Store) reload(final bool) (retry bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	old := s.snap.Load()
	sc, err := s.scan(time.Now().Add(-debounce), old)
	if err != nil {
		return false, err
	}
	if s.lastErr != "" {
		s.log.Info("keystore: key directory readable again", "dir", s.dir)
		s.lastErr = ""
	}
	if sc.unsettled > 0 && !final {
		return true, nil
	}
	s.report(sc.problems)

	if old != nil && sameKeys(old, sc.keys) {
		return false, nil
	}
	next := &snapshot{pools: map[string]*pool{}, upstreams: slices.Sorted(maps.Keys(sc.keys))}
	for up, keys := range sc.keys {
		if len(keys) == 0 {
			continue
		}
		p := &pool{keys: keys}
		if old != nil {
			// Carry the counter over so a rotation does not restart every upstream at its
			// first key.
			if op := old.pools[up]; op != nil {
				p.next.Store(op.next.Load())
			}
		}
		next.pools[up] = p
	}
	s.snap.Store(next)
	if f := s.onChange.Load(); f != nil {
		(*f)()
	}
	if old != nil {
		s.logChanges(old, next)
	}
	return false, nil
}

// OnChange has f called after every reload that changes the keys, once the new keys are
// in use (what Next and Count answer): whoever keeps something decided with a key can
// tell it may be stale.
func (s *Store) OnChange(f func()) {
	s.onChange.Store(&f)
}

// scanned is what one pass over the directory found.
type scanned struct {
	keys     map[string][]Key   // upstream -> keys sorted by name (possibly none)
	problems map[string]Problem // path -> why it was skipped or held (Since unset)
	// unsettled counts entries listed but gone when read, and key files modified after
	// the settled instant (perhaps still being written).
	unsettled int
}

// scan reads the whole directory; files modified after settled count as unsettled. A key
// file or upstream directory that cannot be used for what it holds keeps its keys from old
// (see the package comment).
func (s *Store) scan(settled time.Time, old *snapshot) (scanned, error) {
	sc := scanned{keys: map[string][]Key{}, problems: map[string]Problem{}}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return sc, err
	}
	for _, e := range entries {
		if skipName(e.Name()) {
			continue
		}
		up := e.Name()
		updir := filepath.Join(s.dir, up)
		dirProblem := func(why string) { sc.problems[updir] = Problem{Upstream: up, Path: updir, Reason: why} }
		fi, err := os.Stat(updir) // follows symlinks
		switch {
		case errors.Is(err, fs.ErrNotExist) && isSymlink(updir):
			dirProblem("dangling symbolic link")
			continue
		case errors.Is(err, fs.ErrNotExist):
			sc.unsettled++
			continue
		case err != nil:
			dirProblem("cannot stat: " + err.Error())
			continue
		case !fi.IsDir():
			dirProblem("not a directory (keys go in <dir>/<upstream>/<name>)")
			continue
		}
		var prev []Key // the upstream's keys in force, which a bad file or directory keeps
		if old != nil && old.pools[up] != nil {
			prev = old.pools[up].keys
		}
		files, err := s.readDir(updir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			sc.unsettled++
			continue
		case err != nil:
			p := Problem{Upstream: up, Path: updir, Reason: "cannot read directory: " + err.Error()}
			if len(prev) > 0 {
				p.Held = true
				sc.keys[up] = prev
			}
			sc.problems[updir] = p
			continue
		}
		keys := []Key{}
		for _, f := range files {
			if skipName(f.Name()) {
				continue
			}
			path := filepath.Join(updir, f.Name())
			kf, err := s.readKey(path)
			if kf.mtime.After(settled) {
				sc.unsettled++
			}
			switch {
			case errors.Is(err, fs.ErrNotExist):
				sc.unsettled++
			case kf.problem != "":
				p := Problem{Upstream: up, Key: f.Name(), Path: path, Reason: kf.problem}
				if i := slices.IndexFunc(prev, func(k Key) bool { return k.Name == f.Name() }); kf.keep && i >= 0 {
					p.Held = true
					keys = append(keys, prev[i])
				}
				sc.problems[path] = p
			default:
				keys = append(keys, newKey(f.Name(), kf.value))
			}
		}
		if len(keys) == 0 {
			dirProblem("upstream has no valid key file")
		}
		sc.keys[up] = keys // ReadDir sorts by name, so keys are sorted
	}
	return sc, nil
}

// readDir lists an upstream directory. Opening goes through s.open so that tests can make
// it fail.
func (s *Store) readDir(dir string) ([]fs.DirEntry, error) {
	f, err := s.open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, ok := f.(fs.ReadDirFile)
	if !ok {
		return nil, fmt.Errorf("%s: cannot list", dir)
	}
	entries, err := d.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, nil
}

// keyFile is what reading one key file found.
type keyFile struct {
	value string
	mtime time.Time
	// problem explains why the file holds no usable key; it never quotes the content.
	problem string
	// keep says the problem is with what the file holds or whether it can be read (empty,
	// unreadable, malformed), not with what the entry is: its last good key stays in use.
	keep bool
}

// readKey reads one key file. The error is fs.ErrNotExist for a file that vanished while
// it was read (a change in flight); every other failure is a problem.
func (s *Store) readKey(path string) (keyFile, error) {
	fi, err := os.Stat(path) // follows symlinks
	if errors.Is(err, fs.ErrNotExist) && isSymlink(path) {
		// A dangling symlink is a state of its own, not a change in flight.
		return keyFile{problem: "dangling symbolic link"}, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return keyFile{}, err
	}
	if err != nil {
		return keyFile{problem: "cannot stat: " + err.Error(), keep: true}, nil
	}
	kf := keyFile{mtime: fi.ModTime(), keep: true}
	switch {
	case fi.IsDir():
		return keyFile{mtime: kf.mtime, problem: "is a directory (keys go in <dir>/<upstream>/<name>)"}, nil
	case !fi.Mode().IsRegular():
		return keyFile{mtime: kf.mtime, problem: "not a regular file"}, nil
	case fi.Size() > MaxKeySize:
		kf.problem = fmt.Sprintf("larger than %d bytes", MaxKeySize)
		return kf, nil
	}
	f, err := s.open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return keyFile{}, err
	}
	if err != nil {
		kf.problem = "unreadable: " + err.Error()
		return kf, nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKeySize+1))
	if err != nil {
		kf.problem = "unreadable: " + err.Error()
		return kf, nil
	}
	if len(b) > MaxKeySize {
		kf.problem = fmt.Sprintf("larger than %d bytes", MaxKeySize)
		return kf, nil
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		kf.problem = "empty"
		return kf, nil
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e {
			kf.problem = "contains a control or non-ASCII character (CR, LF, NUL, ...); only printable ASCII is allowed"
			return kf, nil
		}
	}
	kf.value = v
	return kf, nil
}

// isSymlink reports whether path itself (not its target) exists and is a symbolic link.
func isSymlink(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&fs.ModeSymlink != 0
}

// skipName reports whether a directory entry is not a key: hidden entries (including
// Kubernetes' "..data" machinery) and writers' temporary files.
func skipName(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".tmp") || strings.HasSuffix(name, "~")
}

// report logs each problem once, notes when a reported problem is resolved, and publishes
// the list for Problems.
func (s *Store) report(problems map[string]Problem) {
	now := time.Now()
	for _, path := range slices.Sorted(maps.Keys(problems)) {
		p := problems[path]
		prev, seen := s.warned[path]
		p.Since = now
		if seen {
			p.Since = prev.Since
		}
		problems[path] = p
		if seen && prev.Reason == p.Reason && prev.Held == p.Held {
			continue
		}
		s.warned[path] = p
		switch {
		case p.Held && p.Key == "":
			s.log.Warn("keystore: cannot read the upstream's key directory; keeping its last good keys",
				"upstream", p.Upstream, "path", path, "reason", p.Reason)
		case p.Held:
			s.log.Warn("keystore: key file is empty, unreadable or malformed; keeping its last good key",
				"upstream", p.Upstream, "key", p.Key, "path", path, "reason", p.Reason)
		default:
			s.log.Warn("keystore: skipping key file or directory",
				"upstream", p.Upstream, "key", p.Key, "path", path, "reason", p.Reason)
		}
	}
	for path, p := range s.warned {
		if _, ok := problems[path]; !ok {
			delete(s.warned, path)
			s.log.Info("keystore: problem resolved", "upstream", p.Upstream, "key", p.Key, "path", path)
		}
	}
	list := make([]Problem, 0, len(problems))
	for _, path := range slices.Sorted(maps.Keys(problems)) {
		list = append(list, problems[path])
	}
	s.problems.Store(&list)
}

// sameKeys reports whether the snapshot holds exactly these upstreams and keys.
func sameKeys(old *snapshot, keys map[string][]Key) bool {
	if !slices.Equal(old.upstreams, slices.Sorted(maps.Keys(keys))) {
		return false
	}
	for up, ks := range keys {
		var cur []Key
		if p := old.pools[up]; p != nil {
			cur = p.keys
		}
		if !slices.EqualFunc(cur, ks, func(a, b Key) bool { return a.Name == b.Name && a.Value() == b.Value() }) {
			return false
		}
	}
	return true
}

// logChanges logs what a reload changed, by upstream and key name only.
func (s *Store) logChanges(old, next *snapshot) {
	ups := map[string]bool{}
	for _, u := range old.upstreams {
		ups[u] = true
	}
	for _, u := range next.upstreams {
		ups[u] = true
	}
	for _, up := range slices.Sorted(maps.Keys(ups)) {
		before, after := map[string]string{}, map[string]string{}
		if p := old.pools[up]; p != nil {
			for _, k := range p.keys {
				before[k.Name] = k.Value()
			}
		}
		if p := next.pools[up]; p != nil {
			for _, k := range p.keys {
				after[k.Name] = k.Value()
			}
		}
		var added, removed, changed []string
		for n, v := range after {
			if ov, ok := before[n]; !ok {
				added = append(added, n)
			} else if ov != v {
				changed = append(changed, n)
			}
		}
		for n := range before {
			if _, ok := after[n]; !ok {
				removed = append(removed, n)
			}
		}
		if len(added)+len(removed)+len(changed) == 0 {
			continue
		}
		slices.Sort(added)
		slices.Sort(removed)
		slices.Sort(changed)
		s.log.Info("keystore: keys rotated", "upstream", up, "keys", len(after),
			"added", added, "removed", removed, "changed", changed)
	}
}

// Keys returns the upstream's keys ordered by name, the order retries walk them in. The
// slice belongs to the current snapshot: callers must not modify it.
func (s *Store) Keys(upstream string) []Key {
	snap := s.snap.Load()
	if snap == nil {
		return nil
	}
	p := snap.pools[upstream]
	if p == nil {
		return nil
	}
	return p.keys
}
