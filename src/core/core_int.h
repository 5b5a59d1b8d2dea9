/* Internal helpers shared by the library's modules. Not installed. */
#ifndef TRELLIS_CORE_INT_H
#define TRELLIS_CORE_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A growable byte buffer that may start on the caller's stack, so short
 * outputs (log lines, small JSON) need no allocation. Appends after an
 * allocation failure are dropped and `failed` is set; data is always
 * NUL-terminated while not failed. */
typedef struct tl__buf {
  char *data;
  size_t len, cap;
  bool on_stack, failed;
} tl__buf;

#define TL__BUF_STACK(arr) ((tl__buf){ .data = (arr), .len = 0, .cap = sizeof(arr), .on_stack = true })
#define TL__BUF_INIT ((tl__buf){ 0 })

bool tl__buf_reserve(tl__buf *b, size_t extra);
void tl__buf_add(tl__buf *b, const char *s, size_t n);
void tl__buf_puts(tl__buf *b, const char *s);
void tl__buf_printf(tl__buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append `s` as a JSON string literal (quotes, escapes; invalid UTF-8
 * becomes U+FFFD). */
void tl__buf_json_str(tl__buf *b, const char *s, size_t len);

static inline void tl__buf_free(tl__buf *b)
{
  if (!b->on_stack)
    free(b->data);
  *b = TL__BUF_INIT;
}

/* Hand the heap copy of a buffer to the caller (copies if it is on the
 * stack). Returns NULL on failure. The caller frees with tl_free(). */
char *tl__buf_steal(tl__buf *b, size_t *len);

/* A NUL-terminated copy of the `n` bytes at `s` (which need not be
 * NUL-terminated, unlike strndup's contract). NULL when out of memory. */
char *tl__strndup(const char *s, size_t n);

/* A fast 64-bit hash of `n` bytes, seeded (not for untrusted keys
 * without a secret seed). One for every table in the library. */
static inline uint64_t tl__hash64(const void *p, size_t n, uint64_t seed)
{
  const char *s = p;
  uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ull);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 31;
    s += 8;
    n -= 8;
  }
  uint64_t w = 0;
  memcpy(&w, s, n);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 29);
}

/* A condition variable whose timed waits use CLOCK_MONOTONIC, so a
 * wall-clock step cannot stretch or cut a wait. */
static inline void tl__cond_init_mono(pthread_cond_t *cv)
{
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
}

/* A W3C traceparent, "00-<32 hex trace id>-<16 hex parent id>-<2 hex
 * flags>" exactly (no all-zero ids): true and its trace id in `trace_id`,
 * else false. */
bool tl__traceparent_parse(const char *s, char trace_id[33]);

#endif
