package extauthz

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// newMain builds an extauthz whose control plane is a closed port, so no policy arrives
// unless the test applies one.
func newMain(t *testing.T) *Main {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	keys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(keys, "openai"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "openai", "k1"), []byte("sk-unit-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{Region: "hk", XDSServer: dead, GRPCAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0", KeysDir: keys})
	if err != nil {
		t.Fatal(err)
	}
	go m.Run(t.Context())
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("extauthz did not start")
	}
	return m
}

func checkRequest(tok string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{wire.ContextRegion: "hk", wire.ContextUpstream: "openai", wire.ContextRoute: "openai"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Path:    "/v1/chat/completions",
			Headers: map[string]string{"authorization": "Bearer " + tok},
		}},
	}}
}

func policyResource(t *testing.T, region, tok string) []*anypb.Any {
	t.Helper()
	p, err := anypb.New(&authzv1.Policy{
		Region:    region,
		Upstreams: []*authzv1.Upstream{{Name: "openai", KeyHeader: "authorization", KeyFormat: "Bearer {key}", Api: "openai"}},
		Callers:   []*authzv1.Caller{{Name: "app", TokenSha256: []string{token.Digest(tok)}, AllowedUpstreams: []string{"openai"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ext, err := anypb.New(&corev3.TypedExtensionConfig{Name: wire.PolicyResourceName, TypedConfig: p})
	if err != nil {
		t.Fatal(err)
	}
	return []*anypb.Any{ext}
}

func TestNotReadyUntilPolicyThenAllows(t *testing.T) {
	m := newMain(t)
	tok, _ := token.New()

	resp, err := m.Check(t.Context(), checkRequest(tok))
	if err != nil {
		t.Fatal(err)
	}
	denied := resp.GetDeniedResponse()
	if resp.GetStatus().GetCode() == int32(codes.OK) || denied.GetStatus().GetCode() != http.StatusServiceUnavailable {
		t.Fatalf("before any policy: %v, want a 503 denial", resp)
	}
	if !strings.Contains(denied.GetBody(), "not_ready") {
		t.Errorf("body %s does not say not_ready", denied.GetBody())
	}
	if code := readyz(t, m); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d before a policy, want 503", code)
	}

	if err := m.apply("v1", policyResource(t, "hk", tok)); err != nil {
		t.Fatalf("apply: %v", err)
	}
	resp, err = m.Check(t.Context(), checkRequest(tok))
	if err != nil {
		t.Fatal(err)
	}
	ok := resp.GetOkResponse()
	if resp.GetStatus().GetCode() != int32(codes.OK) || ok == nil {
		t.Fatalf("with a policy: %v, want OK", resp)
	}
	if len(ok.GetHeaders()) != 1 || ok.GetHeaders()[0].GetHeader().GetValue() != "Bearer sk-unit-key" ||
		ok.GetHeaders()[0].GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		t.Errorf("injected headers = %v, want authorization overwritten with the key", ok.GetHeaders())
	}
	if got := resp.GetDynamicMetadata().GetFields()[wire.MetadataCaller].GetStringValue(); got != "app" {
		t.Errorf("dynamic metadata caller = %q, want app", got)
	}
	if code := readyz(t, m); code != http.StatusOK {
		t.Errorf("/readyz = %d with a policy, want 200", code)
	}
}

func TestApplyRejectsForeignOrBrokenPolicy(t *testing.T) {
	m := newMain(t)
	tok, _ := token.New()
	if err := m.apply("v1", policyResource(t, "hk", tok)); err != nil {
		t.Fatal(err)
	}
	good := m.policy.Load()
	if err := m.apply("v2", policyResource(t, "sg", tok)); err == nil || !strings.Contains(err.Error(), `"sg"`) {
		t.Errorf("a policy for another region was applied (err %v)", err)
	}
	if err := m.apply("v3", nil); err == nil {
		t.Error("an empty response was applied")
	}
	if m.policy.Load() != good {
		t.Error("a rejected policy replaced the good one")
	}
}

func readyz(t *testing.T, m *Main) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/readyz", m.HTTPAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Errorf("/readyz is not JSON: %v", err)
	}
	return resp.StatusCode
}

// TestEmptyKeyFileKeepsServing: truncating the only key file keeps the last good key in
// the OK responses, and /readyz and /metrics report it by upstream and key name.
func TestEmptyKeyFileKeepsServing(t *testing.T) {
	m := newMain(t)
	tok, _ := token.New()
	if err := m.apply("v1", policyResource(t, "hk", tok)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(m.opts.KeysDir, "openai", "k1"), 0); err != nil {
		t.Fatal(err)
	}
	var body string
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if body = get(t, fmt.Sprintf("http://%s/readyz", m.HTTPAddr())); !strings.Contains(body, `"held":true`) {
			return fmt.Errorf("no held key in /readyz yet: %s", body)
		}
		return nil
	})
	var rz struct {
		Status string
		Keys   []struct {
			Upstream string
			Keys     int
			Problems []struct {
				Upstream, Key, Reason string
				Held                  bool
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &rz); err != nil {
		t.Fatalf("/readyz: %v: %s", err, body)
	}
	if rz.Status != "ready" || len(rz.Keys) != 1 || rz.Keys[0].Upstream != "openai" || rz.Keys[0].Keys != 1 ||
		len(rz.Keys[0].Problems) != 1 || !rz.Keys[0].Problems[0].Held || rz.Keys[0].Problems[0].Key != "k1" || rz.Keys[0].Problems[0].Reason != "empty" {
		t.Fatalf("/readyz = %s; want ready, openai with 1 key and k1 held because it is empty", body)
	}
	resp, err := m.Check(t.Context(), checkRequest(tok))
	if err != nil {
		t.Fatal(err)
	}
	if ok := resp.GetOkResponse(); ok == nil || len(ok.GetHeaders()) != 1 || ok.GetHeaders()[0].GetHeader().GetValue() != "Bearer sk-unit-key" {
		t.Fatalf("with the key file empty: %v, want the last good key injected", resp)
	}
	metrics := get(t, fmt.Sprintf("http://%s/metrics", m.HTTPAddr()))
	for _, want := range []string{
		`llmedge_extauthz_upstream_keys{upstream="openai"} 1`,
		`llmedge_extauthz_upstream_keys_held{upstream="openai"} 1`,
		`llmedge_extauthz_key_file_problems{upstream="openai"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for what, text := range map[string]string{"/readyz": body, "/metrics": metrics} {
		if strings.Contains(text, "sk-unit-key") {
			t.Errorf("%s shows the key", what)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
