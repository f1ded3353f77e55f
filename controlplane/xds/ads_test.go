package xds

import (
	"fmt"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/xds/xdstest"
)

const (
	waitFor = 5 * time.Second
	// absence is how long a test waits to conclude that no response is coming.
	absence = 300 * time.Millisecond
)

// unpack decodes every resource of resp into new messages of T's type.
func unpack[T proto.Message](t *testing.T, resp *discoveryv3.DiscoveryResponse, newT func() T) []T {
	t.Helper()
	var out []T
	for _, a := range resp.GetResources() {
		m := newT()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
		}
		out = append(out, m)
	}
	return out
}

func byName[T interface{ GetName() string }](a, b T) bool { return a.GetName() < b.GetName() }

// TestADSAckNack drives one ADS stream as Envoy would: it subscribes to listeners, checks
// what it gets is what the translator produced, ACKs it, NACKs the next push, and hangs up;
// the tracker and metrics must follow each step.
func TestADSAckNack(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newServer(t, reg)
	base := resources(t, testFile())
	if _, err := s.Update(base); err != nil {
		t.Fatal(err)
	}
	v1 := s.Versions()["hk"]["listeners"]
	conn := serve(t, s)
	st := xdstest.Open(t, conn)

	st.Send(t, &discoveryv3.DiscoveryRequest{Node: node("n1", "hk"), TypeUrl: resourcev3.ListenerType})
	resp := st.Recv(t, waitFor)
	if resp.GetTypeUrl() != resourcev3.ListenerType || resp.GetVersionInfo() != v1 {
		t.Fatalf("got %s version %q, want %s version %q", resp.GetTypeUrl(), resp.GetVersionInfo(), resourcev3.ListenerType, v1)
	}
	got := unpack(t, resp, func() *listenerv3.Listener { return &listenerv3.Listener{} })
	if diff := cmp.Diff(base["hk"].Listeners, got, protocmp.Transform()); diff != "" {
		t.Errorf("listeners served to hk (-translator +ADS):\n%s", diff)
	}

	// Connected but not yet ACKed.
	eventually(t, waitFor, func() error {
		n, err := findNode(s, "n1")
		if err != nil {
			return err
		}
		if n.Region != "hk" || n.Cluster != "edge-hk" || len(n.Acked) != 0 || n.LastNack != nil {
			return fmt.Errorf("fresh node = %+v", n)
		}
		return nil
	})
	if err := wantMetric(reg, "llmedge_xds_connected_nodes", map[string]string{"region": "hk"}, 1); err != nil {
		t.Error(err)
	}

	// ACK.
	st.Ack(t, resp)
	eventually(t, waitFor, func() error {
		n, err := findNode(s, "n1")
		if err != nil {
			return err
		}
		if n.Acked["listeners"] != v1 || n.LastAckAt == nil {
			return fmt.Errorf("after ACK: acked %v, last ack %v; want listeners=%s", n.Acked, n.LastAckAt, v1)
		}
		return nil
	})
	eventually(t, waitFor, func() error {
		return wantMetric(reg, "llmedge_xds_acks_total", map[string]string{"region": "hk", "type": "listeners"}, 1)
	})

	// A new listener is pushed; the node rejects it.
	next := resources(t, edited(func(f *config.File) {
		r := f.Regions["hk"]
		r.Listen = "127.0.0.1:10100"
		f.Regions["hk"] = r
	}))
	changed, err := s.Update(next)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"hk"}, changed); diff != "" {
		t.Fatalf("changed (-want +got):\n%s", diff)
	}
	v2 := s.Versions()["hk"]["listeners"]
	push := st.Recv(t, waitFor)
	if push.GetVersionInfo() != v2 || push.GetNonce() == resp.GetNonce() {
		t.Fatalf("push: version %q nonce %q; want version %q and a new nonce", push.GetVersionInfo(), push.GetNonce(), v2)
	}
	if diff := cmp.Diff(next["hk"].Listeners, unpack(t, push, func() *listenerv3.Listener { return &listenerv3.Listener{} }), protocmp.Transform()); diff != "" {
		t.Errorf("pushed listeners (-translator +ADS):\n%s", diff)
	}
	const reason = "Error adding/updating listener(s) llmedge-hk: cannot bind 127.0.0.1:10100"
	st.Send(t, &discoveryv3.DiscoveryRequest{
		TypeUrl:       resourcev3.ListenerType,
		VersionInfo:   v1, // Envoy names the version it still runs
		ResponseNonce: push.GetNonce(),
		ErrorDetail:   &statuspb.Status{Code: 13, Message: reason},
	})
	eventually(t, waitFor, func() error {
		n, err := findNode(s, "n1")
		if err != nil {
			return err
		}
		if n.LastNack == nil {
			return fmt.Errorf("no NACK recorded: %+v", n)
		}
		want := Nack{Type: "listeners", Version: v2, Error: reason}
		if diff := cmp.Diff(want, *n.LastNack, cmpopts.IgnoreFields(Nack{}, "At")); diff != "" {
			return fmt.Errorf("LastNack (-want +got):\n%s", diff)
		}
		if n.LastNack.At.IsZero() {
			return fmt.Errorf("LastNack has no time")
		}
		if n.Acked["listeners"] != v1 {
			return fmt.Errorf("a NACK moved the ACKed listeners version to %q; want %q", n.Acked["listeners"], v1)
		}
		return nil
	})
	eventually(t, waitFor, func() error {
		return wantMetric(reg, "llmedge_xds_nacks_total", map[string]string{"region": "hk", "type": "listeners"}, 1)
	})
	if err := wantMetric(reg, "llmedge_xds_acks_total", map[string]string{"region": "hk", "type": "listeners"}, 1); err != nil {
		t.Errorf("a NACK counted as an ACK: %v", err)
	}

	// The rejected version is not sent again: the next listeners the node gets are the
	// next edit's.
	next = resources(t, edited(func(f *config.File) {
		r := f.Regions["hk"]
		r.Listen = "127.0.0.1:10200"
		f.Regions["hk"] = r
	}))
	if _, err := s.Update(next); err != nil {
		t.Fatal(err)
	}
	v3 := s.Versions()["hk"]["listeners"]
	if again := st.Recv(t, waitFor); again.GetVersionInfo() != v3 {
		t.Fatalf("after the NACK of %s the node got version %q; want the next edit's %q", v2, again.GetVersionInfo(), v3)
	}

	// Hanging up removes the node and its gauge.
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, func() error {
		if _, err := findNode(s, "n1"); err == nil {
			return fmt.Errorf("n1 still listed after its stream closed")
		}
		return wantMetric(reg, "llmedge_xds_connected_nodes", map[string]string{"region": "hk"}, 0)
	})
}

