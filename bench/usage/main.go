// Command usage measures whether the usage ledger keeps up with the traffic: the real
// `llmedge controlplane` (its access log service, ledger, store and access log files) fed
// over its xDS unix socket with StreamAccessLogs messages shaped like Envoy's, at fixed
// open-loop rates, into SQLite and into a real PostgreSQL (internal/stack's).
//
//	go run ./bench/usage -out docs/bench
//
// writes docs/bench/usage.json and usage.md. For each store a fresh control plane runs
// every rate in turn: -streams streams (Envoy workers) send rate records/s between them
// for -duration, batched as Envoy batches them (a message when 16 KiB of entries are
// buffered or a second has passed); then it waits until the ledger has stored them all.
// Per step: the rate achieved, the largest backlog (records sent but not stored), how
// long after the last send the last record was stored, records spooled or dropped, and
// the control plane's CPU; at the end /usage must count every record sent.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aidatav3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/llmedge/llmedge/bench/host"
	"github.com/llmedge/llmedge/internal/stack"
	"github.com/llmedge/llmedge/internal/wire"
)

// Envoy's batching of the usage log (controlplane/translate/usage.go).
const (
	batchBytes    = 16 * 1024
	batchInterval = time.Second
)

// The target (issue 11) and what "keeps up" means for a step.
const (
	targetRate = 2000
	maxLag     = time.Second // every record stored within this of the last send
	minShare   = 0.98        // of the offered rate actually sent
)

type options struct {
	out      string
	llmedge  string
	rates    []int
	duration time.Duration
	streams  int
	stores   []string
	drain    time.Duration
}

// Report is usage.json.
type Report struct {
	host.Header
	LoadAvgStart string  `json:"loadavg_start"`
	LoadAvgEnd   string  `json:"loadavg_end"`
	Streams      int     `json:"streams"`
	DurationS    float64 `json:"step_s"`
	EntryBytes   int     `json:"entry_bytes"`
	Stores       []Store `json:"stores"`
}

// Store is one control plane's run over the rates.
type Store struct {
	Name   string `json:"store"`
	Error  string `json:"error,omitempty"`
	Steps  []Step `json:"steps"`
	Sent   int64  `json:"records_sent"`
	Stored int64  `json:"records_in_usage_query"` // /usage's request count at the end
}

// Step is one rate.
type Step struct {
	Offered     int     `json:"offered_per_s"`
	Sent        int64   `json:"sent"`
	Achieved    float64 `json:"achieved_per_s"`
	Stored      int64   `json:"stored"` // written + replayed during the step and the drain
	BacklogMax  int64   `json:"backlog_max"`
	LagMS       float64 `json:"lag_after_last_send_ms"`
	Spooled     int64   `json:"spooled"`
	SpoolMaxB   int64   `json:"spool_max_bytes"`
	Dropped     int64   `json:"dropped"`
	CPUPer1k    float64 `json:"controlplane_cpu_s_per_1k"`
	OtherCores  float64 `json:"other_cpu_cores"`
	LoadCores   float64 `json:"load_generator_cpu_cores"`
	KeepsUp     bool    `json:"keeps_up"`
	DrainFailed bool    `json:"drain_timed_out,omitempty"`
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "docs/bench", "directory for usage.json and usage.md ('' writes nothing)")
	flag.StringVar(&o.llmedge, "llmedge", "", "llmedge binary (default: go build ./cmd/llmedge into a temporary directory)")
	rates := flag.String("rates", "2000,4000,8000,16000,32000", "offered records per second, one step each, in this order")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each step")
	flag.IntVar(&o.streams, "streams", 2, "access log streams (Envoy workers) sharing the rate")
	stores := flag.String("stores", "sqlite,postgres", "usage stores to measure")
	flag.DurationVar(&o.drain, "drain", time.Minute, "how long to wait for the ledger to store a step's records")
	flag.Parse()
	for _, f := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fatalf("-rates: bad rate %q", f)
		}
		o.rates = append(o.rates, n)
	}
	o.stores = strings.Split(*stores, ",")
	if err := run(o); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/usage: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(o options) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "llmedge-bench-usage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.llmedge == "" {
		root, err := stack.RepoRoot()
		if err != nil {
			return err
		}
		logf("building llmedge")
		o.llmedge = filepath.Join(dir, "llmedge")
		if err := stack.GoBuild(ctx, root, "./cmd/llmedge", o.llmedge); err != nil {
			return err
		}
	}
	r := &stack.Runner{Paths: stack.Paths{Llmedge: o.llmedge}, Dir: dir, LogDir: dir}
	rep := &Report{Header: host.NewHeader("./bench/usage"), LoadAvgStart: loadavg(), Streams: o.streams,
		DurationS: o.duration.Seconds(), EntryBytes: proto.Size(entry("x", time.Now()))}
	for _, name := range o.stores {
		st := Store{Name: name}
		if err := measureStore(ctx, r, o, &st); err != nil {
			st.Error = err.Error()
			logf("%s: %v", name, err)
		}
		rep.Stores = append(rep.Stores, st)
	}
	rep.LoadAvgEnd = loadavg()
	if err := host.WriteJSON(o.out, "usage.json", rep); err != nil {
		return err
	}
	md := markdown(rep)
	fmt.Print(md)
	if o.out == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(o.out, "usage.md"), []byte(md), 0o644)
}

