package main

import (
	"slices"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
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
