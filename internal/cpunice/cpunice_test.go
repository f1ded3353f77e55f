//go:build linux

package cpunice

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestValidate(t *testing.T) {
	for _, n := range []int{0, 10, Max} {
		if err := Validate("--cpu-nice", n); err != nil {
			t.Errorf("Validate(%d) = %v, want nil", n, err)
		}
	}
	for _, n := range []int{-1, Max + 1} {
		err := Validate("--cpu-nice", n)
		if err == nil || !strings.Contains(err.Error(), "--cpu-nice") {
			t.Errorf("Validate(%d) = %v, want an error naming the flag", n, err)
		}
	}
}

// threadAttrs reads each thread's scheduling attributes from the kernel.
func threadAttrs(t *testing.T) map[int]*unix.SchedAttr {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]*unix.SchedAttr{}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			out[tid] = a
		}
	}
	return out
}

func TestLowerEveryThread(t *testing.T) {
	if err := Lower(0); err != nil {
		t.Fatalf("Lower(0) = %v", err)
	}
	// Several threads exist before, and more start after: all must end up lowered.
	var wg sync.WaitGroup
	hold := make(chan struct{})
	start := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			<-hold
		}()
	}
	for range 4 {
		start()
	}
	if err := Lower(7); err != nil {
		t.Fatalf("Lower(7) = %v", err)
	}
	for range 4 {
		start()
	}
	close(hold)
	wg.Wait()
	got := threadAttrs(t)
	if len(got) < 2 {
		t.Fatalf("found %d threads, want several", len(got))
	}
	for tid, a := range got {
		if a.Nice != 7 {
			t.Errorf("thread %d: niceness %d, want 7", tid, a.Nice)
		}
		// The short slice, where the kernel keeps one (Linux 6.12+; 0 before).
		if a.Runtime != ShortestSlice && a.Runtime != 0 {
			t.Errorf("thread %d: slice %d ns, want %d", tid, a.Runtime, ShortestSlice)
		}
	}
	if err := Lower(-1); err == nil {
		t.Error("Lower(-1) = nil, want an error")
	}
}

// TestLowerWithoutSlices: where sched_setattr is refused, the niceness alone is set, and
// the walk still ends.
func TestLowerWithoutSlices(t *testing.T) {
	slices := false
	for range 10 {
		changed, err := lowerPass(9, &slices)
		if err != nil {
			t.Fatal(err)
		}
		if !changed {
			break
		}
	}
	got := threadAttrs(t)
	if len(got) < 2 {
		t.Fatalf("found %d threads, want several", len(got))
	}
	for tid, a := range got {
		if a.Nice != 9 {
			t.Errorf("thread %d: niceness %d, want 9", tid, a.Nice)
		}
	}
}