// measureStore runs a fresh control plane on store and steps it through the rates.
func measureStore(ctx context.Context, r *stack.Runner, o options, st *Store) error {
	dir := filepath.Join(r.Dir, st.Name)
	socks, err := stack.MakeSockets(dir, []string{"hk"})
	if err != nil {
		return err
	}
	usage := ""
	switch st.Name {
	case "sqlite":
	case "postgres":
		// Its own directory under /tmp: the server runs as an unprivileged user when we are root.
		pgDir, err := os.MkdirTemp("", "llmedge-bench-pg-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(pgDir)
		pg, err := r.StartPostgres(ctx, stack.Postgres{Dir: pgDir}, "llmedge")
		if err != nil {
			return err
		}
		defer pg.Stop()
		dsn := filepath.Join(dir, "dsn")
		if err := os.WriteFile(dsn, []byte(pg.DSN("llmedge")), 0o600); err != nil {
			return err
		}
		usage = "  store: postgres\n  postgres: {dsn_file: " + dsn + "}\n"
	default:
		return fmt.Errorf("unknown store %q (sqlite, postgres)", st.Name)
	}
	addrs, err := host.FreeAddrs(3)
	if err != nil {
		return err
	}
	routes := filepath.Join(dir, "routes.yaml")
	yaml := "version: 1\nregions:\n  hk: {listen: " + addrs[0] + ", extauthz: " + addrs[1] + ", upstreams: [openai]}\n" +
		"upstreams:\n  openai: {url: https://api.openai.com, allowed_regions: [hk]}\n" +
		"routes:\n  openai: {match: {prefix: /openai}, upstream: openai, prefix_rewrite: /}\n" +
		"usage:\n" + usage + "  prices:\n    - {upstream: openai, model: gpt-4o, input: 2.5, output: 10, cached: 1.25, currency: USD}\n"
	if err := os.WriteFile(routes, []byte(yaml), 0o644); err != nil {
		return err
	}
	cp := stack.ControlPlane{Config: routes, XDSAddr: stack.Unix(socks.XDS()), HTTPAddr: addrs[2], StateDir: filepath.Join(dir, "state")}
	p, err := r.StartControlPlane(ctx, "controlplane-"+st.Name, cp)
	if err != nil {
		return err
	}
	defer p.Stop()
	if err := p.Await(ctx, stack.LlmedgeStartTimeout, stack.HTTPStatus(cp.StatusURL()+"/readyz", 200)); err != nil {
		return err
	}
	conn, err := grpc.NewClient(cp.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, rate := range o.rates {
		logf("%s: %d records/s for %s over %d streams", st.Name, rate, o.duration, o.streams)
		s, err := step(ctx, conn, cp.StatusURL(), p.Pid(), rate, o)
		if err != nil {
			return err
		}
		logf("  sent %d at %.0f/s; backlog max %d; stored %.0f ms after the last send; spooled %d, dropped %d; keeps up: %v",
			s.Sent, s.Achieved, s.BacklogMax, s.LagMS, s.Spooled, s.Dropped, s.KeepsUp)
		st.Steps = append(st.Steps, s)
		st.Sent += s.Sent
	}
	st.Stored, err = usageRequests(ctx, cp.StatusURL())
	if err == nil && st.Stored != st.Sent {
		err = fmt.Errorf("/usage counts %d requests, %d were sent", st.Stored, st.Sent)
	}
	return err
}

// step offers rate records/s for o.duration, then waits until all are stored.
func step(ctx context.Context, conn *grpc.ClientConn, status string, pid, rate int, o options) (Step, error) {
	s := Step{Offered: rate}
	m0, err := scrape(ctx, status)
	if err != nil {
		return s, err
	}
	stored := func(m ledgerMetrics) int64 { return m.written + m.replayed - m0.written - m0.replayed }
	var sent atomic.Int64
	cpu := host.MarkCPU(pid)
	begin := time.Now()
	errs := make(chan error, o.streams)
	var wg sync.WaitGroup
	for i := range o.streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(rate) * int64(o.duration) / int64(time.Second) / int64(o.streams)
			errs <- stream(ctx, conn, fmt.Sprintf("bench-%d-%d-%d", rate, i, begin.UnixNano()), float64(rate)/float64(o.streams), n, &sent)
		}()
	}
	done := make(chan struct{})
	var sendEnd time.Time // written before done is closed
	go func() { wg.Wait(); sendEnd = time.Now(); close(done) }()
	// Sample the ledger while sending and until every record is stored.
	var last time.Time
	deadline := time.Time{}
	for {
		m, err := scrape(ctx, status)
		if err != nil {
			return s, err
		}
		s.BacklogMax = max(s.BacklogMax, sent.Load()-stored(m))
		s.SpoolMaxB = max(s.SpoolMaxB, m.spoolBytes)
		s.Stored, s.Spooled, s.Dropped = stored(m), m.spooled-m0.spooled, m.dropped-m0.dropped
		select {
		case <-done:
			if last.IsZero() {
				close(errs)
				for err := range errs {
					if err != nil {
						return s, fmt.Errorf("access log stream: %w", err)
					}
				}
				last = sendEnd
				s.Sent = sent.Load()
				s.Achieved = float64(s.Sent) / last.Sub(begin).Seconds()
				deadline = last.Add(o.drain)
			}
		default:
		}
		if !last.IsZero() && s.Stored+s.Dropped >= s.Sent {
			s.LagMS = float64(time.Since(last).Microseconds()) / 1000
			break
		}
		if last.IsZero() && time.Since(begin) > o.duration+o.drain {
			return s, errors.New("the access log streams did not finish sending (the control plane stopped reading)")
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			s.DrainFailed, s.LagMS = true, float64(o.drain.Milliseconds())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	child, self, other := cpu.Since()
	s.CPUPer1k, s.OtherCores, s.LoadCores = child/float64(s.Sent)*1000, other, self/time.Since(begin).Seconds()
	s.KeepsUp = !s.DrainFailed && s.Spooled == 0 && s.Dropped == 0 && s.Achieved >= minShare*float64(rate) &&
		s.LagMS <= float64(maxLag.Milliseconds())
	return s, nil
}

// stream is one Envoy worker's access log stream: n entries at perSec, open loop, in
// messages of about batchBytes or every batchInterval; the node comes with the first.
func stream(ctx context.Context, conn *grpc.ClientConn, prefix string, perSec float64, n int64, sent *atomic.Int64) error {
	c, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		return err
	}
	id := &accesslogv3.StreamAccessLogsMessage_Identifier{
		Node:    &corev3.Node{Id: prefix, Locality: &corev3.Locality{Region: "hk"}},
		LogName: wire.AccessLogName,
	}
	var batch []*accesslogdatav3.HTTPAccessLogEntry
	size, flushed := 0, time.Now()
	send := func() error {
		msg := &accesslogv3.StreamAccessLogsMessage{Identifier: id,
			LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch}}}
		if err := c.Send(msg); err != nil {
			return err
		}
		sent.Add(int64(len(batch)))
		id, batch, size, flushed = nil, nil, 0, time.Now()
		return nil
	}
	start := time.Now()
	for i := int64(0); i < n; {
		now := time.Now()
		due := min(n, int64(now.Sub(start).Seconds()*perSec))
		for ; i < due; i++ {
			e := entry(fmt.Sprintf("%s-%d", prefix, i), now)
			batch = append(batch, e)
			if size += proto.Size(e); size >= batchBytes {
				if err := send(); err != nil {
					return err
				}
			}
		}
		if len(batch) > 0 && (i == n || time.Since(flushed) >= batchInterval) {
			if err := send(); err != nil {
				return err
			}
		}
		time.Sleep(time.Millisecond)
	}
	_, err = c.CloseAndRecv()
	return err
}

