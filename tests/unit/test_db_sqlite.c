/* The database contract suite on SQLite (no server needed), plus what is
 * particular to SQLite: busy mapping, in-memory databases, pragmas,
 * declared types of expressions, statement timeouts; and the on-commit
 * hooks of transactions. */
#include <fcntl.h>

#include "db_contract.h"
#include <trellis/metrics.h>
#include <trellis/trellis.h>

static char path[256], url[300];

static void remove_files(void)
{
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

static void busy_and_snapshot(void **state)
{
  (void)state;
  char u[400];
  snprintf(u, sizeof u, "%s?busy_timeout=50", url);
  tl_db *a, *b;
  tl_db_config cfg = { .url = u };
  assert_int_equal(tl_db_connect(&a, &cfg), 0);
  assert_int_equal(tl_db_connect(&b, &cfg), 0);
  assert_int_equal(tl_db_exec(a, NULL, "CREATE TABLE IF NOT EXISTS busy (id INTEGER PRIMARY KEY)", TL_NOARGS), 0);
  tl_tx *tx;
  assert_int_equal(tl_db_begin(a, &tx), 0);
  assert_int_equal(tl_tx_exec(tx, NULL, "INSERT INTO busy VALUES (1)", TL_NOARGS), 0);
  /* The other writer waits busy_timeout, then gets a retryable error. */
  int rc = tl_db_exec(b, NULL, "INSERT INTO busy VALUES (2)", TL_NOARGS);
  assert_int_equal(rc, TL_ERETRY);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_BUSY);
  tl_tx *tx2;
  assert_int_equal(tl_db_begin(b, &tx2), TL_ERETRY);
  /* A reader is not blocked in WAL mode. */
  tl_rows *r;
  assert_int_equal(tl_db_query(b, &r, "SELECT COUNT(*) FROM busy", TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  tl_rows_free(r);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(tl_db_exec(b, NULL, "INSERT INTO busy VALUES (2)", TL_NOARGS), 0);
  assert_int_equal(tl_db_exec(a, NULL, "DROP TABLE busy", TL_NOARGS), 0);
  tl_db_close(a);
  tl_db_close(b);
}

static void memory_database(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = "sqlite::memory:", .max_connections = 8 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  assert_int_equal(tl_db_dialect_of(db), TL_DB_SQLITE);
  assert_int_equal(tl_db_exec(db, NULL, "CREATE TABLE m (x INTEGER)", TL_NOARGS), 0);
  assert_int_equal(tl_db_exec(db, NULL, "INSERT INTO m VALUES ($1)", TL_ARGS(tl_int(5))), 0);
  /* One connection only, so every call sees the same database. */
  tl_rows *r;
  assert_int_equal(tl_db_query(db, &r, "SELECT x FROM m", TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  int64_t x;
  assert_int_equal(tl_rows_int(r, 0, &x), 0);
  assert_int_equal(x, 5);
  /* Held by the cursor: a second caller can't get a connection at once. */
  tl_pool_stats st;
  tl_pool_stats_get(tl_db_pool(db), &st);
  assert_int_equal(st.in_use, 1);
  tl_rows_free(r);
  tl_db_close(db);
}

static void pragmas_and_expression_types(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = url };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  const char *want[][2] = { { "PRAGMA journal_mode", "wal" }, { "PRAGMA foreign_keys", "1" },
                            { "PRAGMA synchronous", "1" } };
  for (int i = 0; i < 3; i++) {
    tl_rows *r;
    assert_int_equal(tl_db_query(db, &r, want[i][0], TL_NOARGS), 0);
    assert_int_equal(tl_rows_next(r), 1);
    tl_value v;
    assert_int_equal(tl_rows_get(r, 0, &v), 0);
    char got[32];
    if (v.type == TL_TYPE_INT) snprintf(got, sizeof got, "%lld", (long long)v.i);
    else snprintf(got, sizeof got, "%.*s", (int)v.len, v.s);
    assert_string_equal(got, want[i][1]);
    tl_rows_free(r);
  }
  /* No declared type: the type of each value. */
  tl_rows *r;
  assert_int_equal(tl_db_query(db, &r, "SELECT 1, 2.5, 'x', x'00', NULL", TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  tl_type t[] = { TL_TYPE_INT, TL_TYPE_DOUBLE, TL_TYPE_TEXT, TL_TYPE_BLOB, TL_TYPE_NULL };
  for (int i = 0; i < 5; i++) assert_int_equal(tl_rows_column_type(r, i), t[i]);
  tl_rows_free(r);
  /* Two statements in one call are refused, not half run. */
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1; SELECT 2", TL_NOARGS), TL_EINVAL);
  tl_db_close(db);
}

static void notify_is_postgres_only(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = "sqlite::memory:" };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  tl_db_listener *l = NULL;
  assert_int_equal(tl_db_listen(db, "events", &l), TL_EUNSUPP);
  assert_null(l);
  assert_non_null(strstr(tl_error_last(), "poll"));
  /* Nobody can listen, so notifying is a successful no-op... */
  assert_int_equal(tl_db_notify(db, "events", "x"), 0);
  /* ...but a bad channel is still an error. */
  assert_int_equal(tl_db_notify(db, "no spaces", "x"), TL_EINVAL);
  tl_db_close(db);
}

static void statement_timeout(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = url, .statement_timeout_us = 50000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  const char *slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                     "WHERE x < 100000000) SELECT COUNT(*) FROM c";
  int64_t t0 = tl_time_mono_us();
  assert_int_equal(tl_db_exec(db, NULL, slow, TL_NOARGS), TL_ETIMEOUT);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_TIMEOUT);
  assert_true(tl_time_mono_us() - t0 < 5000000);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0);
  tl_db_close(db);
}

static void bad_urls(void **state)
{
  (void)state;
  tl_db *db = NULL;
  tl_db_config cfg = { .url = "postgress://bob:secret@localhost/x" };
  assert_int_equal(tl_db_connect(&db, &cfg), TL_EUNSUPP);
  assert_null(db);
  assert_non_null(strstr(tl_error_last(), "postgress"));
  assert_null(strstr(tl_error_last(), "secret"));
  cfg.url = "sqlite:///no/such/dir/x.db";
  assert_int_equal(tl_db_connect(&db, &cfg), TL_ECONNECT);
  assert_non_null(strstr(tl_error_last(), "/no/such/dir/x.db"));
  cfg.url = "";
  assert_int_equal(tl_db_connect(&db, &cfg), TL_EINVAL);
  cfg.url = url;
  cfg.min_idle = 20;
  assert_int_equal(tl_db_connect(&db, &cfg), TL_EINVAL);
  tl_db_close(NULL);
  tl_rows_free(NULL);
}

static void config_from(void **state)
{
  (void)state;
  tl_config *cfg;
  assert_int_equal(tl_config_new(&cfg), 0);
  tl_db_config dc;
  assert_int_equal(tl_db_config_from(cfg, &dc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "DATABASE_URL"));
  tl_config_set(cfg, "DATABASE_URL", "postgres://u:hunter2@db/app");
  tl_config_set(cfg, "DATABASE_READ_URLS", "postgres://r1/app, mysql://u:hunter2@r2/app");
  assert_int_equal(tl_db_config_from(cfg, &dc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "DATABASE_READ_URLS item 2"));
  assert_null(strstr(tl_error_last(), "hunter2"));
  tl_config_set(cfg, "DATABASE_READ_URLS", "postgres://r1/app,postgres://r2/app");
  tl_config_set(cfg, "DATABASE_MAX_CONNECTIONS", "zero");
  assert_int_equal(tl_db_config_from(cfg, &dc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "DATABASE_MAX_CONNECTIONS"));
  tl_config_set(cfg, "DATABASE_MAX_CONNECTIONS", "20");
  tl_config_set(cfg, "DATABASE_ACQUIRE_TIMEOUT", "250ms");
  tl_config_set(cfg, "DATABASE_STATEMENT_TIMEOUT", "30s");
  tl_config_set(cfg, "DATABASE_IDLE_TIMEOUT", "0");
  assert_int_equal(tl_db_config_from(cfg, &dc), 0);
  assert_string_equal(dc.url, "postgres://u:hunter2@db/app");
  assert_string_equal(dc.read_urls, "postgres://r1/app,postgres://r2/app");
  assert_int_equal(dc.max_connections, 20);
  assert_int_equal(dc.acquire_timeout_us, 250000);
  assert_int_equal(dc.statement_timeout_us, 30000000);
  assert_true(dc.idle_timeout_us < 0);
  tl_config_set(cfg, "DATABASE_MIN_IDLE", "21");
  assert_int_equal(tl_db_config_from(cfg, &dc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "DATABASE_MIN_IDLE"));
  tl_config_free(cfg);
}

static void sql_on_documents_and_docs_on_sql(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = "sqlite::memory:" };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  int64_t n;
  assert_int_equal(tl_doc_count(db, NULL, "c", "{}", &n), TL_EUNSUPP);
  tl_db_close(db);
}

/* min_idle kept, idle ones closed, lifetimes end, leaks reported. */
static void pool_housekeeping(void **state)
{
  (void)state;
  char logpath[64];
  snprintf(logpath, sizeof logpath, "/tmp/trellis-db-log-%d", (int)getpid());
  int fd = open(logpath, O_CREAT | O_TRUNC | O_RDWR, 0600);
  assert_true(fd >= 0);
  tl_log_set_fd(fd);
  tl_db *db;
  tl_db_config cfg = { .url = url, .max_connections = 4, .min_idle = 2,
                       .leak_threshold_us = 300000, .max_lifetime_us = 1500000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  tl_pool *p = tl_db_pool(db);
  tl_pool_stats st;
  tl_sleep_us(1300000); /* the keeper runs once a second */
  tl_pool_stats_get(p, &st);
  assert_int_equal(st.idle, 2);
  tl_conn *c;
  assert_int_equal(tl_pool_get(p, &c), 0);
  tl_sleep_us(1300000); /* held past the leak threshold */
  tl_pool_put(p, c);
  tl_pool_stats_get(p, &st);
  uint64_t created = st.created;
  tl_sleep_us(1500000); /* past the lifetime: closed and opened again */
  tl_pool_stats_get(p, &st);
  assert_true(st.closed >= 2);
  assert_true(st.created > created);
  assert_int_equal(st.idle, 2);
  tl_db_close(db);

  cfg = (tl_db_config){ .url = url, .idle_timeout_us = 200000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  tl_sleep_us(1300000);
  tl_pool_stats_get(tl_db_pool(db), &st);
  assert_int_equal(st.total, 0); /* the idle one was closed */
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0); /* and comes back */
  tl_db_close(db);
  tl_log_set_fd(2);
  char buf[8192] = "";
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  buf[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(logpath);
  assert_non_null(strstr(buf, "held too long"));
}

typedef struct fifo_ctx {
  tl_pool *pool;
  int id;
  int *order;
  int *next;
  pthread_mutex_t *mu;
} fifo_ctx;

static void *fifo_waiter(void *arg)
{
  fifo_ctx *f = arg;
  tl_conn *c;
  if (tl_pool_get(f->pool, &c) != 0) return NULL;
  pthread_mutex_lock(f->mu);
  f->order[(*f->next)++] = f->id;
  pthread_mutex_unlock(f->mu);
  tl_sleep_us(20000);
  tl_pool_put(f->pool, c);
  return NULL;
}

/* Waiters are served oldest first. */
static void pool_fifo(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = url, .max_connections = 1, .acquire_timeout_us = 5000000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  tl_pool *p = tl_db_pool(db);
  tl_conn *held;
  assert_int_equal(tl_pool_get(p, &held), 0);
  int order[4] = { -1, -1, -1, -1 }, next = 0;
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_t th[4];
  fifo_ctx f[4];
  for (int i = 0; i < 4; i++) {
    f[i] = (fifo_ctx){ .pool = p, .id = i, .order = order, .next = &next, .mu = &mu };
    pthread_create(&th[i], NULL, fifo_waiter, &f[i]);
    tl_sleep_us(50000); /* queue them in order */
  }
  tl_pool_stats st;
  tl_pool_stats_get(p, &st);
  assert_int_equal(st.pending, 4);
  tl_pool_put(p, held);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 4; i++) assert_int_equal(order[i], i);
  tl_db_close(db);
}

/* The pool's gauges, histogram and error counters reach the registry. */
static void pool_metrics(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = url, .name = "metricsdb", .max_connections = 1,
                       .acquire_timeout_us = 10000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  assert_int_equal(tl_db_exec(db, NULL, "CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY)", TL_NOARGS), 0);
  tl_db_exec(db, NULL, "INSERT INTO m VALUES (1)", TL_NOARGS);
  assert_int_equal(tl_db_exec(db, NULL, "INSERT INTO m VALUES (1)", TL_NOARGS), TL_ECONFLICT);
  tl_conn *c;
  assert_int_equal(tl_pool_get(tl_db_pool(db), &c), 0);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), TL_ETIMEOUT);
  char *text = NULL;
  size_t len;
  assert_int_equal(tl_metrics_render(tl_metrics_default(), &text, &len), 0);
  const char *want[] = {
    "trellis_db_pool_connections{pool=\"metricsdb\",role=\"primary\",state=\"in_use\"} 1",
    "trellis_db_pool_connections{pool=\"metricsdb\",role=\"primary\",state=\"idle\"} 0",
    "trellis_db_pool_pending_acquires{pool=\"metricsdb\",role=\"primary\"} 0",
    "trellis_db_pool_timeouts_total{pool=\"metricsdb\",role=\"primary\"} 1",
    "trellis_db_errors_total{pool=\"metricsdb\",role=\"primary\",class=\"unique\"} 1",
    "trellis_db_pool_acquire_duration_seconds_count{pool=\"metricsdb\",role=\"primary\"}",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(text, want[i])) fail_msg("missing '%s' in:\n%s", want[i], text);
  tl_free(text);
  tl_pool_put(tl_db_pool(db), c);
  tl_db_exec(db, NULL, "DROP TABLE m", TL_NOARGS);
  tl_db_close(db);
}

