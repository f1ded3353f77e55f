package deploy_test

import (
	"cmp"
	"context"
	"debug/elf"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/llmedge/llmedge/controlplane/bootstrap"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/testenv"
)

// The compose services: the components of stack.Topology with a process of their own, in
// the mode compose runs (extauthz inside Envoy; TestTopologyMatchesProcessStack).
var components = []string{"controlplane", "envoy", "fakellm", "ratelimit", "redis"}

// Services running llmedge's own image (built from ./Dockerfile, its default target).
var ownImage = []string{"controlplane", "fakellm"}

// The envoy service's image: Envoy with llmedge's module (./Dockerfile, target envoy).
const (
	envoyImage  = "llmedge-envoy:dev"
	envoyTarget = "envoy"
)

// mounted are the stack's sockets where compose mounts the socket volume.
var mounted = stack.Sockets{Dir: stack.SocketMount}

// In-container paths compose.yaml mounts things at.
const (
	routesTarget    = "/etc/llmedge/routes"
	keysTarget      = "/run/secrets/llmedge-keys"
	bootstrapTarget = "/etc/envoy/envoy.yaml"
	keysSecret      = "llmedge-keys"
)

func TestMain(m *testing.M) {
	// Environment overrides of the routes YAML in the developer's shell
	// (LLMEDGE_UPSTREAMS_OPENAI_URL...) would change what config.LoadConfig returns:
	// check the files as they are. LLMEDGE_TOOLS, LLMEDGE_ENVOY... stay.
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		for _, section := range []string{"VERSION", "REGIONS_", "UPSTREAMS_", "ROUTES_", "CALLERS_"} {
			if strings.HasPrefix(k, config.EnvPrefix+"_"+section) {
				os.Unsetenv(k)
			}
		}
	}
	os.Exit(m.Run())
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// variant is one way of starting the compose project, with what it must publish: the
// process stack's defaults (`make run`, stack.LocalPorts) for that region.
type variant struct {
	name    string
	envFile string // relative to the repo root; "" = compose.yaml's own defaults
	project string
	region  string
	// host ports
	edge, admin, status, rlDebug string
}

// variants derives the expected host ports from `make run`'s defaults. The process
// stack runs one control plane for both regions; the sg compose project has its own, on
// the next port.
func variants(t *testing.T) []variant {
	t.Helper()
	d := map[stack.PortKey]int{}
	for _, p := range stack.LocalPorts() {
		d[p.Key] = p.Default
	}
	port := func(component, region, role string, plus int) string {
		v, ok := d[stack.PortKey{Component: component, Region: region, Role: role}]
		if !ok {
			t.Fatalf("stack.LocalPorts has no default for %s %s %s", component, region, role)
		}
		return strconv.Itoa(v + plus)
	}
	status := func(plus int) string { return port("controlplane", "", stack.RoleHTTP, plus) }
	hk := variant{
		project: "llmedge", region: "hk",
		edge: port("envoy", "hk", stack.RoleEdge, 0), admin: port("envoy", "hk", stack.RoleAdmin, 0),
		status: status(0), rlDebug: port("ratelimit", "hk", stack.RoleDebug, 0),
	}
	sg := variant{
		name: "sg.env", envFile: "examples/compose/sg.env", project: "llmedge-sg", region: "sg",
		edge: port("envoy", "sg", stack.RoleEdge, 0), admin: port("envoy", "sg", stack.RoleAdmin, 0),
		status: status(1), rlDebug: port("ratelimit", "sg", stack.RoleDebug, 0),
	}
	hkEnv := hk
	hkEnv.name, hkEnv.envFile = "hk.env", "examples/compose/hk.env"
	hk.name = "defaults"
	return []variant{hk, hkEnv, sg}
}

type loadOpt func(*[]cli.ProjectOptionsFn)

func withEnv(kv ...string) loadOpt {
	return func(o *[]cli.ProjectOptionsFn) { *o = append(*o, cli.WithEnv(kv)) }
}

func withoutDemo() loadOpt {
	return func(o *[]cli.ProjectOptionsFn) { *o = append(*o, cli.WithProfiles(nil)) }
}

// load parses compose.yaml as `docker compose [--env-file F] --profile demo config`
// would: interpolated, normalised, paths resolved, validated against the compose
// schema. The process environment is not used (only envFile and withEnv).
func load(t *testing.T, envFile string, extra ...loadOpt) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts := []cli.ProjectOptionsFn{
		cli.WithWorkingDirectory(root),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
		cli.WithProfiles([]string{"demo"}),
	}
	if envFile != "" {
		opts = append(opts, cli.WithEnvFiles(filepath.Join(root, envFile)), cli.WithDotEnv)
	}
	for _, e := range extra {
		e(&opts)
	}
	po, err := cli.NewProjectOptions([]string{filepath.Join(root, "compose.yaml")}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := po.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose.yaml (env file %q): %v", envFile, err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("compose.yaml has no service %q (has %v)", name, slices.Sorted(maps.Keys(p.Services)))
	}
	return s
}

func env(s types.ServiceConfig, key string) string {
	if v := s.Environment[key]; v != nil {
		return *v
	}
	return ""
}

// flagValue returns --name=value or --name value from a command line.
func flagValue(cmd []string, name string) string {
	for i, a := range cmd {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(cmd) {
			return cmd[i+1]
		}
	}
	return ""
}

func port(t *testing.T, what, hostport string) uint32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%s: %q is not host:port: %v", what, hostport, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		t.Fatalf("%s: %q: %v", what, hostport, err)
	}
	return uint32(n)
}

func bindMount(t *testing.T, s types.ServiceConfig, target string) types.ServiceVolumeConfig {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			if v.Type != types.VolumeTypeBind {
				t.Errorf("%s: %s is a %s mount, want bind", s.Name, target, v.Type)
			}
			return v
		}
	}
	t.Fatalf("%s mounts nothing at %s (volumes %+v)", s.Name, target, s.Volumes)
	return types.ServiceVolumeConfig{}
}

