package deploy_test

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/prometheus/prometheus/model/rulefmt"
	"sigs.k8s.io/yaml"
)

var observability = []string{"grafana", "prometheus"}

// pinnedTag is a release tag: a version, never latest or a moving major.
var pinnedTag = regexp.MustCompile(`:v?\d+\.\d+\.\d+$`)

func withProfiles(ps ...string) loadOpt {
	return func(o *[]cli.ProjectOptionsFn) { *o = append(*o, cli.WithProfiles(ps)) }
}

// TestComposeObservabilityProfile: `--profile observability` adds Prometheus and Grafana
// on pinned images, wired to files of deploy/ that exist, scraping the components where
// compose makes them listen; the default set stays without them.
func TestComposeObservabilityProfile(t *testing.T) {
	root := repoRoot(t)
	if got := load(t, ""); slices.ContainsFunc(observability, func(s string) bool { _, ok := got.Services[s]; return ok }) {
		t.Errorf("the default project includes %v; they belong to the observability profile only", observability)
	}
	p := load(t, "", withProfiles("demo", "observability"))
	if got, want := slices.Sorted(maps.Keys(p.Services)), slices.Sorted(slices.Values(append(slices.Clone(components), observability...))); !slices.Equal(got, want) {
		t.Errorf("services with profiles demo,observability = %v, want %v", got, want)
	}
	for _, name := range observability {
		s := service(t, p, name)
		if !slices.Equal(s.Profiles, []string{"observability"}) {
			t.Errorf("%s profiles = %v, want [observability]", name, s.Profiles)
		}
		if !pinnedTag.MatchString(s.Image) {
			t.Errorf("%s image %q is not pinned to a release tag", name, s.Image)
		}
		for _, v := range s.Volumes {
			if v.Type != "bind" {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s, which does not exist: %v", name, v.Source, err)
			}
			if !v.ReadOnly {
				t.Errorf("%s mounts %s writable", name, v.Target)
			}
			if rel, err := filepath.Rel(root, v.Source); err != nil || !strings.HasPrefix(rel, "deploy"+string(filepath.Separator)) {
				t.Errorf("%s mounts %s from outside deploy/", name, v.Source)
			}
		}
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %s on %q; loopback only", name, port.Published, port.HostIP)
			}
		}
	}

	// The scrape targets are where compose makes each component listen.
	var prom struct {
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			MetricsPath   string `json:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, filepath.Join(root, "deploy/prometheus/prometheus.yml"), &prom)
	targets := map[string]string{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				targets[tg] = sc.MetricsPath
			}
		}
	}
	cpPort := port(t, "controlplane --http-listen", flagValue(service(t, p, "controlplane").Command, "--http-listen"))
	authz := authzService(t, p)
	authzPort := port(t, authz.Name+" LLMEDGE_HTTP_LISTEN", env(authz, "LLMEDGE_HTTP_LISTEN"))
	rlPort := port(t, "ratelimit PROMETHEUS_ADDR", env(service(t, p, "ratelimit"), "PROMETHEUS_ADDR"))
	want := map[string]string{
		"controlplane:" + itoa(cpPort):     "",
		authz.Name + ":" + itoa(authzPort): "",
		"ratelimit:" + itoa(rlPort):        "",
		"envoy:9901":                       "/stats/prometheus",
	}
	if !maps.Equal(targets, want) {
		t.Errorf("prometheus scrape targets = %v, want %v", targets, want)
	}
	mounted := map[string]bool{}
	for _, v := range service(t, p, "prometheus").Volumes {
		mounted[v.Target] = true
	}
	for _, rf := range prom.RuleFiles {
		if !mounted[rf] {
			t.Errorf("prometheus.yml loads %s, which compose does not mount", rf)
		}
	}
	if env(service(t, p, "ratelimit"), "USE_PROMETHEUS") != "true" {
		t.Error("ratelimit does not expose Prometheus metrics; the ratelimit job would scrape nothing")
	}
}

// TestPrometheusAlertRules parses deploy/prometheus/alerts.yml with Prometheus' own rule
// parser (PromQL expressions and templates included).
func TestPrometheusAlertRules(t *testing.T) {
	path := filepath.Join(repoRoot(t), "deploy/prometheus/alerts.yml")
	groups, errs := rulefmt.ParseFile(path)
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil {
		t.Fatal("no rule groups")
	}
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert.Value == "" {
				t.Errorf("group %s: a recording rule; this file holds alerts only", g.Name)
			}
			if r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("%s: needs a summary annotation and a severity label", r.Alert.Value)
			}
		}
	}
	if n < 8 {
		t.Errorf("%d alerting rules; want the config, services and traffic rules", n)
	}
}

// TestGrafanaDashboard: the dashboard is valid JSON, uses the provisioned data source
// and every panel queries something.
func TestGrafanaDashboard(t *testing.T) {
	root := repoRoot(t)
	var ds struct {
		Datasources []struct {
			UID string `json:"uid"`
			URL string `json:"url"`
		} `json:"datasources"`
	}
	readYAML(t, filepath.Join(root, "deploy/grafana/provisioning/datasources/prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("datasources = %+v; want the profile's prometheus", ds.Datasources)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy/grafana/llmedge.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("llmedge.json: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard has no uid or no panels")
	}
	for _, p := range dash.Panels {
		if p.Datasource.UID != ds.Datasources[0].UID {
			t.Errorf("panel %q uses data source %q, want %q", p.Title, p.Datasource.UID, ds.Datasources[0].UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil && !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("%s: %v", path, err)
	} else if err != nil {
		// Fields these tests do not check are fine.
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
