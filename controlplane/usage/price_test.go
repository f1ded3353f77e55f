package usage

import (
	"math"
	"testing"

	"github.com/llmedge/llmedge/controlplane/model"
)

func TestPrices(t *testing.T) {
	p := NewPrices([]model.Price{
		{Upstream: "openai", Model: "gpt-4o", Input: 2.5, Output: 10, Cached: 1.25, Currency: "USD"},
		{Upstream: "openai", Model: "gpt-4o-2024-08-06", Input: 3, Output: 12, Cached: 3, Currency: "USD"},
		{Upstream: "claude", Model: "claude-sonnet-4", Input: 3, Output: 15, Cached: 0.3, Currency: "EUR"},
	})
	tests := []struct {
		name     string
		r        Record
		cost     float64 // -1: none
		currency string
		missing  bool
	}{
		// 1M input of which 400k cached, 100k output: 0.6*2.5 + 0.4*1.25 + 0.1*10.
		{"requested model", Record{Upstream: "openai", RequestedModel: "gpt-4o", ReportedModel: "gpt-4o-2024-08-06", InputTokens: 1e6, CachedTokens: 4e5, OutputTokens: 1e5}, 3.0, "USD", false},
		{"reported model when the requested is unpriced", Record{Upstream: "openai", RequestedModel: "gpt-4o-latest", ReportedModel: "gpt-4o-2024-08-06", InputTokens: 1e6}, 3.0, "USD", false},
		{"gemini names the model in the path only", Record{Upstream: "claude", ReportedModel: "claude-sonnet-4", OutputTokens: 2e6}, 30, "EUR", false},
		{"unknown model is flagged, not guessed", Record{Upstream: "openai", RequestedModel: "gpt-4o-mini", InputTokens: 10}, -1, "", true},
		{"same model, other upstream", Record{Upstream: "azure", RequestedModel: "gpt-4o", InputTokens: 10}, -1, "", true},
		{"not an AI call", Record{Upstream: "openai"}, -1, "", false},
		{"cached above input is capped", Record{Upstream: "openai", RequestedModel: "gpt-4o", InputTokens: 1e6, CachedTokens: 5e6}, 1.25, "USD", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			p.Apply(&r)
			if r.PriceMissing != tc.missing || r.Currency != tc.currency {
				t.Errorf("missing=%v currency=%q, want %v %q", r.PriceMissing, r.Currency, tc.missing, tc.currency)
			}
			switch {
			case tc.cost < 0 && r.Cost != nil:
				t.Errorf("cost = %v, want none", *r.Cost)
			case tc.cost >= 0 && (r.Cost == nil || math.Abs(*r.Cost-tc.cost) > 1e-9):
				t.Errorf("cost = %v, want %v", r.Cost, tc.cost)
			}
		})
	}
	var none *Prices
	r := Record{Upstream: "openai", RequestedModel: "gpt-4o"}
	none.Apply(&r)
	if !r.PriceMissing {
		t.Error("no price table: the record must be flagged")
	}
}
