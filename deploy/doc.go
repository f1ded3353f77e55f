// Package deploy holds no code: its tests check the container packaging at the repo
// root — compose.yaml (parsed with the real compose-spec/compose-go loader), the
// Dockerfile, examples/compose/ and envoy/compose-*.yaml — against the code, the
// routes YAML rules and the process stack of internal/stack (its Topology, its
// ratelimit settings, `make run`'s ports). No Docker engine is needed: nothing is built
// or run with Docker here.
package deploy
