package main

import (
	"fmt"
	"strings"
)

// report renders hop.md from a run.
func report(r result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# One side call through Envoy, by transport\n\n")
	fmt.Fprintf(&b, "`%s` at `%s`, %s. Written by `go run ./bench/hop`; raw figures in [`hop.json`](hop.json).\n\n",
		r.Command, r.Commit, r.Date.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "The real Envoy 1.40 (two workers, nothing pinned) in front of the fake upstream: with only its router, "+
		"then with an ext_authz filter whose server answers every check at once, over gRPC (as the edge calls extauthz) "+
		"and over plain HTTP/1.1, each server its own process on a unix socket; then the same answer given inside "+
		"Envoy by a Go dynamic module (`bench/hop/module`), on the worker thread, and from a goroutine that hands "+
		"it back through Envoy's scheduler (as a check waiting for Redis would). The cost of the hop itself, "+
		"with no decision in it; a module's CPU is Envoy's.\n\n")
	fmt.Fprintf(&b, "Concurrency 1: median over %d rounds of each round's p50/p99 (%d sequential requests per listener "+
		"and round, order rotated each round). CPU: an open loop at %d req/s for %.0f s per listener. Other processes "+
		"used %.2f cores on average during the run.\n\n", r.Rounds, r.N, r.Rate, r.DurS, r.OtherCPU)
	fmt.Fprintf(&b, "| path | c=1 p50 | c=1 p99 | added p50 | added p99 | Envoy CPU / req | check server CPU / req | at %d req/s: ok, p99 |\n", r.Rate)
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| direct to the fake | %.0f µs | %.0f µs | — | — | — | — | — |\n", r.Direct.P50us, r.Direct.P99us)
	for _, l := range r.Listeners {
		server := "—"
		if l.proc != "" {
			server = fmt.Sprintf("%.0f µs", l.ServerCPUus)
		}
		fmt.Fprintf(&b, "| %s | %.0f µs | %.0f µs | %+.0f µs | %+.0f µs | %.0f µs | %s | %d/%d, %.1f ms |\n",
			l.Label, l.P50us, l.P99us, l.AddedP50us, l.AddedP99us, l.EnvoyCPUus, server, l.OK, l.Requests, l.LoadP99ms)
	}
	return b.String()
}
