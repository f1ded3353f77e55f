//go:build linux

package cpunice

import (
	"runtime"
	"strings"
	"sync"
	"testing"
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

// checkLowered checks that every thread of this process has niceness want and, when
// slice is set, the short slice where the kernel keeps one (Linux 6.12+; 0 before).
func checkLowered(t *testing.T, want int, slice bool) {
	t.Helper()
	got, err := ThreadAttrs(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 {
		t.Fatalf("found %d threads, want several", len(got))
	}
	for tid, a := range got {
		if int(a.Nice) != want {
			t.Errorf("thread %d: niceness %d, want %d", tid, a.Nice, want)
		}
		if slice && a.Runtime != ShortestSlice && a.Runtime != 0 {
			t.Errorf("thread %d: slice %d ns, want %d", tid, a.Runtime, ShortestSlice)
		}
	}
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
	checkLowered(t, 7, true)
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
	checkLowered(t, 9, false)
}
