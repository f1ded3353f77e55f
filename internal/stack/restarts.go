package stack

import (
	"fmt"
	"sync"
)

// restarts holds the current process of a server that restarts on the same address, and
// names each start so that every run keeps its own log file.
type restarts struct {
	mu     sync.Mutex
	proc   *Process
	starts int
}

// nextName returns base for the first start and base-restartN for the Nth restart.
func (rs *restarts) nextName(base string) string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	name := base
	if rs.starts > 0 {
		name = fmt.Sprintf("%s-restart%d", base, rs.starts)
	}
	rs.starts++
	return name
}

func (rs *restarts) set(p *Process) {
	rs.mu.Lock()
	rs.proc = p
	rs.mu.Unlock()
}

// Process returns the current server process (a new one after a restart).
func (rs *restarts) Process() *Process {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.proc
}