// entry is what Envoy sends for one successful OpenAI chat completion through the edge
// (docs/USAGE.md): the request's facts, extauthz's caller, the request marker with the
// model, the typed token usage, the request id in filter state.
func entry(id string, at time.Time) *accesslogdatav3.HTTPAccessLogEntry {
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	str := func(m map[string]any) *structpb.Struct { s, _ := structpb.NewStruct(m); return s }
	usage, _ := anypb.New(&aidatav3.TokenUsage{
		Model: "gpt-4o-2024-08-06", InputTokens: wrapperspb.UInt64(1000), OutputTokens: wrapperspb.UInt64(100),
		TotalTokens: wrapperspb.UInt64(1100), InputTokenDetails: &aidatav3.InputTokenDetails{CachedTokens: wrapperspb.UInt64(200)},
		ExtractionStatus: aidatav3.TokenUsage_COMPLETE,
	})
	rid, _ := anypb.New(wrapperspb.String(id))
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			DownstreamRemoteAddress:       addr("203.0.113.7", 53412),
			DownstreamLocalAddress:        addr("10.0.0.2", 10000),
			DownstreamDirectRemoteAddress: addr("203.0.113.7", 53412),
			UpstreamRemoteAddress:         addr("162.159.140.245", 443),
			UpstreamLocalAddress:          addr("10.0.0.2", 41234),
			UpstreamCluster:               "upstream_openai",
			StartTime:                     timestamppb.New(at),
			TimeToLastRxByte:              durationpb.New(300 * time.Microsecond),
			TimeToFirstUpstreamTxByte:     durationpb.New(2 * time.Millisecond),
			TimeToLastUpstreamTxByte:      durationpb.New(2 * time.Millisecond),
			TimeToFirstUpstreamRxByte:     durationpb.New(120 * time.Millisecond),
			TimeToLastUpstreamRxByte:      durationpb.New(812 * time.Millisecond),
			TimeToFirstDownstreamTxByte:   durationpb.New(121 * time.Millisecond),
			TimeToLastDownstreamTxByte:    durationpb.New(812 * time.Millisecond),
			Duration:                      durationpb.New(812 * time.Millisecond),
			RouteName:                     "openai",
			UpstreamRequestAttemptCount:   1,
			DownstreamWireBytesSent:       760, DownstreamWireBytesReceived: 520,
			UpstreamWireBytesSent: 610, UpstreamWireBytesReceived: 700,
			AccessLogType: accesslogdatav3.AccessLogType_DownstreamEnd,
			Metadata: &corev3.Metadata{
				FilterMetadata: map[string]*structpb.Struct{
					wire.MetadataNamespace:        str(map[string]any{wire.MetadataCaller: "alice", wire.MetadataTenant: "team-a", wire.MetadataUpstream: "openai"}),
					wire.RequestMetadataNamespace: str(map[string]any{wire.RequestMetadataModel: "gpt-4o", wire.RequestMetadataStream: false}),
				},
				TypedFilterMetadata: map[string]*anypb.Any{wire.TokenUsageNamespace: usage},
			},
			FilterStateObjects: map[string]*anypb.Any{wire.RequestIDState: rid},
		},
		ProtocolVersion: accesslogdatav3.HTTPAccessLogEntry_HTTP11,
		Request: &accesslogdatav3.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod_POST, Scheme: "https", Authority: "edge.example.com",
			Path: "/v1/chat/completions", OriginalPath: "/openai/v1/chat/completions",
			UserAgent: "OpenAI/Python 1.54.0", RequestId: id, RequestHeadersBytes: 320, RequestBodyBytes: 180,
		},
		Response: &accesslogdatav3.HTTPResponseProperties{
			ResponseCode: wrapperspb.UInt32(200), ResponseHeadersBytes: 210, ResponseBodyBytes: 550,
			ResponseCodeDetails: "via_upstream",
		},
	}
}

