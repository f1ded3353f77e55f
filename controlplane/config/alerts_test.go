package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

const alertsBase = `version: 1
regions:
  hk:
    listen: 127.0.0.1:10000
    extauthz: 127.0.0.1:9001
    upstreams: [openai]
upstreams:
  openai:
    url: https://api.openai.com
    allowed_regions: [hk]
`

// docsAlertsExample is the alerts example of docs/CONFIG.md, which must stay valid.
func docsAlertsExample(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "CONFIG.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## alerts\n")
	if !ok {
		t.Fatal("docs/CONFIG.md has no alerts section")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	example, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("no yaml example in the alerts section")
	}
	return example
}

func TestAlertsDocsExample(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(alertsBase+docsAlertsExample(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, cfg, err := config.LoadConfig(path)
	if err != nil {
		t.Fatalf("the docs example is invalid: %v", err)
	}
	a := cfg.Alerts
	if a.Repeat != 4*time.Hour || len(a.Notifiers) != 4 || len(a.Scrape) != 1 || len(a.Silences) != 1 {
		t.Fatalf("alerts = %+v", a)
	}
	if n := a.Notifiers[1]; n.Name != "ops-feishu" || n.Kind != "feishu" || n.SecretFile != "/run/secrets/feishu-secret" {
		t.Errorf("notifiers sorted by name: %+v", a.Notifiers)
	}
	rules := map[string]model.AlertRule{}
	for _, r := range a.Rules {
		rules[r.Name] = r
	}
	if _, on := rules["probe_failed"]; on {
		t.Error("probe_failed is disabled in the example")
	}
	if r := rules["quota"]; r.Percent != 80 {
		t.Errorf("quota = %+v", r)
	}
	if r := rules["service_down"]; r.For != time.Minute {
		t.Errorf("service_down keeps its default for: %+v", r)
	}
	if len(rules) != len(config.AlertRuleNames())-1 {
		t.Errorf("rules %v; want every rule but the disabled one", rules)
	}
	s := a.Silences[0]
	if s.Rule != "quota" || !s.Start.Equal(time.Date(2026, 12, 24, 0, 0, 0, 0, time.UTC)) || !s.End.After(s.Start) {
		t.Errorf("silence = %+v", s)
	}
}

func TestNoAlertsSectionEvaluatesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(alertsBase), 0o644); err != nil {
		t.Fatal(err)
	}
	_, cfg, err := config.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Alerts.Rules) != 0 || len(cfg.Alerts.Notifiers) != 0 {
		t.Errorf("alerts without a section = %+v", cfg.Alerts)
	}
}

func TestQuotaPercentOtherThanRatelimitsRatioWarns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	doc := alertsBase + "alerts:\n  notifiers:\n    ops: {type: webhook, url_file: /x}\n  rules:\n    quota: {percent: 90}\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	_, cfg, err := config.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "NEAR_LIMIT_RATIO=0.9") {
		t.Errorf("warnings %q; want one telling to set NEAR_LIMIT_RATIO=0.9", cfg.Warnings)
	}
}
