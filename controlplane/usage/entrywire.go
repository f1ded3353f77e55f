package usage

import (
	"errors"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llmedge/llmedge/internal/wire"
)

// The control plane reads Envoy's access log entries straight from their wire form, field
// by field, keeping only what a Record and a Line use: protobuf-go's decoding of a whole
// HTTPAccessLogEntry (a dozen timings, four addresses, maps of maps) was most of the
// ledger's receive cost. The result is what the generated types would give for those
// fields — last value wins, a map key given twice keeps its last entry, a oneof its last
// member — which the tests check against entries built with the generated types.

// logEntry is one HTTPAccessLogEntry as the ledger reads it.
type logEntry struct {
	start           *timestamppb.Timestamp
	duration, ttfb  span
	route, cluster  string
	attempts        uint32
	client, peer    endpoint
	upstreamHost    endpoint
	flags           uint32 // response flags, bit n for ResponseFlags field n
	caller, tenant  string
	upstream        string
	model           value
	stream          value
	usage, info     *anypb.Any // typed filter metadata: token usage, request info
	stateRequestID  *anypb.Any // the request id filter state object
	method          int32
	path, userAgent string
	requestID       string
	headerRequestID string // the x-request-id of the logged request headers
	requestHeaders  uint64 // bytes
	requestBody     uint64
	responseHeaders uint64
	responseBody    uint64
	status          uint32
	details         string
}

// span is a google.protobuf.Duration.
type span struct {
	seconds int64
	nanos   int32
}

func (d span) value() time.Duration {
	return (&durationpb.Duration{Seconds: d.seconds, Nanos: d.nanos}).AsDuration()
}

// value is a google.protobuf.Value as far as the ledger reads one: a string or a bool.
type value struct {
	kind protowire.Number // the oneof member last set, 0 for none
	s    string
	b    bool
}

func (v value) str() string {
	if v.kind != valueString {
		return ""
	}
	return v.s
}

// endpoint is an envoy.config.core.v3.Address: a socket address or a pipe.
type endpoint struct {
	kind protowire.Number // the oneof member last set
	ip   string           // socket address
	port uint32           // its port_value (0 for a named port)
	pipe string           // pipe path
}

// Field numbers of the messages read here (envoy/data/accesslog/v3, envoy/config/core/v3,
// google/protobuf).
const (
	msgIdentifier = 1
	msgHTTPLogs   = 2
	msgTCPLogs    = 3
	logsEntry     = 1

	entryCommon   = 1
	entryRequest  = 3
	entryResponse = 4

	commonDownstreamRemote       = 2
	commonStartTime              = 5
	commonFirstDownstreamTxByte  = 11
	commonUpstreamRemote         = 13
	commonUpstreamCluster        = 15
	commonResponseFlags          = 16
	commonMetadata               = 17
	commonRouteName              = 19
	commonDownstreamDirectRemote = 20
	commonFilterState            = 21
	commonDuration               = 23
	commonAttempts               = 24

	requestMethod       = 1
	requestPath         = 5
	requestUserAgent    = 6
	requestID           = 9
	requestHeaderBytes  = 11
	requestBodyBytes    = 12
	requestHeaders      = 13
	responseCode        = 1
	responseHeaderBytes = 2
	responseBodyBytes   = 3
	responseDetails     = 6

	flagsUnauthorized = 13

	metadataFilter = 1
	metadataTyped  = 2
	mapKey         = 1
	mapValue       = 2
	structFields   = 1
	valueString    = 3
	valueBool      = 4
	anyTypeURL     = 1
	anyValue       = 2

	addressSocket = 1
	addressPipe   = 2
	socketIP      = 2
	socketPort    = 3
	pipePath      = 1

	secondsField = 1 // Timestamp and Duration
	nanosField   = 2
	wrappedValue = 1 // UInt32Value
)

// flagNames are Envoy's short response flag names (as %RESPONSE_FLAGS% prints them), by
// field number of envoy.data.accesslog.v3.ResponseFlags; 13 (unauthorized_details) is a
// message whose presence is the flag.
var flagNames = [...]string{1: "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
	"DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DR"}

var errTruncated = errors.New("access log message: malformed protobuf")

// fields calls f for each field of the message b, with the field's raw value: the varint
// (or fixed) value for scalars, the bytes for length-delimited fields.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		var v uint64
		var bs []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			bs, n = protowire.ConsumeBytes(b)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		case protowire.Fixed32Type:
			var v32 uint32
			v32, n = protowire.ConsumeFixed32(b)
			v = uint64(v32)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		if err := f(num, typ, v, bs); err != nil {
			return err
		}
	}
	return nil
}

