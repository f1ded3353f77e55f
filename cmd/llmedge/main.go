// Command llmedge is the operator's tool and the control plane binary:
//
//	llmedge controlplane --config routes.yaml   serve xDS, status and metrics
//	llmedge extauthz --region hk --keys-dir DIR  check callers, inject provider keys
//	llmedge validate --config routes.yaml       check a routes YAML (exit 1 on errors)
//	llmedge bootstrap --region hk ...           print an Envoy bootstrap for a region
//	llmedge token new --caller alice            mint a caller token
//	llmedge usage --since 24h --by caller,model  usage totals from the control plane
//	llmedge certs issue --region hk ...          issue a region certificate
//	llmedge drain --admin http://127.0.0.1:9901 drain an Envoy before stopping it
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/llmedge/llmedge/controlplane"
	"github.com/llmedge/llmedge/controlplane/bootstrap"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/watch"
	"github.com/llmedge/llmedge/extauthz"
	"github.com/llmedge/llmedge/internal/cpunice"
	"github.com/llmedge/llmedge/internal/logging"
	"github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/token"
	"github.com/llmedge/llmedge/internal/transport"
)

const helpText = `llmedge — a self-hosted edge for LLM APIs

Usage:
  llmedge controlplane [flags]   serve xDS to the regions' Envoys, plus /status, /metrics
  llmedge extauthz [flags]       serve a region's ext_authz: caller tokens in, provider keys out
  llmedge validate [flags]       check a routes YAML; prints every error with its field path
  llmedge bootstrap [flags]      print the Envoy bootstrap YAML for one region
  llmedge token new --caller NAME   mint a caller token; prints it once plus the YAML line
  llmedge token hash             read a token on stdin, print its digest for the YAML
  llmedge certs init|issue       a small CA for the internal hops: region certificates
  llmedge status [--url URL]     summarise the control plane's /status (regions, nodes, errors)
  llmedge usage [--since 24h] [--by caller,model] [--json|--csv]
                                 usage totals (requests, tokens, cost) from the control plane's /usage
  llmedge usage export --month 2026-11 --tenant NAME   a tenant's records for the month, as CSV
  llmedge probe URL              exit 0 if URL answers 2xx within 2 s (container health checks)
  llmedge drain --admin URL      drain an Envoy (fail /ready, close listeners, wait for requests); stop it next

Run "llmedge <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors already explained on stderr.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, helpText)
		return 2
	}
	var err error
	switch args[0] {
	case "controlplane":
		err = runControlPlane(ctx, args[1:], stderr)
	case "extauthz":
		err = runExtAuthz(ctx, args[1:], stderr)
	case "validate":
		err = runValidate(args[1:], stdout, stderr)
	case "bootstrap":
		err = runBootstrap(args[1:], stdout, stderr)
	case "token":
		err = runToken(args[1:], os.Stdin, stdout, stderr)
	case "certs":
		err = runCerts(args[1:], stdout, stderr, time.Now())
	case "status":
		err = runStatus(ctx, args[1:], stdout, stderr)
	case "usage":
		err = runUsage(ctx, args[1:], stdout, stderr)
	case "probe":
		err = runProbe(ctx, args[1:], stderr)
	case "drain":
		err = runDrain(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, helpText)
		return 0
	default:
		fmt.Fprintf(stderr, "llmedge: unknown command %q\n\n%s", args[0], helpText)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "llmedge %s: %v\n", args[0], err)
		return 1
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("llmedge "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return errUsage
	}
	return nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	log, err := logging.New(w, format, lv)
	if err != nil {
		return nil, fmt.Errorf("--log-format %q: %w", format, err)
	}
	return log, nil
}

// serverTLSFlags are the mutual-TLS files of a server that carries or guards secrets.
func serverTLSFlags(fs *flag.FlagSet) *transport.Files {
	f := &transport.Files{}
	fs.StringVar(&f.Cert, "tls-cert", os.Getenv("LLMEDGE_TLS_CERT"), "server certificate (PEM) for TCP listeners: turns on mutual TLS, re-read on change (env LLMEDGE_TLS_CERT)")
	fs.StringVar(&f.Key, "tls-key", os.Getenv("LLMEDGE_TLS_KEY"), "private key of --tls-cert (env LLMEDGE_TLS_KEY)")
	fs.StringVar(&f.CA, "tls-client-ca", os.Getenv("LLMEDGE_TLS_CLIENT_CA"), "CA bundle client certificates must chain to (env LLMEDGE_TLS_CLIENT_CA)")
	return f
}

// xdsClientTLSFlags are the files a client of the control plane presents over mutual TLS.
func xdsClientTLSFlags(fs *flag.FlagSet) *transport.Files {
	f := &transport.Files{}
	fs.StringVar(&f.Cert, "xds-tls-cert", os.Getenv("LLMEDGE_XDS_TLS_CERT"), "client certificate (PEM) for a TCP control plane with mutual TLS (env LLMEDGE_XDS_TLS_CERT)")
	fs.StringVar(&f.Key, "xds-tls-key", os.Getenv("LLMEDGE_XDS_TLS_KEY"), "private key of --xds-tls-cert (env LLMEDGE_XDS_TLS_KEY)")
	fs.StringVar(&f.CA, "xds-tls-ca", os.Getenv("LLMEDGE_XDS_TLS_CA"), "CA bundle the control plane's certificate must chain to (env LLMEDGE_XDS_TLS_CA)")
	return f
}

func runControlPlane(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("controlplane", stderr)
	cfgPath := fs.String("config", envOr("LLMEDGE_CONFIG", DefaultConfig), "routes YAML file or directory (env LLMEDGE_CONFIG)")
	xdsAddr := fs.String("xds-listen", envOr("LLMEDGE_XDS_LISTEN", "127.0.0.1:18000"), "gRPC ADS listen addresses, comma-separated: unix:/dir/xds.sock (dir mode 0700) and/or host:port; plain TCP only on loopback (env LLMEDGE_XDS_LISTEN)")
	xdsTLS := serverTLSFlags(fs)
	allowNoRegion := fs.Bool("xds-allow-certs-without-region", os.Getenv("LLMEDGE_XDS_ALLOW_CERTS_WITHOUT_REGION") == "true", "rollout aid: admit mutual-TLS xDS clients whose certificate names no region, trusting the region their node claims (default: refuse them; env LLMEDGE_XDS_ALLOW_CERTS_WITHOUT_REGION=true)")
	httpAddr := fs.String("http-listen", envOr("LLMEDGE_HTTP_LISTEN", "127.0.0.1:18080"), "status/health/metrics listen address (env LLMEDGE_HTTP_LISTEN)")
	logFormat := fs.String("log-format", envOr("LLMEDGE_LOG_FORMAT", "json"), "json or text")
	logLevel := fs.String("log-level", envOr("LLMEDGE_LOG_LEVEL", "info"), "debug, info, warn or error")
	holdoff := fs.Duration("watch-holdoff", 0, "quiet time after a file event before reloading (default 30ms)")
	poll := fs.Duration("watch-poll", 0, "fallback poll interval (default 10s)")
	settle, err := envDuration("LLMEDGE_WATCH_SETTLE")
	if err != nil {
		return err
	}
	stateDir := fs.String("state-dir", os.Getenv("LLMEDGE_STATE_DIR"), "the control plane's state (dir 0700, files 0600): the last applied routes YAML, served at start-up when the routes YAML is missing or invalid, and the usage ledger (SQLite file, spool, access log files); empty: keep nothing, no ledger (env LLMEDGE_STATE_DIR)")
	fs.DurationVar(&settle, "watch-settle", settle, "how long the routes must stay unchanged before a destructive edit (one that removes more than half of the callers, routes or upstreams, or leaves a region with none) is applied (env LLMEDGE_WATCH_SETTLE, default 5s)")
	nice, err := envInt("LLMEDGE_CPU_NICE")
	if err != nil {
		return err
	}
	fs.IntVar(&nice, "cpu-nice", nice, "lower the control plane's CPU priority to this niceness (0..19; 0 leaves it unchanged) so that on a box it shares with Envoy, pushes and usage ingest yield to requests in flight; on Linux 6.12+ every thread also asks for the shortest time slice (0.1 ms); make run and compose use 10 (env LLMEDGE_CPU_NICE)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cpunice.Validate("--cpu-nice", nice); err != nil {
		return err
	}
	if err := cpunice.Lower(nice); err != nil {
		return fmt.Errorf("--cpu-nice: %w", err)
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	m, err := controlplane.New(controlplane.Options{
		ConfigPath:                 *cfgPath,
		XDSAddress:                 *xdsAddr,
		XDSTLS:                     *xdsTLS,
		XDSAllowCertsWithoutRegion: *allowNoRegion,
		HTTPAddress:                *httpAddr,
		Watch:                      watch.Options{Holdoff: *holdoff, Poll: *poll},
		Settle:                     settle,
		StateDir:                   *stateDir,
		Logger:                     log,
	})
	if err != nil {
		return err
	}
	return m.Run(ctx)
}

func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("validate", stderr)
	cfgPath := fs.String("config", envOr("LLMEDGE_CONFIG", DefaultConfig), "routes YAML file or directory")
	against := fs.String("against", "", "the routes YAML now serving (file or directory): warn when the edit is destructive, as the control plane would hold it back for the settle period")
	if err := parse(fs, args); err != nil {
		return err
	}
	_, cfg, err := load(*cfgPath)
	if err != nil {
		errs := config.AsErrors(err)
		for _, e := range errs {
			fmt.Fprintln(stderr, e.Error())
		}
		return fmt.Errorf("%s: %d problem(s); nothing would be applied", *cfgPath, len(errs))
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	for _, w := range config.Hazards(cfg) {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	if *against != "" {
		_, old, err := load(*against)
		if err != nil {
			return fmt.Errorf("--against %s: %d problem(s) in the old routes; cannot compare:\n%v", *against, len(config.AsErrors(err)), err)
		}
		if r := config.Compare(old, cfg); r.Destructive() {
			for _, reason := range r.Reasons() {
				fmt.Fprintf(stderr, "warning: destructive edit against %s: %s\n", *against, reason)
			}
			fmt.Fprintln(stderr, "warning: the control plane applies a destructive edit only once the files have stayed unchanged for its settle period (--watch-settle)")
		}
	}
	fmt.Fprintf(stdout, "%s: ok (%d regions, %d upstreams, %d routes, %d callers)\n", *cfgPath, len(cfg.Regions), len(cfg.Upstreams), len(cfg.Routes), len(cfg.Callers))
	return nil
}

// DefaultConfig is where a packaged control plane finds its routes (a file or a directory),
// as compose.yaml mounts them.
const DefaultConfig = "/etc/llmedge/routes"

// load reads, validates and translates the routes at path as the control plane would:
// translation checks what the YAML schema cannot (Envoy's own field rules).
func load(path string) (*config.Source, *model.Config, error) {
	ctx := context.Background()
	snap, err := config.NewProvider(path, config.Limits{}, watch.Options{}, nil).Load(ctx)
	if err != nil {
		return nil, nil, err
	}
	src, cfg, err := config.Build(ctx, snap, config.Limits{})
	if err == nil {
		_, err = translate.All(cfg)
	}
	if err != nil {
		return src, nil, err
	}
	return src, cfg, nil
}

func envDuration(key string) (time.Duration, error) {
	v := os.Getenv(key)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q: want a duration such as 5s", key, v)
	}
	return d, nil
}

func envInt(key string) (int, error) {
	v := os.Getenv(key)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a whole number", key, v)
	}
	return n, nil
}

func runBootstrap(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bootstrap", stderr)
	region := fs.String("region", "", "region name, as in the routes YAML (required)")
	nodeID := fs.String("node-id", "", "Envoy node id (default envoy-<region>-1)")
	adminAddr := fs.String("admin-address", bootstrap.DefaultAdminAddress, "admin listen IP")
	adminPort := fs.Int("admin-port", 9901, "admin port (0 = ephemeral)")
	xds := fs.String("xds", "127.0.0.1:18000", "control plane xDS address: host:port or unix:/abs/path.sock")
	xdsTLS := xdsClientTLSFlags(fs)
	sdsDir := fs.String("xds-tls-sds-dir", "", "with --xds-tls-*: write two SDS documents naming those files to this directory and refer to them, so Envoy picks up replaced files without a restart")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *region == "" {
		fmt.Fprintln(stderr, "--region is required")
		return errUsage
	}
	if *nodeID == "" {
		*nodeID = "envoy-" + *region + "-1"
	}
	xdsAddr, err := transport.Parse(*xds)
	if err != nil {
		return fmt.Errorf("--xds %q: %w", *xds, err)
	}
	ap := *adminPort
	if ap == 0 {
		ap = bootstrap.EphemeralAdminPort
	}
	o := bootstrap.Options{
		NodeID: *nodeID, Region: *region, AdminAddress: *adminAddr, AdminPort: ap,
		XDSHost: xdsAddr.Host, XDSPort: int(xdsAddr.Port), XDSPipe: xdsAddr.Path, XDSTLS: *xdsTLS, XDSTLSSDSDir: *sdsDir,
	}
	b, err := bootstrap.Render(o)
	if err != nil {
		return err
	}
	docs, err := bootstrap.SDSDocuments(o)
	if err != nil {
		return err
	}
	for name, doc := range docs {
		// Written next to, then renamed over, the old one: Envoy reacts to the rename.
		p := filepath.Join(*sdsDir, name)
		if err := os.WriteFile(p+".tmp", doc, 0o644); err != nil {
			return err
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return err
		}
	}
	_, err = stdout.Write(b)
	return err
}

func runToken(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "new" && args[0] != "hash") {
		fmt.Fprintln(stderr, "usage: llmedge token new --caller NAME | llmedge token hash < token-file")
		return errUsage
	}
	fs := newFlags("token "+args[0], stderr)
	caller := fs.String("caller", "", "caller name, as under callers: in the routes YAML")
	asJSON := fs.Bool("json", false, "token new: print {caller, token, digest} as JSON, for scripts")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if args[0] == "hash" {
		b, err := io.ReadAll(io.LimitReader(stdin, 4096))
		if err != nil {
			return err
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return errors.New("no token on standard input")
		}
		fmt.Fprintln(stdout, token.DigestRef(tok))
		return nil
	}
	if *caller == "" {
		fmt.Fprintln(stderr, "--caller is required")
		return errUsage
	}
	tok, err := token.New()
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]string{
			"caller": *caller, "token": tok, "digest": token.DigestRef(tok),
		})
	}
	fmt.Fprintf(stdout, `Token for caller %[1]q (shown once; it is stored nowhere, keep it secret):

  %[2]s

