package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/internal/fakellm"
	stk "github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

// stateExtAuthz is the settings of the stack's extauthz for region with a state dir.
func (s *stack) stateExtAuthz(region, stateDir string) stk.ExtAuthz {
	return stk.ExtAuthz{
		Region:    region,
		XDSAddr:   stk.Unix(s.sock.XDS()),
		GRPCAddr:  stk.Unix(s.sock.ExtAuthz(region)),
		HTTPAddr:  stk.Loopback(s.authzHTTP[region]),
		KeysDir:   s.keysDir,
		KeysPoll:  200 * time.Millisecond,
		StateDir:  stateDir,
		LogLevel:  "debug",
		RedisAddr: stk.Unix(s.sock.Redis()),
	}
}

// stateControlPlane is the stack's control plane with a state dir.
func (s *stack) stateControlPlane(stateDir string) stk.ControlPlane {
	return stk.ControlPlane{
		Config:       s.routes,
		XDSAddr:      stk.Unix(s.sock.XDS()),
		HTTPAddr:     stk.Loopback(s.httpPort),
		WatchHoldoff: 50 * time.Millisecond,
		StateDir:     stateDir,
		LogLevel:     "debug",
	}
}

func authzReadyz(t *testing.T, s *stack, region string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(get(t, fmt.Sprintf("http://%s/readyz", stk.Loopback(s.authzHTTP[region])))), &v); err != nil {
		t.Fatalf("extauthz /readyz: %v", err)
	}
	return v
}

// TestExtAuthzRestartWithoutControlPlane: with the control plane down, a region's extauthz
// restarts on its saved policy; once it is back no request fails; when the control plane
// returns, extauthz switches to the live policy and the control plane sees its ACK.
func TestExtAuthzRestartWithoutControlPlane(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk")
	s.needsAuthzProcess()
	state := filepath.Join(s.dir, "state", "extauthz-hk")

	// The stack's extauthz keeps no state; replace it with one that does.
	s.authz["hk"].Stop()
	authz := testenv.StartExtAuthz(t, llmedgeBin, "extauthz-hk-state", s.stateExtAuthz("hk", state))
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v", err)
	}
	var files []string
	testenv.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error { // saved right after it is applied
		if files, _ = filepath.Glob(filepath.Join(state, "*.json")); len(files) != 1 {
			return fmt.Errorf("state files %v, want one", files)
		}
		return nil
	})
	if b, err := os.ReadFile(files[0]); err != nil || strings.Contains(string(b), s.token) || strings.Contains(string(b), upstreamKey("openai")) {
		t.Fatalf("the state file holds a token or a key (err %v)", err)
	}

	l := startLoad(t, s.edgeURL("hk", "/openai/v1/models"), s.auth(nil), 2)
	l.waitRequests(t, 20)
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d requests failed before any fault: %v", n, l.failures)
	}

	s.cp.Kill()
	l.waitRequests(t, 50) // the region serves on without its control plane

	// Restart extauthz: stop, then start on the same address. Nothing answers Envoy's
	// ext_authz in between, so requests in that window may fail; they are counted apart.
	okBefore, failedBefore := l.ok.Load(), l.failed.Load()
	restartStart := time.Now()
	authz.Stop()
	authz = testenv.StartExtAuthz(t, llmedgeBin, "extauthz-hk-restarted", s.stateExtAuthz("hk", state)) // returns at /readyz 200
	window := time.Since(restartStart)
	windowOK, windowFailed := l.ok.Load()-okBefore, l.failed.Load()-failedBefore
	authz.WaitLog(t, "serving the saved xds config", 5*time.Second)
	rz := authzReadyz(t, s, "hk")
	if rz["policy_source"] != "saved" || rz["policy_saved_at"] == nil || rz["xds_connected"] != false {
		t.Errorf("extauthz /readyz on the saved policy = %v", rz)
	}
	if m := get(t, fmt.Sprintf("http://%s/metrics", stk.Loopback(s.authzHTTP["hk"]))); !strings.Contains(m, `llmedge_extauthz_policy_source{source="saved"} 1`) {
		t.Error("extauthz metrics do not report the saved policy")
	}

	failedBack, okBack := l.failed.Load(), l.ok.Load()
	l.waitRequests(t, 200)
	if n := l.failed.Load() - failedBack; n != 0 {
		t.Errorf("%d requests failed after extauthz was back on its saved policy: %v", n, l.failures)
	}

	// The control plane returns: extauthz takes the live policy and ACKs it.
	failedCPBack := l.failed.Load()
	s.startControlPlane()
	s.waitInSync(30 * time.Second) // every node of hk, extauthz included, ACKed the versions served
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if rz := authzReadyz(t, s, "hk"); rz["policy_source"] != "control_plane" || rz["xds_connected"] != true {
			return fmt.Errorf("extauthz /readyz = %v", rz)
		}
		return nil
	})
	l.waitRequests(t, 50)
	l.halt()
	if n := l.failed.Load() - failedCPBack; n != 0 {
		t.Errorf("%d requests failed while the control plane came back: %v", n, l.failures)
	}
	t.Logf("extauthz restart with the control plane down: %v from stop to ready; in that window %d requests served, %d failed (first: %v); after it was back: %d served, %d failed",
		window.Round(time.Millisecond), windowOK, windowFailed, l.failures, l.ok.Load()-okBack, l.failed.Load()-failedBack)
}

