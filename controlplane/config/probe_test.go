package config_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

// TestProbesModel pins the probe targets a probes section yields: one per region and
// upstream served there, the edge from the listen address (wildcards on loopback) unless
// overridden, each API family's default request, and the edge path found in the routes.
func TestProbesModel(t *testing.T) {
	dir := t.TempDir()
	doc := `version: 1
regions:
  hk:
    listen: 0.0.0.0:10000
    extauthz: 10.0.0.5:10100
    upstreams: [openai, claude, gemini, groq]
  sg:
    listen: 10.1.2.3:10001
    extauthz: 10.0.0.5:10100
    upstreams: [openai]
upstreams:
  openai: {url: https://api.openai.com, allowed_regions: [hk, sg]}
  claude: {url: https://api.anthropic.com, api: anthropic, allowed_regions: [hk]}
  gemini: {url: https://generativelanguage.googleapis.com/v1beta, api: gemini, allowed_regions: [hk]}
  groq: {url: https://api.groq.com/openai, allowed_regions: [hk]}
routes:
  openai-v1: {match: {prefix: /v1/}, upstream: openai}
  claude: {match: {prefix: /anthropic}, upstream: claude, prefix_rewrite: /}
  gemini: {match: {prefix: /gemini/}, upstream: gemini, prefix_rewrite: /}
  groq: {match: {prefix: /groq/}, upstream: groq, prefix_rewrite: /}
callers:
  prober:
    tokens: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
    upstreams: [openai, claude, gemini]
probes:
  caller: prober
  token_file: /run/secrets/probe-token
  interval: 1m
  regions:
    sg: {edge: "https://edge-sg.example.com:443/"}
  upstreams:
    claude: {model: claude-haiku-4-5}
    openai: {request: completion, model: gpt-4o-mini}
    groq: {disabled: true}
`
	writeFiles(t, dir, map[string]string{"routes.yaml": doc})
	_, cfg, err := config.LoadConfig(dir + "/routes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	chat := `{"max_tokens":1,"messages":[{"content":"ping","role":"user"}],"model":"gpt-4o-mini"}`
	want := &model.Probes{
		Caller: "prober", TokenFile: "/run/secrets/probe-token", Interval: time.Minute, Timeout: config.DefaultProbeTimeout,
		Targets: []model.ProbeTarget{
			{Region: "hk", Upstream: "claude", API: model.APIAnthropic, Edge: "http://127.0.0.1:10000", Method: "POST", Path: "/anthropic/v1/messages",
				Body: `{"max_tokens":1,"messages":[{"content":"ping","role":"user"}],"model":"claude-haiku-4-5"}`, Kind: model.ProbeCompletion, Model: "claude-haiku-4-5"},
			{Region: "hk", Upstream: "gemini", API: model.APIGemini, Edge: "http://127.0.0.1:10000", Method: "GET", Path: "/gemini/models", Kind: model.ProbeModels},
			{Region: "hk", Upstream: "openai", API: model.APIOpenAI, Edge: "http://127.0.0.1:10000", Method: "POST", Path: "/v1/chat/completions", Body: chat, Kind: model.ProbeCompletion, Model: "gpt-4o-mini"},
			{Region: "sg", Upstream: "openai", API: model.APIOpenAI, Edge: "https://edge-sg.example.com:443", Method: "POST", Path: "/v1/chat/completions", Body: chat, Kind: model.ProbeCompletion, Model: "gpt-4o-mini"},
		},
	}
	if d := cmp.Diff(want, cfg.Probes); d != "" {
		t.Errorf("probes (-want +got):\n%s", d)
	}
}
