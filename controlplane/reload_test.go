package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/translate"
	authzv1 "github.com/llmedge/llmedge/proto/llmedge/authz/v1"
)

// Two callers: alice may use openai (hk and sg), bob only gemini (sg).
const (
	aliceDigest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	bobDigest   = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	withCallers = routesYAML + `callers:
  alice: {tokens: [` + aliceDigest + `], upstreams: [openai]}
  bob: {tokens: [` + bobDigest + `], upstreams: [gemini]}
`
)

// TestDestructiveEditIsHeld: the first half of a torn write (everything before callers:)
// is valid but would refuse every request; it is held, shown as pending, and dropped once
// the second half lands.
func TestDestructiveEditIsHeld(t *testing.T) {
	c := startWith(t, withCallers, func(o *Options) { o.Settle = time.Hour })
	good := c.status(t)
	if good.Config.Pending != nil || !good.Config.Valid {
		t.Fatalf("initial config: %+v", good.Config)
	}

	c.write(t, routesYAML) // cut before callers:
	var st Status
	eventually(t, waitFor, func() error {
		st = c.status(t)
		if st.Config.Pending == nil {
			return fmt.Errorf("no pending edit yet")
		}
		return nil
	})
	p := st.Config.Pending
	if st.Config.Hash != good.Config.Hash || !st.Config.Valid {
		t.Errorf("the held edit was applied: hash %s, valid %v", st.Config.Hash, st.Config.Valid)
	}
	if !slices.Equal(p.Removes.RegionsWithoutCallers, []string{"hk", "sg"}) || p.Removes.Callers.Removed != 2 ||
		!slices.Equal(p.Removes.Callers.Names, []string{"alice", "bob"}) {
		t.Errorf("pending removes %+v; want both callers and both regions left without one", p.Removes)
	}
	if !p.AppliesAt.Equal(p.Since.Add(time.Hour)) || len(p.Reasons) == 0 {
		t.Errorf("pending %+v: want applies_at = since + settle and reasons", p)
	}
	if got := c.count(t, "llmedge_config_reloads_total", reloads("pending")); got != 1 {
		t.Errorf("reloads{result=pending} = %v, want 1", got)
	}
	if diff := fmt.Sprint(regionVersions(good)); diff != fmt.Sprint(regionVersions(st)) {
		t.Errorf("versions changed while the edit was held: %v -> %v", regionVersions(good), regionVersions(st))
	}
	// The log line follows the status update: poll for it.
	var logs string
	eventually(t, waitFor, func() error {
		if logs = c.logs.String(); !strings.Contains(logs, "destructive routes edit held back") || !strings.Contains(logs, "alice") {
			return fmt.Errorf("the log does not report the held edit and what it removes:\n%s", logs)
		}
		return nil
	})
	for _, secret := range []string{aliceDigest[7:], bobDigest[7:]} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds a token digest")
		}
	}

	// The second half lands: the whole file is the old one plus nothing; pending is gone.
	c.write(t, withCallers)
	eventually(t, waitFor, func() error {
		if st = c.status(t); st.Config.Pending != nil {
			return fmt.Errorf("still pending after the file was completed")
		}
		return nil
	})
	if fmt.Sprint(regionVersions(good)) != fmt.Sprint(regionVersions(st)) {
		t.Errorf("versions changed by a torn write: %v -> %v", regionVersions(good), regionVersions(st))
	}
	if st.Config.Hash != good.Config.Hash || !st.Config.AppliedAt.Equal(*good.Config.AppliedAt) || !st.Config.Valid {
		t.Errorf("the completed file is the serving one, yet status says hash %s applied %v valid %v (was %s %v)",
			st.Config.Hash, st.Config.AppliedAt, st.Config.Valid, good.Config.Hash, good.Config.AppliedAt)
	}
	eventually(t, waitFor, func() error {
		if !strings.Contains(c.logs.String(), "held destructive edit withdrawn") {
			return fmt.Errorf("the log does not say the held edit was withdrawn")
		}
		return nil
	})
}

