/* Internal helpers shared by the library's modules. Not installed. */
#ifndef TRELLIS_CORE_INT_H
#define TRELLIS_CORE_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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

#endif
