// Package cpunice lowers a process's CPU scheduling priority: the control plane's work
// (configuration pushes, the usage ledger's ingest) is not on any request's path, and on a
// box it shares with Envoy it should yield the CPU to the requests in flight.
package cpunice

import "fmt"

// Max is the lowest priority a process can give itself (nice 19).
const Max = 19

// Validate reports whether n is a niceness the process can take: 0 (unchanged) to Max.
// Raising priority (a negative niceness) needs privileges the edge's processes do not have.
func Validate(flag string, n int) error {
	if n < 0 || n > Max {
		return fmt.Errorf("%s: %d is outside 0..%d (0 leaves the priority unchanged)", flag, n, Max)
	}
	return nil
}

// Lower sets every thread of this process to niceness n (0 does nothing). Call it early,
// before the process starts its work: threads started later inherit the niceness of the
// thread that starts them.
func Lower(n int) error {
	if err := Validate("niceness", n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return lower(n)
}
