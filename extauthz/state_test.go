package extauthz

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/llmedge/llmedge/internal/testenv"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
)

// serveADS serves one hk policy for tok over ADS and returns the address and a stop.
func serveADS(t *testing.T, tok string) (string, func()) {
	t.Helper()
	ext := &corev3.TypedExtensionConfig{}
	if err := policyResource(t, "hk", tok)[0].UnmarshalTo(ext); err != nil {
		t.Fatal(err)
	}
	cache := cachev3.NewLinearCache(resourcev3.ExtensionConfigType,
		cachev3.WithInitialResources(map[string]types.Resource{wire.PolicyResourceName: ext}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, cache, nil))
	go g.Serve(ln)
	stop := func() { g.Stop(); cancel() }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func startMain(t *testing.T, xds, stateDir, keys string) (*Main, context.CancelFunc) {
	t.Helper()
	m, err := New(Options{Region: "hk", XDSServer: xds, GRPCAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0", KeysDir: keys, StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("extauthz did not start")
	}
	return m, func() { cancel(); <-done }
}

// TestRestartWithoutControlPlaneServesSavedPolicy: an extauthz that held a policy,
// restarted while the control plane is away, is ready at once on the saved copy and says
// so in /readyz and /metrics.
func TestRestartWithoutControlPlaneServesSavedPolicy(t *testing.T) {
	tok, _ := token.New()
	keys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(keys, "openai"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "openai", "k1"), []byte("sk-unit-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	addr, stopCP := serveADS(t, tok)
	m, stop := startMain(t, addr, state, keys)
	testenv.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !strings.Contains(get(t, "http://"+m.HTTPAddr()+"/metrics"), `llmedge_extauthz_policy_source{source="control_plane"} 1`) {
			return errNotYet
		}
		return nil
	})
	stop()
	stopCP()
	saved, err := os.ReadFile(filepath.Join(state, "xds-hk-"+strings.TrimPrefix(resourcev3.ExtensionConfigType, "type.googleapis.com/")+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(saved), "sk-unit-key") || strings.Contains(string(saved), tok) {
		t.Fatal("the state file holds a key or a token")
	}

	m2, _ := startMain(t, addr, state, keys) // the control plane's address, now closed
	if code := readyz(t, m2); code != http.StatusOK {
		t.Fatalf("/readyz = %d on the saved policy, want 200", code)
	}
	body := get(t, "http://"+m2.HTTPAddr()+"/readyz")
	for _, want := range []string{`"policy_source":"saved"`, `"policy_saved_at"`, `"xds_connected":false`} {
		if !strings.Contains(body, want) {
			t.Errorf("/readyz %s lacks %s", body, want)
		}
	}
	if metrics := get(t, "http://"+m2.HTTPAddr()+"/metrics"); !strings.Contains(metrics, `llmedge_extauthz_policy_source{source="saved"} 1`) {
		t.Errorf("metrics do not report the saved source")
	}
	resp, err := m2.Check(t.Context(), checkRequest(tok))
	if err != nil || resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("check on the saved policy = %v, %v; want OK", resp, err)
	}
}

var errNotYet = errorString("not yet")

type errorString string

func (e errorString) Error() string { return string(e) }
