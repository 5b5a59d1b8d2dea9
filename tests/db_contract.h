/* The database contract suite: one set of tests that every SQL backend
 * must pass. Each backend's test program includes this header and calls
 * dbc_run(url, "sqlite") with its URL; the tests create their own tables
 * (named after the process id, so runs don't collide) and drop them. */
#ifndef TRELLIS_TESTS_DB_CONTRACT_H
#define TRELLIS_TESTS_DB_CONTRACT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <cmocka.h>
#include <jansson.h>

#include <trellis/clock.h>
#include <trellis/db.h>
#include <trellis/error.h>
#include <trellis/log.h>

/* Not every program uses every helper. */
#pragma GCC diagnostic ignored "-Wunused-function"

static const char *dbc_url;
static tl_db *dbc_db;
static tl_db_dialect dbc_dialect;

/* A table name private to this run: "dbc<pid>_<name>". Per thread: the
 * hammer's threads call it too. */
static const char *dbc_t(const char *name)
{
  static _Thread_local char buf[8][64];
  static _Thread_local int k;
  char *b = buf[k++ % 8];
  snprintf(b, 64, "dbc%d_%s", (int)getpid(), name);
  return b;
}

static void dbc_exec(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void dbc_exec(const char *fmt, ...)
{
  char sql[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  int rc = tl_db_exec(dbc_db, NULL, sql, TL_NOARGS);
  if (rc != 0) fail_msg("%s: %s (%s)", sql, tl_status_name(rc), tl_error_last());
}

static int64_t dbc_scalar(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int64_t dbc_scalar(const char *fmt, ...)
{
  char sql[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  tl_rows *r;
  int rc = tl_db_query(dbc_db, &r, sql, TL_NOARGS);
  if (rc != 0) fail_msg("%s: %s", sql, tl_error_last());
  assert_int_equal(tl_rows_next(r), 1);
  int64_t v = -1;
  assert_int_equal(tl_rows_int(r, 0, &v), 0);
  tl_rows_free(r);
  return v;
}

/* Column types per dialect. */
static const char *dbc_ty(const char *what)
{
  static const struct { const char *what, *sqlite, *pg, *my; } m[] = {
    { "bool", "BOOLEAN", "BOOLEAN", "BOOLEAN" },
    { "int", "BIGINT", "BIGINT", "BIGINT" },
    { "double", "DOUBLE PRECISION", "DOUBLE PRECISION", "DOUBLE" },
    { "text", "TEXT", "TEXT", "LONGTEXT" },
    { "blob", "BLOB", "BYTEA", "LONGBLOB" },
    { "ts", "TIMESTAMP", "TIMESTAMPTZ", "DATETIME(6)" },
    { "json", "JSON", "JSONB", "JSON" },
    { "str", "VARCHAR(200)", "VARCHAR(200)", "VARCHAR(200)" },
  };
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
    if (strcmp(m[i].what, what) == 0)
      return dbc_dialect == TL_DB_SQLITE ? m[i].sqlite
             : dbc_dialect == TL_DB_POSTGRES ? m[i].pg : m[i].my;
  return "TEXT";
}

static const char *dbc_tail(void)
{
  return dbc_dialect == TL_DB_MYSQL ? " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" : "";
}

static int dbc_setup(void **state)
{
  (void)state;
  tl_db_config cfg = { .url = dbc_url, .max_connections = 4, .name = "contract" };
  int rc = tl_db_connect(&dbc_db, &cfg);
  if (rc != 0) {
    fprintf(stderr, "connect %s: %s\n", dbc_url, tl_error_last());
    return -1;
  }
  dbc_dialect = tl_db_dialect_of(dbc_db);
  dbc_exec("CREATE TABLE %s (id BIGINT PRIMARY KEY, b %s, i %s, d %s, t %s, bl %s, ts %s, j %s)%s",
           dbc_t("types"), dbc_ty("bool"), dbc_ty("int"), dbc_ty("double"), dbc_ty("text"),
           dbc_ty("blob"), dbc_ty("ts"), dbc_ty("json"), dbc_tail());
  dbc_exec("CREATE TABLE %s (id BIGINT PRIMARY KEY, name %s)%s", dbc_t("parent"),
           dbc_ty("str"), dbc_tail());
  dbc_exec("CREATE TABLE %s (id BIGINT PRIMARY KEY, email %s NOT NULL UNIQUE, "
           "age BIGINT CHECK (age >= 0), parent BIGINT, "
           "FOREIGN KEY (parent) REFERENCES %s (id))%s",
           dbc_t("users"), dbc_ty("str"), dbc_t("parent"), dbc_tail());
  dbc_exec("CREATE TABLE %s (id BIGINT PRIMARY KEY, v %s)%s", dbc_t("kv"), dbc_ty("text"),
           dbc_tail());
  dbc_exec("INSERT INTO %s (id, name) VALUES (1, 'root')", dbc_t("parent"));
  return 0;
}

static int dbc_teardown(void **state)
{
  (void)state;
  if (!dbc_db) return 0;
  const char *names[] = { "users", "parent", "types", "kv", "big", "hammer" };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", dbc_t(names[i]));
    tl_db_exec(dbc_db, NULL, sql, TL_NOARGS);
  }
  tl_db_close(dbc_db);
  dbc_db = NULL;
  return 0;
}

/* Empty the scratch tables before each test. */
static int dbc_clean(void **state)
{
  (void)state;
  char sql[128];
  snprintf(sql, sizeof sql, "DELETE FROM %s", dbc_t("users"));
  tl_db_exec(dbc_db, NULL, sql, TL_NOARGS);
  snprintf(sql, sizeof sql, "DELETE FROM %s", dbc_t("kv"));
  tl_db_exec(dbc_db, NULL, sql, TL_NOARGS);
  snprintf(sql, sizeof sql, "DELETE FROM %s", dbc_t("types"));
  tl_db_exec(dbc_db, NULL, sql, TL_NOARGS);
  return 0;
}

static void dbc_json_equal(const char *a, size_t alen, const char *b)
{
  json_t *ja = json_loadb(a, alen, JSON_DECODE_ANY, NULL), *jb = json_loads(b, JSON_DECODE_ANY, NULL);
  assert_non_null(ja);
  assert_non_null(jb);
  if (!json_equal(ja, jb)) fail_msg("json '%.*s' != '%s'", (int)alen, a, b);
  json_decref(ja);
  json_decref(jb);
}

/* ---- values ------------------------------------------------------------ */

typedef struct dbc_row {
  tl_value v[7]; /* b i d t bl ts j */
} dbc_row;

static void dbc_check_value(const tl_value *want, const tl_value *got, const char *col)
{
  if (want->type == TL_TYPE_NULL) {
    if (got->type != TL_TYPE_NULL) fail_msg("%s: want NULL, got %s", col, tl_type_name(got->type));
    return;
  }
  if (got->type != want->type)
    fail_msg("%s: want %s, got %s", col, tl_type_name(want->type), tl_type_name(got->type));
  switch (want->type) {
  case TL_TYPE_BOOL: assert_int_equal(got->b, want->b); break;
  case TL_TYPE_INT:
  case TL_TYPE_TIMESTAMP:
    if (got->i != want->i) fail_msg("%s: want %lld, got %lld", col, (long long)want->i, (long long)got->i);
    break;
  case TL_TYPE_DOUBLE: assert_true(got->d == want->d); break;
  case TL_TYPE_TEXT:
  case TL_TYPE_BLOB:
    assert_int_equal(got->len, want->len);
    if (want->len) assert_memory_equal(got->p, want->p, want->len);
    break;
  case TL_TYPE_JSON: dbc_json_equal(got->s, got->len, want->s); break;
  default: break;
  }
}

static void dbc_roundtrip(int64_t id, const dbc_row *row)
{
  const char *t = dbc_t("types");
  char sql[256];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, b, i, d, t, bl, ts, j) VALUES "
           "($1, $2, $3, $4, $5, $6, $7, $8)", t);
  tl_value args[8] = { tl_int(id) };
  memcpy(args + 1, row->v, sizeof row->v);
  int64_t n = 0;
  int rc = tl_db_exec(dbc_db, &n, sql, args, 8);
  if (rc != 0) fail_msg("insert: %s", tl_error_last());
  assert_int_equal(n, 1);
  snprintf(sql, sizeof sql, "SELECT b, i, d, t, bl, ts, j FROM %s WHERE id = $1", t);
  tl_rows *r;
  assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_ARGS(tl_int(id))), 0);
  assert_int_equal(tl_rows_column_count(r), 7);
  assert_int_equal(tl_rows_next(r), 1);
  const char *cols[] = { "b", "i", "d", "t", "bl", "ts", "j" };
  for (int c = 0; c < 7; c++) {
    tl_value got;
    assert_int_equal(tl_rows_get(r, c, &got), 0);
    dbc_check_value(&row->v[c], &got, cols[c]);
    assert_int_equal(tl_rows_is_null(r, c), row->v[c].type == TL_TYPE_NULL);
  }
  assert_int_equal(tl_rows_next(r), 0);
  tl_rows_free(r);
}

