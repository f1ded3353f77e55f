package config

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Probe defaults (docs/CONFIG.md#probes).
const (
	DefaultProbeInterval = 5 * time.Minute
	DefaultProbeTimeout  = 10 * time.Second
)

// probeAPI is what a probe of each kind calls on each API family, relative to the
// upstream's base path, and the request body it sends.
func probeAPI(api model.API, kind, mdl string) (method, apiPath, body string) {
	msg := []map[string]string{{"role": "user", "content": "ping"}}
	enc := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	switch {
	case api == model.APIGemini && kind == model.ProbeModels:
		return "GET", "/v1beta/models", ""
	case api == model.APIGemini:
		return "POST", "/v1beta/models/" + url.PathEscape(mdl) + ":generateContent", enc(map[string]any{
			"contents":         []map[string]any{{"role": "user", "parts": []map[string]string{{"text": "ping"}}}},
			"generationConfig": map[string]int{"maxOutputTokens": 1},
		})
	case kind == model.ProbeModels:
		return "GET", "/v1/models", ""
	case api == model.APIAnthropic:
		return "POST", "/v1/messages", enc(map[string]any{"model": mdl, "max_tokens": 1, "messages": msg})
	default:
		return "POST", "/v1/chat/completions", enc(map[string]any{"model": mdl, "max_tokens": 1, "messages": msg})
	}
}

// underBase drops the API version from apiPath when the upstream's URL already ends with
// it (https://gemini.example/v1beta, https://api.example.com/v1).
func underBase(base, apiPath string) string {
	for _, v := range []string{"/v1beta", "/v1"} {
		if strings.HasSuffix(base, v) && strings.HasPrefix(apiPath, v+"/") {
			return apiPath[len(v):]
		}
	}
	return apiPath
}

// defaultProbeKind is the cheapest call that proves an API family answers: a models list
// where the list goes through the provider's key check, else one output token. Anthropic's
// messages call is the one every Anthropic key may make.
func defaultProbeKind(api model.API) string {
	if api == model.APIAnthropic {
		return model.ProbeCompletion
	}
	return model.ProbeModels
}

func validateProbes(p *Probes, f File, cfg *model.Config, c *collector) *model.Probes {
	if p == nil {
		return nil
	}
	out := &model.Probes{Caller: p.Caller, TokenFile: p.TokenFile}
	var caller *Caller
	switch cl, ok := f.Callers[p.Caller]; {
	case p.Caller == "":
		c.add("probes.caller", "required: the caller the probes call as (a dedicated one, so its usage is told apart)")
	case !ok:
		c.add("probes.caller", "unknown caller %q (defined: %s)", p.Caller, strings.Join(sortedKeys(f.Callers), ", "))
	default:
		caller = &cl
		if cl.Disabled {
			c.add("probes.caller", "caller %q is disabled: every probe would be refused", p.Caller)
		}
		if cl.BYOK {
			c.add("probes.caller", "caller %q brings its own provider key, which probes do not send; use a caller the edge injects keys for", p.Caller)
		}
	}
	if p.TokenFile == "" {
		c.add("probes.token_file", "required: a file holding the probe caller's plain token (never the token itself)")
	} else if !path.IsAbs(p.TokenFile) {
		c.add("probes.token_file", "must be an absolute path")
	}
	out.Interval = duration("probes.interval", p.Interval, DefaultProbeInterval, 24*time.Hour, c)
	if p.Interval > 0 && p.Interval < time.Second {
		c.add("probes.interval", "must be at least 1s")
	}
	out.Timeout = duration("probes.timeout", p.Timeout, DefaultProbeTimeout, 5*time.Minute, c)

	edges := map[string]string{}
	for _, name := range sortedKeys(p.Regions) {
		fp := "probes.regions." + name
		if _, ok := f.Regions[name]; !ok {
			c.add(fp, "unknown region %q (defined: %s)", name, strings.Join(sortedKeys(f.Regions), ", "))
			continue
		}
		e := p.Regions[name].Edge
		u, err := url.Parse(e)
		switch {
		case e == "":
			c.add(fp+".edge", "required: the edge's base URL, such as http://10.0.0.5:10000")
		case err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
			c.add(fp+".edge", "must be an absolute http(s) URL such as http://10.0.0.5:10000")
		case u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.TrimSuffix(u.Path, "/") != "":
			c.add(fp+".edge", "must be scheme://host[:port] only: no credentials, path or query")
		default:
			edges[name] = u.Scheme + "://" + u.Host
		}
	}
	for _, name := range sortedKeys(p.Upstreams) {
		fp := "probes.upstreams." + name
		if _, ok := f.Upstreams[name]; !ok {
			c.add(fp, "unknown upstream %q (defined: %s)", name, strings.Join(sortedKeys(f.Upstreams), ", "))
			continue
		}
		pu := p.Upstreams[name]
		switch pu.Request {
		case "", model.ProbeModels, model.ProbeCompletion:
		default:
			c.add(fp+".request", "must be models or completion, not %q", pu.Request)
		}
		if pu.Path != "" {
			checkPath(fp+".path", pu.Path, c)
		}
	}

	for _, r := range cfg.Regions {
		edge, ok := edges[r.Name]
		if !ok {
			host := r.ListenAddress
			if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
				// A wildcard listener answers on loopback too, and the control plane is
				// assumed to share the host unless probes.regions says otherwise.
				host = "127.0.0.1"
				if ip.To4() == nil {
					host = "::1"
				}
			}
			edge = "http://" + net.JoinHostPort(host, fmt.Sprint(r.ListenPort))
		}
		for _, name := range r.Upstreams {
			pu := p.Upstreams[name]
			if pu.Disabled {
				continue
			}
			fp := "probes.upstreams." + name
			up, ok := cfg.Upstream(name)
			if !ok {
				continue // reported under upstreams
			}
			if caller != nil && !slices.Contains(caller.Upstreams, name) {
				c.add("probes.caller", "caller %q may not use upstream %q, which region %q serves; add it to callers.%s.upstreams or set %s.disabled: true", p.Caller, name, r.Name, p.Caller, fp)
				continue
			}
			kind := pu.Request
			if kind == "" {
				kind = defaultProbeKind(up.API)
			}
			if kind == model.ProbeCompletion && pu.Model == "" {
				if pu.Request == "" {
					c.add(fp+".model", "required: %s upstreams are probed with a one-token completion, which names a model (or set request: models)", up.API)
				} else {
					c.add(fp+".model", "required with request: completion")
				}
				continue
			}
			method, apiPath, body := probeAPI(up.API, kind, pu.Model)
			apiPath = underBase(up.BasePath, apiPath)
			edgePath := pu.Path
			if edgePath == "" {
				var found bool
				if edgePath, found = EdgePath(cfg, r, name, apiPath); !found {
					c.add(fp+".path", "no route of region %q sends %s %s to upstream %q; set the edge path to call", r.Name, method, up.BasePath+apiPath, name)
					continue
				}
			}
			out.Targets = append(out.Targets, model.ProbeTarget{
				Region: r.Name, Upstream: name, API: up.API, Edge: edge,
				Method: method, Path: edgePath, Body: body, Kind: kind, Model: pu.Model,
			})
		}
	}
	return out
}

