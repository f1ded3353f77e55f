package main

import (
	"net/http"
	"slices"
	"strings"
	"time"
)

// rounds holds what the interleaved rounds share: a client per target and the results.
type rounds struct {
	r       *runner
	guard   *noiseGuard
	o       options
	targets []*target
	sr      map[string]*ScenarioResult
	clients map[string]*http.Client
	stream  *StreamResult
}

// measureRounds runs the rounds: each runs every scenario once, in a rotated order
// (latency, then streams, then the ladder), so drift of the shared machine hits all alike.
func measureRounds(r *runner, guard *noiseGuard, targets []*target, res *Results, o options) {
	m := &rounds{r: r, guard: guard, o: o, targets: targets, sr: map[string]*ScenarioResult{}, clients: map[string]*http.Client{}}
	for _, t := range targets {
		x := &ScenarioResult{Name: t.Name, Label: t.Label, Kind: t.Kind, Error: t.Error, URL: t.URL, Rates: ratesFor(t, o)}
		for _, p := range t.Procs {
			x.Processes = append(x.Processes, p.Name)
		}
		res.Scenarios = append(res.Scenarios, x)
		m.sr[t.Name] = x
		m.clients[t.Name] = &http.Client{Transport: newTransport(1), Timeout: 30 * time.Second}
	}
	m.stream = &StreamResult{Chunks: o.chunks, IntervalMS: float64(o.chunkGap.Milliseconds()), ToleranceMS: float64(o.tolerance.Milliseconds()),
		Samples: map[string][]streamSample{}}
	res.Streaming = m.stream
	for round := range max(o.rounds, o.stepRounds, o.streamRounds) {
		if round < o.rounds {
			m.latencyRound(round)
		}
		if round < o.streamRounds {
			m.streamRound(round)
		}
		if round == 0 {
			res.PeakRSSLight = peakRSSNow(r, targets)
		}
		if round < o.stepRounds {
			st := rotate(m.live(func(t *target) bool { return t.Steps }), round)
			logf("round %d/%d: open-loop rate ladder %v (peers also %v), %s per step: %s", round+1, o.stepRounds, o.rates, o.peerRates, o.stepDur, names(st))
			ladder(r, guard, st, m.sr, o)
		}
	}
}

// live are the measurable targets pred selects.
func (m *rounds) live(pred func(*target) bool) []*target {
	var out []*target
	for _, t := range m.targets {
		if t.Error == "" && pred(t) {
			out = append(out, t)
		}
	}
	return out
}

// latencyRound measures every target at concurrency 1.
func (m *rounds) latencyRound(round int) {
	order := rotate(m.live(func(*target) bool { return true }), round)
	logf("round %d/%d: concurrency-1 latency, %d requests each: %s", round+1, m.o.rounds, m.o.n, names(order))
	for _, t := range order {
		x, other := guarded(m.guard, t.Name+" c=1", func() seqResult {
			refreeze := t.thaw()
			defer refreeze()
			return sequential(m.r, t, m.clients[t.Name], m.o.n, m.o.warmup)
		})
		x.Foreign = other
		m.sr[t.Name].Latency = append(m.sr[t.Name].Latency, x)
		logf("  %-22s p50 %7.0f us  p99 %7.0f us  errors %d", t.Name, x.P50, x.P99, x.Errors)
	}
}

// streamRound takes -stream-n paced answers from every streaming target.
func (m *rounds) streamRound(round int) {
	st := m.live(func(t *target) bool { return t.Stream })
	o := m.o
	logf("round %d/%d: streaming, %d answers of %d chunks %s apart each: %s", round+1, o.streamRounds, o.streamN, o.chunks, o.chunkGap, names(st))
	got, _ := guarded(m.guard, "streams", func() map[string][]streamSample {
		out := map[string][]streamSample{}
		for i := range o.streamN {
			for _, t := range rotate(st, round+i) {
				out[t.Name] = append(out[t.Name], streamOnce(t, m.clients[t.Name], o.chunks, o.chunkGap))
			}
		}
		return out
	})
	for name, samples := range got {
		m.stream.Samples[name] = append(m.stream.Samples[name], samples...)
	}
}

// peakRSSNow reads every process's peak RSS (thawing frozen peers for the read).
func peakRSSNow(r *runner, targets []*target) map[string]float64 {
	out := map[string]float64{}
	for _, p := range r.all {
		p.freeze(false)
		out[p.Name] = peakRSS(p)
	}
	freezePeers(targets)
	return out
}

// ladder steps every target through the rates, interleaved: at each rate every target that
// is still in the race runs one step before the next rate starts. A target leaves the race
// at its first step with p99 >= 50 ms, an error or a rate it could not sustain.
func ladder(r *runner, guard *noiseGuard, order []*target, sr map[string]*ScenarioResult, o options) {
	all := map[int]bool{}
	for _, t := range order {
		for _, rate := range ratesFor(t, o) {
			all[rate] = true
		}
	}
	rates := sortedKeys(all)
	alive := map[string]bool{}
	steps := map[string][]stepResult{}
	transports := map[string]*http.Transport{}
	for _, t := range order {
		alive[t.Name] = true
		transports[t.Name] = newTransport(4096)
	}
	for _, rate := range rates {
		for _, t := range order {
			if !alive[t.Name] || !slices.Contains(ratesFor(t, o), rate) {
				continue
			}
			refreeze := t.thaw()
			x := step(r, t, transports[t.Name], rate, o.stepDur)
			steps[t.Name] = append(steps[t.Name], x)
			status, pause := "ok", 300*time.Millisecond
			if !x.Pass50 {
				// Let a saturated scenario drain (queued checks, retries) before the next runs.
				alive[t.Name] = false
				status, pause = "stop", 3*time.Second
			}
			time.Sleep(pause)
			refreeze()
			logf("  %-22s %5d rps: got %7.0f/s p50 %7.0f us p99 %8.0f us errors %d %s", t.Name, rate, x.Throughput, x.P50, x.P99, x.Errors, status)
		}
	}
	for _, t := range order {
		transports[t.Name].CloseIdleConnections()
		sr[t.Name].Steps = append(sr[t.Name].Steps, steps[t.Name])
	}
}

// ratesFor is a target's ladder: the peers get lower rungs first.
func ratesFor(t *target, o options) []int {
	if t.Kind != "peer" {
		return o.rates
	}
	r := append(slices.Clone(o.peerRates), o.rates...)
	slices.Sort(r)
	return slices.Compact(r)
}

func rotate(ts []*target, k int) []*target {
	if len(ts) == 0 {
		return ts
	}
	k %= len(ts)
	return append(slices.Clone(ts[k:]), ts[:k]...)
}

func names(ts []*target) string {
	var n []string
	for _, t := range ts {
		n = append(n, t.Name)
	}
	return strings.Join(n, ", ")
}