Add this digest to the routes YAML:

callers:
  %[1]s:
    tokens:
      - %[3]s
    upstreams: [openai]   # the upstreams this caller may use
`, *caller, tok, token.DigestRef(tok))
	return nil
}

func runExtAuthz(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("extauthz", stderr)
	region := fs.String("region", os.Getenv("LLMEDGE_REGION"), "region whose caller policy to enforce (env LLMEDGE_REGION)")
	nodeID := fs.String("node-id", os.Getenv("LLMEDGE_NODE_ID"), "xDS node id (default extauthz-<region>)")
	xdsAddr := fs.String("xds", envOr("LLMEDGE_XDS", "127.0.0.1:18000"), "control plane xDS address: host:port or unix:/abs/path.sock (env LLMEDGE_XDS)")
	xdsTLS := xdsClientTLSFlags(fs)
	grpcAddr := fs.String("grpc-listen", envOr("LLMEDGE_GRPC_LISTEN", "127.0.0.1:10100"), "ext_authz gRPC listen address, as regions.<name>.extauthz in the routes YAML: unix:/dir/extauthz.sock (dir mode 0700) or host:port; plain TCP only on loopback (env LLMEDGE_GRPC_LISTEN)")
	grpcTLS := serverTLSFlags(fs)
	httpAddr := fs.String("http-listen", envOr("LLMEDGE_HTTP_LISTEN", "127.0.0.1:10200"), "health/readiness/metrics listen address")
	keysDir := fs.String("keys-dir", os.Getenv("LLMEDGE_KEYS_DIR"), "upstream keys, one file per key: <dir>/<upstream>/<name> (env LLMEDGE_KEYS_DIR)")
	redis := fs.String("redis", os.Getenv("LLMEDGE_REDIS"), "the region's Redis, the one its ratelimit uses (unix:/path or host:port): request-time quotas are checked against it in process (env LLMEDGE_REDIS)")
	keysPoll := fs.Duration("keys-poll", 0, "fallback poll interval for the keys directory (default 5s)")
	stateDir := fs.String("state-dir", os.Getenv("LLMEDGE_STATE_DIR"), "keep the last caller policy from the control plane here (token digests, never keys; dir 0700, file 0600) and start on it when the control plane is away; empty: keep nothing (env LLMEDGE_STATE_DIR)")
	logFormat := fs.String("log-format", envOr("LLMEDGE_LOG_FORMAT", "json"), "json or text")
	logLevel := fs.String("log-level", envOr("LLMEDGE_LOG_LEVEL", "info"), "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if _, err := transport.Parse(*xdsAddr); err != nil {
		return fmt.Errorf("--xds %q: %w", *xdsAddr, err)
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	// envoyproxy/ratelimit's limiter, which extauthz runs with --redis, logs through
	// logrus: JSON like ours, and only what needs attention.
	logrus.SetOutput(stderr)
	logrus.SetFormatter(&logrus.JSONFormatter{})
	logrus.SetLevel(logrus.WarnLevel)
	m, err := extauthz.New(extauthz.Options{
		Region: *region, NodeID: *nodeID, XDSServer: *xdsAddr, XDSTLS: *xdsTLS, GRPCAddress: *grpcAddr, TLS: *grpcTLS,
		HTTPAddress: *httpAddr, KeysDir: *keysDir, KeysPoll: *keysPoll, StateDir: *stateDir, Logger: log, RedisAddress: *redis,
	})
	if err != nil {
		return err
	}
	return m.Run(ctx)
}

func runProbe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("probe", stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for an answer")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: llmedge probe [--timeout 2s] URL")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fs.Arg(0), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %d", fs.Arg(0), resp.StatusCode)
	}
	return nil
}

// runDrain is the operator's half of a graceful stop (stack.DrainEnvoy): once it returns,
// stop Envoy (docker compose stop envoy, SIGTERM) and nothing in flight is cut.
func runDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("drain", stderr)
	admin := fs.String("admin", "http://127.0.0.1:9901", "the Envoy's admin API")
	timeout := fs.Duration("timeout", stack.DefaultDrainTime+stack.DefaultDrainTimeout,
		"give up after this long (Envoy's --drain-time-s, then the requests in flight)")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	if err := stack.DrainEnvoy(ctx, *admin); err != nil {
		return fmt.Errorf("%s: %w", *admin, err)
	}
	fmt.Fprintf(stdout, "%s drained in %v: listeners closed, no request in flight; stop it now\n", *admin, time.Since(start).Round(time.Millisecond))
	return nil
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	url := fs.String("url", envOr("LLMEDGE_STATUS_URL", "http://127.0.0.1:18080"), "control plane HTTP address (env LLMEDGE_STATUS_URL)")
	asJSON := fs.Bool("json", false, "print the raw /status JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(*url, "/")+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reach the control plane: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err = stdout.Write(body)
		return err
	}
	var st controlplane.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("decode /status: %w", err)
	}
	return printStatus(stdout, st)
}

// printStatus is the operator's one-screen view; exit status 1 when the last edit was
// rejected or a node is out of sync, so scripts can alert on it.
func printStatus(w io.Writer, st controlplane.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hash := st.Config.Hash
	if len(hash) > 16 {
		hash = hash[:16]
	}
	fmt.Fprintf(tw, "config\t%s\tserving %s\tvalid=%v\n", st.Config.Path, hash, st.Config.Valid)
	for _, e := range st.Config.Errors {
		fmt.Fprintf(tw, "  error\t%s\n", e.Error())
	}
	for _, wn := range st.Config.Warnings {
		fmt.Fprintf(tw, "  warning\t%s\n", wn)
	}
	if p := st.Config.Pending; p != nil {
		h := p.Hash
		if len(h) > 16 {
			h = h[:16]
		}
		fmt.Fprintf(tw, "  pending\t%s applies at %s if the files stay unchanged: %s\n", h, p.AppliesAt.Format(time.RFC3339), strings.Join(p.Reasons, "; "))
	}
	if r := st.Config.Reloading; r != nil {
		fmt.Fprintf(tw, "  reloading\tsince %s\n", r.Since.Format(time.RFC3339Nano))
	}
	for _, u := range st.Upstreams {
		fmt.Fprintf(tw, "upstream %s\t%s\tconnect %s\n", u.Name, u.URL, u.Connect)
	}
	problems := !st.Config.Valid
	for _, r := range st.Regions {
		fmt.Fprintf(tw, "region %s\t%s\tupstreams %s\tin_sync=%v\n", r.Name, r.Listen, strings.Join(r.Upstreams, ","), r.InSync)
		for _, n := range r.Nodes {
			var acked []string
			for _, typ := range n.Subscribed {
				acked = append(acked, typ+"="+n.Acked[typ])
			}
			fmt.Fprintf(tw, "  node %s\t%s\tin_sync=%v\n", n.ID, strings.Join(acked, " "), n.InSync)
			if n.LastNack != nil {
				fmt.Fprintf(tw, "    last NACK\t%s %s: %s\n", n.LastNack.Type, n.LastNack.Version, n.LastNack.Error)
			}
			problems = problems || !n.InSync
		}
		for _, l := range r.Limits {
			fmt.Fprintf(tw, "  limit %s\t%d/%s\tshadow=%v\n", l.Name, l.Requests, l.Per, l.Shadow)
		}
	}
	for _, n := range st.Unassigned {
		fmt.Fprintf(tw, "unassigned node %s\tregion %q is not in the routes YAML\n", n.ID, n.Region)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if problems {
		return errors.New("the last edit was rejected or a node is out of sync (details above)")
	}
	return nil
}
