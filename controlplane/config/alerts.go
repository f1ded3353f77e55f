package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Alerts is the alerts section (docs/CONFIG.md#alerts). Webhook URLs and signing secrets
// are credentials, so the YAML only names the files that hold them.
type Alerts struct {
	// RepeatInterval is how often a firing alert is sent again (default 4h).
	RepeatInterval time.Duration        `mapstructure:"repeat_interval"`
	Notifiers      map[string]Notifier  `mapstructure:"notifiers"`
	Rules          map[string]AlertRule `mapstructure:"rules"`
	Silences       []Silence            `mapstructure:"silences"`
	// Scrape names, per region, the metrics endpoints the metric rules read.
	Scrape map[string]Scrape `mapstructure:"scrape"`
}

// Scrape is one region's metrics endpoints as the control plane reaches them.
type Scrape struct {
	// EnvoyAdmin is the Envoy admin base URL (http://127.0.0.1:9901); its
	// /stats/prometheus feeds upstream_errors and retries_exhausted.
	EnvoyAdmin string `mapstructure:"envoy_admin"`
	// RatelimitMetrics is envoyproxy/ratelimit's Prometheus endpoint (USE_PROMETHEUS,
	// http://127.0.0.1:9090/metrics); it feeds quota.
	RatelimitMetrics string `mapstructure:"ratelimit_metrics"`
}

// Notifier is one webhook destination.
type Notifier struct {
	Type       string `mapstructure:"type"` // slack, feishu, dingtalk, webhook
	URLFile    string `mapstructure:"url_file"`
	SecretFile string `mapstructure:"secret_file"`
}

// AlertRule tunes one rule; every rule is on by default once the section exists.
type AlertRule struct {
	Disabled    bool          `mapstructure:"disabled"`
	Percent     float64       `mapstructure:"percent"`
	Days        int           `mapstructure:"days"`
	MinRequests int           `mapstructure:"min_requests"`
	For         time.Duration `mapstructure:"for"`
}

// Silence mutes a rule (or all rules when Rule is empty) between Start and End.
type Silence struct {
	Rule    string    `mapstructure:"rule"`
	Start   time.Time `mapstructure:"start"`
	End     time.Time `mapstructure:"end"`
	Comment string    `mapstructure:"comment"`
}

// Alert defaults (docs/CONFIG.md#alerts).
const DefaultAlertRepeat = 4 * time.Hour

// alertRuleDefaults are every rule llmedge evaluates with its default threshold; the
// names are the keys of alerts.rules and the "rule" of every notification.
var alertRuleDefaults = map[string]model.AlertRule{
	"quota":             {Percent: 80},
	"upstream_errors":   {Percent: 10, MinRequests: 20},
	"overloaded":        {Percent: 1, MinRequests: 100},
	"retries_exhausted": {},
	"probe_failed":      {},
	"cert_expiry":       {Days: 14},
	"config_rejected":   {},
	"out_of_sync":       {For: 2 * time.Minute},
	"service_down":      {For: time.Minute},
}

// DefaultAlertRule is the rule name with its default thresholds.
func DefaultAlertRule(name string) model.AlertRule {
	r := alertRuleDefaults[name]
	r.Name = name
	return r
}

// AlertRuleNames lists the rules llmedge knows, sorted.
func AlertRuleNames() []string { return sortedKeys(alertRuleDefaults) }

func validateAlerts(a *Alerts, regions map[string]Region, c *collector) model.Alerts {
	if a == nil {
		return model.Alerts{}
	}
	out := model.Alerts{Repeat: DefaultAlertRepeat}
	switch {
	case a.RepeatInterval < 0 || (a.RepeatInterval > 0 && a.RepeatInterval < time.Minute):
		c.add("alerts.repeat_interval", "%s: must be at least 1m (default %s)", a.RepeatInterval, DefaultAlertRepeat)
	case a.RepeatInterval > 0:
		out.Repeat = a.RepeatInterval
	}
	if len(a.Notifiers) == 0 {
		c.add("alerts.notifiers", "at least one notifier is required when alerts are configured")
	}
	for _, name := range sortedKeys(a.Notifiers) {
		n, p := a.Notifiers[name], "alerts.notifiers."+name
		if !nameRE.MatchString(name) {
			c.add(p, "names must be 1-63 lower-case letters, digits, '-' or '_', starting and ending with a letter or digit")
		}
		switch n.Type {
		case "slack", "webhook":
			if n.SecretFile != "" {
				c.add(p+".secret_file", "%s webhooks are not signed; only feishu and dingtalk take a secret", n.Type)
			}
		case "feishu", "dingtalk":
		case "":
			c.add(p+".type", "required: slack, feishu, dingtalk or webhook")
		default:
			c.add(p+".type", "%q: must be slack, feishu, dingtalk or webhook", n.Type)
		}
		switch {
		case n.URLFile == "":
			c.add(p+".url_file", "required: a file holding the webhook URL (the URL is a credential and never goes in the YAML)")
		case !filepath.IsAbs(n.URLFile):
			c.add(p+".url_file", "%q: must be an absolute path", n.URLFile)
		}
		if n.SecretFile != "" && !filepath.IsAbs(n.SecretFile) {
			c.add(p+".secret_file", "%q: must be an absolute path", n.SecretFile)
		}
		out.Notifiers = append(out.Notifiers, model.Notifier{Name: name, Kind: n.Type, URLFile: n.URLFile, SecretFile: n.SecretFile})
	}
	for _, name := range sortedKeys(a.Rules) {
		if _, ok := alertRuleDefaults[name]; !ok {
			c.add("alerts.rules."+name, "unknown rule; rules are %v", AlertRuleNames())
		}
	}
	for _, name := range AlertRuleNames() {
		r, p := alertRuleDefaults[name], "alerts.rules."+name
		r.Name = name
		set, ok := a.Rules[name]
		if ok && set.Disabled {
			continue
		}
		if ok {
			checkRuleFields(p, name, set, &r, c)
		}
		out.Rules = append(out.Rules, r)
	}
	for i, s := range a.Silences {
		p := fmt.Sprintf("alerts.silences[%d]", i)
		if _, ok := alertRuleDefaults[s.Rule]; s.Rule != "" && !ok {
			c.add(p+".rule", "%q: unknown rule; rules are %v (empty silences every rule)", s.Rule, AlertRuleNames())
		}
		if s.Start.IsZero() {
			c.add(p+".start", "required: an RFC 3339 time")
		}
		if s.End.IsZero() {
			c.add(p+".end", "required: an RFC 3339 time")
		} else if !s.End.After(s.Start) {
			c.add(p+".end", "must be after start")
		}
		out.Silences = append(out.Silences, model.Silence{Rule: s.Rule, Start: s.Start.UTC(), End: s.End.UTC(), Comment: s.Comment})
	}
	for _, region := range sortedKeys(a.Scrape) {
		s, p := a.Scrape[region], "alerts.scrape."+region
		if _, ok := regions[region]; !ok {
			c.add(p, "%q is not a defined region", region)
		}
		if s.EnvoyAdmin == "" && s.RatelimitMetrics == "" {
			c.add(p, "set envoy_admin, ratelimit_metrics or both")
		}
		checkScrapeURL(p+".envoy_admin", s.EnvoyAdmin, c)
		checkScrapeURL(p+".ratelimit_metrics", s.RatelimitMetrics, c)
		out.Scrape = append(out.Scrape, model.ScrapeTarget{Region: region, EnvoyAdmin: strings.TrimRight(s.EnvoyAdmin, "/"), RatelimitMetrics: s.RatelimitMetrics})
	}
	sort.SliceStable(out.Silences, func(i, j int) bool { return out.Silences[i].Start.Before(out.Silences[j].Start) })
	return out
}

func checkScrapeURL(p, v string, c *collector) {
	if v == "" {
		return
	}
	u, err := url.Parse(v)
	switch {
	case err == nil && u.User != nil:
		// The value is not echoed: it holds a password.
		c.add(p, "must not carry credentials (user:password@)")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		c.add(p, "%q: must be an absolute http(s) URL", v)
	}
}

// checkRuleFields applies the thresholds an operator set, refusing ones the rule ignores:
// a threshold that silently does nothing would be worse than an error.
func checkRuleFields(p, name string, set AlertRule, r *model.AlertRule, c *collector) {
	def := alertRuleDefaults[name]
	if set.Percent != 0 {
		switch {
		case def.Percent == 0:
			c.add(p+".percent", "the %s rule takes no percent", name)
		case set.Percent <= 0 || set.Percent > 100:
			c.add(p+".percent", "%v: must be more than 0 and at most 100", set.Percent)
		default:
			r.Percent = set.Percent
		}
	}
	if set.Days != 0 {
		switch {
		case def.Days == 0:
			c.add(p+".days", "the %s rule takes no days", name)
		case set.Days < 1 || set.Days > 365:
			c.add(p+".days", "%d: must be 1 to 365", set.Days)
		default:
			r.Days = set.Days
		}
	}
	if set.MinRequests != 0 {
		switch {
		case def.MinRequests == 0:
			c.add(p+".min_requests", "the %s rule takes no min_requests", name)
		case set.MinRequests < 1:
			c.add(p+".min_requests", "%d: must be at least 1", set.MinRequests)
		default:
			r.MinRequests = set.MinRequests
		}
	}
	switch {
	case set.For < 0 || set.For > 24*time.Hour:
		c.add(p+".for", "%s: must be 0 to 24h", set.For)
	case set.For > 0:
		r.For = set.For
	}
}

// ratelimitNearRatio is envoyproxy/ratelimit's default NEAR_LIMIT_RATIO, which llmedge's
// stack leaves as it is: the quota rule reads ratelimit's near_limit counter, so its
// percent is only honoured when ratelimit runs with the matching ratio.
const ratelimitNearRatio = 0.8

func warnAlerts(cfg *model.Config) {
	for _, r := range cfg.Alerts.Rules {
		if r.Name == "quota" && r.Percent != ratelimitNearRatio*100 {
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf(
				"alerts.rules.quota.percent is %v, but the quota rule reads ratelimit's near_limit counter, which counts hits past its NEAR_LIMIT_RATIO (default %v): run every ratelimit with NEAR_LIMIT_RATIO=%v",
				r.Percent, ratelimitNearRatio, r.Percent/100))
		}
	}
}
