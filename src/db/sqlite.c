/* SQLite backend (libsqlite3). Each connection is used by one thread at a
 * time (the pool guarantees it), so connections open in multi-thread mode
 * without SQLite's own mutexes. Defaults: WAL, synchronous=NORMAL,
 * busy_timeout 5 s, foreign_keys=ON; URL parameters busy_timeout (ms),
 * journal_mode and synchronous override them. Timestamps are stored as
 * "YYYY-MM-DD HH:MM:SS.ffffff" text (UTC), booleans as 0/1; columns
 * declared BOOLEAN, TIMESTAMP/DATETIME or JSON read back as those types. */
#include <sqlite3.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "db/db_int.h"

typedef struct sq_conn {
  struct tl_conn base;
  sqlite3 *db;
  sqlite3_stmt *cur; /* the open cursor's statement */
  int first;         /* the first step's result, while rows.pending */
  int64_t deadline_us;
} sq_conn;

#define SQ(c) ((sq_conn *)(c))

static int sq_fail(sq_conn *s, int rc)
{
  int ext = sqlite3_extended_errcode(s->db);
  if ((rc & 0xff) == SQLITE_INTERRUPT && s->deadline_us)
    return tl__db_fail(TL_DB_ERR_TIMEOUT, "sqlite: statement timed out after %lld ms",
                       (long long)(s->base.stmt_timeout_us / 1000));
  return tl__db_fail(tl__class_from_sqlite(ext), "sqlite: %s", sqlite3_errmsg(s->db));
}

static int on_progress(void *ctx)
{
  sq_conn *s = ctx;
  return s->deadline_us && tl_time_mono_us() > s->deadline_us;
}

static void arm(sq_conn *s)
{
  if (s->base.stmt_timeout_us > 0) s->deadline_us = tl_time_mono_us() + s->base.stmt_timeout_us;
}

/* A URL parameter made of letters and digits only (it goes into a PRAGMA). */
static const char *word_param(const tl__url *u, const char *key, const char *def,
                              char *buf, size_t size)
{
  const char *v = tl__url_param(u, key, buf, size);
  if (!v) return def;
  for (const char *p = v; *p; p++)
    if (!((*p >= '0' && *p <= '9') || ((*p | 32) >= 'a' && (*p | 32) <= 'z'))) return NULL;
  return *v ? v : NULL;
}

static int sq_connect(const tl__target *t, tl_conn **out)
{
  const tl__url *u = t->url;
  char b1[32], b2[32], b3[32];
  const char *busy = word_param(u, "busy_timeout", "5000", b1, sizeof b1);
  const char *journal = word_param(u, "journal_mode", u->memory ? "MEMORY" : "WAL", b2, sizeof b2);
  const char *sync = word_param(u, "synchronous", "NORMAL", b3, sizeof b3);
  if (!busy || !journal || !sync)
    return tl__db_fail(TL_DB_ERR_OTHER, "sqlite '%s': busy_timeout, journal_mode and "
                       "synchronous take a word or a number", u->masked);
  sq_conn *s = calloc(1, sizeof *s);
  if (!s) return tl_error_set(TL_ENOMEM, "out of memory");
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(u->path, &s->db, flags, NULL);
  if (rc != SQLITE_OK) {
    tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "sqlite '%s': cannot open: %s", u->masked,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
    sqlite3_close_v2(s->db);
    free(s);
    return TL_ECONNECT;
  }
  sqlite3_extended_result_codes(s->db, 1);
  sqlite3_busy_timeout(s->db, atoi(busy));
  char pragmas[192];
  snprintf(pragmas, sizeof pragmas, "PRAGMA journal_mode=%s; PRAGMA synchronous=%s; "
           "PRAGMA foreign_keys=ON", journal, sync);
  char *err = NULL;
  if (sqlite3_exec(s->db, pragmas, NULL, NULL, &err) != SQLITE_OK) {
    tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "sqlite '%s': %s", u->masked, err ? err : "pragma failed");
    sqlite3_free(err);
    sqlite3_close_v2(s->db);
    free(s);
    return TL_ECONNECT;
  }
  if (t->statement_timeout_us > 0) sqlite3_progress_handler(s->db, 1000, on_progress, s);
  *out = &s->base;
  return 0;
}

static void sq_disconnect(tl_conn *c)
{
  sqlite3_close_v2(SQ(c)->db);
  free(c);
}

static int sq_ping(tl_conn *c) { return SQ(c)->db ? 0 : TL_ECONNECT; }

static bool sq_in_tx(tl_conn *c) { return !sqlite3_get_autocommit(SQ(c)->db); }

