/* Database URLs: scheme://user:password@host:port/path?query, plus the
 * SQLite forms sqlite:///abs, sqlite://rel, sqlite:path, sqlite::memory:.
 * Every message names the URL with its password masked. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

static const struct {
  const char *scheme;
  tl_db_dialect dialect;
} schemes[] = {
  { "sqlite", TL_DB_SQLITE },       { "sqlite3", TL_DB_SQLITE },
  { "postgres", TL_DB_POSTGRES },   { "postgresql", TL_DB_POSTGRES },
  { "mysql", TL_DB_MYSQL },         { "mariadb", TL_DB_MYSQL },
  { "mongodb", TL_DB_MONGO },       { "mongodb+srv", TL_DB_MONGO },
};

static int hexval(int c)
{
  if (c >= '0' && c <= '9') return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Percent-decode [s, s+n) into a new string; NULL on a bad escape. */
static char *decode(const char *s, size_t n, bool *bad)
{
  char *out = malloc(n + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%') {
      if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0) {
        *bad = true;
        free(out);
        return NULL;
      }
      *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else {
      *o++ = s[i];
    }
  }
  *o = '\0';
  return out;
}

void tl__url_free(tl__url *u)
{
  if (!u) return;
  free(u->raw);
  free(u->masked);
  free(u->user);
  free(u->password);
  free(u->host);
  free(u->path);
  free(u->query);
  memset(u, 0, sizeof *u);
}

static int fail(tl__url *u, int status, const char *what)
{
  tl_error_set(status, "database url '%s': %s", u->masked ? u->masked : "", what);
  tl__url_free(u);
  return status;
}

static char *dupn(const char *s, size_t n)
{
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

int tl__url_parse(const char *text, tl__url *u)
{
  memset(u, 0, sizeof *u);
  if (!text || !*text)
    return tl_error_set(TL_EINVAL, "database url: empty");
  size_t tlen = strlen(text);
  u->raw = dupn(text, tlen);
  u->masked = malloc(tlen + 8);
  if (!u->raw || !u->masked) {
    tl__url_free(u);
    return tl_error_set(TL_ENOMEM, "database url: out of memory");
  }
  tl_url_mask(text, u->masked, tlen + 8);

  const char *colon = strchr(text, ':');
  if (!colon || colon == text)
    return fail(u, TL_EINVAL, "no scheme (expected sqlite://, postgres://, "
                              "mysql://, mariadb:// or mongodb://)");
  size_t slen = (size_t)(colon - text);
  bool found = false;
  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
    if (strlen(schemes[i].scheme) == slen &&
        strncasecmp(schemes[i].scheme, text, slen) == 0) {
      u->dialect = schemes[i].dialect;
      found = true;
      break;
    }
  }
  if (!found) {
    char msg[160];
    snprintf(msg, sizeof msg, "unknown scheme '%.*s' (expected sqlite, postgres, "
             "postgresql, mysql, mariadb or mongodb)", (int)(slen > 40 ? 40 : slen), text);
    return fail(u, TL_EUNSUPP, msg);
  }
  const char *rest = colon + 1;

  if (u->dialect == TL_DB_SQLITE) {
    if (strcmp(rest, ":memory:") == 0 || strcmp(rest, "//:memory:") == 0) {
      u->memory = true;
      u->path = dupn(":memory:", 8);
      return u->path ? 0 : fail(u, TL_ENOMEM, "out of memory");
    }
    if (strncmp(rest, "//", 2) == 0)
      rest += 2;
    const char *q = strchr(rest, '?');
    size_t plen = q ? (size_t)(q - rest) : strlen(rest);
    if (plen == 0)
      return fail(u, TL_EINVAL, "no file path (sqlite:///abs/path, "
                                "sqlite://rel/path or sqlite::memory:)");
    bool bad = false;
    u->path = decode(rest, plen, &bad);
    if (q) u->query = dupn(q + 1, strlen(q + 1));
    if (bad) return fail(u, TL_EINVAL, "bad %-escape in the path");
    if (!u->path || (q && !u->query)) return fail(u, TL_ENOMEM, "out of memory");
    return 0;
  }

  if (strncmp(rest, "//", 2) != 0)
    return fail(u, TL_EINVAL, "expected '//' after the scheme");
  rest += 2;
  if (u->dialect == TL_DB_MONGO)
    return 0; /* the driver parses host lists and options itself */

  const char *end = rest + strcspn(rest, "/?");
  const char *at = NULL;
  for (const char *p = rest; p < end; p++)
    if (*p == '@') at = p; /* the last '@': passwords may hold one */
  bool bad = false;
  const char *hp = rest;
  if (at) {
    const char *pc = memchr(rest, ':', (size_t)(at - rest));
    if (pc) {
      u->user = decode(rest, (size_t)(pc - rest), &bad);
      if (!bad) u->password = decode(pc + 1, (size_t)(at - pc - 1), &bad);
    } else {
      u->user = decode(rest, (size_t)(at - rest), &bad);
    }
    if (bad) return fail(u, TL_EINVAL, "bad %-escape in the user or password");
    hp = at + 1;
  }
  const char *hend = end, *port = NULL;
  if (*hp == '[') { /* [v6]:port */
    const char *rb = memchr(hp, ']', (size_t)(end - hp));
    if (!rb) return fail(u, TL_EINVAL, "unterminated '[' in the host");
    u->host = dupn(hp + 1, (size_t)(rb - hp - 1));
    if (rb + 1 < end && rb[1] == ':') port = rb + 2;
    else if (rb + 1 != end) return fail(u, TL_EINVAL, "junk after ']' in the host");
  } else {
    const char *pc = memchr(hp, ':', (size_t)(end - hp));
    if (pc) {
      hend = pc;
      port = pc + 1;
    }
    if (hend > hp) u->host = decode(hp, (size_t)(hend - hp), &bad);
    if (bad) return fail(u, TL_EINVAL, "bad %-escape in the host");
  }
  if (port) {
    int64_t v;
    if (tl__parse_i64(port, (size_t)(end - port), &v) != 0 || v < 1 || v > 65535)
      return fail(u, TL_EINVAL, "the port is not a number in [1, 65535]");
    u->port = (int)v;
  }
  if (*end == '/') {
    const char *q = strchr(end, '?');
    size_t plen = q ? (size_t)(q - end - 1) : strlen(end + 1);
    if (plen) u->path = decode(end + 1, plen, &bad);
    if (bad) return fail(u, TL_EINVAL, "bad %-escape in the database name");
    end = q ? q : end + 1 + plen;
  }
  if (*end == '?') {
    u->query = dupn(end + 1, strlen(end + 1));
    if (!u->query) return fail(u, TL_ENOMEM, "out of memory");
  }
  return 0;
}

const char *tl__url_param(const tl__url *u, const char *key, char *buf,
                          size_t size)
{
  if (!u->query || size == 0) return NULL;
  size_t klen = strlen(key);
  const char *p = u->query;
  while (*p) {
    size_t n = strcspn(p, "&");
    if (n > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      bool bad = false;
      char *v = decode(p + klen + 1, n - klen - 1, &bad);
      if (!v) return NULL;
      snprintf(buf, size, "%s", v);
      free(v);
      return buf;
    }
    p += n;
    if (*p == '&') p++;
  }
  return NULL;
}
