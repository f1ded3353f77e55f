package cpunice

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// lower renices each thread: on Linux a niceness belongs to a thread, not to the process,
// so setpriority(PRIO_PROCESS, 0) would change only the calling one. A thread the Go
// runtime starts while the list is walked may copy a thread not yet changed, so the walk
// repeats until a pass finds nothing left to change.
func lower(n int) error {
	for range 10 {
		changed, err := lowerPass(n)
		if err != nil {
			return err
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("niceness %d: threads kept appearing", n)
}

func lowerPass(n int) (bool, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return false, fmt.Errorf("niceness %d: %w", n, err)
	}
	changed := false
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// getpriority's raw system call returns 20 - nice.
		cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			continue // the thread has exited
		}
		if 20-cur == n {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil {
			if err == unix.ESRCH {
				continue
			}
			return false, fmt.Errorf("niceness %d: thread %d: %w", n, tid, err)
		}
		changed = true
	}
	return changed, nil
}