// ledgerMetrics are the control plane's usage counters.
type ledgerMetrics struct {
	written, replayed, spooled, dropped, spoolBytes int64
}

func scrape(ctx context.Context, status string) (ledgerMetrics, error) {
	var m ledgerMetrics
	code, body, err := stack.Get(ctx, status+"/metrics")
	if err != nil || code != 200 {
		return m, fmt.Errorf("metrics: %d %v", code, err)
	}
	fields := map[string]*int64{
		"llmedge_usage_records_written_total":  &m.written,
		"llmedge_usage_records_replayed_total": &m.replayed,
		"llmedge_usage_records_spooled_total":  &m.spooled,
		"llmedge_usage_records_dropped_total":  &m.dropped,
		"llmedge_usage_spool_bytes":            &m.spoolBytes,
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if p := fields[name]; ok && p != nil {
			f, _ := strconv.ParseFloat(v, 64)
			*p = int64(f)
		}
	}
	return m, nil
}

// usageRequests is the request count /usage reports for the last hour.
func usageRequests(ctx context.Context, status string) (int64, error) {
	code, body, err := stack.Get(ctx, status+"/usage?since=1h&format=csv")
	if err != nil || code != 200 {
		return 0, fmt.Errorf("/usage: %d %v %s", code, err, body)
	}
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	if len(lines) != 2 {
		return 0, fmt.Errorf("/usage: want a header and one total, got %q", body)
	}
	head, row := strings.Split(lines[0], ","), strings.Split(lines[1], ",")
	for i, h := range head {
		if h == "requests" && i < len(row) {
			return strconv.ParseInt(row[i], 10, 64)
		}
	}
	return 0, errors.New("/usage: no requests column")
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
