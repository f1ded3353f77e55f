package usage

import "github.com/llmedge/llmedge/controlplane/model"

// Prices turns token counts into cost. Lookup is exact on upstream and model: first the
// model the caller requested, then the one the provider reported. Nothing is guessed from
// prefixes or families; an unknown model leaves the cost empty and flags the record.
type Prices struct {
	byKey map[[2]string]model.Price
}

// NewPrices indexes a validated price table.
func NewPrices(ps []model.Price) *Prices {
	p := &Prices{byKey: make(map[[2]string]model.Price, len(ps))}
	for _, x := range ps {
		p.byKey[[2]string{x.Upstream, x.Model}] = x
	}
	return p
}

// Apply sets r's cost, currency and price_missing flag. Records that are not LLM calls
// (no model) cost nothing and are not flagged.
func (p *Prices) Apply(r *Record) {
	r.Cost, r.Currency, r.PriceMissing = nil, "", false
	if r.Model() == "" {
		return
	}
	price, ok := p.lookup(r.Upstream, r.RequestedModel)
	if !ok {
		price, ok = p.lookup(r.Upstream, r.ReportedModel)
	}
	if !ok {
		r.PriceMissing = true
		return
	}
	// Input counts include cached input for every API Envoy extracts (Anthropic's are
	// summed by Envoy), so the cached part is priced at the cached rate and only the rest
	// at the input rate.
	cached := min(r.CachedTokens, r.InputTokens)
	cost := (float64(r.InputTokens-cached)*price.Input + float64(cached)*price.Cached + float64(r.OutputTokens)*price.Output) / 1e6
	r.Cost, r.Currency = &cost, price.Currency
}

func (p *Prices) lookup(upstream, m string) (model.Price, bool) {
	if p == nil || m == "" {
		return model.Price{}, false
	}
	x, ok := p.byKey[[2]string{upstream, m}]
	return x, ok
}
