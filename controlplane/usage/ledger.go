package usage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Ledger. Open is retried until it succeeds: a PostgreSQL that is down
// when the control plane starts only means records spool for a while.
type Options struct {
	Open      func(ctx context.Context) (Store, error)
	Spool     *Spool
	Prices    *Prices
	Retention time.Duration // records older than this are deleted; 0 keeps everything
	Logger    *slog.Logger
	Metrics   prometheus.Registerer

	QueueSize     int           // records waiting for the writer; default 8192
	BatchSize     int           // records per insert; default 500
	FlushInterval time.Duration // a partial batch waits at most this long; default 200ms
	RetryInterval time.Duration // store reopen and spool replay; default 1s
	StoreTimeout  time.Duration // one insert; default 5s
	// RetentionInterval is how often old records are deleted; default 1h.
	RetentionInterval time.Duration
}

// Ledger receives records and writes them to the store off the receive path.
type Ledger struct {
	o   Options
	log *slog.Logger
	q   chan Record
	// kick wakes the writer before its next flush once a batch is queued.
	kick    chan struct{}
	prices  atomic.Pointer[Prices]
	m       *metrics
	seen    *recent
	storeMu sync.Mutex
	store   Store
	down    bool // the last store operation failed (for one log line per outage)
	alarm   atomic.Bool
}

// ErrNoStore is returned by queries while the store cannot be reached.
var ErrNoStore = errors.New("usage store unavailable")

// New builds a ledger; Run drives it.
func New(o Options) *Ledger {
	if o.QueueSize <= 0 {
		o.QueueSize = 8192
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 200 * time.Millisecond
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = time.Second
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 5 * time.Second
	}
	if o.RetentionInterval <= 0 {
		o.RetentionInterval = time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = prometheus.NewRegistry()
	}
	l := &Ledger{o: o, log: o.Logger.With("component", "usage"), q: make(chan Record, o.QueueSize), kick: make(chan struct{}, 1), seen: newRecent(1 << 16)}
	l.prices.Store(o.Prices)
	l.m = newMetrics(o.Metrics, o.Spool)
	return l
}

// SetPrices swaps the price table (on a routes YAML edit); later records use it.
func (l *Ledger) SetPrices(p *Prices) { l.prices.Store(p) }

