// The C reader of a request body's facts: the raw bytes of its top-level "model" and
// "stream" members, read the way extauthz.RequestFacts reads them in Go. A body is JSON
// exactly when Go's encoding/json.Valid says so (the same grammar, the same nesting limit,
// no UTF-8 check), and a member is found where RequestFacts finds it. What the two could
// read differently — a member name with an escape (RequestFacts decodes it) and a "model"
// or "stream" given twice (RequestFacts takes the last) — is reported as COMPLEX, for the
// caller to leave to Go. The module's tests hold this reader to Go's, byte for byte.
//
// Header only (static inline functions, so a file that uses some draws no warning for
// the others), C99, no allocation, no recursion: nesting is tracked with a depth counter
// and one bit per open container (object or array), 1250 bytes on the stack.
#ifndef LLMEDGE_BODY_H
#define LLMEDGE_BODY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { LLMEDGE_BODY_INVALID = 1, LLMEDGE_BODY_OTHER = 2, LLMEDGE_BODY_OBJECT = 3, LLMEDGE_BODY_COMPLEX = 4 };

// What llmedge_body_facts read from a body. model and stream point into the body: the
// exact bytes of the member's value (a string with its quotes, an object or array whole),
// NULL (length 0) when the body has no such top-level member or kind is not OBJECT.
typedef struct {
  int kind;
  const char* model;
  size_t model_len;
  const char* stream;
  size_t stream_len;
} llmedge_body_scan;

// The deepest nesting of arrays and objects encoding/json accepts (its maxNestingDepth).
#define LLMEDGE_JSON_MAX_DEPTH 10000

static inline int llmedge_json_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static inline int llmedge_json_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static inline int llmedge_json_hex(uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static inline size_t llmedge_json_skip_space(const uint8_t* b, size_t n, size_t i) {
  while (i < n && llmedge_json_space(b[i])) {
    i++;
  }
  return i;
}

// llmedge_json_string reads the string that opens at b[i] ('"'): it returns the index just
// past its closing quote, or 0 if it is not a valid JSON string (no string ends at 0), and
// sets *escaped when the string holds a backslash escape. Bytes from 0x80 up are taken as
// they are, as encoding/json's scanner takes them.
static inline size_t llmedge_json_string(const uint8_t* b, size_t n, size_t i, int* escaped) {
  *escaped = 0;
  for (i++; i < n; i++) {
    uint8_t c = b[i];
    if (c == '"') {
      return i + 1;
    }
    if (c < 0x20) {
      return 0;
    }
    if (c != '\\') {
      continue;
    }
    *escaped = 1;
    if (++i >= n) {
      return 0;
    }
    switch (b[i]) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
        break;
      case 'u':
        if (n - i <= 4 || !llmedge_json_hex(b[i + 1]) || !llmedge_json_hex(b[i + 2]) || !llmedge_json_hex(b[i + 3]) ||
            !llmedge_json_hex(b[i + 4])) {
          return 0;
        }
        i += 4;
        break;
      default:
        return 0;
    }
  }
  return 0;
}

// llmedge_json_number reads the number that starts at b[i] ('-' or a digit):
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, the longest match. It returns the index
// just past it, or 0 if no number starts there. What follows the number (another digit
// after a leading 0, a '.') is left to the caller, which rejects it as JSON does.
static inline size_t llmedge_json_number(const uint8_t* b, size_t n, size_t i) {
  if (b[i] == '-' && ++i >= n) {
    return 0;
  }
  if (b[i] == '0') {
    i++;
  } else if (b[i] >= '1' && b[i] <= '9') {
    while (++i < n && llmedge_json_digit(b[i])) {
    }
  } else {
    return 0;
  }
  if (i < n && b[i] == '.') {
    if (++i >= n || !llmedge_json_digit(b[i])) {
      return 0;
    }
    while (++i < n && llmedge_json_digit(b[i])) {
    }
  }
  if (i < n && (b[i] == 'e' || b[i] == 'E')) {
    if (++i < n && (b[i] == '+' || b[i] == '-')) {
      i++;
    }
    if (i >= n || !llmedge_json_digit(b[i])) {
      return 0;
    }
    while (++i < n && llmedge_json_digit(b[i])) {
    }
  }
  return i;
}

