/* The database contract suite on MariaDB/MySQL, plus a connection killed
 * by the server (KILL) met by a retryable transaction, many threads on a
 * small pool, deadlocks and statement timeouts. */
#include "db_contract.h"
#include "support.h"

static char my_url[1024];

static void kill_conn(int64_t id)
{
  tl_db *admin;
  tl_db_config cfg = { .url = my_url, .max_connections = 1, .name = "admin" };
  assert_int_equal(tl_db_connect(&admin, &cfg), 0);
  char sql[64];
  snprintf(sql, sizeof sql, "KILL CONNECTION %lld", (long long)id);
  int rc = tl_db_exec(admin, NULL, sql, TL_NOARGS);
  if (rc) fail_msg("%s: %s", sql, tl_error_last());
  tl_db_close(admin);
  tl_sleep_us(100000);
}

static int64_t conn_id(tl_conn *c)
{
  tl_rows *r;
  assert_int_equal(tl_conn_query(c, &r, "SELECT CONNECTION_ID()", TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  int64_t id;
  assert_int_equal(tl_rows_int(r, 0, &id), 0);
  tl_rows_free(r);
  return id;
}

typedef struct fault_ctx {
  int calls;
} fault_ctx;

static int fault_fn(tl_tx *tx, void *arg)
{
  fault_ctx *c = arg;
  c->calls++;
  if (c->calls == 1) {
    tl_rows *r;
    assert_int_equal(tl_tx_query(tx, &r, "SELECT CONNECTION_ID()", TL_NOARGS), 0);
    assert_int_equal(tl_rows_next(r), 1);
    int64_t id;
    assert_int_equal(tl_rows_int(r, 0, &id), 0);
    tl_rows_free(r);
    kill_conn(id);
  }
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, 'f')", dbc_t("kv"));
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(500 + c->calls)));
}

static void killed_connection_replaced(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = my_url, .max_connections = 2 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  fault_ctx c = { 0 };
  int rc = tl_db_transact(db, fault_fn, &c, NULL);
  if (rc) fail_msg("transact: %s", tl_error_last());
  assert_int_equal(c.calls, 2);
  tl_pool_stats st;
  tl_pool_stats_get(tl_db_pool(db), &st);
  assert_true(st.broken >= 1);
  /* An idle pooled connection killed: one failure, then a fresh one. */
  tl_conn *conn;
  assert_int_equal(tl_pool_get(tl_db_pool(db), &conn), 0);
  int64_t id = conn_id(conn);
  tl_pool_put(tl_db_pool(db), conn);
  kill_conn(id);
  rc = tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS);
  assert_int_equal(rc, TL_ECONNECT);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_CONNECTION_LOST);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0);
  tl_db_close(db);
  assert_int_equal(dbc_kv_count(), 1);
}

static void hammer_32_threads_pool_of_4(void **state)
{
  (void)state;
  dbc_hammer_run(32, 25, 4);
}

static void statement_timeout_and_unreachable(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = my_url, .statement_timeout_us = 100000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  int rc = tl_db_exec(db, NULL, "SELECT SLEEP(3) FROM (SELECT 1) x", TL_NOARGS);
  /* MariaDB stops SLEEP() by returning 1 rather than an error: look at both. */
  if (rc == 0) {
    rc = tl_db_exec(db, NULL, "SELECT COUNT(*) FROM information_schema.columns a, "
                    "information_schema.columns b, information_schema.columns c", TL_NOARGS);
  }
  if (rc != TL_ETIMEOUT) {
    fail_msg("want a timeout: %s (%s)", tl_status_name(rc), tl_error_last());
  }
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_TIMEOUT);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0);
  tl_db_close(db);
  cfg = (tl_db_config){ .url = "mariadb://bob:sekrit@127.0.0.1:1/nope" };
  db = NULL;
  assert_int_equal(tl_db_connect(&db, &cfg), TL_ECONNECT);
  assert_non_null(strstr(tl_error_last(), "mariadb://bob:***@127.0.0.1:1/nope"));
  assert_null(strstr(tl_error_last(), "sekrit"));
}

typedef struct dl_ctx {
  pthread_barrier_t *bar;
  int first, second; /* rows to lock, in this order */
  int calls;
  bool waited;
} dl_ctx;

static int dl_fn(tl_tx *tx, void *arg)
{
  dl_ctx *c = arg;
  c->calls++;
  char sql[128];
  snprintf(sql, sizeof sql, "UPDATE %s SET v = CONCAT(v, 'x') WHERE id = $1", dbc_t("kv"));
  int rc = tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(c->first)));
  if (rc) return rc;
  if (!c->waited) { /* both hold their first row before asking for the second */
    c->waited = true;
    pthread_barrier_wait(c->bar);
  }
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(c->second)));
}

static void *dl_thread(void *arg)
{
  tl_tx_opts o = { .max_attempts = 10, .backoff = { .base_us = 2000 } };
  return (void *)(intptr_t)tl_db_transact(dbc_db, dl_fn, arg, &o);
}

static void deadlock_retried(void **state)
{
  (void)state;
  dbc_exec("INSERT INTO %s (id, v) VALUES (1, ''), (2, '')", dbc_t("kv"));
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, 2);
  dl_ctx a = { .bar = &bar, .first = 1, .second = 2 }, b = { .bar = &bar, .first = 2, .second = 1 };
  pthread_t ta, tb;
  pthread_create(&ta, NULL, dl_thread, &a);
  pthread_create(&tb, NULL, dl_thread, &b);
  void *ra, *rb;
  pthread_join(ta, &ra);
  pthread_join(tb, &rb);
  pthread_barrier_destroy(&bar);
  assert_int_equal((intptr_t)ra, 0);
  assert_int_equal((intptr_t)rb, 0);
  assert_true(a.calls + b.calls >= 3); /* the deadlock victim ran again */
  assert_int_equal(dbc_scalar("SELECT LENGTH(v) FROM %s WHERE id = 1", dbc_t("kv")), 2);
  assert_int_equal(dbc_scalar("SELECT LENGTH(v) FROM %s WHERE id = 2", dbc_t("kv")), 2);
}

static void large_values(void **state)
{
  (void)state;
  size_t n = 1 << 20;
  char *big = malloc(n + 1);
  for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
  big[n] = '\0';
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES (1, $1)", dbc_t("kv"));
  assert_int_equal(tl_db_exec(dbc_db, NULL, sql, TL_ARGS(tl_text(big))), 0);
  snprintf(sql, sizeof sql, "SELECT v, id FROM %s", dbc_t("kv"));
  tl_rows *r;
  assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  const char *s;
  size_t len;
  assert_int_equal(tl_rows_text(r, 0, &s, &len), 0);
  assert_int_equal(len, n);
  assert_memory_equal(s, big, n);
  assert_int_equal(s[n], '\0');
  tl_rows_free(r);
  free(big);
}

int main(void)
{
  tl_test_service_url("TRELLIS_TEST_MYSQL_URL", "mariadb", my_url, sizeof my_url);
  int failed = dbc_run(my_url, "db_contract_mysql");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup(killed_connection_replaced, dbc_clean),
    cmocka_unit_test_setup(hammer_32_threads_pool_of_4, dbc_clean),
    cmocka_unit_test_setup(statement_timeout_and_unreachable, dbc_clean),
    cmocka_unit_test_setup(large_values, dbc_clean),
    cmocka_unit_test_setup(deadlock_retried, dbc_clean),
  };
  dbc_url = my_url;
  failed += cmocka_run_group_tests_name("db_mysql", tests, dbc_setup, dbc_teardown);
  return failed ? 1 : 0;
}
