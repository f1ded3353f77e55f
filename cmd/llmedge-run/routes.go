package main

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/llmedge/llmedge/internal/stack"
)

// provider is an upstream of the example routes that a key in the environment switches
// from the fake to the real provider.
type provider struct {
	upstream, keyVar, url string
}

var providers = []provider{
	{"openai", "OPENAI_API_KEY", "https://api.openai.com"},
	{"anthropic", "ANTHROPIC_API_KEY", "https://api.anthropic.com"},
	{"gemini", "GEMINI_API_KEY", "https://generativelanguage.googleapis.com"},
}

// demoQuota is the demo caller's limit.
const demoQuota = 600 // requests a minute

// routesCopy returns the routes YAML `make run` watches: src with the example's default
// addresses moved to ports, and the caller "demo" (its token digest, every upstream of
// the document, demoQuota) set.
func routesCopy(src []byte, ports map[stack.PortKey]int, digest string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, err
	}
	root := docMap(&doc)
	if root == nil {
		return nil, fmt.Errorf("not a YAML mapping")
	}
	moved := movedAddresses(ports)
	walkScalars(root, func(n *yaml.Node) {
		// One move per value: a port moved onto another default must not move again.
		for from, to := range moved {
			if n.Value == from {
				n.Value = to
				return
			}
			if rest, ok := strings.CutPrefix(n.Value, "http://"+from); ok && (rest == "" || rest[0] == '/') {
				n.Value = "http://" + to + rest
				return
			}
		}
	})
	var upstreams []*yaml.Node
	if u := mapValue(root, "upstreams"); u != nil && u.Kind == yaml.MappingNode {
		for i := 0; i < len(u.Content); i += 2 {
			upstreams = append(upstreams, scalar(u.Content[i].Value))
		}
	}
	demo := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		scalar("tokens"), flowSeq(scalar(digest)),
		scalar("upstreams"), flowSeq(upstreams...),
		scalar("limits"), {Kind: yaml.SequenceNode, Content: []*yaml.Node{{
			Kind: yaml.MappingNode, Style: yaml.FlowStyle,
			Content: []*yaml.Node{scalar("requests"), scalar(strconv.Itoa(demoQuota)), scalar("per"), scalar("minute")},
		}}},
	}}
	callers := mapValue(root, "callers")
	if callers == nil || callers.Kind != yaml.MappingNode {
		callers = &yaml.Node{Kind: yaml.MappingNode}
		setMapValue(root, "callers", callers)
	}
	setMapValue(callers, "demo", demo)
	return encode(&doc)
}

// movedAddresses maps the example's default loopback addresses (regions' listen, the
// fake upstream) to the ports in use.
func movedAddresses(ports map[stack.PortKey]int) map[string]string {
	named := map[stack.PortKey]bool{
		{Component: "fakellm", Role: stack.RoleHTTP}: true,
	}
	for _, r := range stack.LocalRegions() {
		named[stack.PortKey{Component: "envoy", Region: r, Role: stack.RoleEdge}] = true
	}
	out := map[string]string{}
	for _, p := range stack.LocalPorts() {
		if named[p.Key] && ports[p.Key] != 0 {
			out[stack.Loopback(p.Default)] = stack.Loopback(ports[p.Key])
		}
	}
	return out
}

// pointSockets sets regions.<r>.extauthz and .ratelimit of make run's regions to the
// stack's sockets, whatever the source says (the example names them under
// stack.SocketMount, as compose mounts them; a copy from an earlier run may name another
// directory). It reports whether anything changed.
func pointSockets(src []byte, sock stack.Sockets) ([]byte, bool, error) {
	return editYAML(src, func(root *yaml.Node) (changed bool) {
		regions := mapValue(root, "regions")
		for _, r := range stack.LocalRegions() {
			region := mapValue(regions, r)
			if region == nil || region.Kind != yaml.MappingNode {
				continue
			}
			for key, path := range map[string]string{"extauthz": sock.ExtAuthz(r), "ratelimit": sock.Ratelimit(r)} {
				if cur := mapValue(region, key); cur != nil && cur.Value == stack.Unix(path) {
					continue
				}
				setMapValue(region, key, scalar(stack.Unix(path)))
				changed = true
			}
		}
		return changed
	})
}