static void dbc_types_roundtrip(void **state)
{
  (void)state;
  static const unsigned char bin[] = { 0, 1, 0, 255, 'a', 0, '\'', '\\', 0 };
  const char *uni = "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89";
  int64_t moon = -14182939876544; /* 1969-07-20T20:17:40.123456Z */
  int64_t now = 1767225600123456; /* 2026-01-01T00:00:00.123456Z */
  dbc_row rows[] = {
    { { tl_bool(true), tl_int(INT64_MAX), tl_double(0.1), tl_text(uni), tl_blob(bin, sizeof bin),
        tl_timestamp(now), tl_json("{\"a\":[1,2,{\"b\":null}],\"s\":\"x\\\"y\"}") } },
    { { tl_bool(false), tl_int(INT64_MIN), tl_double(-1.5e300), tl_text(""), tl_blob("", 0),
        tl_timestamp(moon), tl_json("[]") } },
    { { tl_null(), tl_null(), tl_null(), tl_null(), tl_null(), tl_null(), tl_null() } },
    { { tl_bool(true), tl_int(0), tl_double(0), tl_textn("a\0b", 1), tl_blob("\0", 1),
        tl_timestamp(0), tl_json("\"str\"") } },
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) dbc_roundtrip((int64_t)i + 1, &rows[i]);
}

