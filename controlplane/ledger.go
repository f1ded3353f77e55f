package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/model"
	"github.com/llmedge/llmedge/controlplane/usage"
)

// startLedger starts the usage ledger with the settings of the config loaded first (the
// defaults when none was valid) and registers Envoy's Access Log Service beside xDS. Run
// ends ctx only after the gRPC server has stopped, so no access log stream is still
// adding records while the ledger flushes.
func (m *Main) startLedger(ctx context.Context, g *grpc.Server, done chan<- error) error {
	if m.opts.StateDir == "" {
		return nil
	}
	m.mu.Lock()
	u := config.DefaultUsage()
	if m.state.applied != nil {
		u = m.state.applied.Usage
	}
	m.mu.Unlock()
	l, err := usage.FromConfig(u, m.opts.StateDir, m.log, m.reg)
	if err != nil {
		return fmt.Errorf("usage ledger: %w", err)
	}
	a, err := usage.AccessLogFromConfig(u, m.opts.StateDir, m.log, m.reg)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	m.ledger, m.ledgerUsage, m.usageHTTP = l, u, usage.Handler(l, time.Now)
	usage.NewService(l, a).Register(g)
	go func() {
		if a == nil {
			done <- l.Run(ctx)
			return
		}
		alDone := make(chan error, 1)
		go func() { alDone <- a.Run(ctx) }()
		err := l.Run(ctx)
		done <- errors.Join(err, <-alDone)
	}()
	return nil
}

// updateLedger applies an edited usage section: prices at once; a changed store, spool or
// retention only after a restart (the spool would otherwise be split between two stores).
func (m *Main) updateLedger(u model.Usage) {
	if m.ledger == nil {
		return
	}
	m.ledger.SetPrices(usage.NewPrices(u.Prices))
	if !usage.SameStore(m.ledgerUsage, u) {
		m.log.Warn("usage store, spool, retention or access log changed in the routes YAML: restart the control plane to apply it; prices are applied")
	}
}