// A node of a region the config does not define gets nothing, is still listed, and gets
// its config as soon as the region is added.
func TestADSUnknownRegion(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newServer(t, reg)
	if _, err := s.Update(resources(t, testFile())); err != nil {
		t.Fatal(err)
	}
	st := xdstest.Open(t, serve(t, s))
	st.Send(t, &discoveryv3.DiscoveryRequest{Node: node("m1", "mars"), TypeUrl: resourcev3.ListenerType})
	st.ExpectNone(t, absence)

	eventually(t, waitFor, func() error {
		n, err := findNode(s, "m1")
		if err != nil {
			return err
		}
		if n.Region != "mars" {
			return fmt.Errorf("m1 region = %q, want mars", n.Region)
		}
		return wantMetric(reg, "llmedge_xds_connected_nodes", map[string]string{"region": "mars"}, 1)
	})

	withMars := resources(t, edited(func(f *config.File) {
		f.Regions["mars"] = config.Region{Listen: "127.0.0.1:10009", ExtAuthz: "127.0.0.1:10100", Upstreams: []string{"openai"}}
		u := f.Upstreams["openai"]
		u.AllowedRegions = []string{"hk", "mars", "sg"}
		f.Upstreams["openai"] = u
	}))
	changed, err := s.Update(withMars)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"mars"}, changed); diff != "" {
		t.Fatalf("changed (-want +got):\n%s", diff)
	}
	resp := st.Recv(t, waitFor)
	if diff := cmp.Diff(withMars["mars"].Listeners, unpack(t, resp, func() *listenerv3.Listener { return &listenerv3.Listener{} }), protocmp.Transform()); diff != "" {
		t.Errorf("listeners pushed once mars exists (-translator +ADS):\n%s", diff)
	}

	st.Close()
	eventually(t, waitFor, func() error {
		if _, err := findNode(s, "m1"); err == nil {
			return fmt.Errorf("m1 still listed after its stream was cancelled")
		}
		return wantMetric(reg, "llmedge_xds_connected_nodes", map[string]string{"region": "mars"}, 0)
	})
}

