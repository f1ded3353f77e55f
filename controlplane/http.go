package controlplane

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/page"
	"github.com/llmedge/llmedge/controlplane/probe"
	"github.com/llmedge/llmedge/controlplane/translate"
	"github.com/llmedge/llmedge/controlplane/xds"
)

// Status is the JSON document served at /status.
type Status struct {
	Config  ConfigStatus   `json:"config"`
	Regions []RegionStatus `json:"regions"`
	// Upstreams are the serving config's upstreams as Envoy reaches them, environment
	// overrides (LLMEDGE_UPSTREAMS_<NAME>_URL) applied.
	Upstreams []UpstreamStatus `json:"upstreams"`
	// Unassigned lists connected nodes whose region the serving config does not define;
	// they receive no configuration.
	Unassigned []xds.Node `json:"unassigned_nodes"`
	// Probes are the synthetic probes' latest results (see docs/CONFIG.md#probes).
	Probes ProbesStatus `json:"probes"`
	// Alerts are the active alerts, silences and notifier health (docs/CONFIG.md#alerts).
	Alerts *alert.Status `json:"alerts,omitempty"`
}

// ProbesStatus is the probes section in force and the latest result per region and
// upstream. The probe caller is named; its token never appears.
type ProbesStatus struct {
	Enabled  bool           `json:"enabled"`
	Caller   string         `json:"caller,omitempty"`
	Interval string         `json:"interval,omitempty"`
	Results  []probe.Result `json:"results"`
}

func probesStatus(p *probe.Prober) ProbesStatus {
	out := ProbesStatus{Results: p.Results()}
	if cfg := p.Config(); cfg != nil {
		out.Enabled, out.Caller, out.Interval = true, cfg.Caller, cfg.Interval.String()
	}
	return out
}

// ConfigStatus describes the routes YAML: what is serving and what the last check found.
type ConfigStatus struct {
	Path      string     `json:"path"`
	Files     []string   `json:"files"`
	Hash      string     `json:"hash,omitempty"`
	AppliedAt *time.Time `json:"applied_at,omitempty"`
	CheckedAt *time.Time `json:"checked_at,omitempty"`
	// Valid is false when the last edit was rejected; Errors then lists every problem and
	// the config described by Hash/AppliedAt is still the one serving.
	Valid    bool                `json:"valid"`
	Errors   []config.FieldError `json:"errors"`
	Warnings []string            `json:"warnings"`
	// Pending is a valid but destructive edit held back until the files have stayed
	// unchanged for the settle period; the config described by Hash keeps serving.
	Pending *PendingStatus `json:"pending,omitempty"`
	// Reloading is set while a reload runs (a newer edit abandons it and starts another).
	Reloading *ReloadingStatus `json:"reloading,omitempty"`
	// Source is where the serving config came from: "routes" (the routes YAML) or "saved"
	// (the last good copy in --state-dir, served because the routes YAML was missing or
	// invalid at start-up; SavedAt says when it was saved); "" while nothing serves.
	Source  string     `json:"source"`
	SavedAt *time.Time `json:"saved_at,omitempty"`
	// SaveError is the last failure to keep the applied config in --state-dir.
	SaveError string `json:"save_error,omitempty"`
}

// PendingStatus is a destructive edit waiting to be applied.
type PendingStatus struct {
	Hash      string         `json:"hash"`
	Since     time.Time      `json:"since"`
	AppliesAt time.Time      `json:"applies_at"` // if the files stay unchanged until then
	Reasons   []string       `json:"reasons"`
	Removes   config.Removal `json:"removes"`
}

// ReloadingStatus is the reload in progress.
type ReloadingStatus struct {
	Since time.Time `json:"since"`
}

// UpstreamStatus is where one upstream's requests go. URL is the effective URL (never
// with credentials: the config refuses them); Connect is where Envoy connects when an
// endpoint overrides the URL's host. Keys are never part of it.
type UpstreamStatus struct {
	Name           string   `json:"name"`
	URL            string   `json:"url"`
	Connect        string   `json:"connect"`
	API            string   `json:"api,omitempty"`
	AllowedRegions []string `json:"allowed_regions"`
}

func upstreamStatus(u model.Upstream) UpstreamStatus {
	url := u.Scheme + "://" + u.Authority + u.BasePath
	return UpstreamStatus{
		Name: u.Name, URL: url, Connect: joinHostPort(u.ConnectHost, u.ConnectPort),
		API: string(u.API), AllowedRegions: append([]string{}, u.AllowedRegions...),
	}
}

// RegionStatus is one region: the versions served and every connected node.
type RegionStatus struct {
	Name      string            `json:"name"`
	Listen    string            `json:"listen"`
	Upstreams []string          `json:"upstreams"`
	Versions  map[string]string `json:"versions"`
	Nodes     []NodeStatus      `json:"nodes"`
	// Limits are the quotas in force in this region, as the region's ratelimit enforces
	// them once it has ACKed the ratelimit_config version.
	Limits []LimitStatus `json:"limits"`
	// InSync is true when every connected node has ACKed every served version.
	InSync bool `json:"in_sync"`
}

// LimitStatus is one quota in force.
type LimitStatus struct {
	Name     string `json:"name"` // its field path in the routes YAML
	Caller   string `json:"caller,omitempty"`
	Upstream string `json:"upstream,omitempty"`
	Requests uint32 `json:"requests,omitempty"`
	Tokens   uint32 `json:"tokens,omitempty"`
	Model    string `json:"model,omitempty"`
	Per      string `json:"per"`
	Shadow   bool   `json:"shadow,omitempty"`
}