// pointUpstreams sets the url of every provider upstream the document has: the real
// provider's when keys[upstream] is set, else the fake's (if it still points at the real
// provider from an earlier run). It reports whether anything changed, so an unchanged
// file is left as the operator wrote it.
func pointUpstreams(src []byte, real map[string]bool, fakeURL string) ([]byte, bool, error) {
	return editYAML(src, func(root *yaml.Node) (changed bool) {
		ups := mapValue(root, "upstreams")
		for _, p := range providers {
			up := mapValue(ups, p.upstream)
			if up == nil || up.Kind != yaml.MappingNode {
				continue
			}
			cur := mapValue(up, "url")
			want := ""
			switch {
			case real[p.upstream]:
				want = p.url
			case cur != nil && strings.TrimSuffix(cur.Value, "/") == p.url:
				want = fakeURL
			}
			if want == "" || (cur != nil && cur.Value == want) {
				continue
			}
			setMapValue(up, "url", scalar(want))
			changed = true
		}
		return changed
	})
}

// editYAML applies edit to the top-level mapping of the YAML document src and re-encodes
// it when edit reports a change; otherwise src comes back as it was.
func editYAML(src []byte, edit func(root *yaml.Node) (changed bool)) ([]byte, bool, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, false, err
	}
	root := docMap(&doc)
	if root == nil {
		return nil, false, fmt.Errorf("not a YAML mapping")
	}
	if !edit(root) {
		return src, false, nil
	}
	out, err := encode(&doc)
	return out, true, err
}

func encode(doc *yaml.Node) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func docMap(doc *yaml.Node) *yaml.Node {
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 && doc.Content[0].Kind == yaml.MappingNode {
		return doc.Content[0]
	}
	return nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func setMapValue(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			// Keep the comment written next to the old value.
			v.LineComment = m.Content[i+1].LineComment
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, scalar(key), v)
}

func walkScalars(n *yaml.Node, fn func(*yaml.Node)) {
	if n.Kind == yaml.ScalarNode {
		fn(n)
	}
	for _, c := range n.Content {
		walkScalars(c, fn)
	}
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: v} }

func flowSeq(items ...*yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle, Content: items}
}

// authzInEnvoy sets regions.<r>.extauthz_in_envoy on every region of doc to on (mode
// "envoy" or "process", LLMEDGE_AUTHZ), or leaves doc alone (mode ""). It returns the
// document and whether its regions run extauthz inside Envoy: all of them or none, since
// the edge starts one kind.
func authzInEnvoy(doc []byte, mode string) (out []byte, inEnvoy bool, err error) {
	if mode != "" && mode != "envoy" && mode != "process" {
		return nil, false, fmt.Errorf("LLMEDGE_AUTHZ %q: want envoy (extauthz inside Envoy) or process", mode)
	}
	var n yaml.Node
	if err := yaml.Unmarshal(doc, &n); err != nil {
		return nil, false, err
	}
	root := docMap(&n)
	regions := mapValue(root, "regions")
	if root == nil || regions == nil || regions.Kind != yaml.MappingNode {
		return doc, false, nil
	}
	seen := map[bool][]string{}
	for i := 0; i+1 < len(regions.Content); i += 2 {
		r := regions.Content[i+1]
		if r.Kind != yaml.MappingNode {
			continue
		}
		if mode != "" {
			setMapValue(r, "extauthz_in_envoy", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(mode == "envoy")})
		}
		v := mapValue(r, "extauthz_in_envoy")
		on := v != nil && v.Value == "true"
		seen[on] = append(seen[on], regions.Content[i].Value)
	}
	if len(seen[true]) > 0 && len(seen[false]) > 0 {
		return nil, false, fmt.Errorf("regions %s set extauthz_in_envoy and %s do not: `make run` runs extauthz one way for all (LLMEDGE_AUTHZ=envoy or process)",
			strings.Join(seen[true], ", "), strings.Join(seen[false], ", "))
	}
	if mode == "" {
		return doc, len(seen[true]) > 0, nil
	}
	out, err = encode(&n)
	return out, len(seen[true]) > 0, err
}
