// Command llmedge-run is `make run`: a local two-region edge (hk, sg) as plain processes —
// Redis, the fake LLM upstream, the control plane, and per region an envoyproxy/ratelimit
// and an Envoy running that region's extauthz inside it (the dynamic module
// bin/libllmedge.so, as examples/routes.yaml's extauthz_in_envoy says) — with a demo caller
// token (600 requests a minute). LLMEDGE_AUTHZ=process runs each region's extauthz as a
// process of its own instead; LLMEDGE_AUTHZ=envoy forces the module.
// internal/stack runs the components; this command adds what is particular to the demo:
// the .run/ directory, the token, the routes copy, the keys and the banner.
//
// The internal hops (xDS, extauthz, ratelimit, Redis) are unix sockets in <run dir>/sock
// (mode 0700; stack.MakeSockets), so no other local user can ask extauthz for a provider
// key or read the caller policy; only the edge, admin and health ports are on loopback TCP.
//
// Environment: LLMEDGE_*_PORT move ports (stack.LocalPorts), LLMEDGE_RUN_DIR (default
// .run), LLMEDGE_BIN_DIR (default bin), LLMEDGE_ROUTES (default examples/routes.yaml),
// LLMEDGE_AUTHZ (envoy or process; default: what the routes YAML says).
// OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY switch that upstream to the real
// provider: the key goes to the keys directory only, the provider's URL into the routes
// copy. No child process sees any of these variables. A component that exits is started
// again, as compose restarts its services (stack.Edge.Supervise); Ctrl-C stops everything.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/llmedge/llmedge/internal/stack"
)

func main() {
	if code, done := arguments(os.Args[1:], os.Stdout, os.Stderr); done {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Getenv, os.Stdout, os.Stderr))
}

const usageText = `usage: llmedge-run   (what make run starts; it takes no arguments)

Starts a local two-region edge (hk, sg) as plain processes, with the fake LLM upstream and
a demo caller token, and stops it on Ctrl-C. It is configured by its environment:

  LLMEDGE_RUN_DIR     run directory (default .run): routes copy, sockets, logs, state
  LLMEDGE_BIN_DIR     llmedge binaries (default bin)
  LLMEDGE_ROUTES      routes YAML to copy (default examples/routes.yaml)
  LLMEDGE_AUTHZ       envoy (extauthz inside Envoy) or process; default: the routes YAML's
  LLMEDGE_*_PORT      move a port, e.g. LLMEDGE_HK_PORT=20000 (README: "make run")
  OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY
                      send that upstream to the real provider with this key
`

// arguments handles a command line: none starts the edge (done false); -h, --help or help
// prints the usage; anything else is refused with it, rather than starting the whole edge
// with an argument silently ignored.
func arguments(args []string, stdout, stderr io.Writer) (code int, done bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return 0, true
	}
	fmt.Fprintf(stderr, "llmedge-run: unexpected argument %q\n%s", args[0], usageText)
	return 2, true
}

// demo is what the command prepares before it starts the edge.
type demo struct {
	root, runDir, binDir, routesSrc, routes, keysDir string
	ports                                            map[stack.PortKey]int
	sockets                                          stack.Sockets
	paths                                            stack.Paths
	token, digest                                    string
	real                                             []string // upstreams sent to the real provider
	// authzMode is LLMEDGE_AUTHZ (envoy, process, or "" for what the source routes YAML
	// says); inEnvoy is the outcome: each region's extauthz runs inside its Envoy.
	authzMode string
	inEnvoy   bool
}

