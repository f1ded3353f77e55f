package config

// decodeRoutes decodes the routes section as mapstructure does (Parse's decoder settings)
// when every value is exactly of its field's type and every key is a field: mappings of
// strings, lists of strings, header matches of strings and a bool. plain is false for
// anything else, which is left to mapstructure: its weak typing, its errors. A test
// compares both on every routes YAML in the tree (TestDecodeRoutesEqualsMapstructure).
// nil with plain true: the section is absent.
func decodeRoutes(v any) (routes map[string]Route, plain bool) {
	if v == nil {
		return nil, true
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, false
	}
	routes = make(map[string]Route, len(m))
	for name, rv := range m {
		r, ok := decodeRoute(rv)
		if !ok {
			return nil, false
		}
		routes[name] = r
	}
	return routes, true
}

func decodeRoute(v any) (Route, bool) {
	var r Route
	m, ok := v.(map[string]any)
	if !ok {
		return r, false
	}
	for k, fv := range m {
		switch k {
		case "match":
			r.Match, ok = decodeMatch(fv)
		case "upstream":
			r.Upstream, ok = fv.(string)
		case "prefix_rewrite":
			r.PrefixRewrite, ok = fv.(string)
		case "api":
			r.API, ok = fv.(string)
		default:
			ok = false
		}
		if !ok {
			return r, false
		}
	}
	return r, true
}

func decodeMatch(v any) (Match, bool) {
	var mt Match
	m, ok := v.(map[string]any)
	if !ok {
		return mt, false
	}
	for k, fv := range m {
		switch k {
		case "prefix":
			mt.Prefix, ok = fv.(string)
		case "path":
			mt.Path, ok = fv.(string)
		case "hosts":
			mt.Hosts, ok = decodeStrings(fv)
		case "headers":
			mt.Headers, ok = decodeHeaders(fv)
		default:
			ok = false
		}
		if !ok {
			return mt, false
		}
	}
	return mt, true
}

func decodeStrings(v any) ([]string, bool) {
	l, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, len(l))
	for i, e := range l {
		if out[i], ok = e.(string); !ok {
			return nil, false
		}
	}
	return out, true
}

func decodeHeaders(v any) ([]HeaderMatch, bool) {
	l, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]HeaderMatch, len(l))
	for i, e := range l {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, false
		}
		h := &out[i]
		for k, fv := range m {
			switch k {
			case "name":
				h.Name, ok = fv.(string)
			case "exact":
				h.Exact, ok = fv.(string)
			case "prefix":
				h.Prefix, ok = fv.(string)
			case "present":
				h.Present, ok = fv.(bool)
			default:
				ok = false
			}
			if !ok {
				return nil, false
			}
		}
	}
	return out, true
}
