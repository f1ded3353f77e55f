// Per-stream state of the hop module, shared by hooks.c and module.go.
#include <stddef.h>

typedef struct {
  size_t config;  // the config's index, first so that configAt reads it as a config's
  int pending;    // the async mode's decision is not made yet
} hop_stream;
