package stack

import "syscall"

// setParentDeathSignal kills the child when its parent dies: deferred cleanups do not
// run on a go test -timeout panic or a SIGKILL, and an orphaned Envoy would keep running.
func setParentDeathSignal(attr *syscall.SysProcAttr) {
	if attr.Pdeathsig == 0 {
		attr.Pdeathsig = syscall.SIGKILL
	}
}