// composeAuthzInEnvoy is where the routes YAML compose mounts runs extauthz: every region
// of examples/compose/routes.yaml the same way, and the way `make run` runs it by default.
func composeAuthzInEnvoy(t *testing.T) bool {
	t.Helper()
	_, cfg, err := config.LoadConfig(filepath.Join(repoRoot(t), "examples", "compose"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[bool][]string{}
	for _, r := range cfg.Regions {
		seen[r.ExtAuthzInEnvoy] = append(seen[r.ExtAuthzInEnvoy], r.Name)
	}
	if len(seen) != 1 {
		t.Fatalf("examples/compose: regions %v run extauthz inside Envoy, %v do not; one project runs one kind", seen[true], seen[false])
	}
	inEnvoy := len(seen[true]) > 0
	if inEnvoy != stack.DefaultAuthzInEnvoy {
		t.Errorf("examples/compose regions set extauthz_in_envoy=%v; make run's default (stack.DefaultAuthzInEnvoy) is %v", inEnvoy, stack.DefaultAuthzInEnvoy)
	}
	return inEnvoy
}

// authzService is the compose service that runs the region's extauthz: its own, or the
// one it runs inside (stack.Component.In).
func authzService(t *testing.T, p *types.Project) types.ServiceConfig {
	t.Helper()
	for _, c := range stack.Topology(composeAuthzInEnvoy(t)) {
		if c.Name == "extauthz" {
			return service(t, p, cmp.Or(c.In, c.Name))
		}
	}
	t.Fatal("stack.Topology has no extauthz")
	return types.ServiceConfig{}
}

func TestComposeServices(t *testing.T) {
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			p := load(t, v.envFile)
			if got := slices.Sorted(maps.Keys(p.Services)); !slices.Equal(got, components) {
				t.Errorf("services with profile demo = %v, want %v", got, components)
			}
			if p.Name != v.project {
				t.Errorf("project name = %q, want %q", p.Name, v.project)
			}
			if got := service(t, p, "fakellm").Profiles; !slices.Equal(got, []string{"demo"}) {
				t.Errorf("fakellm profiles = %v, want [demo]", got)
			}
		})
	}
	t.Run("without demo", func(t *testing.T) {
		p := load(t, "", withoutDemo())
		want := slices.DeleteFunc(slices.Clone(components), func(s string) bool { return s == "fakellm" })
		if got := slices.Sorted(maps.Keys(p.Services)); !slices.Equal(got, want) {
			t.Errorf("services without profile demo = %v, want %v", got, want)
		}
	})
}

// TestComposeControlPlaneYieldsCPU: the control plane, on no request's path, lowers its
// threads' priority as make run's does, has less CPU weight than every service that is on
// a request's path, and no other service is weighted below the default.
func TestComposeControlPlaneYieldsCPU(t *testing.T) {
	p := load(t, "")
	if got, want := flagValue(service(t, p, "controlplane").Command, "--cpu-nice"), strconv.Itoa(stack.LocalControlPlaneNice); got != want {
		t.Errorf("controlplane --cpu-nice = %q, want %q (make run's)", got, want)
	}
	cp := service(t, p, "controlplane").CPUShares
	if cp <= 0 || cp >= 1024 {
		t.Errorf("controlplane cpu_shares = %d, want below Docker's default 1024", cp)
	}
	for name, s := range p.Services {
		if name != "controlplane" && s.CPUShares != 0 {
			t.Errorf("%s cpu_shares = %d, want the default (it serves requests)", name, s.CPUShares)
		}
	}
}

// ratelimitCommit is the commit of RATELIMIT_VERSION in scripts/tools.sh, the
// envoyproxy/ratelimit the tests and `make run` use.
func ratelimitCommit(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "scripts", "tools.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RATELIMIT_VERSION=v[0-9.]+-(?:0\.)?[0-9]{14}-([0-9a-f]{12})\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("scripts/tools.sh: no RATELIMIT_VERSION=<pseudo-version> line")
	}
	return string(m[1])
}

func splitImage(image string) (repo, tag, digest string) {
	repo, digest, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	return repo, tag, digest
}

func TestComposeImagesPinned(t *testing.T) {
	root := repoRoot(t)
	p := load(t, "")
	commit := ratelimitCommit(t)
	want := map[string]*regexp.Regexp{
		// Docker Hub tags of envoyproxy/ratelimit are the first 8 characters of a commit.
		"envoyproxy/ratelimit": regexp.MustCompile(`^` + commit[:8] + `$`),
		"redis":                regexp.MustCompile(`^7\.0\.[0-9]+$`),
	}
	for _, name := range components {
		s := service(t, p, name)
		repo, tag, _ := splitImage(s.Image)
		switch {
		case s.Image == "":
			t.Errorf("%s: no image", name)
		case tag == "" || tag == "latest" || strings.HasSuffix(tag, "-latest") || tag == "master" || tag == "main":
			t.Errorf("%s: image %q is not pinned to a version", name, s.Image)
		}
		if slices.Contains(ownImage, name) {
			if s.Image != "llmedge:dev" {
				t.Errorf("%s: image %q, want the locally built llmedge:dev", name, s.Image)
			}
			continue
		}
		if name == "envoy" {
			if s.Image != envoyImage {
				t.Errorf("envoy: image %q, want the locally built %s (Envoy + module)", s.Image, envoyImage)
			}
			continue
		}
		re, ok := want[repo]
		if !ok {
			t.Errorf("%s: unexpected image %q", name, s.Image)
			continue
		}
		if !re.MatchString(tag) {
			t.Errorf("%s: image %q, want tag matching %s", name, s.Image, re)
		}
		if s.Build != nil {
			t.Errorf("%s: third-party image %q must not be built here", name, s.Image)
		}
	}
	// One service builds each of llmedge's images from ./Dockerfile: controlplane the
	// default target, envoy the envoy target.
	builders := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if b := p.Services[name].Build; b != nil {
			builders[name] = b.Target
			if b.Context != root || b.Dockerfile != "Dockerfile" {
				t.Errorf("%s: build %+v, want context %s, Dockerfile", name, b, root)
			}
		}
	}
	if want := map[string]string{"controlplane": "", "envoy": envoyTarget}; !maps.Equal(builders, want) {
		t.Errorf("services with build (target): %v, want %v", builders, want)
	}
	// The Envoy under the module is the pinned release the tests run.
	if _, tag, _ := splitImage(dockerfileArgs(t)["ENVOY_IMAGE"]); !regexp.MustCompile(`^v1\.40\.[0-9]+$`).MatchString(tag) ||
		!strings.HasPrefix(dockerfileArgs(t)["ENVOY_IMAGE"], "envoyproxy/envoy:") {
		t.Errorf("Dockerfile ARG ENVOY_IMAGE=%q, want envoyproxy/envoy:v1.40.<patch>", dockerfileArgs(t)["ENVOY_IMAGE"])
	}
	// Whatever the env file, the image stays the same pins.
	sg := load(t, "examples/compose/sg.env")
	for _, name := range components {
		if a, b := service(t, p, name).Image, service(t, sg, name).Image; a != b {
			t.Errorf("%s: image %q with sg.env, %q without", name, b, a)
		}
	}
}

func TestComposeHealthchecks(t *testing.T) {
	p := load(t, "")
	for _, name := range components {
		s := service(t, p, name)
		hc := s.HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 2 || (hc.Test[0] != "CMD" && hc.Test[0] != "CMD-SHELL") {
			t.Errorf("%s: no usable healthcheck: %+v", name, hc)
			continue
		}
		if hc.Interval == nil || hc.Timeout == nil || hc.Retries == nil {
			t.Errorf("%s: healthcheck without interval/timeout/retries: %+v", name, hc)
		}
	}
	// llmedge's image has no shell: its services probe with the llmedge binary, on the
	// port the service itself listens on.
	probes := map[string]string{
		"controlplane": "http://127.0.0.1:" + strconv.Itoa(int(port(t, "controlplane --http-listen", flagValue(service(t, p, "controlplane").Command, "--http-listen")))) + "/readyz",
		"fakellm":      "http://127.0.0.1:" + strconv.Itoa(int(port(t, "fakellm --listen", flagValue(service(t, p, "fakellm").Command, "--listen")))) + "/_fake/healthz",
	}
	for name, url := range probes {
		want := []string{"CMD", "/usr/local/bin/llmedge", "probe", url}
		if got := service(t, p, name).HealthCheck.Test; !slices.Equal(got, want) {
			t.Errorf("%s healthcheck = %q, want %q", name, got, want)
		}
	}
	rl := service(t, p, "ratelimit")
	if got, want := rl.HealthCheck.Test, []string{"CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:" + env(rl, "PORT") + "/healthcheck"}; !slices.Equal(got, want) {
		t.Errorf("ratelimit healthcheck = %q, want %q", got, want)
	}
	envoy := service(t, p, "envoy")
	if got := envoy.HealthCheck.Test; len(got) != 4 || got[1] != "bash" || !strings.Contains(got[3], "/dev/tcp/127.0.0.1/9901") || !strings.Contains(got[3], "GET /ready ") {
		t.Errorf("envoy healthcheck = %q, want bash GET /ready on the admin port 9901", got)
	}
}

