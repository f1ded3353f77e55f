package usage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// AccessLogOptions configure an AccessLog.
type AccessLogOptions struct {
	Dir string // created 0700; files are 0600
	// Retention deletes a day's files once the whole day is older than this; default 14 days.
	Retention    time.Duration
	MaxFileBytes int64 // a file past this size continues in the next; default 100 MiB
	QueueSize    int   // lines waiting for the disk; default 8192
	// FlushInterval is how often queued lines are written (sooner once the queue is half
	// full); default 200ms. Lines are not written as they come: waking the writer for
	// every message from Envoy costs the control plane more than the writing.
	FlushInterval time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
	Metrics       prometheus.Registerer
	// Open opens a file for appending; tests inject a slow disk. Default os.OpenFile.
	Open func(name string) (io.WriteCloser, error)
	// PruneInterval is how often old files are looked for besides each new day; default 1h.
	PruneInterval time.Duration
}

// Access log defaults (docs/CONFIG.md#usage).
const (
	DefaultAccessLogRetention    = 14 * 24 * time.Hour
	DefaultAccessLogMaxFileBytes = 100 << 20
)

// AccessLog writes access log lines as JSON, one file per region and UTC day
// (access-<region>-<yyyy-mm-dd>[.<n>].jsonl), continuing in the next numbered file past
// the size bound, and deletes days past retention. Add never blocks: lines wait in a
// bounded queue and a slow disk drops them, counted and logged.
type AccessLog struct {
	o   AccessLogOptions
	log *slog.Logger
	q   chan Line
	// kick wakes the writer before its next flush when the queue is half full.
	kick chan struct{}

	written, dropped, deleted prometheus.Counter
	writeErrors               prometheus.Counter

	droppedSince atomic.Int64 // drops not yet reported in a log line
	lastReport   atomic.Int64 // unix nanos of the last drop log line

	files map[string]*logFile // by region; only Run's goroutine touches it
	day   string
}

type logFile struct {
	w    io.WriteCloser
	day  string
	seq  int
	size int64
}

// NewAccessLog prepares dir (0700) and the metrics; Run writes.
func NewAccessLog(o AccessLogOptions) (*AccessLog, error) {
	if o.Retention <= 0 {
		o.Retention = DefaultAccessLogRetention
	}
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = DefaultAccessLogMaxFileBytes
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 8192
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = prometheus.NewRegistry()
	}
	if o.PruneInterval <= 0 {
		o.PruneInterval = time.Hour
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 200 * time.Millisecond
	}
	if o.Open == nil {
		o.Open = func(name string) (io.WriteCloser, error) {
			return os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("access log dir: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone: the lines name callers and
	// their addresses, so nobody else may list or read them.
	if err := os.Chmod(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("access log dir: %w", err)
	}
	a := &AccessLog{o: o, log: o.Logger.With("component", "access_log"), q: make(chan Line, o.QueueSize), kick: make(chan struct{}, 1), files: map[string]*logFile{}}
	a.written = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmedge_access_log_lines_written_total",
		Help: "Access log lines written to the files in usage.access_log.dir."})
	a.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmedge_access_log_lines_dropped_total",
		Help: "Access log lines lost because the disk was too slow (queue full) or a write failed."})
	a.writeErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmedge_access_log_write_errors_total",
		Help: "Failed access log file writes or opens."})
	a.deleted = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmedge_access_log_files_deleted_total",
		Help: "Access log files deleted past usage.access_log.retention_days."})
	o.Metrics.MustRegister(a.written, a.dropped, a.writeErrors, a.deleted)
	return a, nil
}

