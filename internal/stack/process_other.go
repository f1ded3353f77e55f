//go:build !linux

package stack

import "syscall"

// setParentDeathSignal is Linux-only (prctl PR_SET_PDEATHSIG).
func setParentDeathSignal(*syscall.SysProcAttr) {}
