// The check's fast path: a request whose inputs are byte for byte those of a request the
// Go check allowed before on the same worker gets that decision again without the Go
// check reading and deciding it (module.go, extauthz.Replay).
//
// The key is every input the Go check reads, as it reads them (module.go, input and
// requestBody; extauthz.RequestFacts): the route's llmedge.authz metadata, the credential
// and x-llmedge- headers in order, the :path, the caller's address without its port, and
// the body's facts — whether it was read, whether it is JSON, and the raw bytes of its
// top-level "model" and "stream" (body.h, held to Go's reader by the module's tests).
// Two requests with the same key are the same Input to the check. A request the key
// cannot state exactly (a body object with escaped or repeated member names, more than
// max_headers headers, a key over key_max bytes) is checked in Go, and its decision is
// not kept.
//
// A worker keeps its decisions in its own table of table_slots entries, one per slot by
// the key's hash, a new one replacing the old (no locks, no sharing: an entry is made,
// used and freed by one thread; what it holds on the Go side keeps no policy alive).
// What an entry does not hold is asked of Go (llmedgeReplay): whether the decision still
// holds (the policy, the key, the caller's expiry), the quota, the metrics and logs. Go
// then lends the entry its next uses (llmedge_lend, extauthz.Lent): that many later
// requests are answered here without a call into Go — the quota's hits taken from the
// edge's reservations at once, the X-RateLimit headers counted down from the lending
// request's — while the lending is of the current generation (Go raises it once any
// policy, limit or key change is in force), not past the caller's expiry or a limit's
// window, and uses are left. So a decision is never replayed past a change, and most
// replays cost no call into Go; Go counts the uses later (module.go, settle). An upstream
// with several keys gives each request the next: the entry keeps the turn
// (LLMEDGE_OP_SET_KEY, extauthz.KeyPool).
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "_cgo_export.h"
#include "body.h"

enum { key_max = 4096, max_headers = 96, table_slots = 1024 };

// What the key names, from the Go side (llmedge_fast_init, once, before any request).
static llmedge_buf route_ns, route_keys[4], internal_prefix, credential_headers[8];
static size_t credential_count, body_limit;
static int fast_on;

void llmedge_fast_init(llmedge_buf ns, llmedge_buf region, llmedge_buf upstream, llmedge_buf route, llmedge_buf hop,
                       llmedge_buf prefix, llmedge_buf* credentials, size_t n, size_t limit) {
  route_ns = ns;
  route_keys[0] = region;
  route_keys[1] = upstream;
  route_keys[2] = route;
  route_keys[3] = hop;
  internal_prefix = prefix;
  credential_count = n < 8 ? n : 8;
  for (size_t i = 0; i < credential_count; i++) {
    credential_headers[i] = credentials[i];
  }
  body_limit = limit;
  fast_on = n <= 8;
}

typedef struct {
  uint64_t hash;
  char* key;
  size_t key_len;
  uintptr_t replay;  // a cgo.Handle of the Go side's kept decision (module.go, kept)
  llmedge_lend* lend;  // its lending, Go's memory (freed when the handle is released)
  llmedge_op* ops;   // one malloc'd block (module.go, cOps)
  size_t ops_len, facts_len;
  size_t turn;  // of a key pool (LLMEDGE_OP_SET_KEY): the requests it gave a key so far
} entry;

// A worker's state: the key being built for its current check, and its entries. Made on
// first use and kept for the thread's life; only a pointer is thread-local (a module's
// static TLS is small).
typedef struct {
  char key[key_max];
  size_t key_len;
  bool key_fits;
  uint64_t key_hash;  // of the key, once built
  char* body;  // body_limit bytes, made on first use
  entry* table[table_slots];
} worker;
static __thread worker* self;

static void put(char tag, const char* p, size_t n) {
  worker* w = self;
  if (!w->key_fits || n > key_max || w->key_len + 1 + sizeof(uint32_t) + n > key_max) {
    w->key_fits = false;
    return;
  }
  uint32_t n32 = (uint32_t)n;
  w->key[w->key_len++] = tag;
  memcpy(w->key + w->key_len, &n32, sizeof n32);
  w->key_len += sizeof n32;
  if (n > 0) {
    memcpy(w->key + w->key_len, p, n);
    w->key_len += n;
  }
}

static bool same(llmedge_buf a, const char* p, size_t n) { return a.len == n && (n == 0 || memcmp(a.ptr, p, n) == 0); }