// TestDestructiveEditAppliesAfterSettle: a deliberate mass removal is applied once the
// file has stayed unchanged for the settle period.
func TestDestructiveEditAppliesAfterSettle(t *testing.T) {
	c := startWith(t, withCallers, func(o *Options) { o.Settle = 200 * time.Millisecond })
	good := c.status(t)
	// Only gemini's route is left: hk loses every route, two of three routes go.
	onlyGemini := strings.Replace(strings.Replace(withCallers, "  openai:\n    match: {prefix: /openai}\n    upstream: openai\n    prefix_rewrite: /\n", "", 1),
		"  anthropic:\n    match: {prefix: /anthropic}\n    upstream: anthropic\n    prefix_rewrite: /\n", "", 1)
	if onlyGemini == withCallers {
		t.Fatal("the edit changed nothing")
	}
	c.write(t, onlyGemini)
	eventually(t, waitFor, func() error {
		st := c.status(t)
		if st.Config.Hash == good.Config.Hash || st.Config.Pending != nil {
			return fmt.Errorf("not applied yet (pending %v, errors %v)", st.Config.Pending != nil, st.Config.Errors)
		}
		return nil
	})
	if got := c.count(t, "llmedge_config_reloads_total", reloads("pending")); got < 1 {
		t.Errorf("reloads{result=pending} = %v: the removal was applied without being held", got)
	}
	eventually(t, waitFor, func() error {
		if !strings.Contains(c.logs.String(), "leaves region(s) hk with no route") {
			return fmt.Errorf("the log does not say what the applied edit removed:\n%s", c.logs.String())
		}
		return nil
	})
}

// TestOrdinaryEditIsNotHeld: removing one route of three, or one caller of two that
// leaves every region served, applies at once.
func TestOrdinaryEditIsNotHeld(t *testing.T) {
	c := startWith(t, withCallers+"  carol: {tokens: [sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc], upstreams: [openai, gemini]}\n",
		func(o *Options) { o.Settle = time.Hour })
	good := c.status(t)
	c.write(t, strings.Replace(withCallers, "  anthropic:\n    match: {prefix: /anthropic}\n    upstream: anthropic\n    prefix_rewrite: /\n", "", 1))
	eventually(t, waitFor, func() error {
		if st := c.status(t); st.Config.Hash == good.Config.Hash {
			return fmt.Errorf("not applied yet (pending %+v)", st.Config.Pending)
		}
		return nil
	})
	if got := c.count(t, "llmedge_config_reloads_total", reloads("pending")); got != 0 {
		t.Errorf("reloads{result=pending} = %v for an ordinary edit", got)
	}
}

// fakeProvider serves routes from memory. A load can be made to block until its context
// is cancelled, or to hang, ignoring its context, until the test ends.
type fakeProvider struct {
	mu        sync.Mutex
	doc       string
	mode      string // "", "block" or "hang"
	blocked   int    // loads that have begun to block
	cancelled int    // blocked loads whose context was cancelled
	changed   chan<- struct{}
	watching  chan struct{}
	hang      chan struct{}
}

func newFakeProvider(t *testing.T, doc string) *fakeProvider {
	p := &fakeProvider{doc: doc, watching: make(chan struct{}), hang: make(chan struct{})}
	t.Cleanup(func() { close(p.hang) })
	return p
}

func (p *fakeProvider) String() string { return "memory:routes" }

func (p *fakeProvider) Load(ctx context.Context) (*config.Snapshot, error) {
	p.mu.Lock()
	doc, mode := p.doc, p.mode
	p.mu.Unlock()
	switch mode {
	case "block":
		p.mu.Lock()
		p.blocked++
		p.mu.Unlock()
		<-ctx.Done()
		p.mu.Lock()
		p.cancelled++
		p.mu.Unlock()
		return nil, ctx.Err()
	case "hang":
		<-p.hang
	}
	return config.NewSnapshot([]config.Document{{Name: "routes.yaml", Data: []byte(doc)}}), nil
}

