/* CACHE_URL: memory://?max_bytes=64MiB&shards=N and
 * redis://[[user]:password@]host[:port][/db]. Every message names the URL
 * with its password masked. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/cache_int.h"

#define MIN_BYTES (16u << 10)       /* a smaller store could not hold much */
#define MAX_BYTES ((uint64_t)1 << 40)
#define MIN_SHARE (4u << 10)        /* bytes per shard at the least */

int tl__cache_size_parse(const char *text, size_t len, uint64_t *out)
{
  static const struct { const char *unit; uint64_t mul; } units[] = {
    { "", 1 },           { "B", 1 },
    { "KiB", 1u << 10 }, { "MiB", 1u << 20 }, { "GiB", 1u << 30 },
    { "KB", 1000 },      { "MB", 1000000 },   { "GB", 1000000000 },
  };
  size_t i = 0;
  uint64_t v = 0;
  while (i < len && isdigit((unsigned char)text[i])) {
    if (v > (UINT64_MAX - 9) / 10) return TL_EINVAL;
    v = v * 10 + (uint64_t)(text[i++] - '0');
  }
  if (i == 0) return TL_EINVAL;
  for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
    size_t ulen = strlen(units[u].unit);
    if (len - i == ulen && strncmp(text + i, units[u].unit, ulen) == 0) {
      if (v > UINT64_MAX / units[u].mul) return TL_EINVAL;
      *out = v * units[u].mul;
      return 0;
    }
  }
  return TL_EINVAL;
}

void tl__cache_url_free(tl__cache_url *u)
{
  if (!u) return;
  free(u->masked);
  free(u->host);
  free(u->user);
  free(u->password);
  memset(u, 0, sizeof *u);
}

static int fail(tl__cache_url *u, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(tl__cache_url *u, int status, const char *fmt, ...)
{
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  tl_error_set(status, "cache url '%s': %s", u->masked ? u->masked : "", what);
  tl__cache_url_free(u);
  return status;
}

/* Percent-decode [s, s+n); NULL on a bad escape (`*bad`) or no memory. */
static char *decode(const char *s, size_t n, bool *bad)
{
  char *out = malloc(n + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '%') {
      *o++ = s[i];
      continue;
    }
    if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
        !isxdigit((unsigned char)s[i + 2])) {
      *bad = true;
      free(out);
      return NULL;
    }
    char hex[3] = { s[i + 1], s[i + 2], 0 };
    *o++ = (char)strtol(hex, NULL, 16);
    i += 2;
  }
  *o = '\0';
  return out;
}

/* A whole decimal number in [min, max] from [s, s+n). */
static bool number(const char *s, size_t n, long min, long max, long *out)
{
  if (n == 0 || n > 10) return false;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) return false;
    v = v * 10 + (s[i] - '0');
  }
  if (v < min || v > max) return false;
  *out = v;
  return true;
}

static int parse_memory(const char *rest, tl__cache_url *u)
{
  const char *q = strchr(rest, '?');
  size_t hlen = q ? (size_t)(q - rest) : strlen(rest);
  if (hlen) /* not echoed: it may hold a user:password@ */
    return fail(u, TL_EINVAL, "unexpected text after 'memory://' (expected "
                "memory://?max_bytes=64MiB)");
  u->kind = TL__CACHE_MEMORY;
  u->max_bytes = 64u << 20;
  for (const char *p = q ? q + 1 : ""; *p;) {
    size_t n = strcspn(p, "&");
    const char *eq = memchr(p, '=', n);
    size_t klen = eq ? (size_t)(eq - p) : n;
    const char *v = eq ? eq + 1 : p + n;
    size_t vlen = (size_t)(p + n - v);
    long shards;
    if (klen == 9 && strncmp(p, "max_bytes", 9) == 0) {
      if (tl__cache_size_parse(v, vlen, &u->max_bytes) != 0 || u->max_bytes < MIN_BYTES ||
          u->max_bytes > MAX_BYTES)
        return fail(u, TL_EINVAL, "max_bytes '%.*s' is not a size from 16KiB to 1024GiB "
                    "(bytes, or a number with KiB, MiB, GiB, KB, MB or GB)",
                    (int)(vlen > 40 ? 40 : vlen), v);
    } else if (klen == 6 && strncmp(p, "shards", 6) == 0) {
      if (!number(v, vlen, 1, 1024, &shards) || (shards & (shards - 1)) != 0)
        return fail(u, TL_EINVAL, "shards '%.*s' is not a power of two from 1 to 1024",
                    (int)(vlen > 40 ? 40 : vlen), v);
      u->shards = (unsigned)shards;
    } else if (n) {
      return fail(u, TL_EINVAL, "unknown option '%.*s' (expected max_bytes or shards)",
                  (int)(klen > 40 ? 40 : klen), p);
    }
    p += n;
    if (*p == '&') p++;
  }
  if (u->shards && u->max_bytes / u->shards < MIN_SHARE)
    return fail(u, TL_EINVAL, "shards=%u leaves less than 4KiB of max_bytes=%llu to each",
                u->shards, (unsigned long long)u->max_bytes);
  return 0;
}

