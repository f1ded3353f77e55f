// Package xdsclient is a small state-of-the-world ADS client for llmedge's own services
// (extauthz first): it subscribes to one resource type on the llmedge control plane's
// AggregatedDiscoveryService, hands every response to an Apply function, ACKs what Apply
// accepts and NACKs what it rejects, and reconnects with jittered backoff until its context
// ends. Status reports what is applied, for readiness endpoints.
//
// Protocol, per https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol:
//   - each new stream starts with {node, type_url, resource_names}; version_info and
//     response_nonce are empty, so the server sends the current state again (Apply must
//     therefore be idempotent);
//   - ACK: {type_url, resource_names, version_info: response version, response_nonce};
//   - NACK: {type_url, resource_names, version_info: last applied version, response_nonce,
//     error_detail: {code: 3 InvalidArgument, message: Apply's error}}; the previous config
//     stays in force;
//   - the node is sent on the first request of a stream only.
//
// Which resources a response carries is the server's business: a go-control-plane snapshot
// cache sends every subscribed resource of the type, a linear cache only those that changed.
// llmedge subscribes to named resources (extauthz: one Policy named after its region), for
// which both send the resource whenever it changes.
//
// With Options.StateDir, every applied response is also saved to local disk
// (internal/statefile), and Run starts by applying the saved copy — if it was saved for
// the same region, type and names — before it first connects: a client restarted while
// the control plane is away serves its last good config instead of nothing. The first
// response from the control plane replaces it (a new stream never announces the saved
// version, so the server always sends its current state and sees the usual ACK).
package xdsclient

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmedge/llmedge/internal/statefile"
	"github.com/llmedge/llmedge/internal/transport"
)

// Where the config in force came from (Status.Source).
const (
	SourceSaved        = "saved"         // the copy saved on disk by an earlier run
	SourceControlPlane = "control_plane" // a response on the current or an earlier stream
)

// Defaults for Options.
const (
	DefaultBackoffMin = 250 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second

	// Client keepalive: ping an idle connection every 30s and drop it if the ping is not
	// answered within 10s, so a half-open connection to a vanished control plane is noticed.
	// The control plane's enforcement policy allows pings every 10s, also without streams.
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second

	userAgent = "llmedge-xdsclient"
)

// Options configure a Client.
type Options struct {
	// Server is the control plane's gRPC ADS endpoint: host:port or unix:/abs/path.sock
	// (internal/transport's syntax). Required.
	Server string
	// TLS, when set, makes the client present TLS.Cert and accept only a server
	// certificate for the server's host chaining to TLS.CA (mutual TLS; the files are
	// re-read when they change). Ignored for a unix socket, which its directory guards.
	TLS transport.Files
	// Node identifies this client: id, cluster, and locality.region (which the llmedge
	// control plane keys its config on). Sent on the first request of each stream. It is
	// copied; user_agent_name defaults to "llmedge-xdsclient".
	Node *corev3.Node
	// TypeURL is the resource type to subscribe to, e.g.
	// "type.googleapis.com/llmedge.authz.v1.Policy". Required.
	TypeURL string
	// Names are the resource names to subscribe to; empty subscribes to all (wildcard).
	Names []string
	// Apply validates and applies one response's resources. It is called from Run's
	// goroutine, one response at a time, and again with the current state after every
	// reconnect. A nil error ACKs the response; a non-nil error NACKs it (the text goes to
	// error_detail) and the previously applied config must stay in force. Required.
	Apply func(version string, resources []*anypb.Any) error
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// BackoffMin and BackoffMax bound the jittered exponential delay between reconnects
	// (and between repeated NACKs of one version); defaults 250ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// StateDir, when set, is where the last applied response is kept (one file per region
	// and type, mode 0600, in a directory created 0700) and read back at start-up. What
	// is saved is what the server sent: keep secrets out of the subscribed resources.
	StateDir string
	// DialOptions are added after the defaults (transport credentials from Server and TLS,
	// keepalive, connect backoff), so they can override them.
	DialOptions []grpc.DialOption
}

