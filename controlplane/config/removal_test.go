package config_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
)

// world builds a model with the named regions (each serving the listed upstreams), routes
// ("name->upstream") and callers ("name->up1+up2").
func world(regions map[string][]string, routes, callers []string) *model.Config {
	cfg := &model.Config{}
	ups := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(regions)) {
		cfg.Regions = append(cfg.Regions, model.Region{Name: name, Upstreams: regions[name]})
		for _, u := range regions[name] {
			ups[u] = true
		}
	}
	for _, u := range slices.Sorted(maps.Keys(ups)) {
		cfg.Upstreams = append(cfg.Upstreams, model.Upstream{Name: u})
	}
	for _, r := range routes {
		name, up, _ := strings.Cut(r, "->")
		cfg.Routes = append(cfg.Routes, model.Route{Name: name, Upstream: up})
	}
	for _, c := range callers {
		name, up, _ := strings.Cut(c, "->")
		cfg.Callers = append(cfg.Callers, model.Caller{Name: name, Upstreams: strings.Split(up, "+")})
	}
	return cfg
}

func TestCompare(t *testing.T) {
	two := map[string][]string{"hk": {"openai"}, "sg": {"openai", "gemini"}}
	base := world(two, []string{"o1->openai", "o2->openai", "g1->gemini"}, []string{"alice->openai", "bob->gemini", "carol->openai+gemini"})
	tests := []struct {
		name        string
		prev, next  *model.Config
		destructive bool
		want        config.Removal
	}{
		{
			name: "nothing serving yet", prev: nil, next: base,
		},
		{
			name: "same config", prev: base, next: base,
			want: config.Removal{Regions: config.Loss{Before: 2}, Upstreams: config.Loss{Before: 2}, Routes: config.Loss{Before: 3}, Callers: config.Loss{Before: 3}},
		},
		{
			name:        "torn before callers: every caller gone",
			prev:        base,
			next:        world(two, []string{"o1->openai", "o2->openai", "g1->gemini"}, nil),
			destructive: true,
			want: config.Removal{
				Regions: config.Loss{Before: 2}, Upstreams: config.Loss{Before: 2}, Routes: config.Loss{Before: 3},
				Callers:               config.Loss{Before: 3, Removed: 3, Names: []string{"alice", "bob", "carol"}},
				RegionsWithoutCallers: []string{"hk", "sg"},
			},
		},
		{
			name:        "one caller of three, but hk keeps none",
			prev:        base,
			next:        world(two, []string{"o1->openai", "o2->openai", "g1->gemini"}, []string{"bob->gemini", "carol->gemini"}),
			destructive: true,
			want: config.Removal{
				Regions: config.Loss{Before: 2}, Upstreams: config.Loss{Before: 2}, Routes: config.Loss{Before: 3},
				Callers:               config.Loss{Before: 3, Removed: 1, Names: []string{"alice"}},
				RegionsWithoutCallers: []string{"hk"},
			},
		},
		{
			name: "one caller of three, every region still served",
			prev: base,
			next: world(two, []string{"o1->openai", "o2->openai", "g1->gemini"}, []string{"alice->openai", "carol->openai+gemini"}),
			want: config.Removal{
				Regions: config.Loss{Before: 2}, Upstreams: config.Loss{Before: 2}, Routes: config.Loss{Before: 3},
				Callers: config.Loss{Before: 3, Removed: 1, Names: []string{"bob"}},
			},
		},
		{
			name:        "two routes of three: more than half",
			prev:        base,
			next:        world(two, []string{"o1->openai"}, []string{"alice->openai", "bob->gemini", "carol->openai+gemini"}),
			destructive: true,
			want: config.Removal{
				Regions: config.Loss{Before: 2}, Upstreams: config.Loss{Before: 2}, Callers: config.Loss{Before: 3},
				Routes:               config.Loss{Before: 3, Removed: 2, Names: []string{"g1", "o2"}},
				RegionsWithoutRoutes: nil, // sg still has o1
			},
		},
		{
			name:        "exactly half of the routes, but a region loses its last one",
			prev:        world(map[string][]string{"hk": {"openai"}, "sg": {"gemini"}}, []string{"o1->openai", "g1->gemini"}, []string{"alice->openai+gemini"}),
			next:        world(map[string][]string{"hk": {"openai"}, "sg": {"gemini"}}, []string{"o1->openai"}, []string{"alice->openai+gemini"}),
			destructive: true,
			want: config.Removal{
				Regions: config.Loss{Before: 2}, Upstreams: config.Loss{Before: 2}, Callers: config.Loss{Before: 1},
				Routes:               config.Loss{Before: 2, Removed: 1, Names: []string{"g1"}},
				RegionsWithoutRoutes: []string{"sg"},
			},
		},
		{
			name: "exactly half of the upstreams is not more than half",
			prev: world(map[string][]string{"hk": {"a", "b"}}, []string{"ra->a", "rb->b"}, []string{"x->a+b"}),
			next: world(map[string][]string{"hk": {"a"}}, []string{"ra->a"}, []string{"x->a"}),
			want: config.Removal{
				Regions: config.Loss{Before: 1}, Callers: config.Loss{Before: 1},
				Upstreams: config.Loss{Before: 2, Removed: 1, Names: []string{"b"}},
				Routes:    config.Loss{Before: 2, Removed: 1, Names: []string{"rb"}},
			},
		},
		{
			name:        "the only region removed",
			prev:        world(map[string][]string{"hk": {"a"}}, []string{"ra->a"}, []string{"x->a"}),
			next:        world(map[string][]string{"sg": {"a"}}, []string{"ra->a"}, []string{"x->a"}),
			destructive: true,
			want: config.Removal{
				Regions:   config.Loss{Before: 1, Removed: 1, Names: []string{"hk"}},
				Upstreams: config.Loss{Before: 1}, Routes: config.Loss{Before: 1}, Callers: config.Loss{Before: 1},
			},
		},
		{
			name: "a new region without callers takes nothing away",
			prev: world(map[string][]string{"hk": {"a"}}, []string{"ra->a"}, []string{"x->a"}),
			next: world(map[string][]string{"hk": {"a"}, "sg": {"b"}}, []string{"ra->a"}, []string{"x->a"}),
			want: config.Removal{Regions: config.Loss{Before: 1}, Upstreams: config.Loss{Before: 1}, Routes: config.Loss{Before: 1}, Callers: config.Loss{Before: 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := config.Compare(tt.prev, tt.next)
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Compare (-want +got):\n%s", d)
			}
			if got.Destructive() != tt.destructive {
				t.Errorf("Destructive() = %v, want %v (reasons %q)", got.Destructive(), tt.destructive, got.Reasons())
			}
			if (len(got.Reasons()) > 0) != tt.destructive {
				t.Errorf("Reasons() = %q, want some exactly when destructive", got.Reasons())
			}
		})
	}
}

