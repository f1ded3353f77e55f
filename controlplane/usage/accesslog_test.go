package usage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/internal/wire"
)

// clock is a settable time for day rotation and retention.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// startAccessLog runs an AccessLog until the test ends and waits for it to stop.
func startAccessLog(t *testing.T, o AccessLogOptions) *AccessLog {
	t.Helper()
	a, err := NewAccessLog(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a
}

// waitWritten polls the written counter with a deadline.
func waitWritten(t *testing.T, a *AccessLog, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(a.written) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%v lines written, want %v (dropped %v)", testutil.ToFloat64(a.written), n, testutil.ToFloat64(a.dropped))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func line(region, id string) Line {
	return Line{Record: Record{Region: region, RequestID: id, Caller: "alice", Status: 200}, Method: "POST", Path: "/v1/chat/completions"}
}

// readLines returns every file's lines, by file name.
func readLines(t *testing.T, dir string) map[string][]Line {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]Line{}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var l Line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("%s: %v: %s", e.Name(), err, sc.Bytes())
			}
			out[e.Name()] = append(out[e.Name()], l)
		}
		f.Close()
	}
	return out
}

func TestAccessLogRotatesByDay(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "access")
	c := &clock{now: time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC)}
	a := startAccessLog(t, AccessLogOptions{Dir: dir, Now: c.Now})
	a.Add(line("hk", "1"))
	a.Add(line("sg", "2"))
	waitWritten(t, a, 2)
	c.Set(time.Date(2026, 12, 1, 0, 0, 1, 0, time.UTC))
	a.Add(line("hk", "3"))
	a.Add(line("hk", "4"))
	waitWritten(t, a, 4)

	got := readLines(t, dir)
	want := map[string][]string{
		"access-hk-2026-11-30.jsonl": {"1"},
		"access-sg-2026-11-30.jsonl": {"2"},
		"access-hk-2026-12-01.jsonl": {"3", "4"},
	}
	if len(got) != len(want) {
		t.Fatalf("files %v, want %v", keys(got), want)
	}
	for name, ids := range want {
		var gotIDs []string
		for _, l := range got[name] {
			gotIDs = append(gotIDs, l.RequestID)
		}
		if fmt.Sprint(gotIDs) != fmt.Sprint(ids) {
			t.Errorf("%s: ids %v, want %v", name, gotIDs, ids)
		}
	}
}

func TestAccessLogRotatesBySize(t *testing.T) {
	dir := t.TempDir()
	c := &clock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	one, _ := json.Marshal(line("hk", "00"))
	per := int64(len(one) + 1)
	a := startAccessLog(t, AccessLogOptions{Dir: dir, Now: c.Now, MaxFileBytes: 3 * per})
	for i := range 10 { // one at a time: a batch is never split across files
		a.Add(line("hk", fmt.Sprintf("%02d", i)))
		waitWritten(t, a, float64(i+1))
	}
	got := readLines(t, dir)
	names := keys(got)
	want := []string{"access-hk-2026-11-30.1.jsonl", "access-hk-2026-11-30.2.jsonl", "access-hk-2026-11-30.3.jsonl", "access-hk-2026-11-30.jsonl"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("files %v, want %v", names, want)
	}
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 3*per {
			t.Errorf("%s: %d bytes, past the bound %d", n, fi.Size(), 3*per)
		}
	}
	if len(got["access-hk-2026-11-30.3.jsonl"]) != 1 || got["access-hk-2026-11-30.3.jsonl"][0].RequestID != "09" {
		t.Errorf("last file: %+v", got["access-hk-2026-11-30.3.jsonl"])
	}

	// A restart continues in the last numbered file.
	b, err := NewAccessLog(AccessLogOptions{Dir: dir, Now: c.Now, MaxFileBytes: 3 * per})
	if err != nil {
		t.Fatal(err)
	}
	if seq, size := b.lastFile("hk", "2026-11-30"); seq != 3 || size != per {
		t.Errorf("lastFile = %d, %d; want 3, %d", seq, size, per)
	}
}