// TestLlmedgeProbeHealthcheck runs the health check command of llmedge's services for
// real: the binary must have the probe subcommand, exit 0 on 2xx and fail otherwise.
func TestLlmedgeProbeHealthcheck(t *testing.T) {
	root := repoRoot(t)
	bin := filepath.Join(t.TempDir(), "llmedge")
	build := exec.Command("go", "build", "-o", bin, "./cmd/llmedge")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/llmedge: %v\n%s", err, out)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Error(w, `{"ready": false}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	test := service(t, load(t, ""), "controlplane").HealthCheck.Test
	args := slices.Clone(test[2:])
	for name, c := range map[string]struct {
		path   string
		wantOK bool
	}{"ready": {"/readyz", true}, "not ready": {"/healthz", false}} {
		args[len(args)-1] = srv.URL + c.path
		out, err := exec.Command(bin, args...).CombinedOutput()
		if (err == nil) != c.wantOK {
			t.Errorf("%s: %s %q: err %v, want ok=%v\n%s", name, bin, args, err, c.wantOK, out)
		}
	}
}

// TestEnvoyHealthcheck runs the Envoy service's health check (bash, no curl) against
// the real Envoy's admin API: unhealthy while it waits for the control plane, healthy
// once it is LIVE.
func TestEnvoyHealthcheck(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	test := service(t, load(t, ""), "envoy").HealthCheck.Test
	script := test[3]
	run := func(adminURL string) error {
		_, portStr, _ := net.SplitHostPort(strings.TrimPrefix(adminURL, "http://"))
		cmd := exec.Command("bash", "-c", strings.ReplaceAll(script, "/127.0.0.1/9901", "/127.0.0.1/"+portStr))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	dir := t.TempDir()

	// The compose bootstrap, with a control plane that never answers: PRE_INITIALIZING.
	waiting, err := bootstrap.Render(bootstrap.Options{
		NodeID: "envoy-hk-compose", Region: "hk", AdminPort: bootstrap.EphemeralAdminPort,
		XDSPort: testenv.FreePort(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	live := []byte("admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: 0}\n")
	for _, c := range []struct {
		name      string
		bootstrap []byte
		wantOK    bool
	}{{"waiting-for-xds", waiting, false}, {"live", live, true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(dir, c.name+".yaml")
			if err := os.WriteFile(path, c.bootstrap, 0o644); err != nil {
				t.Fatal(err)
			}
			e := testenv.StartEnvoy(t, "envoy-"+c.name, path)
			if c.wantOK {
				testenv.Eventually(t, testenv.EnvoyStartTimeout, 50*time.Millisecond, func() error { return run(e.AdminURL()) })
			} else if err := run(e.AdminURL()); err == nil {
				t.Errorf("healthcheck passed on an Envoy without config")
			}
		})
	}
}

func TestComposeDependsOn(t *testing.T) {
	p := load(t, "")
	want := map[string]map[string]string{
		"controlplane": {},
		"redis":        {},
		"fakellm":      {},
		"ratelimit":    {"controlplane": types.ServiceConditionHealthy, "redis": types.ServiceConditionHealthy},
		// The extauthz inside Envoy checks quotas in Redis; rate limiting fails open.
		"envoy": {
			"controlplane": types.ServiceConditionHealthy,
			"redis":        types.ServiceConditionHealthy,
			"ratelimit":    types.ServiceConditionStarted,
		},
	}
	for _, name := range components {
		got := map[string]string{}
		for dep, d := range service(t, p, name).DependsOn {
			got[dep] = d.Condition
			if !d.Required {
				t.Errorf("%s depends_on %s is not required", name, dep)
			}
		}
		if !maps.Equal(got, want[name]) {
			t.Errorf("%s depends_on = %v, want %v", name, got, want[name])
		}
	}
}

func TestComposePorts(t *testing.T) {
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			p := load(t, v.envFile)
			type pub struct{ hostIP, published string }
			want := map[string]map[uint32]pub{
				"envoy":        {10000: {"", v.edge}, 9901: {"127.0.0.1", v.admin}},
				"controlplane": {18080: {"127.0.0.1", v.status}},
				"ratelimit":    {6070: {"127.0.0.1", v.rlDebug}},
			}
			for _, name := range components {
				s := service(t, p, name)
				got := map[uint32]pub{}
				for _, pc := range s.Ports {
					if pc.Protocol != "tcp" {
						t.Errorf("%s: port %d protocol %q", name, pc.Target, pc.Protocol)
					}
					got[pc.Target] = pub{pc.HostIP, pc.Published}
					// Only the edge may be reachable from outside the host.
					isEdge := name == "envoy" && pc.Target == 10000
					if !isEdge && pc.HostIP != "127.0.0.1" {
						t.Errorf("%s: port %d published on %q; everything but the edge must be on 127.0.0.1", name, pc.Target, pc.HostIP)
					}
				}
				if w := want[name]; !maps.Equal(got, w) && !(len(got) == 0 && len(w) == 0) {
					t.Errorf("%s: published %v, want %v", name, got, w)
				}
			}
		})
	}
}

func TestComposeSecrets(t *testing.T) {
	root := repoRoot(t)
	p := load(t, "")
	sec, ok := p.Secrets[keysSecret]
	if !ok {
		t.Fatalf("no top-level secret %q", keysSecret)
	}
	if sec.File != filepath.Join(root, "secrets", "keys") || sec.Environment != "" || sec.Content != "" || bool(sec.External) {
		t.Errorf("secret %s = %+v, want file %s (a directory you provide)", keysSecret, sec, filepath.Join(root, "secrets", "keys"))
	}
	ea := authzService(t, p)
	if len(ea.Secrets) != 1 || ea.Secrets[0].Source != keysSecret || ea.Secrets[0].Target != keysTarget {
		t.Errorf("%s (runs extauthz) secrets = %+v, want %s at %s", ea.Name, ea.Secrets, keysSecret, keysTarget)
	}
	if got := env(ea, "LLMEDGE_KEYS_DIR"); got != keysTarget {
		t.Errorf("%s LLMEDGE_KEYS_DIR = %q, want %q", ea.Name, got, keysTarget)
	}
	for _, name := range components {
		s := service(t, p, name)
		if name != ea.Name && len(s.Secrets) > 0 {
			t.Errorf("%s: has secrets %+v; only %s, which runs extauthz, needs the keys", name, s.Secrets, ea.Name)
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && !v.ReadOnly {
				t.Errorf("%s: bind mount %s -> %s is writable", name, v.Source, v.Target)
			}
			if strings.HasPrefix(v.Source, filepath.Join(root, "secrets")) {
				t.Errorf("%s: mounts %s as a volume; keys are only mounted as the %s secret", name, v.Source, keysSecret)
			}
		}
	}
	// Another keys directory is a variable away.
	p = load(t, "", withEnv("LLMEDGE_KEYS_DIR=/srv/llmedge/keys"))
	if got := p.Secrets[keysSecret].File; got != "/srv/llmedge/keys" {
		t.Errorf("LLMEDGE_KEYS_DIR=/srv/llmedge/keys: secret file = %q", got)
	}
}