func TestCompareListsAtMostTwentyNames(t *testing.T) {
	var routes []string
	for i := range 100 {
		routes = append(routes, fmt.Sprintf("r%03d->a", i))
	}
	prev := world(map[string][]string{"hk": {"a"}}, routes, []string{"x->a"})
	next := world(map[string][]string{"hk": {"a"}}, routes[:10], []string{"x->a"})
	r := config.Compare(prev, next)
	if r.Routes.Removed != 90 || len(r.Routes.Names) != 20 {
		t.Fatalf("routes loss %+v; want 90 removed, 20 named", r.Routes)
	}
	if reasons := strings.Join(r.Reasons(), "\n"); !strings.Contains(reasons, "removes 90 of 100 routes") || !strings.Contains(reasons, "and 70 more") {
		t.Errorf("reasons %q", reasons)
	}
}

func TestHazards(t *testing.T) {
	tests := []struct {
		name string
		cfg  *model.Config
		want []string
	}{
		{"healthy", world(map[string][]string{"hk": {"a"}}, []string{"ra->a"}, []string{"x->a"}), nil},
		{"no callers at all", world(map[string][]string{"hk": {"a"}}, []string{"ra->a"}, nil), []string{"callers: none defined"}},
		{"a region nobody may use", world(map[string][]string{"hk": {"a"}, "sg": {"b"}}, []string{"ra->a", "rb->b"}, []string{"x->a"}), []string{"regions.sg: no caller"}},
		{"a region without routes", world(map[string][]string{"hk": {"a"}, "sg": {"b"}}, []string{"ra->a"}, []string{"x->a+b"}), []string{"regions.sg: no route"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := config.Hazards(tt.cfg)
			if len(got) != len(tt.want) {
				t.Fatalf("Hazards = %q, want %d matching %q", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("hazard %d = %q, want it to start with %q", i, got[i], w)
				}
			}
		})
	}
}