// regionLimits lists what translate decided the region enforces; it does not decide itself.
func regionLimits(cfg *model.Config, r model.Region) []LimitStatus {
	out := []LimitStatus{}
	for _, q := range translate.Quotas(cfg, r.Name) {
		l := q.Limit
		out = append(out, LimitStatus{Name: l.Name, Caller: q.Caller, Upstream: q.Upstream, Requests: l.Requests, Tokens: l.Tokens, Model: l.Model, Per: string(l.Unit), Shadow: l.Shadow})
	}
	return out
}

// NodeStatus is a node plus whether it runs the versions served to its region.
type NodeStatus struct {
	xds.Node
	InSync bool `json:"in_sync"`
}

// Status reports the current state.
func (m *Main) Status() Status { return m.status(true) }

func (m *Main) status(withAlerts bool) Status {
	m.mu.Lock()
	st := m.state
	m.mu.Unlock()
	out := Status{
		Config: ConfigStatus{
			Path:      m.src.String(),
			Files:     st.files,
			Valid:     st.errors == nil && st.applied != nil,
			Errors:    []config.FieldError(st.errors),
			Warnings:  []string{},
			Source:    st.source,
			SaveError: st.saveError,
		},
		Regions:    []RegionStatus{},
		Upstreams:  []UpstreamStatus{},
		Unassigned: []xds.Node{},
		Probes:     probesStatus(m.prober),
	}
	if !st.reloadingSince.IsZero() {
		out.Config.Reloading = &ReloadingStatus{Since: st.reloadingSince}
	}
	if p := st.pending; p != nil {
		out.Config.Pending = &PendingStatus{
			Hash: p.hash, Since: p.since, AppliesAt: p.since.Add(m.opts.Settle),
			Reasons: p.removal.Reasons(), Removes: p.removal,
		}
	}
	if !st.savedAt.IsZero() {
		t := st.savedAt
		out.Config.SavedAt = &t
	}
	if out.Config.Errors == nil {
		out.Config.Errors = []config.FieldError{}
	}
	if !st.checkedAt.IsZero() {
		t := st.checkedAt
		out.Config.CheckedAt = &t
	}
	versions := m.xds.Versions()
	nodes := m.xds.Tracker().Nodes()
	if st.applied != nil {
		t := st.appliedAt
		out.Config.AppliedAt = &t
		out.Config.Hash = st.appliedHash
		out.Config.Warnings = append(out.Config.Warnings, st.applied.Warnings...)
		for _, u := range st.applied.Upstreams {
			out.Upstreams = append(out.Upstreams, upstreamStatus(u))
		}
		for _, r := range st.applied.Regions {
			rs := RegionStatus{
				Name:      r.Name,
				Listen:    joinHostPort(r.ListenAddress, r.ListenPort),
				Upstreams: append([]string{}, r.Upstreams...),
				Versions:  versions[r.Name],
				Nodes:     []NodeStatus{},
				Limits:    regionLimits(st.applied, r),
				InSync:    true,
			}
			for _, n := range nodes {
				if n.Region != r.Name {
					continue
				}
				// A node is in sync when it runs the served version of every type it asked
				// for; Envoys never ask for the authz policy, extauthz only for that.
				// An Envoy that asked for listeners needs their routes too, even before its
				// RDS request arrives.
				want := n.Subscribed
				if slices.Contains(want, "listeners") && !slices.Contains(want, "routes") {
					want = append(slices.Clone(want), "routes")
				}
				ns := NodeStatus{Node: n, InSync: len(want) > 0}
				for _, typ := range want {
					if n.Acked[typ] != rs.Versions[typ] {
						ns.InSync = false
					}
				}
				rs.InSync = rs.InSync && ns.InSync
				rs.Nodes = append(rs.Nodes, ns)
			}
			out.Regions = append(out.Regions, rs)
		}
	}
	for _, n := range nodes {
		if _, ok := versions[n.Region]; !ok {
			out.Unassigned = append(out.Unassigned, n)
		}
	}
	if withAlerts && m.alerts != nil {
		a := m.alerts.Status(time.Now())
		out.Alerts = &a
	}
	return out
}

func (m *Main) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.Status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		ready, source := m.state.applied != nil, m.state.source
		m.mu.Unlock()
		if !ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "no valid routes config has been loaded yet; see /status"})
			return
		}
		if source == SourceSaved {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "source": source,
				"reason": "serving the last good config saved in --state-dir: the routes YAML was unusable at start-up; see /status"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /usage/", m.serveUsage)
	mux.HandleFunc("GET /usage", m.serveUsage)
	pg := page.Handler()
	mux.Handle("GET /{$}", pg)
	mux.Handle("GET "+page.Prefix, pg)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": map[string]string{
			"message": "not found; endpoints: / (status page), /status, /healthz, /readyz, /metrics, /usage, /usage/export",
		}})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// serveUsage answers the usage ledger's queries; the ledger is set before serving starts.
func (m *Main) serveUsage(w http.ResponseWriter, r *http.Request) {
	if m.ledger == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": map[string]string{
			"message": "the usage ledger is off (the control plane runs without --state-dir)",
		}})
		return
	}
	m.usageHTTP.ServeHTTP(w, r)
}