// Status is a snapshot of a Client's state.
type Status struct {
	// Connected is true while an ADS stream to the server is open.
	Connected bool
	// Version is the version_info of the last applied (ACKed) response; "" before the
	// first. It survives reconnects: the applied config stays in force meanwhile.
	Version string
	// Updated is when Version was applied; zero before the first. A service is ready to
	// serve once this is set.
	Updated time.Time
	// NACKVersion and NACKError describe the last rejected response, and NACKed when it was
	// rejected. They are cleared when a later response is applied.
	NACKVersion string
	NACKError   string
	NACKed      time.Time
	// Source says where the config in force came from: SourceSaved until the control
	// plane's first response is applied, then SourceControlPlane; "" before any.
	Source string
	// SavedAt is when the saved copy in force was written (Source == SourceSaved only).
	SavedAt time.Time
	// SaveError is the last failure to save an applied response; "" once a save works.
	SaveError string
}

// Client is an ADS client for one resource type. Create it with New and start it with Run.
type Client struct {
	o       Options
	target  string
	creds   grpc.DialOption
	log     *slog.Logger
	node    *corev3.Node
	running atomic.Bool
	// restoreOnce guards LoadSaved.
	restoreOnce atomic.Bool

	mu sync.Mutex
	st Status
	// savedSum is a digest of what the state file holds, so a resent config is not
	// rewritten on every reconnect.
	savedSum [sha256.Size]byte
	// nackRepeats counts consecutive NACKs of the same version; it paces the NACKs when a
	// server re-sends a rejected version at once (go-control-plane's snapshot cache answers
	// a NACK carrying an older version_info with the same snapshot immediately).
	nackRepeats int
}

// New checks o and fills in its defaults.
func New(o Options) (*Client, error) {
	switch {
	case o.Server == "":
		return nil, errors.New("xdsclient: Options.Server is required")
	case o.TypeURL == "":
		return nil, errors.New("xdsclient: Options.TypeURL is required")
	case o.Apply == nil:
		return nil, errors.New("xdsclient: Options.Apply is required")
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = DefaultBackoffMin
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = o.BackoffMin
	}
	o.Names = append([]string(nil), o.Names...)
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	node := &corev3.Node{}
	if o.Node != nil {
		node = proto.Clone(o.Node).(*corev3.Node)
	}
	if node.UserAgentName == "" {
		node.UserAgentName = userAgent
	}
	if o.StateDir != "" {
		if err := statefile.Dir(o.StateDir); err != nil {
			return nil, fmt.Errorf("xdsclient: %w", err)
		}
	}
	addr, err := transport.Parse(o.Server)
	if err != nil {
		return nil, fmt.Errorf("xdsclient: server %q: %w", o.Server, err)
	}
	target, creds, err := transport.GRPCClient(addr, o.TLS, log.With("component", "xdsclient"))
	if err != nil {
		return nil, fmt.Errorf("xdsclient: server %s: %w", o.Server, err)
	}
	return &Client{
		o:      o,
		target: target,
		creds:  creds,
		node:   node,
		log:    log.With("component", "xdsclient", "server", o.Server, "type_url", o.TypeURL),
	}, nil
}

// Run is New(o) followed by Client.Run(ctx).
func Run(ctx context.Context, o Options) error {
	c, err := New(o)
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

// Status returns the client's current state; safe to call from any goroutine.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Run keeps an ADS stream to the server open, reconnecting with jittered exponential
// backoff whenever it fails, until ctx ends; it then returns nil. It returns an error only
// if the gRPC client cannot be created (a malformed address or dial option) or if Run is
// already running.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xdsclient: Run called twice")
	}
	defer c.running.Store(false)
	c.LoadSaved()

	opts := append([]grpc.DialOption{
		c.creds,
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true,
		}),
		// Reconnect the connection itself on the same schedule as the streams; gRPC's
		// default grows to 120s.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: c.o.BackoffMin, Multiplier: 1.6, Jitter: 0.2, MaxDelay: c.o.BackoffMax,
			},
			MinConnectTimeout: 20 * time.Second,
		}),
		grpc.WithUserAgent(userAgent),
	}, c.o.DialOptions...)
	conn, err := grpc.NewClient(c.target, opts...)
	if err != nil {
		return fmt.Errorf("xdsclient: %w", err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)

	failures := 0
	for {
		received, err := c.stream(ctx, ads)
		if ctx.Err() != nil {
			c.log.Debug("xds client stopped")
			return nil
		}
		if received {
			// The stream worked for a while; start the next one soon.
			failures = 0
		}
		delay := c.backoff(failures)
		failures++
		c.log.Warn("xds stream to the control plane failed; reconnecting",
			"error", err, "retry_in", delay.Round(time.Millisecond), "version", c.Status().Version)
		if !sleep(ctx, delay) {
			c.log.Debug("xds client stopped")
			return nil
		}
	}
}

