/* CQRS on SQLite: buses with middleware and idempotency keys, the
 * aggregate helper (snapshots, retry on conflict), the seed's user
 * example end to end (CreateUser command -> UserCreated event ->
 * projection -> GetUser query) and the group commit scenarios of
 * cqrs_group_contract.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <cmocka.h>

#include <trellis/trellis.h>
#include <trellis/cqrs.h>
#include <trellis/eventstore.h>

#include "cqrs_group_contract.h"

static char path[256], url[300];
static tl_db *db;
static tl_es *es;

static void ok(int rc, const char *what)
{
  if (rc) fail_msg("%s: %s (%s)", what, tl_status_name(rc), tl_error_last());
}

static int user_apply(json_t *state, const tl_event *ev, void *ctx)
{
  int *applied = ctx;
  if (applied) (*applied)++;
  json_t *d = json_loads(ev->data, 0, NULL);
  if (!d) return TL_EPROTO;
  if (strcmp(ev->event_type, "UserCreated") == 0) {
    json_object_set(state, "name", json_object_get(d, "name"));
    json_object_set(state, "email", json_object_get(d, "email"));
  } else if (strcmp(ev->event_type, "EmailChanged") == 0) {
    json_object_set(state, "email", json_object_get(d, "email"));
  }
  json_decref(d);
  return 0;
}

static int decide_create(const json_t *state, int64_t version, const json_t *cmd,
                         tl_aggregate_emit *em, void *ctx)
{
  (void)state;
  (void)ctx;
  if (version > 0) return tl_error_set(TL_ECONFLICT, "user already exists");
  return tl_aggregate_emit_event(em, "UserCreated",
                                 json_pack("{s:O, s:O}", "name", json_object_get(cmd, "name"),
                                           "email", json_object_get(cmd, "email")));
}

static int decide_email(const json_t *state, int64_t version, const json_t *cmd,
                        tl_aggregate_emit *em, void *ctx)
{
  (void)ctx;
  if (version == 0) return tl_error_set(TL_ENOTFOUND, "no such user");
  if (json_equal(json_object_get(state, "email"), json_object_get(cmd, "email"))) return 0;
  return tl_aggregate_emit_event(em, "EmailChanged",
                                 json_pack("{s:O}", "email", json_object_get(cmd, "email")));
}

static tl_aggregate_def user_def = { .apply = user_apply, .snapshot_every = 5 };

static int create_user(const json_t *payload, json_t **result, void *ctx)
{
  (void)ctx;
  char stream[128];
  snprintf(stream, sizeof stream, "user-%s", json_string_value(json_object_get(payload, "user_id")));
  int64_t v;
  int rc = tl_aggregate_execute(es, &user_def, stream, payload, decide_create, NULL, &v);
  if (rc) return rc;
  *result = json_pack("{s:s, s:I}", "stream", stream, "version", (json_int_t)v);
  return 0;
}

static int require_fields(const json_t *payload, void *ctx)
{
  (void)ctx;
  const char *fields[] = { "user_id", "name", "email" };
  for (size_t i = 0; i < 3; i++)
    if (!json_is_string(json_object_get(payload, fields[i])))
      return tl_error_set(TL_EINVAL, "'%s' is required", fields[i]);
  return 0;
}

static int calls;
static int counting(const json_t *payload, json_t **result, void *ctx)
{
  (void)payload;
  (void)ctx;
  calls++;
  *result = json_pack("{s:i}", "call", calls);
  return 0;
}

static int order_mw(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  strcat((char *)ctx, "<");
  int rc = tl_cqrs_next_run(next, call);
  strcat((char *)ctx, ">");
  return rc;
}

static int short_circuit(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  (void)next;
  (void)ctx;
  if (json_is_true(json_object_get(call->payload, "deny")))
    return tl_error_set(TL_EPERM, "denied");
  return tl_cqrs_next_run(next, call);
}

static void command_bus(void **state)
{
  (void)state;
  tl_command_bus *cb;
  ok(tl_command_bus_new(&cb, &(tl_cqrs_config){ .db = db }), "new");
  ok(tl_command_bus_use_defaults(cb), "defaults");
  char trace[64] = "";
  ok(tl_command_bus_use(cb, order_mw, trace), "use");
  ok(tl_command_bus_use(cb, short_circuit, NULL), "use2");
  ok(tl_command_bus_register(cb, "CreateUser", create_user, NULL), "register");
  ok(tl_command_bus_validator(cb, "CreateUser", require_fields, NULL), "validator");
  ok(tl_command_bus_register(cb, "Count", counting, NULL), "register2");
  assert_int_equal(tl_command_bus_register(cb, "Count", counting, NULL), TL_ECONFLICT);
  char *result = NULL;
  ok(tl_command_bus_execute(cb, "CreateUser",
                            "{\"user_id\":\"123\",\"name\":\"John\",\"email\":\"john@example.com\"}",
                            &result), "create");
  assert_string_equal(result, "{\"stream\":\"user-123\",\"version\":1}");
  tl_free(result);
  assert_string_equal(trace, "<>");
  assert_int_equal(tl_command_bus_execute(cb, "CreateUser",
                                          "{\"user_id\":\"123\",\"name\":\"John\",\"email\":\"j@x\"}",
                                          &result), TL_ECONFLICT);
  assert_null(result);
  assert_int_equal(tl_command_bus_execute(cb, "CreateUser", "{\"user_id\":\"9\"}", &result), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "'name' is required"));
  assert_int_equal(tl_command_bus_execute(cb, "Nope", "{}", &result), TL_ENOTFOUND);
  assert_int_equal(tl_command_bus_execute(cb, "Count", "{not json", &result), TL_EINVAL);
  assert_int_equal(tl_command_bus_execute(cb, "Count", "{\"deny\":true}", &result), TL_EPERM);
  /* Idempotency: same key, same payload -> the first result, once. */
  tl_cqrs_exec_opts o = { .idempotency_key = "k-1" };
  calls = 0;
  ok(tl_command_bus_execute_opts(cb, "Count", "{\"a\":1,\"b\":2}", &o, &result), "idem1");
  assert_string_equal(result, "{\"call\":1}");
  tl_free(result);
  ok(tl_command_bus_execute_opts(cb, "Count", "{\"b\":2,\"a\":1}", &o, &result), "idem2");
  assert_string_equal(result, "{\"call\":1}");
  tl_free(result);
  assert_int_equal(calls, 1);
  assert_int_equal(tl_command_bus_execute_opts(cb, "Count", "{\"a\":2}", &o, &result), TL_ECONFLICT);
  /* Another bus on the same database remembers the key too. */
  tl_command_bus *cb2;
  ok(tl_command_bus_new(&cb2, &(tl_cqrs_config){ .db = db }), "new2");
  ok(tl_command_bus_use(cb2, tl_cqrs_mw_idempotency, NULL), "use idem");
  ok(tl_command_bus_register(cb2, "Count", counting, NULL), "register3");
  ok(tl_command_bus_execute_opts(cb2, "Count", "{\"a\":1,\"b\":2}", &o, &result), "idem3");
  assert_string_equal(result, "{\"call\":1}");
  tl_free(result);
  ok(tl_command_bus_execute(cb2, "Count", "{}", &result), "no key");
  assert_string_equal(result, "{\"call\":2}");
  tl_free(result);
  /* The JSON entry point: the same chain and idempotency, no text. */
  json_t *payload = json_pack("{s:i, s:i}", "a", 1, "b", 2), *res = NULL;
  ok(tl_command_bus_execute_json(cb, "Count", payload, &o, &res), "json idem");
  assert_int_equal(json_integer_value(json_object_get(res, "call")), 1);
  json_decref(res);
  json_object_set_new(payload, "a", json_integer(5));
  assert_int_equal(tl_command_bus_execute_json(cb, "Count", payload, &o, &res), TL_ECONFLICT);
  assert_null(res);
  assert_int_equal(tl_command_bus_execute_json(cb, "Count", NULL, NULL, &res), TL_EINVAL);
  json_decref(payload);
  /* Metrics were counted. */
  char *text;
  size_t len;
  ok(tl_metrics_render(tl_metrics_default(), &text, &len), "render");
  assert_non_null(strstr(text, "trellis_cqrs_calls_total{bus=\"command\",name=\"CreateUser\",outcome=\"ok\"} 1"));
  tl_free(text);
  tl_command_bus_free(cb2);
  tl_command_bus_free(cb);
}