// decodeLogs reads a StreamAccessLogsMessage: its identifier (decoded whole: only the
// first message of a stream carries one) and its HTTP entries, appended to entries.
func decodeLogs(b []byte, entries []logEntry) (*accesslogv3.StreamAccessLogsMessage_Identifier, []logEntry, error) {
	var id *accesslogv3.StreamAccessLogsMessage_Identifier
	start := len(entries)
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case msgIdentifier:
			if id == nil {
				id = &accesslogv3.StreamAccessLogsMessage_Identifier{}
			}
			return proto.UnmarshalOptions{Merge: true}.Unmarshal(bs, id)
		case msgTCPLogs: // the oneof's other member: the HTTP entries are gone
			entries = entries[:start]
		case msgHTTPLogs:
			entries = entries[:start]
			return fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
				if num != logsEntry || typ != protowire.BytesType {
					return nil
				}
				var e logEntry
				if err := e.decode(bs); err != nil {
					return err
				}
				entries = append(entries, e)
				return nil
			})
		}
		return nil
	})
	return id, entries, err
}

// decode reads an HTTPAccessLogEntry.
func (e *logEntry) decode(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case entryCommon:
			return e.decodeCommon(bs)
		case entryRequest:
			return e.decodeRequest(bs)
		case entryResponse:
			return e.decodeResponse(bs)
		}
		return nil
	})
}

func (e *logEntry) decodeCommon(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error {
		if typ == protowire.VarintType {
			if num == commonAttempts {
				e.attempts = uint32(v)
			}
			return nil
		}
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case commonDownstreamRemote:
			return e.client.decode(bs)
		case commonDownstreamDirectRemote:
			return e.peer.decode(bs)
		case commonUpstreamRemote:
			return e.upstreamHost.decode(bs)
		case commonStartTime:
			if e.start == nil {
				e.start = &timestamppb.Timestamp{}
			}
			return decodeTime(bs, &e.start.Seconds, &e.start.Nanos)
		case commonDuration:
			return decodeTime(bs, &e.duration.seconds, &e.duration.nanos)
		case commonFirstDownstreamTxByte:
			return decodeTime(bs, &e.ttfb.seconds, &e.ttfb.nanos)
		case commonUpstreamCluster:
			e.cluster = string(bs)
		case commonRouteName:
			e.route = string(bs)
		case commonResponseFlags:
			return e.decodeFlags(bs)
		case commonMetadata:
			return e.decodeMetadata(bs)
		case commonFilterState:
			key, val, err := mapEntry(bs)
			if err == nil && key == wire.RequestIDState {
				e.stateRequestID, err = decodeAny(val)
			}
			return err
		}
		return nil
	})
}

// decodeFlags reads ResponseFlags: bit n of e.flags is field n. A second ResponseFlags
// merges into the first, as protobuf merges messages.
func (e *logEntry) decodeFlags(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
		if num <= 0 || int(num) >= len(flagNames) {
			return nil
		}
		bit := uint32(1) << num
		switch {
		case num == flagsUnauthorized && typ == protowire.BytesType:
			e.flags |= bit
		case num != flagsUnauthorized && typ == protowire.VarintType && v != 0:
			e.flags |= bit
		case num != flagsUnauthorized && typ == protowire.VarintType:
			e.flags &^= bit
		}
		return nil
	})
}

// flagList names the flags set, in field order (nil for none).
func flagList(bits uint32) []string {
	var out []string
	for n := 1; n < len(flagNames); n++ {
		if bits&(1<<n) != 0 {
			out = append(out, flagNames[n])
		}
	}
	return out
}

// decodeMetadata reads the namespaces the ledger uses from envoy.config.core.v3.Metadata.
func (e *logEntry) decodeMetadata(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if typ != protowire.BytesType || (num != metadataFilter && num != metadataTyped) {
			return nil
		}
		key, val, err := mapEntry(bs)
		if err != nil {
			return err
		}
		switch {
		case num == metadataFilter && key == wire.MetadataNamespace:
			// A map key given again replaces its value.
			var caller, tenant, upstream value
			err = structFieldsOf(val, map[string]*value{wire.MetadataCaller: &caller, wire.MetadataTenant: &tenant, wire.MetadataUpstream: &upstream})
			e.caller, e.tenant, e.upstream = caller.str(), tenant.str(), upstream.str()
		case num == metadataFilter && key == wire.RequestMetadataNamespace:
			e.model, e.stream = value{}, value{}
			err = structFieldsOf(val, map[string]*value{wire.RequestMetadataModel: &e.model, wire.RequestMetadataStream: &e.stream})
		case num == metadataTyped && key == wire.TokenUsageNamespace:
			e.usage, err = decodeAny(val)
		case num == metadataTyped && key == wire.RequestInfoNamespace:
			e.info, err = decodeAny(val)
		}
		return err
	})
}

