package main

import (
	"slices"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	setfilterstatecommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	setfilterstatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmedge/llmedge/controlplane/translate"
)

// Each ablation variant leaves out exactly what its name says, from bare Envoy's own HCM.
func TestAblationVariantsLeaveOutOneThing(t *testing.T) {
	names := []string{"envoy.filters.http.set_filter_state", "envoy.filters.http.header_mutation", routerFilter}
	bare := &hcmv3.HttpConnectionManager{AccessLog: []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.stdout"}}}
	for _, n := range names {
		bare.HttpFilters = append(bare.HttpFilters, &hcmv3.HttpFilter{Name: n})
	}
	type shape struct {
		filters []string
		log     bool
	}
	want := map[string]shape{
		"bare":                {names, true},
		"log_usage_fields":    {names, true},
		"log_unmasked":        {names, true},
		"no_set_filter_state": {[]string{"envoy.filters.http.header_mutation", routerFilter}, true},
		"no_header_mutation":  {[]string{"envoy.filters.http.set_filter_state", routerFilter}, true},
		"no_access_log":       {names, false},
		"router_only":         {[]string{routerFilter}, false},
	}
	vs := ablationVariants(names)
	if len(vs) != len(want) || vs[0].name != "bare" {
		t.Fatalf("variants %v, want bare first and %d in all", vs, len(want))
	}
	for _, v := range vs {
		h := proto.Clone(bare).(*hcmv3.HttpConnectionManager)
		if v.edit != nil {
			v.edit(h)
		}
		var got []string
		for _, hf := range h.HttpFilters {
			got = append(got, hf.Name)
		}
		w, ok := want[v.name]
		if !ok {
			t.Errorf("unexpected variant %q", v.name)
			continue
		}
		if !slices.Equal(got, w.filters) || (len(h.AccessLog) > 0) != w.log {
			t.Errorf("%s: filters %v, access log %v; want %v, %v", v.name, got, len(h.AccessLog) > 0, w.filters, w.log)
		}
	}
}

func TestPairedDiff(t *testing.T) {
	d, lower := pairedDiff([]float64{1, 5, 3, 2}, []float64{2, 2, 2, 2})
	if d != 0.5 || lower != 1 { // differences −1, 3, 1, 0: median 0.5
		t.Errorf("pairedDiff = %v, %d; want 0.5, 1", d, lower)
	}
}

// The access log variants change the JSON access log's fields (and the path the
// set_filter_state filter records) and nothing else.
func TestAblationLogVariants(t *testing.T) {
	logCfg, err := anypb.New(&streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: &structpb.Struct{Fields: map[string]*structpb.Value{
			"upstream_path": structpb.NewStringValue("%CEL(masked)%"), "user_agent": structpb.NewStringValue("%CEL(masked)%"),
		}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	fsCfg, err := anypb.New(&setfilterstatev3.Config{OnRequestHeaders: []*setfilterstatecommonv3.FilterStateValue{{
		Key: &setfilterstatecommonv3.FilterStateValue_ObjectKey{ObjectKey: translate.PathState},
		Value: &setfilterstatecommonv3.FilterStateValue_FormatString{FormatString: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: "%CEL(masked)%"}}}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	bare := &hcmv3.HttpConnectionManager{
		AccessLog:   []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.stdout", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: logCfg}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.set_filter_state", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: fsCfg}}},
	}
	fields := func(h *hcmv3.HttpConnectionManager) (map[string]string, string) {
		var so streamv3.StdoutAccessLog
		if err := h.AccessLog[0].GetTypedConfig().UnmarshalTo(&so); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for k, v := range so.GetLogFormat().GetJsonFormat().GetFields() {
			out[k] = v.GetStringValue()
		}
		var c setfilterstatev3.Config
		if err := h.HttpFilters[0].GetTypedConfig().UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		return out, c.OnRequestHeaders[0].GetFormatString().GetTextFormatSource().GetInlineString()
	}
	for _, v := range ablationVariants(nil) {
		h := proto.Clone(bare).(*hcmv3.HttpConnectionManager)
		switch v.name {
		case "log_usage_fields":
			v.edit(h)
			f, path := fields(h)
			if f["token_usage"] != translate.EnvoyLogUsageFields["token_usage"] || len(f) != 2+len(translate.EnvoyLogUsageFields) || path != "%CEL(masked)%" {
				t.Errorf("%s: fields %v, path %q", v.name, f, path)
			}
		case "log_unmasked":
			v.edit(h)
			f, path := fields(h)
			if f["upstream_path"] != "%REQ(:PATH)%" || f["user_agent"] != "%REQ(USER-AGENT)%" || len(f) != 2 || path != "%REQ(:PATH)%" {
				t.Errorf("%s: fields %v, path %q", v.name, f, path)
			}
		}
	}
}
