package config

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/llmedge/llmedge/controlplane/model"
)

// validatePeers checks the edge-to-edge settings of every region once all regions are
// known: a peer must be another region that listens for peers and serves the upstream
// itself (so a request is forwarded at most once and never loops back).
func validatePeers(f File, cfg *model.Config, c *collector) {
	byName := map[string]*model.Region{}
	for i := range cfg.Regions {
		byName[cfg.Regions[i].Name] = &cfg.Regions[i]
	}
	for _, name := range sortedKeys(f.Regions) {
		in, p := f.Regions[name], "regions."+name
		r := byName[name]
		if r == nil {
			continue // its own errors are reported already
		}
		if in.PeerTLS != nil {
			r.PeerTLS = validateInternalTLS(p+".peer_tls", *in.PeerTLS, c)
		}
		if in.PeerListen != "" {
			ap, err := netip.ParseAddrPort(in.PeerListen)
			switch {
			case err != nil:
				c.add(p+".peer_listen", "must be ip:port with a literal IP address: %v", err)
			case ap.Port() == 0:
				c.add(p+".peer_listen", "port must be 1-65535")
			case ap.Addr().IsUnspecified():
				c.add(p+".peer_listen", "must be the address other regions' edges dial, not %s", ap.Addr())
			case ap.Addr().String() == r.ListenAddress && uint32(ap.Port()) == r.ListenPort:
				c.add(p+".peer_listen", "must differ from %s.listen: callers and peer edges are told apart by the listener", p)
			default:
				r.PeerListenAddress, r.PeerListenPort = ap.Addr().String(), uint32(ap.Port())
			}
			if in.PeerTLS == nil {
				c.add(p+".peer_tls", "required with peer_listen: the peer listener accepts mutual TLS only")
			}
		}
		if len(in.Peers) > 0 && in.PeerTLS == nil {
			c.add(p+".peer_tls", "required with peers: forwarding to a peer uses this region's edge certificate")
		}
	}
	for _, name := range sortedKeys(f.Regions) {
		in, p := f.Regions[name], "regions."+name
		r := byName[name]
		if r == nil {
			continue
		}
		for _, u := range sortedKeys(in.Peers) {
			up := p + ".peers." + u
			if _, ok := f.Upstreams[u]; !ok {
				c.add(up, "unknown upstream %q (defined: %s)", u, strings.Join(sortedKeys(f.Upstreams), ", "))
				continue
			}
			if len(in.Peers[u]) == 0 {
				c.add(up, "empty: name at least one region to forward %s's requests to", u)
				continue
			}
			var regions []string
			for i, peer := range in.Peers[u] {
				fp := fmt.Sprintf("%s[%d]", up, i)
				pr, ok := byName[peer]
				switch {
				case peer == name:
					c.add(fp, "a region cannot be its own peer")
				case slices.Contains(regions, peer):
					c.add(fp, "region %q is listed twice", peer)
				case !ok:
					c.add(fp, "unknown region %q (defined: %s)", peer, strings.Join(sortedKeys(f.Regions), ", "))
				case f.Regions[peer].PeerListen == "":
					c.add(fp, "region %q has no peer_listen: set regions.%s.peer_listen so other edges can reach it", peer, peer)
				case !pr.Serves(u):
					c.add(fp, "region %q does not serve upstream %q itself (regions.%s.upstreams); a forwarded request is never forwarded again", peer, u, peer)
				default:
					regions = append(regions, peer)
				}
			}
			sort.Strings(regions)
			r.Peers = append(r.Peers, model.Peering{Upstream: u, Regions: regions})
		}
	}
	warnPeers(cfg)
}

// warnPeers flags a peer listener nobody forwards to (it is not served), and drops the
// "serves no upstream" warning of a region that serves upstreams through peers.
func warnPeers(cfg *model.Config) {
	named := map[string]bool{}
	for _, r := range cfg.Regions {
		for _, p := range r.Peers {
			for _, q := range p.Regions {
				named[q] = true
			}
		}
	}
	for _, r := range cfg.Regions {
		p := "regions." + r.Name
		if r.PeerListenAddress != "" && !named[r.Name] {
			cfg.Warnings = append(cfg.Warnings, p+".peer_listen: no region names "+r.Name+" in its peers; the peer listener is not served")
		}
		if len(r.Peers) > 0 {
			cfg.Warnings = slices.DeleteFunc(cfg.Warnings, func(w string) bool { return strings.HasPrefix(w, p+".upstreams: empty") })
		}
	}
}