func TestAccessLogRetention(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	files := map[string]bool{ // name: kept
		"access-hk-2026-11-30.jsonl":      true,
		"access-hk-2026-11-16.jsonl":      true,  // ended 13.5 days ago
		"access-hk-2026-11-15.jsonl":      false, // ended 14.5 days ago
		"access-hk-2026-11-15.4.jsonl":    false,
		"access-sg-west-2026-10-01.jsonl": false,
		"notes.txt":                       true, // not ours
		"access-hk-latest.jsonl":          true,
	}
	for n := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, err := NewAccessLog(AccessLogOptions{Dir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	a.prune()
	for n, kept := range files {
		_, err := os.Stat(filepath.Join(dir, n))
		if kept && err != nil {
			t.Errorf("%s deleted: %v", n, err)
		}
		if !kept && err == nil {
			t.Errorf("%s kept past retention", n)
		}
	}
	if got := testutil.ToFloat64(a.deleted); got != 3 {
		t.Errorf("deleted counter %v, want 3", got)
	}
}

func TestAccessLogPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "access")
	if err := os.Mkdir(dir, 0o755); err != nil { // left too open by someone
		t.Fatal(err)
	}
	a := startAccessLog(t, AccessLogOptions{Dir: dir})
	a.Add(line("hk", "1"))
	waitWritten(t, a, 1)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %04o, want 0700", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("files %v", ents)
	}
	info, _ := ents[0].Info()
	if info.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %04o, want 0600", ents[0].Name(), info.Mode().Perm())
	}
}

// stalled is a disk whose writes wait until released.
type stalled struct{ release chan struct{} }

func (s stalled) Write(p []byte) (int, error) { <-s.release; return len(p), nil }
func (s stalled) Close() error                { return nil }