static void dbc_declared_types(void **state)
{
  (void)state;
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT b, i, d, t, bl, ts, j FROM %s", dbc_t("types"));
  tl_rows *r;
  assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_NOARGS), 0);
  tl_type want[] = { TL_TYPE_BOOL, TL_TYPE_INT, TL_TYPE_DOUBLE, TL_TYPE_TEXT,
                     TL_TYPE_BLOB, TL_TYPE_TIMESTAMP, TL_TYPE_JSON };
  for (int c = 0; c < 7; c++)
    if (tl_rows_column_type(r, c) != want[c])
      fail_msg("column %s: declared %s, want %s", tl_rows_column_name(r, c),
               tl_type_name(tl_rows_column_type(r, c)), tl_type_name(want[c]));
  assert_int_equal(tl_rows_next(r), 0); /* empty table: no rows, still typed */
  tl_rows_free(r);
}

static void dbc_select_param(void **state)
{
  (void)state;
  tl_rows *r;
  assert_int_equal(tl_db_query(dbc_db, &r, "SELECT $1 AS x, $2 AS y, $1 AS z",
                               TL_ARGS(tl_int(42), tl_text("hi"))), 0);
  assert_string_equal(tl_rows_column_name(r, 0), "x");
  assert_int_equal(tl_rows_column_index(r, "Y"), 1);
  assert_int_equal(tl_rows_column_index(r, "nope"), TL_ENOTFOUND);
  assert_int_equal(tl_rows_next(r), 1);
  tl_value v;
  assert_int_equal(tl_rows_get(r, 0, &v), 0);
  assert_int_equal(v.type, TL_TYPE_INT);
  assert_int_equal(v.i, 42);
  const char *s;
  size_t n;
  assert_int_equal(tl_rows_text(r, 1, &s, &n), 0);
  assert_string_equal(s, "hi");
  assert_int_equal(tl_rows_get_named(r, "z", &v), 0);
  assert_int_equal(v.i, 42);
  assert_int_equal(tl_rows_get(r, 3, &v), TL_EINVAL);
  assert_int_equal(tl_rows_next(r), 0);
  assert_int_equal(tl_rows_get(r, 0, &v), TL_EINVAL); /* no current row */
  tl_rows_free(r);
}

/* $n inside literals, identifiers and comments is text, not a parameter. */
static void dbc_placeholders_left_alone(void **state)
{
  (void)state;
  tl_rows *r;
  const char *sql = "SELECT '$1 ? $2' AS a, $1 AS \"b$2\", 'it''s $3' AS c /* $4 ? */ -- $5 ?\n";
  assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_ARGS(tl_text("x"))), 0);
  assert_int_equal(tl_rows_next(r), 1);
  const char *s;
  assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
  assert_string_equal(s, "$1 ? $2");
  assert_int_equal(tl_rows_text(r, 1, &s, NULL), 0);
  assert_string_equal(s, "x");
  assert_string_equal(tl_rows_column_name(r, 1), "b$2");
  assert_int_equal(tl_rows_text(r, 2, &s, NULL), 0);
  assert_string_equal(s, "it's $3");
  tl_rows_free(r);
  /* A cast around a parameter. */
  const char *cast = dbc_dialect == TL_DB_POSTGRES ? "SELECT $1::bigint + 1 AS n"
                     : dbc_dialect == TL_DB_MYSQL ? "SELECT CAST($1 AS SIGNED) + 1 AS n"
                                                  : "SELECT CAST($1 AS INTEGER) + 1 AS n";
  assert_int_equal(tl_db_query(dbc_db, &r, cast, TL_ARGS(tl_text("41"))), 0);
  assert_int_equal(tl_rows_next(r), 1);
  int64_t n;
  assert_int_equal(tl_rows_int(r, 0, &n), 0);
  assert_int_equal(n, 42);
  tl_rows_free(r);
  /* Wrong argument counts are refused before reaching the server. */
  assert_int_equal(tl_db_exec(dbc_db, NULL, "SELECT $1, $2", TL_ARGS(tl_int(1))), TL_EINVAL);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_NONE);
  assert_int_equal(tl_db_exec(dbc_db, NULL, "SELECT $2", TL_ARGS(tl_int(1))), TL_EINVAL);
}

