package controlplane

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmedge/llmedge/internal/transport"
	"github.com/llmedge/llmedge/internal/transport/pkitest"
	"github.com/llmedge/llmedge/internal/wire"
	"github.com/llmedge/llmedge/internal/xdsclient"
)

// TestXDSPlainTCPRefused: the xDS stream carries each region's caller policy, so the
// control plane refuses plain TCP on an address other hosts can reach.
func TestXDSPlainTCPRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(routesYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"0.0.0.0:0", "unix:" + filepath.Join(run, "x.sock") + ",:0"} {
		m, err := New(Options{ConfigPath: path, XDSAddress: addr, HTTPAddress: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Run(t.Context()); !errors.Is(err, transport.ErrPlainTCP) {
			t.Errorf("--xds-listen %s: Run = %v; want a refusal", addr, err)
		}
	}
}

// TestXDSOnUnixSocketAndMutualTLS serves co-located clients on a unix socket and remote
// ones over mutual TLS at once; a client of each kind gets its region's policy.
func TestXDSOnUnixSocketAndMutualTLS(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(path, []byte(routesYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	ca := pkitest.NewCA(t, dir, "internal")
	srv := ca.Server(t, "cp", "127.0.0.1")
	sock := "unix:" + filepath.Join(run, "xds.sock")
	m, err := New(Options{
		ConfigPath: path, XDSAddress: sock + ",0.0.0.0:0", HTTPAddress: "127.0.0.1:0",
		XDSTLS: transport.Files{Cert: srv.Cert, Key: srv.Key, CA: ca.CertFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-m.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(waitFor):
		t.Fatal("control plane not ready in time")
	}
	addrs := m.XDSAddrs()
	if len(addrs) != 2 || addrs[0] != sock {
		t.Fatalf("XDSAddrs = %v", addrs)
	}
	_, port, _ := cutLast(addrs[1])
	cli := ca.Region(t, "extauthz", "hk", transport.ComponentExtAuthz)
	for name, o := range map[string]xdsclient.Options{
		"unix socket": {Server: sock},
		"mutual TLS":  {Server: "127.0.0.1:" + port, TLS: transport.Files{Cert: cli.Cert, Key: cli.Key, CA: ca.CertFile}},
	} {
		got := make(chan struct{})
		o.Node = &corev3.Node{Id: "extauthz-hk", Locality: &corev3.Locality{Region: "hk"}}
		o.TypeURL = resourcev3.ExtensionConfigType
		o.Logger = slog.New(slog.DiscardHandler)
		o.Names = []string{wire.PolicyResourceName}
		o.Apply = func(string, []*anypb.Any) error {
			select {
			case <-got:
			default:
				close(got)
			}
			return nil
		}
		cctx, ccancel := context.WithCancel(t.Context())
		go xdsclient.Run(cctx, o)
		select {
		case <-got:
		case <-time.After(waitFor):
			t.Errorf("%s: no policy", name)
		}
		ccancel()
	}
}

func cutLast(hostport string) (string, string, bool) {
	for i := len(hostport) - 1; i >= 0; i-- {
		if hostport[i] == ':' {
			return hostport[:i], hostport[i+1:], true
		}
	}
	return hostport, "", false
}
