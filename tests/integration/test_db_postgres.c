/* The database contract suite on PostgreSQL, plus the pool's fault tests
 * against the real server: a backend killed with pg_terminate_backend, 32
 * threads on a pool of 4, serialization failures retried, statement
 * timeouts, replicas that go away, and three processes migrating at once. */
#include <sys/wait.h>

#include "db_contract.h"
#include "support.h"

static char pg_url[1024];
static const char *self_path;

static tl_db *open_named(const char *name, int max, const char *reads)
{
  tl_db *db;
  tl_db_config cfg = { .url = pg_url, .name = name, .max_connections = max,
                       .read_urls = reads, .acquire_timeout_us = 10000000 };
  int rc = tl_db_connect(&db, &cfg);
  if (rc) fail_msg("connect: %s", tl_error_last());
  return db;
}

/* Terminate every server process of pool `name` (role primary). */
static int64_t terminate(const char *name)
{
  tl_db *admin = open_named("admin", 1, NULL);
  char app[96];
  snprintf(app, sizeof app, "trellis-%s-primary", name);
  tl_rows *r;
  assert_int_equal(tl_db_query(admin, &r, "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = $1", TL_ARGS(tl_text(app))), 0);
  assert_int_equal(tl_rows_next(r), 1);
  int64_t n = 0;
  assert_int_equal(tl_rows_int(r, 0, &n), 0);
  tl_rows_free(r);
  tl_db_close(admin);
  tl_sleep_us(200000);
  return n;
}

typedef struct fault_ctx {
  const char *name;
  int calls;
} fault_ctx;

static int fault_fn(tl_tx *tx, void *arg)
{
  fault_ctx *c = arg;
  c->calls++;
  if (c->calls == 1) assert_true(terminate(c->name) >= 1); /* mid-transaction */
  char sql[128];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, 'f')", dbc_t("kv"));
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(500 + c->calls)));
}

static void killed_connection_replaced(void **state)
{
  (void)state;
  char name[32];
  snprintf(name, sizeof name, "fault%d", (int)getpid());
  tl_db *db = open_named(name, 2, NULL);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0);
  /* The retryable transaction loses its connection, then succeeds. */
  fault_ctx c = { .name = name };
  int rc = tl_db_transact(db, fault_fn, &c, NULL);
  if (rc) fail_msg("transact: %s", tl_error_last());
  assert_int_equal(c.calls, 2);
  tl_pool_stats st;
  tl_pool_stats_get(tl_db_pool(db), &st);
  assert_true(st.broken >= 1);
  assert_int_equal(st.in_use, 0);
  /* A plain statement reports the loss once; the next one reconnects. */
  assert_true(terminate(name) >= 1);
  rc = tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS);
  assert_int_equal(rc, TL_ECONNECT);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_CONNECTION_LOST);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0);
  assert_int_equal(tl_db_ping(db), 0);
  tl_db_close(db);
  assert_int_equal(dbc_kv_count(), 1);
}

static void hammer_32_threads_pool_of_4(void **state)
{
  (void)state;
  dbc_hammer_run(32, 25, 4);
}

typedef struct ser_ctx {
  pthread_barrier_t *bar;
  int calls;
  bool waited;
} ser_ctx;

static int ser_fn(tl_tx *tx, void *arg)
{
  ser_ctx *c = arg;
  c->calls++;
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT v FROM %s WHERE id = 1", dbc_t("kv"));
  tl_rows *r;
  int rc = tl_tx_query(tx, &r, sql, TL_NOARGS);
  if (rc) return rc;
  int64_t v = 0;
  if ((rc = tl_rows_next(r)) == 1) rc = tl_rows_int(r, 0, &v);
  tl_rows_free(r);
  if (rc < 0) return rc;
  if (!c->waited) { /* both read before either writes */
    c->waited = true;
    pthread_barrier_wait(c->bar);
  }
  char text[32];
  snprintf(text, sizeof text, "%lld", (long long)v + 1);
  snprintf(sql, sizeof sql, "UPDATE %s SET v = $1 WHERE id = 1", dbc_t("kv"));
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_text(text)));
}

static void *ser_thread(void *arg)
{
  tl_tx_opts o = { .isolation = TL_ISO_SERIALIZABLE, .max_attempts = 10,
                   .backoff = { .base_us = 2000 } };
  ser_ctx *c = arg;
  intptr_t rc = tl_db_transact(dbc_db, ser_fn, c, &o);
  return (void *)rc;
}