static int decide_one(const json_t *st, int64_t v, const json_t *cmd, tl_aggregate_emit *em,
                      void *ctx)
{
  (void)st, (void)v, (void)cmd;
  (*(int *)ctx)++;
  return tl_aggregate_emit_event(em, "Happened", json_object());
}

static int batch_counted(tl_tx *tx, tl_aggregate_tx_item *items, size_t n, void *ctx)
{
  (void)tx, (void)items, (void)n;
  (*(int *)ctx)++;
  return 0;
}

/* Bad arguments of group commit are refused, naming what is wrong. */
static void group_bad_arguments(void **state)
{
  (void)state;
  tl_aggregate_group *g = NULL;
  assert_int_equal(tl_aggregate_group_new(NULL, NULL, &g), TL_EINVAL);
  assert_int_equal(tl_aggregate_group_new(es, &(tl_aggregate_group_config){ .max_batch = 1025 },
                                          &g), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "max_batch 1025 is out of range [1, 1024]"));
  assert_int_equal(tl_aggregate_group_new(es, &(tl_aggregate_group_config){ .max_inflight = 65 },
                                          &g), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "max_inflight 65 is out of range [1, 64]"));
  assert_null(g);
  /* in_tx_batch alone: a decision that runs alone would lose its writes. */
  ok(tl_aggregate_group_new(es, NULL, &g), "group");
  int decided = 0, batched = 0;
  tl_aggregate_def def = { .apply = user_apply };
  tl_aggregate_exec_opts o = { .group = g, .new_stream = true, .in_tx_batch = batch_counted,
                               .in_tx_ctx = &batched };
  assert_int_equal(tl_aggregate_execute_opts(es, &def, "badarg-1", NULL, decide_one, &decided, &o,
                                             NULL), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "in_tx_batch needs in_tx"));
  assert_int_equal(decided + batched, 0);
  tl_event_list *l;
  ok(tl_es_read_stream(es, "badarg-1", NULL, &l), "read");
  assert_int_equal(l->count, 0);
  tl_event_list_free(l);
  tl_aggregate_group_free(g);
}

