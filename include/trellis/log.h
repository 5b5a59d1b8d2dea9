/* trellis: structured logging, one JSON object per line on stderr. */
#ifndef TRELLIS_LOG_H
#define TRELLIS_LOG_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tl_log_level {
  TL_LOG_DEBUG = 0,
  TL_LOG_INFO = 1,
  TL_LOG_WARN = 2,
  TL_LOG_ERROR = 3,
  TL_LOG_OFF = 4
} tl_log_level;

typedef enum tl_log_ftype {
  TL__LF_END = 0, TL__LF_STR, TL__LF_INT, TL__LF_DBL, TL__LF_BOOL, TL__LF_JSON
} tl_log_ftype;

/* One key/value of a log line. Build them with the TL_F_* macros. */
typedef struct tl_log_field {
  tl_log_ftype type;
  const char *key;
  union { const char *s; int64_t i; double d; bool b; } v;
} tl_log_field;

#define TL_F_STR(k, val)  ((tl_log_field){ .type = TL__LF_STR,  .key = (k), .v.s = (val) })
#define TL_F_INT(k, val)  ((tl_log_field){ .type = TL__LF_INT,  .key = (k), .v.i = (int64_t)(val) })
#define TL_F_DBL(k, val)  ((tl_log_field){ .type = TL__LF_DBL,  .key = (k), .v.d = (double)(val) })
#define TL_F_BOOL(k, val) ((tl_log_field){ .type = TL__LF_BOOL, .key = (k), .v.b = (bool)(val) })
/* `val` is already JSON text and is written as is. */
#define TL_F_JSON(k, val) ((tl_log_field){ .type = TL__LF_JSON, .key = (k), .v.s = (val) })
#define TL_F_END          ((tl_log_field){ .type = TL__LF_END })

/* Write one line: {"ts":"...","level":"info","msg":"...",<fields>,
 * "request_id":"...","trace_id":"..."} (the last two from this thread's
 * context, when set). Strings are escaped; a NULL string is written as null.
 * Usage: tl_log(TL_LOG_INFO, "listening", TL_F_INT("port", 8080));
 * Any thread; one write(2) per line so lines never interleave. */
#define tl_log(level, ...) tl_log_emit((level), __VA_ARGS__, TL_F_END)
void tl_log_emit(tl_log_level level, const char *msg, ...);

/* Lines below this level are dropped. Default TL_LOG_INFO. Any thread. */
void tl_log_set_level(tl_log_level level);
tl_log_level tl_log_get_level(void);
bool tl_log_enabled(tl_log_level level);

/* Parse "debug", "info", "warn"/"warning", "error", "off" (any case).
 * Returns 0 or TL_EINVAL with a message naming the value. */
int tl_log_level_parse(const char *text, tl_log_level *out);

/* Send lines to `fd` instead of stderr (2). For tests. */
void tl_log_set_fd(int fd);

/* This thread's request context, added to every line it logs until
 * cleared with NULLs. Strings are copied (truncated to 64 bytes). */
void tl_log_context_set(const char *request_id, const char *trace_id);
/* The same with the trace id of a W3C traceparent header ("00-<trace
 * id>-<parent id>-<flags>"), none when it is not a valid one: for threads
 * that work for a message, an event or a job carrying the trace. */
void tl_log_context_set_traceparent(const char *request_id, const char *traceparent);
const char *tl_log_context_request_id(void);
const char *tl_log_context_trace_id(void);

#ifdef __cplusplus
}
#endif
#endif
