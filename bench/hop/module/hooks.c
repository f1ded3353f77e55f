// The filter events the stand-in does nothing on, in C: each call from Envoy into Go costs
// Go scheduler work, so a request crosses into Go only where a decision is made (request
// headers, and the scheduled event of the async mode).
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#include "stream.h"

// Each stream gets its config's index (what the Go hooks read) and whether a decision is
// pending.
void* envoy_dynamic_module_on_http_filter_new(const void* config, void* filter) {
  hop_stream* s = malloc(sizeof(hop_stream));
  if (s) {
    s->config = *(const size_t*)config;
    s->pending = 0;
  }
  return s;
}
// While the async mode's goroutine decides, the body and trailers wait with the headers:
// returning Continue here would send the request on undecided. 1 is
// StopIterationAndBuffer for a body, StopIteration for trailers.
int envoy_dynamic_module_on_http_filter_request_body(void* filter, const void* m, bool end) {
  return ((const hop_stream*)m)->pending ? 1 : 0;
}
int envoy_dynamic_module_on_http_filter_request_trailers(void* filter, const void* m) {
  return ((const hop_stream*)m)->pending ? 1 : 0;
}
int envoy_dynamic_module_on_http_filter_response_headers(void* filter, const void* m, bool end) { return 0; }
int envoy_dynamic_module_on_http_filter_response_body(void* filter, const void* m, bool end) { return 0; }
int envoy_dynamic_module_on_http_filter_response_trailers(void* filter, const void* m) { return 0; }
void envoy_dynamic_module_on_http_filter_stream_complete(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_destroy(void* m) { free(m); }

// Envoy 1.40 resolves these when it loads an HTTP filter module although this one starts
// no callouts; they are never called. Their further parameters are left out: the caller
// owns them under the x86-64 System V calling convention.
void envoy_dynamic_module_on_http_filter_http_callout_done(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_headers(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_data(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_trailers(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_complete(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_http_stream_reset(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(void* filter, const void* m) {}
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(void* filter, const void* m) {}