// llmedge_json_scan validates b[:n] as encoding/json.Valid does and, when out is not NULL,
// records the top-level members llmedge_body_facts reports. It returns the body's kind.
static inline int llmedge_json_scan(const char* data, size_t n, llmedge_body_scan* out) {
  const uint8_t* b = (const uint8_t*)data;
  // objects: bit d says whether the container open at depth d+1 is an object.
  uint8_t objects[(LLMEDGE_JSON_MAX_DEPTH + 7) / 8];
  size_t depth = 0, i = 0, end;
  int escaped, top_object = 0, ambiguous = 0, in_object;
  // The top-level member being read: the start of its value, and whether its name is
  // "model" (1), "stream" (2) or another (0).
  size_t value_start = 0;
  int member = 0;
  const char *model = NULL, *stream = NULL;
  size_t model_len = 0, stream_len = 0;

  if (out != NULL) {
    memset(out, 0, sizeof(*out));
    out->kind = LLMEDGE_BODY_INVALID;
  }

value:  // a value starts at b[i], after optional whitespace
  i = llmedge_json_skip_space(b, n, i);
  if (i >= n) {
    return LLMEDGE_BODY_INVALID;
  }
  if (depth == 1 && top_object) {
    value_start = i;
  }
  switch (b[i]) {
    case '{':
    case '[': {
      int object = b[i] == '{';
      if (depth == LLMEDGE_JSON_MAX_DEPTH) {
        return LLMEDGE_BODY_INVALID;
      }
      if (object) {
        objects[depth >> 3] |= (uint8_t)(1u << (depth & 7));
      } else {
        objects[depth >> 3] &= (uint8_t) ~(1u << (depth & 7));
      }
      if (depth++ == 0) {
        top_object = object;
      }
      i = llmedge_json_skip_space(b, n, i + 1);
      if (i >= n) {
        return LLMEDGE_BODY_INVALID;
      }
      if (b[i] == (object ? '}' : ']')) {
        i++;
        depth--;
        goto end_value;
      }
      if (object) {
        goto key;
      }
      goto value;
    }
    case '"':
      i = llmedge_json_string(b, n, i, &escaped);
      if (i == 0) {
        return LLMEDGE_BODY_INVALID;
      }
      break;
    case 't':
      if (n - i < 4 || memcmp(b + i, "true", 4) != 0) {
        return LLMEDGE_BODY_INVALID;
      }
      i += 4;
      break;
    case 'f':
      if (n - i < 5 || memcmp(b + i, "false", 5) != 0) {
        return LLMEDGE_BODY_INVALID;
      }
      i += 5;
      break;
    case 'n':
      if (n - i < 4 || memcmp(b + i, "null", 4) != 0) {
        return LLMEDGE_BODY_INVALID;
      }
      i += 4;
      break;
    default:
      i = llmedge_json_number(b, n, i);
      if (i == 0) {
        return LLMEDGE_BODY_INVALID;
      }
  }

end_value:  // a value ended just before b[i]
  if (depth == 1 && top_object) {
    // Only a top-level member's value ends at depth 1 of an object.
    if (member == 1) {
      model = data + value_start;
      model_len = i - value_start;
    } else if (member == 2) {
      stream = data + value_start;
      stream_len = i - value_start;
    }
  }
  i = llmedge_json_skip_space(b, n, i);
  if (depth == 0) {
    if (i != n) {
      return LLMEDGE_BODY_INVALID;
    }
    if (!top_object) {
      if (out != NULL) {
        out->kind = LLMEDGE_BODY_OTHER;
      }
      return LLMEDGE_BODY_OTHER;
    }
    if (ambiguous) {
      if (out != NULL) {
        out->kind = LLMEDGE_BODY_COMPLEX;
      }
      return LLMEDGE_BODY_COMPLEX;
    }
    if (out != NULL) {
      out->kind = LLMEDGE_BODY_OBJECT;
      out->model = model;
      out->model_len = model_len;
      out->stream = stream;
      out->stream_len = stream_len;
    }
    return LLMEDGE_BODY_OBJECT;
  }
  if (i >= n) {
    return LLMEDGE_BODY_INVALID;
  }
  in_object = (int)((objects[(depth - 1) >> 3] >> ((depth - 1) & 7)) & 1u);
  if (b[i] == (in_object ? '}' : ']')) {
    i++;
    depth--;
    goto end_value;
  }
  if (b[i] != ',') {
    return LLMEDGE_BODY_INVALID;
  }
  i++;
  if (in_object) {
    goto key;
  }
  goto value;

key:  // a member's name starts at b[i], after optional whitespace, then ':' and its value
  i = llmedge_json_skip_space(b, n, i);
  if (i >= n || b[i] != '"') {
    return LLMEDGE_BODY_INVALID;
  }
  end = llmedge_json_string(b, n, i, &escaped);
  if (end == 0) {
    return LLMEDGE_BODY_INVALID;
  }
  if (depth == 1 && top_object) {
    member = 0;
    if (escaped) {
      ambiguous = 1;  // RequestFacts decodes the name; this reader does not
    } else if (end - i == 7 && memcmp(b + i + 1, "model", 5) == 0) {
      ambiguous |= model != NULL;  // given twice: RequestFacts takes the last
      member = 1;
    } else if (end - i == 8 && memcmp(b + i + 1, "stream", 6) == 0) {
      ambiguous |= stream != NULL;
      member = 2;
    }
  }
  i = llmedge_json_skip_space(b, n, end);
  if (i >= n || b[i] != ':') {
    return LLMEDGE_BODY_INVALID;
  }
  i++;
  goto value;
}

// llmedge_json_valid is 1 iff Go's encoding/json.Valid(b[:n]) is true.
static inline int llmedge_json_valid(const char* b, size_t n) { return llmedge_json_scan(b, n, NULL) != LLMEDGE_BODY_INVALID; }

// llmedge_body_facts reads b[:n] as RequestFacts reads a body: INVALID when it is not JSON,
// OTHER when it is JSON but not an object, COMPLEX when it is an object with an escaped
// top-level member name or "model" or "stream" given more than once at top level (the
// scan is then not to be relied on: model and stream are NULL), OBJECT otherwise, with
// model and stream the raw values of those top-level members (NULL when absent).
static inline void llmedge_body_facts(const char* b, size_t n, llmedge_body_scan* out) { llmedge_json_scan(b, n, out); }

#endif  // LLMEDGE_BODY_H