static int parse_redis(const char *rest, tl__cache_url *u)
{
  u->kind = TL__CACHE_REDIS;
  u->port = 6379;
  const char *end = rest + strcspn(rest, "/?#"); /* where tl_url_mask ends it too */
  const char *at = NULL;
  for (const char *p = rest; p < end; p++)
    if (*p == '@') at = p; /* the last '@': a password may hold one */
  bool bad = false;
  const char *hp = rest;
  if (at) {
    const char *colon = memchr(rest, ':', (size_t)(at - rest));
    const char *uend = colon ? colon : at;
    if (uend > rest && !(u->user = decode(rest, (size_t)(uend - rest), &bad)) && !bad)
      return fail(u, TL_ENOMEM, "out of memory");
    if (colon && !(u->password = decode(colon + 1, (size_t)(at - colon - 1), &bad)) && !bad)
      return fail(u, TL_ENOMEM, "out of memory");
    if (bad) return fail(u, TL_EINVAL, "bad %%-escape in the user or password");
    if (u->user && !u->password)
      return fail(u, TL_EINVAL, "a user without a password (expected user:password@)");
    hp = at + 1;
  }
  const char *port = NULL, *hend = end;
  if (*hp == '[') {
    const char *close = memchr(hp, ']', (size_t)(end - hp));
    if (!close) return fail(u, TL_EINVAL, "'[' without ']' around an IPv6 address");
    if (close + 1 < end && close[1] != ':')
      return fail(u, TL_EINVAL, "expected ':port' after ']'");
    port = close + 1 < end ? close + 2 : NULL;
    hp++;
    hend = close;
  } else {
    const char *colon = memchr(hp, ':', (size_t)(end - hp));
    if (colon) {
      port = colon + 1;
      hend = colon;
    }
  }
  if (hend == hp) return fail(u, TL_EINVAL, "no host (expected redis://host:port/db)");
  for (const char *p = hp; p < hend; p++)
    if (isspace((unsigned char)*p) || *p == '@' || *p == '[' || *p == ']')
      return fail(u, TL_EINVAL, "bad character in the host");
  if (!(u->host = tl__strndup(hp, (size_t)(hend - hp)))) return fail(u, TL_ENOMEM, "out of memory");
  long v;
  if (port) {
    if (!number(port, (size_t)(end - port), 1, 65535, &v))
      return fail(u, TL_EINVAL, "port '%.*s' is not an integer in [1, 65535]",
                  (int)(end - port > 20 ? 20 : end - port), port);
    u->port = (int)v;
  }
  if (*end == '/') {
    const char *db = end + 1;
    size_t n = strcspn(db, "?#");
    if (n && !number(db, n, 0, 1000000, &v))
      return fail(u, TL_EINVAL, "database '%.*s' is not an integer in [0, 1000000]",
                  (int)(n > 20 ? 20 : n), db);
    u->db = n ? (int)v : 0;
    end = db + n;
  }
  if (*end == '?')
    return fail(u, TL_EINVAL, "unexpected options '%.40s' (redis URLs take none; "
                "see the CACHE_* keys)", end + 1);
  if (*end == '#') return fail(u, TL_EINVAL, "unexpected '#' fragment");
  return 0;
}

int tl__cache_url_parse(const char *text, tl__cache_url *u)
{
  memset(u, 0, sizeof *u);
  if (!text || !*text) return tl_error_set(TL_EINVAL, "cache url: empty");
  size_t n = strlen(text) + 8;
  if (!(u->masked = malloc(n))) return tl_error_set(TL_ENOMEM, "cache url: out of memory");
  tl_url_mask(text, u->masked, n);
  const char *sep = strstr(text, "://");
  size_t slen = sep ? (size_t)(sep - text) : 0;
  if (!sep || slen == 0)
    return fail(u, TL_EINVAL, "no scheme (expected memory://?max_bytes=64MiB or "
                "redis://host:port/db)");
  if (slen == 6 && strncasecmp(text, "memory", 6) == 0) return parse_memory(sep + 3, u);
  if (slen == 5 && strncasecmp(text, "redis", 5) == 0) return parse_redis(sep + 3, u);
  if (slen == 6 && strncasecmp(text, "rediss", 6) == 0)
    return fail(u, TL_EUNSUPP, "TLS (rediss://) is not supported; use redis:// "
                "(through a TLS proxy if needed)");
  return fail(u, TL_EUNSUPP, "unknown scheme '%.*s' (expected memory or redis)",
              (int)(slen > 40 ? 40 : slen), text);
}
