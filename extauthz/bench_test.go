package extauthz

// Check-path benchmarks: Main.Check called in-process, and the same over a real loopback
// gRPC connection. They measure; they assert nothing about time. The latency distribution
// (p50/p99/p99.9 over 50,000 sequential gRPC checks) and checks/s per core with the server
// at GOMAXPROCS=1 come from `go run ./bench/authz`; results are in docs/bench/authz.md.

import (
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmedge/llmedge/internal/benchconfig"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/wire"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// benchCallers is the size of the benchmark policy.
const benchCallers = 1000

// benchMain starts an extauthz for region hk whose control plane is a closed port, with
// one key for upstream openai and a policy of benchCallers callers (one token each, all
// allowed openai) applied in-process. It returns the callers' tokens.
func benchMain(b *testing.B) (*Main, []string) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	keys := b.TempDir()
	if err := os.MkdirAll(filepath.Join(keys, benchconfig.CheckUpstream), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, benchconfig.CheckUpstream, "k1"), []byte(benchconfig.CheckKey), 0o600); err != nil {
		b.Fatal(err)
	}
	m, err := New(Options{Region: benchconfig.CheckRegion, XDSServer: dead, GRPCAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0", KeysDir: keys})
	if err != nil {
		b.Fatal(err)
	}
	go m.Run(b.Context())
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		b.Fatal("extauthz did not start")
	}
	ext, toks := benchPolicy(b, benchCallers)
	if err := m.apply("bench", []*anypb.Any{ext}); err != nil {
		b.Fatalf("apply: %v", err)
	}
	return m, toks
}

// benchPolicy is the policy resource of n callers (one token each, all allowed openai) and
// their tokens.
func benchPolicy(b *testing.B, n int) (*anypb.Any, []string) {
	b.Helper()
	policy := &authzv1.Policy{
		Region:    benchconfig.CheckRegion,
		Upstreams: []*authzv1.Upstream{{Name: benchconfig.CheckUpstream, KeyHeader: "authorization", KeyFormat: "Bearer {key}", Api: "openai"}},
	}
	toks := make([]string, n)
	for i := range toks {
		var err error
		if toks[i], err = token.New(); err != nil {
			b.Fatal(err)
		}
		name, tenant := benchconfig.Caller(i)
		policy.Callers = append(policy.Callers, &authzv1.Caller{
			Name: name, Tenant: tenant,
			TokenSha256: []string{token.Digest(toks[i])}, AllowedUpstreams: []string{benchconfig.CheckUpstream},
		})
	}
	p, err := anypb.New(policy)
	if err != nil {
		b.Fatal(err)
	}
	ext, err := anypb.New(&corev3.TypedExtensionConfig{Name: wire.PolicyResourceName, TypedConfig: p})
	if err != nil {
		b.Fatal(err)
	}
	return ext, toks
}

func benchAllowed(b *testing.B, resp *authv3.CheckResponse) {
	if err := benchconfig.Allowed(resp); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCheckInProcess is Main.Check on allowed requests, cycling through the
// policy's 1,000 callers: request fields to decide.Request, the decision (token hash,
// caller lookup, key injection), the checks metric, and building the response.
func BenchmarkCheckInProcess(b *testing.B) {
	m, toks := benchMain(b)
	reqs := benchconfig.CheckRequests(toks)
	ctx := b.Context()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		resp, err := m.Check(ctx, reqs[i%len(reqs)])
		if err != nil {
			b.Fatal(err)
		}
		benchAllowed(b, resp)
		i++
	}
}

// BenchmarkCheckGRPC is one Check at a time from a real authv3.AuthorizationClient over
// loopback gRPC to Main's listener (client and server in this process, so the
// allocations are both sides'). The client's goroutines carry the pprof label
// side=client, so that with -cpuprofile
// `go tool pprof -tagignore side=client` shows the server alone.
func BenchmarkCheckGRPC(b *testing.B) {
	m, toks := benchMain(b)
	reqs := benchconfig.CheckRequests(toks)
	// After benchMain: the server's goroutines must not inherit the label.
	defer pprof.SetGoroutineLabels(b.Context())
	pprof.SetGoroutineLabels(pprof.WithLabels(b.Context(), pprof.Labels("side", "client")))
	cc, err := grpc.NewClient(m.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	client := authv3.NewAuthorizationClient(cc)
	ctx := b.Context()
	// Connect and warm up outside the timed loop.
	for _, r := range reqs[:100] {
		resp, err := client.Check(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		benchAllowed(b, resp)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		resp, err := client.Check(ctx, reqs[i%len(reqs)])
		if err != nil {
			b.Fatal(err)
		}
		benchAllowed(b, resp)
		i++
	}
}