static void serialization_failure_retried(void **state)
{
  (void)state;
  dbc_exec("INSERT INTO %s (id, v) VALUES (1, '0')", dbc_t("kv"));
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, 2);
  ser_ctx a = { .bar = &bar }, b = { .bar = &bar };
  pthread_t ta, tb;
  pthread_create(&ta, NULL, ser_thread, &a);
  pthread_create(&tb, NULL, ser_thread, &b);
  void *ra, *rb;
  pthread_join(ta, &ra);
  pthread_join(tb, &rb);
  pthread_barrier_destroy(&bar);
  assert_int_equal((intptr_t)ra, 0);
  assert_int_equal((intptr_t)rb, 0);
  assert_true(a.calls + b.calls >= 3); /* one of them was retried */
  assert_int_equal(dbc_scalar("SELECT CAST(v AS BIGINT) FROM %s WHERE id = 1", dbc_t("kv")), 2);
}

static void statement_timeout_and_unreachable(void **state)
{
  (void)state;
  tl_db *db;
  tl_db_config cfg = { .url = pg_url, .statement_timeout_us = 100000 };
  assert_int_equal(tl_db_connect(&db, &cfg), 0);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT pg_sleep(3)", TL_NOARGS), TL_ETIMEOUT);
  assert_int_equal(tl_db_error_last_class(), TL_DB_ERR_TIMEOUT);
  assert_int_equal(tl_db_exec(db, NULL, "SELECT 1", TL_NOARGS), 0);
  tl_db_close(db);
  cfg = (tl_db_config){ .url = "postgres://bob:sekrit@127.0.0.1:1/nope" };
  db = NULL;
  assert_int_equal(tl_db_connect(&db, &cfg), TL_ECONNECT);
  assert_null(db);
  assert_non_null(strstr(tl_error_last(), "postgres://bob:***@127.0.0.1:1/nope"));
  assert_null(strstr(tl_error_last(), "sekrit"));
}