/* ---- idempotency keys under concurrency ---------------------------------- */

/* A slow command: counts its runs, fails when told to. */
static atomic_int slow_runs;
static int slow_cmd(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  int n = atomic_fetch_add(&slow_runs, 1) + 1;
  tl_sleep_us(100000);
  if (json_is_true(json_object_get(p, "fail"))) return tl_error_set(TL_ECONSTRAINT, "told to fail");
  *result = json_pack("{s:i}", "run", n);
  return 0;
}

typedef struct idem_try {
  tl_command_bus *cb;
  const char *key, *payload;
  int rc;
  char *result;
} idem_try;

static void *idem_main(void *arg)
{
  idem_try *t = arg;
  tl_cqrs_exec_opts o = { .idempotency_key = t->key };
  t->rc = tl_command_bus_execute_opts(t->cb, "Slow", t->payload, &o, &t->result);
  return NULL;
}

/* Run `n` tries of Slow with one key at once. */
static void idem_race(tl_command_bus *cb, const char *key, const char *payload, idem_try *t,
                      size_t n)
{
  pthread_t th[8];
  for (size_t i = 0; i < n; i++) {
    t[i] = (idem_try){ cb, key, payload, -1, NULL };
    assert_int_equal(pthread_create(&th[i], NULL, idem_main, &t[i]), 0);
  }
  for (size_t i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static void idempotency_concurrent(void **state)
{
  (void)state;
  tl_command_bus *cb;
  ok(tl_command_bus_new(&cb, &(tl_cqrs_config){ .db = db }), "new");
  ok(tl_command_bus_use(cb, tl_cqrs_mw_idempotency, NULL), "use");
  ok(tl_command_bus_register(cb, "Slow", slow_cmd, NULL), "register");
  /* Tries that arrive while the first runs wait for its result: the
   * handler runs once and every try answers its result. */
  idem_try t[8];
  atomic_store(&slow_runs, 0);
  idem_race(cb, "race-1", "{\"x\":1}", t, 8);
  assert_int_equal(atomic_load(&slow_runs), 1);
  for (int i = 0; i < 8; i++) {
    if (t[i].rc) fail_msg("try %d: %s", i, tl_status_name(t[i].rc));
    assert_string_equal(t[i].result, "{\"run\":1}");
    tl_free(t[i].result);
  }
  /* A failure is not remembered: the claim is released and the next try
   * runs the handler again. */
  atomic_store(&slow_runs, 0);
  char *result = NULL;
  tl_cqrs_exec_opts o = { .idempotency_key = "fail-1" };
  assert_int_equal(tl_command_bus_execute_opts(cb, "Slow", "{\"fail\":true}", &o, &result),
                   TL_ECONSTRAINT);
  assert_non_null(strstr(tl_error_last(), "told to fail"));
  assert_int_equal(tl_command_bus_execute_opts(cb, "Slow", "{\"fail\":true}", &o, &result),
                   TL_ECONSTRAINT);
  assert_int_equal(atomic_load(&slow_runs), 2);
  /* A claim left by a call that died (no result, older than 30 s) is
   * taken over; a fresh one is waited for and its result returned. */
  int64_t now = tl_time_now_us();
  ok(tl_db_exec(db, NULL, "INSERT INTO trellis_cqrs_idempotency (name, ikey, payload_hash, "
                "result, created_us) SELECT 'Slow', 'stale-1', payload_hash, NULL, $1 FROM "
                "trellis_cqrs_idempotency WHERE name = 'Slow' AND ikey = 'race-1'",
                TL_ARGS(tl_int(now - 31000000))), "stale claim");
  atomic_store(&slow_runs, 0);
  o.idempotency_key = "stale-1";
  ok(tl_command_bus_execute_opts(cb, "Slow", "{\"x\":1}", &o, &result), "take over");
  assert_string_equal(result, "{\"run\":1}");
  tl_free(result);
  ok(tl_db_exec(db, NULL, "INSERT INTO trellis_cqrs_idempotency (name, ikey, payload_hash, "
                "result, created_us) SELECT 'Slow', 'fresh-1', payload_hash, NULL, $1 FROM "
                "trellis_cqrs_idempotency WHERE name = 'Slow' AND ikey = 'race-1'",
                TL_ARGS(tl_int(now))), "fresh claim");
  /* Its owner stores a result 300 ms later, from another thread. */
  idem_try waiter = { cb, "fresh-1", "{\"x\":1}", -1, NULL };
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, idem_main, &waiter), 0);
  tl_sleep_us(300000);
  ok(tl_db_exec(db, NULL, "UPDATE trellis_cqrs_idempotency SET result = '{\"run\":42}' "
                "WHERE name = 'Slow' AND ikey = 'fresh-1'", TL_NOARGS), "owner stores");
  pthread_join(th, NULL);
  ok(waiter.rc, "waiter");
  assert_string_equal(waiter.result, "{\"run\":42}");
  tl_free(waiter.result);
  assert_int_equal(atomic_load(&slow_runs), 1);
  tl_command_bus_free(cb);
}

