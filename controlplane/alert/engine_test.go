package alert_test

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/llmedge/llmedge/controlplane/alert"
	"github.com/llmedge/llmedge/controlplane/model"
)

func TestEngineRepeatsWhileHeldAndHonoursForAndSilences(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	cfg := rules(time.Hour)
	cfg.Silences = []model.Silence{{Rule: "quota", Start: t0.Add(10 * time.Minute), End: t0.Add(20 * time.Minute)}}
	e := alert.NewEngine()
	e.SetConfig(cfg)
	quota := alert.Condition{Rule: "quota", Key: "eu/caller_a", Summary: "q"}
	down := alert.Condition{Rule: "service_down", Key: "eu/extauthz", Summary: "d"}
	off := alert.Condition{Rule: "no_such_rule", Key: "x"}
	type step struct {
		at    time.Duration
		conds []alert.Condition
		want  []string // status:rule[:repeat]
	}
	steps := []step{
		{0, []alert.Condition{quota, down, off}, []string{"firing:quota"}}, // service_down waits 1m
		{30 * time.Second, []alert.Condition{quota, down}, nil},
		{time.Minute, []alert.Condition{quota, down}, []string{"firing:service_down"}},
		{11 * time.Minute, []alert.Condition{quota}, []string{"resolved:service_down"}},
		// quota held past the repeat interval, but silenced: nothing.
		{15 * time.Minute, []alert.Condition{quota}, nil},
		{61 * time.Minute, []alert.Condition{quota}, []string{"firing:quota:repeat"}},
		{62 * time.Minute, []alert.Condition{quota}, nil},
		{63 * time.Minute, nil, []string{"resolved:quota"}},
		{64 * time.Minute, nil, nil},
		// A condition gone before its "for" never fires, so never resolves.
		{65 * time.Minute, []alert.Condition{down}, nil},
		{65*time.Minute + 30*time.Second, nil, nil},
	}
	for _, s := range steps {
		var got []string
		for _, m := range e.Evaluate(t0.Add(s.at), s.conds) {
			g := m.Status + ":" + m.Rule
			if m.Repeat {
				g += ":repeat"
			}
			got = append(got, g)
		}
		if len(got) != len(s.want) {
			t.Fatalf("at %s: sent %v; want %v", s.at, got, s.want)
		}
		for i := range got {
			if got[i] != s.want[i] {
				t.Fatalf("at %s: sent %v; want %v", s.at, got, s.want)
			}
		}
	}
}

func TestSilenceStartingMidAlertStillResolves(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	cfg := rules(time.Hour)
	cfg.Silences = []model.Silence{{Start: t0.Add(time.Minute), End: t0.Add(time.Hour)}} // every rule
	e := alert.NewEngine()
	e.SetConfig(cfg)
	c := alert.Condition{Rule: "probe_failed", Key: "eu/openai"}
	if n := len(e.Evaluate(t0, []alert.Condition{c})); n != 1 {
		t.Fatalf("%d messages before the silence; want 1", n)
	}
	if a := e.Active(t0.Add(2 * time.Minute)); len(a) != 1 || !a[0].Silenced {
		t.Fatalf("active during the silence: %+v", a)
	}
	msgs := e.Evaluate(t0.Add(2*time.Minute), nil)
	if len(msgs) != 1 || msgs[0].Status != alert.Resolved || msgs[0].EndsAt == nil {
		t.Fatalf("clearing during a silence sent %+v; want the resolution of what was announced", msgs)
	}
}

func TestProbeConditionsCertificateExpiry(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	cfg := rules(time.Hour)
	e := alert.NewEngine()
	e.SetConfig(cfg)
	res := []alert.ProbeResult{
		{Region: "eu", Upstream: "soon", At: now, OK: true, CertNotAfter: now.Add(3 * 24 * time.Hour)},
		{Region: "eu", Upstream: "later", At: now, OK: true, CertNotAfter: now.Add(30 * 24 * time.Hour)},
		// An older failed result is superseded by the newer good one.
		{Region: "eu", Upstream: "later", At: now.Add(-time.Hour), OK: false},
	}
	got := alert.ProbeConditions(res, now, e.Rule)
	if len(got) != 1 || got[0].Rule != "cert_expiry" || got[0].Key != "eu/soon" {
		t.Fatalf("conditions %+v; want only the 3-day certificate", got)
	}
}

func TestSlackBlocksStayWithinSlackLimits(t *testing.T) {
	m := alert.Message{Status: alert.Firing, Rule: "quota", Key: strings.Repeat("k", 400), Summary: strings.Repeat("s", 5000)}
	b, err := alert.Payload("slack", m, "", time.Now(), &url.URL{})
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Text   string `json:"text"`
		Blocks []struct {
			Text struct {
				Text string `json:"text"`
			} `json:"text"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(b, &p); err != nil || len(p.Blocks) != 2 {
		t.Fatalf("payload %s: %v", b, err)
	}
	if n := utf8.RuneCountInString(p.Blocks[0].Text.Text); n > 150 {
		t.Errorf("header of %d characters; Slack refuses more than 150", n)
	}
	if n := utf8.RuneCountInString(p.Blocks[1].Text.Text); n > 3000 {
		t.Errorf("section of %d characters; Slack refuses more than 3000", n)
	}
	if !strings.Contains(p.Text, m.Summary) {
		t.Error("the text fallback lost the summary")
	}
}

func TestStateConditions(t *testing.T) {
	e := alert.NewEngine()
	e.SetConfig(rules(time.Hour))
	st := alert.State{Regions: []alert.RegionState{
		{Name: "hk", RateLimit: true, Nodes: []alert.NodeState{
			{ID: "envoy-hk-1", Kind: alert.KindEnvoy, InSync: false, LastNack: "cluster upstream_x: bad"},
			{ID: "extauthz-hk", Kind: alert.KindExtAuthz, InSync: true},
		}},
		{Name: "sg", Nodes: []alert.NodeState{
			{ID: "envoy-sg-1", Kind: alert.KindEnvoy, InSync: true},
			{ID: "extauthz-sg", Kind: alert.KindExtAuthz, InSync: true},
		}},
	}}
	got := map[string]string{}
	for _, c := range alert.StateConditions(st, e.Rule) {
		got[c.Rule+" "+c.Key] = c.Summary
	}
	want := []string{"out_of_sync hk/envoy-hk-1", "service_down hk/ratelimit"}
	if len(got) != len(want) {
		t.Fatalf("conditions %v; want %v", got, want)
	}
	for _, w := range want {
		if _, ok := got[w]; !ok {
			t.Errorf("missing %s in %v", w, got)
		}
	}
	if s := got["out_of_sync hk/envoy-hk-1"]; !strings.Contains(s, "cluster upstream_x: bad") {
		t.Errorf("out_of_sync summary %q does not carry the NACK", s)
	}
}
