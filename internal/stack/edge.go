package stack

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"
)

// Edge is a whole edge as local processes: every component of Topology(AuthzInEnvoy)
// that has a process of its own, the PerRegion ones once for each of Regions, on the
// loopback ports of Ports, their internal hops on the unix sockets of Sockets. `make run`
// is an Edge.
type Edge struct {
	Runner
	Regions []string
	Ports   map[PortKey]int
	// Sockets is the directory of the internal hops' sockets (MakeSockets); the routes
	// YAML names the same extauthz and ratelimit sockets.
	Sockets Sockets
	// Routes is the routes YAML the control plane watches; KeysDir the provider keys
	// extauthz injects (<dir>/<upstream>/<name>).
	Routes, KeysDir string
	// EnvoyConcurrency is each Envoy's worker threads; default 1.
	EnvoyConcurrency int
	// EnvoyDrainTime is how long a stopping Envoy keeps accepting (Envoy.DrainTime);
	// default DefaultDrainTime.
	EnvoyDrainTime time.Duration
	// AuthzInEnvoy runs each region's extauthz inside its Envoy, as the dynamic module
	// (Paths.Module), instead of as a process: for routes YAML whose regions set
	// extauthz_in_envoy (make run's default, DefaultAuthzInEnvoy). Its health and metrics
	// stay on the extauthz ports, its gRPC on its socket.
	AuthzInEnvoy bool

	mu     sync.Mutex
	procs  []*Process // in start order
	envoys []*Process // also in procs
	redis  *RedisProcess
	// owner is the component (and region) each process runs, to start it again.
	owner map[*Process]member
	// starts, when set, replaces starters (tests).
	starts map[string]func(ctx context.Context, region string) error
	// backoff0 and backoffMax, when set, replace RestartBackoff and RestartBackoffMax (tests).
	backoff0, backoffMax time.Duration
}

// member is one component's process for one region ("" for an edge-wide one).
type member struct{ component, region string }

// How Supervise restarts a component that exited: after RestartBackoff, doubled for
// each exit that follows a run shorter than RestartResetAfter, up to RestartBackoffMax.
const (
	RestartBackoff    = time.Second
	RestartBackoffMax = 30 * time.Second
	RestartResetAfter = time.Minute
)

// Start starts every component in Topology order and returns once each is ready: the
// control plane serves a valid config, extauthz holds its policy, ratelimit has its
// limits and every Envoy is live. A component inside another (Component.In) starts with
// its host. On error the processes started so far are stopped.
func (e *Edge) Start(ctx context.Context) error {
	if missing := e.missingPorts(); len(missing) > 0 {
		return fmt.Errorf("stack: no port for %v", missing)
	}
	if e.Sockets.Dir == "" {
		return fmt.Errorf("stack: Edge.Sockets is not set (MakeSockets)")
	}
	starters := e.starters()
	for _, c := range Topology(e.AuthzInEnvoy) {
		if c.In != "" {
			continue
		}
		start, ok := starters[c.Name]
		if !ok {
			e.Stop()
			return fmt.Errorf("stack: Edge cannot start component %q", c.Name)
		}
		regions := []string{""}
		if c.Scope == PerRegion {
			regions = e.Regions
		}
		for _, r := range regions {
			if err := e.startMember(ctx, start, member{c.Name, r}); err != nil {
				e.Stop()
				return err
			}
		}
	}
	return nil
}

// startMember runs start for m and records the processes it added as m's; on error it
// stops and forgets them.
func (e *Edge) startMember(ctx context.Context, start func(context.Context, string) error, m member) error {
	e.mu.Lock()
	before := len(e.procs)
	e.mu.Unlock()
	err := start(ctx, m.region)
	e.mu.Lock()
	added := append([]*Process(nil), e.procs[before:]...)
	if e.owner == nil {
		e.owner = map[*Process]member{}
	}
	for _, p := range added {
		e.owner[p] = m
	}
	e.mu.Unlock()
	if err != nil {
		StopAll(added...)
		for _, p := range added {
			e.forget(p)
		}
	}
	return err
}

