package xds

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmedge/llmedge/internal/transport"
)

// Nack is the last configuration a node rejected.
type Nack struct {
	Type    string    `json:"type"`
	Version string    `json:"version"` // the version the node rejected
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// Node is one connected xDS client as the status endpoint shows it.
type Node struct {
	ID      string `json:"id"`
	Cluster string `json:"cluster,omitempty"`
	Region  string `json:"region"`
	// Identity is the region identity its client certificate carries (mutual TLS only).
	Identity    string    `json:"identity,omitempty"`
	Stream      int64     `json:"stream"`
	ConnectedAt time.Time `json:"connected_at"`
	// Subscribed lists the types the node asked for (Envoys: listeners, routes, clusters;
	// extauthz: authz_policy).
	Subscribed []string          `json:"subscribed"`
	Acked      map[string]string `json:"acked"` // short type -> version
	LastAckAt  *time.Time        `json:"last_ack_at,omitempty"`
	LastNack   *Nack             `json:"last_nack,omitempty"`
}

type streamState struct {
	peer transport.Peer
	node Node
	sent map[string]string // type URL -> version last sent on this stream
	warn bool
}

// Tracker follows every ADS stream: which node it is, what it was sent, what it ACKed or
// NACKed. A NACK is a request carrying error_detail; an ACK is a request whose
// response_nonce answers a response we sent, with no error_detail.
type Tracker struct {
	log   *slog.Logger
	known func(region string) bool
	admit func(p transport.Peer, claimed string) *refusal

	mu      sync.Mutex
	streams map[int64]*streamState
	// deltas are incremental streams: never tracked for status (llmedge's clients use
	// state of the world), but held to the same region rule, since ADS serves both.
	deltas map[int64]*deltaState

	connected *prometheus.GaugeVec
	acks      *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	refused   *prometheus.CounterVec
}

type deltaState struct {
	peer transport.Peer
	node *corev3.Node // the last node sent: later requests may omit it
}

func newTracker(log *slog.Logger, reg prometheus.Registerer, known func(string) bool, admit func(transport.Peer, string) *refusal) *Tracker {
	t := &Tracker{
		log:     log,
		known:   known,
		admit:   admit,
		streams: map[int64]*streamState{},
		deltas:  map[int64]*deltaState{},
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmedge_xds_connected_nodes", Help: "xDS clients connected, by region.",
		}, []string{"region"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_xds_acks_total", Help: "Configurations accepted by xDS clients.",
		}, []string{"region", "type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_xds_nacks_total", Help: "Configurations rejected by xDS clients.",
		}, []string{"region", "type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmedge_xds_refused_total", Help: "xDS streams and fetches refused because the client certificate does not certify the region the node claims (reason region_mismatch or no_identity).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(t.connected, t.acks, t.nacks, t.refused)
	}
	return t
}

// check refuses a client whose certificate does not certify the region its node claims,
// logging the claimed and the certified region. It runs before go-control-plane opens a
// watch, so a refused client is sent nothing.
func (t *Tracker) check(p transport.Peer, node *corev3.Node, stream int64) error {
	claimed := NodeRegion(node)
	r := t.admit(p, claimed)
	if r == nil {
		return nil
	}
	t.refused.WithLabelValues(r.reason).Inc()
	attrs := []any{"node_id", node.GetId(), "region", claimed, "stream", stream, "reason", r.reason}
	if p.IdentityErr == nil {
		attrs = append(attrs, "cert_region", p.Identity.Region, "identity", p.Identity.String())
	} else {
		attrs = append(attrs, "error", p.IdentityErr.Error())
	}
	t.log.Warn("xds client refused: its certificate does not certify the region its node claims", attrs...)
	return r.err
}

func (t *Tracker) callbacks() serverv3.CallbackFuncs {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			p := transport.PeerOf(ctx)
			t.mu.Lock()
			t.streams[id] = &streamState{peer: p, sent: map[string]string{}}
			t.mu.Unlock()
			return nil
		},
		StreamClosedFunc: func(id int64, _ *corev3.Node) {
			t.mu.Lock()
			st := t.streams[id]
			delete(t.streams, id)
			t.mu.Unlock()
			if st != nil && st.node.ID != "" {
				t.connected.WithLabelValues(st.node.Region).Dec()
				t.log.Info("xds client disconnected", "node_id", st.node.ID, "region", st.node.Region, "stream", id)
			}
		},
		StreamRequestFunc:  t.onRequest,
		StreamResponseFunc: t.onResponse,
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			p := transport.PeerOf(ctx)
			t.mu.Lock()
			t.deltas[id] = &deltaState{peer: p}
			t.mu.Unlock()
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) {
			t.mu.Lock()
			delete(t.deltas, id)
			t.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			t.mu.Lock()
			st := t.deltas[id]
			if st == nil {
				t.mu.Unlock()
				return nil
			}
			// go-control-plane fills in an omitted node only after this callback.
			if req.GetNode() != nil {
				st.node = req.GetNode()
			}
			peer, n := st.peer, st.node
			t.mu.Unlock()
			return t.check(peer, n, id)
		},
		FetchRequestFunc: func(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
			return t.check(transport.PeerOf(ctx), req.GetNode(), 0)
		},
	}
}