typedef struct racer {
  int done, failed;
} racer;

static void *race_main(void *arg)
{
  racer *r = arg;
  for (int i = 0; i < 10; i++) {
    char email[64];
    snprintf(email, sizeof email, "{\"email\":\"e%d-%d@x\"}", (int)(uintptr_t)pthread_self() % 1000, i);
    json_t *cmd = json_loads(email, 0, NULL);
    int rc = tl_aggregate_execute(es, &(tl_aggregate_def){ .apply = user_apply, .max_attempts = 50, .snapshot_every = 5 },
                                  "user-race", cmd, decide_email, NULL, NULL);
    json_decref(cmd);
    if (rc == 0) r->done++;
    else r->failed++;
  }
  return NULL;
}

static void aggregate_retry_and_snapshots(void **state)
{
  (void)state;
  json_t *cmd = json_pack("{s:s, s:s}", "name", "Race", "email", "r@x");
  ok(tl_aggregate_execute(es, &user_def, "user-race", cmd, decide_create, NULL, NULL), "create");
  json_decref(cmd);
  pthread_t th[4];
  racer r[4] = { 0 };
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, race_main, &r[i]);
  int done = 0, failed = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    done += r[i].done;
    failed += r[i].failed;
  }
  assert_int_equal(failed, 0);
  int64_t v;
  ok(tl_es_stream_version(es, "user-race", &v), "version");
  assert_int_equal(v, 1 + done);
  /* Snapshots every 5 versions: a load applies at most 4 + 1 events and
   * gives the same state as folding everything. */
  int applied = 0;
  tl_aggregate_def counted = user_def;
  counted.ctx = &applied;
  json_t *st;
  int64_t sv;
  ok(tl_aggregate_load(es, &counted, "user-race", &st, &sv), "load");
  assert_int_equal(sv, v);
  assert_true(applied < 5);
  tl_aggregate_def full = { .apply = user_apply };
  json_t *st2;
  ok(tl_aggregate_load(es, &full, "user-race", &st2, &sv), "load full");
  assert_true(json_equal(st, st2));
  json_decref(st);
  json_decref(st2);
}

