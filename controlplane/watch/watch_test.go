package watch_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/watch"
)

// deadline bounds every wait for something that must happen; it is generous because it is
// only reached when the test fails.
const deadline = 5 * time.Second

// run starts watch.Run on path and returns its notification channel (capacity 1, as the
// control plane uses it). Run is stopped, and must return nil, when the test ends.
func run(t *testing.T, path string, o watch.Options) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	changed := make(chan struct{}, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	go func() { done <- watch.Run(ctx, path, o, log, changed) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel; want nil", err)
			}
		case <-time.After(deadline):
			t.Errorf("Run did not return within %s of cancel", deadline)
		}
	})
	return changed
}

// within reports whether a notification arrives within d.
func within(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// count returns how many notifications arrive within d, reading each one promptly.
func count(ch <-chan struct{}, d time.Duration) int {
	end := time.NewTimer(d)
	defer end.Stop()
	n := 0
	for {
		select {
		case <-ch:
			n++
		case <-end.C:
			return n
		}
	}
}

// quiesce reads notifications until none has come for quiet.
func quiesce(ch <-chan struct{}, quiet time.Duration) {
	for within(ch, quiet) {
	}
}

// ready waits until the watcher sees events in dir: Run adds its watch asynchronously, and a
// write before that would be missed. It touches a sentinel file until a notification comes,
// then lets the watcher settle so that the test starts from an idle state.
func ready(t *testing.T, dir string, ch <-chan struct{}, holdoff time.Duration) {
	t.Helper()
	sentinel := filepath.Join(dir, ".watch-ready")
	end := time.Now().Add(deadline)
	for i := 0; ; i++ {
		write(t, sentinel, fmt.Sprint(i))
		if within(ch, 2*holdoff) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the watcher saw no event in %s within %s", dir, deadline)
		}
	}
	quiesce(ch, 2*holdoff)
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// noPoll keeps the poll fallback out of tests about file events.
const noPoll = time.Hour

func TestEventsDebounced(t *testing.T) {
	const holdoff = 100 * time.Millisecond
	tests := []struct {
		name   string
		watch  func(dir string) string // the path given to Run
		change func(t *testing.T, dir string)
	}{
		{
			name:  "burst of 20 writes to the watched file",
			watch: func(dir string) string { return filepath.Join(dir, "routes.yaml") },
			change: func(t *testing.T, dir string) {
				for i := range 20 {
					write(t, filepath.Join(dir, "routes.yaml"), fmt.Sprintf("version: %d\n", i))
				}
			},
		},
		{
			name:  "editor-style save: temporary file renamed over the target",
			watch: func(dir string) string { return filepath.Join(dir, "routes.yaml") },
			change: func(t *testing.T, dir string) {
				tmp := filepath.Join(dir, ".routes.yaml.tmp")
				write(t, tmp, "version: 2\n")
				if err := os.Rename(tmp, filepath.Join(dir, "routes.yaml")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "watched file removed",
			watch: func(dir string) string { return filepath.Join(dir, "routes.yaml") },
			change: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, "routes.yaml")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "watched file created after the start",
			watch: func(dir string) string { return filepath.Join(dir, "later.yaml") },
			change: func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "later.yaml"), "version: 1\n")
			},
		},
		{
			name:  "watched directory: new file",
			watch: func(dir string) string { return dir },
			change: func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "more.yaml"), "routes: {}\n")
			},
		},
		{
			name:  "watched directory: file changed, burst",
			watch: func(dir string) string { return dir },
			change: func(t *testing.T, dir string) {
				for i := range 20 {
					write(t, filepath.Join(dir, "routes.yaml"), fmt.Sprintf("version: %d\n", i))
				}
			},
		},
		{
			name:  "watched directory: Kubernetes ..data symlink swap",
			watch: func(dir string) string { return dir },
			change: func(t *testing.T, dir string) {
				if err := os.Mkdir(filepath.Join(dir, "..v2"), 0o755); err != nil {
					t.Fatal(err)
				}
				write(t, filepath.Join(dir, "..v2", "routes.yaml"), "version: 1\n")
				if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, "routes.yaml"), "version: 1\n")
			if err := os.Mkdir(filepath.Join(dir, "..v1"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			ch := run(t, tt.watch(dir), watch.Options{Holdoff: holdoff, Poll: noPoll})
			ready(t, dir, ch, holdoff)

			start := time.Now()
			tt.change(t, dir)
			took := time.Since(start)
			if !within(ch, deadline) {
				t.Fatalf("no notification within %s", deadline)
			}
			// Exactly one: the burst is coalesced. That holds only if the burst itself was
			// quicker than the hold-off, which a badly overloaded machine may not manage.
			n := count(ch, 3*holdoff)
			switch {
			case took > holdoff/2:
				t.Logf("the changes took %s, too long to check that they were coalesced (%d more notifications)", took, n)
			case n != 0:
				t.Errorf("%d more notifications after the first; want the burst coalesced into one", n)
			}
		})
	}
}