static void dbc_injection_verbatim(void **state)
{
  (void)state;
  const char *evil[] = {
    "Robert'); DROP TABLE users; --",
    "$1 ' \" \\ ; ? $$ /* -- `x` [y]",
    "\\'; SELECT 1; --",
  };
  char ins[128], sel[128];
  snprintf(ins, sizeof ins, "INSERT INTO %s (id, v) VALUES ($1, $2)", dbc_t("kv"));
  snprintf(sel, sizeof sel, "SELECT v FROM %s WHERE id = $1", dbc_t("kv"));
  for (int i = 0; i < 3; i++) {
    assert_int_equal(tl_db_exec(dbc_db, NULL, ins, TL_ARGS(tl_int(i), tl_text(evil[i]))), 0);
    tl_rows *r;
    assert_int_equal(tl_db_query(dbc_db, &r, sel, TL_ARGS(tl_int(i))), 0);
    assert_int_equal(tl_rows_next(r), 1);
    const char *s;
    assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
    assert_string_equal(s, evil[i]);
    tl_rows_free(r);
  }
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM %s", dbc_t("kv")), 3);
}

/* ---- transactions ------------------------------------------------------- */

static void dbc_kv_put(tl_tx *tx, int64_t id, int want_rc)
{
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, $2)", dbc_t("kv"));
  int rc = tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(id), tl_text("v")));
  if (rc != want_rc) fail_msg("insert %lld: %s (%s)", (long long)id, tl_status_name(rc), tl_error_last());
}

static int64_t dbc_kv_count(void) { return dbc_scalar("SELECT COUNT(*) FROM %s", dbc_t("kv")); }

static int64_t dbc_kv_sum(void)
{
  return dbc_scalar("SELECT COALESCE(SUM(id), 0) FROM %s", dbc_t("kv"));
}

