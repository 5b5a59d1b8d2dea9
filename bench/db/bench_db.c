/* bench_db: the database module against the raw client libraries.
 *
 * Cases (each alternates trellis and the baseline, same server, same data,
 * same durability):
 *   pool_get_put       tl_pool_get+tl_pool_put vs a mutex-guarded free list
 *   pool_get_put_2t    the same, 2 threads on a pool of 2
 *   <db>_select1       SELECT 1 through tl_db_query vs the raw prepared statement
 *   <db>_insert        one-row INSERT (autocommit) vs the raw prepared statement
 *   <db>_bulk          100,000 rows in one transaction: tl_db_exec_many vs the
 *                      raw library's fastest form (PostgreSQL pipeline, MariaDB
 *                      array binding, SQLite prepared loop)
 * for <db> in sqlite (WAL, synchronous=NORMAL), pg and mysql (server defaults).
 * Servers come from TRELLIS_TEST_POSTGRES_URL / TRELLIS_TEST_MYSQL_URL or the
 * scripts/services env file; a missing server skips its cases (on stderr). */
#include <endian.h>
#include <libpq-fe.h>
#include <mysql.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <trellis/db.h>
#include <trellis/error.h>
#include <trellis/log.h>

#include "bench.h"

static const char *only; /* run the cases whose name starts with this */
static long n_pool, n_sqlite, n_server, n_insert_sqlite, n_insert_server, n_bulk;
static int64_t next_id = 1;
static char sqlite_path[128];

static void die(const char *what)
{
  fprintf(stderr, "bench_db: %s: %s\n", what, tl_error_last());
  exit(1);
}

/* ---- pool --------------------------------------------------------------- */

/* The baseline: the least a pool can do, a mutex and a stack. */
typedef struct mini_pool {
  pthread_mutex_t mu;
  void *items[8];
  int n;
} mini_pool;

typedef struct pool_ctx {
  tl_pool *pool;
  mini_pool mini;
  long n;
  int threads;
} pool_ctx;

static void *ours_pool_loop(void *arg)
{
  pool_ctx *c = arg;
  for (long i = 0; i < c->n; i++) {
    tl_conn *conn;
    if (tl_pool_get(c->pool, &conn) != 0) die("tl_pool_get");
    tl_pool_put(c->pool, conn);
  }
  return NULL;
}

static void *mini_pool_loop(void *arg)
{
  pool_ctx *c = arg;
  mini_pool *m = &c->mini;
  for (long i = 0; i < c->n; i++) {
    pthread_mutex_lock(&m->mu);
    void *item = m->items[--m->n];
    pthread_mutex_unlock(&m->mu);
    __asm__ volatile("" : : "r"(item) : "memory");
    pthread_mutex_lock(&m->mu);
    m->items[m->n++] = item;
    pthread_mutex_unlock(&m->mu);
  }
  return NULL;
}

static int run_threads(pool_ctx *c, void *(*fn)(void *), double *fig)
{
  pthread_t th[2];
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < c->threads; i++) pthread_create(&th[i], NULL, fn, c);
  for (int i = 0; i < c->threads; i++) pthread_join(th[i], NULL);
  fig[0] = (double)(bench_now_ns() - t0) / ((double)c->n * c->threads);
  return 0;
}

static int ours_pool(void *ctx, double *fig) { return run_threads(ctx, ours_pool_loop, fig); }
static int mini_pool_run(void *ctx, double *fig) { return run_threads(ctx, mini_pool_loop, fig); }