var secretLooking = regexp.MustCompile(`(?i)sk-[a-z0-9_-]{6,}|llme_[a-z0-9_-]{6,}|sha256:[0-9a-f]{64}|key=`)

func TestComposeHasNoSecretValues(t *testing.T) {
	for _, v := range variants(t) {
		p := load(t, v.envFile)
		for _, name := range components {
			s := service(t, p, name)
			for k, val := range s.Environment {
				if val == nil {
					continue
				}
				if secretLooking.MatchString(*val) || strings.Contains(strings.ToLower(*val), "sk-") || strings.Contains(*val, "llme_") {
					t.Errorf("%s (%s): environment %s=%q looks like a secret", name, v.name, k, *val)
				}
				if regexp.MustCompile(`(?i)(api_?key|token|secret|password)$`).MatchString(k) {
					t.Errorf("%s (%s): environment variable %s carries a credential; use the keys directory", name, v.name, k)
				}
			}
		}
	}
	// The files themselves, comments included.
	root := repoRoot(t)
	for _, f := range []string{"compose.yaml", "examples/compose/hk.env", "examples/compose/sg.env", "examples/compose/routes.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if m := regexp.MustCompile(`(?i)sk-[a-z0-9_-]{6,}|llme_[a-z0-9_-]{6,}|sha256:[0-9a-f]{64}`).Find(b); m != nil {
			t.Errorf("%s contains %q, which looks like a secret", f, m)
		}
	}
}

// Only variables are passed through to the control plane, and only when set.
func TestComposeUpstreamURLPassthrough(t *testing.T) {
	cp := service(t, load(t, ""), "controlplane")
	for k, v := range cp.Environment {
		if v != nil {
			t.Errorf("controlplane environment %s=%q without LLMEDGE_* set; want it unset", k, *v)
		}
	}
	cp = service(t, load(t, "", withEnv("LLMEDGE_UPSTREAMS_OPENAI_URL=https://api.openai.com")), "controlplane")
	if got := env(cp, "LLMEDGE_UPSTREAMS_OPENAI_URL"); got != "https://api.openai.com" {
		t.Errorf("LLMEDGE_UPSTREAMS_OPENAI_URL not passed to the control plane (got %q)", got)
	}
}

func TestComposeEnvoyBootstrap(t *testing.T) {
	root := repoRoot(t)
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			p := load(t, v.envFile)
			envoy := service(t, p, "envoy")
			m := bindMount(t, envoy, bootstrapTarget)
			want := filepath.Join(root, "envoy", "compose-"+v.region+".yaml")
			if m.Source != want || !m.ReadOnly {
				t.Errorf("envoy bootstrap mount %s (read_only %v), want %s read-only", m.Source, m.ReadOnly, want)
			}
			if got := flagValue(envoy.Command, "-c"); got != bootstrapTarget {
				t.Errorf("envoy -c %q, want %q", got, bootstrapTarget)
			}
			y, err := os.ReadFile(m.Source)
			if err != nil {
				t.Fatalf("%v (run `make golden`)", err)
			}
			js, err := yaml.YAMLToJSON(y)
			if err != nil {
				t.Fatal(err)
			}
			var b bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(js, &b); err != nil {
				t.Fatalf("%s: %v", m.Source, err)
			}
			if got := b.GetNode().GetLocality().GetRegion(); got != v.region {
				t.Errorf("%s: node.locality.region %q, want %q", m.Source, got, v.region)
			}
			admin := b.GetAdmin().GetAddress().GetSocketAddress()
			if admin.GetAddress() != "0.0.0.0" || admin.GetPortValue() != 9901 {
				t.Errorf("%s: admin %s:%d, want 0.0.0.0:9901 (published on the host's loopback only)", m.Source, admin.GetAddress(), admin.GetPortValue())
			}
			xds := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath()
			if cpXDS := flagValue(service(t, p, "controlplane").Command, "--xds-listen"); stack.Unix(xds) != cpXDS || xds != mounted.XDS() {
				t.Errorf("%s: xDS at pipe %q, want the control plane's --xds-listen %s, %s", m.Source, xds, cpXDS, mounted.XDS())
			}
		})
	}
}

// TestComposeEnvoyDrainFlags: compose's Envoy drains (once `llmedge drain` starts it) as
// the process stack's does.
func TestComposeEnvoyDrainFlags(t *testing.T) {
	envoy := service(t, load(t, ""), "envoy")
	want := stack.Envoy{}.Cmd("envoy", bootstrapTarget, "admin").Args
	for _, f := range []string{"--drain-time-s", "--drain-strategy"} {
		if got, w := flagValue(envoy.Command, f), flagValue(want, f); got != w || w == "" {
			t.Errorf("compose envoy %s %q, internal/stack sets %q", f, got, w)
		}
	}
}