// forget drops an exited process from the edge's lists.
func (e *Edge) forget(p *Process) {
	e.mu.Lock()
	defer e.mu.Unlock()
	drop := func(ps []*Process) []*Process {
		out := ps[:0]
		for _, q := range ps {
			if q != p {
				out = append(out, q)
			}
		}
		return out
	}
	e.procs, e.envoys = drop(e.procs), drop(e.envoys)
	delete(e.owner, p)
}

// port returns the port of a component's role (Start checked they all exist).
func (e *Edge) port(component, region, role string) int {
	return e.Ports[PortKey{component, region, role}]
}

func (e *Edge) addr(component, region, role string) string {
	return Loopback(e.port(component, region, role))
}

func (e *Edge) missingPorts() []PortKey {
	var missing []PortKey
	for _, k := range PortKeys(e.Regions) {
		if e.Ports[k] == 0 {
			missing = append(missing, k)
		}
	}
	return missing
}

// ControlPlaneStateDir is the control plane's --state-dir in a stack run from dir: its last
// good routes YAML, and the usage ledger and access log files (which run because it is set).
func ControlPlaneStateDir(dir string) string { return filepath.Join(dir, "state", "controlplane") }

func (e *Edge) add(p *Process) {
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
}

// starters start one component (for one region) and wait until it is ready.
func (e *Edge) starters() map[string]func(ctx context.Context, region string) error {
	xds, sock := Unix(e.Sockets.XDS()), e.Sockets
	return map[string]func(context.Context, string) error{
		"redis": func(ctx context.Context, _ string) error {
			rp, err := e.StartRedis(ctx, Redis{Socket: sock.Redis(), Dir: filepath.Join(e.Dir, "redis")})
			if err != nil {
				return err
			}
			e.redis = rp
			e.add(rp.Process())
			return nil
		},
		"fakellm": func(ctx context.Context, _ string) error {
			p, err := e.StartFakellm(ctx, "fakellm", Fakellm{Addr: e.addr("fakellm", "", RoleHTTP)})
			if err != nil {
				return err
			}
			e.add(p)
			return nil
		},
		"controlplane": func(ctx context.Context, _ string) error {
			cp := ControlPlane{Config: e.Routes, XDSAddr: xds, HTTPAddr: e.addr("controlplane", "", RoleHTTP),
				StateDir: ControlPlaneStateDir(e.Dir), CPUNice: LocalControlPlaneNice}
			p, err := e.StartControlPlane(ctx, "controlplane", cp)
			if err != nil {
				return err
			}
			e.add(p)
			return p.Await(ctx, LlmedgeStartTimeout, HTTPStatus(cp.StatusURL()+"/readyz", http.StatusOK))
		},
		"extauthz": func(ctx context.Context, r string) error {
			p, err := e.StartExtAuthz(ctx, ProcessName("extauthz", r), e.extAuthz(r))
			if err != nil {
				return err
			}
			e.add(p)
			return nil
		},
		"ratelimit": func(ctx context.Context, r string) error {
			rl, err := e.StartRatelimit(ctx, ProcessName("ratelimit", r), Ratelimit{
				Region: r, XDSAddr: xds, RedisAddr: Unix(sock.Redis()),
				GRPCSocket: sock.Ratelimit(r), HTTPPort: e.port("ratelimit", r, RoleHTTP),
				DebugPort: e.port("ratelimit", r, RoleDebug), MetricsPort: e.port("ratelimit", r, RoleMetrics),
			})
			if err != nil {
				return err
			}
			e.add(rl.Process)
			return rl.WaitHealthy(ctx, RatelimitStartTimeout)
		},
		"envoy": func(ctx context.Context, r string) error {
			envoy := Envoy{
				Region: r, XDSAddr: xds, AdminPort: e.port("envoy", r, RoleAdmin),
				Concurrency: e.EnvoyConcurrency, DrainTime: e.EnvoyDrainTime,
			}
			if e.AuthzInEnvoy {
				if err := need("the dynamic module", e.Paths.Module); err != nil {
					return err
				}
				envoy.Env = e.extAuthz(r).EnvoyEnv(filepath.Dir(e.Paths.Module))
			}
			ep, err := e.StartEnvoy(ctx, ProcessName("envoy", r), envoy)
			if err != nil {
				return err
			}
			e.add(ep.Process)
			e.mu.Lock()
			e.envoys = append(e.envoys, ep.Process)
			e.mu.Unlock()
			if err := ep.WaitLive(ctx); err != nil {
				return err
			}
			if e.AuthzInEnvoy { // ready once the extauthz inside holds its policy
				return ep.Await(ctx, LlmedgeStartTimeout, HTTPStatus("http://"+e.addr("extauthz", r, RoleHTTP)+"/readyz", http.StatusOK))
			}
			return nil
		},
	}
}

