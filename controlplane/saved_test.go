package controlplane

import (
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestServesSavedConfigWhenRoutesBroken: a control plane that applied a config saves it;
// restarted on a missing or invalid routes YAML it serves that copy and says so; a valid
// edit then replaces it.
func TestServesSavedConfigWhenRoutesBroken(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	withState := func(o *Options) { o.StateDir = state }
	first := startWith(t, routesYAML, withState)
	eventually(t, waitFor, func() error {
		if st := first.status(t); st.Config.Source != SourceRoutes {
			return fmt.Errorf("source = %q", st.Config.Source)
		}
		return nil
	})
	want := first.m.xds.Versions()
	wantHash := first.status(t).Config.Hash
	first.cancel()
	fi, err := os.Stat(filepath.Join(state, savedRoutesFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("saved routes: %v", err)
	}

	// "invalid" ends with a valid edit, which is saved in turn: it runs last.
	for _, tc := range []struct{ name, routes string }{
		{"missing", ""},
		{"invalid", strings.Replace(routesYAML, "  gemini:\n    url:", "  gemini:\n    urll:", 1)},
	} {
		routes := tc.routes
		t.Run(tc.name, func(t *testing.T) {
			c := startWith(t, routes, func(o *Options) {
				o.StateDir = state
				if routes == "" {
					o.ConfigPath = filepath.Join(t.TempDir(), "absent.yaml")
				}
			})
			st := c.status(t)
			if st.Config.Source != SourceSaved || st.Config.SavedAt == nil || st.Config.Hash != wantHash || st.Config.Valid {
				t.Fatalf("status on the saved copy: source %q saved_at %v hash %q valid %v; want saved, %q, not valid",
					st.Config.Source, st.Config.SavedAt, st.Config.Hash, st.Config.Valid, wantHash)
			}
			if len(st.Config.Errors) == 0 {
				t.Errorf("status does not say why the routes YAML is unusable")
			}
			if got := c.m.xds.Versions(); !maps.EqualFunc(got, want, func(a, b map[string]string) bool { return maps.Equal(a, b) }) {
				t.Errorf("versions served = %v, want the saved config's %v", got, want)
			}
			if code, body := c.get(t, "/readyz"); code != http.StatusOK || !strings.Contains(strings.Join(strings.Fields(string(body)), ""), `"source":"saved"`) {
				t.Errorf("/readyz = %d %s", code, body)
			}
			if err := wantValue(c.metric(t, "llmedge_config_source", map[string]string{"source": "saved"}))(1); err != nil {
				t.Error(err)
			}
			if !strings.Contains(c.logs.String(), "serving the last good config saved in the state dir") {
				t.Errorf("log does not say the saved copy serves:\n%s", c.logs.String())
			}
			if routes == "" {
				return
			}
			edited := strings.Replace(routesYAML, "prefix: /gemini", "prefix: /gemini2", 1)
			c.write(t, edited)
			eventually(t, waitFor, func() error {
				st := c.status(t)
				if st.Config.Source != SourceRoutes || !st.Config.Valid {
					return fmt.Errorf("source %q valid %v errors %v", st.Config.Source, st.Config.Valid, st.Config.Errors)
				}
				return nil
			})
			if err := wantValue(c.metric(t, "llmedge_config_source", map[string]string{"source": "saved"}))(0); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestSavedConfigRefused: a damaged saved copy is refused with a log line; the control
// plane serves nothing and stays not ready, as without a state dir.
func TestSavedConfigRefused(t *testing.T) {
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, savedRoutesFile), []byte(`{"kind":"llmedge.controlplane.routes.v1","payload":`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startWith(t, "version: [", func(o *Options) { o.StateDir = state })
	if code, _ := c.get(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d, want 503", code)
	}
	if st := c.status(t); st.Config.Source != "" || len(st.Regions) != 0 {
		t.Errorf("status = %+v, want nothing serving", st.Config)
	}
	if logs := c.logs.String(); !strings.Contains(logs, "saved routes config refused") || !strings.Contains(logs, "damaged") {
		t.Errorf("log does not explain the refusal:\n%s", logs)
	}
	if got := slices.Collect(maps.Keys(c.m.xds.Versions())); len(got) != 0 {
		t.Errorf("served regions %v", got)
	}
}