func TestHoldoffWaitsForQuiet(t *testing.T) {
	const holdoff = 100 * time.Millisecond
	dir := t.TempDir()
	file := filepath.Join(dir, "routes.yaml")
	ch := run(t, file, watch.Options{Holdoff: holdoff, MaxDelay: time.Hour, Poll: noPoll})
	ready(t, dir, ch, holdoff)

	start := time.Now()
	write(t, file, "version: 1\n")
	if !within(ch, deadline) {
		t.Fatalf("no notification within %s", deadline)
	}
	// Timers never fire early, so the notification cannot come before the hold-off.
	if d := time.Since(start); d < holdoff {
		t.Errorf("notified %s after the write; want at least the hold-off %s", d, holdoff)
	}
}

// TestMaxDelay writes every 10ms for 600ms, so the files are never quiet for the hold-off.
func TestMaxDelay(t *testing.T) {
	tests := []struct {
		name          string
		holdoff       time.Duration
		maxDelay      time.Duration
		duringWrites  bool // want a notification before the writes stop
		afterTheWrite bool // want a notification after they stop
	}{
		{name: "max delay bounds the hold-off", holdoff: 200 * time.Millisecond, maxDelay: 250 * time.Millisecond, duringWrites: true},
		{name: "without it the hold-off waits for quiet", holdoff: 500 * time.Millisecond, maxDelay: time.Hour, afterTheWrite: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "routes.yaml")
			ch := run(t, file, watch.Options{Holdoff: tt.holdoff, MaxDelay: tt.maxDelay, Poll: noPoll})
			ready(t, dir, ch, tt.holdoff)

			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			start := time.Now()
			var first, maxGap time.Duration
			during := 0
			last := start
			for i := 0; time.Since(start) < 600*time.Millisecond; i++ {
				write(t, file, fmt.Sprintf("version: %d\n", i))
				maxGap, last = max(maxGap, time.Since(last)), time.Now()
				select {
				case <-ch:
					if during == 0 {
						first = time.Since(start)
					}
					during++
				case <-tick.C:
				}
			}
			if tt.duringWrites {
				if during == 0 {
					t.Fatalf("no notification during 600ms of writes with MaxDelay %s", tt.maxDelay)
				}
				if first < tt.holdoff {
					t.Errorf("first notification %s after the writes started; want no earlier than the hold-off %s", first, tt.holdoff)
				}
				t.Logf("%d notifications during the writes, the first after %s", during, first)
			} else if during != 0 {
				if maxGap > tt.holdoff/2 {
					t.Logf("%d notifications during the writes, but writes were up to %s apart on this busy machine", during, maxGap)
				} else {
					t.Errorf("%d notifications during the writes; want none before the files are quiet", during)
				}
			}
			if tt.afterTheWrite && !within(ch, deadline) {
				t.Errorf("no notification after the writes stopped")
			}
		})
	}
}