// checked is extauthz.CheckedHeader.
static bool checked(const char* name, size_t n) {
  if (n >= internal_prefix.len && memcmp(name, internal_prefix.ptr, internal_prefix.len) == 0) {
    return true;
  }
  for (size_t i = 0; i < credential_count; i++) {
    if (same(credential_headers[i], name, n)) {
      return true;
    }
  }
  return false;
}

// put_source puts the caller's address: "ip:port" or "[ip6]:port" without the port, for
// which the Go check parses the same address whatever the port (netip.ParseAddrPort);
// anything else whole, tagged apart.
static void put_source(const char* p, size_t n) {
  size_t i = n;
  while (i > 0 && p[i - 1] >= '0' && p[i - 1] <= '9') {
    i--;
  }
  size_t digits = n - i;
  if (digits >= 1 && digits <= 5 && i >= 2 && p[i - 1] == ':') {
    uint32_t port = 0;
    for (size_t j = i; j < n; j++) {
      port = port * 10 + (uint32_t)(p[j] - '0');
    }
    size_t host = i - 1;
    bool bracketed = p[0] == '[' && p[host - 1] == ']';
    if (port <= 65535 && (bracketed || memchr(p, ':', host) == NULL)) {
      put('a', p, host);
      return;
    }
  }
  put('A', p, n);
}

// copy_body is module.go's requestBody into the worker's body buffer: the buffered body
// and, at the body's end, the chunk just received; *len SIZE_MAX past body_limit (the Go
// check then reads no body).
static bool copy_body(void* filter, int at, size_t* len) {
  char* body = self->body;
  if (body == NULL && (body = self->body = malloc(body_limit)) == NULL) {
    return false;
  }
  size_t total = 0;
  for (int pass = 0; pass < 2; pass++) {
    int type = pass == 0 ? 1 : 0;  // 1: buffered, 0: received
    if (pass == 1 && (at != LLMEDGE_AT_BODY_END || envoy_dynamic_module_callback_http_received_buffered_request_body(filter))) {
      break;
    }
    size_t n = envoy_dynamic_module_callback_http_get_body_chunks_size(filter, type);
    if (n == 0) {
      continue;
    }
    if (n > 64) {
      return false;  // not expected for bodies under body_limit; the Go check reads it
    }
    llmedge_buf chunks[64];
    if (!envoy_dynamic_module_callback_http_get_body_chunks(filter, type, chunks)) {
      continue;
    }
    for (size_t i = 0; i < n; i++) {
      if (total + chunks[i].len > body_limit) {
        *len = SIZE_MAX;  // over the limit: no body
        return true;
      }
      if (chunks[i].len > 0) {
        memcpy(body + total, chunks[i].ptr, chunks[i].len);
        total += chunks[i].len;
      }
    }
  }
  *len = total;
  return true;
}

// build_key puts the check's inputs into key; false when they cannot be stated exactly.
static bool build_key(void* filter, int at) {
  self->key_len = 0;
  self->key_fits = true;
  // As module.go's input: the route as the caller's request selects it.
  envoy_dynamic_module_callback_get_most_specific_route_config(filter);
  bool routed = false;
  for (int i = 0; i < 4; i++) {
    llmedge_buf v = {NULL, 0};
    if (!envoy_dynamic_module_callback_http_get_metadata_string(filter, 1, route_ns, route_keys[i], &v) || v.ptr == NULL) {
      v.len = 0;
    }
    routed = routed || (i < 3 && v.len > 0);
    put('r', v.ptr, v.len);
  }
  if (!routed) {
    return false;  // the Go check decides by the route's name
  }
  size_t n = envoy_dynamic_module_callback_http_get_headers_size(filter, 0);
  if (n > max_headers) {
    return false;
  }
  llmedge_header hs[max_headers];
  if (n > 0 && !envoy_dynamic_module_callback_http_get_headers(filter, 0, hs)) {
    n = 0;
  }
  const char* path = NULL;
  size_t path_len = 0;
  for (size_t i = 0; i < n; i++) {
    if (same((llmedge_buf){":path", 5}, hs[i].name, hs[i].name_len)) {
      path = hs[i].value;
      path_len = hs[i].value_len;
    } else if (checked(hs[i].name, hs[i].name_len)) {
      put('h', hs[i].name, hs[i].name_len);
      put('v', hs[i].value, hs[i].value_len);
    }
  }
  put('p', path, path_len);
  llmedge_buf src = {NULL, 0};
  if (envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, 24, &src) && src.ptr != NULL) {
    put_source(src.ptr, src.len);
  } else {
    put('n', NULL, 0);
  }
  if (at == LLMEDGE_AT_HEADERS) {
    put('b', NULL, 0);
    return self->key_fits;
  }
  size_t len = 0;
  if (!copy_body(filter, at, &len)) {
    return false;
  }
  if (len == SIZE_MAX || len == 0) {
    put('b', NULL, 0);  // RequestFacts reads nothing from an empty or unread body
    return self->key_fits;
  }
  llmedge_body_scan scan;
  llmedge_body_facts(self->body, len, &scan);
  switch (scan.kind) {
    case LLMEDGE_BODY_INVALID:
    case LLMEDGE_BODY_OTHER:
      put('b', NULL, 0);  // not a JSON object: no facts, as from no body
      return self->key_fits;
    case LLMEDGE_BODY_OBJECT:
      put(scan.model != NULL ? 'M' : 'm', scan.model, scan.model_len);
      put(scan.stream != NULL ? 'S' : 's', scan.stream, scan.stream_len);
      return self->key_fits;
    default:
      return false;
  }
}