static void dbc_tx_commit_rollback(void **state)
{
  (void)state;
  tl_tx *tx;
  assert_int_equal(tl_db_begin(dbc_db, &tx), 0);
  dbc_kv_put(tx, 1, 0);
  dbc_kv_put(tx, 2, 0);
  assert_int_equal(tl_tx_rollback(tx), 0);
  assert_int_equal(dbc_kv_count(), 0);
  assert_int_equal(tl_db_begin(dbc_db, &tx), 0);
  dbc_kv_put(tx, 3, 0);
  tl_rows *r; /* reads inside see the transaction's writes */
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM %s", dbc_t("kv"));
  assert_int_equal(tl_tx_query(tx, &r, sql, TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  int64_t n;
  assert_int_equal(tl_rows_int(r, 0, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(tl_tx_exec(tx, NULL, sql, TL_NOARGS), TL_ESTATE); /* cursor still open */
  tl_rows_free(r);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(dbc_kv_count(), 1);
  assert_int_equal(tl_tx_rollback(NULL), 0);
}

static void dbc_savepoints_nest(void **state)
{
  (void)state;
  tl_tx *tx;
  assert_int_equal(tl_db_begin(dbc_db, &tx), 0);
  dbc_kv_put(tx, 1, 0);
  assert_int_equal(tl_tx_savepoint(tx, "a"), 0);
  dbc_kv_put(tx, 2, 0);
  assert_int_equal(tl_tx_savepoint(tx, "b"), 0);
  dbc_kv_put(tx, 4, 0);
  assert_int_equal(tl_tx_rollback_to(tx, "b"), 0);
  dbc_kv_put(tx, 8, 0);
  assert_int_equal(tl_tx_release(tx, "b"), 0);
  assert_int_equal(tl_tx_rollback_to(tx, "a"), 0);
  dbc_kv_put(tx, 16, 0);
  assert_int_equal(tl_tx_savepoint(tx, "bad name"), TL_EINVAL);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(dbc_kv_sum(), 17);
}

static void dbc_failed_statement_aborts(void **state)
{
  (void)state;
  tl_tx *tx;
  /* Recovered with a savepoint: the rest commits. */
  assert_int_equal(tl_db_begin(dbc_db, &tx), 0);
  dbc_kv_put(tx, 1, 0);
  assert_int_equal(tl_tx_savepoint(tx, "sp"), 0);
  dbc_kv_put(tx, 1, TL_ECONFLICT);
  dbc_kv_put(tx, 2, TL_ESTATE);
  assert_int_equal(tl_tx_rollback_to(tx, "sp"), 0);
  dbc_kv_put(tx, 2, 0);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(dbc_kv_sum(), 3);
  /* Not recovered: commit refuses and rolls back. */
  assert_int_equal(tl_db_begin(dbc_db, &tx), 0);
  dbc_kv_put(tx, 4, 0);
  dbc_kv_put(tx, 1, TL_ECONFLICT);
  assert_int_equal(tl_tx_commit(tx), TL_ESTATE);
  assert_int_equal(dbc_kv_sum(), 3);
}

typedef struct dbc_transact_ctx {
  int calls;
  int fail_first; /* return TL_ERETRY this many times */
} dbc_transact_ctx;

static int dbc_transact_fn(tl_tx *tx, void *arg)
{
  dbc_transact_ctx *c = arg;
  c->calls++;
  dbc_kv_put(tx, 100 + c->calls, 0);
  if (c->calls <= c->fail_first) return TL_ERETRY;
  return 0;
}

static void dbc_transact_retries(void **state)
{
  (void)state;
  dbc_transact_ctx c = { .fail_first = 2 };
  tl_tx_opts o = { .backoff = { .base_us = 1000 } };
  assert_int_equal(tl_db_transact(dbc_db, dbc_transact_fn, &c, &o), 0);
  assert_int_equal(c.calls, 3);
  assert_int_equal(dbc_kv_count(), 1); /* the first two were rolled back */
  assert_int_equal(dbc_kv_sum(), 103);
  dbc_transact_ctx c2 = { .fail_first = 100 };
  o.max_attempts = 2;
  assert_int_equal(tl_db_transact(dbc_db, dbc_transact_fn, &c2, &o), TL_ERETRY);
  assert_int_equal(c2.calls, 2);
  assert_int_equal(dbc_kv_count(), 1);
}

/* ---- errors -------------------------------------------------------------- */

static void dbc_expect(int rc, int want, tl_db_error_class cls, const char *what)
{
  if (rc != want || tl_db_error_last_class() != cls)
    fail_msg("%s: got %s/%s (%s), want %s/%s", what, tl_status_name(rc),
             tl_db_error_class_name(tl_db_error_last_class()), tl_error_last(),
             tl_status_name(want), tl_db_error_class_name(cls));
  assert_true(strlen(tl_error_last()) > 0);
}

static void dbc_error_taxonomy(void **state)
{
  (void)state;
  char sql[200];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, email, age, parent) VALUES ($1, $2, $3, $4)",
           dbc_t("users"));
  assert_int_equal(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_int(1), tl_text("a@b"), tl_int(30), tl_int(1))), 0);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_NONE);
  dbc_expect(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_int(2), tl_text("a@b"), tl_int(30), tl_null())),
             TL_ECONFLICT, TL_DB_ERR_UNIQUE, "unique");
  dbc_expect(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_int(1), tl_text("c@d"), tl_int(30), tl_null())),
             TL_ECONFLICT, TL_DB_ERR_UNIQUE, "primary key");
  dbc_expect(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_int(3), tl_text("e@f"), tl_int(30), tl_int(99))),
             TL_ECONSTRAINT, TL_DB_ERR_FOREIGN_KEY, "foreign key");
  dbc_expect(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_int(4), tl_null(), tl_int(30), tl_null())),
             TL_ECONSTRAINT, TL_DB_ERR_NOT_NULL, "not null");
  dbc_expect(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_int(5), tl_text("g@h"), tl_int(-1), tl_null())),
             TL_ECONSTRAINT, TL_DB_ERR_CHECK, "check");
  dbc_expect(tl_db_exec(dbc_db, NULL, "SELEC 1", TL_NOARGS), TL_EINVAL, TL_DB_ERR_SYNTAX, "syntax");
  dbc_expect(tl_db_exec(dbc_db, NULL, "SELECT * FROM no_such_table_xyz", TL_NOARGS), TL_EINVAL,
             TL_DB_ERR_SYNTAX, "unknown table");
  tl_rows *r;
  dbc_expect(tl_db_query(dbc_db, &r, "SELECT nope FROM no_such_table_xyz", TL_NOARGS), TL_EINVAL,
             TL_DB_ERR_SYNTAX, "query error at query time");
  if (dbc_dialect != TL_DB_POSTGRES) /* '?' is an operator there */
    assert_int_equal(tl_db_exec(dbc_db, NULL, "SELECT ?", TL_NOARGS), TL_EINVAL);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM %s", dbc_t("users")), 1);
}