func run(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) int {
	d, err := prepare(ctx, getenv, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "llmedge-run: %v\n", err)
		return 1
	}
	edge := &stack.Edge{
		Runner:           stack.Runner{Paths: d.paths, Dir: d.runDir, LogDir: filepath.Join(d.runDir, "logs")},
		Regions:          stack.LocalRegions(),
		Ports:            d.ports,
		Sockets:          d.sockets,
		Routes:           d.routes,
		KeysDir:          d.keysDir,
		EnvoyConcurrency: stack.LocalEnvoyConcurrency,
		AuthzInEnvoy:     d.inEnvoy,
	}
	if err := edge.Start(ctx); err != nil {
		if ctx.Err() != nil { // Ctrl-C while starting
			fmt.Fprintln(stdout, "\nstopped")
			return 0
		}
		fmt.Fprintf(stderr, "llmedge-run: %v\n", err)
		return 1
	}
	if err := writeFacts(d); err != nil {
		edge.Stop()
		fmt.Fprintf(stderr, "llmedge-run: %v\n", err)
		return 1
	}
	banner(stdout, d)

	// A component that exits is started again, as compose restarts its services; the
	// Envoys serve on meanwhile. Only Ctrl-C stops the edge.
	edge.Supervise(ctx, func(format string, args ...any) {
		fmt.Fprintf(stderr, "llmedge-run: "+format+"\n", args...)
	})
	fmt.Fprintln(stdout, "\nstopping...")
	edge.Stop()
	fmt.Fprintln(stdout, "stopped")
	return 0
}

// prepare resolves the settings, checks the ports, and writes the token, the routes copy
// and the keys into the run directory.
func prepare(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) (*demo, error) {
	root, err := stack.RepoRoot()
	if err != nil {
		return nil, err
	}
	d := &demo{root: root}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(root, p)
	}
	d.runDir = abs(or(getenv("LLMEDGE_RUN_DIR"), ".run"))
	d.binDir = abs(or(getenv("LLMEDGE_BIN_DIR"), "bin"))
	d.routesSrc = abs(or(getenv("LLMEDGE_ROUTES"), filepath.Join("examples", "routes.yaml")))
	d.routes = filepath.Join(d.runDir, "routes.yaml")
	d.keysDir = filepath.Join(d.runDir, "keys")
	if d.ports, err = stack.ResolveLocalPorts(getenv); err != nil {
		return nil, err
	}
	if err := errors.Join(d.paths.FindTools(), d.paths.BinariesIn(d.binDir)); err != nil {
		return nil, err
	}
	if busy := stack.BusyPorts(d.ports); len(busy) > 0 {
		return nil, fmt.Errorf("port %s is in use (another 'make run'? set LLMEDGE_*_PORT to move it)", strings.Join(busy, ", "))
	}
	if err := os.MkdirAll(filepath.Join(d.runDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	if d.sockets, err = stack.MakeSockets(d.runDir, stack.LocalRegions()); err != nil {
		return nil, err
	}
	if err := d.demoToken(ctx); err != nil {
		return nil, err
	}
	for _, p := range providers {
		if getenv(p.keyVar) != "" {
			d.real = append(d.real, p.upstream)
		}
	}
	d.authzMode = getenv("LLMEDGE_AUTHZ")
	if err := d.writeRoutes(getenv("LLMEDGE_ROUTES") != ""); err != nil {
		return nil, err
	}
	if err := d.writeKeys(getenv); err != nil {
		return nil, err
	}
	// The routes copy is final now (provider URLs included): check it as the operator would.
	validate := exec.CommandContext(ctx, d.paths.Llmedge, "validate", "--config", d.routes)
	validate.Env = stack.BaseEnv()
	validate.Stdout, validate.Stderr = stdout, stderr
	if err := validate.Run(); err != nil {
		return nil, fmt.Errorf("%s does not validate: %w", d.routes, err)
	}
	return d, nil
}

// demoToken mints the demo caller's token once and keeps it (mode 0600) in the run
// directory, so a second `make run` keeps working with the token printed the first time.
func (d *demo) demoToken(ctx context.Context) error {
	path := filepath.Join(d.runDir, "demo-token.json")
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		mint := exec.CommandContext(ctx, d.paths.Llmedge, "token", "new", "--caller", "demo", "--json")
		mint.Env = stack.BaseEnv()
		if b, err = mint.Output(); err != nil {
			return fmt.Errorf("mint the demo token: %w", err)
		}
		if err := writePrivate(path, b); err != nil {
			return err
		}
	}
	var tok struct{ Token, Digest string }
	if err := json.Unmarshal(b, &tok); err != nil || tok.Token == "" || tok.Digest == "" {
		return fmt.Errorf("%s: not a token file (remove it to mint a new token)", path)
	}
	d.token, d.digest = tok.Token, tok.Digest
	return nil
}

