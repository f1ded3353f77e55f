// Package main is extauthz as an HTTP filter inside Envoy: a dynamic module for Envoy
// 1.40's envoy.filters.http.dynamic_modules, built with `go build -buildmode=c-shared`
// into libllmedge.so (make build). The module starts the region's extauthz in Envoy's
// process — its policy stream from the control plane, its key store, its quota limiter
// and its HTTP listener (health, metrics; no gRPC: nothing calls it inside Envoy),
// configured from Envoy's environment like `llmedge extauthz` (extauthz.EnvOptions) — and
// checks each request on Envoy's worker instead of through a gRPC side call: the same
// extauthz.Main.Begin, answered the way Envoy's ext_authz filter answers (the caller in the
// ext_authz dynamic metadata, refusals with the details "ext_authz_denied"), so the rest
// of the edge's config is the same in both modes. A check that must ask Redis about quotas
// waits on a goroutine and resumes the request through Envoy's scheduler; the worker never
// blocks. The module also reads the request's facts — the model and stream flag of a body
// up to wire.BodyReadLimit, Gemini's model from the path (extauthz.RequestFacts) — where
// Envoy's json_to_metadata and header_to_metadata read them for extauthz as a process, and
// writes the same llmedge.request metadata. A request whose inputs are byte for byte those
// of one the worker allowed before is not read and decided again in Go: the C fast path
// (fast.c) replays the decision, and asks Go (extauthz.Main.ReplayLend) only whether it
// still holds and what the quota says — and then not for the next requests Go lends it
// (kept, below), which C answers alone (LLMEDGE_CHECK_REPLAY=off turns it all off).
//
// The module is written against the C ABI Envoy 1.40.0 exports (its
// envoy_dynamic_module_callback_* symbols) and declares only the functions it uses: the
// Go SDK of Envoy's dynamic modules is not obtainable from this project's module proxy.
// Envoy only warns when a module's ABI version differs from its own, so a signature that
// changed between Envoy releases would not be refused at load: the end-to-end suite runs
// the module in the real Envoy and checks that it decides.
package main