func (e *logEntry) decodeRequest(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error {
		switch {
		case typ == protowire.VarintType && num == requestMethod:
			e.method = int32(v)
		case typ == protowire.VarintType && num == requestHeaderBytes:
			e.requestHeaders = v
		case typ == protowire.VarintType && num == requestBodyBytes:
			e.requestBody = v
		case typ != protowire.BytesType:
		case num == requestPath:
			e.path = string(bs)
		case num == requestUserAgent:
			e.userAgent = string(bs)
		case num == requestID:
			e.requestID = string(bs)
		case num == requestHeaders:
			key, val, err := mapEntry(bs)
			if err == nil && key == "x-request-id" {
				e.headerRequestID = string(val)
			}
			return err
		}
		return nil
	})
}

func (e *logEntry) decodeResponse(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) error {
		switch {
		case typ == protowire.VarintType && num == responseHeaderBytes:
			e.responseHeaders = v
		case typ == protowire.VarintType && num == responseBodyBytes:
			e.responseBody = v
		case typ != protowire.BytesType:
		case num == responseCode:
			return fields(bs, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
				if num == wrappedValue && typ == protowire.VarintType {
					e.status = uint32(v)
				}
				return nil
			})
		case num == responseDetails:
			e.details = string(bs)
		}
		return nil
	})
}

func (a *endpoint) decode(b []byte) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if typ != protowire.BytesType || num < addressSocket || num > 3 {
			return nil
		}
		if a.kind != num { // another member of the oneof: start afresh
			*a = endpoint{kind: num}
		}
		return fields(bs, func(n protowire.Number, typ protowire.Type, v uint64, bs []byte) error {
			switch {
			case num == addressSocket && n == socketIP && typ == protowire.BytesType:
				a.ip = string(bs)
			case num == addressSocket && n == socketPort && typ == protowire.VarintType:
				a.port = uint32(v)
			case num == addressSocket && n == socketPort+1 && typ == protowire.BytesType:
				a.port = 0 // named_port: the other member of the port oneof
			case num == addressPipe && n == pipePath && typ == protowire.BytesType:
				a.pipe = string(bs)
			}
			return nil
		})
	})
}

// decodeTime reads a Timestamp or a Duration.
func decodeTime(b []byte, seconds *int64, nanos *int32) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
		if typ != protowire.VarintType {
			return nil
		}
		switch num {
		case secondsField:
			*seconds = int64(v)
		case nanosField:
			*nanos = int32(v)
		}
		return nil
	})
}

// mapEntry reads a map<string, …> entry: its key and the raw bytes of its value.
func mapEntry(b []byte) (key string, val []byte, err error) {
	var k []byte
	err = fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if typ == protowire.BytesType {
			switch num {
			case mapKey:
				k = bs
			case mapValue:
				val = bs
			}
		}
		return nil
	})
	return string(k), val, err
}

// structFieldsOf reads the named fields of a google.protobuf.Struct as values.
func structFieldsOf(b []byte, want map[string]*value) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if num != structFields || typ != protowire.BytesType {
			return nil
		}
		key, val, err := mapEntry(bs)
		v, ok := want[key]
		if err != nil || !ok {
			return err
		}
		*v = value{} // a key given again replaces its value
		return fields(val, func(num protowire.Number, typ protowire.Type, x uint64, bs []byte) error {
			if num < 1 || num > 6 || typ != valueTypes[num] {
				return nil // not a member of the kind oneof (or not of its wire type): unknown
			}
			*v = value{kind: num}
			switch num {
			case valueString:
				v.s = string(bs)
			case valueBool:
				v.b = x != 0
			}
			return nil
		})
	})
}

// valueTypes are the wire types of google.protobuf.Value's kind members: null, number,
// string, bool, struct, list.
var valueTypes = [...]protowire.Type{1: protowire.VarintType, protowire.Fixed64Type, protowire.BytesType, protowire.VarintType, protowire.BytesType, protowire.BytesType}

// decodeAny reads a google.protobuf.Any, decoded later by its reader (anypb.UnmarshalTo).
func decodeAny(b []byte) (*anypb.Any, error) {
	a := &anypb.Any{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) error {
		if typ == protowire.BytesType {
			switch num {
			case anyTypeURL:
				a.TypeUrl = string(bs)
			case anyValue:
				a.Value = append(a.Value[:0:0], bs...)
			}
		}
		return nil
	})
	return a, err
}