// writeRoutes (re)writes the routes copy when it is missing, LLMEDGE_ROUTES names a
// source, the source is newer, or the copy lacks the demo token; otherwise the operator's
// live edits stay. Either way provider upstreams then point where the keys say, the
// regions' extauthz and ratelimit at this stack's sockets, and extauthz_in_envoy of every
// region says what LLMEDGE_AUTHZ asks, or else what the source says: a run with
// LLMEDGE_AUTHZ=process does not leave the next plain `make run` in process mode.
func (d *demo) writeRoutes(explicitSource bool) error {
	src, err := os.Stat(d.routesSrc)
	if err != nil {
		return fmt.Errorf("routes YAML: %w", err)
	}
	cur, err := os.ReadFile(d.routes)
	fresh := err != nil || explicitSource || !strings.Contains(string(cur), d.digest)
	if !fresh {
		if dst, err := os.Stat(d.routes); err == nil && src.ModTime().After(dst.ModTime()) {
			fresh = true
		}
	}
	if fresh {
		b, err := os.ReadFile(d.routesSrc)
		if err != nil {
			return err
		}
		if cur, err = routesCopy(b, d.ports, d.digest); err != nil {
			return fmt.Errorf("%s: %w", d.routesSrc, err)
		}
	}
	real := map[string]bool{}
	for _, u := range d.real {
		real[u] = true
	}
	out, changed, err := pointUpstreams(cur, real, "http://"+stack.Loopback(d.ports[stack.PortKey{Component: "fakellm", Role: stack.RoleHTTP}]))
	if err != nil {
		return fmt.Errorf("%s: %w", d.routes, err)
	}
	out, moved, err := pointSockets(out, d.sockets)
	if err != nil {
		return fmt.Errorf("%s: %w", d.routes, err)
	}
	mode := d.authzMode
	if mode == "" {
		b, err := os.ReadFile(d.routesSrc)
		if err != nil {
			return err
		}
		_, srcInEnvoy, err := authzInEnvoy(b, "")
		if err != nil {
			return fmt.Errorf("%s: %w", d.routesSrc, err)
		}
		mode = "process"
		if srcInEnvoy {
			mode = "envoy"
		}
	}
	before := out
	if out, d.inEnvoy, err = authzInEnvoy(out, mode); err != nil {
		return fmt.Errorf("%s: %w", d.routes, err)
	}
	if !fresh && !changed && !moved && bytes.Equal(before, out) {
		return nil
	}
	return os.WriteFile(d.routes, out, 0o644)
}

// writeKeys puts one key file per provider upstream under the keys directory (0700;
// files 0600): the provider key from the environment, or a demo key the fake accepts.
func (d *demo) writeKeys(getenv func(string) string) error {
	if err := mkdirPrivate(d.keysDir); err != nil {
		return err
	}
	for _, p := range providers {
		dir := filepath.Join(d.keysDir, p.upstream)
		if err := mkdirPrivate(dir); err != nil {
			return err
		}
		fromEnv, demoKey := filepath.Join(dir, "from-env"), filepath.Join(dir, "demo")
		if key := getenv(p.keyVar); key != "" {
			if err := writePrivate(fromEnv, []byte(key+"\n")); err != nil {
				return err
			}
			if err := os.Remove(demoKey); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		if err := writePrivate(demoKey, []byte("demo-key-for-the-fake-upstream\n")); err != nil {
			return err
		}
		if err := os.Remove(fromEnv); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700) // an older run may have left it 0755
}

// writePrivate writes a 0600 file by renaming a temporary one into place, so the file
// is never readable by others, not even for a moment, and readers never see half of it.
func writePrivate(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