/* in_tx: a side table written in the append's transaction. */
static int reserve(tl_tx *tx, const json_t *state, const tl_event *ev, size_t n, void *ctx)
{
  (void)state;
  int *n_calls = ctx;
  (*n_calls)++;
  assert_true(n >= 1);
  assert_true(ev[0].version >= 1); /* appended: versions are filled */
  json_t *d = json_loads(ev[n - 1].data, 0, NULL);
  int rc = tl_tx_exec(tx, NULL, "INSERT INTO reserved (email) VALUES ($1)",
                      TL_ARGS(tl_text(json_string_value(json_object_get(d, "email")))));
  json_decref(d);
  return rc;
}

static void aggregate_options(void **state)
{
  (void)state;
  ok(tl_db_exec(db, NULL, "CREATE TABLE reserved (email TEXT PRIMARY KEY)", TL_NOARGS), "table");
  int in_tx_calls = 0;
  json_t *st = NULL, *cmd = json_pack("{s:s, s:s}", "name", "Ann", "email", "ann@example.com");
  int64_t v = 0;
  tl_aggregate_exec_opts o = { .metadata = "{\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"}",
                               .in_tx = reserve, .in_tx_ctx = &in_tx_calls, .state_out = &st };
  ok(tl_aggregate_execute_opts(es, &user_def, "user-opt1", cmd, decide_create, NULL, &o, &v), "create");
  assert_int_equal(v, 1);
  assert_int_equal(in_tx_calls, 1);
  assert_string_equal(json_string_value(json_object_get(st, "email")), "ann@example.com");
  json_decref(st);
  tl_event_list *l;
  ok(tl_es_get_events(es, "user-opt1", &l), "read");
  assert_int_equal(l->count, 1);
  assert_non_null(strstr(l->events[0].metadata, "4bf92f3577b34da6a3ce929d0e0e4736"));
  tl_event_list_free(l);
  /* The side write fails (the email is taken): nothing is appended, and
   * the unique violation is a constraint error, not a version conflict
   * to retry. */
  in_tx_calls = 0;
  assert_int_equal(tl_aggregate_execute_opts(es, &user_def, "user-opt2", cmd, decide_create, NULL,
                                             &o, &v), TL_ECONSTRAINT);
  assert_int_equal(in_tx_calls, 1);
  int64_t ver = -1;
  ok(tl_es_stream_version(es, "user-opt2", &ver), "version");
  assert_int_equal(ver, 0);
  /* A stale expected version (If-Match): TL_EPRECOND, nothing decided. */
  json_t *change = json_pack("{s:s}", "email", "ann2@example.com");
  tl_aggregate_exec_opts pre = { .has_expected = true, .expected_version = 0 };
  assert_int_equal(tl_aggregate_execute_opts(es, &user_def, "user-opt1", change, decide_email, NULL,
                                             &pre, &v), TL_EPRECOND);
  assert_non_null(strstr(tl_error_last(), "expected version 0, found 1"));
  pre.expected_version = 1;
  ok(tl_aggregate_execute_opts(es, &user_def, "user-opt1", change, decide_email, NULL, &pre, &v),
     "matching expected version");
  assert_int_equal(v, 2);
  json_decref(change);
  /* A new stream skips the load; an existing one is a conflict, not retried. */
  tl_aggregate_exec_opts fresh = { .new_stream = true };
  json_t *bob = json_pack("{s:s, s:s}", "name", "Bob", "email", "bob@example.com");
  ok(tl_aggregate_execute_opts(es, &user_def, "user-opt3", bob, decide_create, NULL, &fresh, &v),
     "new stream");
  assert_int_equal(v, 1);
  assert_int_equal(tl_aggregate_execute_opts(es, &user_def, "user-opt3", bob, decide_create, NULL,
                                             &fresh, &v), TL_ECONFLICT);
  ok(tl_es_stream_version(es, "user-opt3", &ver), "version");
  assert_int_equal(ver, 1);
  json_decref(bob);
  json_decref(cmd);
}

/* The read model: users(id, name, email), fed by a projection. */
static int users_create(tl_tx *tx, const tl_projection_tables *t, void *ctx)
{
  (void)ctx;
  char sql[200];
  snprintf(sql, sizeof sql, "CREATE TABLE %s (id VARCHAR(200) PRIMARY KEY, name TEXT, email TEXT)",
           tl_projection_table(t, "users"));
  return tl_tx_exec(tx, NULL, sql, TL_NOARGS);
}

