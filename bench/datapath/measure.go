package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/llmedge/llmedge/bench/host"
)

// benchModel is the model every scenario's request names.
const benchModel = "gpt-4o-mini"

// chatBody is the request every scenario sends: a tiny non-streaming chat completion.
const chatBody = `{"model":"` + benchModel + `","messages":[{"role":"user","content":"hello"}]}`

// streamBody asks for an SSE answer; the x-fake-* headers pace it.
const streamBody = `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}`

// target is one thing to send requests to: a scenario or a peer.
type target struct {
	Name    string // key in the JSON
	Label   string // for tables
	Kind    string // "llmedge" (own scenarios) or "peer"
	URL     string
	Headers map[string]string
	Procs   []*proc // processes on its data path (CPU, RSS)
	Stream  bool    // measured in the streaming comparison
	Steps   bool    // measured in the rate ladder
	Check   string  // a response header that must be present (proves a filter ran)
	Error   string  // why it could not be measured
	// Overflows reads the Envoy's circuit-breaker/timeout counters (nil: no Envoy).
	Overflows func() map[string]int64
	Admin     string // the Envoy's admin URL ("": no Envoy)
	// Frozen processes are stopped (SIGSTOP) except while this target is measured.
	Frozen []*proc
}

// thaw resumes the target's frozen processes and returns the function that freezes them again.
func (t *target) thaw() func() {
	for _, p := range t.Frozen {
		p.freeze(false)
	}
	if len(t.Frozen) > 0 {
		time.Sleep(200 * time.Millisecond) // let timers that fired while stopped run first
	}
	return func() {
		for _, p := range t.Frozen {
			p.freeze(true)
		}
	}
}

// newTransport is a plain HTTP/1.1 keep-alive transport that never uses a proxy.
func newTransport(maxIdle int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        maxIdle,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
}

func (t *target) request(body string, extra map[string]string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, t.URL, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range t.Headers {
		req.Header.Set(k, v)
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	return req
}

// probe sends one request and checks the answer is a 200 chat completion (and carries the
// check header, if any).
func (t *target) probe(c *http.Client) error {
	resp, err := c.Do(t.request(chatBody, nil))
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`"chat.completion"`)) {
		return fmt.Errorf("%s: HTTP %d: %.300s", t.Name, resp.StatusCode, b)
	}
	if t.Check != "" && resp.Header.Get(t.Check) == "" {
		return fmt.Errorf("%s: response lacks %s (the filter did not run?)", t.Name, t.Check)
	}
	return nil
}

// seqResult is one block of sequential (concurrency 1) requests.
type seqResult struct {
	N      int     `json:"n"`
	Errors int     `json:"errors"`
	P50    float64 `json:"p50_us"`
	P90    float64 `json:"p90_us"`
	P99    float64 `json:"p99_us"`
	P999   float64 `json:"p999_us"`
	Mean   float64 `json:"mean_us"`
	Max    float64 `json:"max_us"`
	Secs   float64 `json:"seconds"`
	// CPU seconds per 1,000 requests of each data-path process during the block.
	CPUPer1k map[string]float64 `json:"cpu_s_per_1k"`
	FirstErr string             `json:"first_error,omitempty"`
	// Foreign is the CPU other processes used meanwhile, in cores.
	Foreign float64 `json:"foreign_cpu_cores"`
}

// sequential sends warmup then n requests one after another on one keep-alive connection
// and returns the latency of the n (from writing the request to reading the whole body).
func sequential(r *runner, t *target, c *http.Client, n, warmup int) seqResult {
	one := func() (time.Duration, error) {
		req := t.request(chatBody, nil)
		t0 := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		var refusal []byte
		if resp.StatusCode != http.StatusOK {
			refusal, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("HTTP %d%s", resp.StatusCode, errorCode(refusal))
		}
		return d, err
	}
	for i := 0; i < warmup; i++ {
		_, _ = one()
	}
	lat := make([]time.Duration, 0, n)
	errs, first := 0, ""
	before := cpuSnapshot(r, t.Procs)
	start := time.Now()
	for i := 0; i < n; i++ {
		d, err := one()
		if err != nil {
			errs++
			if first == "" {
				first = err.Error()
			}
			continue
		}
		lat = append(lat, d)
	}
	secs := time.Since(start).Seconds()
	res := summarize(lat)
	res.N, res.Errors, res.FirstErr, res.Secs = len(lat), errs, first, secs
	res.CPUPer1k = cpuPer1k(r, t.Procs, before, n)
	return res
}

// errorCode is " <code>" for an error body shaped like the edge's ({"error":{"code":...}}),
// or "" for any other body.
func errorCode(body []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		return ""
	}
	return " " + e.Error.Code
}

func summarize(lat []time.Duration) seqResult {
	var res seqResult
	if len(lat) == 0 {
		return res
	}
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	res.P50, res.P90, res.P99, res.P999 = us(lat, 0.50), us(lat, 0.90), us(lat, 0.99), us(lat, 0.999)
	res.Max, res.Mean = us(lat, 1), host.Us(sum/time.Duration(len(lat)))
	return res
}