/* ---- cursors and bulk ---------------------------------------------------- */

static void dbc_stream_and_bulk(void **state)
{
  (void)state;
  const char *big = dbc_t("big");
  dbc_exec("DROP TABLE IF EXISTS %s", big);
  dbc_exec("CREATE TABLE %s (id BIGINT PRIMARY KEY, v %s)%s", big, dbc_ty("str"), dbc_tail());
  enum { N = 5000 };
  tl_value *args = calloc(2 * N, sizeof *args);
  for (int i = 0; i < N; i++) {
    args[2 * i] = tl_int(i);
    args[2 * i + 1] = i % 7 ? tl_text("row") : tl_null();
  }
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, $2)", big);
  int64_t n = 0;
  int rc = tl_db_exec_many(dbc_db, &n, sql, args, 2, N);
  if (rc) fail_msg("exec_many: %s", tl_error_last());
  assert_int_equal(n, N);
  /* A batch that fails in the middle inserts nothing. */
  args[2 * 10] = tl_int(N + 10);
  args[2 * 20] = tl_int(N + 10);
  assert_int_equal(tl_db_exec_many(dbc_db, NULL, sql, args + 20, 2, 20), TL_ECONFLICT);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM %s", big), N);
  free(args);

  snprintf(sql, sizeof sql, "SELECT id, v FROM %s ORDER BY id", big);
  tl_rows *r;
  assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_NOARGS), 0);
  int64_t count = 0, sum = 0, nulls = 0;
  while ((rc = tl_rows_next(r)) == 1) {
    int64_t id;
    assert_int_equal(tl_rows_int(r, 0, &id), 0);
    sum += id;
    nulls += tl_rows_is_null(r, 1);
    count++;
  }
  assert_int_equal(rc, 0);
  tl_rows_free(r);
  assert_int_equal(count, N);
  assert_int_equal(sum, (int64_t)N * (N - 1) / 2);
  assert_int_equal(nulls, (N + 6) / 7);
  /* Stop early: the connection must come back clean. */
  for (int k = 0; k < 10; k++) {
    assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_NOARGS), 0);
    assert_int_equal(tl_rows_next(r), 1);
    tl_rows_free(r);
  }
  snprintf(sql, sizeof sql, "UPDATE %s SET v = $1 WHERE id < $2", big);
  assert_int_equal(tl_db_exec(dbc_db, &n, sql, TL_ARGS(tl_text("u"), tl_int(100))), 0);
  assert_int_equal(n, 100);
  tl_pool_stats st;
  tl_pool_stats_get(tl_db_pool(dbc_db), &st);
  assert_int_equal(st.in_use, 0);
}

/* ---- pool ------------------------------------------------------------------ */

static void dbc_pool_exhaustion(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = dbc_url, .max_connections = 2, .acquire_timeout_us = 100000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  tl_pool *p = tl_db_pool(db);
  tl_conn *a, *b, *c;
  assert_int_equal(tl_pool_get(p, &a), 0);
  assert_int_equal(tl_pool_get(p, &b), 0);
  int64_t t0 = tl_time_mono_us();
  assert_int_equal(tl_pool_get(p, &c), TL_ETIMEOUT);
  int64_t dt = tl_time_mono_us() - t0;
  assert_true(dt >= 90000 && dt < 2000000);
  assert_non_null(strstr(tl_error_last(), "no connection free"));
  tl_rows *r;
  assert_int_equal(tl_db_query(db, &r, "SELECT 1", TL_NOARGS), TL_ETIMEOUT);
  /* An open transaction is rolled back when its connection comes back. */
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES (77, 'x')", dbc_t("kv"));
  assert_int_equal(tl_conn_exec(a, NULL, dbc_dialect == TL_DB_SQLITE ? "BEGIN IMMEDIATE" : "BEGIN",
                                TL_NOARGS), 0);
  assert_int_equal(tl_conn_exec(a, NULL, sql, TL_NOARGS), 0);
  tl_pool_put(p, a);
  tl_pool_put(p, b);
  tl_pool_stats st;
  tl_pool_stats_get(p, &st);
  assert_int_equal(st.in_use, 0);
  assert_true(st.timeouts >= 2);
  tl_db_close(db);
  assert_int_equal(dbc_kv_count(), 0);

  cfg.acquire_timeout_us = -1; /* don't wait at all */
  cfg.max_connections = 1;
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  assert_int_equal(tl_pool_get(tl_db_pool(db), &a), 0);
  assert_int_equal(tl_pool_get(tl_db_pool(db), &b), TL_EBUSY);
  tl_pool_put(tl_db_pool(db), a);
  tl_db_close(db);
}

