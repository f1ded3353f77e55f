// Package e2e holds the end-to-end tests: they build the llmedge binaries and run them with
// the real Envoy 1.40 (installed by `make tools`) and the fake LLM upstream, all on
// loopback, and check what a caller and an operator would see.
package e2e
