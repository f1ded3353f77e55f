// Package watch tells the routes providers (config.FileProvider, config.DirProvider) when
// the files in a directory may have changed. Watching the directory rather than a file sees
// editors that save by writing a temporary file and renaming it, and Kubernetes' symlink
// swaps. It coalesces bursts of events with a hold-off and a maximum delay, and polls as a
// fallback for file systems without inotify. It never reads the files: the reload decides
// by content hash whether anything changed.
package watch

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Options tune the debounce. Zero values get the defaults.
type Options struct {
	// Holdoff is how long the files must be quiet before a reload (default 30ms: long
	// enough to cover an editor's write-and-rename, short enough not to dominate a push).
	Holdoff time.Duration
	// MaxDelay bounds how long a stream of events can postpone a reload (default 1s).
	MaxDelay time.Duration
	// Poll triggers a reload check this often even without events (default 10s).
	Poll time.Duration
	// Clock makes the hold-off and max-delay timers; nil is the real clock. Tests inject
	// one to count notifications without racing real timers.
	Clock Clock
}

// Clock starts timers. After returns a channel that receives once d has passed, and a
// function that stops the timer.
type Clock interface {
	After(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

func (o *Options) defaults() {
	if o.Holdoff <= 0 {
		o.Holdoff = 30 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Second
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
}

// Run watches the directory dir (which may not exist yet: it is then polled until it does)
// and sends on changed, without blocking, whenever a reload is due. It returns when ctx ends.
func Run(ctx context.Context, dir string, o Options, log *slog.Logger, changed chan<- struct{}) error {
	o.defaults()
	// Clean, so that "routes.d/" compares equal to the event names fsnotify reports for the
	// directory itself (it cleans the path it watches).
	dir = filepath.Clean(dir)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	watching := false
	add := func() {
		if watching {
			return
		}
		if err := w.Add(dir); err != nil {
			log.Warn("cannot watch the routes directory; falling back to polling", "dir", dir, "error", err)
			return
		}
		watching = true
	}
	notify := func() {
		select {
		case changed <- struct{}{}:
		default: // a reload is already pending; it will read the latest files
		}
	}
	add()
	if watching {
		// The caller loaded the files before calling Run: an edit made before the watch was
		// in place would otherwise wait for the next poll.
		notify()
	}
	poll := time.NewTicker(o.Poll)
	defer poll.Stop()
	var (
		holdC, maxC       <-chan time.Time
		stopHold, stopMax = func() {}, func() {}
		pending           bool
	)
	defer func() { stopHold(); stopMax() }()
	fire := func() {
		pending = false
		stopHold()
		stopMax()
		holdC, maxC = nil, nil
		notify()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Name == dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				watching = false // the directory itself went away; poll re-adds it
			}
			if !pending {
				pending = true
				maxC, stopMax = o.Clock.After(o.MaxDelay)
			}
			stopHold()
			holdC, stopHold = o.Clock.After(o.Holdoff)
		case <-holdC:
			fire()
		case <-maxC:
			fire()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("routes watcher error", "error", err)
		case <-poll.C:
			add()
			notify()
		}
	}
}
