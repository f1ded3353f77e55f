package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/stack"
)

// peer is another LLM gateway measured with the same method, or the reason it could not be.
type peer struct {
	Name    string `json:"name"`
	Package string `json:"package"`
	Version string `json:"version"`
	Error   string `json:"error,omitempty"`
	URL     string `json:"-"`
	headers map[string]string
	proc    *proc
}

// peersDir is where bench/peers/install.sh installs them.
func peersDir(root string) string {
	if d := os.Getenv("BENCH_PEERS_DIR"); d != "" {
		return d
	}
	return filepath.Join(root, "bench", "peers", ".cache")
}

// installError returns why install.sh could not install a peer, if it said so.
func installError(dir, name string) string {
	if b, err := os.ReadFile(filepath.Join(dir, name+".install-failed")); err == nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		return "bench/peers/install.sh failed: " + strings.Join(lines, " | ")
	}
	return ""
}

// installedVersion is the version install.sh recorded (.installed-<version>).
func installedVersion(dir string) string {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if v, ok := strings.CutPrefix(e.Name(), ".installed-"); ok {
			return v
		}
	}
	return ""
}

// peerRun is how to run an installed peer: its entry file under the peer's install
// directory, the command line, and the check that says it is ready.
type peerRun struct {
	key, entry string
	argv       func(entry string) ([]string, error)
	env        []string
	ready      stack.Check
	timeout    time.Duration
}

// start runs the peer on CPU 1, or records in p why it could not.
func (pr peerRun) start(r *runner, root string, p *peer) *peer {
	defer func() {
		if p.Error != "" {
			p.URL = "" // nothing to send to
		}
	}()
	dir := filepath.Join(peersDir(root), pr.key)
	p.Version = installedVersion(dir)
	if e := installError(peersDir(root), pr.key); e != "" {
		p.Error = e
		return p
	}
	entry := filepath.Join(dir, pr.entry)
	if _, err := os.Stat(entry); err != nil {
		p.Error = "not installed (run bench/peers/install.sh): " + err.Error()
		return p
	}
	argv, err := pr.argv(entry)
	if err == nil {
		p.proc, err = r.startPeer(pr.key, argv, pr.env)
	}
	if err == nil {
		if err = p.proc.Await(context.Background(), pr.timeout, pr.ready); err != nil {
			p.proc.Stop()
			p.proc = nil
		}
	}
	if err != nil {
		p.Error = err.Error()
	}
	return p
}

// startPortkey runs the Portkey gateway (node build/start-server.js) on a loopback port. It
// forwards to the fake as its "openai" provider with a custom host: per request, with the
// x-portkey-provider and x-portkey-custom-host headers its README documents. 127.0.0.1 is in
// its default TRUSTED_CUSTOM_HOSTS. Its HTTP server binds every interface (the start script
// takes no host option); the benchmark only sends to 127.0.0.1.
func startPortkey(r *runner, root, fakeAddr string, port int) *peer {
	p := &peer{Name: "Portkey gateway", Package: "npm @portkey-ai/gateway", URL: fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", port),
		headers: map[string]string{
			"authorization":         "Bearer sk-bench-fake-key",
			"x-portkey-provider":    "openai",
			"x-portkey-custom-host": "http://" + fakeAddr + "/v1",
		}}
	return peerRun{key: "portkey", entry: "node_modules/@portkey-ai/gateway/build/start-server.js",
		argv: func(entry string) ([]string, error) {
			node, err := exec.LookPath("node")
			if err != nil {
				return nil, fmt.Errorf("node not found: %w", err)
			}
			return []string{node, entry, "--port=" + strconv.Itoa(port), "--headless"}, nil
		},
		env:   []string{"NODE_ENV=production", "PORT=" + strconv.Itoa(port)},
		ready: stack.TCPOpen(stack.Loopback(port)), timeout: 60 * time.Second,
	}.start(r, root, p)
}

const litellmConfig = `model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://%s/v1
      api_key: sk-bench-fake-key
litellm_settings:
  telemetry: false
`

// startLiteLLM runs the LiteLLM proxy (one uvicorn worker, no database, no master key) with
// a model that points at the fake as an OpenAI-compatible api_base.
func startLiteLLM(r *runner, root, fakeAddr string, port int) *peer {
	p := &peer{Name: "LiteLLM proxy", Package: "PyPI litellm[proxy]", URL: fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", port),
		headers: map[string]string{"authorization": "Bearer sk-bench-any"}}
	cfg := filepath.Join(r.Dir, "litellm.yaml")
	return peerRun{key: "litellm", entry: "bin/litellm",
		argv: func(bin string) ([]string, error) {
			return []string{bin, "--config", cfg, "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--num_workers", "1", "--telemetry", "False"},
				os.WriteFile(cfg, fmt.Appendf(nil, litellmConfig, fakeAddr), 0o644)
		},
		// No network here: use the bundled model cost map instead of fetching it.
		env:   []string{"LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_LOG=ERROR", "DISABLE_ADMIN_UI=True", "HOME=" + r.Dir},
		ready: stack.HTTPStatus(fmt.Sprintf("http://127.0.0.1:%d/health/liveliness", port), 200), timeout: 120 * time.Second,
	}.start(r, root, p)
}