// Add prices r and queues it. It never blocks: when the queue is full the record goes to
// the spool, and when the spool is full it is dropped and counted. A request id seen
// recently is ignored here (the store's unique key catches older repeats). It returns the
// record as the ledger keeps it (id, time and price filled in) and whether it was new.
func (l *Ledger) Add(r Record) (Record, bool) {
	if r.RequestID == "" {
		// Envoy always generates x-request-id; without one the record cannot be made
		// idempotent, so it gets an id of its own.
		var b [12]byte
		_, _ = rand.Read(b[:])
		r.RequestID = "llmedge-none-" + hex.EncodeToString(b[:])
	}
	if r.Time.IsZero() {
		r.Time = time.Now().UTC() // an entry without a start time still belongs to today
	}
	if !l.seen.add(r.RequestID) {
		l.m.duplicates.Inc()
		return r, false
	}
	l.prices.Load().Apply(&r)
	l.m.observe(r)
	select {
	case l.q <- r:
	default:
		l.spool([]Record{r})
	}
	if len(l.q) >= l.o.BatchSize {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	return r, true
}

// Run writes queued records every FlushInterval, and as soon as a batch is queued, until
// ctx ends; then it flushes what it holds (to the store, or the spool) and closes the
// store. Records are not taken as they come: waking the writer for every message from
// Envoy costs the control plane more than the insert.
func (l *Ledger) Run(ctx context.Context) error {
	flush := time.NewTicker(l.o.FlushInterval)
	defer flush.Stop()
	retry := time.NewTicker(l.o.RetryInterval)
	defer retry.Stop()
	var lastRetention time.Time
	batch := make([]Record, 0, l.o.BatchSize)
	write := func() {
		if len(batch) > 0 {
			l.write(ctx, batch)
			batch = make([]Record, 0, l.o.BatchSize)
		}
	}
	writeQueued := func() {
		for {
			select {
			case r := <-l.q:
				batch = append(batch, r)
				if len(batch) >= l.o.BatchSize {
					write()
				}
			default:
				write()
				return
			}
		}
	}
	l.connect(ctx)
	for {
		select {
		case <-ctx.Done():
		drain:
			for {
				select {
				case r := <-l.q:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			l.write(context.WithoutCancel(ctx), batch)
			l.storeMu.Lock()
			if l.store != nil {
				l.store.Close()
				l.store = nil
			}
			l.storeMu.Unlock()
			return l.o.Spool.Close()
		case <-flush.C:
			writeQueued()
		case <-l.kick:
			writeQueued()
		case <-retry.C:
			l.connect(ctx)
			l.replay(ctx)
			if l.o.Retention > 0 && time.Since(lastRetention) >= l.o.RetentionInterval {
				if l.retain(ctx) {
					lastRetention = time.Now()
				}
			}
		}
	}
}

// connect opens the store if it is not open.
func (l *Ledger) connect(ctx context.Context) {
	l.storeMu.Lock()
	open := l.store != nil
	l.storeMu.Unlock()
	if open {
		return
	}
	octx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
	s, err := l.o.Open(octx)
	cancel()
	if err != nil {
		l.storeFailed("open", err)
		return
	}
	l.storeMu.Lock()
	l.store = s
	l.storeMu.Unlock()
	// An open store is up: an idle edge must not report it down until its first record.
	l.storeOK()
}

func (l *Ledger) current() Store {
	l.storeMu.Lock()
	defer l.storeMu.Unlock()
	return l.store
}

func (l *Ledger) storeFailed(op string, err error) {
	l.m.storeUp.Set(0)
	if !l.down {
		l.log.Error("usage store failing; records spool to disk until it returns", "op", op, "err", err.Error())
	}
	l.down = true
}

func (l *Ledger) storeOK() {
	l.m.storeUp.Set(1)
	if l.down {
		l.log.Info("usage store back")
	}
	l.down = false
}

// write inserts a batch, or spools it when the store fails or older records still wait
// in the spool (so that replay keeps their order).
func (l *Ledger) write(ctx context.Context, batch []Record) {
	if len(batch) == 0 {
		return
	}
	s := l.current()
	if s == nil || !l.o.Spool.Empty() {
		l.spool(batch)
		return
	}
	ictx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
	err := s.Insert(ictx, batch)
	cancel()
	if err != nil {
		l.storeFailed("insert", err)
		l.spool(batch)
		return
	}
	l.storeOK()
	l.m.written.Add(float64(len(batch)))
}

// spool appends to the disk spool; past its bound the records are dropped and counted.
func (l *Ledger) spool(rs []Record) {
	err := l.o.Spool.Append(rs)
	l.updateSpoolAlarm()
	if err == nil {
		l.m.spooled.Add(float64(len(rs)))
		return
	}
	l.m.dropped.Add(float64(len(rs)))
	if errors.Is(err, ErrSpoolFull) {
		l.log.Error("usage spool full: records dropped (traffic is not affected)", "dropped", len(rs), "spool_bytes", l.o.Spool.Bytes(), "max_bytes", l.o.Spool.MaxBytes())
		return
	}
	l.log.Error("usage spool write failed: records dropped", "dropped", len(rs), "err", err.Error())
}

// updateSpoolAlarm raises the alarm at 80 % of the bound and clears it below.
func (l *Ledger) updateSpoolAlarm() {
	b, max := l.o.Spool.Bytes(), l.o.Spool.MaxBytes()
	high := b*5 >= max*4
	if high && !l.alarm.Swap(true) {
		l.m.alarm.Set(1)
		l.log.Error("usage spool above 80% of its bound: the usage store has been failing; records will be dropped at the bound", "spool_bytes", b, "max_bytes", max)
	} else if !high && l.alarm.Swap(false) {
		l.m.alarm.Set(0)
		l.log.Info("usage spool back below 80% of its bound", "spool_bytes", b, "max_bytes", max)
	}
}

// replay writes spooled files to the store, oldest first, until the spool is empty or the
// store fails. A file is removed only after its records are committed; a crash between
// the two replays it again, which the unique request id makes harmless.
func (l *Ledger) replay(ctx context.Context) {
	for ctx.Err() == nil && !l.o.Spool.Empty() {
		s := l.current()
		if s == nil {
			return
		}
		seq, rs, bad, err := l.o.Spool.Oldest()
		if err != nil {
			l.log.Error("usage spool read failed", "err", err.Error())
			return
		}
		if bad > 0 {
			l.m.dropped.Add(float64(bad))
			l.log.Error("usage spool: unreadable lines skipped", "lines", bad)
		}
		for start := 0; start < len(rs); start += l.o.BatchSize {
			chunk := rs[start:min(start+l.o.BatchSize, len(rs))]
			ictx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
			err := s.Insert(ictx, chunk)
			cancel()
			if err != nil {
				l.storeFailed("replay", err)
				return
			}
		}
		l.storeOK()
		if err := l.o.Spool.Remove(seq); err != nil {
			l.log.Error("usage spool remove failed", "err", err.Error())
			return
		}
		l.m.replayed.Add(float64(len(rs)))
		l.updateSpoolAlarm()
	}
}

func (l *Ledger) retain(ctx context.Context) bool {
	s := l.current()
	if s == nil {
		return false
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n, err := s.DeleteBefore(dctx, time.Now().Add(-l.o.Retention))
	if err != nil {
		l.log.Error("usage retention failed", "err", err.Error())
		return false
	}
	if n > 0 {
		l.log.Info("usage records past retention deleted", "deleted", n, "retention", l.o.Retention.String())
	}
	return true
}

// Totals and Records query the store.
func (l *Ledger) Totals(ctx context.Context, q Query) ([]Total, error) {
	s := l.current()
	if s == nil {
		return nil, ErrNoStore
	}
	return s.Totals(ctx, q)
}

func (l *Ledger) Records(ctx context.Context, tenant string, from, to time.Time) ([]Record, error) {
	s := l.current()
	if s == nil {
		return nil, ErrNoStore
	}
	return s.Records(ctx, tenant, from, to)
}

// recent remembers the last n request ids, so that a record delivered twice in a short
// while is counted once in the metrics too.
type recent struct {
	mu   sync.Mutex
	set  map[string]struct{}
	ring []string
	pos  int
}

func newRecent(n int) *recent {
	return &recent{set: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add reports whether id is new.
func (r *recent) add(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[id]; ok {
		return false
	}
	if old := r.ring[r.pos]; old != "" {
		delete(r.set, old)
	}
	r.ring[r.pos] = id
	r.pos = (r.pos + 1) % len(r.ring)
	r.set[id] = struct{}{}
	return true
}