/*
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

// A filter config: the check (failover 0, one for every listener; it reads request bodies
// of at most body_limit bytes) or key failover on an upstream's retries (failover 1, one
// per upstream cluster, naming the upstream).
typedef struct { int failover; const char* upstream; size_t upstream_len; size_t body_limit; } llmedge_config;
// Where the C hooks call llmedgeCheck from: the request's headers (a body, if any, is not
// read), the body's last chunk, or the trailers after a body.
enum { LLMEDGE_AT_HEADERS = 0, LLMEDGE_AT_BODY_END = 1, LLMEDGE_AT_TRAILERS = 2 };
// A byte range: Envoy's buffers and the module's have this layout.
typedef struct { const char* ptr; size_t len; } llmedge_buf;
// One header: name and value.
typedef struct { const char* name; size_t name_len; const char* value; size_t value_len; } llmedge_header;
// The module's state of one stream (or, for key failover, of one try): its filter config,
// a cgo.Handle of the Go side's (0 for none), whether the check waits for the body it
// reads and whether it is still waiting for its answer (the body and trailers are held
// until it is done), and the response headers to add (one malloc'd block, see cHeaders),
// which C adds and frees without a call into Go.
typedef struct {
  const llmedge_config* config;
  uintptr_t handle;
  int awaiting_body;
  int pending;
  // key_ready says the fast path (fast.c) built this check's key: a decision Go makes
  // during the check may be kept under it (llmedge_remember).
  int key_ready;
  llmedge_header* response_headers;
  size_t response_headers_len;
} llmedge_stream;

// One thing an allowed check does to its request, as the fast path replays it: set a
// request header (a: name, b: value), remove one (a), set a dynamic metadata string (a:
// namespace, b: key, c: value) or bool (c.len: 1 for true), or set the key header of an
// upstream with several keys (a: name; b: c.len values, each a native-endian uint32
// length and its bytes; the entry's turn picks one, then moves to the next).
enum { LLMEDGE_OP_SET_HEADER = 1, LLMEDGE_OP_REMOVE_HEADER = 2, LLMEDGE_OP_METADATA_STRING = 3, LLMEDGE_OP_METADATA_BOOL = 4, LLMEDGE_OP_SET_KEY = 5 };
typedef struct { int op; llmedge_buf a, b, c; } llmedge_op;
// llmedgeReplay's answers: the decision holds and the request goes on; it held and the
// request was refused (a spent quota); it no longer holds, or needs Redis: check it.
enum { LLMEDGE_REPLAY_ALLOWED = 0, LLMEDGE_REPLAY_REFUSED = 1, LLMEDGE_REPLAY_MISS = 2 };
// A kept decision's lending (extauthz.Lent), which the fast path answers later requests
// from without calling into Go: budget uses left and used uses answered (both atomic: Go's
// sweeper takes an idle budget back and counts the uses), then what Go wrote when it lent
// (on the worker, before the budget): the generation it was lent under (llmedge_gen),
// the time from which it is void, and the X-RateLimit values (limit NULL: no headers).
typedef struct {
  int64_t budget;
  int64_t used;
  uint64_t gen;
  int64_t until_ns;
  int64_t remaining;
  int64_t reset_at;
  char* limit;
  size_t limit_len;
  // turn: the keys of a key pool the entry gave, written by C when it frees the entry
  // (free_entry), read by Go when it releases the decision (release).
  uint64_t turn;
} llmedge_lend;
// fast.c.
void llmedge_fast_init(llmedge_buf ns, llmedge_buf region, llmedge_buf upstream, llmedge_buf route, llmedge_buf hop,
    llmedge_buf prefix, llmedge_buf* credentials, size_t n, size_t limit);
int llmedge_fast_check(void* filter, llmedge_stream* s, int at);
uintptr_t llmedge_remember(llmedge_stream* s, uintptr_t replay, llmedge_lend* lend, llmedge_op* ops, size_t ops_len,
    size_t facts_len);
uint64_t llmedge_gen(void);
void llmedge_changed(void);
// hooks.c: llmedgeReplay after a yield when one is due.
int llmedge_replay(void* filter, llmedge_stream* s, uintptr_t replay);

// Exported by the Envoy binary, resolved when Envoy loads the module. Header type 0 is the
// request's headers, 2 the response's.
bool envoy_dynamic_module_callback_http_get_header(void* filter, int header_type, llmedge_buf key,
    llmedge_buf* value, size_t index, size_t* count);
size_t envoy_dynamic_module_callback_http_get_headers_size(void* filter, int header_type);
bool envoy_dynamic_module_callback_http_get_headers(void* filter, int header_type, llmedge_header* result);
bool envoy_dynamic_module_callback_http_set_header(void* filter, int header_type, llmedge_buf key, llmedge_buf value);
bool envoy_dynamic_module_callback_http_get_metadata_string(void* filter, int source, llmedge_buf ns, llmedge_buf key,
    llmedge_buf* result);
void envoy_dynamic_module_callback_http_set_dynamic_metadata_string(void* filter, llmedge_buf ns, llmedge_buf key,
    llmedge_buf value);
void envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(void* filter, llmedge_buf ns, llmedge_buf key,
    bool value);
// Body type 0 is the chunk the current hook received, 1 what Envoy buffered for this filter.
size_t envoy_dynamic_module_callback_http_get_body_chunks_size(void* filter, int body_type);
bool envoy_dynamic_module_callback_http_get_body_chunks(void* filter, int body_type, llmedge_buf* result);
bool envoy_dynamic_module_callback_http_received_buffered_request_body(void* filter);
bool envoy_dynamic_module_callback_http_filter_get_attribute_string(void* filter, int id, llmedge_buf* result);
void envoy_dynamic_module_callback_http_send_response(void* filter, uint32_t status, llmedge_header* headers,
    size_t headers_len, llmedge_buf body, llmedge_buf details);
const void* envoy_dynamic_module_callback_get_most_specific_route_config(void* filter);
void envoy_dynamic_module_callback_http_filter_continue_decoding(void* filter);
void* envoy_dynamic_module_callback_http_filter_scheduler_new(void* filter);
void envoy_dynamic_module_callback_http_filter_scheduler_commit(void* scheduler, uint64_t event);
void envoy_dynamic_module_callback_http_filter_scheduler_delete(void* scheduler);
// The number of Envoy workers (--concurrency); main thread only.
uint32_t envoy_dynamic_module_callback_get_concurrency();
*/
import "C"

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/cgo"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sirupsen/logrus"

	"github.com/llmedge/llmedge/extauthz"
	"github.com/llmedge/llmedge/internal/wire"
)

// abiVersion is Envoy 1.40.0's dynamic-module ABI version: with it Envoy logs "matched";
// any other value is loaded with a warning.
var abiVersion = C.CString("v0.2.0")

const (
	headerRequest  = 0
	headerResponse = 2

	metadataRoute = 1

	bodyReceived = 0
	bodyBuffered = 1

	// attributeSourceAddress is source.address: the caller as Envoy sees it (after trusted
	// X-Forwarded-For hops), "ip:port", port 0 when it came from the header.
	attributeSourceAddress = 24
	// attributeRouteName is xds.route_name: the name of the route the request matched,
	// empty when it matched none.
	attributeRouteName = 61

	statusContinue      = 0
	statusStopIteration = 1

	// deniedDetails are the response code details of a refusal: Envoy's ext_authz filter's,
	// which the edge's local replies key on.
	deniedDetails = "ext_authz_denied"
	// failedDetails are those of a check that failed inside the module (a bug): the request
	// is refused, never forwarded unchecked.
	failedDetails = "llmedge_authz_failed"
)

// policyWait bounds how long the first filter config waits for the caller policy.
const policyWait = 10 * time.Second

// running is the region's extauthz, started by the first filter config (on Envoy's main
// thread) and read by every worker; region is the region it checks.
var (
	startMu sync.Mutex
	running atomic.Pointer[extauthz.Main]
	region  string
)

// filterConfig is the filter's config from the control plane (no secrets: Envoy shows it
// in /config_dump): the region, and for key failover the upstream.
type filterConfig struct {
	Region   string `json:"region"`
	Upstream string `json:"upstream"`
}