static uint64_t hash_key(const worker* w) {
  uint64_t h = 14695981039346656037u;  // FNV-1a
  for (size_t i = 0; i < w->key_len; i++) {
    h = (h ^ (uint8_t)w->key[i]) * 1099511628211u;
  }
  return h;
}

// set_key sets the key header to the next of the op's values (module.go, keyOp).
static void set_key(void* filter, const llmedge_op* o, size_t* turn) {
  size_t n = o->c.len;
  if (n == 0) {
    return;
  }
  size_t want = (*turn)++ % n;
  const char* p = o->b.ptr;
  const char* end = p + o->b.len;
  uint32_t len = 0;
  for (size_t k = 0;; k++) {
    if ((size_t)(end - p) < sizeof len) {
      return;
    }
    memcpy(&len, p, sizeof len);
    p += sizeof len;
    if ((size_t)(end - p) < len) {
      return;
    }
    if (k == want) {
      break;
    }
    p += len;
  }
  envoy_dynamic_module_callback_http_set_header(filter, 0, o->a, (llmedge_buf){p, len});
}

static void apply_ops(void* filter, const llmedge_op* ops, size_t from, size_t to, size_t* turn) {
  for (size_t i = from; i < to; i++) {
    const llmedge_op* o = &ops[i];
    switch (o->op) {
      case LLMEDGE_OP_SET_KEY:
        set_key(filter, o, turn);
        break;
      case LLMEDGE_OP_SET_HEADER:
        envoy_dynamic_module_callback_http_set_header(filter, 0, o->a, o->b);
        break;
      case LLMEDGE_OP_REMOVE_HEADER:
        envoy_dynamic_module_callback_http_set_header(filter, 0, o->a, (llmedge_buf){NULL, 0});
        break;
      case LLMEDGE_OP_METADATA_STRING:
        envoy_dynamic_module_callback_http_set_dynamic_metadata_string(filter, o->a, o->b, o->c);
        break;
      case LLMEDGE_OP_METADATA_BOOL:
        envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(filter, o->a, o->b, o->c.len != 0);
        break;
    }
  }
}

// free_entry frees e and answers its Go side's handle, for Go to release; the keys of a
// pool e gave go to Go with it (llmedge_lend.turn).
static uintptr_t free_entry(entry* e) {
  uintptr_t replay = e->replay;
  if (e->lend != NULL) {
    e->lend->turn = e->turn;
  }
  free(e->key);
  free(e->ops);
  free(e);
  return replay;
}

// The generation of what a decision depends on (the policy, its limits, the keys): Go
// raises it once a change is in force (llmedge_changed), and a lending made under an older
// one is not used.
static uint64_t generation;

uint64_t llmedge_gen(void) { return __atomic_load_n(&generation, __ATOMIC_ACQUIRE); }

void llmedge_changed(void) { __atomic_add_fetch(&generation, 1, __ATOMIC_ACQ_REL); }

static const char limit_name[] = "x-ratelimit-limit", remaining_name[] = "x-ratelimit-remaining",
                  reset_name[] = "x-ratelimit-reset";

static size_t format_int(char* out, int64_t v) {
  char tmp[24];
  size_t n = 0;
  uint64_t u = v < 0 ? 0 : (uint64_t)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u > 0);
  for (size_t i = 0; i < n; i++) {
    out[i] = tmp[n - 1 - i];
  }
  return n;
}