// extAuthz is how a region's extauthz runs, as a process or inside its Envoy.
func (e *Edge) extAuthz(r string) ExtAuthz {
	return ExtAuthz{
		Region: r, XDSAddr: Unix(e.Sockets.XDS()), KeysDir: e.KeysDir, StateDir: filepath.Join(e.Dir, "state", ProcessName("extauthz", r)),
		GRPCAddr: Unix(e.Sockets.ExtAuthz(r)), HTTPAddr: e.addr("extauthz", r, RoleHTTP), RedisAddr: Unix(e.Sockets.Redis()),
	}
}

// Processes returns the running processes in start order.
func (e *Edge) Processes() []*Process {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Process(nil), e.procs...)
}

// Supervise keeps the edge running until ctx ends, as compose's `restart: unless-stopped`
// keeps its services: a process that exits is reported through logf, its log kept as
// <name>.<n>.log, and its component started again on the same ports and sockets, after
// RestartBackoff (doubled while it keeps exiting soon after a start, up to
// RestartBackoffMax; a failed start is retried the same way). Every other process runs
// on meanwhile: the Envoys keep serving on the config and policy they hold.
func (e *Edge) Supervise(ctx context.Context, logf func(format string, args ...any)) {
	starters, first, most := e.starts, RestartBackoff, RestartBackoffMax
	if starters == nil {
		starters = e.starters()
	}
	if e.backoff0 > 0 {
		first, most = e.backoff0, e.backoffMax
	}
	backoff := map[member]time.Duration{}
	started := map[member]time.Time{}
	exits := map[string]int{}
	for {
		procs := e.Processes()
		cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}}
		for _, p := range procs {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(p.Done())})
		}
		i, _, _ := reflect.Select(cases)
		if i == 0 {
			return
		}
		p := procs[i-1]
		e.mu.Lock()
		m, ok := e.owner[p]
		e.mu.Unlock()
		e.forget(p)
		exits[p.Name]++
		kept := strings.TrimSuffix(p.logPath, ".log") + fmt.Sprintf(".%d.log", exits[p.Name])
		if err := os.Rename(p.logPath, kept); err != nil {
			kept = p.logPath
		}
		if !ok {
			logf("%s exited (%v); see %s; it is not restarted", p.Name, p.waitErr, kept)
			continue
		}
		d := first
		if prev, ok := backoff[m]; ok && time.Since(started[m]) < RestartResetAfter {
			d = min(2*prev, most)
		}
		logf("%s exited (%v); see %s; starting it again in %v", p.Name, p.waitErr, kept, d)
		for {
			backoff[m] = d
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			err := e.startMember(ctx, starters[m.component], m)
			if err == nil {
				started[m] = time.Now()
				logf("%s started again", p.Name)
				break
			}
			if ctx.Err() != nil {
				return
			}
			d = min(2*d, most)
			logf("%s did not start again (%v); trying again in %v", p.Name, err, d)
		}
	}
}

// Stop drains the Envoys (EnvoyProcess.Drain) while everything behind them still runs,
// so the requests in flight finish, then stops the rest (SIGTERM, then SIGKILL after
// StopGrace).
func (e *Edge) Stop() {
	e.mu.Lock()
	envoys := append([]*Process(nil), e.envoys...)
	e.mu.Unlock()
	StopAll(envoys...)
	StopAll(e.Processes()...)
}
