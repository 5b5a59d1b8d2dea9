/* The $n placeholder scanner: finds $1..$n and top-level ';' while
 * skipping what may contain them without meaning them: string literals
 * ('..', E'..' with backslashes on PostgreSQL, backslashes always on
 * MySQL), quoted identifiers ("..", `..`, [..] on SQLite), comments
 * (--, MySQL #, block comments, nested on PostgreSQL) and PostgreSQL $tag$ bodies.
 * A '$' inside an identifier (PostgreSQL allows a$1) is not a placeholder;
 * "::" casts are plain text to it. */
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

static bool ident_char(unsigned char c)
{
  return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z') ||
         c == '_' || c == '$' || c >= 0x80;
}

static bool ident_start(unsigned char c)
{
  return ((c | 32) >= 'a' && (c | 32) <= 'z') || c == '_' || c >= 0x80;
}

/* Skip a quoted run opened at sql[i]; doubled quotes escape, and so does a
 * backslash when `bs`. Returns the index after the closing quote. */
static size_t skip_quoted(const char *sql, size_t len, size_t i, char close, bool bs)
{
  for (i++; i < len; i++) {
    if (bs && sql[i] == '\\') {
      i++;
      continue;
    }
    if (sql[i] == close) {
      if (i + 1 < len && sql[i + 1] == close && close != ']') {
        i++;
        continue;
      }
      return i + 1;
    }
  }
  return len;
}

static size_t skip_line(const char *sql, size_t len, size_t i)
{
  while (i < len && sql[i] != '\n') i++;
  return i;
}

static size_t skip_block(const char *sql, size_t len, size_t i, bool nested)
{
  int depth = 1;
  for (i += 2; i < len; i++) {
    if (nested && sql[i] == '/' && i + 1 < len && sql[i + 1] == '*') {
      depth++;
      i++;
    } else if (sql[i] == '*' && i + 1 < len && sql[i + 1] == '/') {
      i++;
      if (--depth == 0) return i + 1;
    }
  }
  return len;
}

/* A "--" comment? MySQL wants a space or control character after it. */
static bool dash_comment(tl_db_dialect d, const char *sql, size_t len, size_t i)
{
  if (i + 1 >= len || sql[i + 1] != '-') return false;
  if (d != TL_DB_MYSQL) return true;
  return i + 2 >= len || (unsigned char)sql[i + 2] <= ' ';
}

/* PostgreSQL $tag$...$tag$ at sql[i] ('$' not part of an identifier).
 * Returns the index after the closing tag, or 0 if this is no tag. */
static size_t skip_dollar_body(const char *sql, size_t len, size_t i)
{
  size_t j = i + 1;
  if (j < len && sql[j] != '$') {
    if (!ident_start((unsigned char)sql[j])) return 0;
    while (j < len && ident_char((unsigned char)sql[j]) && sql[j] != '$') j++;
    if (j >= len || sql[j] != '$') return 0;
  }
  size_t taglen = j - i + 1; /* "$tag$" */
  for (size_t k = j + 1; k + taglen <= len; k++)
    if (sql[k] == '$' && memcmp(sql + k, sql + i, taglen) == 0)
      return k + taglen;
  return len;
}

int tl__sql_next(tl_db_dialect d, const char *sql, size_t len, size_t *pos,
                 size_t *start, long *num)
{
  size_t i = *pos;
  while (i < len) {
    char c = sql[i];
    switch (c) {
    case '\'': {
      bool bs = d == TL_DB_MYSQL ||
                (d == TL_DB_POSTGRES && i > 0 && (sql[i - 1] | 32) == 'e' &&
                 (i < 2 || !ident_char((unsigned char)sql[i - 2])));
      i = skip_quoted(sql, len, i, '\'', bs);
      continue;
    }
    case '"':
      i = skip_quoted(sql, len, i, '"', false);
      continue;
    case '`':
      if (d != TL_DB_POSTGRES) {
        i = skip_quoted(sql, len, i, '`', false);
        continue;
      }
      break;
    case '[':
      if (d == TL_DB_SQLITE) {
        i = skip_quoted(sql, len, i, ']', false);
        continue;
      }
      break;
    case '-':
      if (dash_comment(d, sql, len, i)) {
        i = skip_line(sql, len, i);
        continue;
      }
      break;
    case '#':
      if (d == TL_DB_MYSQL) {
        i = skip_line(sql, len, i);
        continue;
      }
      break;
    case '/':
      if (i + 1 < len && sql[i + 1] == '*') {
        i = skip_block(sql, len, i, d == TL_DB_POSTGRES);
        continue;
      }
      break;
    case '$':
      if (i > 0 && ident_char((unsigned char)sql[i - 1]))
        break; /* inside an identifier */
      if (i + 1 < len && sql[i + 1] >= '0' && sql[i + 1] <= '9') {
        size_t j = i + 1;
        long n = 0;
        while (j < len && sql[j] >= '0' && sql[j] <= '9') {
          if (n < 1000000) n = n * 10 + (sql[j] - '0');
          j++;
        }
        *start = i;
        *pos = j;
        *num = n;
        return TL__SQL_PARAM;
      }
      if (d == TL_DB_POSTGRES) {
        size_t after = skip_dollar_body(sql, len, i);
        if (after) {
          i = after;
          continue;
        }
      }
      break;
    case '?':
      if (d != TL_DB_POSTGRES) { /* a jsonb operator on PostgreSQL */
        *start = i;
        *pos = i + 1;
        return TL__SQL_QMARK;
      }
      break;
    case ';':
      *start = i;
      *pos = i + 1;
      return TL__SQL_SEMI;
    default:
      break;
    }
    i++;
  }
  *start = *pos = len;
  return TL__SQL_END;
}