typedef struct dbc_hammer {
  tl_db *db;
  int id0;
  int n;
  int failures;
} dbc_hammer;

static int dbc_hammer_tx(tl_tx *tx, void *arg)
{
  int64_t *id = arg;
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, $2)", dbc_t("hammer"));
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(*id), tl_text("h")));
}

static void *dbc_hammer_main(void *arg)
{
  dbc_hammer *h = arg;
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM %s WHERE id >= $1", dbc_t("hammer"));
  for (int i = 0; i < h->n; i++) {
    int64_t id = h->id0 + i;
    tl_tx_opts o = { .max_attempts = 50, .backoff = { .base_us = 1000, .cap_us = 50000 } };
    if (tl_db_transact(h->db, dbc_hammer_tx, &id, &o) != 0) h->failures++;
    tl_rows *r;
    if (tl_db_query(h->db, &r, sql, TL_ARGS(tl_int(h->id0))) != 0) {
      h->failures++;
      continue;
    }
    if (tl_rows_next(r) != 1) h->failures++;
    tl_rows_free(r);
  }
  return NULL;
}

/* Many threads on a small pool: nothing lost, nothing leaked. */
static void dbc_hammer_run(int threads, int per_thread, int pool)
{
  const char *t = dbc_t("hammer");
  dbc_exec("DROP TABLE IF EXISTS %s", t);
  dbc_exec("CREATE TABLE %s (id BIGINT PRIMARY KEY, v %s)%s", t, dbc_ty("str"), dbc_tail());
  tl_db *db;
  tl_db_config cfg = { .url = dbc_url, .max_connections = pool, .acquire_timeout_us = 30000000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  pthread_t th[64];
  dbc_hammer h[64];
  for (int i = 0; i < threads; i++) {
    h[i] = (dbc_hammer){ .db = db, .id0 = i * per_thread, .n = per_thread };
    assert_int_equal(pthread_create(&th[i], NULL, dbc_hammer_main, &h[i]), 0);
  }
  int failures = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    failures += h[i].failures;
  }
  assert_int_equal(failures, 0);
  tl_pool_stats st;
  tl_pool_stats_get(tl_db_pool(db), &st);
  assert_int_equal(st.in_use, 0);
  assert_int_equal(st.pending, 0);
  assert_true(st.total <= (unsigned)pool);
  tl_db_close(db);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM %s", t), (int64_t)threads * per_thread);
}

static void dbc_hammer_small(void **state)
{
  (void)state;
  dbc_hammer_run(8, 40, 4);
}

/* ---- migrations ------------------------------------------------------------ */

static void dbc_migrations(void **state)
{
  (void)state;
  static char name[64], m1[256], m2[256], m3[256];
  snprintf(name, sizeof name, "contract_%d", (int)getpid());
  snprintf(m1, sizeof m1, "CREATE TABLE %s (id BIGINT PRIMARY KEY, v %s)%s",
           dbc_t("mig"), dbc_ty("str"), dbc_tail());
  snprintf(m2, sizeof m2, "INSERT INTO %s (id, v) VALUES (1, 'a;b'); "
           "INSERT INTO %s (id, v) VALUES (2, '$1 -- not a comment')", dbc_t("mig"), dbc_t("mig"));
  snprintf(m3, sizeof m3, "INSERT INTO %s (id, v) VALUES (3, 'c')", dbc_t("mig"));
  static tl_migration set[3];
  set[0] = (tl_migration){ .version = 1, .name = "create", .sql = m1 };
  set[1] = (tl_migration){ .version = 2, .name = "seed", .sql = m2 };
  assert_int_equal(tl_db_migrations_register(name, set, 2), 0);
  int applied = -1;
  int rc = tl_db_migrate(dbc_db, name, &applied);
  if (rc) fail_msg("migrate: %s", tl_error_last());
  assert_int_equal(applied, 2);
  assert_int_equal(tl_db_migrate(dbc_db, name, &applied), 0);
  assert_int_equal(applied, 0);
  set[2] = (tl_migration){ .version = 3, .name = "more", .sql = m3 };
  assert_int_equal(tl_db_migrations_register(name, set, 3), 0);
  assert_int_equal(tl_db_migrate(dbc_db, name, &applied), 0);
  assert_int_equal(applied, 1);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM %s", dbc_t("mig")), 3);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM trellis_schema_migrations WHERE set_name = '%s'", name), 3);
  /* Versions must increase. */
  tl_migration bad[2] = { { .version = 2, .name = "x", .sql = "SELECT 1" },
                          { .version = 1, .name = "y", .sql = "SELECT 1" } };
  assert_int_equal(tl_db_migrations_register("bad", bad, 2), TL_EINVAL);
  dbc_exec("DROP TABLE %s", dbc_t("mig"));
  dbc_exec("DELETE FROM trellis_schema_migrations WHERE set_name = '%s'", name);
}