static void bench_pool(void)
{
  char url[200];
  snprintf(url, sizeof url, "sqlite://%s", sqlite_path);
  tl_db *db;
  tl_db_config cfg = { .url = url, .max_connections = 2, .validate_after_us = -1 };
  if (tl_db_connect(&db, &cfg) != 0) die("connect");
  pool_ctx c = { .pool = tl_db_pool(db), .n = n_pool, .threads = 1 };
  pthread_mutex_init(&c.mini.mu, NULL);
  static int dummy[2];
  c.mini.items[c.mini.n++] = &dummy[0];
  c.mini.items[c.mini.n++] = &dummy[1];
  /* Open both connections first so the pool never connects while timed. */
  tl_conn *a, *b;
  tl_pool_get(c.pool, &a);
  tl_pool_get(c.pool, &b);
  tl_pool_put(c.pool, a);
  tl_pool_put(c.pool, b);
  bench_metric m = { "pool_get_put", "ns/cycle", true };
  bench_spec s = { .bench = "db", .baseline_name = "mutex+stack", .metrics = &m, .nmetrics = 1,
                   .conditions = "1 thread, pool of 2, connections open",
                   .ours = ours_pool, .ours_ctx = &c, .baseline = mini_pool_run, .baseline_ctx = &c };
  bench_compare(&s);
  c.threads = 2;
  bench_metric m2 = { "pool_get_put_2t", "ns/cycle", true };
  s.metrics = &m2;
  s.conditions = "2 threads, pool of 2, wall time / total cycles";
  bench_compare(&s);
  tl_db_close(db);
}

/* ---- one backend: ours ---------------------------------------------------- */

typedef struct sql_ctx {
  tl_db *db;
  long n;
  const char *name;
  tl_value *rows; /* bulk: 2 values per row */
  /* raw handles */
  sqlite3 *sq;
  sqlite3_stmt *sq_sel, *sq_ins;
  PGconn *pg;
  MYSQL *my;
  MYSQL_STMT *my_sel, *my_ins;
} sql_ctx;

static const char *INS = "INSERT INTO bench_ins (id, v) VALUES ($1, $2)";
static const char *BULK = "INSERT INTO bench_bulk (id, v) VALUES ($1, $2)";

