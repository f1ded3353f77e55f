package testenv

import "syscall"

// setParentDeathSignal kills the child when the test binary dies: cleanups do
// not run on a go test -timeout panic or a SIGKILL, and an orphaned Envoy
// would keep running.
func setParentDeathSignal(attr *syscall.SysProcAttr) {
	if attr.Pdeathsig == 0 {
		attr.Pdeathsig = syscall.SIGKILL
	}
}