// us is the nearest-rank percentile q of the latencies, in µs.
func us(lat []time.Duration, q float64) float64 { return host.Us(host.Pct(lat, q)) }

type cpuSnap map[*proc]float64

func cpuSnapshot(r *runner, procs []*proc) cpuSnap {
	s := cpuSnap{}
	for _, p := range procs {
		s[p] = r.cpuSeconds(p)
	}
	return s
}

func cpuPer1k(r *runner, procs []*proc, before cpuSnap, requests int) map[string]float64 {
	out := map[string]float64{}
	if requests == 0 {
		return out
	}
	for _, p := range procs {
		out[p.Name] = (r.cpuSeconds(p) - before[p]) / (float64(requests) / 1000)
	}
	return out
}

// stepResult is one constant-rate step of the open-loop ladder.
type stepResult struct {
	Rate       int                `json:"rate"`
	Sent       int                `json:"sent"`
	OK         int                `json:"ok"`
	Errors     int                `json:"errors"`
	FirstErr   string             `json:"first_error,omitempty"`
	Throughput float64            `json:"throughput_rps"`
	P50        float64            `json:"p50_us"`
	P99        float64            `json:"p99_us"`
	Max        float64            `json:"max_us"`
	CPUPer1k   map[string]float64 `json:"cpu_s_per_1k"`
	Pass10     bool               `json:"p99_under_10ms"`
	Pass50     bool               `json:"p99_under_50ms"`
	// Overflows are the Envoy counters (circuit breakers, timeouts, retries) that moved
	// during the step.
	Overflows map[string]int64 `json:"envoy_overflows,omitempty"`
	Foreign   float64          `json:"foreign_cpu_cores"`
}

// ok reports whether the step sustained its rate without errors.
func (s stepResult) sustained() bool {
	return s.Errors == 0 && s.Sent > 0 && s.Throughput >= 0.95*float64(s.Rate)
}

// step runs one constant-rate step with the vegeta library: an open-loop attacker that
// starts more workers when responses are slow, so a slow proxy cannot slow the arrivals.
func step(r *runner, t *target, tr *http.Transport, rate int, dur time.Duration) stepResult {
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	att := vegeta.NewAttacker(vegeta.Workers(8), vegeta.MaxWorkers(4096), vegeta.MaxBody(64<<10), vegeta.Client(client))
	targeter := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodPost, URL: t.URL, Body: []byte(chatBody), Header: t.request(chatBody, nil).Header})
	lat := make([]time.Duration, 0, int(float64(rate)*dur.Seconds())+16)
	res := stepResult{Rate: rate}
	var ovBefore map[string]int64
	if t.Overflows != nil {
		ovBefore = t.Overflows()
	}
	before := cpuSnapshot(r, t.Procs)
	var first, last time.Time
	for x := range att.Attack(targeter, vegeta.ConstantPacer{Freq: rate, Per: time.Second}, dur, t.Name) {
		res.Sent++
		if first.IsZero() || x.Timestamp.Before(first) {
			first = x.Timestamp
		}
		if e := x.End(); e.After(last) {
			last = e
		}
		if x.Error != "" || x.Code != http.StatusOK {
			res.Errors++
			if res.FirstErr == "" {
				res.FirstErr = fmt.Sprintf("code %d %s", x.Code, x.Error)
			}
			continue
		}
		res.OK++
		lat = append(lat, x.Latency)
	}
	res.CPUPer1k = cpuPer1k(r, t.Procs, before, res.Sent)
	if t.Overflows != nil {
		res.Overflows = counterDeltas(ovBefore, t.Overflows())
	}
	if span := last.Sub(first).Seconds(); span > 0 {
		res.Throughput = float64(res.OK) / span
	}
	s := summarize(lat)
	res.P50, res.P99, res.Max = s.P50, s.P99, s.Max
	res.Pass10 = res.sustained() && res.P99 < 10_000
	res.Pass50 = res.sustained() && res.P99 < 50_000
	return res
}

// streamSample is one paced SSE answer: when the response headers and each data event
// arrived, from the moment the request was sent.
type streamSample struct {
	Headers float64   `json:"headers_us"`
	Events  []float64 `json:"events_us"`
	Err     string    `json:"error,omitempty"`
}

func streamOnce(t *target, c *http.Client, chunks int, interval time.Duration) streamSample {
	req := t.request(streamBody, map[string]string{
		"x-fake-chunks":         fmt.Sprint(chunks),
		"x-fake-chunk-interval": interval.String(),
	})
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return streamSample{Err: err.Error()}
	}
	defer resp.Body.Close()
	s := streamSample{Headers: host.Us(time.Since(start))}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		s.Err = fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, b)
		return s
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "data: ") {
			s.Events = append(s.Events, host.Us(time.Since(start)))
		}
		if err != nil {
			if err != io.EOF {
				s.Err = err.Error()
			}
			break
		}
	}
	return s
}

// counterDeltas are the counters that moved from before to after (nil: none).
func counterDeltas(before, after map[string]int64) map[string]int64 {
	var out map[string]int64
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			if out == nil {
				out = map[string]int64{}
			}
			out[k] = d
		}
	}
	return out
}
