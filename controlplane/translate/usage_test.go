package translate_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/llmedge/llmedge/controlplane/translate"
)

// usage.enabled: false takes out exactly what only the ledger needs (the gRPC usage log and
// the llmedge.request marker) and keeps what quotas read (the request body's model, token
// extraction, the rate-limit filter) and the local JSON log. The same config with the
// switch on carries both.
func TestUsageRecordingSwitch(t *testing.T) {
	const (
		usageLog   = "envoy.access_loggers.http_grpc"
		jsonLog    = "envoy.access_loggers.stdout"
		marker     = "envoy.filters.http.set_metadata"
		bodyModel  = "envoy.filters.http.json_to_metadata"
		pathModel  = "envoy.filters.http.header_to_metadata"
		tokenUsage = "envoy.filters.http.ai_protocol_manager"
		rateLimit  = "envoy.filters.http.ratelimit"
	)
	cfg := load(t, "testdata/in/usage-disabled.yaml")
	if cfg.Usage.Enabled {
		t.Fatal("usage.enabled: false loaded as enabled")
	}
	for _, enabled := range []bool{false, true} {
		cfg.Usage.Enabled = enabled
		res, err := translate.Region(cfg, "hk")
		if err != nil {
			t.Fatal(err)
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := res.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		var filters, logs []string
		for _, f := range hcm.GetHttpFilters() {
			filters = append(filters, f.GetName())
		}
		for _, l := range hcm.GetAccessLog() {
			logs = append(logs, l.GetName())
		}
		for _, want := range []string{bodyModel, pathModel, tokenUsage, rateLimit} {
			if !slices.Contains(filters, want) {
				t.Errorf("enabled=%v: filter %s missing from %v", enabled, want, filters)
			}
		}
		if !slices.Contains(logs, jsonLog) {
			t.Errorf("enabled=%v: access logs %v lack the JSON log", enabled, logs)
		}
		if got := slices.Contains(filters, marker); got != enabled {
			t.Errorf("enabled=%v: marker filter present=%v in %v", enabled, got, filters)
		}
		if got := slices.Contains(logs, usageLog); got != enabled {
			t.Errorf("enabled=%v: usage log present=%v in %v", enabled, got, logs)
		}
	}
}

// regions.<name>.access_log: off (read from a routes YAML, where a bare off must stay the
// string "off") takes out Envoy's JSON access log and nothing else: the usage log stays;
// stdout and the default keep it.
func TestAccessLogSwitch(t *testing.T) {
	for _, c := range []struct {
		setting string
		want    []string
	}{
		{"", []string{"envoy.access_loggers.stdout", "envoy.access_loggers.http_grpc"}},
		{"access_log: stdout", []string{"envoy.access_loggers.stdout", "envoy.access_loggers.http_grpc"}},
		{"access_log: off", []string{"envoy.access_loggers.http_grpc"}},
	} {
		src, err := os.ReadFile("testdata/in/usage-disabled.yaml")
		if err != nil {
			t.Fatal(err)
		}
		y := strings.Replace(strings.Replace(string(src), "enabled: false", "enabled: true", 1),
			"\n  hk:\n", "\n  hk:\n    "+c.setting+"\n", 1)
		path := filepath.Join(t.TempDir(), "routes.yaml")
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := translate.Region(load(t, path), "hk")
		if err != nil {
			t.Fatal(err)
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := res.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		var logs []string
		for _, l := range hcm.GetAccessLog() {
			logs = append(logs, l.GetName())
		}
		if !slices.Equal(logs, c.want) {
			t.Errorf("%q: access logs %v, want %v", c.setting, logs, c.want)
		}
	}
}
