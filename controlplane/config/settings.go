package config

import "strings"

// settings computes, for documents whose keys are all lower case and free of dots, what
// viper's Unmarshal hands mapstructure after MergeConfigMap of each document and
// AutomaticEnv with EnvPrefix: the documents deep-merged, every leaf (a scalar or a list,
// nil excluded) at its path, empty mappings dropped, a leaf replaced by the non-empty
// environment variable named after its path, and dropped when a variable is named after
// one of its parents.
//
// viper gets there by looking every leaf up again by its dotted path, through the
// environment and every prefix of the path: about a third of a reload of 1,000 routes.
// With no dots in keys a path has one reading, and the walk below is that lookup done
// once. ok is false for any other document (a dot or an upper-case letter in a key,
// another kind of mapping); the caller then asks viper, whose answer this must equal
// (TestSettingsEqualsViper).
func settings(docs []map[string]any, environ []string) (out map[string]any, ok bool) {
	merged := map[string]any{}
	for _, d := range docs {
		if !plainKeys(d) {
			return nil, false
		}
		mergeSettings(d, merged)
	}
	env := prefixedEnv(environ)
	out = map[string]any{}
	var path []string
	var walk func(m map[string]any, into func() map[string]any)
	walk = func(m map[string]any, into func() map[string]any) {
		for k, v := range m {
			path = append(path, k)
			if sub, isMap := v.(map[string]any); isMap {
				// The mapping is created when its first leaf is set: viper drops empty ones.
				var made map[string]any
				walk(sub, func() map[string]any {
					if made == nil {
						made = map[string]any{}
						into()[k] = made
					}
					return made
				})
			} else if v, keep := envLeaf(path, v, env); keep {
				into()[k] = v
			}
			path = path[:len(path)-1]
		}
	}
	walk(merged, func() map[string]any { return out })
	return out, true
}

// envLeaf is the value viper's Get returns for the leaf at path: the environment's first
// (an empty variable counts as unset), none when a parent's variable is set, else v
// unless it is nil.
func envLeaf(path []string, v any, env map[string]string) (any, bool) {
	if len(env) > 0 {
		if s, set := env[envKey(path)]; set {
			return s, true
		}
		for i := 1; i < len(path); i++ {
			if _, set := env[envKey(path[:i])]; set {
				return nil, false
			}
		}
	}
	return v, v != nil
}

var envReplacer = strings.NewReplacer(".", "_", "-", "_")

// envKey is the variable AutomaticEnv reads for a key path, as Parse configures it.
func envKey(path []string) string {
	return envReplacer.Replace(strings.ToUpper(EnvPrefix + "_" + strings.Join(path, ".")))
}

// prefixedEnv is the non-empty variables whose names start with EnvPrefix_ (every name
// envKey makes does).
func prefixedEnv(environ []string) map[string]string {
	var env map[string]string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if v == "" || !strings.HasPrefix(k, EnvPrefix+"_") {
			continue
		}
		if env == nil {
			env = map[string]string{}
		}
		env[k] = v
	}
	return env
}

// plainKeys reports whether every key in v, in nested mappings and lists too, is lower
// case, not empty and without a dot, and every mapping a map[string]any.
func plainKeys(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if k == "" || strings.Contains(k, ".") || strings.ToLower(k) != k || !plainKeys(e) {
				return false
			}
		}
	case []any:
		for _, e := range v {
			if !plainKeys(e) {
				return false
			}
		}
	case map[any]any:
		return false
	}
	return true
}

// mergeSettings merges src into tgt as viper's MergeConfigMap does: mappings merge key by
// key; a mapping in tgt keeps its place against a non-mapping from src; anything else in
// tgt is replaced.
func mergeSettings(src, tgt map[string]any) {
	for k, sv := range src {
		tv, exists := tgt[k]
		if !exists {
			tgt[k] = sv
			continue
		}
		if tm, isMap := tv.(map[string]any); isMap {
			if sm, ok := sv.(map[string]any); ok {
				mergeSettings(sm, tm)
			}
			continue
		}
		tgt[k] = sv
	}
}