static void pg_specific_sql(void **state)
{
  (void)state;
  tl_rows *r;
  const char *sql = "SELECT $$ $2 ' $$ AS a, $tag$ $3 $tag$ AS b, $1::int8 * 2 AS c, "
                    "'{\"k\":1}'::jsonb ? 'k' AS d, E'\\' $4' AS e";
  assert_int_equal(tl_db_query(dbc_db, &r, sql, TL_ARGS(tl_int(21))), 0);
  assert_int_equal(tl_rows_next(r), 1);
  const char *s;
  assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
  assert_string_equal(s, " $2 ' ");
  assert_int_equal(tl_rows_text(r, 1, &s, NULL), 0);
  assert_string_equal(s, " $3 ");
  int64_t n;
  assert_int_equal(tl_rows_int(r, 2, &n), 0);
  assert_int_equal(n, 42);
  bool b;
  assert_int_equal(tl_rows_bool(r, 3, &b), 0);
  assert_true(b);
  assert_int_equal(tl_rows_text(r, 4, &s, NULL), 0);
  assert_string_equal(s, "' $4");
  tl_rows_free(r);
  /* Numeric and uuid come back as their text. */
  assert_int_equal(tl_db_query(dbc_db, &r, "SELECT 12345678901234567890.5::numeric, "
                               "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  assert_int_equal(tl_rows_column_type(r, 0), TL_TYPE_TEXT);
  assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
  assert_string_equal(s, "12345678901234567890.5");
  tl_rows_free(r);
  /* A long result abandoned early leaves a usable connection. */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(tl_db_query(dbc_db, &r, "SELECT g FROM generate_series(1, 200000) g", TL_NOARGS), 0);
    assert_int_equal(tl_rows_next(r), 1);
    tl_rows_free(r);
    assert_int_equal(dbc_scalar("SELECT 7"), 7);
  }
}

static void replicas_round_robin_and_fallback(void **state)
{
  (void)state;
  int pg_port = 21432;
  const char *colon = strrchr(pg_url, ':');
  if (colon) pg_port = atoi(colon + 1);
  dbc_proxy px = { .target_port = pg_port };
  dbc_proxy_start(&px);
  char reads[256], name[32], want[96];
  snprintf(reads, sizeof reads, "postgresql://postgres@127.0.0.1:%d/trellis_test, "
           "postgresql://postgres@127.0.0.1:1/trellis_test", px.port);
  snprintf(name, sizeof name, "rep%d", (int)getpid());
  tl_db *db = open_named(name, 2, reads);
  const char *sql = "SELECT current_setting('application_name')";
  snprintf(want, sizeof want, "trellis-%s-replica0", name);
  for (int i = 0; i < 6; i++) { /* replica1 is down: skipped, never an error */
    tl_rows *r;
    int rc = tl_db_query_ro(db, &r, sql, TL_NOARGS);
    if (rc) fail_msg("query_ro: %s", tl_error_last());
    assert_int_equal(tl_rows_next(r), 1);
    const char *s;
    assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
    assert_string_equal(s, want);
    tl_rows_free(r);
  }
  /* Writes and transactions go to the primary. */
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  tl_rows *r;
  assert_int_equal(tl_tx_query(tx, &r, sql, TL_NOARGS), 0);
  assert_int_equal(tl_rows_next(r), 1);
  const char *s;
  assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
  snprintf(want, sizeof want, "trellis-%s-primary", name);
  assert_string_equal(s, want);
  tl_rows_free(r);
  assert_int_equal(tl_tx_commit(tx), 0);
  /* The healthy replica goes down: reads fall back to the primary. */
  dbc_proxy_stop(&px);
  for (int i = 0; i < 3; i++) {
    int rc = tl_db_query_ro(db, &r, sql, TL_NOARGS);
    if (rc) fail_msg("query_ro after replica loss: %s", tl_error_last());
    assert_int_equal(tl_rows_next(r), 1);
    assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
    assert_string_equal(s, want);
    tl_rows_free(r);
  }
  /* It comes back: after the breaker's pause, reads return to it. */
  dbc_proxy_start(&px);
  tl_sleep_us(5200000);
  snprintf(want, sizeof want, "trellis-%s-replica0", name);
  bool back = false;
  for (int i = 0; i < 4 && !back; i++) {
    assert_int_equal(tl_db_query_ro(db, &r, sql, TL_NOARGS), 0);
    assert_int_equal(tl_rows_next(r), 1);
    assert_int_equal(tl_rows_text(r, 0, &s, NULL), 0);
    back = strcmp(s, want) == 0;
    tl_rows_free(r);
  }
  assert_true(back);
  tl_db_close(db);
  dbc_proxy_stop(&px);
}

/* ---- three processes migrating at once ------------------------------------ */

static char mig_sql[3][256];
static tl_migration mig_set[3];

static void mig_register(const char *tag)
{
  static char name[64];
  snprintf(name, sizeof name, "mig3_%s", tag);
  snprintf(mig_sql[0], sizeof mig_sql[0], "CREATE TABLE mig3_%s (id BIGINT PRIMARY KEY)", tag);
  snprintf(mig_sql[1], sizeof mig_sql[1], "SELECT pg_sleep(0.3); INSERT INTO mig3_%s VALUES (1)", tag);
  snprintf(mig_sql[2], sizeof mig_sql[2], "INSERT INTO mig3_%s VALUES (2)", tag);
  mig_set[0] = (tl_migration){ .version = 1, .name = "create", .sql = mig_sql[0] };
  mig_set[1] = (tl_migration){ .version = 2, .name = "slow insert", .sql = mig_sql[1] };
  mig_set[2] = (tl_migration){ .version = 3, .name = "insert", .sql = mig_sql[2] };
  tl_db_migrations_register(name, mig_set, 3);
}

static int mig_child(const char *url, const char *tag)
{
  tl_log_set_level(TL_LOG_WARN);
  mig_register(tag);
  tl_db *db;
  tl_db_config cfg = { .url = url };
  if (tl_db_connect(&db, &cfg) != 0) return 100;
  int applied = -1;
  char name[64];
  snprintf(name, sizeof name, "mig3_%s", tag);
  int rc = tl_db_migrate(db, name, &applied);
  if (rc) fprintf(stderr, "child migrate: %s\n", tl_error_last());
  tl_db_close(db);
  return rc ? 100 : applied;
}

static void listen_notify_and_reconnect(void **state)
{
  (void)state;
  char name[32], chan[48], payload[64];
  snprintf(name, sizeof name, "notify%d", (int)getpid());
  snprintf(chan, sizeof chan, "trellis_test_%d", (int)getpid());
  tl_db *db = open_named(name, 2, NULL);
  tl_db_listener *l = NULL;
  assert_int_equal(tl_db_listen(db, "bad-channel; DROP", &l), TL_EINVAL);
  assert_int_equal(tl_db_listen(db, chan, &l), 0);

  /* Nothing sent: a timeout, after about the time asked. */
  int64_t t0 = tl_time_mono_us();
  assert_int_equal(tl_db_listener_wait(l, 200000, payload, sizeof payload), 0);
  assert_true(tl_time_mono_us() - t0 >= 190000);

  assert_int_equal(tl_db_notify(db, chan, "hello"), 0);
  assert_int_equal(tl_db_listener_wait(l, 5000000, payload, sizeof payload), 1);
  assert_string_equal(payload, "hello");

  /* Sent inside a transaction: delivered at commit, not before. */
  tl_tx *tx;
  assert_int_equal(tl_db_begin(db, &tx), 0);
  assert_int_equal(tl_tx_exec(tx, NULL, "SELECT pg_notify($1, $2)",
                              TL_ARGS(tl_text(chan), tl_text("in-tx"))), 0);
  assert_int_equal(tl_db_listener_wait(l, 200000, payload, sizeof payload), 0);
  assert_int_equal(tl_tx_commit(tx), 0);
  assert_int_equal(tl_db_listener_wait(l, 5000000, payload, sizeof payload), 1);
  assert_string_equal(payload, "in-tx");

  /* The server kills the listener's connection: the loss is reported
   * once, then the listener subscribes again and hears new messages. */
  tl_db *admin = open_named("admin", 1, NULL);
  char app[96];
  snprintf(app, sizeof app, "trellis-%s-listener", name);
  assert_int_equal(tl_db_exec(admin, NULL, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = $1", TL_ARGS(tl_text(app))), 0);
  tl_db_close(admin);
  assert_int_equal(tl_db_listener_wait(l, 5000000, payload, sizeof payload), TL_ECONNECT);
  assert_int_equal(tl_db_listener_wait(l, 100000, payload, sizeof payload), 0);
  assert_int_equal(tl_db_notify(db, chan, "after"), 0);
  assert_int_equal(tl_db_listener_wait(l, 5000000, payload, sizeof payload), 1);
  assert_string_equal(payload, "after");
  tl_db_listener_close(l);
  tl_db_close(db);
}

static void three_processes_migrate_once(void **state)
{
  (void)state;
  char tag[32];
  snprintf(tag, sizeof tag, "%d", (int)getpid());
  pid_t kids[3];
  for (int i = 0; i < 3; i++) {
    kids[i] = fork();
    assert_true(kids[i] >= 0);
    if (kids[i] == 0) {
      tl_test_child_dies_with_parent();
      execl(self_path, self_path, "--migrate-child", pg_url, tag, (char *)NULL);
      _exit(101);
    }
  }
  int total = 0;
  for (int i = 0; i < 3; i++) {
    int st;
    assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
    assert_true(WIFEXITED(st));
    assert_true(WEXITSTATUS(st) <= 3);
    total += WEXITSTATUS(st);
  }
  assert_int_equal(total, 3);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM mig3_%s", tag), 2);
  assert_int_equal(dbc_scalar("SELECT COUNT(*) FROM trellis_schema_migrations WHERE set_name = 'mig3_%s'", tag), 3);
  dbc_exec("DROP TABLE mig3_%s", tag);
  dbc_exec("DELETE FROM trellis_schema_migrations WHERE set_name = 'mig3_%s'", tag);
}

int main(int argc, char **argv)
{
  if (argc == 4 && strcmp(argv[1], "--migrate-child") == 0) return mig_child(argv[2], argv[3]);
  self_path = argv[0];
  tl_test_service_url("TRELLIS_TEST_POSTGRES_URL", "postgres", pg_url, sizeof pg_url);
  int failed = dbc_run(pg_url, "db_contract_postgres");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup(killed_connection_replaced, dbc_clean),
    cmocka_unit_test_setup(hammer_32_threads_pool_of_4, dbc_clean),
    cmocka_unit_test_setup(serialization_failure_retried, dbc_clean),
    cmocka_unit_test_setup(statement_timeout_and_unreachable, dbc_clean),
    cmocka_unit_test_setup(pg_specific_sql, dbc_clean),
    cmocka_unit_test_setup(replicas_round_robin_and_fallback, dbc_clean),
    cmocka_unit_test_setup(three_processes_migrate_once, dbc_clean),
    cmocka_unit_test_setup(listen_notify_and_reconnect, dbc_clean),
  };
  dbc_url = pg_url;
  failed += cmocka_run_group_tests_name("db_postgres", tests, dbc_setup, dbc_teardown);
  return failed ? 1 : 0;
}
