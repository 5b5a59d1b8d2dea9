/* The per-connection prepared statement cache, and the statement paths
 * every public call goes through (exec, query, exec_many on a connection).
 * The key is the caller's SQL text (plus the argument types where the
 * backend prepares per type); a hit costs one hash of the text and one
 * memcmp. At most TL__STMT_MAX statements per connection, least recently
 * used evicted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

static uint64_t mix(uint64_t h)
{
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}


static bool types_match(const tl__stmt *st, const tl_value *args, size_t n)
{
  if ((size_t)st->nparams != n) return false;
  for (size_t i = 0; i < n; i++)
    if (st->types[i] != (uint8_t)args[i].type) return false;
  return true;
}

void tl__stmt_free(tl_conn *c, tl__stmt *st)
{
  if (st->b) c->be->finalize(c, st); /* no round trip when c->broken */
  free(st->sql);
  free(st->types);
  free(st->map);
  free(st->colnames);
  free(st->coltypes);
  free(st);
}

static void evict_lru(tl_conn *c)
{
  tl__stmt **victim = NULL;
  for (int b = 0; b < TL__STMT_BUCKETS; b++)
    for (tl__stmt **pp = &c->cache.bucket[b]; *pp; pp = &(*pp)->next)
      if (!victim || (*pp)->last_use < (*victim)->last_use) victim = pp;
  if (!victim) return;
  tl__stmt *st = *victim;
  *victim = st->next;
  c->cache.count--;
  tl__stmt_free(c, st);
}

void tl__conn_cache_clear(tl_conn *c)
{
  for (int b = 0; b < TL__STMT_BUCKETS; b++) {
    while (c->cache.bucket[b]) {
      tl__stmt *st = c->cache.bucket[b];
      c->cache.bucket[b] = st->next;
      tl__stmt_free(c, st);
    }
  }
  c->cache.count = 0;
}

int tl__conn_stmt(tl_conn *c, const char *sql, const tl_value *args,
                  size_t nargs, tl__stmt **out)
{
  size_t len = strlen(sql);
  uint64_t h = tl__hash64(sql, len, 0);
  bool keyed = c->be->key_types;
  if (keyed)
    for (size_t i = 0; i < nargs; i++) h = mix(h + (uint64_t)args[i].type + 1);
  tl__stmt *st = c->cache.bucket[h & (TL__STMT_BUCKETS - 1)];
  while (st && !(st->hash == h && st->len == len && memcmp(st->sql, sql, len) == 0 &&
                 (!keyed || types_match(st, args, nargs))))
    st = st->next;
  if (!st) {
    if (c->cache.count >= TL__STMT_MAX) evict_lru(c);
    st = calloc(1, sizeof *st);
    if (!st || !(st->sql = malloc(len + 1))) {
      free(st);
      return tl_error_set(TL_ENOMEM, "out of memory");
    }
    memcpy(st->sql, sql, len + 1);
    st->len = len;
    st->hash = h;
    st->ncols = -1;
    char *translated;
    int rc = tl__sql_translate(c->be->dialect, sql, len, &translated,
                               &st->nparams, &st->map, &st->nrefs);
    if (rc == 0 && (size_t)st->nparams != nargs) {
      free(translated);
      rc = tl_error_set(TL_EINVAL, "sql expects %d argument%s ($1..$%d), got %zu",
                        st->nparams, st->nparams == 1 ? "" : "s", st->nparams, nargs);
    }
    if (rc == 0 && keyed && nargs) {
      if (!(st->types = malloc(nargs))) rc = tl_error_set(TL_ENOMEM, "out of memory");
      for (size_t i = 0; rc == 0 && i < nargs; i++) st->types[i] = (uint8_t)args[i].type;
    }
    if (rc == 0) {
      rc = c->be->prepare(c, st, translated, args, nargs);
      free(translated);
    }
    if (rc != 0) {
      st->b = NULL;
      tl__stmt_free(c, st);
      return rc;
    }
    tl__stmt **bucket = &c->cache.bucket[h & (TL__STMT_BUCKETS - 1)];
    st->next = *bucket;
    *bucket = st;
    c->cache.count++;
  } else if ((size_t)st->nparams != nargs) {
    return tl_error_set(TL_EINVAL, "sql expects %d argument%s ($1..$%d), got %zu",
                        st->nparams, st->nparams == 1 ? "" : "s", st->nparams, nargs);
  }
  st->last_use = ++c->cache.tick;
  *out = st;
  return 0;
}

