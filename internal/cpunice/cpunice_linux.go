package cpunice

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// lower sets each thread's niceness and slice: on Linux both belong to a thread, not to
// the process, so setpriority(PRIO_PROCESS, 0) would change only the calling one. A
// thread the Go runtime starts while the list is walked may copy a thread not yet
// changed, so the walk repeats until a pass finds nothing left to change.
func lower(n int) error {
	slices := true // until sched_setattr is refused
	for range 10 {
		changed, err := lowerPass(n, &slices)
		if err != nil {
			return err
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("niceness %d: threads kept appearing", n)
}

func lowerPass(n int, slices *bool) (bool, error) {
	tids, err := threads("self")
	if err != nil {
		return false, fmt.Errorf("niceness %d: %w", n, err)
	}
	changed := false
	for _, tid := range tids {
		done, err := lowered(tid, n, *slices)
		if errors.Is(err, unix.ESRCH) {
			continue // the thread has exited
		}
		if err != nil {
			return false, fmt.Errorf("niceness %d: thread %d: %w", n, tid, err)
		}
		if done {
			continue
		}
		if err := lowerThread(tid, n, slices); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			return false, fmt.Errorf("niceness %d: thread %d: %w", n, tid, err)
		}
		changed = true
	}
	return changed, nil
}

// threads lists the thread ids of a process ("self", or a pid).
func threads(pid string) ([]int, error) {
	tasks, err := os.ReadDir("/proc/" + pid + "/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(tasks))
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// ThreadAttrs reads the scheduling attributes (niceness, slice) of each thread of process
// pid (0: this one) from the kernel; a thread that exits meanwhile is left out.
func ThreadAttrs(pid int) (map[int]*unix.SchedAttr, error) {
	p := "self"
	if pid != 0 {
		p = strconv.Itoa(pid)
	}
	tids, err := threads(p)
	if err != nil {
		return nil, err
	}
	out := make(map[int]*unix.SchedAttr, len(tids))
	for _, tid := range tids {
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			out[tid] = a
		}
	}
	return out, nil
}

// lowered reports whether thread tid already has niceness n and, when slices are set and
// the kernel keeps one (it reports 0 otherwise), the short slice.
func lowered(tid, n int, slices bool) (bool, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err == nil {
		slice := !slices || a.Runtime == ShortestSlice || a.Runtime == 0
		return a.Policy == unix.SCHED_NORMAL && int(a.Nice) == n && slice, nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return false, err
	}
	// No sched_getattr (an old kernel, or a seccomp filter): the niceness alone.
	cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return false, err
	}
	return 20-cur == n, nil // the raw system call returns 20 - nice
}

// lowerThread asks for niceness n and the short slice, or, once sched_setattr has been
// refused (a seccomp filter, an old kernel), for the niceness alone.
func lowerThread(tid, n int, slices *bool) error {
	if *slices {
		err := unix.SchedSetAttr(tid, &unix.SchedAttr{
			Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: int32(n), Runtime: ShortestSlice,
		}, 0)
		if err == nil || errors.Is(err, unix.ESRCH) {
			return err
		}
		*slices = false
	}
	return unix.Setpriority(unix.PRIO_PROCESS, tid, n)
}
