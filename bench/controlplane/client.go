package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/llmedge/llmedge/internal/benchconfig"
)

// simClient is one simulated Envoy on one SotW ADS stream. It behaves as an Envoy with
// the llmedge bootstrap does (node on the first request only, node.locality.region set):
// it subscribes to clusters and listeners (wildcard), then, once it has a listener, to
// the region's RouteConfiguration by name (llmedge-<region>), and ACKs every response
// (version_info and response_nonce of the response, same resource names). It does not
// unpack the resources: only the control plane's cost is of interest.
type simClient struct {
	idx    int
	region string
	node   *corev3.Node

	// routesVersion is the routes version last ACKed; routesAckAt when (UnixNano, taken
	// right after the ACK was handed to gRPC).
	routesVersion atomic.Pointer[string]
	routesAckAt   atomic.Int64
	synced        atomic.Uint32 // bit 0 clusters, 1 listeners, 2 routes ACKed at least once
}

// fleet is every simulated client and the ClientConns they share.
type fleet struct {
	clients []*simClient
	conns   []*grpc.ClientConn

	// routeChanges counts ACKs of a routes version different from the client's previous
	// one; poke is signalled (without blocking) on each.
	routeChanges atomic.Int64
	poke         chan struct{}
	errs         chan error
	wg           sync.WaitGroup
}

const syncedAll = 0b111

// startFleet opens n ADS streams to addr, perConn streams per ClientConn, spreading the
// clients round-robin over the regions.
func startFleet(ctx context.Context, addr string, n, perConn int) (*fleet, error) {
	f := &fleet{poke: make(chan struct{}, 1), errs: make(chan error, n)}
	nconns := (n + perConn - 1) / perConn
	for range nconns {
		cc, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		)
		if err != nil {
			f.close()
			return nil, err
		}
		f.conns = append(f.conns, cc)
	}
	for i := range n {
		region := benchconfig.Regions[i%len(benchconfig.Regions)]
		c := &simClient{
			idx:    i,
			region: region,
			node: &corev3.Node{
				Id:            fmt.Sprintf("sim-%s-%04d", region, i),
				Cluster:       "llmedge-" + region,
				Locality:      &corev3.Locality{Region: region},
				UserAgentName: "envoy",
			},
		}
		empty := ""
		c.routesVersion.Store(&empty)
		f.clients = append(f.clients, c)
		cc := f.conns[i/perConn]
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := c.run(ctx, cc, f); err != nil && ctx.Err() == nil {
				f.errs <- fmt.Errorf("client %s: %w", c.node.Id, err)
			}
		}()
	}
	return f, nil
}

func (f *fleet) close() {
	for _, cc := range f.conns {
		cc.Close()
	}
}

// wait closes the connections and waits for the client goroutines.
func (f *fleet) wait() {
	f.close()
	f.wg.Wait()
}

// err returns the first client failure, if any.
func (f *fleet) err() error {
	select {
	case err := <-f.errs:
		return err
	default:
		return nil
	}
}

func (f *fleet) allSynced() bool {
	for _, c := range f.clients {
		if c.synced.Load() != syncedAll {
			return false
		}
	}
	return true
}

func (c *simClient) run(ctx context.Context, cc *grpc.ClientConn, f *fleet) error {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// Envoy asks for clusters first, then listeners; the node goes on the first request.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: resourcev3.ClusterType}); err != nil {
		return err
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}); err != nil {
		return err
	}
	routeNames := []string{"llmedge-" + c.region}
	askedRoutes := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		ack := &discoveryv3.DiscoveryRequest{
			TypeUrl:       resp.GetTypeUrl(),
			VersionInfo:   resp.GetVersionInfo(),
			ResponseNonce: resp.GetNonce(),
		}
		switch resp.GetTypeUrl() {
		case resourcev3.ClusterType:
			if err := stream.Send(ack); err != nil {
				return err
			}
			c.synced.Or(1)
		case resourcev3.ListenerType:
			// Envoy subscribes to the listener's RouteConfiguration while applying the
			// listener, then ACKs the listener.
			if !askedRoutes && len(resp.GetResources()) > 0 {
				if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: routeNames}); err != nil {
					return err
				}
				askedRoutes = true
			}
			if err := stream.Send(ack); err != nil {
				return err
			}
			c.synced.Or(2)
		case resourcev3.RouteType:
			ack.ResourceNames = routeNames
			if err := stream.Send(ack); err != nil {
				return err
			}
			c.routesAcked(f, resp.GetVersionInfo())
		default:
			// Anything else (none expected) is ACKed as Envoy would.
			if err := stream.Send(ack); err != nil {
				return err
			}
		}
	}
}

// routesAcked records that the client has just handed gRPC its ACK of routes version v;
// a version other than the last one counts as a change for the fleet.
func (c *simClient) routesAcked(f *fleet, v string) {
	at := time.Now().UnixNano()
	if prev := c.routesVersion.Load(); *prev == v {
		return
	}
	c.routesAckAt.Store(at)
	c.routesVersion.Store(&v)
	c.synced.Or(4)
	f.routeChanges.Add(1)
	select {
	case f.poke <- struct{}{}:
	default:
	}
}