// Add queues a line. It never waits: with the queue full (the disk is slower than the
// traffic) the line is dropped, counted, and reported in a log line at most every 10 s.
func (a *AccessLog) Add(l Line) {
	select {
	case a.q <- l:
	default:
		a.drop(1, "access log queue full: the disk is slower than the traffic; lines dropped")
	}
	if len(a.q) >= cap(a.q)/2 {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

func (a *AccessLog) drop(n int, msg string) {
	a.dropped.Add(float64(n))
	total := a.droppedSince.Add(int64(n))
	now := time.Now().UnixNano()
	last := a.lastReport.Load()
	if now-last >= int64(10*time.Second) && a.lastReport.CompareAndSwap(last, now) {
		a.droppedSince.Add(-total)
		a.log.Error(msg, "dropped", total, "dir", a.o.Dir)
	}
}

// Run writes queued lines every FlushInterval (or once the queue is half full) until ctx
// ends, then writes what is queued and closes the files.
func (a *AccessLog) Run(ctx context.Context) error {
	prune := time.NewTicker(a.o.PruneInterval)
	defer prune.Stop()
	flush := time.NewTicker(a.o.FlushInterval)
	defer flush.Stop()
	a.prune()
	batch := make([]Line, 0, accessLogBatch)
	writeQueued := func() {
		for {
			b := a.drain(batch[:0], cap(batch))
			if len(b) == 0 {
				return
			}
			a.write(b)
		}
	}
	for {
		select {
		case <-ctx.Done():
			writeQueued()
			return a.closeAll()
		case <-flush.C:
			writeQueued()
		case <-a.kick:
			writeQueued()
		case <-prune.C:
			a.prune()
		}
	}
}

// accessLogBatch is the most lines one write takes from the queue.
const accessLogBatch = 1024

// drain adds queued lines to batch, up to max, without waiting.
func (a *AccessLog) drain(batch []Line, max int) []Line {
	for len(batch) < max {
		select {
		case l := <-a.q:
			batch = append(batch, l)
		default:
			return batch
		}
	}
	return batch
}

// write appends a batch, one write per region file.
func (a *AccessLog) write(batch []Line) {
	if len(batch) == 0 {
		return
	}
	now := a.o.Now().UTC()
	if day := now.Format(time.DateOnly); day != a.day {
		if a.day != "" {
			_ = a.closeAll()
			a.prune()
		}
		a.day = day
	}
	byRegion := map[string]*bytes.Buffer{}
	var regions []string
	count := map[string]int{}
	for _, l := range batch {
		b := byRegion[l.Region]
		if b == nil {
			b = &bytes.Buffer{}
			byRegion[l.Region] = b
			regions = append(regions, l.Region)
		}
		line, err := json.Marshal(l)
		if err != nil { // only strings and numbers: cannot happen, but never lose silently
			a.drop(1, "access log line could not be encoded")
			continue
		}
		// Region names are validated ([a-z0-9_-]), but the file name must not depend on it.
		if !regionFileRE.MatchString(l.Region) {
			a.drop(1, "access log line with an unusable region name dropped")
			continue
		}
		b.Write(line)
		b.WriteByte('\n')
		count[l.Region]++
	}
	for _, r := range regions {
		if count[r] == 0 {
			continue
		}
		if err := a.append(r, byRegion[r].Bytes()); err != nil {
			a.writeErrors.Inc()
			a.drop(count[r], "access log write failed; lines dropped: "+err.Error())
			continue
		}
		a.written.Add(float64(count[r]))
	}
}

var regionFileRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// append writes b to region's file of the current day, moving to the next numbered file
// when this one would pass the size bound (a batch is never split across files).
func (a *AccessLog) append(region string, b []byte) error {
	f := a.files[region]
	if f != nil && f.day != a.day {
		f.w.Close()
		f = nil
	}
	if f == nil {
		seq, size := a.lastFile(region, a.day)
		f = &logFile{day: a.day, seq: seq, size: size}
		if err := a.open(region, f); err != nil {
			return err
		}
		a.files[region] = f
	}
	if f.size > 0 && f.size+int64(len(b)) > a.o.MaxFileBytes {
		f.w.Close()
		f.seq++
		f.size = 0
		if err := a.open(region, f); err != nil {
			delete(a.files, region)
			return err
		}
	}
	n, err := f.w.Write(b)
	f.size += int64(n)
	if err != nil {
		f.w.Close()
		delete(a.files, region) // reopened (and re-measured) with the next line
		return err
	}
	return nil
}

func (a *AccessLog) open(region string, f *logFile) error {
	w, err := a.o.Open(filepath.Join(a.o.Dir, accessFileName(region, f.day, f.seq)))
	if err != nil {
		return err
	}
	f.w = w
	return nil
}

func accessFileName(region, day string, seq int) string {
	if seq == 0 {
		return "access-" + region + "-" + day + ".jsonl"
	}
	return "access-" + region + "-" + day + "." + strconv.Itoa(seq) + ".jsonl"
}

var accessFileRE = regexp.MustCompile(`^access-([a-z0-9][a-z0-9_-]*)-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.jsonl$`)

// lastFile finds where a restarted control plane continues: the highest numbered file of
// region and day, and its size.
func (a *AccessLog) lastFile(region, day string) (seq int, size int64) {
	ents, err := os.ReadDir(a.o.Dir)
	if err != nil {
		return 0, 0
	}
	for _, e := range ents {
		m := accessFileRE.FindStringSubmatch(e.Name())
		if m == nil || m[1] != region || m[2] != day {
			continue
		}
		n := 0
		if m[3] != "" {
			n, _ = strconv.Atoi(m[3])
		}
		if n >= seq {
			seq = n
			if info, err := e.Info(); err == nil {
				size = info.Size()
			}
		}
	}
	return seq, size
}

// prune deletes the files of days that ended more than the retention ago.
func (a *AccessLog) prune() {
	ents, err := os.ReadDir(a.o.Dir)
	if err != nil {
		a.log.Error("access log retention: cannot list the directory", "dir", a.o.Dir, "err", err.Error())
		return
	}
	now := a.o.Now().UTC()
	var removed []string
	for _, e := range ents {
		m := accessFileRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		day, err := time.Parse(time.DateOnly, m[2])
		if err != nil {
			continue
		}
		if now.Sub(day.Add(24*time.Hour)) < a.o.Retention {
			continue
		}
		if err := os.Remove(filepath.Join(a.o.Dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Error("access log retention: cannot delete a file", "file", e.Name(), "err", err.Error())
			continue
		}
		a.deleted.Inc()
		removed = append(removed, e.Name())
	}
	if len(removed) > 0 {
		sort.Strings(removed)
		a.log.Info("access log files past retention deleted", "files", removed, "retention", a.o.Retention.String())
	}
}

func (a *AccessLog) closeAll() error {
	var errs []error
	for r, f := range a.files {
		if err := f.w.Close(); err != nil {
			errs = append(errs, err)
		}
		delete(a.files, r)
	}
	return errors.Join(errs...)
}