// TestComposeRoutes loads the routes directory the control plane mounts, as the control
// plane does, and checks it wires the region to the compose services.
func TestComposeRoutes(t *testing.T) {
	root := repoRoot(t)
	if _, _, err := config.LoadConfig(filepath.Join(root, "examples", "compose", "routes.yaml")); err != nil {
		t.Fatalf("examples/compose/routes.yaml: %v", err)
	}
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			p := load(t, v.envFile)
			cp := service(t, p, "controlplane")
			m := bindMount(t, cp, routesTarget)
			if m.Source != filepath.Join(root, "examples", "compose") || !m.ReadOnly {
				t.Errorf("controlplane routes mount %s (read_only %v), want examples/compose read-only", m.Source, m.ReadOnly)
			}
			if got := flagValue(cp.Command, "--config"); got != routesTarget {
				t.Errorf("controlplane --config %q, want the mount %q", got, routesTarget)
			}
			_, cfg, err := config.LoadConfig(m.Source)
			if err != nil {
				t.Fatalf("routes directory %s: %v", m.Source, err)
			}
			if !cfg.HasLimits() {
				t.Error("no limits: ratelimit would never turn healthy (HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED)")
			}

			ea, rl, envoy := authzService(t, p), service(t, p, "ratelimit"), service(t, p, "envoy")
			if got := env(ea, "LLMEDGE_REGION"); got != v.region {
				t.Errorf("extauthz LLMEDGE_REGION = %q, want %q", got, v.region)
			}
			for _, r := range cfg.Regions {
				if r.ExtAuthzInEnvoy != (ea.Name == "envoy") {
					t.Errorf("regions.%s.extauthz_in_envoy = %v, but compose runs extauthz in service %s", r.Name, r.ExtAuthzInEnvoy, ea.Name)
				}
			}
			if got := env(rl, "CONFIG_GRPC_XDS_NODE_METADATA"); got != "region="+v.region {
				t.Errorf("ratelimit CONFIG_GRPC_XDS_NODE_METADATA = %q, want region=%s", got, v.region)
			}
			xds := flagValue(cp.Command, "--xds-listen")
			if got := env(ea, "LLMEDGE_XDS"); got != xds {
				t.Errorf("extauthz LLMEDGE_XDS = %q, want %q", got, xds)
			}
			if got := env(rl, "CONFIG_GRPC_XDS_SERVER_URL"); got != xds {
				t.Errorf("ratelimit CONFIG_GRPC_XDS_SERVER_URL = %q, want %q", got, xds)
			}
			if got, want := env(ea, "LLMEDGE_REDIS"), "unix:"+flagValue(service(t, p, "redis").Command, "--unixsocket"); got != want {
				t.Errorf("extauthz LLMEDGE_REDIS = %q, want ratelimit's Redis %q", got, want)
			}
			if got, want := env(rl, "REDIS_URL"), flagValue(service(t, p, "redis").Command, "--unixsocket"); got != want || env(rl, "REDIS_SOCKET_TYPE") != "unix" {
				t.Errorf("ratelimit REDIS_SOCKET_TYPE=%s REDIS_URL=%q, want unix and redis's --unixsocket %q", env(rl, "REDIS_SOCKET_TYPE"), got, want)
			}

			eaSock := env(ea, "LLMEDGE_GRPC_LISTEN")
			rlSock := stack.Unix(env(rl, "GRPC_UDS"))
			var edgeTargets []uint32
			for _, pc := range envoy.Ports {
				edgeTargets = append(edgeTargets, pc.Target)
			}
			found := false
			for _, r := range cfg.Regions {
				if r.Name == v.region {
					found = true
				}
				// Each region's sockets, under the stack's names; this project's are the
				// ones its extauthz and ratelimit listen on.
				// Inside Envoy extauthz serves no gRPC (nothing calls it): the address stays in
				// the routes YAML for a switch back to the extauthz service.
				if r.ExtAuthz.Pipe != mounted.ExtAuthz(r.Name) || (r.Name == v.region && ea.Name != "envoy" && stack.Unix(r.ExtAuthz.Pipe) != eaSock) {
					t.Errorf("regions.%s.extauthz = pipe %q, want %s (extauthz listens on %s)", r.Name, r.ExtAuthz.Pipe, mounted.ExtAuthz(r.Name), eaSock)
				}
				if ea.Name == "envoy" && eaSock != "" {
					t.Errorf("envoy sets LLMEDGE_GRPC_LISTEN=%s: extauthz inside Envoy serves no gRPC", eaSock)
				}
				if r.RateLimit.Pipe != mounted.Ratelimit(r.Name) || (r.Name == v.region && stack.Unix(r.RateLimit.Pipe) != rlSock) {
					t.Errorf("regions.%s.ratelimit = pipe %q, want %s (ratelimit listens on %s)", r.Name, r.RateLimit.Pipe, mounted.Ratelimit(r.Name), rlSock)
				}
				if r.ListenAddress != "0.0.0.0" || !slices.Contains(edgeTargets, r.ListenPort) {
					t.Errorf("regions.%s.listen = %s:%d, want 0.0.0.0 and a port envoy publishes (%v)", r.Name, r.ListenAddress, r.ListenPort, edgeTargets)
				}
			}
			if !found {
				t.Errorf("region %q is not in the routes YAML", v.region)
			}
			fake := port(t, "fakellm --listen", flagValue(service(t, p, "fakellm").Command, "--listen"))
			for _, u := range cfg.Upstreams {
				if u.ConnectHost != "fakellm" || u.ConnectPort != fake {
					t.Errorf("upstreams.%s connects to %s:%d, want the demo upstream fakellm:%d", u.Name, u.ConnectHost, u.ConnectPort, fake)
				}
			}
		})
	}
}