// TestControlPlaneServesSavedConfigToFreshEnvoy: a control plane restarted on a broken
// routes YAML serves its saved last good config, and a freshly started Envoy gets it and
// serves; a valid edit then replaces it.
func TestControlPlaneServesSavedConfigToFreshEnvoy(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), twoRegions, "hk")
	state := filepath.Join(s.dir, "state", "controlplane")

	s.cp.Stop()
	s.cp = testenv.StartControlPlane(t, llmedgeBin, "controlplane-state", s.stateControlPlane(state))
	before := s.waitInSync(30 * time.Second)
	if before.Config.Source != controlplane.SourceRoutes {
		t.Fatalf("config source = %q, want routes", before.Config.Source)
	}
	s.cp.Stop()

	good, err := os.ReadFile(s.routes)
	if err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(string(good), "    upstream: openai\n", "    upstream: opneai\n", 1)
	if err := os.WriteFile(s.routes, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	s.cp = testenv.StartControlPlane(t, llmedgeBin, "controlplane-restarted", s.stateControlPlane(state))
	st := s.status()
	if st.Config.Source != controlplane.SourceSaved || st.Config.Valid || len(st.Config.Errors) == 0 || st.Config.Hash != before.Config.Hash {
		t.Fatalf("status on a broken routes YAML: source %q valid %v errors %v hash %q; want saved, invalid, the errors, hash %q",
			st.Config.Source, st.Config.Valid, st.Config.Errors, st.Config.Hash, before.Config.Hash)
	}
	s.cp.WaitLog(t, "serving the last good config saved in the state dir", 5*time.Second)

	// A fresh Envoy (no config of its own) gets the saved config and serves.
	s.envoys["hk"].Stop()
	s.envoys["hk"] = testenv.StartRegionEnvoy(t, llmedgeBin, "envoy-hk-fresh", s.withAuthz(stk.Envoy{Region: "hk", XDSAddr: stk.Unix(s.sock.XDS())}, false))
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
		req, _ := http.NewRequest(http.MethodPost, s.edgeURL("hk", "/openai/v1/chat/completions"), strings.NewReader(chatBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+s.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err // the listener comes with the config
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		return nil
	})
	if got, want := s.region(s.status(), "hk").Versions, s.region(before, "hk").Versions; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("versions served from the saved copy %v, want the last good %v", got, want)
	}

	// A valid edit replaces the saved copy as usual.
	if err := os.WriteFile(s.routes, good, 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := s.status(); st.Config.Source != controlplane.SourceRoutes || !st.Config.Valid {
			return fmt.Errorf("source %q valid %v", st.Config.Source, st.Config.Valid)
		}
		return nil
	})
}

// TestRatelimitRestartWithoutControlPlane: envoyproxy/ratelimit cannot persist its xDS
// config, so restarted while the control plane is away it runs with no limits. Admission
// does not depend on it: extauthz checks request quotas with the limits of its own caller
// policy, against Redis, so hk (fail open) still refuses alice past her quota and sg (fail
// closed) still serves bob. Only token limits need ratelimit's limits, which come back
// with the control plane.
func TestRatelimitRestartWithoutControlPlane(t *testing.T) {
	t.Parallel()
	s := newStack(t, startUpstream(t, fakellm.Options{}), quotaYAML(2, 100), "hk", "sg")
	codes := func(region, caller string, n int) []int {
		var out []int
		for range n {
			resp := s.models(t, region, caller)
			resp.Body.Close()
			out = append(out, resp.StatusCode)
		}
		return out
	}
	// alice may make 2 requests an hour; the third in hk is refused.
	if got := codes("hk", "alice", 3); got[2] != http.StatusTooManyRequests {
		t.Fatalf("hk alice before any fault: %v, want the third refused", got)
	}

	s.cp.Kill()
	if got := codes("hk", "alice", 1); got[0] != http.StatusTooManyRequests {
		t.Errorf("hk alice with the control plane down: %v, want 429 (limits kept in memory)", got)
	}

	for _, r := range []string{"hk", "sg"} {
		s.rl[r].Stop()
		s.rl[r] = testenv.StartRatelimit(t, testenv.RatelimitOptions{
			Region: r, XDSAddr: stk.Unix(s.sock.XDS()), RedisAddr: s.redis.Addr(), GRPCSocket: s.sock.Ratelimit(r),
		}) // FORCE_START_WITHOUT_INITIAL_CONFIG=true: it serves, with no limits
	}
	hk, sg := codes("hk", "alice", 5), codes("sg", "bob", 5)
	t.Logf("ratelimit restarted with the control plane down: hk (fail open) alice past her quota %v; sg (fail closed) bob %v", hk, sg)
	for i := range 5 {
		if hk[i] != http.StatusTooManyRequests {
			t.Errorf("hk alice request %d = %d, want 429 (extauthz still holds the limits)", i, hk[i])
		}
		if sg[i] != http.StatusOK {
			t.Errorf("sg bob request %d = %d, want 200 (admission does not need ratelimit)", i, sg[i])
		}
	}

	s.startControlPlane()
	s.waitInSync(30 * time.Second)
	testenv.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := codes("hk", "alice", 1); got[0] != http.StatusTooManyRequests {
			return fmt.Errorf("hk alice = %v, want 429 again", got)
		}
		if got := codes("sg", "bob", 1); got[0] != http.StatusOK {
			return fmt.Errorf("sg bob = %v, want 200 again", got)
		}
		return nil
	})
}
