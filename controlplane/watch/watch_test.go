package watch_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/watch"
)

// deadline bounds every wait for something that must happen; it is generous because it is
// only reached when the test fails.
const deadline = 5 * time.Second

// run starts watch.Run on the directory dir and returns its notification channel (capacity 1, as the
// control plane uses it). Run is stopped, and must return nil, when the test ends.
func run(t *testing.T, dir string, o watch.Options) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	changed := make(chan struct{}, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	go func() { done <- watch.Run(ctx, dir, o, log, changed) }()
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
		change func(t *testing.T, dir string)
	}{
		{
			name: "burst of 20 writes to the watched file",
			change: func(t *testing.T, dir string) {
				for i := range 20 {
					write(t, filepath.Join(dir, "routes.yaml"), fmt.Sprintf("version: %d\n", i))
				}
			},
		},
		{
			name: "editor-style save: temporary file renamed over the target",
			change: func(t *testing.T, dir string) {
				tmp := filepath.Join(dir, ".routes.yaml.tmp")
				write(t, tmp, "version: 2\n")
				if err := os.Rename(tmp, filepath.Join(dir, "routes.yaml")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "watched file removed",
			change: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, "routes.yaml")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "file created after the start",
			change: func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "later.yaml"), "version: 1\n")
			},
		},
		{
			name: "watched directory: new file",
			change: func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "more.yaml"), "routes: {}\n")
			},
		},
		{
			name: "watched directory: file changed, burst",
			change: func(t *testing.T, dir string) {
				for i := range 20 {
					write(t, filepath.Join(dir, "routes.yaml"), fmt.Sprintf("version: %d\n", i))
				}
			},
		},
		{
			name: "watched directory: Kubernetes ..data symlink swap",
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
			clock := newFakeClock()
			ch := run(t, dir, watch.Options{Holdoff: holdoff, Poll: noPoll, Clock: clock})
			clock.ready(t, dir, ch)

			tt.change(t, dir)
			// The watcher has seen the change once it starts a hold-off timer, and has
			// drained the burst once it stops restarting it.
			clock.waitArmed(t, 1)
			clock.waitQuiet(t)
			if within(ch, 0) {
				t.Fatal("notified before the hold-off passed")
			}
			clock.advance(holdoff)
			if !within(ch, deadline) {
				t.Fatalf("no notification within %s of the hold-off passing", deadline)
			}
			// Exactly one: the burst is coalesced. Only the fake clock fires timers, so
			// nothing else can come unless the watcher kept timers of earlier events.
			if n := count(ch, 5*clockQuiet); n != 0 {
				t.Errorf("%d more notifications after the first; want the burst coalesced into one", n)
			}
		})
	}
}

// clockQuiet is how long the watcher must leave the fake clock alone to count as idle.
const clockQuiet = 200 * time.Millisecond

// fakeClock fires timers only when the test advances it, so a test can count
// notifications without racing real timers.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Duration
	armed  int // timers started so far
	last   time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Duration
	c       chan time.Time
	stopped bool
}

func newFakeClock() *fakeClock { return &fakeClock{} }

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now + d, c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.armed++
	c.last = time.Now()
	return t.c, func() {
		c.mu.Lock()
		t.stopped = true
		c.mu.Unlock()
	}
}

// advance moves the clock on by d and fires the timers due.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now += d
	keep := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case t.at <= c.now:
			t.c <- time.Time{}
		default:
			keep = append(keep, t)
		}
	}
	c.timers = keep
}

func (c *fakeClock) armedCount() (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.armed, c.last
}

// waitArmed waits until the watcher has started at least n timers since ready.
func (c *fakeClock) waitArmed(t *testing.T, n int) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		if got, _ := c.armedCount(); got >= n {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the watcher started no timer within %s: it saw no event", deadline)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitQuiet waits until the watcher has started no timer for clockQuiet.
func (c *fakeClock) waitQuiet(t *testing.T) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		if _, last := c.armedCount(); time.Since(last) >= clockQuiet {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the watcher kept starting timers for %s", deadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ready is the fake-clock version of ready: it touches a sentinel file until the watcher
// starts a timer, then fires it and reads the notification, so the test starts idle.
func (c *fakeClock) ready(t *testing.T, dir string, ch <-chan struct{}) {
	t.Helper()
	sentinel := filepath.Join(dir, ".watch-ready")
	end := time.Now().Add(deadline)
	for i := 0; ; i++ {
		write(t, sentinel, fmt.Sprint(i))
		if n, _ := c.armedCount(); n > 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the watcher saw no event in %s within %s", dir, deadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.waitQuiet(t)
	c.advance(time.Hour) // past every hold-off and max delay
	if !within(ch, deadline) {
		t.Fatalf("no notification after the ready timers fired")
	}
	// Run's first notification (the watch is in place) and the fired timer's may both
	// come: drain them so the test starts idle.
	quiesce(ch, clockQuiet)
	c.mu.Lock()
	c.armed = 0
	c.mu.Unlock()
}

func TestHoldoffWaitsForQuiet(t *testing.T) {
	const holdoff = 100 * time.Millisecond
	dir := t.TempDir()
	file := filepath.Join(dir, "routes.yaml")
	ch := run(t, dir, watch.Options{Holdoff: holdoff, MaxDelay: time.Hour, Poll: noPoll})
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
			ch := run(t, dir, watch.Options{Holdoff: tt.holdoff, MaxDelay: tt.maxDelay, Poll: noPoll})
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
		{"directory", func(dir string) string { return dir }},
		{"missing directory: polling is the fallback", func(dir string) string { return filepath.Join(dir, "missing") }},
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
			path: func(dir string) string { return dir },
			opts: watch.Options{Holdoff: 50 * time.Millisecond, Poll: noPoll},
			running: func(t *testing.T, dir string, ch <-chan struct{}) {
				ready(t, dir, ch, 50*time.Millisecond)
			},
		},
		{
			name: "cancelled while polling a missing directory",
			path: func(dir string) string { return filepath.Join(dir, "missing") },
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