// The shipped callers example validates together with the routes, as callers.yaml.
func TestComposeCallersExample(t *testing.T) {
	root := repoRoot(t)
	dir := t.TempDir()
	for src, dst := range map[string]string{"routes.yaml": "routes.yaml", "callers.yaml.example": "callers.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "examples", "compose", src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, cfg, err := config.LoadConfig(dir)
	if err != nil {
		t.Fatalf("routes.yaml + callers.yaml.example: %v", err)
	}
	if len(src.Files) != 2 || len(cfg.Callers) == 0 {
		t.Errorf("read %v, %d callers; want both files and a caller", src.Files, len(cfg.Callers))
	}
	// In the example directory itself the .example file is not read.
	src, _, err = config.LoadConfig(filepath.Join(root, "examples", "compose"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range src.Files {
		if strings.HasSuffix(f, ".example") || strings.HasSuffix(f, ".env") {
			t.Errorf("the control plane would read %s", f)
		}
	}
}

// TestTopologyMatchesProcessStack: compose and the process stack (`make run`, the tests)
// describe the same components, the demo ones behind the demo profile.
func TestTopologyMatchesProcessStack(t *testing.T) {
	p := load(t, "")
	inEnvoy := composeAuthzInEnvoy(t)
	var names []string
	for _, c := range stack.Topology(inEnvoy) {
		if c.In != "" {
			// It runs inside another service (TestComposeEnvoyRunsExtAuthz checks how).
			if _, ok := p.Services[c.Name]; ok {
				t.Errorf("compose has a service %s, but it runs inside %s (stack.Topology(%v))", c.Name, c.In, inEnvoy)
			}
			service(t, p, c.In)
			continue
		}
		names = append(names, c.Name)
		s := service(t, p, c.Name)
		if got, want := slices.Contains(s.Profiles, "demo"), c.Demo; got != want {
			t.Errorf("%s: in profile demo = %v, but stack.Topology says Demo = %v", c.Name, got, want)
		}
	}
	slices.Sort(names)
	if got := slices.Sorted(maps.Keys(p.Services)); !slices.Equal(got, names) {
		t.Errorf("compose services %v != stack.Topology %v", got, names)
	}
	if !slices.Equal(names, components) {
		t.Errorf("stack.Topology %v != the components these tests check %v", names, components)
	}
}

// TestComposeRatelimitSettings: compose's ratelimit runs with the settings of
// stack.Ratelimit, the one place they are written, on the stack's sockets under
// stack.SocketMount. Only the HTTP listeners' addresses differ, by design: containers
// listen on 0.0.0.0 so that Docker can publish the debug port.
func TestComposeRatelimitSettings(t *testing.T) {
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			rl := service(t, load(t, v.envFile), "ratelimit")
			port := func(key string) int {
				n, err := strconv.Atoi(env(rl, key))
				if err != nil {
					t.Fatalf("ratelimit %s=%q: %v", key, env(rl, key), err)
				}
				return n
			}
			want := stack.Ratelimit{
				Region: v.region, XDSAddr: stack.Unix(mounted.XDS()), RedisAddr: stack.Unix(mounted.Redis()),
				GRPCSocket: mounted.Ratelimit(v.region),
				Host:       "0.0.0.0",
				HTTPPort:   port("PORT"), DebugPort: port("DEBUG_PORT"),
				MetricsPort: 9090,
			}.Env()
			addresses := map[string]bool{"PROMETHEUS_ADDR": true, "HOST": true, "DEBUG_HOST": true}
			var wantKeys []string
			for _, kv := range want {
				k, val, _ := strings.Cut(kv, "=")
				wantKeys = append(wantKeys, k)
				got := rl.Environment[k]
				switch {
				case got == nil:
					t.Errorf("compose ratelimit lacks %s (stack sets %q)", k, val)
				case !addresses[k] && *got != val:
					t.Errorf("compose ratelimit %s=%q, stack.Ratelimit sets %q", k, *got, val)
				}
			}
			for k := range rl.Environment {
				if !slices.Contains(wantKeys, k) {
					t.Errorf("compose ratelimit sets %s, which stack.Ratelimit does not", k)
				}
			}
			if got := env(rl, "PROMETHEUS_ADDR"); !strings.HasSuffix(got, ":9090") {
				t.Errorf("compose ratelimit PROMETHEUS_ADDR=%q, want port 9090", got)
			}
		})
	}
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	args := dockerfileArgs(t)
	for _, k := range []string{"GO_IMAGE", "RUNTIME_IMAGE", "ENVOY_IMAGE"} {
		_, tag, _ := splitImage(args[k])
		if tag == "" || tag == "latest" {
			t.Errorf("Dockerfile ARG %s=%q: pin the base image by tag", k, args[k])
		}
	}
	if _, tag, _ := splitImage(args["GO_IMAGE"]); !strings.HasPrefix(tag, "1.26") {
		t.Errorf("GO_IMAGE %q: want Go 1.26 (go.mod)", args["GO_IMAGE"])
	}
	if !strings.HasPrefix(args["RUNTIME_IMAGE"], "gcr.io/distroless/static") || !strings.HasSuffix(args["RUNTIME_IMAGE"], ":nonroot") {
		t.Errorf("RUNTIME_IMAGE %q: want distroless static, nonroot", args["RUNTIME_IMAGE"])
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "./cmd/llmedge", "./cmd/fakellm", "/usr/local/bin/", `ENTRYPOINT ["/usr/local/bin/llmedge"]`} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^EXPOSE (.*)$`).FindAllStringSubmatch(df, -1) {
		for _, p := range strings.Fields(m[1]) {
			if p == "18000" || p == "10100" {
				t.Errorf("Dockerfile exposes %s: xDS and ext_authz are unix sockets, not ports", p)
			}
		}
	}
	users := regexp.MustCompile(`(?m)^USER (\S+)$`).FindAllStringSubmatch(df, -1)
	if len(users) == 0 || users[len(users)-1][1] == "root" || strings.HasPrefix(users[len(users)-1][1], "0") {
		t.Errorf("Dockerfile: the runtime stage must end with a non-root USER (got %v)", users)
	}
	// The default target stays llmedge's static image; the module is its own target.
	if last := dockerfileStage(t, ""); !strings.HasPrefix(last.text, "FROM ${RUNTIME_IMAGE}") {
		t.Errorf("Dockerfile: the last stage (the default target) is %q, want FROM ${RUNTIME_IMAGE}", strings.SplitN(last.text, "\n", 2)[0])
	}
	// cgo links the target's libc: the module's stage runs on the target platform and
	// builds what make build builds.
	var module stage
	for _, st := range dockerfileStages(t) {
		if strings.Contains(st.text, "./extauthz/module") {
			module = st
		}
	}
	for _, want := range []string{"CGO_ENABLED=1", "-buildmode=c-shared", "-o /out/" + stack.ModuleFile} {
		if !strings.Contains(module.text, want) {
			t.Errorf("Dockerfile: the stage building ./extauthz/module lacks %q", want)
		}
	}
	if strings.Contains(strings.SplitN(module.text, "\n", 2)[0], "BUILDPLATFORM") {
		t.Errorf("Dockerfile: the module's stage runs on the build platform; cgo cannot cross-compile it")
	}
	if st := dockerfileStage(t, envoyTarget); !strings.HasPrefix(st.text, "FROM ${ENVOY_IMAGE} AS "+envoyTarget) || !strings.Contains(st.text, "COPY --from="+module.name+" /out/"+stack.ModuleFile+" ") {
		t.Errorf("Dockerfile: target %s must be ${ENVOY_IMAGE} with the module from stage %q:\n%s", envoyTarget, module.name, st.text)
	}
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(ignore))
	for _, want := range []string{".git", ".tools", ".run", "bin", "secrets"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
}

// socketVolume is the top-level volume holding the internal hops' sockets.
const socketVolume = "sockets"

// TestComposeSockets: the internal hops are unix sockets on one volume, a tmpfs owned by
// the uid every service on it runs as and closed to everyone else, mounted where the
// stack's settings put them in exactly the services that serve or dial them; none of
// them has a TCP port, published or exposed.
func TestComposeSockets(t *testing.T) {
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			p := load(t, v.envFile)
			vol, ok := p.Volumes[socketVolume]
			if !ok {
				t.Fatalf("no top-level volume %q", socketVolume)
			}
			opts := vol.DriverOpts
			if vol.Driver != "local" || opts["type"] != "tmpfs" || opts["device"] != "tmpfs" {
				t.Errorf("volume %s = %+v, want a local tmpfs", socketVolume, vol)
			}
			m := regexp.MustCompile(`^uid=(\d+),gid=(\d+),mode=0?700$`).FindStringSubmatch(opts["o"])
			if m == nil || m[1] != m[2] {
				t.Fatalf("volume %s o=%q, want uid=N,gid=N,mode=0700", socketVolume, opts["o"])
			}
			uid := m[1]

			// The services serving a socket (stack.Topology: a component's own, or the one
			// it runs inside), and Envoy, which dials them.
			want := []string{"envoy"}
			for _, c := range stack.Topology(composeAuthzInEnvoy(t)) {
				if host := cmp.Or(c.In, c.Name); c.Socket != "" && !slices.Contains(want, host) {
					want = append(want, host)
				}
			}
			slices.Sort(want)
			var mounting []string
			for _, name := range slices.Sorted(maps.Keys(p.Services)) {
				s := p.Services[name]
				for _, vm := range s.Volumes {
					if vm.Source != socketVolume {
						continue
					}
					mounting = append(mounting, name)
					if vm.Type != types.VolumeTypeVolume || vm.Target != stack.SocketMount || vm.ReadOnly {
						t.Errorf("%s mounts %s as %s at %s (read_only %v), want a writable volume at %s", name, socketVolume, vm.Type, vm.Target, vm.ReadOnly, stack.SocketMount)
					}
				}
				if !slices.Contains(want, name) {
					continue
				}
				// Every one runs as the volume's owner: llmedge's image by its USER.
				user := s.User
				if user == "" && slices.Contains(ownImage, name) {
					user = dockerfileUser(t)
				}
				if user != uid+":"+uid {
					t.Errorf("%s runs as %q, want %s:%s, the socket volume's owner", name, user, uid, uid)
				}
			}
			if !slices.Equal(mounting, want) {
				t.Errorf("services mounting %s: %v, want exactly %v", socketVolume, mounting, want)
			}

			// No TCP port for an internal hop: nothing published but health/debug/status
			// (TestComposePorts), nothing exposed.
			for _, name := range components {
				if s := service(t, p, name); len(s.Expose) > 0 {
					t.Errorf("%s exposes %v", name, s.Expose)
				}
			}

			// Every socket address in compose is the stack's.
			cp, ea, rl, redis := service(t, p, "controlplane"), authzService(t, p), service(t, p, "ratelimit"), service(t, p, "redis")
			for what, c := range map[string][2]string{
				"controlplane --xds-listen":  {flagValue(cp.Command, "--xds-listen"), stack.Unix(mounted.XDS())},
				"extauthz LLMEDGE_XDS":       {env(ea, "LLMEDGE_XDS"), stack.Unix(mounted.XDS())},
				"ratelimit GRPC_UDS":         {env(rl, "GRPC_UDS"), mounted.Ratelimit(v.region)},
				"ratelimit xDS":              {env(rl, "CONFIG_GRPC_XDS_SERVER_URL"), stack.Unix(mounted.XDS())},
				"ratelimit REDIS_URL":        {env(rl, "REDIS_URL"), mounted.Redis()},
				"redis --unixsocket":         {flagValue(redis.Command, "--unixsocket"), mounted.Redis()},
				"redis --port":               {flagValue(redis.Command, "--port"), "0"},
				"redis --unixsocketperm":     {flagValue(redis.Command, "--unixsocketperm"), "600"},
				"redis healthcheck":          {strings.Join(redis.HealthCheck.Test, " "), "CMD-SHELL redis-cli -s " + mounted.Redis() + " ping | grep -q PONG"},
				"ratelimit removes its sock": {strings.Join(rl.Command, " "), `/bin/sh -c rm -f "$GRPC_UDS" && exec /bin/ratelimit`},
			} {
				if c[0] != c[1] {
					t.Errorf("%s = %q, want %q", what, c[0], c[1])
				}
			}
			// extauthz as a service of its own serves gRPC there; inside Envoy none.
			if want := stack.Unix(mounted.ExtAuthz(v.region)); ea.Name != "envoy" && env(ea, "LLMEDGE_GRPC_LISTEN") != want {
				t.Errorf("extauthz LLMEDGE_GRPC_LISTEN = %q, want %q", env(ea, "LLMEDGE_GRPC_LISTEN"), want)
			}
		})
	}
}

// dockerfileUser is the USER the llmedge image runs as.
func dockerfileUser(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	users := regexp.MustCompile(`(?m)^USER (\S+)$`).FindAllStringSubmatch(string(b), -1)
	if len(users) == 0 {
		t.Fatal("Dockerfile has no USER")
	}
	return users[len(users)-1][1]
}

// stateVolumes are the services that keep state and the named volume each keeps it on:
// the control plane, and Envoy for the extauthz inside it.
var stateVolumes = map[string]string{"controlplane": "llmedge-state", "envoy": "llmedge-extauthz-state"}

// stage is one stage of the Dockerfile: its name ("" if unnamed) and its lines.
type stage struct{ name, text string }

var fromLine = regexp.MustCompile(`(?m)^FROM (?:--platform=\S+ )?(\S+)(?: AS (\S+))?$`)

// dockerfileStages splits the Dockerfile into its stages; the last is the default target.
func dockerfileStages(t *testing.T) []stage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	idx := fromLine.FindAllStringSubmatchIndex(df, -1)
	if len(idx) == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	var out []stage
	for i, m := range idx {
		end := len(df)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		name := ""
		if m[4] >= 0 {
			name = df[m[4]:m[5]]
		}
		out = append(out, stage{name: name, text: df[m[0]:end]})
	}
	return out
}

// dockerfileStage is the stage a build target names ("" = the default target).
func dockerfileStage(t *testing.T, target string) stage {
	t.Helper()
	stages := dockerfileStages(t)
	if target == "" {
		return stages[len(stages)-1]
	}
	for _, st := range stages {
		if st.name == target {
			return st
		}
	}
	t.Fatalf("Dockerfile has no stage %q", target)
	return stage{}
}

// imageStage is the Dockerfile stage a service's image comes from: the target of the
// service that builds that image.
func imageStage(t *testing.T, p *types.Project, s types.ServiceConfig) stage {
	t.Helper()
	for _, b := range p.Services {
		if b.Build != nil && b.Image == s.Image {
			return dockerfileStage(t, b.Build.Target)
		}
	}
	t.Fatalf("%s: no service builds its image %q", s.Name, s.Image)
	return stage{}
}

// dockerfileArgs are the Dockerfile's ARG defaults.
func dockerfileArgs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	args := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^ARG ([A-Z_]+)=(\S+)$`).FindAllStringSubmatch(string(b), -1) {
		args[m[1]] = m[2]
	}
	return args
}