static tl_type decl_type(const char *d)
{
  if (!d || !*d) return TL_TYPE_NULL;
  char u[64];
  size_t i = 0;
  for (; d[i] && i < sizeof u - 1; i++) u[i] = (char)((d[i] >= 'a' && d[i] <= 'z') ? d[i] - 32 : d[i]);
  u[i] = '\0';
  if (strstr(u, "BOOL")) return TL_TYPE_BOOL;
  if (strstr(u, "TIMESTAMP") || strstr(u, "DATETIME")) return TL_TYPE_TIMESTAMP;
  if (strstr(u, "JSON")) return TL_TYPE_JSON;
  if (strstr(u, "INT")) return TL_TYPE_INT;
  if (strstr(u, "CHAR") || strstr(u, "CLOB") || strstr(u, "TEXT")) return TL_TYPE_TEXT;
  if (strstr(u, "BLOB")) return TL_TYPE_BLOB;
  if (strstr(u, "REAL") || strstr(u, "FLOA") || strstr(u, "DOUB")) return TL_TYPE_DOUBLE;
  return TL_TYPE_NULL; /* NUMERIC and the like: whatever each value is */
}

static int sq_prepare(tl_conn *c, tl__stmt *st, const char *sql,
                      const tl_value *args, size_t nargs)
{
  (void)args;
  (void)nargs;
  sqlite3_stmt *stmt = NULL;
  const char *tail = NULL;
  int rc = sqlite3_prepare_v3(SQ(c)->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
  if (rc != SQLITE_OK) return sq_fail(SQ(c), rc);
  while (tail && *tail && (*tail == ' ' || *tail == '\n' || *tail == '\t' || *tail == '\r' || *tail == ';'))
    tail++;
  if (!stmt || (tail && *tail)) {
    sqlite3_finalize(stmt);
    return tl_error_set(TL_EINVAL, "sqlite: %s", stmt ? "one statement per call (use "
                        "tl_db_migrate for scripts)" : "empty statement");
  }
  st->b = stmt;
  return 0;
}

static void sq_finalize(tl_conn *c, tl__stmt *st)
{
  (void)c;
  sqlite3_finalize(st->b);
}

static int bind_args(sq_conn *s, sqlite3_stmt *stmt, const tl_value *a, size_t n,
                     bool copy)
{
  sqlite3_destructor_type keep = copy ? SQLITE_TRANSIENT : SQLITE_STATIC;
  for (size_t i = 0; i < n; i++) {
    int rc, k = (int)i + 1;
    switch (a[i].type) {
    case TL_TYPE_NULL: rc = sqlite3_bind_null(stmt, k); break;
    case TL_TYPE_BOOL: rc = sqlite3_bind_int(stmt, k, a[i].b); break;
    case TL_TYPE_INT: rc = sqlite3_bind_int64(stmt, k, a[i].i); break;
    case TL_TYPE_DOUBLE: rc = sqlite3_bind_double(stmt, k, a[i].d); break;
    case TL_TYPE_TEXT:
    case TL_TYPE_JSON:
      rc = sqlite3_bind_text64(stmt, k, a[i].s ? a[i].s : "", a[i].len, keep, SQLITE_UTF8);
      break;
    case TL_TYPE_BLOB:
      rc = a[i].len ? sqlite3_bind_blob64(stmt, k, a[i].p, a[i].len, keep)
                    : sqlite3_bind_zeroblob(stmt, k, 0);
      break;
    case TL_TYPE_TIMESTAMP: {
      char buf[40];
      size_t len = tl__ts_format(a[i].i, buf, sizeof buf);
      rc = sqlite3_bind_text(stmt, k, buf, (int)len, SQLITE_TRANSIENT);
      break;
    }
    default:
      return tl_error_set(TL_EINVAL, "sql argument $%d: unknown type %d", k, (int)a[i].type);
    }
    if (rc != SQLITE_OK) return sq_fail(s, rc);
  }
  return 0;
}

static int run(sq_conn *s, sqlite3_stmt *stmt, int64_t *affected)
{
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {}
  if (rc != SQLITE_DONE) {
    rc = sq_fail(s, rc);
    sqlite3_reset(stmt);
    return rc;
  }
  if (affected) *affected += sqlite3_stmt_readonly(stmt) ? 0 : sqlite3_changes64(s->db);
  sqlite3_reset(stmt);
  return 0;
}

static int sq_exec(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs,
                   int64_t *affected)
{
  sq_conn *s = SQ(c);
  int rc = bind_args(s, st->b, args, nargs, false);
  if (rc) return rc;
  arm(s);
  rc = run(s, st->b, affected);
  s->deadline_us = 0;
  return rc;
}

static int sq_exec_simple(tl_conn *c, const char *sql)
{
  tl__stmt *st;
  int rc = tl__conn_stmt(c, sql, NULL, 0, &st);
  return rc ? rc : sq_exec(c, st, NULL, 0, NULL);
}

static int sq_begin(tl_conn *c, const tl_tx_opts *o)
{
  /* IMMEDIATE takes the write lock up front, so busy_timeout applies and a
   * deferred read-to-write upgrade can't fail halfway. */
  return sq_exec_simple(c, o->read_only ? "BEGIN" : "BEGIN IMMEDIATE");
}

static int sq_exec_many(tl_conn *c, tl__stmt *st, const tl_value *args,
                        size_t ncols, size_t nrows, int64_t *affected)
{
  sq_conn *s = SQ(c);
  arm(s);
  int rc = 0;
  for (size_t r = 0; r < nrows && rc == 0; r++) {
    rc = bind_args(s, st->b, args + r * ncols, ncols, false);
    if (rc == 0) rc = run(s, st->b, affected);
  }
  s->deadline_us = 0;
  return rc;
}

static const char *col_name(void *ctx, int i) { return sqlite3_column_name(ctx, i); }
static tl_type col_type(void *ctx, int i) { return decl_type(sqlite3_column_decltype(ctx, i)); }

static int sq_query(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs)
{
  sq_conn *s = SQ(c);
  sqlite3_stmt *stmt = st->b;
  int rc = bind_args(s, stmt, args, nargs, true);
  if (rc) return rc;
  int ncols = sqlite3_column_count(stmt);
  if (st->ncols != ncols && (rc = tl__stmt_describe(st, ncols, col_name, col_type, stmt)) != 0)
    return rc;
  arm(s);
  rc = sqlite3_step(stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    rc = sq_fail(s, rc);
    sqlite3_reset(stmt);
    s->deadline_us = 0;
    return rc;
  }
  s->cur = stmt;
  s->first = rc == SQLITE_ROW;
  c->rows.pending = true;
  return 0;
}

static int sq_next(tl_rows *r)
{
  sq_conn *s = SQ(r->conn);
  if (r->pending) {
    r->pending = false;
    return s->first;
  }
  int rc = sqlite3_step(s->cur);
  if (rc == SQLITE_ROW) return 1;
  if (rc == SQLITE_DONE) return 0;
  return sq_fail(s, rc);
}

static int sq_get(tl_rows *r, int col, tl_value *out)
{
  sqlite3_stmt *stmt = SQ(r->conn)->cur;
  tl_type decl = r->st->coltypes[col];
  switch (sqlite3_column_type(stmt, col)) {
  case SQLITE_INTEGER: {
    int64_t i = sqlite3_column_int64(stmt, col);
    if (decl == TL_TYPE_BOOL && (i == 0 || i == 1)) *out = tl_bool(i);
    else if (decl == TL_TYPE_TIMESTAMP) *out = tl_timestamp(i);
    else *out = tl_int(i);
    return 0;
  }
  case SQLITE_FLOAT:
    *out = tl_double(sqlite3_column_double(stmt, col));
    return 0;
  case SQLITE_TEXT: {
    const char *t = (const char *)sqlite3_column_text(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);
    int64_t us;
    if (decl == TL_TYPE_TIMESTAMP && tl__ts_parse(t, n, &us) == 0) *out = tl_timestamp(us);
    else if (decl == TL_TYPE_JSON) *out = (tl_value){ .type = TL_TYPE_JSON, .len = n, .s = t };
    else *out = tl_textn(t, n);
    return 0;
  }
  case SQLITE_BLOB: {
    const void *p = sqlite3_column_blob(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);
    *out = tl_blob(p ? p : "", n);
    return 0;
  }
  default:
    *out = tl_null();
    return 0;
  }
}

static void sq_rows_close(tl_rows *r)
{
  sq_conn *s = SQ(r->conn);
  if (s->cur) sqlite3_reset(s->cur);
  s->cur = NULL;
  s->deadline_us = 0;
}

const tl__backend tl__sqlite_backend = {
  .name = "sqlite",
  .dialect = TL_DB_SQLITE,
  .connect = sq_connect,
  .disconnect = sq_disconnect,
  .ping = sq_ping,
  .in_tx = sq_in_tx,
  .exec_simple = sq_exec_simple,
  .begin = sq_begin,
  .prepare = sq_prepare,
  .finalize = sq_finalize,
  .exec = sq_exec,
  .exec_many = sq_exec_many,
  .query = sq_query,
  .next = sq_next,
  .get = sq_get,
  .rows_close = sq_rows_close,
};