// EdgePath finds the path a caller of region r sends so that the upstream receives its
// base path plus apiPath: the first route (in the order Envoy tries them) that matches the
// path must be one of the upstream's. Routes that need a header or a host match are
// skipped, since a probe sends neither.
func EdgePath(cfg *model.Config, r model.Region, upstream, apiPath string) (string, bool) {
	up, ok := cfg.Upstream(upstream)
	if !ok {
		return "", false
	}
	want := up.BasePath + apiPath
	for _, rt := range cfg.Routes {
		if rt.Upstream != upstream || len(rt.Headers) > 0 || len(rt.Hosts) > 0 {
			continue
		}
		cand, ok := invertRoute(rt, up.BasePath, want, apiPath)
		if !ok {
			continue
		}
		if first, ok := firstRoute(cfg, r, cand); ok && first.Name == rt.Name {
			return cand, true
		}
	}
	return "", false
}

// invertRoute returns the edge path that rt rewrites into want, if any.
func invertRoute(rt model.Route, base, want, apiPath string) (string, bool) {
	if rt.Path != "" {
		if (rt.Rewrite == "" && base == "" && rt.Path == apiPath) || (rt.Rewrite != "" && rt.Rewrite == want) {
			return rt.Path, true
		}
		return "", false
	}
	if rt.Rewrite == "" {
		if base == "" && prefixMatches(rt.Prefix, apiPath) {
			return apiPath, true
		}
		return "", false
	}
	rw := strings.TrimSuffix(rt.Rewrite, "/")
	if !strings.HasPrefix(want, rw+"/") {
		return "", false
	}
	return strings.TrimSuffix(rt.Prefix, "/") + want[len(rw):], true
}

// prefixMatches is Envoy's prefix match, path-separated when the prefix has no trailing
// slash (as translate emits it).
func prefixMatches(prefix, p string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(p, prefix)
	}
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// firstRoute is the route region r's Envoy picks for a probe's path.
func firstRoute(cfg *model.Config, r model.Region, p string) (model.Route, bool) {
	for _, rt := range cfg.Routes {
		if !slices.Contains(r.Upstreams, rt.Upstream) || len(rt.Headers) > 0 || len(rt.Hosts) > 0 {
			continue
		}
		if (rt.Path != "" && rt.Path == p) || (rt.Prefix != "" && prefixMatches(rt.Prefix, p)) {
			return rt, true
		}
	}
	return model.Route{}, false
}