// stream runs one ADS stream until it fails or ctx ends. received reports whether the
// server sent at least one response of our type on it.
func (c *Client) stream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{
		Node:          c.node,
		TypeUrl:       c.o.TypeURL,
		ResourceNames: c.o.Names,
	}); err != nil {
		return false, sendErr(st, err)
	}
	c.setConnected(true)
	defer c.setConnected(false)
	c.log.Info("xds stream open", "names", c.o.Names)

	for {
		resp, err := st.Recv()
		if err != nil {
			return received, err
		}
		if resp.GetTypeUrl() != c.o.TypeURL {
			// Not subscribed to; a SotW server sends nothing it was not asked for.
			c.log.Warn("ignoring xds response of another type", "got_type_url", resp.GetTypeUrl())
			continue
		}
		received = true
		req, pace := c.handle(resp)
		if pace > 0 && !sleep(ctx, pace) {
			return received, ctx.Err()
		}
		if err := st.Send(req); err != nil {
			return received, sendErr(st, err)
		}
	}
}

// handle applies one response and returns the ACK or NACK to send, and how long to wait
// before sending it (non-zero only when NACKing the same version again).
func (c *Client) handle(resp *discoveryv3.DiscoveryResponse) (*discoveryv3.DiscoveryRequest, time.Duration) {
	version := resp.GetVersionInfo()
	applyErr := c.o.Apply(version, resp.GetResources())
	var saveErr error
	if applyErr == nil {
		saveErr = c.save(version, resp.GetResources())
	}

	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       c.o.TypeURL,
		ResourceNames: c.o.Names,
		ResponseNonce: resp.GetNonce(),
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if applyErr == nil {
		req.VersionInfo = version
		if c.st.Source == SourceSaved {
			c.log.Info("the control plane's config replaces the saved copy",
				"version", version, "saved_version", c.st.Version, "saved_at", c.st.SavedAt)
		}
		c.st.Version, c.st.Updated = version, now
		c.st.Source, c.st.SavedAt = SourceControlPlane, time.Time{}
		c.st.NACKVersion, c.st.NACKError, c.st.NACKed = "", "", time.Time{}
		c.nackRepeats = 0
		if saveErr != nil {
			c.st.SaveError = saveErr.Error()
			c.log.Error("could not save the applied xds config; a restart while the control plane is away would start without it",
				"version", version, "error", saveErr)
		} else if c.o.StateDir != "" {
			c.st.SaveError = ""
		}
		c.log.Info("xds config applied", "version", version, "resources", len(resp.GetResources()))
		return req, 0
	}

	msg := applyErr.Error()
	req.VersionInfo = c.st.Version
	req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
	var pace time.Duration
	if c.st.NACKError != "" && c.st.NACKVersion == version {
		pace = c.backoff(c.nackRepeats)
		c.nackRepeats++
	} else {
		c.nackRepeats = 0
	}
	c.st.NACKVersion, c.st.NACKError, c.st.NACKed = version, msg, now
	c.log.Error("xds config rejected; keeping the previous one",
		"version", version, "error", msg, "current_version", c.st.Version)
	return req, pace
}

// savedState is the state file's payload.
type savedState struct {
	TypeURL   string   `json:"type_url"`
	Names     []string `json:"names"`
	NodeID    string   `json:"node_id"`
	Cluster   string   `json:"cluster"`
	Region    string   `json:"region"`
	Version   string   `json:"version"`
	Resources [][]byte `json:"resources"` // each a marshalled Any
}

const stateKind = "llmedge.xdsclient.v1"

// stateFile names the state file after the region and type, so clients of several regions
// or types may share one directory.
func (c *Client) stateFile() string {
	typ := c.o.TypeURL[strings.LastIndex(c.o.TypeURL, "/")+1:]
	return "xds-" + url.PathEscape(c.node.GetLocality().GetRegion()) + "-" + url.PathEscape(typ) + ".json"
}