// Envoy with set_node_on_first_message_only sends its node once; every later request on
// the stream, for any type, must still be served and tracked as that node.
func TestADSNodeOnFirstMessageOnly(t *testing.T) {
	s := newServer(t, nil)
	base := resources(t, testFile())
	if _, err := s.Update(base); err != nil {
		t.Fatal(err)
	}
	conn := serve(t, s)
	a, b := xdstest.Open(t, conn), xdstest.Open(t, conn)

	subscribe := func(st *xdstest.Stream, id, region string) {
		t.Helper()
		st.Send(t, &discoveryv3.DiscoveryRequest{Node: node(id, region), TypeUrl: resourcev3.ListenerType})
		lds := st.Recv(t, waitFor)
		st.Ack(t, lds)
		st.Send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}) // no node
		cds := st.Recv(t, waitFor)
		if cds.GetTypeUrl() != resourcev3.ClusterType {
			t.Fatalf("%s: got %s, want clusters", id, cds.GetTypeUrl())
		}
		got := unpack(t, cds, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
		if diff := cmp.Diff(base[region].Clusters, got, protocmp.Transform(), cmpopts.SortSlices(byName[*clusterv3.Cluster])); diff != "" {
			t.Errorf("%s: clusters served without a node on the request (-%s +ADS):\n%s", id, region, diff)
		}
		st.Ack(t, cds)
		st.Send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{translate.RouteConfigName(region)}})
		rds := st.Recv(t, waitFor)
		if diff := cmp.Diff(base[region].Routes, unpack(t, rds, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} }), protocmp.Transform()); diff != "" {
			t.Errorf("%s: routes served without a node on the request (-%s +ADS):\n%s", id, region, diff)
		}
		st.Ack(t, rds, translate.RouteConfigName(region))
	}
	subscribe(a, "a", "hk")
	subscribe(b, "b", "sg")

	v := s.Versions()
	envoyTypes := func(region string) map[string]string {
		return map[string]string{"listeners": v[region]["listeners"], "clusters": v[region]["clusters"], "routes": v[region]["routes"]}
	}
	subscribed := []string{"clusters", "listeners", "routes"}
	want := []Node{
		{ID: "a", Cluster: "edge-hk", Region: "hk", Subscribed: subscribed, Acked: envoyTypes("hk")},
		{ID: "b", Cluster: "edge-sg", Region: "sg", Subscribed: subscribed, Acked: envoyTypes("sg")},
	}
	eventually(t, waitFor, func() error {
		got := s.Tracker().Nodes()
		if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Node{}, "Stream", "ConnectedAt", "LastAckAt")); diff != "" {
			return fmt.Errorf("nodes (-want +got):\n%s", diff)
		}
		return nil
	})
}

// A region removed from the config is cleared on its connected Envoys (an empty config is
// pushed), and when it is added back its config must reach the Envoys that stayed connected
// meanwhile: they have a request open and send nothing until they get an answer.
func TestADSRegionRemovedAndRestored(t *testing.T) {
	s := newServer(t, nil)
	if _, err := s.Update(resources(t, testFile())); err != nil {
		t.Fatal(err)
	}
	st := xdstest.Open(t, serve(t, s))
	st.Send(t, &discoveryv3.DiscoveryRequest{Node: node("n1", "sg"), TypeUrl: resourcev3.ListenerType})
	st.Ack(t, st.Recv(t, waitFor))
	eventually(t, waitFor, func() error {
		n, err := findNode(s, "n1")
		if err != nil {
			return err
		}
		if n.Acked["listeners"] == "" {
			return fmt.Errorf("no ACK yet")
		}
		return nil
	})

	if changed, err := s.Update(resources(t, edited(withoutSG))); err != nil || !cmp.Equal(changed, []string{"sg"}) {
		t.Fatalf("remove sg: changed %v, err %v", changed, err)
	}
	if v, ok := s.Versions()["sg"]; ok {
		t.Errorf("removed region still has versions %v", v)
	}
	cleared := st.Recv(t, waitFor)
	if n := len(cleared.GetResources()); n != 0 || cleared.GetTypeUrl() != resourcev3.ListenerType {
		t.Fatalf("after removing sg: got %s with %d resources, want empty listeners", cleared.GetTypeUrl(), n)
	}
	st.Ack(t, cleared)
	eventually(t, waitFor, func() error {
		n, err := findNode(s, "n1")
		if err != nil {
			return err
		}
		if n.Acked["listeners"] != cleared.GetVersionInfo() {
			return fmt.Errorf("empty listeners not ACKed yet: %v", n.Acked)
		}
		return nil
	})

	restored := resources(t, edited(func(f *config.File) {
		r := f.Regions["sg"]
		r.Listen = "127.0.0.1:10101"
		f.Regions["sg"] = r
	}))
	if _, err := s.Update(restored); err != nil {
		t.Fatal(err)
	}
	resp := st.Recv(t, waitFor)
	if diff := cmp.Diff(restored["sg"].Listeners, unpack(t, resp, func() *listenerv3.Listener { return &listenerv3.Listener{} }), protocmp.Transform()); diff != "" {
		t.Errorf("listeners pushed after sg came back (-translator +ADS):\n%s", diff)
	}
}
