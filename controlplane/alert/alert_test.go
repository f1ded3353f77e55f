package alert_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/internal/testenv"
)

const secret = "SEC0123456789abcdef-signing-secret"

var kinds = []string{"slack", "feishu", "dingtalk", "webhook"}

// got is one message a receiver accepted, reduced to what every format carries.
type got struct{ kind, status, rule, key string }

// receiver is a local stand-in for the four platforms: it checks each payload against
// the platform's schema and signature and records what it accepted. down makes it answer
// 500 (a webhook endpoint down).
type receiver struct {
	// now is the test's clock; messages are signed at some point between start and now.
	start time.Time
	now   func() time.Time

	mu   sync.Mutex
	got  []got
	bad  []string
	down bool
	hits int
}

func (rv *receiver) fail(format string, args ...any) {
	rv.mu.Lock()
	rv.bad = append(rv.bad, fmt.Sprintf(format, args...))
	rv.mu.Unlock()
}

// feishuSign and dingtalkSign follow the platforms' documentation, written apart from
// the package's own so a wrong scheme there fails here. Feishu: the key is
// timestamp+"\n"+secret and the data empty. DingTalk: the key is the secret and the data
// timestamp+"\n"+secret.
func feishuSign(ts, secret string) string {
	mac := hmac.New(sha256.New, []byte(ts+"\n"+secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func dingtalkSign(ts, secret string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "\n" + secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// parseTitle reads "[llmedge FIRING] rule key".
func parseTitle(s string) (status, rule, key string, ok bool) {
	line, _, _ := strings.Cut(s, "\n")
	rest, found := strings.CutPrefix(line, "[llmedge ")
	if !found {
		return "", "", "", false
	}
	st, rest, _ := strings.Cut(rest, "] ")
	rule, key, _ = strings.Cut(rest, " ")
	return strings.ToLower(st), rule, key, rule != ""
}

func (rv *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := strings.TrimPrefix(r.URL.Path, "/hook/")
	rv.mu.Lock()
	rv.hits++
	down := rv.down
	rv.mu.Unlock()
	if down {
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		rv.fail("%s: %s with Content-Type %q", kind, r.Method, r.Header.Get("Content-Type"))
	}
	b, _ := io.ReadAll(r.Body)
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		rv.fail("%s: body is not JSON: %v", kind, err)
		return
	}
	var title string
	switch kind {
	case "slack":
		text, _ := body["text"].(string)
		blocks, _ := body["blocks"].([]any)
		if text == "" || len(blocks) == 0 {
			rv.fail("slack: want text and blocks: %s", b)
		}
		for _, bl := range blocks {
			m, _ := bl.(map[string]any)
			if typ, _ := m["type"].(string); typ != "header" && typ != "section" {
				rv.fail("slack: block type %v", m["type"])
			}
		}
		title = text
	case "feishu":
		content, _ := body["content"].(map[string]any)
		text, _ := content["text"].(string)
		if body["msg_type"] != "text" || text == "" {
			rv.fail("feishu: want msg_type text and content.text: %s", b)
		}
		ts, _ := body["timestamp"].(string)
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || sec < rv.start.Unix() || sec > rv.now().Unix() {
			rv.fail("feishu: timestamp %q is not the send time in seconds", ts)
		}
		if body["sign"] != feishuSign(ts, secret) || body["sign"] == "" {
			rv.fail("feishu: bad sign %v", body["sign"])
		}
		title = text
		// Feishu answers 200 with a code.
		defer func() { _ = json.NewEncoder(w).Encode(map[string]any{"code": 0, "msg": "success"}) }()
	case "dingtalk":
		md, _ := body["markdown"].(map[string]any)
		mdTitle, _ := md["title"].(string)
		text, _ := md["text"].(string)
		if body["msgtype"] != "markdown" || mdTitle == "" || text == "" {
			rv.fail("dingtalk: want msgtype markdown with title and text: %s", b)
		}
		q := r.URL.Query()
		ms, err := strconv.ParseInt(q.Get("timestamp"), 10, 64)
		if err != nil || ms < rv.start.UnixMilli() || ms > rv.now().UnixMilli() {
			rv.fail("dingtalk: timestamp %q is not the send time in ms", q.Get("timestamp"))
		}
		if q.Get("access_token") != "tok" {
			rv.fail("dingtalk: the URL's own access_token was lost: %q", r.URL.RawQuery)
		}
		// The query decodes sign once: what remains is the base64 signature itself.
		if q.Get("sign") != dingtalkSign(q.Get("timestamp"), secret) {
			rv.fail("dingtalk: bad sign %q", q.Get("sign"))
		}
		title = mdTitle
		defer func() { _ = json.NewEncoder(w).Encode(map[string]any{"errcode": 0, "errmsg": "ok"}) }()
	case "webhook":
		if body["source"] != "llmedge" || body["starts_at"] == nil || body["summary"] == "" {
			rv.fail("webhook: missing fields: %s", b)
		}
		title, _ = body["title"].(string)
		if st, _ := body["status"].(string); !strings.HasPrefix(title, "[llmedge "+strings.ToUpper(st)+"]") {
			rv.fail("webhook: status %q does not match title %q", st, title)
		}
	default:
		rv.fail("unexpected path %s", r.URL.Path)
		return
	}
	st, rule, key, ok := parseTitle(title)
	if !ok {
		rv.fail("%s: no title in %s", kind, b)
		return
	}
	rv.mu.Lock()
	rv.got = append(rv.got, got{kind, st, rule, key})
	rv.mu.Unlock()
}

func (rv *receiver) snapshot() ([]got, []string) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return append([]got{}, rv.got...), append([]string{}, rv.bad...)
}

// notifiers writes each kind's URL (and secret) to files and returns the notifiers.
func notifiers(t *testing.T, base string) []model.Notifier {
	dir := t.TempDir()
	var ns []model.Notifier
	for _, k := range kinds {
		n := model.Notifier{Name: "n-" + k, Kind: k, URLFile: filepath.Join(dir, k+".url")}
		u := base + "/hook/" + k
		if k == "dingtalk" {
			u += "?access_token=tok"
		}
		if err := os.WriteFile(n.URLFile, []byte(u+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if k == "feishu" || k == "dingtalk" {
			n.SecretFile = filepath.Join(dir, k+".secret")
			if err := os.WriteFile(n.SecretFile, []byte(secret), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		ns = append(ns, n)
	}
	return ns
}

// rules returns every rule with its default thresholds, as config builds them.
func rules(repeat time.Duration) model.Alerts {
	a := model.Alerts{Repeat: repeat}
	for _, name := range config.AlertRuleNames() {
		a.Rules = append(a.Rules, config.DefaultAlertRule(name))
	}
	return a
}

// clock is the tests' injected time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

type env struct {
	t     *testing.T
	rv    *receiver
	srv   *httptest.Server
	clk   *clock
	d     *alert.Dispatcher
	a     *alert.Alerter
	waits *[]time.Duration
}

func newEnv(t *testing.T, sources ...alert.Source) *env {
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clk := &clock{t: start}
	rv := &receiver{start: start, now: clk.Now}
	srv := httptest.NewServer(rv)
	t.Cleanup(srv.Close)
	var mu sync.Mutex
	waits := &[]time.Duration{}
	d := alert.NewDispatcher(t.Context(), slog.New(slog.DiscardHandler), prometheus.NewRegistry(), alert.DispatchOptions{
		Now: clk.Now,
		Wait: func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			*waits = append(*waits, d)
			mu.Unlock()
			return ctx.Err()
		},
	})
	m := alert.NewMetrics(srv.Client(), func(c string) (string, bool) { return strings.CutPrefix(c, "upstream_") })
	a := alert.NewAlerter(slog.New(slog.DiscardHandler), prometheus.NewRegistry(), d, m, sources...)
	cfg := rules(time.Hour)
	cfg.Notifiers = notifiers(t, srv.URL)
	a.SetConfig(cfg)
	return &env{t: t, rv: rv, srv: srv, clk: clk, d: d, a: a, waits: waits}
}

// delivered waits until the notifiers have delivered n messages in all.
func (e *env) delivered(n uint64) {
	e.t.Helper()
	testenv.Eventually(e.t, 10*time.Second, 10*time.Millisecond, func() error {
		var sum uint64
		for _, h := range e.d.Health() {
			sum += h.Delivered + h.Failed
		}
		if sum != n {
			return fmt.Errorf("%d of %d messages delivered", sum, n)
		}
		return nil
	})
}

func eventually(t *testing.T, cond func() error) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, cond)
}