// checkConfig is what Envoy keeps for a filter config of the check: the module has one
// extauthz per process, so every such config is this one. A key failover config is
// allocated per upstream cluster and freed by the C config_destroy hook.
var checkConfig = func() *C.llmedge_config {
	c := (*C.llmedge_config)(C.calloc(1, C.size_t(unsafe.Sizeof(C.llmedge_config{}))))
	c.body_limit = wire.BodyReadLimit
	return c
}()

// envoy_dynamic_module_on_program_init runs on Envoy's main thread when it loads the module.
// Each of Envoy's workers holds a Go P between its calls into Go (see hooks.c): with one P
// more than Envoy has workers, one stays free for the module's goroutines (quota
// reservations, the policy stream), and sysmon, finding an idle P, leaves the workers'
// alone between their calls instead of taking them back after 20 us. More Ps than CPUs
// cost nothing while they are idle.
//
//export envoy_dynamic_module_on_program_init
func envoy_dynamic_module_on_program_init() *C.char {
	if workers := int(C.envoy_dynamic_module_callback_get_concurrency()); workers > 0 && runtime.GOMAXPROCS(0) <= workers {
		runtime.GOMAXPROCS(workers + 1)
	}
	if os.Getenv(ReplayEnv) != "off" {
		fastInit()
	}
	return abiVersion
}

// ReplayEnv turns the check's fast path (fast.c) off when set to "off" in Envoy's
// environment: every request is then checked in Go.
const ReplayEnv = "LLMEDGE_CHECK_REPLAY"

// fastInit tells the fast path what the Go check reads (the names in C memory for good).
func fastInit() {
	keep := func(s string) C.llmedge_buf { return C.llmedge_buf{ptr: C.CString(s), len: C.size_t(len(s))} }
	creds := (*[8]C.llmedge_buf)(C.calloc(8, C.size_t(unsafe.Sizeof(C.llmedge_buf{}))))
	n := 0
	for _, h := range wire.CredentialHeaders {
		if n < len(creds) {
			creds[n] = keep(h)
		}
		n++ // more than fit: fast.c stays off
	}
	C.llmedge_fast_init(keep(wire.AuthzRouteMetadata), keep(wire.ContextRegion), keep(wire.ContextUpstream),
		keep(wire.ContextRoute), keep(wire.ContextHop), keep(wire.InternalHeaderPrefix), &creds[0], C.size_t(n),
		C.size_t(wire.BodyReadLimit))
}

// llmedgeYield lets Go's scheduler run the calling Envoy thread's goroutine (hooks.c calls
// it every few milliseconds of a worker's checks): the thread's P counts a new time slice.
//
//export llmedgeYield
func llmedgeYield() { runtime.Gosched() }

//export envoy_dynamic_module_on_http_filter_config_new
func envoy_dynamic_module_on_http_filter_config_new(_ unsafe.Pointer, name, raw C.llmedge_buf) (out unsafe.Pointer) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "llmedge module: filter config: %v\n", r)
			out = nil
		}
	}()
	filter := C.GoStringN(name.ptr, C.int(name.len))
	var c filterConfig
	if err := json.Unmarshal(C.GoBytes(unsafe.Pointer(raw.ptr), C.int(raw.len)), &c); err != nil {
		fmt.Fprintf(os.Stderr, "llmedge module: filter %s: config must be JSON {\"region\": ...}: %v\n", filter, err)
		return nil // Envoy refuses the filter config
	}
	failover := filter == wire.KeyFailoverModuleFilter
	if failover && c.Upstream == "" {
		fmt.Fprintf(os.Stderr, "llmedge module: filter %s: config names no upstream\n", filter)
		return nil
	}
	if err := start(c.Region); err != nil {
		fmt.Fprintf(os.Stderr, "llmedge module: %v\n", err)
		return nil
	}
	if !failover {
		return unsafe.Pointer(checkConfig)
	}
	fc := (*C.llmedge_config)(C.calloc(1, C.size_t(unsafe.Sizeof(C.llmedge_config{}))))
	fc.failover = 1
	fc.upstream, fc.upstream_len = C.CString(c.Upstream), C.size_t(len(c.Upstream))
	return unsafe.Pointer(fc)
}

// start runs the region's extauthz in this process, once.
func start(r string) error {
	startMu.Lock()
	defer startMu.Unlock()
	if running.Load() != nil {
		if r != region {
			return fmt.Errorf("this Envoy checks region %q; a filter config for region %q is refused", region, r)
		}
		return nil
	}
	opts, err := extauthz.EnvOptions(r, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	// envoyproxy/ratelimit's limiter logs through logrus: JSON like ours, and only what
	// needs attention.
	logrus.SetOutput(os.Stderr)
	logrus.SetFormatter(&logrus.JSONFormatter{})
	logrus.SetLevel(logrus.WarnLevel)
	m, err := extauthz.New(opts)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background()) }()
	select {
	case <-m.Ready():
	case err := <-errc:
		return fmt.Errorf("extauthz in Envoy did not start: %w", err)
	}
	// Envoy takes traffic on this listener as soon as the filter config is made, and a
	// check before the policy arrives is refused (503 not_ready): hold the config, on
	// Envoy's main thread, until the policy is in force. The control plane that sent the
	// listener serves the policy too, so it is a round trip away; past policyWait Envoy
	// goes on, and its checks say not_ready until the policy comes.
	select {
	case <-m.PolicyIn():
	case <-time.After(policyWait):
		opts.Logger.Warn("no caller policy yet; checks answer not_ready until the control plane sends one", "waited", policyWait)
	}
	go func() {
		if err := <-errc; err != nil {
			opts.Logger.Error("extauthz in Envoy stopped; requests are checked against the last policy it had", "err", err)
		}
	}()
	region = r
	// A change to what a kept decision depends on voids the fast path's lendings.
	m.SetReplayHooks(func() { C.llmedge_changed() }, func() { settleLendings(false) })
	running.Store(m)
	return nil
}

