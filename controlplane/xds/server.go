// Package xds serves each region's Envoy resources over ADS (go-control-plane): it turns the
// translator's output into content-hashed snapshots, keys them on the Envoy node's region,
// and tracks every connected node's ACKs and NACKs for the status endpoint and metrics.
package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/llmedge/llmedge/controlplane/translate"
)

// Resource types served, with the short names used in status output and metrics.
var typeNames = map[string]string{
	resourcev3.ListenerType: "listeners",
	resourcev3.RouteType:    "routes",
	resourcev3.ClusterType:  "clusters",
	// Certificates and CA bundles as file references, which Envoy watches.
	resourcev3.SecretType: "secrets",
	// The region's caller policy, for its extauthz (an llmedge.authz.v1.Policy inside a
	// TypedExtensionConfig).
	resourcev3.ExtensionConfigType: "authz_policy",
	// The region's quotas, for its envoyproxy/ratelimit.
	resourcev3.RateLimitConfigType: "ratelimit_config",
}

// ShortType names a type URL for humans ("listeners"); unknown types keep their URL.
func ShortType(typeURL string) string {
	if n, ok := typeNames[typeURL]; ok {
		return n
	}
	return typeURL
}

// regionHash keys snapshots on node.locality.region, which each Envoy's bootstrap and
// each extauthz set, so any number of them share one snapshot per region.
// envoyproxy/ratelimit cannot set a locality; it sends node metadata instead
// (CONFIG_GRPC_XDS_NODE_METADATA=region=<name>).
type regionHash struct{}

func (regionHash) ID(node *corev3.Node) string { return NodeRegion(node) }

// NodeRegion is the region an xDS client belongs to.
func NodeRegion(node *corev3.Node) string {
	if r := node.GetLocality().GetRegion(); r != "" {
		return r
	}
	return node.GetMetadata().GetFields()["region"].GetStringValue()
}

// Server holds the snapshot cache and the gRPC services that read it.
type Server struct {
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	xds     serverv3.Server
	tracker *Tracker

	// allowUnnamed admits mutual-TLS clients whose certificate names no region.
	allowUnnamed bool

	mu       sync.Mutex
	versions map[string]map[string]string // region -> short type -> version
	// routeEnc are the encodings of the routes the last Update served (routeEncodings).
	routeEnc map[*routev3.Route][]byte
}

// New builds a Server. ctx bounds the lifetime of the xDS server's internal goroutines.
// Register it on a grpc.Server built with transport.ServerCredentials, so every stream
// arriving over mutual TLS is held to the region its client certificate names.
func New(ctx context.Context, log *slog.Logger, reg prometheus.Registerer, opts ...Option) *Server {
	s := &Server{
		log:      log,
		cache:    cachev3.NewSnapshotCache(true, regionHash{}, slogAdapter{log.With("component", "go-control-plane")}),
		versions: map[string]map[string]string{},
	}
	for _, o := range opts {
		o(s)
	}
	s.tracker = newTracker(log, reg, s.knownRegion, s.admit)
	s.xds = serverv3.NewServer(ctx, s.cache, s.tracker.callbacks())
	return s
}

// Register adds ADS and the per-type discovery services to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
}

// Tracker exposes per-node ACK/NACK state.
func (s *Server) Tracker() *Tracker { return s.tracker }

func (s *Server) knownRegion(region string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.versions[region]
	return ok
}

// Versions returns region -> short type -> snapshot version currently served.
func (s *Server) Versions() map[string]map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]map[string]string, len(s.versions))
	for r, v := range s.versions {
		out[r] = maps.Clone(v)
	}
	return out
}

