// Package main is bench/hop's in-process stand-in for the check: an HTTP filter for Envoy
// 1.40's dynamic modules (envoy.filters.http.dynamic_modules), in Go, built with
// `go build -buildmode=c-shared`. It answers like the benchmark's check servers — the
// caller's token or 403, then the provider key on the upstream request — inside Envoy's
// worker, so the hop costs neither a request to another process nor a second runtime's
// wake-ups. Mode "async" decides on a goroutine and resumes the request through Envoy's
// scheduler, as a check that waits for Redis would.
//
// The module is written against the C ABI Envoy 1.40.0 exports (its
// envoy_dynamic_module_callback_* symbols), declaring only the few functions it uses; the
// Go SDK of Envoy's dynamic modules is not obtainable from this project's module proxy.
// The declarations follow Envoy 1.38's ABI header (1.40.0's source could not be fetched
// here) and were checked against the names the 1.40.0 binary exports and its behaviour.
// Envoy only warns when a module's ABI version differs from its own, so a signature that
// changed between Envoy releases would not be refused at load: bench/hop's test checks
// that the module really decides (a request without the token is refused).
package main

/*
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "stream.h"

// A byte range: Envoy's buffers and the module's have this layout.
typedef struct { const char* ptr; size_t len; } hop_buf;
// A header to send: name and value.
typedef struct { const char* name; size_t name_len; const char* value; size_t value_len; } hop_header;

// Exported by the Envoy binary, resolved when Envoy loads the module. Header type 0 is the
// request's headers.
bool envoy_dynamic_module_callback_http_get_header(void* filter, int header_type, hop_buf key,
    hop_buf* value, size_t index, size_t* count);
bool envoy_dynamic_module_callback_http_set_header(void* filter, int header_type, hop_buf key, hop_buf value);
void envoy_dynamic_module_callback_http_send_response(void* filter, uint32_t status, hop_header* headers,
    size_t headers_len, hop_buf body, hop_buf details);
void envoy_dynamic_module_callback_http_filter_continue_decoding(void* filter);
void* envoy_dynamic_module_callback_http_filter_scheduler_new(void* filter);
void envoy_dynamic_module_callback_http_filter_scheduler_commit(void* scheduler, uint64_t event);
void envoy_dynamic_module_callback_http_filter_scheduler_delete(void* scheduler);

static bool hop_request_header(void* filter, const char* name, size_t len, hop_buf* value) {
  hop_buf key = {name, len};
  return envoy_dynamic_module_callback_http_get_header(filter, 0, key, value, 0, NULL);
}

static void hop_set_request_header(void* filter, const char* name, size_t name_len, const char* value, size_t value_len) {
  hop_buf k = {name, name_len}, v = {value, value_len};
  envoy_dynamic_module_callback_http_set_header(filter, 0, k, v);
}

static void hop_refuse(void* filter, uint32_t status) {
  static const char ct[] = "content-type", json[] = "application/json";
  static const char body[] = "{\"error\":{\"message\":\"llmedge: unknown caller token\"}}";
  static const char details[] = "hop_module_refused";
  hop_header h = {ct, sizeof ct - 1, json, sizeof json - 1};
  hop_buf b = {body, sizeof body - 1}, d = {details, sizeof details - 1};
  envoy_dynamic_module_callback_http_send_response(filter, status, &h, 1, b, d);
}
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// abiVersion is Envoy 1.40.0's dynamic-module ABI version: with it Envoy logs "matched";
// any other value is loaded with a warning.
var abiVersion = C.CString("v0.2.0")

// config is one filter's settings (the filter_config string, JSON).
type config struct {
	Mode string `json:"mode"` // "sync" or "async"
	// Authorization is the caller's header value the check accepts.
	Authorization string `json:"authorization"`
	// KeyHeader and Key are what an allowed request carries upstream.
	KeyHeader string `json:"key_header"`
	Key       string `json:"key"`
}

// configs holds every filter config; Envoy keeps a C pointer to the config's index (Go
// memory must not be held by C). Appended to on Envoy's main thread, read by its workers.
var (
	configsMu sync.Mutex
	configs   atomic.Pointer[[]*config]
)

func configAt(m unsafe.Pointer) *config { return (*configs.Load())[*(*C.size_t)(m)] }

const (
	statusContinue      = 0
	statusStopIteration = 1

	eventAllow = 1
	eventDeny  = 2
)

//export envoy_dynamic_module_on_program_init
func envoy_dynamic_module_on_program_init() *C.char { return abiVersion }

//export envoy_dynamic_module_on_http_filter_config_new
func envoy_dynamic_module_on_http_filter_config_new(_ unsafe.Pointer, name, raw C.hop_buf) unsafe.Pointer {
	var c config
	if err := json.Unmarshal(C.GoBytes(unsafe.Pointer(raw.ptr), C.int(raw.len)), &c); err != nil || (c.Mode != "sync" && c.Mode != "async") {
		fmt.Fprintf(os.Stderr, "hop module: filter %s: config must be JSON with mode sync or async (%v)\n", C.GoStringN(name.ptr, C.int(name.len)), err)
		return nil // Envoy refuses the filter config
	}
	configsMu.Lock()
	defer configsMu.Unlock()
	var next []*config
	if cur := configs.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, &c)
	configs.Store(&next)
	idx := (*C.size_t)(C.malloc(C.size_t(unsafe.Sizeof(C.size_t(0)))))
	*idx = C.size_t(len(next) - 1)
	return unsafe.Pointer(idx)
}

//export envoy_dynamic_module_on_http_filter_config_destroy
func envoy_dynamic_module_on_http_filter_config_destroy(m unsafe.Pointer) { C.free(m) }

// requestHeader returns a request header's first value. The string aliases Envoy's memory:
// it is valid until the hook returns or a header is set.
func requestHeader(f unsafe.Pointer, name string) string {
	var v C.hop_buf
	if !C.hop_request_header(f, (*C.char)(unsafe.Pointer(unsafe.StringData(name))), C.size_t(len(name)), &v) || v.ptr == nil {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Pointer(v.ptr)), int(v.len))
}

func allow(f unsafe.Pointer, c *config) {
	C.hop_set_request_header(f, (*C.char)(unsafe.Pointer(unsafe.StringData(c.KeyHeader))), C.size_t(len(c.KeyHeader)),
		(*C.char)(unsafe.Pointer(unsafe.StringData(c.Key))), C.size_t(len(c.Key)))
}

//export envoy_dynamic_module_on_http_filter_request_headers
func envoy_dynamic_module_on_http_filter_request_headers(f, m unsafe.Pointer, _ C.bool) (status C.int) {
	// A panic escaping into Envoy aborts the process (and its crash dump logs the request's
	// headers): every entry from Envoy recovers.
	defer func() {
		if recover() != nil {
			C.hop_refuse(f, 500)
			status = statusStopIteration
		}
	}()
	c := configAt(m)
	if c.Mode == "sync" {
		if requestHeader(f, "authorization") != c.Authorization {
			C.hop_refuse(f, 403)
			return statusStopIteration
		}
		allow(f, c)
		return statusContinue
	}
	// The header's memory is Envoy's and dies with this hook: the goroutine gets a copy.
	auth := strings.Clone(requestHeader(f, "authorization"))
	(*C.hop_stream)(m).pending = 1 // the body waits too (hooks.c)
	s := C.envoy_dynamic_module_callback_http_filter_scheduler_new(f)
	go func() {
		event := C.uint64_t(eventDeny)
		defer func() {
			recover()
			// After the stream is gone the scheduler only drops the event.
			C.envoy_dynamic_module_callback_http_filter_scheduler_commit(s, event)
			C.envoy_dynamic_module_callback_http_filter_scheduler_delete(s)
		}()
		if auth == c.Authorization {
			event = eventAllow
		}
	}()
	return statusStopIteration
}

//export envoy_dynamic_module_on_http_filter_scheduled
func envoy_dynamic_module_on_http_filter_scheduled(f, m unsafe.Pointer, event C.uint64_t) {
	defer func() {
		if recover() != nil {
			C.hop_refuse(f, 500)
		}
	}()
	(*C.hop_stream)(m).pending = 0
	if event != eventAllow {
		C.hop_refuse(f, 403)
		return
	}
	allow(f, configAt(m))
	C.envoy_dynamic_module_callback_http_filter_continue_decoding(f)
}

func main() {}