// stream is the Go side's state of a request whose check waits on Redis: the outcome to
// apply when the quota answer arrives.
type stream struct {
	out atomic.Pointer[extauthz.Outcome]
}

func buf(s string) C.llmedge_buf {
	return C.llmedge_buf{ptr: (*C.char)(unsafe.Pointer(unsafe.StringData(s))), len: C.size_t(len(s))}
}

// envoyString aliases Envoy's memory: valid until the hook returns or the headers change.
func envoyString(b C.llmedge_buf) string {
	if b.ptr == nil || b.len == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Pointer(b.ptr)), int(b.len))
}

func routeMetadata(f unsafe.Pointer, key string) string {
	var v C.llmedge_buf
	if !C.envoy_dynamic_module_callback_http_get_metadata_string(f, metadataRoute, buf(wire.AuthzRouteMetadata), buf(key), &v) {
		return ""
	}
	return strings.Clone(envoyString(v))
}

// input reads what the check needs from the request, and whether it matched a route.
// Every string is copied: a check that waits on Redis outlives the hook.
func input(f unsafe.Pointer) (extauthz.Input, bool) {
	// Look the route up now, as Envoy's ext_authz filter does: a filter before this one
	// may have cleared the route cache (json_to_metadata does, in a config that has it),
	// and a route computed later (after the filter that strips x-forwarded-proto before
	// the router) is no route at all (controlplane/translate, upstreamHeaders). Asking for
	// this filter's per-route config makes Envoy compute it, with the request as the
	// caller sent it.
	C.envoy_dynamic_module_callback_get_most_specific_route_config(f)
	in := extauthz.Input{
		Region:   routeMetadata(f, wire.ContextRegion),
		Upstream: routeMetadata(f, wire.ContextUpstream),
		Route:    routeMetadata(f, wire.ContextRoute),
		Hop:      routeMetadata(f, wire.ContextHop),
		Headers:  map[string]string{},
	}
	n := C.envoy_dynamic_module_callback_http_get_headers_size(f, headerRequest)
	if n > 0 {
		hs := make([]C.llmedge_header, n)
		if C.envoy_dynamic_module_callback_http_get_headers(f, headerRequest, &hs[0]) {
			for _, h := range hs {
				name := envoyString(C.llmedge_buf{ptr: h.name, len: h.name_len})
				switch {
				case name == ":path":
					in.Path = strings.Clone(envoyString(C.llmedge_buf{ptr: h.value, len: h.value_len}))
				case extauthz.CheckedHeader(name):
					v := envoyString(C.llmedge_buf{ptr: h.value, len: h.value_len})
					if prev, ok := in.Headers[name]; ok {
						in.Headers[name] = prev + "," + v
					} else {
						in.Headers[strings.Clone(name)] = strings.Clone(v)
					}
				}
			}
		}
	}
	var v C.llmedge_buf
	if C.envoy_dynamic_module_callback_http_filter_get_attribute_string(f, attributeSourceAddress, &v) {
		s := envoyString(v)
		if ap, err := netip.ParseAddrPort(s); err == nil {
			in.Source = ap.Addr()
		} else if a, err := netip.ParseAddr(s); err == nil {
			in.Source = a
		}
	}
	routed := in.Region != "" || in.Upstream != "" || in.Route != ""
	if !routed && bool(C.envoy_dynamic_module_callback_http_filter_get_attribute_string(f, attributeRouteName, &v)) && v.len > 0 {
		routed = true // a route without the context: checked, and refused as misconfigured
	}
	return in, routed
}

// cHeaders copies headers into one block of C memory, the array first and the bytes after
// it (Envoy's callbacks take pointers, which Go memory may not hold); nil for none. The
// caller frees the block.
func cHeaders(headers []extauthz.Header) *C.llmedge_header {
	if len(headers) == 0 {
		return nil
	}
	var strs int
	for _, h := range headers {
		strs += len(h.Name) + len(h.Value)
	}
	b := newCBlock(len(headers)*int(unsafe.Sizeof(C.llmedge_header{})), strs)
	arr := unsafe.Slice((*C.llmedge_header)(b.base), len(headers))
	for i, h := range headers {
		name, value := b.buf(h.Name), b.buf(h.Value)
		arr[i] = C.llmedge_header{name: name.ptr, name_len: name.len, value: value.ptr, value_len: value.len}
	}
	return &arr[0]
}

// cBlock is one block of C memory: head bytes for an array, then the bytes of its strings.
type cBlock struct {
	base  unsafe.Pointer
	bytes []byte
	at    int
}

