//go:build !linux

package cpunice

import "fmt"

func lower(n int) error {
	return fmt.Errorf("niceness %d: only supported on Linux", n)
}
