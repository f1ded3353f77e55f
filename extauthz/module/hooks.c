// The filter events that need no decision, in C: a call from Envoy into Go costs Go
// scheduler work, so a request crosses into Go only to be checked: the response headers it
// adds are left here in C memory, and only a check that waited on Redis has Go state to
// free.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "_cgo_export.h"

// Go's scheduler counts a P's time slice by its schedtick, which only advances when the P
// runs a goroutine through the scheduler. A call from one of Envoy's threads into Go takes
// a P without that, and the thread keeps it between calls (in a system call, as Go sees
// it): after 10 ms the runtime's monitor (sysmon) takes such a P as a goroutine running
// too long, on each of its passes, every 20 us while it finds one. Once every yield_every_ns
// a thread lets the scheduler run its goroutine (llmedgeYield), which advances the count:
// the P stays with the thread and sysmon backs off (docs/BENCHMARKS.md, levers).
static const uint64_t yield_every_ns = 5000000;
static __thread uint64_t yielded_at;

static void maybe_yield(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  if (now - yielded_at >= yield_every_ns) {
    yielded_at = now;
    llmedgeYield();
  }
}

// check answers a request from the worker's earlier decisions when it can (fast.c), and
// otherwise crosses into Go to check it.
static int check(void* filter, void* m, int at) {
  int fast = llmedge_fast_check(filter, m, at);
  if (fast >= 0) {
    return fast;
  }
  maybe_yield();
  return llmedgeCheck(filter, m, at);
}

int llmedge_replay(void* filter, llmedge_stream* s, uintptr_t replay) {
  maybe_yield();
  return llmedgeReplay(filter, s, replay);
}

const void* envoy_dynamic_module_on_http_filter_new(const void* config, void* filter) {
  llmedge_stream* s = calloc(1, sizeof(llmedge_stream));
  s->config = config;
  return s;
}

// wire.AttemptHeader: the router's try number, which the provider must never see.
static const char attempt_header[] = "x-envoy-attempt-count";

// read_body says whether the check waits for the request's body, to read its facts (the
// model, the stream flag) first: only a body that is coming and declares a Content-Length
// of at most the config's limit (digits only, as Envoy's json_to_metadata matcher admits
// them) is read; any other request is checked on its headers, and its body streams on.
static bool read_body(void* filter, const llmedge_config* c, bool end) {
  if (end) {
    return false;
  }
  static const char content_length[] = "content-length";
  llmedge_buf name = {content_length, sizeof(content_length) - 1};
  llmedge_buf value = {NULL, 0};
  size_t count = 0;
  if (!envoy_dynamic_module_callback_http_get_header(filter, 0, name, &value, 0, &count) || value.ptr == NULL ||
      count != 1 || value.len == 0 || value.len > 5 || (value.len == 5 && value.ptr[0] == '0')) {
    return false;
  }
  size_t n = 0;
  for (size_t i = 0; i < value.len; i++) {
    if (value.ptr[i] < '0' || value.ptr[i] > '9') {
      return false;
    }
    n = n * 10 + (size_t)(value.ptr[i] - '0');
  }
  return n > 0 && n <= c->body_limit;
}

// The check runs once for every request: at its headers, or, for a body it reads, at the
// body's end (or the trailers'). It crosses into Go once: for the whole check, or, for a
// request the worker has decided before with the same inputs (fast.c), for the quota and
// the checks' counts only; a worker crosses once more every yield_every_ns, to yield.
// Key failover, an upstream filter, runs on every try: a first try (attempt 1) only loses
// the attempt header, here; a retry crosses into Go for its next key.
int envoy_dynamic_module_on_http_filter_request_headers(void* filter, void* m, bool end) {
  llmedge_stream* s = m;
  if (!s->config->failover) {
    if (read_body(filter, s->config, end)) {
      s->awaiting_body = 1;
      return 1;  // StopIteration: the body comes to this filter, the headers wait
    }
    return check(filter, m, LLMEDGE_AT_HEADERS);
  }
  llmedge_buf name = {attempt_header, sizeof(attempt_header) - 1};
  llmedge_buf value = {NULL, 0};
  if (envoy_dynamic_module_callback_http_get_header(filter, 0, name, &value, 0, NULL) && value.ptr != NULL &&
      !(value.len == 1 && value.ptr[0] == '1')) {
    llmedgeRetryKey(filter, (void*)s->config);
  }
  llmedge_buf none = {NULL, 0};
  envoy_dynamic_module_callback_http_set_header(filter, 0, name, none);
  return 0;
}

void envoy_dynamic_module_on_http_filter_destroy(void* m) {
  llmedge_stream* s = m;
  if (s->handle) {
    llmedgeRelease(s->handle);
  }
  free(s->response_headers);
  free(s);
}

int envoy_dynamic_module_on_http_filter_response_headers(void* filter, void* m, bool end) {
  llmedge_stream* s = m;
  for (size_t i = 0; i < s->response_headers_len; i++) {
    llmedge_header* h = &s->response_headers[i];
    llmedge_buf name = {h->name, h->name_len};
    llmedge_buf value = {h->value, h->value_len};
    envoy_dynamic_module_callback_http_set_header(filter, 2, name, value);
  }
  return 0;
}

// A key failover config is one per upstream cluster, allocated when Envoy made it; the
// check's is the module's one for good.
void envoy_dynamic_module_on_http_filter_config_destroy(void* config) {
  llmedge_config* c = config;
  if (c != NULL && c->failover) {
    free((void*)c->upstream);
    free(c);
  }
}
// While the check waits for the body, or (on Redis, for quotas) for its answer, the
// request's body and trailers wait with it: returning Continue here would send the request
// on before its headers were decided. 1 is StopIterationAndBuffer for a body,
// StopIteration for trailers; llmedgeCheck answers 0 (Continue) or 1.
int envoy_dynamic_module_on_http_filter_request_body(void* filter, void* m, bool end) {
  llmedge_stream* s = m;
  if (s->awaiting_body) {
    if (!end) {
      return 1;
    }
    s->awaiting_body = 0;
    return check(filter, m, LLMEDGE_AT_BODY_END);
  }
  return s->pending ? 1 : 0;
}
int envoy_dynamic_module_on_http_filter_request_trailers(void* filter, void* m) {
  llmedge_stream* s = m;
  if (s->awaiting_body) {
    s->awaiting_body = 0;
    return check(filter, m, LLMEDGE_AT_TRAILERS);
  }
  return s->pending ? 1 : 0;
}
int envoy_dynamic_module_on_http_filter_response_body(void* filter, void* m, bool end) { return 0; }
int envoy_dynamic_module_on_http_filter_response_trailers(void* filter, void* m) { return 0; }
void envoy_dynamic_module_on_http_filter_stream_complete(void* filter, void* m) {}

// Envoy 1.40 resolves these when it loads an HTTP filter module although this one starts
// no callouts; they are never called. Their further parameters are left out: the caller
// owns them under the x86-64 System V calling convention.
void envoy_dynamic_module_on_http_filter_http_callout_done(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_headers(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_data(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_trailers(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_complete(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_reset(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(void* filter, void* m) {}
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(void* filter, void* m) {}
