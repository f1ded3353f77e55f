package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmedge/llmedge/bench/host"
)

// The soak: the full edge (make run's configuration) under a constant open-loop rate for a
// long time, in consecutive steps, with every one of its processes' resident memory read
// after each step, to show whether any of them grows with traffic.

// soakStep is one step of the soak.
type soakStep struct {
	ElapsedS float64            `json:"elapsed_s"`
	Sent     int                `json:"sent"`
	Errors   int                `json:"errors"`
	P50us    float64            `json:"p50_us"`
	P99us    float64            `json:"p99_us"`
	RSSMiB   map[string]float64 `json:"rss_mib"` // VmRSS summed over each process group
}

// soakResult is the whole soak.
type soakResult struct {
	Generated string     `json:"generated"`
	Commit    string     `json:"commit"`
	Command   string     `json:"command"`
	Scenario  string     `json:"scenario"`
	Rate      int        `json:"rate"`
	StepS     float64    `json:"step_s"`
	Steps     []soakStep `json:"steps"`
}

// soak runs target t at rate for d in steps of stepDur and writes soak.{json,md} to dir.
func soak(r *runner, t *target, rate int, d, stepDur time.Duration, dir, commit string) error {
	res := &soakResult{Generated: time.Now().UTC().Format(time.RFC3339), Commit: commit, Command: commandLine(),
		Scenario: t.Label, Rate: rate, StepS: stepDur.Seconds()}
	tr := newTransport(512)
	procs := t.Procs
	for _, p := range r.all { // the control plane receives every request's usage record
		if p.Name == "controlplane" {
			procs = append(procs, p)
		}
	}
	began := time.Now()
	res.Steps = append(res.Steps, soakStep{RSSMiB: currentRSS(procs)})
	for time.Since(began) < d {
		st := step(r, t, tr, rate, stepDur)
		s := soakStep{ElapsedS: time.Since(began).Seconds(), Sent: st.Sent, Errors: st.Errors, P50us: st.P50, P99us: st.P99, RSSMiB: currentRSS(procs)}
		res.Steps = append(res.Steps, s)
		logf("soak %4.0f s: sent %d, errors %d, p50 %.0f us, p99 %.0f us", s.ElapsedS, s.Sent, s.Errors, s.P50us, s.P99us)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := host.WriteJSON(dir, "soak.json", res); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "soak.md"), []byte(soakMarkdown(res)), 0o644)
}

// currentRSS is the resident memory of each process now.
func currentRSS(procs []*proc) map[string]float64 {
	out := map[string]float64{}
	for _, p := range procs {
		var mib float64
		for _, pid := range p.groupPIDs() {
			_, rss := host.RSS(pid)
			mib += rss
		}
		out[p.Name] = mib
	}
	return out
}

// soakMarkdown is one table: each process's RSS at the start, after the first step, and at
// the end, with the growth over the run after the first step; then the steps' latency.
func soakMarkdown(res *soakResult) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	last := res.Steps[len(res.Steps)-1]
	w("# Soak: the full edge at a constant rate\n\n")
	w("`%s` at %s requests/s, open loop, for %.0f s in steps of %.0f s; generated %s at commit `%s` by `%s`. "+
		"Resident memory (VmRSS, summed over each process group) read after every step. Raw figures: [soak.json](soak.json).\n\n",
		res.Scenario, fmtInt(res.Rate), last.ElapsedS, res.StepS, res.Generated, res.Commit, res.Command)
	if len(res.Steps) < 3 {
		w("Too short to compare.\n")
		return b.String()
	}
	first := res.Steps[1] // after the first step: allocator and pools warmed up
	w("| process | RSS before traffic, MiB | after the first step | at the end | growth after the first step |\n|---|---:|---:|---:|---:|\n")
	for _, name := range sortedKeys(last.RSSMiB) {
		growth := last.RSSMiB[name] - first.RSSMiB[name]
		w("| %s | %.1f | %.1f | %.1f | %+.1f MiB (%+.0f %%) |\n", name, res.Steps[0].RSSMiB[name], first.RSSMiB[name], last.RSSMiB[name],
			growth, 100*growth/max(first.RSSMiB[name], 0.1))
	}
	var sent, errs int
	p99lo, p99hi := 1e18, 0.0
	for _, s := range res.Steps[1:] {
		sent += s.Sent
		errs += s.Errors
		p99lo, p99hi = min(p99lo, s.P99us), max(p99hi, s.P99us)
	}
	w("\n%s requests, %s errors; p99 per step %s … %s.\n", fmtInt(sent), fmtInt(errs), fmtUS(p99lo), fmtUS(p99hi))
	return b.String()
}