func (t *Tracker) onRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	t.mu.Lock()
	st := t.streams[id]
	if st == nil {
		t.mu.Unlock()
		return nil
	}
	peer := st.peer
	t.mu.Unlock()
	// Every request, not only the first: the node (filled in by go-control-plane when a
	// request omits it) is what the snapshot is chosen by.
	if err := t.check(peer, req.GetNode(), id); err != nil {
		return err
	}
	t.mu.Lock()
	if st = t.streams[id]; st == nil {
		t.mu.Unlock()
		return nil
	}
	first := st.node.ID == ""
	if first {
		n := req.GetNode()
		st.node = Node{
			ID:          n.GetId(),
			Cluster:     n.GetCluster(),
			Region:      NodeRegion(n),
			Stream:      id,
			ConnectedAt: time.Now().UTC(),
			Acked:       map[string]string{},
		}
		if st.node.ID == "" {
			st.node.ID = "(no node id)"
		}
		if peer.Kind == transport.PeerTLS && peer.IdentityErr == nil {
			st.node.Identity = peer.Identity.String()
		}
	}
	if typ := ShortType(req.GetTypeUrl()); typ != "" && !slices.Contains(st.node.Subscribed, typ) {
		st.node.Subscribed = append(st.node.Subscribed, typ)
		slices.Sort(st.node.Subscribed)
	}
	node := st.node
	var nack *Nack
	acked := ""
	switch {
	case req.GetErrorDetail() != nil:
		nack = &Nack{
			Type:    ShortType(req.GetTypeUrl()),
			Version: st.sent[req.GetTypeUrl()],
			Error:   req.GetErrorDetail().GetMessage(),
			At:      time.Now().UTC(),
		}
		st.node.LastNack = nack
		if nack.Version != "" {
			// A NACK names the version Envoy still runs, which go-control-plane's cache
			// takes as out of date: it would send the rejected version again at once, and
			// Envoy would reject it again, a hundred times a second. The rejected version
			// is what the node has seen: it gets the next one when the config changes.
			req.VersionInfo = nack.Version
		}
	case req.GetResponseNonce() != "" && req.GetVersionInfo() != "":
		acked = req.GetVersionInfo()
		st.node.Acked[ShortType(req.GetTypeUrl())] = acked
		now := time.Now().UTC()
		st.node.LastAckAt = &now
	}
	t.mu.Unlock()

	if first {
		t.connected.WithLabelValues(node.Region).Inc()
		switch {
		case node.Region == "":
			t.log.Warn("xds client has no node.locality.region; it gets no config (set it in the Envoy bootstrap)", "node_id", node.ID, "stream", id)
		case !t.known(node.Region):
			t.log.Warn("xds client is in a region the routes YAML does not define; it gets no config until the region is added", "node_id", node.ID, "region", node.Region, "stream", id)
		case node.Identity != "":
			t.log.Info("xds client connected", "node_id", node.ID, "region", node.Region, "identity", node.Identity, "stream", id)
		default:
			t.log.Info("xds client connected", "node_id", node.ID, "region", node.Region, "stream", id)
		}
	}
	switch {
	case nack != nil:
		t.nacks.WithLabelValues(node.Region, nack.Type).Inc()
		t.log.Error("xds client rejected config", "node_id", node.ID, "region", node.Region, "type_url", req.GetTypeUrl(), "version", nack.Version, "error", nack.Error)
	case acked != "":
		t.acks.WithLabelValues(node.Region, ShortType(req.GetTypeUrl())).Inc()
		t.log.Debug("xds client accepted config", "node_id", node.ID, "region", node.Region, "type_url", req.GetTypeUrl(), "version", acked)
	}
	return nil
}

func (t *Tracker) onResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.streams[id]; st != nil {
		st.sent[resp.GetTypeUrl()] = resp.GetVersionInfo()
	}
}

// Nodes lists the connected nodes, sorted by region then id.
func (t *Tracker) Nodes() []Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Node, 0, len(t.streams))
	for _, st := range t.streams {
		if st.node.ID == "" {
			continue
		}
		n := st.node
		n.Acked = maps.Clone(n.Acked)
		n.Subscribed = slices.Clone(n.Subscribed)
		if n.LastNack != nil {
			c := *n.LastNack
			n.LastNack = &c
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Region != out[j].Region {
			return out[i].Region < out[j].Region
		}
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Stream < out[j].Stream
	})
	return out
}