func (p *fakeProvider) Watch(ctx context.Context, changed chan<- struct{}) error {
	p.mu.Lock()
	p.changed = changed
	p.mu.Unlock()
	close(p.watching)
	<-ctx.Done()
	return nil
}

// edit changes the routes and signals the change.
func (p *fakeProvider) edit(t *testing.T, doc, mode string) {
	t.Helper()
	select {
	case <-p.watching:
	case <-time.After(waitFor):
		t.Fatal("the control plane never started watching")
	}
	p.mu.Lock()
	p.doc, p.mode = doc, mode
	ch := p.changed
	p.mu.Unlock()
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (p *fakeProvider) cancelledLoads() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cancelled
}

func (p *fakeProvider) blockedLoads() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blocked
}

// TestNewerEditAbandonsReload: a reload in progress shows on /status and is cancelled when
// a newer edit arrives; the newer edit is applied.
func TestNewerEditAbandonsReload(t *testing.T) {
	p := newFakeProvider(t, routesYAML)
	c := startWith(t, "", func(o *Options) { o.Provider = p })
	good := c.status(t)
	if good.Config.Path != "memory:routes" || !good.Config.Valid {
		t.Fatalf("initial status %+v", good.Config)
	}

	p.edit(t, routesYAML, "block")
	eventually(t, waitFor, func() error {
		if st := c.status(t); st.Config.Reloading == nil || st.Config.Reloading.Since.IsZero() {
			return fmt.Errorf("no reload in progress on /status")
		}
		// /status shows the reload from its start, before its goroutine reads the files:
		// the newer edit must come once the load is blocked, or that load reads it instead.
		if n := p.blockedLoads(); n != 1 {
			return fmt.Errorf("%d loads blocked, want 1", n)
		}
		return nil
	})
	edited := strings.Replace(routesYAML, "/gemini}", "/gemini/}", 1)
	p.edit(t, edited, "")
	eventually(t, waitFor, func() error {
		st := c.status(t)
		if st.Config.Hash == good.Config.Hash || st.Config.Reloading != nil {
			return fmt.Errorf("newer edit not applied yet (reloading %v)", st.Config.Reloading)
		}
		return nil
	})
	// The abandoned load notices its cancellation on its own goroutine, which the control
	// plane does not wait for: it may count after the newer edit is in force.
	eventually(t, waitFor, func() error {
		if n := p.cancelledLoads(); n != 1 {
			return fmt.Errorf("%d blocked loads were cancelled, want 1", n)
		}
		return nil
	})
	if got := c.count(t, "llmedge_config_reloads_total", reloads("abandoned")); got != 1 {
		t.Errorf("reloads{result=abandoned} = %v, want 1", got)
	}
}

