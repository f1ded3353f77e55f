package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/internal/stack"
)

func (d *demo) url(component, region, role string) string {
	return "http://" + d.addr(component, region, role)
}

func (d *demo) addr(component, region, role string) string {
	return stack.Loopback(d.ports[stack.PortKey{Component: component, Region: region, Role: role}])
}

// regionFacts: edge, admin and the health/debug ports are loopback URLs; the internal
// hops are unix: addresses.
type regionFacts struct {
	Edge           string `json:"edge"`
	Admin          string `json:"admin"`
	ExtAuthz       string `json:"extauthz,omitempty"` // gRPC socket: none inside Envoy, which serves no gRPC
	ExtAuthzHealth string `json:"extauthz_health"`
	Ratelimit      string `json:"ratelimit"`
	RatelimitHTTP  string `json:"ratelimit_health"`
	RatelimitDebug string `json:"ratelimit_debug"`
}

// writeFacts writes .run/edge.json (mode 0600: it holds the token) for scripts.
func writeFacts(d *demo) error {
	facts := struct {
		Token        string                 `json:"token"`
		Regions      map[string]regionFacts `json:"regions"`
		ControlPlane struct {
			XDS       string `json:"xds"`
			Status    string `json:"status"`
			Usage     string `json:"usage"`
			StateDir  string `json:"state_dir"`
			AccessLog string `json:"access_log"`
		} `json:"control_plane"`
		FakeUpstream string `json:"fake_upstream"`
		Redis        string `json:"redis"`
		Sockets      string `json:"sockets"`
		RoutesYAML   string `json:"routes_yaml"`
		KeysDir      string `json:"keys_dir"`
		Logs         string `json:"logs"`
	}{Token: d.token, Regions: map[string]regionFacts{}}
	for _, r := range stack.LocalRegions() {
		rf := regionFacts{
			Edge:           d.url("envoy", r, stack.RoleEdge),
			Admin:          d.url("envoy", r, stack.RoleAdmin),
			ExtAuthzHealth: d.url("extauthz", r, stack.RoleHTTP),
			Ratelimit:      stack.Unix(d.sockets.Ratelimit(r)),
			RatelimitHTTP:  d.url("ratelimit", r, stack.RoleHTTP),
			RatelimitDebug: d.url("ratelimit", r, stack.RoleDebug),
		}
		if !d.inEnvoy {
			rf.ExtAuthz = stack.Unix(d.sockets.ExtAuthz(r))
		}
		facts.Regions[r] = rf
	}
	facts.ControlPlane.XDS = stack.Unix(d.sockets.XDS())
	facts.ControlPlane.Status = d.url("controlplane", "", stack.RoleHTTP) + "/status"
	facts.ControlPlane.Usage = d.url("controlplane", "", stack.RoleHTTP) + "/usage"
	facts.ControlPlane.StateDir, facts.ControlPlane.AccessLog = stack.ControlPlaneStateDir(d.runDir), d.accessLogDir()
	facts.FakeUpstream = d.url("fakellm", "", stack.RoleHTTP)
	facts.Redis = stack.Unix(d.sockets.Redis())
	facts.Sockets = d.sockets.Dir
	facts.RoutesYAML, facts.KeysDir, facts.Logs = d.routes, d.keysDir, filepath.Join(d.runDir, "logs")
	b, err := json.MarshalIndent(facts, "", "  ")
	if err != nil {
		return err
	}
	return writePrivate(filepath.Join(d.runDir, "edge.json"), append(b, '\n'))
}

// accessLogDir is where the control plane writes the access log files: the default
// usage.access_log.dir in its state dir (the example routes leave it unset).
func (d *demo) accessLogDir() string {
	return filepath.Join(stack.ControlPlaneStateDir(d.runDir), config.DefaultAccessLogDir)
}

// authzNote says where extauthz runs, why, and how to run it the other way.
func authzNote(d *demo) string {
	if d.inEnvoy {
		return "extauthz runs inside each Envoy (its log is the Envoy's); LLMEDGE_AUTHZ=process runs it as a process per region"
	}
	why := "LLMEDGE_AUTHZ=process"
	if d.authzMode == "" {
		why = "the regions of " + d.routesSrc + " do not set extauthz_in_envoy"
	}
	return "extauthz runs as a process per region (" + why + "); LLMEDGE_AUTHZ=envoy runs it inside each Envoy"
}

func banner(w io.Writer, d *demo) {
	note := "every upstream is the fake LLM upstream (no provider keys needed)"
	if len(d.real) > 0 {
		note = "real provider for: " + strings.Join(d.real, " ") + "; the fake LLM upstream for the rest"
	}
	note += "\n  " + authzNote(d)
	hk, sg := d.addr("envoy", "hk", stack.RoleEdge), d.addr("envoy", "sg", stack.RoleEdge)
	fmt.Fprintf(w, `
  llmedge is running: two regions; %s

  demo caller token (keep it secret):  %s

  region hk   edge http://%s    admin %s
  region sg   edge http://%s    admin %s
  status      %s/status   (metrics: /metrics; limits: %s/rlconfig)
  usage       %s/usage    (bin/llmedge usage --since 1h --by caller,model)
  access log  %s/  (one JSON line per request, kept 14 days)
  sockets     %s/  (xDS, extauthz, ratelimit, Redis: only your user can open them)
  routes YAML %s  (edit it: changes go live on save)
  logs        %s/      facts for scripts: %s

  Try:
    export LLMEDGE_TOKEN=%s
    curl -s http://%s/openai/v1/chat/completions -H "Authorization: Bearer $LLMEDGE_TOKEN" \
      -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'
    curl -sN 'http://%s/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse' \
      -H "x-goog-api-key: $LLMEDGE_TOKEN" -H 'content-type: application/json' -d '{"contents":[{"parts":[{"text":"hello"}]}]}'

  SDKs: base_url http://%s/openai/v1 (OpenAI), http://%s/anthropic (Anthropic),
        http://%s/gemini (Google GenAI), api_key = the token above.

  Ctrl-C stops everything.
`, note, d.token,
		hk, d.url("envoy", "hk", stack.RoleAdmin),
		sg, d.url("envoy", "sg", stack.RoleAdmin),
		d.url("controlplane", "", stack.RoleHTTP), d.url("ratelimit", "hk", stack.RoleDebug),
		d.url("controlplane", "", stack.RoleHTTP), d.accessLogDir(),
		d.sockets.Dir, d.routes, filepath.Join(d.runDir, "logs"), filepath.Join(d.runDir, "edge.json"),
		d.token, hk, sg, hk, hk, sg)
}