int tl__stmt_describe(tl__stmt *st, int ncols,
                      const char *(*name)(void *ctx, int i),
                      tl_type (*type)(void *ctx, int i), void *ctx)
{
  if (ncols < 0 || ncols > 65535) return tl_error_set(TL_EPROTO, "result has %d columns", ncols);
  size_t count = (size_t)ncols, bytes = count * sizeof(char *);
  for (int i = 0; i < ncols; i++) {
    const char *n = name(ctx, i);
    bytes += strlen(n ? n : "") + 1;
  }
  char **names = malloc(bytes ? bytes : 1);
  tl_type *types = malloc(count ? count * sizeof *types : 1);
  if (!names || !types) {
    free(names);
    free(types);
    return tl_error_set(TL_ENOMEM, "out of memory");
  }
  char *p = (char *)(names + ncols);
  for (int i = 0; i < ncols; i++) {
    const char *n = name(ctx, i);
    size_t l = strlen(n ? n : "");
    memcpy(p, n ? n : "", l + 1);
    names[i] = p;
    p += l + 1;
    types[i] = type(ctx, i);
  }
  free(st->colnames);
  free(st->coltypes);
  st->colnames = names;
  st->coltypes = types;
  st->ncols = ncols;
  return 0;
}

/* ---- the statement paths ------------------------------------------------ */

int tl__conn_failed(tl_conn *c, int rc)
{
  tl_db_error_class cls = tl_db_error_last_class();
  if (cls == TL_DB_ERR_CONNECTION_LOST) c->broken = true;
  tl__pool_count_error(c->pool, cls);
  return rc;
}

static void slow_check(tl_conn *c, const char *sql, int64_t t0)
{
  const tl__db_opts *o = tl__pool_opts(c->pool);
  if (o->slow_query_us <= 0) return;
  int64_t dt = tl__mono_coarse_us() - t0;
  if (dt > o->slow_query_us)
    tl_log(TL_LOG_WARN, "slow database statement", TL_F_STR("pool", o->name),
           TL_F_STR("role", tl__pool_role(c->pool)), TL_F_INT("ms", dt / 1000),
           TL_F_STR("sql", sql));
}

static int check_args(const tl_value *args, size_t nargs)
{
  if (nargs && !args) return tl_error_set(TL_EINVAL, "sql: %zu arguments but a NULL array", nargs);
  return 0;
}

int tl__conn_exec(tl_conn *c, int64_t *affected, const char *sql,
                  const tl_value *args, size_t nargs)
{
  int64_t dummy;
  if (!affected) affected = &dummy;
  *affected = 0;
  if (c->rows.open)
    return tl_error_set(TL_ESTATE, "a result set is still open on this connection: "
                        "free it before the next statement");
  int rc = check_args(args, nargs);
  tl__stmt *st;
  if (rc == 0) rc = tl__conn_stmt(c, sql, args, nargs, &st);
  if (rc != 0) return tl__conn_failed(c, rc);
  int64_t t0 = tl__mono_coarse_us();
  rc = c->be->exec(c, st, args, nargs, affected);
  slow_check(c, sql, t0);
  return rc ? tl__conn_failed(c, rc) : 0;
}

int tl__conn_query(tl_conn *c, tl_rows **out, const char *sql,
                   const tl_value *args, size_t nargs)
{
  if (c->rows.open)
    return tl_error_set(TL_ESTATE, "a result set is still open on this connection: "
                        "free it before the next statement");
  int rc = check_args(args, nargs);
  tl__stmt *st;
  if (rc == 0) rc = tl__conn_stmt(c, sql, args, nargs, &st);
  if (rc != 0) return tl__conn_failed(c, rc);
  tl_rows *r = &c->rows;
  *r = (tl_rows){ .conn = c, .st = st, .started_us = tl__mono_coarse_us() };
  rc = c->be->query(c, st, args, nargs);
  slow_check(c, sql, r->started_us);
  if (rc != 0) return tl__conn_failed(c, rc);
  r->open = true;
  *out = r;
  return 0;
}

int tl__conn_exec_many(tl_conn *c, int64_t *affected, const char *sql,
                       const tl_value *args, size_t ncols, size_t nrows)
{
  int64_t dummy;
  if (!affected) affected = &dummy;
  *affected = 0;
  if (c->rows.open)
    return tl_error_set(TL_ESTATE, "a result set is still open on this connection: "
                        "free it before the next statement");
  if (nrows == 0) return 0;
  int rc = check_args(args, ncols * nrows);
  tl__stmt *st;
  if (rc == 0) rc = tl__conn_stmt(c, sql, args, ncols, &st);
  if (rc != 0) return tl__conn_failed(c, rc);
  int64_t t0 = tl__mono_coarse_us();
  rc = c->be->exec_many(c, st, args, ncols, nrows, affected);
  slow_check(c, sql, t0);
  return rc ? tl__conn_failed(c, rc) : 0;
}

int tl__conn_reset(tl_conn *c)
{
  if (c->rows.open) {
    c->rows.release_to = NULL;
    tl_rows_free(&c->rows);
  }
  c->tx.active = false;
  if (c->broken) return TL_ECONNECT;
  int rc = c->be->exec_simple(c, "ROLLBACK");
  if (rc != 0) c->broken = true;
  return rc;
}
