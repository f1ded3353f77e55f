package usage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmedge/llmedge/controlplane/model"
)

// flaky is a store that can be taken down: inserts fail while down is set.
type flaky struct {
	Store
	down    atomic.Bool
	inserts atomic.Int64
}

func (f *flaky) Insert(ctx context.Context, rs []Record) error {
	if f.down.Load() {
		return errors.New("connection refused")
	}
	f.inserts.Add(1)
	return f.Store.Insert(ctx, rs)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type harness struct {
	l     *Ledger
	store *flaky
	spool *Spool
	reg   *prometheus.Registry
	stop  func()
}

func newHarness(t *testing.T, spoolMax int64, prices []model.Price) *harness {
	t.Helper()
	spool, err := OpenSpool(filepath.Join(t.TempDir(), "spool"), spoolMax)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{store: &flaky{Store: openSQLite(t)}, spool: spool, reg: prometheus.NewRegistry()}
	h.l = New(Options{
		Open:  func(context.Context) (Store, error) { return h.store, nil },
		Spool: spool, Prices: NewPrices(prices), Metrics: h.reg,
		FlushInterval: 5 * time.Millisecond, RetryInterval: 20 * time.Millisecond, BatchSize: 50,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.l.Run(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ledger Run: %v", err)
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			h.stop()
		}
	})
	return h
}

func (h *harness) count(t *testing.T) int64 {
	t.Helper()
	ts, err := h.store.Store.Totals(context.Background(), Query{Since: time.Unix(0, 0), Until: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, x := range ts {
		n += x.Requests
	}
	return n
}

// An idle ledger whose store opened reports it up before any record arrives (a monitor
// reading llmedge_usage_store_up must not see a fresh edge's store as down).
func TestLedgerStoreUpOnceOpened(t *testing.T) {
	h := newHarness(t, 64<<20, nil)
	eventually(t, "store_up 1 with no record written", func() bool { return testutil.ToFloat64(h.l.m.storeUp) == 1 })
	if n := h.store.inserts.Load(); n != 0 {
		t.Fatalf("%d inserts, want none", n)
	}
}

func TestLedgerStoreDownSpoolsThenReplays(t *testing.T) {
	h := newHarness(t, 64<<20, nil)
	now := time.Now()
	for i := range 100 {
		h.l.Add(rec(fmt.Sprint("up-", i), "alice", "t", "m", now, 1, 1, nil))
	}
	eventually(t, "100 records stored", func() bool { return h.count(t) == 100 })

	h.store.down.Store(true)
	for i := range 300 {
		h.l.Add(rec(fmt.Sprint("down-", i), "alice", "t", "m", now, 1, 1, nil))
	}
	eventually(t, "records spooled", func() bool { return testutil.ToFloat64(h.l.m.spooled) == 300 })
	if h.spool.Bytes() == 0 || testutil.ToFloat64(h.l.m.storeUp) != 0 {
		t.Fatalf("spool %d bytes, store_up %v", h.spool.Bytes(), testutil.ToFloat64(h.l.m.storeUp))
	}
	if n := h.count(t); n != 100 {
		t.Fatalf("%d records stored while the store was down, want 100", n)
	}
	// Some delivered again while down, and again after: still once each.
	for i := range 10 {
		h.l.Add(rec(fmt.Sprint("down-", i), "alice", "t", "m", now, 1, 1, nil))
	}
	h.store.down.Store(false)
	for i := range 50 {
		h.l.Add(rec(fmt.Sprint("after-", i), "alice", "t", "m", now, 1, 1, nil))
	}
	eventually(t, "spool replayed", func() bool { return h.spool.Empty() && h.count(t) == 450 })
	if got := testutil.ToFloat64(h.l.m.replayed); got < 300 {
		t.Errorf("replayed %v, want at least 300", got)
	}
	if got := testutil.ToFloat64(h.l.m.duplicates); got != 10 {
		t.Errorf("duplicates %v, want 10", got)
	}
	if got := testutil.ToFloat64(h.l.m.dropped); got != 0 {
		t.Errorf("dropped %v, want 0", got)
	}
}

func TestLedgerSpoolSurvivesRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	spool, err := OpenSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := spool.Append([]Record{rec("left-1", "a", "t", "m", time.Now(), 1, 1, nil), rec("left-2", "a", "t", "m", time.Now(), 1, 1, nil)}); err != nil {
		t.Fatal(err)
	}
	spool.Close()
	// A torn last line (crash mid-write) is skipped, the rest replays.
	files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	f, _ := os.OpenFile(files[0], os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"request_id":"tor`)
	f.Close()

	spool, err = OpenSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	store := openSQLite(t)
	l := New(Options{Open: func(context.Context) (Store, error) { return store, nil }, Spool: spool, RetryInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "left-over spool replayed", func() bool { return spool.Empty() })
	recs, err := store.Records(context.Background(), "t", time.Unix(0, 0), time.Now().Add(time.Hour))
	if err != nil || len(recs) != 2 {
		t.Fatalf("records %+v %v", recs, err)
	}
	if got := testutil.ToFloat64(l.m.dropped); got != 1 {
		t.Errorf("dropped (torn line) = %v, want 1", got)
	}
}

func TestLedgerSpoolBoundAlarmAndDrop(t *testing.T) {
	h := newHarness(t, 1<<20, nil)
	h.store.down.Store(true)
	big := strings.Repeat("x", 4000) // one record is about 4.5 KB on disk
	add := func(i int) {
		r := rec(fmt.Sprint("r-", i), "alice", "t", "m", time.Now(), 1, 1, nil)
		r.Route = big
		h.l.Add(r)
	}
	i := 0
	// Fill to 70 %, one record at a time: records still queued when the spool's size is read
	// would land after the check and could carry it past 80 %.
	for ; h.spool.Bytes()*10 < h.spool.MaxBytes()*7; i++ {
		add(i)
		n := float64(i + 1)
		eventually(t, "record spooled", func() bool { return testutil.ToFloat64(h.l.m.spooled) == n })
	}
	eventually(t, "queue drained to the spool", func() bool { return testutil.ToFloat64(h.l.m.spooled) == float64(i) })
	if testutil.ToFloat64(h.l.m.alarm) != 0 {
		t.Fatal("alarm raised below 80%")
	}
	for n := 0; n < 400; n++ { // more than the bound holds
		add(i)
		i++
	}
	eventually(t, "records dropped at the bound", func() bool {
		return testutil.ToFloat64(h.l.m.spooled)+testutil.ToFloat64(h.l.m.dropped) == float64(i)
	})
	if testutil.ToFloat64(h.l.m.alarm) != 1 {
		t.Error("alarm not raised above 80%")
	}
	if testutil.ToFloat64(h.l.m.dropped) == 0 || h.spool.Bytes() > h.spool.MaxBytes() {
		t.Errorf("dropped %v, spool %d of %d", testutil.ToFloat64(h.l.m.dropped), h.spool.Bytes(), h.spool.MaxBytes())
	}
	// The store returns: the spool drains and the alarm clears; what was spooled is stored.
	h.store.down.Store(false)
	eventually(t, "spool drained", func() bool { return h.spool.Empty() })
	if testutil.ToFloat64(h.l.m.alarm) != 0 {
		t.Error("alarm still raised after the spool drained")
	}
	if got, want := h.count(t), int64(testutil.ToFloat64(h.l.m.spooled)); got != want {
		t.Errorf("stored %d, spooled %d", got, want)
	}
}

func TestLedgerMetricsAndRetention(t *testing.T) {
	h := newHarness(t, 1<<20, []model.Price{{Upstream: "openai", Model: "gpt-4o", Input: 1, Output: 2, Cached: 1, Currency: "USD"}})
	h.l.Add(rec("m1", "alice", "t", "gpt-4o", time.Now(), 1e6, 1e6, nil))
	h.l.Add(rec("m2", "alice", "t", "unknown", time.Now(), 5, 5, nil))
	eventually(t, "stored", func() bool { return h.count(t) == 2 })
	if got := testutil.ToFloat64(h.l.m.cost.WithLabelValues("hk", "alice", "openai", "gpt-4o", "USD")); got != 3 {
		t.Errorf("cost metric %v, want 3", got)
	}
	if got := testutil.ToFloat64(h.l.m.requests.WithLabelValues("hk", "alice", "openai", "gpt-4o", "2xx")); got != 1 {
		t.Errorf("requests metric %v", got)
	}
	if got := testutil.ToFloat64(h.l.m.noPrice.WithLabelValues("openai", "unknown")); got != 1 {
		t.Errorf("price missing metric %v", got)
	}
	if got := testutil.ToFloat64(h.l.m.tokens.WithLabelValues("hk", "alice", "openai", "gpt-4o", "output")); got != 1e6 {
		t.Errorf("output tokens metric %v", got)
	}
	if n := testutil.CollectAndCount(h.reg, "llmedge_usage_request_duration_seconds", "llmedge_usage_time_to_first_byte_seconds"); n != 4 {
		t.Errorf("histogram series %d, want 4", n)
	}
}

func TestLedgerRetentionDeletes(t *testing.T) {
	store := openSQLite(t)
	spool, _ := OpenSpool(filepath.Join(t.TempDir(), "s"), 1<<20)
	if err := store.Insert(t.Context(), []Record{rec("ancient", "a", "t", "m", time.Now().AddDate(0, 0, -401), 1, 1, nil), rec("recent", "a", "t", "m", time.Now().AddDate(0, 0, -399), 1, 1, nil)}); err != nil {
		t.Fatal(err)
	}
	l := New(Options{Open: func(context.Context) (Store, error) { return store, nil }, Spool: spool,
		Retention: 400 * 24 * time.Hour, RetryInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "ancient record deleted", func() bool {
		rs, err := store.Records(context.Background(), "t", time.Unix(0, 0), time.Now())
		return err == nil && len(rs) == 1 && rs[0].RequestID == "recent"
	})
}

// The requested model comes from callers: their invented names cannot grow the metrics
// without bound, nor the records.
func TestLedgerModelLabelsBounded(t *testing.T) {
	h := newHarness(t, 1<<20, []model.Price{{Upstream: "openai", Model: "gpt-4o", Input: 1, Output: 1, Cached: 1, Currency: "USD"}})
	for i := range maxModelLabels + 50 {
		h.l.Add(rec(fmt.Sprint("junk-", i), "mallory", "t", fmt.Sprint("model-", i), time.Now(), 1, 1, nil))
	}
	h.l.Add(rec("priced", "mallory", "t", "gpt-4o", time.Now(), 1, 1, nil))
	if got := testutil.ToFloat64(h.l.m.requests.WithLabelValues("hk", "mallory", "openai", "other", "2xx")); got != 50 {
		t.Errorf("requests labelled other: %v, want 50", got)
	}
	if got := testutil.ToFloat64(h.l.m.requests.WithLabelValues("hk", "mallory", "openai", "gpt-4o", "2xx")); got != 1 {
		t.Errorf("a priced model keeps its label: %v", got)
	}
	if n := len(clip(strings.Repeat("é", 1000))); n > maxField {
		t.Errorf("clipped to %d bytes", n)
	}
}

// Records wait for the writer's timer; a whole batch queued wakes it at once.
func TestLedgerWritesOnItsTimerOrAFullBatch(t *testing.T) {
	spool, err := OpenSpool(filepath.Join(t.TempDir(), "spool"), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	store := &flaky{Store: openSQLite(t)}
	l := New(Options{Open: func(context.Context) (Store, error) { return store, nil }, Spool: spool,
		FlushInterval: time.Hour, BatchSize: 10})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ledger Run: %v", err)
		}
	}()
	now := time.Now()
	for i := range 9 {
		l.Add(rec(fmt.Sprint("r-", i), "alice", "t", "m", now, 1, 1, nil))
	}
	if n := store.inserts.Load(); n != 0 {
		t.Fatalf("%d inserts before the timer or a whole batch", n)
	}
	l.Add(rec("r-9", "alice", "t", "m", now, 1, 1, nil))
	eventually(t, "the batch of 10 inserted", func() bool { return store.inserts.Load() > 0 })
	ts, err := store.Store.Totals(context.Background(), Query{Since: time.Unix(0, 0), Until: time.Now().Add(time.Hour)})
	if err != nil || len(ts) != 1 || ts[0].Requests != 10 {
		t.Fatalf("totals %+v, %v; want 10 requests", ts, err)
	}
}
