/* Status codes and the per-thread error message. */
#include <stdio.h>
#include <string.h>

#include "trellis/error.h"

/* Long enough for a message naming a key, a value and an expectation. */
#define TL__ERRMSG_MAX 1024

static _Thread_local char errmsg[TL__ERRMSG_MAX];

const char *tl_strerror(int status)
{
  switch (status) {
  case TL_OK: return "ok";
#define TL__STATUS_STR(name, code, msg) case TL_##name: return msg;
  TL_STATUS_MAP(TL__STATUS_STR)
#undef TL__STATUS_STR
  default: return "unknown status";
  }
}

const char *tl_status_name(int status)
{
  switch (status) {
  case TL_OK: return "TL_OK";
#define TL__STATUS_NAME(name, code, msg) case TL_##name: return "TL_" #name;
  TL_STATUS_MAP(TL__STATUS_NAME)
#undef TL__STATUS_NAME
  default: return "TL_EUNKNOWN";
  }
}

const char *tl_error_last(void) { return errmsg; }

void tl_error_clear(void) { errmsg[0] = '\0'; }

int tl_error_setv(int status, const char *fmt, va_list ap)
{
  vsnprintf(errmsg, sizeof errmsg, fmt, ap);
  return status;
}

int tl_error_set(int status, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  tl_error_setv(status, fmt, ap);
  va_end(ap);
  return status;
}

int tl_error_wrap(int status, const char *fmt, ...)
{
  char old[TL__ERRMSG_MAX];
  memcpy(old, errmsg, sizeof old);
  const char *tail = old[0] ? old : tl_strerror(status);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(errmsg, sizeof errmsg, fmt, ap);
  va_end(ap);
  /* Append ": <old message>", truncating at the buffer's end. */
  size_t len = n < 0 ? 0 : (size_t)n < sizeof errmsg ? (size_t)n : sizeof errmsg - 1;
  size_t room = sizeof errmsg - 1 - len;
  size_t tlen = strlen(tail);
  if (room >= 2) {
    memcpy(errmsg + len, ": ", 2);
    len += 2, room -= 2;
    if (tlen > room)
      tlen = room;
    memcpy(errmsg + len, tail, tlen);
    len += tlen;
  }
  errmsg[len] = '\0';
  return status;
}
