package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Sender delivers one message to one destination.
type Sender interface {
	Send(ctx context.Context, m Message) error
}

// webhook posts to a chat platform's incoming webhook. The URL and secret are read from
// their files on every send: a rotated file takes effect at once and neither is kept in
// memory longer than one request. Errors never carry the URL (net/http's do).
type webhook struct {
	n      model.Notifier
	client *http.Client
	now    func() time.Time
}

// NewSender returns the Sender for one notifier; client nil uses a 10 s timeout client.
func NewSender(n model.Notifier, client *http.Client, now func() time.Time) Sender {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	if now == nil {
		now = time.Now
	}
	return &webhook{n: n, client: client, now: now}
}

func readSecretFile(what, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is fine to show, the file's content never is
		}
		return "", fmt.Errorf("read %s %s: %v", what, path, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", what, path)
	}
	return s, nil
}

func (w *webhook) Send(ctx context.Context, m Message) error {
	raw, err := readSecretFile("url_file", w.n.URLFile)
	if err != nil {
		return err
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("url_file %s does not hold an absolute http(s) URL", w.n.URLFile)
	}
	secret := ""
	if w.n.SecretFile != "" {
		if secret, err = readSecretFile("secret_file", w.n.SecretFile); err != nil {
			return err
		}
	}
	body, err := Payload(w.n.Kind, m, secret, w.now(), u)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return errors.New("build request: invalid URL in url_file")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "llmedge-alerts")
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error prints the URL, which is the credential
		}
		return fmt.Errorf("post to %s webhook: %v", w.n.Kind, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s webhook answered %d", w.n.Kind, resp.StatusCode)
	}
	return checkReply(w.n.Kind, rb)
}

// checkReply reads the platforms' in-band errors: Feishu and DingTalk answer 200 with a
// non-zero code when they refuse a message (bad signature, keyword, rate limit).
func checkReply(kind string, body []byte) error {
	switch kind {
	case "feishu":
		var r struct {
			Code       *int   `json:"code"`
			StatusCode *int   `json:"StatusCode"`
			Msg        string `json:"msg"`
		}
		if json.Unmarshal(body, &r) == nil {
			if r.Code != nil && *r.Code != 0 {
				return fmt.Errorf("feishu refused the message: code %d %s", *r.Code, clip(r.Msg))
			}
			if r.StatusCode != nil && *r.StatusCode != 0 {
				return fmt.Errorf("feishu refused the message: StatusCode %d", *r.StatusCode)
			}
		}
	case "dingtalk":
		var r struct {
			Code *int   `json:"errcode"`
			Msg  string `json:"errmsg"`
		}
		if json.Unmarshal(body, &r) == nil && r.Code != nil && *r.Code != 0 {
			return fmt.Errorf("dingtalk refused the message: errcode %d %s", *r.Code, clip(r.Msg))
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200]
	}
	return s
}

// truncate cuts s to at most n runes, marking the cut.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// Title is the one-line headline of a message.
func Title(m Message) string {
	state := "FIRING"
	if m.Status == Resolved {
		state = "RESOLVED"
	}
	return fmt.Sprintf("[llmedge %s] %s %s", state, m.Rule, m.Key)
}

func detailLines(m Message) []string {
	lines := []string{m.Summary, "started: " + m.StartsAt.UTC().Format(time.RFC3339)}
	if m.EndsAt != nil {
		lines = append(lines, "resolved: "+m.EndsAt.UTC().Format(time.RFC3339))
	}
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lines = append(lines, k+": "+m.Labels[k])
	}
	return lines
}

// Payload is the request body for kind; for DingTalk with a secret it also adds the
// timestamp and sign query parameters to u.
func Payload(kind string, m Message, secret string, now time.Time, u *url.URL) ([]byte, error) {
	title, lines := Title(m), detailLines(m)
	text := title + "\n" + strings.Join(lines, "\n")
	switch kind {
	case "slack":
		// Incoming webhooks take text (the notification fallback) and optional blocks; Slack
		// refuses a header over 150 characters and a section over 3000.
		return json.Marshal(map[string]any{
			"text": text,
			"blocks": []any{
				map[string]any{"type": "header", "text": map[string]any{"type": "plain_text", "text": truncate(title, 150)}},
				map[string]any{"type": "section", "text": map[string]any{"type": "mrkdwn", "text": truncate(strings.Join(lines, "\n"), 3000)}},
			},
		})
	case "feishu":
		body := map[string]any{"msg_type": "text", "content": map[string]any{"text": text}}
		if secret != "" {
			ts := strconv.FormatInt(now.Unix(), 10)
			body["timestamp"] = ts
			body["sign"] = FeishuSign(ts, secret)
		}
		return json.Marshal(body)
	case "dingtalk":
		if secret != "" {
			ts := strconv.FormatInt(now.UnixMilli(), 10)
			q := u.Query()
			q.Set("timestamp", ts)
			q.Set("sign", DingTalkSign(ts, secret))
			u.RawQuery = q.Encode()
		}
		md := "#### " + title + "\n\n" + strings.Join(lines, "\n\n")
		return json.Marshal(map[string]any{"msgtype": "markdown", "markdown": map[string]any{"title": title, "text": md}})
	case "webhook":
		return json.Marshal(struct {
			Source string `json:"source"`
			Title  string `json:"title"`
			Message
		}{"llmedge", title, m})
	}
	return nil, fmt.Errorf("unknown notifier type %q", kind)
}

// FeishuSign is the Feishu custom bot signature: HMAC-SHA256 keyed with
// timestamp + "\n" + secret over empty data, base64 (the timestamp is in seconds).
func FeishuSign(timestamp, secret string) string {
	h := hmac.New(sha256.New, []byte(timestamp+"\n"+secret))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// DingTalkSign is the DingTalk custom robot signature: HMAC-SHA256 keyed with the secret
// over timestamp + "\n" + secret, base64 (the timestamp is in milliseconds); the caller
// URL-encodes it as the sign query parameter.
func DingTalkSign(timestamp, secret string) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(timestamp + "\n" + secret))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}
