package config_test

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

// peersFile: hk is an entry region for openai (not in allowed_regions), sg serves it and
// listens for peers.
func peersFile() config.File {
	tls := func(r string) *config.InternalTLS {
		return &config.InternalTLS{CertFile: "/etc/llmedge/" + r + ".pem", KeyFile: "/etc/llmedge/" + r + "-key.pem", CAFile: "/etc/llmedge/ca.pem"}
	}
	return config.File{
		Version: 1,
		Regions: map[string]config.Region{
			"hk": {Listen: "0.0.0.0:10000", ExtAuthz: "127.0.0.1:10100", PeerTLS: tls("hk"), Peers: map[string][]string{"openai": {"sg"}}},
			"sg": {Listen: "0.0.0.0:10000", ExtAuthz: "127.0.0.1:10100", Upstreams: []string{"openai"}, PeerListen: "10.1.0.2:10443", PeerTLS: tls("sg")},
		},
		Upstreams: map[string]config.Upstream{"openai": {URL: "https://api.openai.com", AllowedRegions: []string{"sg"}}},
		Routes:    map[string]config.Route{"openai": {Match: config.Match{Prefix: "/openai/"}, Upstream: "openai", PrefixRewrite: "/"}},
	}
}

func TestPeersModel(t *testing.T) {
	cfg, err := config.Validate(peersFile())
	if err != nil {
		t.Fatal(err)
	}
	hk, _ := cfg.Region("hk")
	sg, _ := cfg.Region("sg")
	if diff := cmp.Diff([]model.Peering{{Upstream: "openai", Regions: []string{"sg"}}}, hk.Peers); diff != "" {
		t.Errorf("hk peers (-want +got):\n%s", diff)
	}
	if got := hk.Entry(); !cmp.Equal(got, []string{"openai"}) || hk.Serves("openai") {
		t.Errorf("hk: entry %v, serves openai %v; want an entry region for openai", got, hk.Serves("openai"))
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings %q; an entry region serves upstreams through its peers", cfg.Warnings)
	}
	f := peersFile()
	delete(f.Regions["hk"].Peers, "openai")
	unused, err := config.Validate(f)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(unused.Warnings, "regions.sg.peer_listen: no region names sg in its peers; the peer listener is not served") {
		t.Errorf("a peer listener nobody uses: warnings %q", unused.Warnings)
	}
	if sg.PeerListenAddress != "10.1.0.2" || sg.PeerListenPort != 10443 || sg.PeerTLS == nil || len(sg.Peers) != 0 {
		t.Errorf("sg: %+v", sg)
	}
}

func TestPeersErrors(t *testing.T) {
	tests := []struct {
		name   string
		modify func(f *config.File)
		want   string
	}{
		{
			name: "peer without a peer listener",
			modify: func(f *config.File) {
				sg := f.Regions["sg"]
				sg.PeerListen = ""
				f.Regions["sg"] = sg
			},
			want: `regions.hk.peers.openai[0]: region "sg" has no peer_listen: set regions.sg.peer_listen so other edges can reach it`,
		},
		{
			name: "peer that does not serve the upstream, itself, unknown and twice",
			modify: func(f *config.File) {
				hk := f.Regions["hk"]
				hk.Peers = map[string][]string{"openai": {"hk", "us", "sg", "sg"}}
				f.Regions["hk"] = hk
			},
			want: "regions.hk.peers.openai[0]: a region cannot be its own peer\n" +
				`regions.hk.peers.openai[1]: unknown region "us" (defined: hk, sg)` + "\n" +
				`regions.hk.peers.openai[3]: region "sg" is listed twice`,
		},
		{
			name: "unknown upstream and empty list",
			modify: func(f *config.File) {
				hk := f.Regions["hk"]
				hk.Peers = map[string][]string{"nope": {"sg"}, "openai": {}}
				f.Regions["hk"] = hk
			},
			want: `regions.hk.peers.nope: unknown upstream "nope" (defined: openai)` + "\n" +
				"regions.hk.peers.openai: empty: name at least one region to forward openai's requests to",
		},
		{
			name: "peer_listen without peer_tls, unspecified address; peers without peer_tls",
			modify: func(f *config.File) {
				sg := f.Regions["sg"]
				sg.PeerTLS, sg.PeerListen = nil, "0.0.0.0:10443"
				f.Regions["sg"] = sg
				hk := f.Regions["hk"]
				hk.PeerTLS = nil
				f.Regions["hk"] = hk
			},
			want: "regions.hk.peer_tls: required with peers: forwarding to a peer uses this region's edge certificate\n" +
				"regions.sg.peer_listen: must be the address other regions' edges dial, not 0.0.0.0\n" +
				"regions.sg.peer_tls: required with peer_listen: the peer listener accepts mutual TLS only",
		},
		{
			name: "a peer that reaches the upstream only through peers itself",
			modify: func(f *config.File) {
				sg := f.Regions["sg"]
				sg.Upstreams = nil
				f.Regions["sg"] = sg
			},
			want: `regions.hk.peers.openai[0]: region "sg" does not serve upstream "openai" itself (regions.sg.upstreams); a forwarded request is never forwarded again`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := peersFile()
			tt.modify(&f)
			_, err := config.Validate(f)
			if err == nil {
				t.Fatal("Validate succeeded; want errors")
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("errors:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}