// TestComposeStateVolume: the control plane (last good routes YAML, usage ledger, access
// log files) and extauthz (its last caller policy) keep their state on persistent named
// volumes, each mounted writable exactly where its state dir points and used by no other
// service, while their root filesystems stay read-only; each volume is the image user's
// because the image has the directory with that owner (Docker fills a new named volume from
// it) and the mount lets Docker copy it.
func TestComposeStateVolume(t *testing.T) {
	copyLine := regexp.MustCompile(`(?m)^COPY --from=\S+ --chown=(\S+)(?: --chmod=(\S+))? (\S+) (\S+)$`)
	for _, v := range variants(t) {
		for svcName, stateVolume := range stateVolumes {
			t.Run(v.name+"/"+svcName, func(t *testing.T) {
				p := load(t, v.envFile)
				vol, ok := p.Volumes[stateVolume]
				if !ok {
					t.Fatalf("no top-level volume %q", stateVolume)
				}
				if vol.DriverOpts["type"] == "tmpfs" || bool(vol.External) {
					t.Errorf("volume %s = %+v, want a persistent local volume the project creates", stateVolume, vol)
				}
				svc := service(t, p, svcName)
				if !svc.ReadOnly {
					t.Errorf("%s: the root filesystem must stay read-only", svcName)
				}
				stateDir := flagValue(svc.Command, "--state-dir")
				if stateDir == "" {
					stateDir = env(svc, "LLMEDGE_STATE_DIR")
				}
				if stateDir == "" {
					t.Fatalf("%s has neither --state-dir nor LLMEDGE_STATE_DIR (command %v)", svcName, svc.Command)
				}
				var target string
				for _, vm := range svc.Volumes {
					if vm.Source != stateVolume {
						continue
					}
					target = vm.Target
					if vm.Type != types.VolumeTypeVolume || vm.ReadOnly || (vm.Volume != nil && vm.Volume.NoCopy) {
						t.Errorf("%s mounts %s as %+v, want a writable volume Docker fills from the image", svcName, stateVolume, vm)
					}
				}
				if target != stateDir {
					t.Errorf("%s: %s mounted at %q, but the state dir is %q", svcName, stateVolume, target, stateDir)
				}
				for name, s := range p.Services {
					for _, vm := range s.Volumes {
						if vm.Source == stateVolume && name != svcName {
							t.Errorf("%s mounts %s: only %s uses it", name, stateVolume, svcName)
						}
					}
				}

				// The directory comes from the stage the service's image is built from.
				st := imageStage(t, p, svc)
				user := svc.User
				if user == "" {
					users := regexp.MustCompile(`(?m)^USER (\S+)$`).FindAllStringSubmatch(st.text, -1)
					if len(users) == 0 {
						t.Fatalf("%s sets no user and its Dockerfile stage %q none either", svcName, st.name)
					}
					user = users[len(users)-1][1]
				}
				if user != "65532:65532" {
					t.Errorf("%s runs as %q, want 65532:65532", svcName, user)
				}
				owned := false
				for _, c := range copyLine.FindAllStringSubmatch(st.text, -1) {
					if strings.TrimSuffix(c[4], "/") != stateDir {
						continue
					}
					owned = true
					if c[1] != user {
						t.Errorf("Dockerfile: %s is --chown=%s, want %s (the user %s runs as)", stateDir, c[1], user, svcName)
					}
					if c[2] != "" && c[2] != "0700" {
						t.Errorf("Dockerfile: %s is --chmod=%s, want 0700", stateDir, c[2])
					}
				}
				if !owned {
					t.Errorf("Dockerfile stage %q (%s's image) does not create %s owned by %s: a new named volume would be root's", st.name, svcName, stateDir, user)
				}
			})
		}
	}
}

