package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/internal/statefile"
)

// Where the serving config came from (ConfigStatus.Source).
const (
	SourceRoutes = "routes" // the routes YAML, as it is now or was at a valid edit
	SourceSaved  = "saved"  // the last good copy in the state dir, from an earlier run
)

// The state file keeps the routes YAML's bytes, not the translated snapshot: a restart on
// a newer binary translates them with its own code, exactly as a valid file would be.
const (
	savedRoutesFile = "routes-last-good.json"
	savedRoutesKind = "llmedge.controlplane.routes.v1"
)

type savedRoutes struct {
	Path string     `json:"path"` // the --config it was read from, for the log
	Hash string     `json:"hash"`
	Docs []savedDoc `json:"docs"`
}

type savedDoc struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
}

func (m *Main) configSource() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state.source
}

// fromRoutesLocked records that the routes YAML's own config is serving.
func (m *Main) fromRoutesLocked() {
	if m.state.source == SourceSaved {
		m.log.Info("the routes YAML's config replaces the saved copy", "config", m.src.String(), "hash", m.state.appliedHash[:16])
	}
	m.state.source, m.state.savedAt = SourceRoutes, time.Time{}
}

// saveLocked keeps an applied config's bytes in the state dir. A failure is reported, not
// fatal: the config serves; only a later start with a broken routes YAML would miss it.
func (m *Main) saveLocked(snap *config.Snapshot) {
	if m.opts.StateDir == "" || snap == nil || snap.Hash == m.state.savedHash {
		return
	}
	s := savedRoutes{Path: m.src.String(), Hash: snap.Hash}
	for _, d := range snap.Docs {
		s.Docs = append(s.Docs, savedDoc{Name: d.Name, Data: d.Data})
	}
	if err := statefile.Save(m.opts.StateDir, savedRoutesFile, savedRoutesKind, s, time.Now()); err != nil {
		m.state.saveError = err.Error()
		m.log.Error("could not save the applied routes config; a restart with a broken routes YAML would serve nothing", "error", err)
		return
	}
	m.state.savedHash, m.state.saveError = snap.Hash, ""
}

// serveSaved serves the last good config from the state dir; Run calls it when the first
// load of the routes YAML failed. Any problem with the saved copy is logged and leaves
// the control plane as it was: serving nothing, not ready.
func (m *Main) serveSaved(ctx context.Context) {
	if err := m.loadSaved(ctx); err != nil {
		if errors.Is(err, statefile.ErrNotFound) {
			m.log.Warn("no saved routes config to serve; serving nothing until the routes YAML is valid", "state_dir", m.opts.StateDir)
			return
		}
		m.log.Error("saved routes config refused; serving nothing until the routes YAML is valid", "state_dir", m.opts.StateDir, "error", err)
	}
}

func (m *Main) loadSaved(ctx context.Context) error {
	var s savedRoutes
	savedAt, err := statefile.Load(m.opts.StateDir, savedRoutesFile, savedRoutesKind, &s)
	if err != nil {
		return err
	}
	docs := make([]config.Document, len(s.Docs))
	for i, d := range s.Docs {
		docs[i] = config.Document{Name: d.Name, Data: d.Data}
	}
	snap := config.NewSnapshot(docs)
	if snap.Hash != s.Hash {
		return fmt.Errorf("%s: damaged (content hash mismatch)", savedRoutesFile)
	}
	_, cfg, err := config.Build(ctx, snap, m.opts.Limits)
	if err != nil {
		return fmt.Errorf("%s: the saved routes no longer validate: %w", savedRoutesFile, err)
	}
	all, err := m.translator.All(cfg)
	if err != nil {
		return fmt.Errorf("%s: translate: %w", savedRoutesFile, err)
	}
	changed, err := m.xds.Update(all)
	if err != nil {
		return fmt.Errorf("%s: %w", savedRoutesFile, err)
	}
	now := time.Now().UTC()
	m.mu.Lock()
	m.state.applied, m.state.appliedHash, m.state.appliedAt, m.state.files = cfg, snap.Hash, now, snap.Files()
	m.state.source, m.state.savedAt, m.state.savedHash = SourceSaved, savedAt, snap.Hash
	m.mu.Unlock()
	m.prober.Update(cfg)
	m.metrics.appliedAt.Set(float64(now.Unix()))
	m.log.Warn("routes YAML unusable at start-up; serving the last good config saved in the state dir until a valid edit",
		"config", m.src.String(), "saved_from", s.Path, "saved_at", savedAt, "hash", snap.Hash[:16],
		"regions", cfg.RegionNames(), "changed_regions", changed)
	return nil
}
