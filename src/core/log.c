/* Structured logging: one JSON object per line, one write(2) per line. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core_int.h"
#include "trellis/clock.h"
#include "trellis/error.h"
#include "trellis/log.h"

static atomic_int log_level = TL_LOG_INFO;
static atomic_int log_fd = 2;

static _Thread_local char ctx_request_id[65];
static _Thread_local char ctx_trace_id[65];

static const char *const level_names[] = { "debug", "info", "warn", "error", "off" };

void tl_log_set_level(tl_log_level level) { atomic_store(&log_level, (int)level); }
tl_log_level tl_log_get_level(void) { return (tl_log_level)atomic_load(&log_level); }
bool tl_log_enabled(tl_log_level level) { return (int)level >= atomic_load(&log_level); }
void tl_log_set_fd(int fd) { atomic_store(&log_fd, fd); }

int tl_log_level_parse(const char *text, tl_log_level *out)
{
  for (int i = 0; i <= TL_LOG_OFF; i++) {
    if (text && strcasecmp(text, level_names[i]) == 0) {
      *out = (tl_log_level)i;
      return 0;
    }
  }
  if (text && strcasecmp(text, "warning") == 0) {
    *out = TL_LOG_WARN;
    return 0;
  }
  return tl_error_set(TL_EINVAL, "'%s' is not a log level (expected debug, info, warn, error or off)",
                      text ? text : "(null)");
}

static void copy_ctx(char *dst, const char *src)
{
  if (!src) {
    dst[0] = '\0';
    return;
  }
  size_t n = strnlen(src, 64);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

void tl_log_context_set(const char *request_id, const char *trace_id)
{
  copy_ctx(ctx_request_id, request_id);
  copy_ctx(ctx_trace_id, trace_id);
}

static bool lower_hex(const char *s, size_t n, bool *all_zero)
{
  bool zero = true;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return false;
    zero &= c == '0';
  }
  *all_zero = zero;
  return true;
}

bool tl__traceparent_parse(const char *s, char trace_id[33])
{
  bool zero;
  if (!s || strlen(s) != 55 || s[0] != '0' || s[1] != '0' || s[2] != '-' ||
      s[35] != '-' || s[52] != '-')
    return false;
  if (!lower_hex(s + 3, 32, &zero) || zero)
    return false;
  if (!lower_hex(s + 36, 16, &zero) || zero)
    return false;
  if (!lower_hex(s + 53, 2, &zero))
    return false;
  memcpy(trace_id, s + 3, 32);
  trace_id[32] = '\0';
  return true;
}

void tl_log_context_set_traceparent(const char *request_id, const char *traceparent)
{
  char trace[33];
  tl_log_context_set(request_id, tl__traceparent_parse(traceparent, trace) ? trace : NULL);
}

const char *tl_log_context_request_id(void) { return ctx_request_id; }
const char *tl_log_context_trace_id(void) { return ctx_trace_id; }

static void write_all(int fd, const char *p, size_t n)
{
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    p += w;
    n -= (size_t)w;
  }
}

static void add_field(tl__buf *b, const tl_log_field *f)
{
  tl__buf_add(b, ",", 1);
  tl__buf_json_str(b, f->key ? f->key : "", f->key ? strlen(f->key) : 0);
  tl__buf_add(b, ":", 1);
  switch (f->type) {
  case TL__LF_STR:
    if (f->v.s)
      tl__buf_json_str(b, f->v.s, strlen(f->v.s));
    else
      tl__buf_puts(b, "null");
    break;
  case TL__LF_INT: tl__buf_printf(b, "%lld", (long long)f->v.i); break;
  case TL__LF_DBL:
    if (f->v.d != f->v.d || f->v.d > 1e308 || f->v.d < -1e308)
      tl__buf_puts(b, "null"); /* JSON has no NaN or infinity */
    else
      tl__buf_printf(b, "%.6g", f->v.d);
    break;
  case TL__LF_BOOL: tl__buf_puts(b, f->v.b ? "true" : "false"); break;
  case TL__LF_JSON: tl__buf_puts(b, f->v.s ? f->v.s : "null"); break;
  case TL__LF_END: break;
  }
}

void tl_log_emit(tl_log_level level, const char *msg, ...)
{
  if (!tl_log_enabled(level) || level >= TL_LOG_OFF)
    return;
  char stack[2048];
  tl__buf b = TL__BUF_STACK(stack);
  char ts[40];
  tl_time_format(tl_time_now_us(), 6, ts, sizeof ts);
  tl__buf_puts(&b, "{\"ts\":\"");
  tl__buf_puts(&b, ts);
  tl__buf_puts(&b, "\",\"level\":\"");
  tl__buf_puts(&b, level_names[level]);
  tl__buf_puts(&b, "\",\"msg\":");
  tl__buf_json_str(&b, msg ? msg : "", msg ? strlen(msg) : 0);
  va_list ap;
  va_start(ap, msg);
  for (;;) {
    tl_log_field f = va_arg(ap, tl_log_field);
    if (f.type == TL__LF_END)
      break;
    add_field(&b, &f);
  }
  va_end(ap);
  if (ctx_request_id[0]) {
    tl__buf_puts(&b, ",\"request_id\":");
    tl__buf_json_str(&b, ctx_request_id, strlen(ctx_request_id));
  }
  if (ctx_trace_id[0]) {
    tl__buf_puts(&b, ",\"trace_id\":");
    tl__buf_json_str(&b, ctx_trace_id, strlen(ctx_trace_id));
  }
  tl__buf_add(&b, "}\n", 2);
  if (!b.failed)
    write_all(atomic_load(&log_fd), b.data, b.len);
  tl__buf_free(&b);
}