// TestComposeEnvoyRunsExtAuthz: the envoy service runs the region's extauthz inside it as
// the process stack does: the environment of stack.ExtAuthz.EnvoyEnv (the one place those
// settings are written) on the stack's sockets under stack.SocketMount, the keys secret's
// directory, the state volume, and the module directory its image has. Only the health
// listener's address differs, by design: 0.0.0.0, so Prometheus on the project network
// can scrape it.
func TestComposeEnvoyRunsExtAuthz(t *testing.T) {
	st := dockerfileStage(t, envoyTarget)
	m := regexp.MustCompile(`(?m)^COPY --from=\S+ /out/` + regexp.QuoteMeta(stack.ModuleFile) + ` (\S+)$`).FindStringSubmatch(st.text)
	if m == nil || path.Base(m[1]) != stack.ModuleFile {
		t.Fatalf("Dockerfile stage %s does not copy %s into a directory:\n%s", envoyTarget, stack.ModuleFile, st.text)
	}
	moduleDir := path.Dir(m[1])
	if e := regexp.MustCompile(`(?m)^ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=(\S+)$`).FindStringSubmatch(st.text); e == nil || e[1] != moduleDir {
		t.Errorf("Dockerfile stage %s: ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH %v, want %s", envoyTarget, e, moduleDir)
	}
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			p := load(t, v.envFile)
			envoy := authzService(t, p)
			if envoy.Name != "envoy" {
				t.Fatalf("extauthz runs in service %s, want envoy", envoy.Name)
			}
			var stateDir string
			for _, vm := range envoy.Volumes {
				if vm.Source == stateVolumes["envoy"] {
					stateDir = vm.Target
				}
			}
			httpListen := env(envoy, "LLMEDGE_HTTP_LISTEN")
			if host, p, err := net.SplitHostPort(httpListen); err != nil || host != "0.0.0.0" || p != "10200" {
				t.Errorf("envoy LLMEDGE_HTTP_LISTEN=%q, want 0.0.0.0:10200 (Prometheus' target)", httpListen)
			}
			want := stack.ExtAuthz{
				Region: v.region, XDSAddr: stack.Unix(mounted.XDS()), GRPCAddr: stack.Unix(mounted.ExtAuthz(v.region)),
				HTTPAddr: httpListen, KeysDir: keysTarget, RedisAddr: stack.Unix(mounted.Redis()), StateDir: stateDir,
			}.EnvoyEnv(moduleDir)
			wantKeys := []string{"ENVOY_UID"} // the image entrypoint's, not extauthz's
			for _, kv := range want {
				k, val, _ := strings.Cut(kv, "=")
				wantKeys = append(wantKeys, k)
				switch got := envoy.Environment[k]; {
				case got == nil:
					t.Errorf("compose envoy lacks %s (stack sets %q)", k, val)
				case *got != val:
					t.Errorf("compose envoy %s=%q, stack.ExtAuthz.EnvoyEnv sets %q", k, *got, val)
				}
			}
			for k := range envoy.Environment {
				if !slices.Contains(wantKeys, k) {
					t.Errorf("compose envoy sets %s, which stack.ExtAuthz.EnvoyEnv does not", k)
				}
			}
		})
	}
}

// envoyGlibc is the oldest glibc of the Envoy images the module must load in: Ubuntu
// 22.04's (envoyproxy/envoy is Ubuntu based).
var envoyGlibc = []int{2, 35}

// TestModuleGlibc: the module built as the Dockerfile builds it (cgo, on GO_IMAGE's
// Debian release) asks for no glibc symbol version newer than the Envoy image has;
// otherwise Envoy would fail to load it ("version `GLIBC_2.xx' not found"). It needs a host
// of GO_IMAGE's Debian release, where the same glibc headers pick the same versions.
func TestModuleGlibc(t *testing.T) {
	_, tag, _ := splitImage(dockerfileArgs(t)["GO_IMAGE"])
	release := tag[strings.LastIndex(tag, "-")+1:]
	osRelease, err := os.ReadFile("/etc/os-release")
	if err != nil || !regexp.MustCompile(`(?m)^VERSION_CODENAME=`+regexp.QuoteMeta(release)+`$`).Match(osRelease) {
		t.Skipf("the Dockerfile builds the module on Debian %s; this host is not (%v)", release, err)
	}
	out := filepath.Join(t.TempDir(), stack.ModuleFile)
	if err := stack.GoBuildModule(t.Context(), repoRoot(t), out); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.ImportedSymbols()
	if err != nil {
		t.Fatal(err)
	}
	newer := map[string][]string{}
	n := 0
	for _, sym := range syms {
		v, ok := strings.CutPrefix(sym.Version, "GLIBC_")
		if !ok {
			continue
		}
		n++
		var parts []int
		for _, f := range strings.Split(v, ".") {
			i, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("%s: symbol version %q", sym.Name, sym.Version)
			}
			parts = append(parts, i)
		}
		if slices.Compare(parts, envoyGlibc) > 0 {
			newer[sym.Version] = append(newer[sym.Version], sym.Name)
		}
	}
	if n == 0 {
		t.Fatalf("%s imports no versioned glibc symbol; the check would prove nothing", out)
	}
	if len(newer) > 0 {
		t.Errorf("the module needs glibc newer than %d.%d, the Envoy image's: %v", envoyGlibc[0], envoyGlibc[1], newer)
	}
}