/* ---- on-commit hooks ----------------------------------------------------- */

/* A hook that counts its runs and, on a one-connection pool that refuses
 * to wait, checks the connection is already back and the writes durable. */
typedef struct hook_probe {
  tl_db *db;
  int runs;
  int exec_rc;     /* of a statement run from inside the hook */
  int64_t rows;    /* rows of table "hooked" the hook saw */
} hook_probe;

static void hook_count(void *ctx)
{
  ((hook_probe *)ctx)->runs++;
}

static void hook_probe_db(void *ctx)
{
  hook_probe *h = ctx;
  h->runs++;
  tl_rows *r;
  h->exec_rc = tl_db_query(h->db, &r, "SELECT COUNT(*) FROM hooked", TL_NOARGS);
  if (h->exec_rc) return;
  if (tl_rows_next(r) == 1) tl_rows_int(r, 0, &h->rows);
  tl_rows_free(r);
}

/* One connection, and no waiting for it: TL_EBUSY if it is still held. */
static tl_db *hook_db(void)
{
  tl_db *db;
  tl_db_config cfg = { .url = url, .max_connections = 1, .acquire_timeout_us = -1 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  assert_int_equal(tl_db_exec(db, NULL, "CREATE TABLE IF NOT EXISTS hooked (id INTEGER)", TL_NOARGS), 0);
  assert_int_equal(tl_db_exec(db, NULL, "DELETE FROM hooked", TL_NOARGS), 0);
  return db;
}

/* The next transaction on the (only) connection inherits no hook. */
static void next_tx_runs_no_hook(tl_db *db, const hook_probe *h)
{
  int runs = h->runs;
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(h->runs, runs);
}

static void on_commit_runs_once_after_commit(void **state)
{
  (void)state;
  tl_db *db = hook_db();
  hook_probe h = { .db = db, .exec_rc = -1 };
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  assert_int_equal(tl_tx_exec(tx, NULL, "INSERT INTO hooked VALUES (1)", TL_NOARGS), 0);
  assert_int_equal(tl_tx_on_commit(tx, hook_probe_db, &h), 0);
  assert_int_equal(tl_tx_exec(tx, NULL, "INSERT INTO hooked VALUES (2)", TL_NOARGS), 0);
  assert_int_equal(h.runs, 0);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(h.runs, 1);
  /* The hook got the only connection without waiting, and saw both rows. */
  assert_int_equal(h.exec_rc, 0);
  assert_int_equal(h.rows, 2);
  next_tx_runs_no_hook(db, &h);
  tl_db_close(db);
}

static void on_commit_forgotten_without_commit(void **state)
{
  (void)state;
  tl_db *db = hook_db();
  hook_probe h = { 0 };
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  assert_int_equal(tl_tx_on_commit(tx, hook_count, &h), 0);
  assert_int_equal(tl_tx_rollback(tx), 0);
  assert_int_equal(h.runs, 0);
  /* A commit refused because a statement failed is a rollback too. */
  assert_int_equal(tl_db_begin(db, &tx), 0);
  assert_int_equal(tl_tx_on_commit(tx, hook_count, &h), 0);
  assert_int_not_equal(tl_tx_exec(tx, NULL, "INSERT INTO no_such_table VALUES (1)", TL_NOARGS), 0);
  assert_int_equal(tl_tx_commit(tx), TL_ESTATE);
  assert_int_equal(h.runs, 0);
  next_tx_runs_no_hook(db, &h);
  assert_int_equal(h.runs, 0);
  tl_db_close(db);
}

static void on_commit_distinct_hooks(void **state)
{
  (void)state;
  tl_db *db = hook_db();
  hook_probe h[9] = { 0 };
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  /* The same function and context again count once. */
  assert_int_equal(tl_tx_on_commit(tx, hook_count, &h[0]), 0);
  assert_int_equal(tl_tx_on_commit(tx, hook_count, &h[0]), 0);
  /* Another context is another hook: eight fit, the ninth does not. */
  for (int i = 1; i < 8; i++) assert_int_equal(tl_tx_on_commit(tx, hook_count, &h[i]), 0);
  assert_int_equal(tl_tx_on_commit(tx, hook_count, &h[8]), TL_ETOOBIG);
  assert_non_null(strstr(tl_error_last(), "more than 8 distinct hooks"));
  /* Full, a hook already registered is still accepted (it is no new one). */
  assert_int_equal(tl_tx_on_commit(tx, hook_count, &h[3]), 0);
  assert_int_equal(tl_tx_commit(tx), 0);
  for (int i = 0; i < 8; i++) assert_int_equal(h[i].runs, 1);
  assert_int_equal(h[8].runs, 0);
  tl_db_close(db);
}

static void on_commit_bad_arguments(void **state)
{
  (void)state;
  tl_db *db = hook_db();
  hook_probe h = { 0 };
  assert_int_equal(tl_tx_on_commit(NULL, hook_count, &h), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "no open transaction"));
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  assert_int_equal(tl_tx_on_commit(tx, NULL, &h), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "NULL function"));
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(h.runs, 0);
  tl_db_close(db);
}