func TestPoll(t *testing.T) {
	tests := []struct {
		name string
		path func(dir string) string
	}{
		{"file", func(dir string) string { return filepath.Join(dir, "routes.yaml") }},
		{"directory", func(dir string) string { return dir }},
		{"missing directory: polling is the fallback", func(dir string) string { return filepath.Join(dir, "missing", "routes.yaml") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, "routes.yaml"), "version: 1\n")
			ch := run(t, tt.path(dir), watch.Options{Holdoff: time.Hour, MaxDelay: time.Hour, Poll: 50 * time.Millisecond})
			// No file is touched: every notification is the poll's.
			for i := range 3 {
				if !within(ch, deadline) {
					t.Fatalf("poll notification %d did not come within %s", i+1, deadline)
				}
			}
		})
	}
}

// TestDirectoryRecreated removes the watched directory and creates it again (a volume
// remount, a checkout): the next poll must re-add the watch, so that later edits are seen
// at once rather than at the next poll.
func TestDirectoryRecreated(t *testing.T) {
	const (
		holdoff = 50 * time.Millisecond
		poll    = time.Second
	)
	tests := []struct {
		name string
		path func(conf string) string
	}{
		{"directory", func(conf string) string { return conf }},
		{"directory with a trailing slash", func(conf string) string { return conf + "/" }},
		{"directory with a trailing /.", func(conf string) string { return conf + "/." }},
		{"file in the directory", func(conf string) string { return filepath.Join(conf, "routes.yaml") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // mostly waiting for polls
			conf := filepath.Join(t.TempDir(), "conf")
			if err := os.Mkdir(conf, 0o755); err != nil {
				t.Fatal(err)
			}
			ch := run(t, tt.path(conf), watch.Options{Holdoff: holdoff, MaxDelay: time.Hour, Poll: poll})
			ready(t, conf, ch, holdoff)

			if err := os.RemoveAll(conf); err != nil {
				t.Fatal(err)
			}
			if !within(ch, deadline) {
				t.Fatalf("removing the directory was not noticed within %s", deadline)
			}
			quiesce(ch, 2*holdoff)
			if err := os.Mkdir(conf, 0o755); err != nil {
				t.Fatal(err)
			}
			// Two polls after the directory is back: the watch has been re-added by then.
			quiesce(ch, 0)
			for i := range 2 {
				if !within(ch, deadline) {
					t.Fatalf("poll %d did not come within %s", i+1, deadline)
				}
			}
			// The next poll is about a second away; an event gets here after the hold-off.
			start := time.Now()
			write(t, filepath.Join(conf, "routes.yaml"), "version: 1\n")
			if !within(ch, deadline) {
				t.Fatalf("no notification within %s", deadline)
			}
			if d := time.Since(start); d > poll/2 {
				t.Errorf("notified %s after the write; the directory is not watched again, only polled", d)
			}
		})
	}
}

func TestRunReturnsOnCancel(t *testing.T) {
	tests := []struct {
		name   string
		before bool // cancel before Run starts
		path   func(dir string) string
		opts   watch.Options
		// running waits until Run is in its loop.
		running func(t *testing.T, dir string, ch <-chan struct{})
	}{
		{
			name: "cancelled while watching",
			path: func(dir string) string { return filepath.Join(dir, "routes.yaml") },
			opts: watch.Options{Holdoff: 50 * time.Millisecond, Poll: noPoll},
			running: func(t *testing.T, dir string, ch <-chan struct{}) {
				ready(t, dir, ch, 50*time.Millisecond)
			},
		},
		{
			name: "cancelled while polling a missing directory",
			path: func(dir string) string { return filepath.Join(dir, "missing", "routes.yaml") },
			opts: watch.Options{Poll: 20 * time.Millisecond},
			running: func(t *testing.T, dir string, ch <-chan struct{}) {
				if !within(ch, deadline) {
					t.Fatalf("no poll within %s", deadline)
				}
			},
		},
		{
			name:   "cancelled before the start",
			before: true,
			path:   func(dir string) string { return dir },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.before {
				cancel()
			}
			changed := make(chan struct{}, 1)
			done := make(chan error, 1)
			go func() {
				done <- watch.Run(ctx, tt.path(dir), tt.opts, slog.New(slog.DiscardHandler), changed)
			}()
			if tt.running != nil {
				tt.running(t, dir, changed)
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v; want nil", err)
				}
			case <-time.After(deadline):
				t.Fatalf("Run did not return within %s of cancel", deadline)
			}
		})
	}
}