// use_lend answers the request from its decision's lending, if it holds one still good:
// lent under the current generation, not void yet, a use left. The uses count down the
// remaining quota the Go check would have reported (extauthz.Lent); the headers go to the
// response as the Go check's do (hooks.c).
static bool use_lend(llmedge_stream* s, llmedge_lend* l) {
  if (l == NULL || l->gen != llmedge_gen()) {
    return false;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  if (now >= l->until_ns) {
    return false;
  }
  // One block, as the Go side's (module.go, cHeaders); the names are static.
  llmedge_header* h = NULL;
  if (l->limit != NULL && (h = malloc(3 * sizeof(llmedge_header) + l->limit_len + 48)) == NULL) {
    return false;
  }
  int64_t b = __atomic_load_n(&l->budget, __ATOMIC_ACQUIRE);
  do {
    if (b <= 0) {
      free(h);
      return false;
    }
  } while (!__atomic_compare_exchange_n(&l->budget, &b, b - 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
  __atomic_add_fetch(&l->used, 1, __ATOMIC_RELEASE);
  if (h != NULL) {
    char* p = (char*)(h + 3);
    memcpy(p, l->limit, l->limit_len);
    h[0] = (llmedge_header){limit_name, sizeof limit_name - 1, p, l->limit_len};
    p += l->limit_len;
    size_t n = format_int(p, l->remaining + b - 1);
    h[1] = (llmedge_header){remaining_name, sizeof remaining_name - 1, p, n};
    p += n;
    n = format_int(p, l->reset_at - (int64_t)ts.tv_sec);
    h[2] = (llmedge_header){reset_name, sizeof reset_name - 1, p, n};
    free(s->response_headers);
    s->response_headers = h;
    s->response_headers_len = 3;
  }
  return true;
}

int llmedge_fast_check(void* filter, llmedge_stream* s, int at) {
  s->key_ready = 0;
  if (!fast_on || (self == NULL && (self = calloc(1, sizeof(worker))) == NULL) || !build_key(filter, at)) {
    return -1;
  }
  s->key_ready = 1;
  worker* w = self;
  uint64_t h = w->key_hash = hash_key(w);
  entry** slot = &w->table[h % table_slots];
  entry* e = *slot;
  if (e == NULL || e->hash != h || e->key_len != w->key_len || memcmp(e->key, w->key, w->key_len) != 0) {
    return -1;
  }
  apply_ops(filter, e->ops, 0, e->facts_len, &e->turn);
  if (use_lend(s, e->lend)) {
    apply_ops(filter, e->ops, e->facts_len, e->ops_len, &e->turn);
    return 0;
  }
  int r = llmedge_replay(filter, s, e->replay);
  if (r == LLMEDGE_REPLAY_MISS) {
    *slot = NULL;
    llmedgeRelease(free_entry(e));
    return -1;
  }
  if (r == LLMEDGE_REPLAY_REFUSED) {
    return 1;
  }
  apply_ops(filter, e->ops, e->facts_len, e->ops_len, &e->turn);
  return 0;
}

// llmedge_remember keeps the Go check's decision under the key its hook built, during that
// check (the same thread, key untouched since): ops (malloc'd, now the entry's) are the
// facts' metadata, then what the decision does to the request. It answers the handle of
// the entry it replaces, for Go to release, or 0.
uintptr_t llmedge_remember(llmedge_stream* s, uintptr_t replay, llmedge_lend* lend, llmedge_op* ops, size_t ops_len,
                           size_t facts_len) {
  worker* w = self;
  if (!s->key_ready || w == NULL || !w->key_fits) {
    free(ops);
    return replay;  // not kept: released at once
  }
  s->key_ready = 0;
  entry* e = malloc(sizeof(entry));
  char* k = malloc(w->key_len);
  if (e == NULL || k == NULL) {
    free(e);
    free(k);
    free(ops);
    return replay;
  }
  memcpy(k, w->key, w->key_len);
  *e = (entry){.hash = w->key_hash, .key = k, .key_len = w->key_len, .replay = replay, .lend = lend, .ops = ops,
               .ops_len = ops_len, .facts_len = facts_len};
  entry** slot = &w->table[e->hash % table_slots];
  entry* old = *slot;
  *slot = e;
  return old == NULL ? 0 : free_entry(old);
}