// newCBlock allocates a block (cgo's C.malloc never returns nil: it ends the process).
func newCBlock(head, strs int) *cBlock {
	base := C.malloc(C.size_t(head + strs))
	return &cBlock{base: base, bytes: unsafe.Slice((*byte)(base), head+strs), at: head}
}

// buf copies s into the block's string bytes.
func (b *cBlock) buf(s string) C.llmedge_buf {
	out := C.llmedge_buf{ptr: (*C.char)(unsafe.Add(b.base, b.at)), len: C.size_t(len(s))}
	b.at += copy(b.bytes[b.at:], s)
	return out
}

// refuse answers the request with a local reply Envoy's local-reply mappers shape.
func refuse(f unsafe.Pointer, status int, headers []extauthz.Header, body, details string) {
	arr := cHeaders(headers)
	defer C.free(unsafe.Pointer(arr))
	C.envoy_dynamic_module_callback_http_send_response(f, C.uint32_t(status), arr, C.size_t(len(headers)), buf(body), buf(details))
}

// addResponseHeaders leaves the response headers of an allowed request to the C side's
// response hook, which adds them, and to its destroy hook, which frees them: the request
// does not cross into Go again.
func addResponseHeaders(m unsafe.Pointer, headers []extauthz.Header) {
	s := (*C.llmedge_stream)(m)
	C.free(unsafe.Pointer(s.response_headers))
	s.response_headers, s.response_headers_len = cHeaders(headers), C.size_t(len(headers))
}

// apply carries an outcome out on the request.
func apply(f unsafe.Pointer, out *extauthz.Outcome, path string) {
	if !out.Allow {
		refuse(f, out.Status, out.Headers, out.Body, deniedDetails)
		return
	}
	applyOps(f, allowOps(nil, out, path))
}

// op is one change a check makes to its request (an llmedge_op, in Go strings): set a
// request header (a: name, b: value), remove one (a), set a dynamic metadata string (a:
// namespace, b: key, c: value) or bool (c: "1" for true, "" for false).
type op struct {
	kind    C.int
	a, b, c string
	n       int // LLMEDGE_OP_SET_KEY: how many values b holds
}

