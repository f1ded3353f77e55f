package stack

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

// FreePort picks from 20000-32767, below Linux's ephemeral range (32768-60999), so the
// port cannot be taken in the meantime by an outgoing connection the kernel numbers
// itself (Envoy, the control plane and the tests open many); only a deliberate bind by
// another process can race it.
const portLow, portHigh = 20000, 32768

// Ports hands out loopback ports, never the same one twice. The zero value is ready.
type Ports struct {
	mu    sync.Mutex
	given map[int]bool
}

// processPorts is shared by every FreePort call of this process: parallel tests must
// not be given the same port before either has bound it.
var processPorts Ports

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and that no other
// FreePort call of this process has returned.
func FreePort() (int, error) { return processPorts.Free() }

// Free returns a port on 127.0.0.1 that was free a moment ago and that p has not given.
func (p *Ports) Free() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.given == nil {
		p.given = map[int]bool{}
	}
	for range 1000 {
		port := portLow + rand.IntN(portHigh-portLow)
		if p.given[port] || !PortFree(port) {
			continue
		}
		p.given[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("stack: no free port in %d-%d after 1000 tries", portLow, portHigh)
}

// PortFree reports whether 127.0.0.1:port can be bound right now.
func PortFree(port int) bool {
	l, err := net.Listen("tcp", Loopback(port))
	if err != nil {
		return false
	}
	return l.Close() == nil
}

// Loopback returns "127.0.0.1:<port>".
func Loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
