package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
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

// startPortkey runs the Portkey gateway (node build/start-server.js) on a loopback port. It
// forwards to the fake as its "openai" provider with a custom host: per request, with the
// x-portkey-provider and x-portkey-custom-host headers its README documents. 127.0.0.1 is in
// its default TRUSTED_CUSTOM_HOSTS. Its HTTP server binds every interface (the start script
// takes no host option); the benchmark only sends to 127.0.0.1.
func startPortkey(r *runner, root, fakeAddr string, port int) *peer {
	dir := filepath.Join(peersDir(root), "portkey")
	pk := &peer{Name: "Portkey gateway", Package: "npm @portkey-ai/gateway"}
	pk.Version = installedVersion(dir)
	if e := installError(peersDir(root), "portkey"); e != "" {
		pk.Error = e
		return pk
	}
	entry := filepath.Join(dir, "node_modules", "@portkey-ai", "gateway", "build", "start-server.js")
	if _, err := os.Stat(entry); err != nil {
		pk.Error = "not installed (run bench/peers/install.sh): " + err.Error()
		return pk
	}
	node, err := exec.LookPath("node")
	if err != nil {
		pk.Error = "node not found: " + err.Error()
		return pk
	}
	env := append(os.Environ(), "NODE_ENV=production", "PORT="+strconv.Itoa(port))
	pr, err := r.start("portkey", "peer", cpuEdge, env, "", node, entry, "--port="+strconv.Itoa(port), "--headless")
	if err != nil {
		pk.Error = err.Error()
		return pk
	}
	pk.proc = pr
	pk.URL = fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", port)
	pk.headers = map[string]string{
		"authorization":         "Bearer sk-bench-fake-key",
		"x-portkey-provider":    "openai",
		"x-portkey-custom-host": "http://" + fakeAddr + "/v1",
	}
	if err := waitFor("portkey", pr, 60*time.Second, tcpOpen(fmt.Sprintf("127.0.0.1:%d", port))); err != nil {
		pk.Error = err.Error()
		pr.stop(2 * time.Second)
		pk.proc = nil
	}
	return pk
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
	dir := filepath.Join(peersDir(root), "litellm")
	ll := &peer{Name: "LiteLLM proxy", Package: "PyPI litellm[proxy]"}
	ll.Version = installedVersion(dir)
	if e := installError(peersDir(root), "litellm"); e != "" {
		ll.Error = e
		return ll
	}
	bin := filepath.Join(dir, "bin", "litellm")
	if _, err := os.Stat(bin); err != nil {
		ll.Error = "not installed (run bench/peers/install.sh): " + err.Error()
		return ll
	}
	cfg := filepath.Join(r.dir, "litellm.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, litellmConfig, fakeAddr), 0o644); err != nil {
		ll.Error = err.Error()
		return ll
	}
	env := append(os.Environ(),
		// No network here: use the bundled model cost map instead of fetching it.
		"LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_LOG=ERROR", "DISABLE_ADMIN_UI=True",
		"HOME="+r.dir)
	pr, err := r.start("litellm", "peer", cpuEdge, env, "", bin, "--config", cfg, "--host", "127.0.0.1",
		"--port", strconv.Itoa(port), "--num_workers", "1", "--telemetry", "False")
	if err != nil {
		ll.Error = err.Error()
		return ll
	}
	ll.proc = pr
	ll.URL = fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", port)
	ll.headers = map[string]string{"authorization": "Bearer sk-bench-any"}
	if err := waitFor("litellm", pr, 120*time.Second, httpOK(fmt.Sprintf("http://127.0.0.1:%d/health/liveliness", port))); err != nil {
		ll.Error = err.Error()
		pr.stop(2 * time.Second)
		ll.proc = nil
	}
	return ll
}