// save writes an applied response to the state dir unless that version is there already.
func (c *Client) save(version string, resources []*anypb.Any) error {
	if c.o.StateDir == "" {
		return nil
	}
	st := savedState{
		TypeURL: c.o.TypeURL, Names: c.o.Names, Version: version,
		NodeID: c.node.GetId(), Cluster: c.node.GetCluster(), Region: c.node.GetLocality().GetRegion(),
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s", len(version), version)
	for _, a := range resources {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(a)
		if err != nil {
			return err
		}
		st.Resources = append(st.Resources, b)
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if sum == c.savedSum {
		return nil
	}
	if err := statefile.Save(c.o.StateDir, c.stateFile(), stateKind, st, time.Now()); err != nil {
		return err
	}
	c.savedSum = sum
	return nil
}

// LoadSaved applies the copy in Options.StateDir, if there is a usable one, and reports
// whether it did. Run calls it before it first connects; a service calls it earlier to
// have its config before it starts serving. Only the first call does anything. Every
// refusal is logged and leaves the client as it would be without a state dir: waiting
// for the control plane.
func (c *Client) LoadSaved() bool {
	if c.o.StateDir == "" || !c.restoreOnce.CompareAndSwap(false, true) {
		return false
	}
	return c.restore()
}

func (c *Client) restore() bool {
	var st savedState
	savedAt, err := statefile.Load(c.o.StateDir, c.stateFile(), stateKind, &st)
	if errors.Is(err, statefile.ErrNotFound) {
		c.log.Info("no saved xds config yet; waiting for the control plane", "state_dir", c.o.StateDir)
		return false
	}
	if err == nil {
		err = c.checkSaved(&st)
	}
	var resources []*anypb.Any
	for i, b := range st.Resources {
		if err != nil {
			break
		}
		a := &anypb.Any{}
		if uerr := proto.Unmarshal(b, a); uerr != nil {
			err = fmt.Errorf("resource %d: %w", i, uerr)
		}
		resources = append(resources, a)
	}
	if err == nil {
		err = c.o.Apply(st.Version, resources)
	}
	if err != nil {
		c.log.Error("saved xds config refused; waiting for the control plane", "state_dir", c.o.StateDir, "error", err)
		return false
	}
	c.mu.Lock()
	c.st.Version, c.st.Updated = st.Version, time.Now()
	c.st.Source, c.st.SavedAt = SourceSaved, savedAt
	c.mu.Unlock()
	c.log.Warn("serving the saved xds config until the control plane answers",
		"version", st.Version, "saved_at", savedAt, "resources", len(resources), "state_dir", c.o.StateDir)
	return true
}

// checkSaved refuses a copy saved for another region, type or set of names: it would be
// some other client's config.
func (c *Client) checkSaved(st *savedState) error {
	region := c.node.GetLocality().GetRegion()
	switch {
	case st.Region != region:
		return fmt.Errorf("saved for region %q (node %q), this client serves region %q", st.Region, st.NodeID, region)
	case st.TypeURL != c.o.TypeURL:
		return fmt.Errorf("saved for type %q, this client subscribes to %q", st.TypeURL, c.o.TypeURL)
	case !slices.Equal(st.Names, c.o.Names):
		return fmt.Errorf("saved for resources %q, this client subscribes to %q", st.Names, c.o.Names)
	}
	return nil
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.st.Connected = v
	c.mu.Unlock()
}

// backoff returns the delay before retry number n (0-based): BackoffMin doubled n times,
// capped at BackoffMax, then jittered by ±20% and kept within [BackoffMin, BackoffMax].
func (c *Client) backoff(n int) time.Duration {
	d := c.o.BackoffMin
	for i := 0; i < n && d < c.o.BackoffMax; i++ {
		d *= 2
	}
	d = time.Duration(float64(min(d, c.o.BackoffMax)) * (0.8 + 0.4*rand.Float64()))
	return min(max(d, c.o.BackoffMin), c.o.BackoffMax)
}

// sleep waits for d or until ctx ends; it reports whether the full delay elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sendErr turns a Send error into the stream's real status: gRPC's Send returns io.EOF
// when the stream has ended, and the reason is then available from Recv.
func sendErr(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := st.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}
