package model

import "time"

// Alerts is the alerts section of the routes YAML: where notifications go, which rules
// fire and when they are silenced. The zero value (no section) evaluates nothing.
type Alerts struct {
	Notifiers []Notifier // sorted by name
	// Repeat is how often a firing alert is sent again while it holds; zero never repeats
	// (config always sets it).
	Repeat time.Duration
	Rules  []AlertRule // sorted by name; only enabled rules
	// Silences mute rules during a time window; they still show in /status.
	Silences []Silence
	// Scrape are the metrics endpoints of each region, sorted by region.
	Scrape []ScrapeTarget
}

// ScrapeTarget is one region's metrics endpoints: the Envoy admin base URL and
// envoyproxy/ratelimit's Prometheus URL (either may be empty).
type ScrapeTarget struct {
	Region           string
	EnvoyAdmin       string
	RatelimitMetrics string
}

// Notifier is one webhook destination. URL and secret are read from files at send time,
// so the YAML (and everything derived from it) never holds them.
type Notifier struct {
	Name       string
	Kind       string // slack, feishu, dingtalk, webhook
	URLFile    string
	SecretFile string // optional: Feishu and DingTalk signatures
}

// AlertRule is one enabled rule with its threshold. Percent, Days and MinRequests are
// meaningful only for the rules that use them; For is how long a condition must hold
// before it fires.
type AlertRule struct {
	Name        string
	Percent     float64
	Days        int
	MinRequests int
	For         time.Duration
}

// Silence mutes one rule (or every rule when Rule is empty) from Start to End.
type Silence struct {
	Rule    string    `json:"rule"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Comment string    `json:"comment,omitempty"`
}
