package usage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	aidatav3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Envoy's own JSON access log line (controlplane/translate, jsonAccessLog) carries every
// fact of a request the ledger records, so the lines of a region's Envoy can rebuild the
// records the ledger never received: Envoy's gRPC access log has no acknowledgements and
// keeps nothing while its stream is down, so the requests a region served while the
// control plane was restarting, crashed or out of reach are in Envoy's log only.
// ImportEnvoyLog adds them; a record the ledger holds already is skipped (the store is
// idempotent on time and request id), so importing a whole log, or the same log twice, is
// safe.

// envoyLine is the part of Envoy's access log line a record is built from.
type envoyLine struct {
	Time      string `json:"time"`
	Region    string `json:"region"`
	RequestID string `json:"request_id"`
	Route     string `json:"route"`
	Caller    string `json:"caller"`
	Tenant    string `json:"tenant"`
	// UpstreamName is the upstream extauthz named (upstream is Envoy's cluster).
	UpstreamName string `json:"upstream_name"`
	Path         string `json:"path"`
	Status       uint32 `json:"status"`
	Details      string `json:"details"`
	DurationMS   *int64 `json:"duration_ms"`
	FirstByteUS  *int64 `json:"first_byte_sent_us"`
	Attempts     uint32 `json:"attempts"`
	BytesIn      uint64 `json:"bytes_in"`
	BytesOut     uint64 `json:"bytes_out"`
	HeadersIn    uint64 `json:"request_headers_bytes"`
	HeadersOut   uint64 `json:"response_headers_bytes"`
	Model        any    `json:"model"`
	Stream       any    `json:"stream"`
	// TokenUsage is Envoy's envoy.data.ai.v3.TokenUsage in protobuf text format.
	TokenUsage string `json:"token_usage"`
}

// ErrNoUsageFields says a request's line has none of the usage facts: Envoy wrote it
// without usage.envoy_access_log, so a record built from it would lack the model and the
// tokens.
var ErrNoUsageFields = errors.New("the line carries no usage facts (Envoy wrote it without usage.envoy_access_log: true)")

// ShedDetails are the response code details of a request the region's admission ceiling
// refused: the usage log leaves them out (controlplane/translate, usageAccessLog), and so
// does an import.
const ShedDetails = "local_rate_limited"

// RecordFromEnvoyLine reads one line of Envoy's JSON access log as the ledger would have
// received the request. ok is false for a line that is no request of an llmedge listener
// (Envoy's own messages, a line without a request id or region) and for a request the
// admission ceiling shed; err says what is wrong with a line that claims to be one.
func RecordFromEnvoyLine(line []byte) (r Record, ok bool, err error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Record{}, false, nil
	}
	var l envoyLine
	if err := json.Unmarshal(line, &l); err != nil {
		return Record{}, false, fmt.Errorf("not an access log line: %v", err)
	}
	if l.RequestID == "" || l.Region == "" || l.Time == "" {
		return Record{}, false, nil
	}
	if l.Details == ShedDetails {
		return Record{}, false, nil
	}
	// The key is there, null or not, whenever Envoy's format has it; a JSON string holding
	// these bytes would have its quotes escaped.
	if !bytes.Contains(line, []byte(`"token_usage":`)) {
		return Record{}, false, ErrNoUsageFields
	}
	start, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil {
		return Record{}, false, fmt.Errorf("time: %v", err)
	}
	e := logEntry{
		start:           timestamppb.New(start),
		route:           l.Route,
		attempts:        l.Attempts,
		caller:          l.Caller,
		tenant:          l.Tenant,
		upstream:        l.UpstreamName,
		path:            l.Path,
		requestID:       l.RequestID,
		requestHeaders:  l.HeadersIn,
		requestBody:     l.BytesIn,
		responseHeaders: l.HeadersOut,
		responseBody:    l.BytesOut,
		status:          l.Status,
		details:         l.Details,
		model:           jsonValue(l.Model),
		stream:          jsonValue(l.Stream),
	}
	if l.DurationMS != nil {
		e.duration = spanOf(time.Duration(*l.DurationMS) * time.Millisecond)
	}
	if l.FirstByteUS != nil {
		e.ttfb = spanOf(time.Duration(*l.FirstByteUS) * time.Microsecond)
	}
	if l.TokenUsage != "" {
		var u aidatav3.TokenUsage
		if err := prototext.Unmarshal([]byte(l.TokenUsage), &u); err != nil {
			return Record{}, false, fmt.Errorf("token_usage: %v", err)
		}
		if e.usage, err = anypb.New(&u); err != nil {
			return Record{}, false, err
		}
	}
	return e.record(l.Region), true, nil
}

// jsonValue is a JSON string or boolean as the gRPC access log's metadata value.
func jsonValue(v any) value {
	switch v := v.(type) {
	case string:
		return value{kind: valueString, s: v}
	case bool:
		return value{kind: valueBool, b: v}
	}
	return value{}
}

func spanOf(d time.Duration) span {
	return span{seconds: int64(d / time.Second), nanos: int32(d % time.Second)}
}

// ImportStats counts what ImportEnvoyLog read and did.
type ImportStats struct {
	Lines    int // lines read
	Requests int // request records among them
	Added    int // records the store did not hold yet
	Skipped  int // lines that are not requests of an llmedge listener, or shed requests
	// Bad lists, for the first lines that claim to be requests but cannot be read, where
	// and why (at most 20).
	Bad      []string
	BadLines int
	// NoUsage counts request lines without the usage facts (ErrNoUsageFields); they are
	// not imported and not among BadLines.
	NoUsage int
}

// ImportEnvoyLog reads Envoy's JSON access log lines from r (name labels errors) and adds
// the records store does not hold yet, priced with prices (nil: no prices).
func ImportEnvoyLog(ctx context.Context, store Store, prices *Prices, name string, r io.Reader, st *ImportStats) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	const batchSize = 500
	batch := make([]Record, 0, batchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := insertCounting(ctx, store, batch)
		if err != nil {
			return err
		}
		st.Added += int(n)
		batch = batch[:0]
		return nil
	}
	n := 0
	for sc.Scan() {
		n++
		st.Lines++
		rec, ok, err := RecordFromEnvoyLine(sc.Bytes())
		switch {
		case errors.Is(err, ErrNoUsageFields):
			st.NoUsage++
			continue
		case err != nil:
			st.BadLines++
			if len(st.Bad) < 20 {
				st.Bad = append(st.Bad, fmt.Sprintf("%s:%d: %v", name, n, err))
			}
			continue
		case !ok:
			st.Skipped++
			continue
		}
		st.Requests++
		prices.Apply(&rec)
		if batch = append(batch, rec); len(batch) == batchSize {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return flush()
}

// insertCounting inserts rs and says how many the store did not hold yet.
func insertCounting(ctx context.Context, s Store, rs []Record) (int64, error) {
	if c, ok := s.(interface {
		insert(ctx context.Context, rs []Record) (int64, error)
	}); ok {
		return c.insert(ctx, rs)
	}
	return 0, fmt.Errorf("the store cannot count what it adds")
}