/* ---- a TCP proxy, to take a server away from one client ------------------ */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

typedef struct dbc_proxy {
  int port;        /* where it listens (0 before the first start) */
  int target_port; /* where it forwards, on 127.0.0.1 */
  int lfd;
  int wake[2];
  pthread_t th;
  int fds[64][2];
  int npairs;
} dbc_proxy;

static void *dbc_proxy_main(void *arg)
{
  dbc_proxy *px = arg;
  char buf[65536];
  for (;;) {
    struct pollfd pf[2 + 128];
    int n = 0;
    pf[n++] = (struct pollfd){ .fd = px->wake[0], .events = POLLIN };
    pf[n++] = (struct pollfd){ .fd = px->lfd, .events = POLLIN };
    for (int i = 0; i < px->npairs; i++) {
      pf[n++] = (struct pollfd){ .fd = px->fds[i][0], .events = POLLIN };
      pf[n++] = (struct pollfd){ .fd = px->fds[i][1], .events = POLLIN };
    }
    if (poll(pf, (nfds_t)n, -1) < 0) continue;
    if (pf[0].revents) break;
    if ((pf[1].revents & POLLIN) && px->npairs < 64) {
      int c = accept(px->lfd, NULL, NULL);
      int s = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)px->target_port) };
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (c >= 0 && s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
        px->fds[px->npairs][0] = c;
        px->fds[px->npairs][1] = s;
        px->npairs++;
      } else {
        if (c >= 0) close(c);
        if (s >= 0) close(s);
      }
    }
    for (int i = px->npairs - 1; i >= 0; i--) {
      for (int d = 0; d < 2; d++) {
        short ev = pf[2 + 2 * i + d].revents;
        if (!ev) continue;
        ssize_t r = read(px->fds[i][d], buf, sizeof buf);
        ssize_t w = 0;
        while (r > 0 && w < r) {
          ssize_t k = write(px->fds[i][!d], buf + w, (size_t)(r - w));
          if (k <= 0) break;
          w += k;
        }
        if (r <= 0 || w < r) {
          close(px->fds[i][0]);
          close(px->fds[i][1]);
          px->fds[i][0] = px->fds[--px->npairs][0];
          px->fds[i][1] = px->fds[px->npairs][1];
          break;
        }
      }
    }
  }
  for (int i = 0; i < px->npairs; i++) {
    close(px->fds[i][0]);
    close(px->fds[i][1]);
  }
  px->npairs = 0;
  close(px->lfd);
  return NULL;
}

/* Listen on px->port (0: any free port, written back) and forward. */
static void dbc_proxy_start(dbc_proxy *px)
{
  px->lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(px->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)px->port) };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(px->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(px->lfd, 16), 0);
  socklen_t len = sizeof a;
  getsockname(px->lfd, (struct sockaddr *)&a, &len);
  px->port = ntohs(a.sin_port);
  assert_int_equal(pipe(px->wake), 0);
  assert_int_equal(pthread_create(&px->th, NULL, dbc_proxy_main, px), 0);
}

/* Close the listener and every forwarded connection. */
static void dbc_proxy_stop(dbc_proxy *px)
{
  assert_int_equal(write(px->wake[1], "x", 1), 1);
  pthread_join(px->th, NULL);
  close(px->wake[0]);
  close(px->wake[1]);
}

/* ---- the runner ------------------------------------------------------------- */

#define DBC_TEST(f) cmocka_unit_test_setup(f, dbc_clean)

static int dbc_run(const char *url, const char *name)
{
  dbc_url = url;
  const struct CMUnitTest tests[] = {
    DBC_TEST(dbc_types_roundtrip),
    DBC_TEST(dbc_declared_types),
    DBC_TEST(dbc_select_param),
    DBC_TEST(dbc_placeholders_left_alone),
    DBC_TEST(dbc_injection_verbatim),
    DBC_TEST(dbc_tx_commit_rollback),
    DBC_TEST(dbc_savepoints_nest),
    DBC_TEST(dbc_failed_statement_aborts),
    DBC_TEST(dbc_transact_retries),
    DBC_TEST(dbc_error_taxonomy),
    DBC_TEST(dbc_stream_and_bulk),
    DBC_TEST(dbc_pool_exhaustion),
    DBC_TEST(dbc_hammer_small),
    DBC_TEST(dbc_migrations),
  };
  return _cmocka_run_group_tests(name, tests, sizeof tests / sizeof tests[0],
                                 dbc_setup, dbc_teardown);
}

#endif
