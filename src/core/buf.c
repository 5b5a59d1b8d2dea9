/* A growable buffer and JSON string escaping, shared by the modules. */
#include <stdio.h>
#include <string.h>

#include "core_int.h"

bool tl__buf_reserve(tl__buf *b, size_t extra)
{
  if (b->failed)
    return false;
  if (b->len + extra + 1 <= b->cap)
    return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1)
    cap *= 2;
  char *p;
  if (b->on_stack) {
    p = malloc(cap);
    if (p)
      memcpy(p, b->data, b->len);
  } else {
    p = realloc(b->data, cap);
  }
  if (!p) {
    b->failed = true;
    return false;
  }
  b->data = p;
  b->cap = cap;
  b->on_stack = false;
  return true;
}

void tl__buf_add(tl__buf *b, const char *s, size_t n)
{
  if (!tl__buf_reserve(b, n))
    return;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void tl__buf_puts(tl__buf *b, const char *s) { tl__buf_add(b, s, strlen(s)); }

void tl__buf_printf(tl__buf *b, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  char tmp[256];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n < sizeof tmp) {
    tl__buf_add(b, tmp, (size_t)n);
    return;
  }
  if (!tl__buf_reserve(b, (size_t)n))
    return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
  unsigned char c = s[0];
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f;
  else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f;
  else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07;
  else return 0;
  if (n > left) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
  if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

void tl__buf_json_str(tl__buf *b, const char *s, size_t len)
{
  static const char hex[] = "0123456789abcdef";
  tl__buf_add(b, "\"", 1);
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, run = 0;
  while (i < len) {
    unsigned char c = p[i];
    const char *esc = NULL;
    char u[7];
    size_t seq = 1;
    if (c == '"') esc = "\\\"";
    else if (c == '\\') esc = "\\\\";
    else if (c == '\n') esc = "\\n";
    else if (c == '\r') esc = "\\r";
    else if (c == '\t') esc = "\\t";
    else if (c < 0x20 || c == 0x7f) {
      u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0', u[4] = hex[c >> 4], u[5] = hex[c & 15], u[6] = 0;
      esc = u;
    } else if (c >= 0x80 && (seq = utf8_seq(p + i, len - i)) == 0) {
      esc = "\\ufffd"; /* invalid UTF-8 never reaches a log line */
      seq = 1;
    }
    if (esc) {
      tl__buf_add(b, (const char *)p + i - run, run);
      run = 0;
      tl__buf_puts(b, esc);
      i += seq;
    } else {
      run += seq;
      i += seq;
    }
  }
  tl__buf_add(b, (const char *)p + i - run, run);
  tl__buf_add(b, "\"", 1);
}

char *tl__buf_steal(tl__buf *b, size_t *len)
{
  if (b->failed || !tl__buf_reserve(b, 0)) {
    tl__buf_free(b);
    return NULL;
  }
  b->data[b->len] = '\0';
  char *out = b->data;
  if (b->on_stack) {
    out = malloc(b->len + 1);
    if (out)
      memcpy(out, b->data, b->len + 1);
  }
  if (len)
    *len = b->len;
  *b = TL__BUF_INIT;
  return out;
}

char *tl__strndup(const char *s, size_t n)
{
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}
