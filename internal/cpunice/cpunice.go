// Package cpunice lowers a process's CPU scheduling priority: the control plane's work
// (configuration pushes, the usage ledger's ingest) is not on any request's path, and on a
// box it shares with Envoy it should yield the CPU to the requests in flight.
package cpunice

import "fmt"

// Max is the lowest priority a process can give itself (nice 19).
const Max = 19

// ShortestSlice is the time slice a lowered thread asks for (sched_attr.sched_runtime,
// in nanoseconds): the shortest Linux's EEVDF scheduler (6.12 and later) accepts. A
// niceness only shares the CPU out under contention; a thread that is running still
// keeps the CPU for its whole slice (by default a few milliseconds) before a request's
// thread that wakes on that CPU gets it. Kernels without custom slices ignore it.
const ShortestSlice = 100_000

// Validate reports whether n is a niceness the process can take: 0 (unchanged) to Max.
// Raising priority (a negative niceness) needs privileges the edge's processes do not have.
func Validate(flag string, n int) error {
	if n < 0 || n > Max {
		return fmt.Errorf("%s: %d is outside 0..%d (0 leaves the priority unchanged)", flag, n, Max)
	}
	return nil
}

// Lower sets every thread of this process to niceness n and, where the kernel has them,
// the ShortestSlice (0 does nothing). Call it early, before the process starts its work:
// threads started later inherit both from the thread that starts them.
func Lower(n int) error {
	if err := Validate("niceness", n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return lower(n)
}