/* tl_db_transact: the first attempt registers a hook, then asks for a
 * retry; the second registers another and commits. */
typedef struct retried {
  int attempts;
  hook_probe first, second;
} retried;

static int register_then_retry_once(tl_tx *tx, void *ctx)
{
  retried *r = ctx;
  hook_probe *h = r->attempts++ == 0 ? &r->first : &r->second;
  int rc = tl_tx_exec(tx, NULL, "INSERT INTO hooked VALUES ($1)", TL_ARGS(tl_int(r->attempts)));
  if (rc == 0) rc = tl_tx_on_commit(tx, hook_count, h);
  if (rc) return rc;
  return r->attempts == 1 ? TL_ERETRY : 0;
}

static void on_commit_in_transact_retry(void **state)
{
  (void)state;
  tl_db *db = hook_db();
  retried r = { 0 };
  tl_tx_opts o = { .backoff = { .base_us = 1000, .cap_us = 2000 } };
  assert_int_equal(tl_db_transact(db, register_then_retry_once, &r, &o), 0);
  assert_int_equal(r.attempts, 2);
  assert_int_equal(r.first.runs, 0);
  assert_int_equal(r.second.runs, 1);
  /* Only the second attempt's row was committed. */
  tl_rows *rows;
  assert_int_equal(tl_db_query(db, &rows, "SELECT id FROM hooked", TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(rows), 1);
  int64_t id = 0;
  assert_int_equal(tl_rows_int(rows, 0, &id), 0);
  assert_int_equal(id, 2);
  assert_int_equal(tl_rows_next(rows), 0);
  tl_rows_free(rows);
  /* Every attempt failing: no hook runs at all. */
  retried never = { 0 };
  o.max_attempts = 1;
  assert_int_equal(tl_db_transact(db, register_then_retry_once, &never, &o), TL_ERETRY);
  assert_int_equal(never.first.runs, 0);
  assert_int_equal(tl_db_exec(db, NULL, "DROP TABLE hooked", TL_NOARGS), 0);
  tl_db_close(db);
}

int main(void)
{
  snprintf(path, sizeof path, "/tmp/trellis-test-db-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  remove_files();
  int failed = dbc_run(url, "db_contract_sqlite");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(busy_and_snapshot),
    cmocka_unit_test(memory_database),
    cmocka_unit_test(pragmas_and_expression_types),
    cmocka_unit_test(statement_timeout),
    cmocka_unit_test(notify_is_postgres_only),
    cmocka_unit_test(bad_urls),
    cmocka_unit_test(config_from),
    cmocka_unit_test(sql_on_documents_and_docs_on_sql),
    cmocka_unit_test(pool_housekeeping),
    cmocka_unit_test(pool_fifo),
    cmocka_unit_test(pool_metrics),
    cmocka_unit_test(on_commit_runs_once_after_commit),
    cmocka_unit_test(on_commit_forgotten_without_commit),
    cmocka_unit_test(on_commit_distinct_hooks),
    cmocka_unit_test(on_commit_bad_arguments),
    cmocka_unit_test(on_commit_in_transact_retry),
  };
  failed += cmocka_run_group_tests_name("db_sqlite", tests, NULL, NULL);
  remove_files();
  return failed ? 1 : 0;
}