static int ours_select1(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    tl_rows *r;
    int64_t v;
    if (tl_db_query(c->db, &r, "SELECT 1", TL_NOARGS) != 0 || tl_rows_next(r) != 1 ||
        tl_rows_int(r, 0, &v) != 0 || v != 1)
      die("select 1");
    tl_rows_free(r);
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

/* The same on one connection held by the caller: the front end's cost
 * without the pool's. */
static int ours_select1_conn(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  tl_conn *conn;
  if (tl_pool_get(tl_db_pool(c->db), &conn) != 0) die("tl_pool_get");
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    tl_rows *r;
    int64_t v;
    if (tl_conn_query(conn, &r, "SELECT 1", TL_NOARGS) != 0 || tl_rows_next(r) != 1 ||
        tl_rows_int(r, 0, &v) != 0 || v != 1)
      die("select 1");
    tl_rows_free(r);
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  tl_pool_put(tl_db_pool(c->db), conn);
  return 0;
}

static int ours_insert(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++)
    if (tl_db_exec(c->db, NULL, INS, TL_ARGS(tl_int(next_id++), tl_text("value"))) != 0)
      die("insert");
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int ours_bulk(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  if (tl_db_exec(c->db, NULL, "DELETE FROM bench_bulk", TL_NOARGS) != 0) die("delete");
  uint64_t t0 = bench_now_ns();
  int64_t n = 0;
  if (tl_db_exec_many(c->db, &n, BULK, c->rows, 2, (size_t)c->n) != 0 || n != c->n) die("bulk");
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static void make_tables(tl_db *db, const char *text_type)
{
  char sql[200];
  const char *names[] = { "bench_ins", "bench_bulk" };
  for (int i = 0; i < 2; i++) {
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", names[i]);
    tl_db_exec(db, NULL, sql, TL_NOARGS);
    snprintf(sql, sizeof sql, "CREATE TABLE %s (id BIGINT PRIMARY KEY, v %s)", names[i], text_type);
    if (tl_db_exec(db, NULL, sql, TL_NOARGS) != 0) die(sql);
  }
}

static void compare(const char *db, const char *what, const char *unit, const char *baseline,
                    const char *cond, bench_run_fn ours, bench_run_fn raw, sql_ctx *c)
{
  char name[64];
  snprintf(name, sizeof name, "%s_%s", db, what);
  if (only && strncmp(name, only, strlen(only)) != 0 && strlen(only) > strlen(db)) return;
  bench_metric m = { name, unit, false };
  bench_spec s = { .bench = "db", .baseline_name = baseline, .conditions = cond, .metrics = &m,
                   .nmetrics = 1, .ours = ours, .ours_ctx = c, .baseline = raw, .baseline_ctx = c };
  bench_compare(&s);
}

/* ---- SQLite raw ------------------------------------------------------------- */

static int raw_sqlite_select1(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    if (sqlite3_step(c->sq_sel) != SQLITE_ROW || sqlite3_column_int64(c->sq_sel, 0) != 1)
      die("raw select");
    sqlite3_reset(c->sq_sel);
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_sqlite_insert(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    sqlite3_bind_int64(c->sq_ins, 1, next_id++);
    sqlite3_bind_text(c->sq_ins, 2, "value", 5, SQLITE_STATIC);
    if (sqlite3_step(c->sq_ins) != SQLITE_DONE) die("raw insert");
    sqlite3_reset(c->sq_ins);
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_sqlite_bulk(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  sqlite3_exec(c->sq, "DELETE FROM bench_bulk", NULL, NULL, NULL);
  sqlite3_stmt *st;
  sqlite3_prepare_v2(c->sq, "INSERT INTO bench_bulk (id, v) VALUES (?1, ?2)", -1, &st, NULL);
  uint64_t t0 = bench_now_ns();
  sqlite3_exec(c->sq, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  for (long i = 0; i < c->n; i++) {
    const tl_value *v = &c->rows[2 * i];
    sqlite3_bind_int64(st, 1, v[0].i);
    sqlite3_bind_text(st, 2, v[1].s, (int)v[1].len, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) die("raw bulk");
    sqlite3_reset(st);
  }
  if (sqlite3_exec(c->sq, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) die("raw commit");
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  sqlite3_finalize(st);
  return 0;
}

static void bench_sqlite(void)
{
  char url[200];
  snprintf(url, sizeof url, "sqlite://%s", sqlite_path);
  sql_ctx c = { .name = "sqlite" };
  tl_db_config cfg = { .url = url, .max_connections = 1 };
  if (tl_db_connect(&c.db, &cfg) != 0) die("sqlite connect");
  make_tables(c.db, "TEXT");
  sqlite3_open_v2(sqlite_path, &c.sq, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  sqlite3_busy_timeout(c.sq, 5000);
  sqlite3_exec(c.sq, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
               NULL, NULL, NULL);
  sqlite3_prepare_v2(c.sq, "SELECT 1", -1, &c.sq_sel, NULL);
  sqlite3_prepare_v2(c.sq, "INSERT INTO bench_ins (id, v) VALUES (?1, ?2)", -1, &c.sq_ins, NULL);
  const char *cond = "file db, WAL, synchronous=NORMAL, 1 connection, prepared";
  c.n = n_sqlite;
  compare("sqlite", "select1", "ops/s", "sqlite3", cond, ours_select1, raw_sqlite_select1, &c);
  compare("sqlite", "select1_conn", "ops/s", "sqlite3",
          "as sqlite_select1, on a connection taken once with tl_pool_get",
          ours_select1_conn, raw_sqlite_select1, &c);
  c.n = n_insert_sqlite;
  compare("sqlite", "insert", "ops/s", "sqlite3", "autocommit, WAL, synchronous=NORMAL",
          ours_insert, raw_sqlite_insert, &c);
  c.n = n_bulk;
  c.rows = calloc((size_t)n_bulk * 2, sizeof *c.rows);
  for (long i = 0; i < n_bulk; i++) {
    c.rows[2 * i] = tl_int(i);
    c.rows[2 * i + 1] = tl_text("bulk-row-value");
  }
  compare("sqlite", "bulk", "rows/s", "sqlite3", "one transaction, WAL, synchronous=NORMAL",
          ours_bulk, raw_sqlite_bulk, &c);
  sqlite3_finalize(c.sq_sel);
  sqlite3_finalize(c.sq_ins);
  sqlite3_close(c.sq);
  free(c.rows);
  tl_db_close(c.db);
}

/* ---- PostgreSQL raw --------------------------------------------------------- */

static int raw_pg_select1(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    PGresult *r = PQexecPrepared(c->pg, "sel", 0, NULL, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || atoi(PQgetvalue(r, 0, 0)) != 1) die("raw pg select");
    PQclear(r);
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_pg_insert(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    uint64_t id = htobe64((uint64_t)next_id++);
    const char *v[2] = { (const char *)&id, "value" };
    int l[2] = { 8, 0 }, f[2] = { 1, 0 };
    PGresult *r = PQexecPrepared(c->pg, "ins", 2, v, l, f, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) die("raw pg insert");
    PQclear(r);
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_pg_bulk(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  PQclear(PQexec(c->pg, "DELETE FROM bench_bulk"));
  uint64_t t0 = bench_now_ns();
  PQclear(PQexec(c->pg, "BEGIN"));
  PQenterPipelineMode(c->pg);
  for (long r0 = 0; r0 < c->n; r0 += 512) {
    long end = r0 + 512 < c->n ? r0 + 512 : c->n;
    for (long i = r0; i < end; i++) {
      uint64_t id = htobe64((uint64_t)c->rows[2 * i].i);
      const char *v[2] = { (const char *)&id, c->rows[2 * i + 1].s };
      int l[2] = { 8, 0 }, f[2] = { 1, 0 };
      PQsendQueryPrepared(c->pg, "bulk", 2, v, l, f, 0);
    }
    PQpipelineSync(c->pg);
    for (;;) {
      PGresult *r = PQgetResult(c->pg);
      if (!r) continue;
      ExecStatusType s = PQresultStatus(r);
      PQclear(r);
      if (s == PGRES_PIPELINE_SYNC) break;
      if (s != PGRES_COMMAND_OK) die("raw pg bulk");
    }
  }
  PQexitPipelineMode(c->pg);
  PGresult *r = PQexec(c->pg, "COMMIT");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) die("raw pg commit");
  PQclear(r);
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static void bench_pg(const char *url)
{
  sql_ctx c = { .name = "pg" };
  tl_db_config cfg = { .url = url, .max_connections = 1 };
  if (tl_db_connect(&c.db, &cfg) != 0) die("pg connect");
  make_tables(c.db, "TEXT");
  c.pg = PQconnectdb(url);
  if (PQstatus(c.pg) != CONNECTION_OK) die("raw pg connect");
  Oid types[2] = { 20, 0 };
  PQclear(PQprepare(c.pg, "sel", "SELECT 1", 0, NULL));
  PQclear(PQprepare(c.pg, "ins", INS, 2, types));
  PQclear(PQprepare(c.pg, "bulk", BULK, 2, types));
  c.n = n_server;
  compare("pg", "select1", "ops/s", "libpq", "1 connection, prepared, loopback TCP",
          ours_select1, raw_pg_select1, &c);
  c.n = n_insert_server;
  compare("pg", "insert", "ops/s", "libpq", "autocommit, synchronous_commit default, prepared",
          ours_insert, raw_pg_insert, &c);
  c.n = n_bulk;
  c.rows = calloc((size_t)n_bulk * 2, sizeof *c.rows);
  for (long i = 0; i < n_bulk; i++) {
    c.rows[2 * i] = tl_int(i);
    c.rows[2 * i + 1] = tl_text("bulk-row-value");
  }
  compare("pg", "bulk", "rows/s", "libpq", "one transaction, pipeline mode, batches of 512",
          ours_bulk, raw_pg_bulk, &c);
  PQfinish(c.pg);
  tl_db_exec(c.db, NULL, "DROP TABLE bench_ins", TL_NOARGS);
  tl_db_exec(c.db, NULL, "DROP TABLE bench_bulk", TL_NOARGS);
  free(c.rows);
  tl_db_close(c.db);
}

/* ---- MariaDB raw ------------------------------------------------------------- */

static int raw_my_select1(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  int64_t v = 0;
  MYSQL_BIND b = { .buffer_type = MYSQL_TYPE_LONGLONG, .buffer = &v };
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    if (mysql_stmt_execute(c->my_sel) || mysql_stmt_bind_result(c->my_sel, &b) ||
        mysql_stmt_fetch(c->my_sel) != 0 || v != 1 || mysql_stmt_fetch(c->my_sel) != MYSQL_NO_DATA)
      die("raw mysql select");
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_my_insert(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  int64_t id;
  MYSQL_BIND b[2] = { { .buffer_type = MYSQL_TYPE_LONGLONG, .buffer = &id },
                      { .buffer_type = MYSQL_TYPE_STRING, .buffer = (void *)"value", .buffer_length = 5 } };
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n; i++) {
    id = next_id++;
    if (mysql_stmt_bind_param(c->my_ins, b) || mysql_stmt_execute(c->my_ins)) die("raw mysql insert");
  }
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_my_bulk(void *ctx, double *fig)
{
  sql_ctx *c = ctx;
  mysql_query(c->my, "DELETE FROM bench_bulk");
  MYSQL_STMT *st = mysql_stmt_init(c->my);
  mysql_stmt_prepare(st, "INSERT INTO bench_bulk (id, v) VALUES (?, ?)", 44);
  int64_t *ids = malloc(1000 * sizeof *ids);
  const char **vs = malloc(1000 * sizeof *vs);
  unsigned long *lens = malloc(1000 * sizeof *lens);
  uint64_t t0 = bench_now_ns();
  mysql_query(c->my, "START TRANSACTION");
  for (long r0 = 0; r0 < c->n; r0 += 1000) {
    unsigned n = (unsigned)(c->n - r0 < 1000 ? c->n - r0 : 1000);
    for (unsigned i = 0; i < n; i++) {
      ids[i] = c->rows[2 * (r0 + i)].i;
      vs[i] = c->rows[2 * (r0 + i) + 1].s;
      lens[i] = (unsigned long)c->rows[2 * (r0 + i) + 1].len;
    }
    MYSQL_BIND b[2] = { { .buffer_type = MYSQL_TYPE_LONGLONG, .buffer = ids },
                        { .buffer_type = MYSQL_TYPE_STRING, .buffer = vs, .length = lens } };
    if (mysql_stmt_attr_set(st, STMT_ATTR_ARRAY_SIZE, &n) || mysql_stmt_bind_param(st, b) ||
        mysql_stmt_execute(st))
      die("raw mysql bulk");
  }
  if (mysql_query(c->my, "COMMIT")) die("raw mysql commit");
  fig[0] = (double)c->n * 1e9 / (double)(bench_now_ns() - t0);
  mysql_stmt_close(st);
  free(ids);
  free(vs);
  free(lens);
  return 0;
}

static void bench_mysql(const char *url)
{
  sql_ctx c = { .name = "mysql" };
  tl_db_config cfg = { .url = url, .max_connections = 1 };
  if (tl_db_connect(&c.db, &cfg) != 0) die("mysql connect");
  make_tables(c.db, "LONGTEXT");
  /* The raw side: same server, same flags. */
  char host[128] = "127.0.0.1", user[64] = "", pass[64] = "", dbname[64] = "";
  int port = 3306;
  sscanf(strstr(url, "://") + 3, "%63[^:]:%63[^@]@%127[^:]:%d/%63s", user, pass, host, &port, dbname);
  c.my = mysql_init(NULL);
  mysql_optionsv(c.my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  if (!mysql_real_connect(c.my, host, user, pass, dbname, (unsigned)port, NULL, CLIENT_FOUND_ROWS))
    die("raw mysql connect");
  c.my_sel = mysql_stmt_init(c.my);
  c.my_ins = mysql_stmt_init(c.my);
  mysql_stmt_prepare(c.my_sel, "SELECT 1", 8);
  mysql_stmt_prepare(c.my_ins, "INSERT INTO bench_ins (id, v) VALUES (?, ?)", 43);
  c.n = n_server;
  compare("mysql", "select1", "ops/s", "libmariadb", "1 connection, prepared, loopback TCP",
          ours_select1, raw_my_select1, &c);
  c.n = n_insert_server;
  compare("mysql", "insert", "ops/s", "libmariadb", "autocommit, InnoDB defaults, prepared",
          ours_insert, raw_my_insert, &c);
  c.n = n_bulk;
  c.rows = calloc((size_t)n_bulk * 2, sizeof *c.rows);
  for (long i = 0; i < n_bulk; i++) {
    c.rows[2 * i] = tl_int(i);
    c.rows[2 * i + 1] = tl_text("bulk-row-value");
  }
  compare("mysql", "bulk", "rows/s", "libmariadb", "one transaction, array binding, batches of 1000",
          ours_bulk, raw_my_bulk, &c);
  mysql_stmt_close(c.my_sel);
  mysql_stmt_close(c.my_ins);
  mysql_close(c.my);
  tl_db_exec(c.db, NULL, "DROP TABLE bench_ins", TL_NOARGS);
  tl_db_exec(c.db, NULL, "DROP TABLE bench_bulk", TL_NOARGS);
  free(c.rows);
  tl_db_close(c.db);
}

static void remove_sqlite(void)
{
  char p[160];
  unlink(sqlite_path);
  snprintf(p, sizeof p, "%s-wal", sqlite_path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", sqlite_path);
  unlink(p);
}

static bool wanted(const char *group)
{
  return !only || strncmp(group, only, strlen(group) < strlen(only) ? strlen(group) : strlen(only)) == 0;
}

int main(int argc, char **argv)
{
  only = argc > 1 ? argv[1] : NULL; /* "pool", "sqlite", "pg", "mysql" */
  tl_log_set_level(TL_LOG_WARN);
  n_pool = bench_size(5000000, 20000);
  n_sqlite = bench_size(1000000, 5000);
  n_insert_sqlite = bench_size(200000, 2000);
  n_server = bench_size(20000, 500);
  n_insert_server = bench_size(5000, 200);
  n_bulk = bench_size(100000, 2000);
  snprintf(sqlite_path, sizeof sqlite_path, "/tmp/trellis-bench-db-%d.db", (int)getpid());
  remove_sqlite();
  if (wanted("pool")) bench_pool();
  if (wanted("sqlite")) bench_sqlite();
  remove_sqlite();
  char buf[512];
  if (wanted("pg")) {
    const char *pg = bench_service_url("TRELLIS_TEST_POSTGRES_URL", buf, sizeof buf);
    if (pg) bench_pg(pg);
    else fprintf(stderr, "bench_db: no PostgreSQL (scripts/services start postgres): pg cases skipped\n");
  }
  if (wanted("mysql")) {
    const char *my = bench_service_url("TRELLIS_TEST_MYSQL_URL", buf, sizeof buf);
    if (my) bench_mysql(my);
    else fprintf(stderr, "bench_db: no MariaDB (scripts/services start mariadb): mysql cases skipped\n");
  }
  return 0;
}
