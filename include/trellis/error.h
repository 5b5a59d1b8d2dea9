/* trellis: status codes and the thread's last error message. */
#ifndef TRELLIS_ERROR_H
#define TRELLIS_ERROR_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One table gives the codes, their names and their messages.
 * Every fallible call returns 0 or one of these (all negative). */
#define TL_STATUS_MAP(X)                                                     \
  X(EINVAL,     -1, "invalid argument")                                      \
  X(ENOMEM,     -2, "out of memory")                                         \
  X(ENOTFOUND,  -3, "not found")                                             \
  X(ECONFLICT,  -4, "conflict")                                              \
  X(ERETRY,     -5, "transient failure, retry")                              \
  X(ETIMEOUT,   -6, "timed out")                                             \
  X(EBUSY,      -7, "resource busy")                                         \
  X(ECLOSED,    -8, "closed")                                                \
  X(EIO,        -9, "input/output error")                                    \
  X(ECONNECT,  -10, "connection failed")                                     \
  X(EUNSUPP,   -11, "not supported")                                         \
  X(ECONSTRAINT,-12, "constraint violation")                                 \
  X(EPERM,     -13, "permission denied")                                     \
  X(ETOOBIG,   -14, "too large")                                             \
  X(ESTATE,    -15, "invalid state")                                         \
  X(EPROTO,    -16, "protocol or data format error")                         \
  X(EINTERNAL, -17, "internal error")                                       \
  X(EPRECOND,  -18, "precondition failed")

typedef enum tl_status {
  TL_OK = 0,
#define TL__STATUS_ENUM(name, code, msg) TL_##name = (code),
  TL_STATUS_MAP(TL__STATUS_ENUM)
#undef TL__STATUS_ENUM
} tl_status;

/* Static text for a status ("conflict"); "unknown status" for others. */
const char *tl_strerror(int status);

/* Static name for a status ("TL_ECONFLICT"); "TL_OK" for 0. */
const char *tl_status_name(int status);

/* The message of the last failing call on this thread ("HTTP_PORT: 'abc'
 * is not an integer"), or "" if none. Valid until the next trellis call on
 * this thread. Never contains a password. */
const char *tl_error_last(void);

/* Set this thread's message (printf format) and return `status`, so a
 * failing path reads `return tl_error_set(TL_EINVAL, "x: '%s'", v);`. */
int tl_error_set(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int tl_error_setv(int status, const char *fmt, va_list ap);

/* Prefix this thread's message with "<prefix>: " and return `status`. */
int tl_error_wrap(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forget this thread's message. */
void tl_error_clear(void);

#ifdef __cplusplus
}
#endif
#endif