static int users_handle(const tl_event *ev, tl_tx *tx, const tl_projection_tables *t, void *ctx)
{
  (void)ctx;
  json_t *d = json_loads(ev->data, 0, NULL);
  char sql[300];
  int rc = 0;
  const char *id = strchr(ev->aggregate_id, '-') + 1;
  if (strcmp(ev->event_type, "UserCreated") == 0) {
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, name, email) VALUES ($1, $2, $3)",
             tl_projection_table(t, "users"));
    rc = tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_text(id), tl_text(json_string_value(json_object_get(d, "name"))),
                                            tl_text(json_string_value(json_object_get(d, "email")))));
  } else if (strcmp(ev->event_type, "EmailChanged") == 0) {
    snprintf(sql, sizeof sql, "UPDATE %s SET email = $1 WHERE id = $2", tl_projection_table(t, "users"));
    rc = tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_text(json_string_value(json_object_get(d, "email"))), tl_text(id)));
  }
  json_decref(d);
  return rc;
}

static int get_user(const json_t *payload, json_t **result, void *ctx)
{
  (void)ctx;
  tl_rows *r;
  int rc = tl_db_query_ro(db, &r, "SELECT name, email FROM rm_users WHERE id = $1",
                          TL_ARGS(tl_text(json_string_value(json_object_get(payload, "user_id")))));
  if (rc) return rc;
  rc = tl_rows_next(r);
  if (rc == 1) {
    const char *name, *email;
    size_t l1, l2;
    tl_rows_text(r, 0, &name, &l1);
    tl_rows_text(r, 1, &email, &l2);
    *result = json_pack("{s:s%, s:s%}", "name", name, l1, "email", email, l2);
    rc = 0;
  } else if (rc == 0) {
    rc = tl_error_set(TL_ENOTFOUND, "no such user");
  }
  tl_rows_free(r);
  return rc;
}

static void seed_user_example(void **state)
{
  (void)state;
  const char *tables[] = { "users" };
  tl_projection_def pd = { .name = "users-read-model", .table_prefix = "rm", .tables = tables,
                           .ntables = 1, .filter = { .category = "user" }, .create = users_create,
                           .handle = users_handle, .poll_max_us = 20000 };
  tl_projection *p;
  ok(tl_projection_start(es, &pd, &p), "projection");
  ok(tl_projection_wait(p, 10000000), "wait");
  tl_query_bus *qb;
  ok(tl_query_bus_new(&qb, NULL), "qb");
  ok(tl_query_bus_use_defaults(qb), "defaults");
  ok(tl_query_bus_register(qb, "GetUser", get_user, NULL), "register");
  char *result;
  ok(tl_query_bus_execute(qb, "GetUser", "{\"user_id\":\"123\"}", &result), "GetUser");
  assert_string_equal(result, "{\"name\":\"John\",\"email\":\"john@example.com\"}");
  tl_free(result);
  assert_int_equal(tl_query_bus_execute(qb, "GetUser", "{\"user_id\":\"404\"}", &result), TL_ENOTFOUND);
  /* The query bus has no database: idempotency keys are refused. */
  assert_int_equal(tl_query_bus_execute_opts(qb, "GetUser", "{\"user_id\":\"123\"}",
                                             &(tl_cqrs_exec_opts){ .idempotency_key = "x" }, &result),
                   TL_ESTATE);
  ok(tl_projection_rebuild(p), "rebuild");
  ok(tl_projection_wait(p, 10000000), "wait");
  ok(tl_query_bus_execute(qb, "GetUser", "{\"user_id\":\"123\"}", &result), "GetUser again");
  assert_string_equal(result, "{\"name\":\"John\",\"email\":\"john@example.com\"}");
  tl_free(result);
  tl_query_bus_free(qb);
  tl_projection_stop(p);
}

static void remove_files(void)
{
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  snprintf(path, sizeof path, "/tmp/trellis-test-cqrs-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  remove_files();
  if (tl_db_connect(&db, &(tl_db_config){ .url = url, .max_connections = 8 }) ||
      tl_es_open(&es, &(tl_es_config){ .db = db })) {
    fprintf(stderr, "setup: %s\n", tl_error_last());
    return 1;
  }
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(command_bus),
    cmocka_unit_test(idempotency_concurrent),
    cmocka_unit_test(group_bad_arguments),
    cmocka_unit_test(aggregate_retry_and_snapshots),
    cmocka_unit_test(aggregate_options),
    cmocka_unit_test(seed_user_example),
  };
  int failed = cmocka_run_group_tests_name("cqrs_sqlite", tests, NULL, NULL);
  failed += cg_run(db, es, "cqrs_group_sqlite");
  tl_es_close(es);
  tl_db_close(db);
  remove_files();
  return failed ? 1 : 0;
}