// keyOp is the op that sets pool's header to its values in turn (LLMEDGE_OP_SET_KEY).
func keyOp(pool *extauthz.KeyPool) op {
	var b []byte
	for _, v := range pool.Values {
		b = binary.NativeEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return op{kind: C.LLMEDGE_OP_SET_KEY, a: pool.Header, b: string(b), n: len(pool.Values)}
}

// allowOps appends to ops what an allowed outcome does to the request, in the order
// Envoy's ext_authz filter does it: set, then remove, then the query; then the caller in
// the ext_authz dynamic metadata.
func allowOps(ops []op, out *extauthz.Outcome, path string) []op {
	for _, h := range out.SetHeaders {
		ops = append(ops, op{kind: C.LLMEDGE_OP_SET_HEADER, a: h.Name, b: h.Value})
	}
	for _, name := range out.RemoveHeaders {
		ops = append(ops, op{kind: C.LLMEDGE_OP_REMOVE_HEADER, a: name})
	}
	if len(out.RemoveQueryParams) > 0 {
		ops = append(ops, op{kind: C.LLMEDGE_OP_SET_HEADER, a: ":path", b: extauthz.WithoutQueryParams(path, out.RemoveQueryParams)})
	}
	for _, kv := range [...][2]string{{wire.MetadataCaller, out.Caller}, {wire.MetadataTenant, out.Tenant}, {wire.MetadataUpstream, out.Upstream}} {
		ops = append(ops, op{kind: C.LLMEDGE_OP_METADATA_STRING, a: wire.AuthzMetadataNamespace, b: kv[0], c: kv[1]})
	}
	return ops
}

// applyOps makes ops' changes through Envoy's callbacks, in order (fast.c's apply_ops
// makes the same from C).
func applyOps(f unsafe.Pointer, ops []op) {
	for _, o := range ops {
		switch o.kind {
		case C.LLMEDGE_OP_SET_HEADER:
			C.envoy_dynamic_module_callback_http_set_header(f, headerRequest, buf(o.a), buf(o.b))
		case C.LLMEDGE_OP_REMOVE_HEADER:
			C.envoy_dynamic_module_callback_http_set_header(f, headerRequest, buf(o.a), C.llmedge_buf{})
		case C.LLMEDGE_OP_METADATA_STRING:
			C.envoy_dynamic_module_callback_http_set_dynamic_metadata_string(f, buf(o.a), buf(o.b), buf(o.c))
		case C.LLMEDGE_OP_METADATA_BOOL:
			C.envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(f, buf(o.a), buf(o.b), C.bool(o.c != ""))
		}
	}
}

// keep hands the stream's Go state to its C state, for the later hooks and the release.
func keep(m unsafe.Pointer, st *stream) {
	(*C.llmedge_stream)(m).handle = C.uintptr_t(cgo.NewHandle(st))
}

// requestBody copies the request body the filter held: what Envoy buffered, and at the
// body's end the last chunk, which the hook received. nil past wire.BodyReadLimit (the C
// hook reads only bodies that declare a length within it; HTTP/2 may still send more).
func requestBody(f unsafe.Pointer, at C.int) []byte {
	var out []byte
	read := func(typ C.int) bool {
		n := C.envoy_dynamic_module_callback_http_get_body_chunks_size(f, typ)
		if n == 0 {
			return true
		}
		chunks := make([]C.llmedge_buf, n)
		if !C.envoy_dynamic_module_callback_http_get_body_chunks(f, typ, &chunks[0]) {
			return true
		}
		for _, c := range chunks {
			if len(out)+int(c.len) > wire.BodyReadLimit {
				return false
			}
			out = append(out, envoyString(c)...)
		}
		return true
	}
	if !read(bodyBuffered) {
		return nil
	}
	if at == C.LLMEDGE_AT_BODY_END && !bool(C.envoy_dynamic_module_callback_http_received_buffered_request_body(f)) && !read(bodyReceived) {
		return nil
	}
	return out
}

// setFacts writes the request's facts into its llmedge.request dynamic metadata, where
// Envoy's json_to_metadata and header_to_metadata write them when extauthz runs as a
// process: the ledger's access log entry and the quota filter's descriptors read them
// there.
func setFacts(f unsafe.Pointer, facts extauthz.Facts) { applyOps(f, factOps(facts)) }

// factOps are setFacts's changes.
func factOps(facts extauthz.Facts) []op {
	var ops []op
	if facts.Model != "" {
		ops = append(ops, op{kind: C.LLMEDGE_OP_METADATA_STRING, a: wire.RequestMetadataNamespace, b: wire.RequestMetadataModel, c: facts.Model})
	}
	if facts.StreamSet {
		v := ""
		if facts.Stream {
			v = "1"
		}
		ops = append(ops, op{kind: C.LLMEDGE_OP_METADATA_BOOL, a: wire.RequestMetadataNamespace, b: wire.RequestMetadataStream, c: v})
	}
	return ops
}

// llmedgeCheck checks a request (the C hooks call it for the check's filter): at its
// headers, or, for a body it reads, at the body's end or the trailers (at). It answers
// statusContinue, or statusStopIteration for a request refused or waiting on Redis (the
// body hook's StopIterationAndBuffer, the trailers hook's StopIteration).
//
//export llmedgeCheck
func llmedgeCheck(f, m unsafe.Pointer, at C.int) (status C.int) {
	// A panic escaping into Envoy aborts the process (and its crash dump logs the request's
	// headers): every entry from Envoy recovers, and the request is refused.
	defer func() {
		if recover() != nil {
			refuse(f, 500, nil, "", failedDetails)
			status = statusStopIteration
		}
	}()
	authz := running.Load()
	if authz == nil { // no config was accepted, so Envoy does not run this filter
		refuse(f, 500, nil, "", failedDetails)
		return statusStopIteration
	}
	in, routed := input(f)
	var body []byte
	if at != C.LLMEDGE_AT_HEADERS {
		body = requestBody(f, at)
	}
	facts := extauthz.RequestFacts(in.Path, body)
	setFacts(f, facts)
	in.Model = facts.Model
	if !routed {
		// No route: the router answers 404, as it does after Envoy's ext_authz filter, which
		// checks nothing for a request without a route. Every route the control plane
		// writes names its region and upstream (controlplane/translate tests this), so a
		// request on a route is never let through here — provided Envoy shows this filter
		// the route the router will use (input); the end-to-end suite, run through the
		// module, fails if it does not (a caller's token would reach the provider).
		return statusContinue
	}
	var (
		out     extauthz.Outcome
		pending *extauthz.Pending
		replay  *extauthz.Replay
	)
	if (*C.llmedge_stream)(m).key_ready != 0 {
		out, pending, replay = authz.BeginReplay(in)
	} else {
		out, pending = authz.Begin(in)
	}
	if pending == nil {
		apply(f, &out, in.Path)
		if !out.Allow {
			return statusStopIteration
		}
		addResponseHeaders(m, out.ResponseHeaders)
		if replay != nil {
			remember(m, replay, facts, &out, in.Path)
		}
		return statusContinue
	}
	// The quota needs Redis: ask off the worker, resume through Envoy's scheduler. After
	// the stream is gone the scheduler drops the event, and the release frees the state.
	st := &stream{}
	keep(m, st)
	(*C.llmedge_stream)(m).pending = 1
	s := C.envoy_dynamic_module_callback_http_filter_scheduler_new(f)
	go func() {
		defer func() {
			recover() // st.out stays nil: the request is refused
			C.envoy_dynamic_module_callback_http_filter_scheduler_commit(s, 1)
			C.envoy_dynamic_module_callback_http_filter_scheduler_delete(s)
		}()
		out := pending.Finish(context.Background())
		st.out.Store(&out)
	}()
	return statusStopIteration
}

// cOps copies ops (at least one) into one block of C memory (cBlock); the fast path frees
// it with its entry.
func cOps(ops []op) *C.llmedge_op {
	var strs int
	for _, o := range ops {
		strs += len(o.a) + len(o.b) + len(o.c)
	}
	b := newCBlock(len(ops)*int(unsafe.Sizeof(C.llmedge_op{})), strs)
	arr := unsafe.Slice((*C.llmedge_op)(b.base), len(ops))
	for i, o := range ops {
		arr[i] = C.llmedge_op{op: o.kind, a: b.buf(o.a), b: b.buf(o.b), c: b.buf(o.c)}
		if o.kind == C.LLMEDGE_OP_SET_KEY {
			arr[i].c = C.llmedge_buf{len: C.size_t(o.n)}
		}
	}
	return &arr[0]
}

// remember keeps an allowed request's decision in the fast path, under the key its hook
// built: the changes setFacts and apply made to the request, in the same order. The
// request is already on its way: whatever happens here, it is not touched.
func remember(m unsafe.Pointer, replay *extauthz.Replay, facts extauthz.Facts, out *extauthz.Outcome, path string) {
	defer func() { recover() }() // not kept, then
	ops := factOps(facts)
	nFacts := len(ops)
	ops = allowOps(ops, out, path)
	if pool := replay.KeyPool(); pool != nil {
		// The decision's key went to this request; later ones get the next keys in turn.
		at := slices.IndexFunc(ops[nFacts:], func(o op) bool { return o.kind == C.LLMEDGE_OP_SET_HEADER && o.a == pool.Header })
		if at < 0 || len(pool.Values) == 0 {
			return
		}
		ops[nFacts+at] = keyOp(pool)
	}
	block := cOps(ops)
	k := newKept(replay)
	h := cgo.NewHandle(k)
	if old := C.llmedge_remember((*C.llmedge_stream)(m), C.uintptr_t(h), k.lend, block, C.size_t(len(ops)), C.size_t(nFacts)); old != 0 {
		release(cgo.Handle(old))
	}
}

// Lendings (extauthz.Lent): a replay answered in Go lends its decision's later requests to
// the fast path, which answers them in C without calling into Go — lendUses of them, or
// with a quota what the leases lend (lendQuotaUses at most); Go counts them later
// (settle), from the used count C keeps.
const (
	lendUses      = 4096
	lendQuotaUses = 256
	// lendIdle: sweeps (one a second) without a use after which a lending's unused quota
	// hits go back to their leases, as the leases give back what an idle edge holds.
	lendIdle = 2
)

// kept is a decision the fast path keeps (its entry holds a cgo.Handle of it) with its
// lending: the llmedge_lend in C memory the entry reads, and the extauthz.Lent it was
// made from. mu orders the worker's replays (which lend) with the sweeper and the release.
type kept struct {
	mu      sync.Mutex
	rp      *extauthz.Replay
	lend    *C.llmedge_lend
	lent    extauthz.Lent
	counted int64 // of lend.used
	idle    int
	gone    bool
}

// lendings are the kept decisions with a lending, for the sweeper and the scrape.
var (
	lendingsMu sync.Mutex
	lendings   = map[*kept]struct{}{}
	sweeping   sync.Once
)

func newKept(rp *extauthz.Replay) *kept {
	k := &kept{rp: rp, lend: (*C.llmedge_lend)(C.calloc(1, C.size_t(unsafe.Sizeof(C.llmedge_lend{}))))}
	lendingsMu.Lock()
	lendings[k] = struct{}{}
	lendingsMu.Unlock()
	sweeping.Do(func() { go sweepLendings() })
	return k
}

func (k *kept) budget() *int64 { return (*int64)(unsafe.Pointer(&k.lend.budget)) }
func (k *kept) used() *int64   { return (*int64)(unsafe.Pointer(&k.lend.used)) }

// settle counts the uses the fast path answered since the last time, and with take, takes
// the lending's unused uses back (the fast path can no longer use them) and gives them
// back. Called with mu held.
func (k *kept) settle(authz *extauthz.Main, take bool) {
	if used := atomic.LoadInt64(k.used()); used != k.counted {
		authz.CountLent(k.rp, &k.lent, used-k.counted)
		k.counted = used
		k.idle = 0
	}
	if take {
		authz.GiveBack(k.rp, &k.lent, atomic.SwapInt64(k.budget(), 0))
	}
}

// replay answers a request of k's Input in Go (extauthz.Main.ReplayLend) and lends the
// fast path the next ones. Called on the worker that owns k's entry.
func (k *kept) replay(authz *extauthz.Main) (extauthz.Outcome, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.settle(authz, true)
	gen := C.llmedge_gen() // before ReplayLend reads what it depends on
	ask := int64(lendUses)
	if k.rp.Quota() {
		ask = lendQuotaUses
	}
	out, lent, ok := authz.ReplayLend(k.rp, ask)
	if !ok || !out.Allow || lent.Uses <= 0 {
		return out, ok
	}
	l := k.lend
	C.free(unsafe.Pointer(l.limit))
	l.limit, l.limit_len = nil, 0
	if lent.Limit != "" {
		l.limit, l.limit_len = C.CString(lent.Limit), C.size_t(len(lent.Limit))
	}
	l.gen, l.until_ns, l.remaining, l.reset_at = gen, C.int64_t(lent.Until), C.int64_t(lent.Remaining), C.int64_t(lent.ResetAt)
	k.lent = lent
	atomic.StoreInt64(k.budget(), lent.Uses) // last: the fast path reads the rest after it
	return out, true
}

// release ends a kept decision whose entry the fast path dropped: its uses counted, its
// lending given back, its C memory freed.
func release(h cgo.Handle) {
	k, ok := h.Value().(*kept)
	h.Delete()
	if !ok {
		return
	}
	lendingsMu.Lock()
	delete(lendings, k)
	lendingsMu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	if authz := running.Load(); authz != nil {
		k.settle(authz, true)
		// The keys the entry gave in turn count as given, so that the next Go check of the
		// upstream takes the key after the last of them, not one the fast path just gave.
		authz.KeysGiven(k.rp, uint64(k.lend.turn))
	}
	k.gone = true
	C.free(unsafe.Pointer(k.lend.limit))
	C.free(unsafe.Pointer(k.lend))
	k.lend = nil
}

// sweepLendings counts the fast path's uses once a second, and gives back the quota hits of
// lendings no longer used.
func sweepLendings() {
	for range time.Tick(time.Second) {
		settleLendings(true)
	}
}

// settleLendings counts every lending's uses so far (before /metrics is answered, and by
// the sweeper, which also takes back idle lendings).
func settleLendings(sweep bool) {
	defer func() { recover() }()
	authz := running.Load()
	if authz == nil {
		return
	}
	lendingsMu.Lock()
	ks := make([]*kept, 0, len(lendings))
	for k := range lendings {
		ks = append(ks, k)
	}
	lendingsMu.Unlock()
	for _, k := range ks {
		k.mu.Lock()
		if !k.gone {
			k.settle(authz, false)
			if sweep {
				if k.idle++; k.idle >= lendIdle && atomic.LoadInt64(k.budget()) > 0 {
					k.settle(authz, true)
				}
			}
		}
		k.mu.Unlock()
	}
}

// llmedgeReplay answers a request from a decision the fast path kept for its inputs
// (fast.c): extauthz.Replay says whether it still holds, asks the quota and counts it as
// Begin would. On LLMEDGE_REPLAY_ALLOWED the fast path does to the request what the
// check did (remember's ops); the response headers (the quota's) are left here.
//
//export llmedgeReplay
func llmedgeReplay(f, m unsafe.Pointer, h C.uintptr_t) (status C.int) {
	defer func() {
		if recover() != nil {
			refuse(f, 500, nil, "", failedDetails)
			status = C.LLMEDGE_REPLAY_REFUSED
		}
	}()
	authz := running.Load()
	if authz == nil {
		return C.LLMEDGE_REPLAY_MISS
	}
	out, ok := cgo.Handle(h).Value().(*kept).replay(authz)
	if !ok {
		return C.LLMEDGE_REPLAY_MISS
	}
	if !out.Allow {
		refuse(f, out.Status, out.Headers, out.Body, deniedDetails)
		return C.LLMEDGE_REPLAY_REFUSED
	}
	addResponseHeaders(m, out.ResponseHeaders)
	return C.LLMEDGE_REPLAY_ALLOWED
}

//export envoy_dynamic_module_on_http_filter_scheduled
func envoy_dynamic_module_on_http_filter_scheduled(f, m unsafe.Pointer, _ C.uint64_t) {
	defer func() {
		if recover() != nil {
			refuse(f, 500, nil, "", failedDetails)
		}
	}()
	(*C.llmedge_stream)(m).pending = 0
	st := cgo.Handle((*C.llmedge_stream)(m).handle).Value().(*stream)
	out := st.out.Load()
	if out == nil {
		refuse(f, 500, nil, "", failedDetails)
		return
	}
	addResponseHeaders(m, out.ResponseHeaders)
	var path C.llmedge_buf
	C.envoy_dynamic_module_callback_http_get_header(f, headerRequest, buf(":path"), &path, 0, nil)
	apply(f, out, strings.Clone(envoyString(path)))
	if out.Allow {
		C.envoy_dynamic_module_callback_http_filter_continue_decoding(f)
	}
}

// llmedgeRetryKey sets the key header of a retry (the C hook calls it for a try whose
// AttemptHeader is not 1): the next key of the config's upstream after the one the
// previous try went out with, as extauthz's ext_proc server answers when extauthz runs as
// a process. Anything unexpected leaves the try with the key it has.
//
//export llmedgeRetryKey
func llmedgeRetryKey(f, cfg unsafe.Pointer) {
	defer func() { recover() }()
	authz := running.Load()
	if authz == nil {
		return
	}
	c := (*C.llmedge_config)(cfg)
	upstream := C.GoStringN(c.upstream, C.int(c.upstream_len))
	header := func(name string) string {
		var v C.llmedge_buf
		if !C.envoy_dynamic_module_callback_http_get_header(f, headerRequest, buf(name), &v, 0, nil) {
			return ""
		}
		return strings.Clone(envoyString(v))
	}
	attempt, _ := strconv.Atoi(header(wire.AttemptHeader))
	name, value, ok := authz.RetryKey(upstream, attempt, header)
	if ok {
		C.envoy_dynamic_module_callback_http_set_header(f, headerRequest, buf(name), buf(value))
	}
}

//export llmedgeRelease
func llmedgeRelease(h C.uintptr_t) {
	defer func() { recover() }()
	release(cgo.Handle(h))
}

func main() {}
