// Package stack is the one place that knows how llmedge's components are run as local
// processes: where the tools are (Envoy, envoyproxy/ratelimit, redis-server), how the
// llmedge and fakellm binaries are built, which ports they get, the command line and
// environment of every component, how a process is started, watched, and stopped (an
// Envoy drained first: drain.go), and when it is ready. `make run` (cmd/llmedge-run, an Edge) and the end-to-end tests
// (through the testing.TB adapter internal/testenv) call it, and so do the benchmark
// programs under bench/ (Runner.Override states what a benchmark changes);
// compose.yaml is kept equal to its Topology (extauthz inside Envoy, as `make run` runs
// it by default), its ratelimit settings and its extauthz environment by
// deploy/compose_test.go.
//
// A component is added in one place: its settings type with a Cmd method and a Runner
// start function, an entry in Topology and in Edge's starters (a test checks the two
// agree), and its compose service.
//
// The internal hops (xDS, extauthz, ratelimit, Redis) are unix sockets in one private
// directory per stack (Sockets, MakeSockets); only the edge, Envoy admin and health/metrics
// listeners are loopback TCP ports.
//
// Everything here returns errors instead of failing a test, so programs can use it.
//
// Children never inherit the caller's environment: each gets BaseEnv plus the settings
// of its component, so a provider key in the operator's shell reaches no process (the
// keys directory is the only place a key lives).
package stack