int tl__sql_translate(tl_db_dialect d, const char *sql, size_t len,
                      char **out, int *nparams, uint16_t **map, int *nrefs)
{
  char *o = malloc(len + 1);
  uint16_t *m = NULL;
  size_t mcap = 0, olen = 0, copied = 0, pos = 0, st;
  int maxp = 0, refs = 0;
  long n;
  if (!o) return tl_error_set(TL_ENOMEM, "out of memory");
  for (;;) {
    int k = tl__sql_next(d, sql, len, &pos, &st, &n);
    if (k == TL__SQL_END) break;
    if (k == TL__SQL_SEMI) continue;
    if (k == TL__SQL_QMARK) {
      free(o);
      free(m);
      return tl_error_set(TL_EINVAL, "sql: bare '?' at offset %zu: "
                          "parameters are written $1..$n", st);
    }
    if (n < 1 || n > 65535) {
      free(o);
      free(m);
      return tl_error_set(TL_EINVAL, "sql: placeholder '$%ld' at offset %zu "
                          "is not in $1..$65535", n, st);
    }
    if (n > maxp) maxp = (int)n;
    memcpy(o + olen, sql + copied, st - copied);
    olen += st - copied;
    if (d == TL_DB_MYSQL) {
      if ((size_t)refs == mcap) {
        mcap = mcap ? mcap * 2 : 8;
        uint16_t *nm = realloc(m, mcap * sizeof *m);
        if (!nm) {
          free(o);
          free(m);
          return tl_error_set(TL_ENOMEM, "out of memory");
        }
        m = nm;
      }
      m[refs] = (uint16_t)(n - 1);
      o[olen++] = '?';
    } else {
      /* SQLite's ?NNN is positional like $NNN and just as long. */
      o[olen++] = d == TL_DB_SQLITE ? '?' : '$';
      memcpy(o + olen, sql + st + 1, pos - st - 1);
      olen += pos - st - 1;
    }
    refs++;
    copied = pos;
  }
  memcpy(o + olen, sql + copied, len - copied);
  olen += len - copied;
  o[olen] = '\0';
  *out = o;
  *nparams = maxp;
  *nrefs = refs;
  *map = m;
  return 0;
}

/* Is [s, s+n) only whitespace and comments? */
static bool blank(tl_db_dialect d, const char *s, size_t n)
{
  size_t i = 0;
  while (i < n) {
    if ((unsigned char)s[i] <= ' ') i++;
    else if (s[i] == '-' && dash_comment(d, s, n, i)) i = skip_line(s, n, i);
    else if (s[i] == '#' && d == TL_DB_MYSQL) i = skip_line(s, n, i);
    else if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') i = skip_block(s, n, i, d == TL_DB_POSTGRES);
    else return false;
  }
  return true;
}

int tl__sql_split(tl_db_dialect d, const char *sql,
                  int (*fn)(const char *stmt, size_t len, void *ctx), void *ctx)
{
  size_t len = strlen(sql), pos = 0, from = 0, st;
  long n;
  for (;;) {
    int k = tl__sql_next(d, sql, len, &pos, &st, &n);
    if (k == TL__SQL_SEMI || k == TL__SQL_END) {
      if (!blank(d, sql + from, st - from)) {
        int rc = fn(sql + from, st - from, ctx);
        if (rc) return rc;
      }
      if (k == TL__SQL_END) return 0;
      from = pos;
    }
  }
}