func TestAccessLogNeverBlocksOnAStalledDisk(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))
	disk := stalled{release: make(chan struct{})}
	a := startAccessLog(t, AccessLogOptions{
		Dir: t.TempDir(), QueueSize: 16, Logger: log,
		Open: func(string) (io.WriteCloser, error) { return disk, nil },
	})
	const n = 2000
	done := make(chan struct{})
	go func() {
		for i := range n {
			a.Add(line("hk", fmt.Sprint(i)))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(disk.release)
		t.Fatal("Add blocked behind a stalled disk")
	}
	// At most the queue and one batch the writer holds (drained while Add kept
	// filling the queue) got through.
	if d := testutil.ToFloat64(a.dropped); d < n-16-accessLogBatch {
		t.Errorf("dropped %v lines, want at least %d", d, n-16-accessLogBatch)
	}
	logMu.Lock()
	if !strings.Contains(logs.String(), "access log queue full") {
		t.Errorf("no log line about the drops:\n%s", logs.String())
	}
	logMu.Unlock()
	close(disk.release)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(a.written)+testutil.ToFloat64(a.dropped) != n {
		if time.Now().After(deadline) {
			t.Fatalf("written %v + dropped %v != %d", testutil.ToFloat64(a.written), testutil.ToFloat64(a.dropped), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestAccessLogMasksCredentials feeds entries carrying a canary credential in every header
// a caller or the edge uses, in the query and in the path, and greps the files for it.
func TestAccessLogMasksCredentials(t *testing.T) {
	const (
		canaryToken = "llme_CANARYcanary0123456789abcdefCANARY"
		canaryKey   = "sk-proj-CANARYkey0123456789"
		canaryBare  = "CANARYbare0123456789abcdefghijklmnop" // no known prefix
		canaryGoog  = "AIzaCANARYgoog0123456789"
	)
	canaries := []string{canaryToken, canaryKey, canaryBare, canaryGoog, "CANARY"}
	headers := map[string]string{
		wire.HeaderAuthorization: "Bearer " + canaryToken,
		wire.HeaderAPIKey:        canaryKey,
		wire.HeaderGoogAPIKey:    canaryGoog,
		wire.TokenHeader:         canaryToken,
		"x-request-id":           canaryToken,
		"cookie":                 "session=" + canaryBare,
	}
	paths := []string{
		"/v1beta/models/gemini-2.5-pro:generateContent?key=" + canaryGoog,
		"/v1/chat/completions?token=" + canaryToken + "&x=1",
		"/v1/files/" + canaryKey + "/content",
		"/v1/" + canaryBare,
		"/v1/key=" + canaryToken,
		"/v1/x%3Fkey%3D" + canaryGoog,
		"/v1/" + strings.ReplaceAll(canaryToken, "_", "%5F"),
		"/v1/messages#" + canaryKey,
	}
	dir := t.TempDir()
	a := startAccessLog(t, AccessLogOptions{Dir: dir})
	for i, p := range paths {
		e := &accesslogdatav3.HTTPAccessLogEntry{
			CommonProperties: &accesslogdatav3.AccessLogCommon{
				DownstreamRemoteAddress: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "203.0.113.7"}}},
				UpstreamRemoteAddress:   &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 443}}}},
				ResponseFlags:           &accesslogdatav3.ResponseFlags{UpstreamRetryLimitExceeded: true, UnauthorizedDetails: &accesslogdatav3.ResponseFlags_Unauthorized{}},
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
					wire.RequestMetadataNamespace: {Fields: map[string]*structpb.Value{wire.RequestMetadataModel: structpb.NewStringValue("gpt-4o " + canaryKey)}},
				}},
			},
			Request: &accesslogdatav3.HTTPRequestProperties{
				RequestMethod: corev3.RequestMethod_POST, Path: p, OriginalPath: p,
				UserAgent:      "openai-python/1.0 " + canaryToken,
				RequestHeaders: headers, Authority: "edge.example.com",
				ForwardedFor: canaryBare,
			},
			Response: &accesslogdatav3.HTTPResponseProperties{
				ResponseCode: wrapperspb.UInt32(401), ResponseCodeDetails: "ext_authz_denied",
				ResponseHeaders: map[string]string{"set-cookie": canaryBare}, ResponseTrailers: map[string]string{"x": canaryKey},
			},
		}
		r := RecordFromEntry("hk", e)
		r.RequestID = fmt.Sprint("req-", i) + " " + r.RequestID
		a.Add(LineFromEntry(r, e))
	}
	waitWritten(t, a, float64(len(paths)))
	files := readLines(t, dir)
	for name := range files {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range canaries {
			if bytes.Contains(raw, []byte(c)) {
				t.Errorf("%s contains the canary %q:\n%s", name, c, raw)
			}
		}
	}
	var got []string
	for _, ls := range files {
		for _, l := range ls {
			got = append(got, l.Path)
			if l.Method != "POST" || l.ClientAddress != "203.0.113.7" || l.UpstreamHost != "10.0.0.9:443" ||
				fmt.Sprint(l.ResponseFlags) != "[UAEX URX]" || l.ResponseDetails != "ext_authz_denied" || l.Status != 401 {
				t.Errorf("line %+v", l)
			}
		}
	}
	sort.Strings(got)
	want := []string{"/v1/[masked]", "/v1/[masked]", "/v1/[masked]", "/v1/chat/completions", "/v1/files/[masked]/content", "/v1/messages", "/v1/x", "/v1beta/models/gemini-2.5-pro:generateContent"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("paths\n%q\nwant\n%q", got, want)
	}
}

func TestMaskPathKeepsProviderPaths(t *testing.T) {
	for _, p := range []string{
		"/v1/chat/completions", "/v1/messages", "/v1/responses",
		"/v1beta/models/gemini-2.5-flash-preview-05-20:streamGenerateContent",
		"/v1/models/claude-sonnet-4-5-20250929", "/openai/v1/embeddings",
	} {
		if got := MaskPath(p); got != p {
			t.Errorf("MaskPath(%q) = %q", p, got)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Lines wait for the writer's timer; a half-full queue wakes it at once.
func TestAccessLogWritesOnItsTimerOrAHalfFullQueue(t *testing.T) {
	a := startAccessLog(t, AccessLogOptions{Dir: t.TempDir(), QueueSize: 8, FlushInterval: time.Hour})
	for i := range 3 {
		a.Add(line("hk", fmt.Sprint(i)))
	}
	if n := testutil.ToFloat64(a.written); n != 0 {
		t.Fatalf("%v lines written before the timer or a half-full queue", n)
	}
	a.Add(line("hk", "3")) // 4 of 8 queued
	waitWritten(t, a, 4)
}