// Update replaces the served snapshots with the given regions' resources. Every snapshot is
// built and checked before any is set, so a failure pushes nothing. Regions whose content
// did not change are not touched (their clients see no push); regions that disappeared are
// cleared: their Envoys are sent empty listeners, routes and clusters, and get the region's
// config again if it comes back. It returns the regions that changed.
func (s *Server) Update(all map[string]*translate.Resources) ([]string, error) {
	type built struct {
		snap     *cachev3.Snapshot
		versions map[string]string
	}
	// One goroutine per region, as translate.All does: encoding and hashing each region's
	// resources is most of an Update, and the regions are independent.
	regions := slices.Sorted(maps.Keys(all))
	snaps := make([]built, len(regions))
	errs := make([]error, len(regions))
	s.mu.Lock()
	prevEnc := s.routeEnc
	s.mu.Unlock()
	encs := make([]routeEncodings, len(regions))
	var wg sync.WaitGroup
	for i, region := range regions {
		encs[i] = routeEncodings{prev: prevEnc, next: map[*routev3.Route][]byte{}}
		wg.Go(func() {
			snap, versions, err := snapshot(all[region], encs[i])
			if err != nil {
				errs[i] = fmt.Errorf("build snapshot for region %q: %w", region, err)
				return
			}
			snaps[i] = built{snap, versions}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	next := make(map[string]built, len(all))
	for i, region := range regions {
		next[region] = snaps[i]
	}

	nextEnc := make(map[*routev3.Route][]byte, len(prevEnc))
	for _, e := range encs {
		maps.Copy(nextEnc, e.next)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.routeEnc = nextEnc
	var changed []string
	for region, b := range next {
		if cur, ok := s.versions[region]; ok && equalVersions(cur, b.versions) {
			continue
		}
		if err := s.cache.SetSnapshot(context.Background(), region, b.snap); err != nil {
			return changed, fmt.Errorf("set snapshot for region %q: %w", region, err)
		}
		s.versions[region] = b.versions
		changed = append(changed, region)
	}
	for region := range s.versions {
		if _, ok := next[region]; ok {
			continue
		}
		// An empty snapshot, not ClearSnapshot: ClearSnapshot also forgets the requests the
		// region's connected Envoys have open, so if the region came back they would never
		// be sent its config (they ask again only after an answer).
		empty, _, err := snapshot(&translate.Resources{Region: region}, routeEncodings{})
		if err == nil {
			err = s.cache.SetSnapshot(context.Background(), region, empty)
		}
		if err != nil {
			return changed, fmt.Errorf("clear snapshot for region %q: %w", region, err)
		}
		delete(s.versions, region)
		changed = append(changed, region)
	}
	sort.Strings(changed)
	return changed, nil
}

func snapshot(res *translate.Resources, routeEnc routeEncodings) (*cachev3.Snapshot, map[string]string, error) {
	routes := make([]types.Resource, len(res.Routes))
	for i, rc := range res.Routes {
		enc, err := encodeOnce(rc, routeEnc)
		if err != nil {
			return nil, nil, err
		}
		routes[i] = enc
	}
	byType := map[string][]types.Resource{
		resourcev3.ListenerType: toResources(res.Listeners),
		resourcev3.RouteType:    routes,
		resourcev3.ClusterType:  toResources(res.Clusters),
		resourcev3.SecretType:   toResources(res.Secrets),
	}
	if res.Policy != nil {
		byType[resourcev3.ExtensionConfigType] = []types.Resource{res.Policy}
	} else {
		byType[resourcev3.ExtensionConfigType] = nil
	}
	byType[resourcev3.RateLimitConfigType] = toResources(res.RateLimits)
	snap := &cachev3.Snapshot{}
	versions := map[string]string{}
	for typeURL, items := range byType {
		v, err := contentVersion(items)
		if err != nil {
			return nil, nil, err
		}
		// One version per type: a route edit then re-sends routes only, and each ACK
		// names exactly the content it accepted.
		snap.Resources[cachev3.GetResponseType(typeURL)] = cachev3.NewResources(v, items)
		versions[ShortType(typeURL)] = v
	}
	if err := snap.Consistent(); err != nil {
		return nil, nil, err
	}
	return snap, versions, nil
}

func toResources[T types.Resource](items []T) []types.Resource {
	out := make([]types.Resource, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}

// contentVersion hashes the deterministic encoding of the resources (in name order), so an
// unchanged routes YAML always yields the same version and Envoy is never pushed a no-op.
func contentVersion(items []types.Resource) (string, error) {
	sorted := slices.Clone(items)
	sort.Slice(sorted, func(i, j int) bool {
		return cachev3.GetResourceName(sorted[i]) < cachev3.GetResourceName(sorted[j])
	})
	h := sha256.New()
	for _, it := range sorted {
		// translate packs every Any deterministically too, so equal content gives equal bytes.
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(it)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func equalVersions(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// slogAdapter lets go-control-plane log through slog (it has no adapter of its own).
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Debugf(format string, args ...any) { a.log.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Infof(format string, args ...any)  { a.log.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.log.Warn(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Errorf(format string, args ...any) { a.log.Error(fmt.Sprintf(format, args...)) }