// TestRunStopsDuringReload: a reload that never finishes (not even when cancelled) does not
// hold shutdown up, whether it is the first load or a later one.
func TestRunStopsDuringReload(t *testing.T) {
	for _, first := range []bool{true, false} {
		t.Run(fmt.Sprintf("first=%v", first), func(t *testing.T) {
			p := newFakeProvider(t, routesYAML)
			if first {
				p.mode = "hang"
			}
			m, err := New(Options{Provider: p, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			if !first {
				select {
				case <-m.Ready():
				case <-time.After(waitFor):
					t.Fatal("not ready")
				}
				p.edit(t, routesYAML+"# edited\n", "hang")
				eventually(t, waitFor, func() error {
					if m.Status().Config.Reloading == nil {
						return fmt.Errorf("no reload in progress")
					}
					return nil
				})
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(waitFor):
				t.Fatal("Run did not return while a reload hung")
			}
		})
	}
}

// TestRoutesPastLimitKeepLastGood: a file past the entry limit is refused with an error
// naming the limit, and the last good config keeps serving.
func TestRoutesPastLimitKeepLastGood(t *testing.T) {
	c := startWith(t, routesYAML, func(o *Options) { o.Limits = config.Limits{MaxEntries: 3} })
	good := c.status(t)
	c.write(t, strings.Replace(routesYAML, "routes:\n", "routes:\n  extra: {match: {prefix: /extra}, upstream: openai}\n", 1))
	var st Status
	eventually(t, waitFor, func() error {
		if st = c.status(t); st.Config.Valid {
			return fmt.Errorf("the edit was not rejected (yet)")
		}
		return nil
	})
	if st.Config.Hash != good.Config.Hash {
		t.Fatalf("a file past the limit was applied: %+v", st.Config)
	}
	if len(st.Config.Errors) != 1 || st.Config.Errors[0].Path != "routes" || !strings.Contains(st.Config.Errors[0].Msg, "4 entries; at most 3") {
		t.Errorf("errors %+v; want one naming routes and the limit", st.Config.Errors)
	}
}

func TestStatusShowsEffectiveUpstreamURL(t *testing.T) {
	t.Setenv("LLMEDGE_UPSTREAMS_OPENAI_URL", "https://proxy.example.com:8443/openai")
	c := start(t, routesYAML)
	st := c.status(t)
	got := map[string]UpstreamStatus{}
	for _, u := range st.Upstreams {
		got[u.Name] = u
	}
	if u := got["openai"]; u.URL != "https://proxy.example.com:8443/openai" || u.Connect != "proxy.example.com:8443" {
		t.Errorf("openai = %+v; want the URL from the environment", u)
	}
	if u := got["gemini"]; u.URL != "http://127.0.0.1:8090" || !slices.Equal(u.AllowedRegions, []string{"sg"}) {
		t.Errorf("gemini = %+v", u)
	}
}

// TestRegionCallersMatchPolicy pins config's "callers of a region" (which decides whether
// an edit leaves a region without callers) to translate's authz policy, which decides who
// the region's extauthz admits.
func TestRegionCallersMatchPolicy(t *testing.T) {
	_, cfg, err := config.Build(t.Context(), config.NewSnapshot([]config.Document{{Name: "r.yaml", Data: []byte(withCallers)}}), config.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	all, err := translate.All(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, region := range cfg.RegionNames() {
		var p authzv1.Policy
		if err := all[region].Policy.GetTypedConfig().UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		for _, caller := range cfg.Callers {
			inPolicy := slices.ContainsFunc(p.Callers, func(c *authzv1.Caller) bool { return c.Name == caller.Name })
			// Removing this one caller leaves the region without callers exactly when the
			// policy held it alone.
			next := *cfg
			next.Callers = slices.DeleteFunc(slices.Clone(cfg.Callers), func(c2 model.Caller) bool { return c2.Name == caller.Name })
			alone := inPolicy && len(p.Callers) == 1
			got := slices.Contains(config.Compare(cfg, &next).RegionsWithoutCallers, region)
			if got != alone {
				t.Errorf("region %s, caller %s: Compare says left without callers = %v, policy says %v", region, caller.Name, got, alone)
			}
		}
	}
}

// TestCancelDuringHugeReload: the routes YAML is replaced by a 100,000-route file and the
// control plane is stopped while it reloads: Run returns within a deadline, without waiting
// for the reload (the process stops promptly on SIGTERM, which cancels this context).
func TestCancelDuringHugeReload(t *testing.T) {
	var b strings.Builder
	b.WriteString(routesYAML)
	for i := range 100_000 {
		fmt.Fprintf(&b, "  r%d:\n    match: {prefix: /r%d/}\n    upstream: openai\n", i, i)
	}
	huge := b.String()
	c := start(t, routesYAML)
	// Run's first check of the watched files (unchanged) is over before the edit.
	eventually(t, waitFor, func() error {
		if c.count(t, "llmedge_config_reloads_total", reloads("unchanged")) < 1 {
			return fmt.Errorf("the first check has not run")
		}
		return nil
	})
	c.write(t, huge)
	eventually(t, waitFor, func() error {
		if st := c.status(t); st.Config.Reloading == nil {
			return fmt.Errorf("no reload in progress")
		}
		return nil
	})
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
		c.done <- err // for the cleanup
	case <-time.After(waitFor):
		t.Fatal("Run did not return while reloading a 100,000-route file")
	}
}
