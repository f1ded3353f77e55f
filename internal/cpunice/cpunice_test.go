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

// threadNice reads each thread's niceness from /proc (field 19 of stat).
func threadNice(t *testing.T) map[string]int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		n, err := strconv.Atoi(fields[16]) // stat field 19: nice (fields after comm start at 3)
		if err != nil {
			t.Fatal(err)
		}
		out[task.Name()] = n
	}
	return out
}

func TestLowerEveryThread(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("niceness per thread is Linux's")
	}
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
	got := threadNice(t)
	if len(got) < 2 {
		t.Fatalf("found %d threads, want several", len(got))
	}
	for tid, n := range got {
		if n != 7 {
			t.Errorf("thread %s: niceness %d, want 7 (all: %v)", tid, n, got)
		}
		// The short slice, where the kernel keeps one (Linux 6.12+; 0 before).
		id, _ := strconv.Atoi(tid)
		if a, err := unix.SchedGetAttr(id, 0); err == nil && a.Runtime != ShortestSlice && a.Runtime != 0 {
			t.Errorf("thread %s: slice %d ns, want %d", tid, a.Runtime, ShortestSlice)
		}
	}
	if err := Lower(-1); err == nil {
		t.Error("Lower(-1) = nil, want an error")
	}
}

// TestLowerWithoutSlices: where sched_setattr is refused, the niceness alone is set, and
// the walk still ends.
func TestLowerWithoutSlices(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("niceness per thread is Linux's")
	}
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
	for tid, n := range threadNice(t) {
		if n != 9 {
			t.Errorf("thread %s: niceness %d, want 9", tid, n)
		}
	}
}
