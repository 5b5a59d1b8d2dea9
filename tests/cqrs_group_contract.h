/* Group commit of aggregate decisions: the same scenarios on every SQL
 * backend. A program includes this header, opens an event store on a
 * database of its own and calls cg_run(db, es, "name"), or, for a server,
 * returns cg_main_on_server(...). Each scenario
 * makes its own table, cg_<scenario>, and streams "<scenario>-<n>".
 *
 * Most scenarios are reservations: every decision creates a new stream
 * and, in the append's transaction, inserts its value into a table with
 * a unique column. Callbacks on library threads never assert (cmocka
 * cannot fail from another thread): they count what they saw wrong in
 * `bad`, which the test thread checks. */
#ifndef TRELLIS_TESTS_CQRS_GROUP_CONTRACT_H
#define TRELLIS_TESTS_CQRS_GROUP_CONTRACT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include <trellis/trellis.h>
#include <trellis/cqrs.h>
#include <trellis/db.h>
#include <trellis/eventstore.h>
#include <trellis/metrics.h>

#include "support.h"

#pragma GCC diagnostic ignored "-Wunused-function"

static tl_db *cg_db;
static tl_es *cg_es;

static void cg_must(int rc, const char *what)
{
  if (rc) fail_msg("%s: %s (%s)", what, tl_status_name(rc), tl_error_last());
}

/* Run fn(&threads[t]) on `n` threads and join them. */
typedef struct cg_thread {
  void *shared;
  int t;
  pthread_t th;
} cg_thread;

static void cg_spawn(int n, void *(*fn)(void *), void *shared)
{
  cg_thread *w = calloc((size_t)n, sizeof *w);
  assert_non_null(w);
  for (int i = 0; i < n; i++) {
    w[i] = (cg_thread){ .shared = shared, .t = i };
    assert_int_equal(pthread_create(&w[i].th, NULL, fn, &w[i]), 0);
  }
  for (int i = 0; i < n; i++) pthread_join(w[i].th, NULL);
  free(w);
}

/* The outcome of one tl_aggregate_execute_opts() call. */
typedef struct cg_call {
  int rc;
  int64_t version;
  char error[512];
} cg_call;

/* The aggregate: state {"count": events so far, "last": the last data}. */
static int cg_apply(json_t *state, const tl_event *ev, void *ctx)
{
  (void)ctx;
  json_t *d = json_loads(ev->data, 0, NULL);
  if (!d) return tl_error_set(TL_EPROTO, "event %lld: data is not JSON", (long long)ev->version);
  json_int_t n = json_integer_value(json_object_get(state, "count"));
  json_object_set_new(state, "count", json_integer(n + 1));
  json_object_set_new(state, "last", d);
  return 0;
}

static const tl_aggregate_def cg_def = { .apply = cg_apply };

/* ---- reservations --------------------------------------------------------- */

/* What in_tx and in_tx_batch saw, shared by every decision of a run. */
typedef struct cg_sink {
  char insert[96];           /* INSERT INTO cg_<scenario> (v) VALUES ($1) */
  const char *table;
  bool batch_fails;          /* in_tx_batch fails as a whole */
  atomic_int in_tx_calls;
  atomic_int batch_calls;    /* in_tx_batch calls */
  atomic_int max_rows;       /* most rows one in_tx_batch statement inserted */
  atomic_int bad;            /* callbacks that saw something wrong */
  atomic_int *slot_calls;    /* in_tx calls per decision */
  int nslots;
} cg_sink;

typedef enum cg_expect { CG_STORED, CG_TAKEN, CG_REFUSED } cg_expect;

/* A run of reservations: `threads` x `per` decisions, slot t * per + i. */
typedef struct cg_plan {
  const char *name;            /* streams "<name>-<slot>", table cg_<name> */
  int threads, per;
  bool odd_threads_collide;    /* their values are in the table already */
  int refuse_every;            /* in_tx_batch refuses slots divisible by it */
  bool use_batch;              /* in_tx_batch (in_tx stays set, as required) */
  bool batch_fails;
  tl_aggregate_group_config cfg;
  /* set by cg_plan_run */
  tl_aggregate_exec_opts opts;
  tl_metrics *metrics;         /* the group's, for the batch size histogram */
  cg_sink sink;
  cg_call *calls;
  char table[64];
} cg_plan;

static cg_expect cg_expected(const cg_plan *p, int slot)
{
  if (p->odd_threads_collide && (slot / p->per) % 2 == 1) return CG_TAKEN;
  if (p->refuse_every > 0 && slot % p->refuse_every == 0) return CG_REFUSED;
  return CG_STORED;
}

static void cg_names(const cg_plan *p, int slot, char *stream, char *value, size_t size)
{
  snprintf(stream, size, "%s-%d", p->name, slot);
  snprintf(value, size, cg_expected(p, slot) == CG_TAKEN ? "%s-taken-%d" : "%s-%d", p->name,
           slot);
}

/* The refusal in_tx_batch is asked for: both kinds come back as
 * TL_ECONSTRAINT (a TL_ECONFLICT of its own is no version conflict). */
static const char *cg_refusal(const cg_plan *p, int slot)
{
  if (cg_expected(p, slot) != CG_REFUSED) return NULL;
  return (slot / p->refuse_every) % 2 ? "conflict" : "constraint";
}

static int cg_decide_reserve(const json_t *state, int64_t version, const json_t *cmd,
                             tl_aggregate_emit *em, void *ctx)
{
  (void)ctx;
  if (version != 0 || json_object_size(state) != 0)
    return tl_error_set(TL_ESTATE, "a new stream was decided at version %lld", (long long)version);
  return tl_aggregate_emit_event(em, "Reserved", json_deep_copy(cmd));
}

/* Whether the appended events are one, at version 1, with a position;
 * gives their data (caller decrefs) and the slot it names. */
static json_t *cg_appended(const json_t *state, const tl_event *ev, size_t n, int *slot)
{
  if (n != 1 || ev[0].version != 1 || ev[0].position <= 0 || !json_is_object(state) ||
      json_object_size(state) != 0)
    return NULL;
  json_t *d = json_loads(ev[0].data, 0, NULL);
  *slot = (int)json_integer_value(json_object_get(d, "slot"));
  if (!json_is_string(json_object_get(d, "value"))) {
    json_decref(d);
    return NULL;
  }
  return d;
}

/* in_tx: insert the decision's value. */
static int cg_reserve(tl_tx *tx, const json_t *state, const tl_event *ev, size_t n, void *ctx)
{
  cg_sink *s = ctx;
  atomic_fetch_add(&s->in_tx_calls, 1);
  int slot = -1;
  json_t *d = cg_appended(state, ev, n, &slot);
  if (!d || slot < 0 || slot >= s->nslots) {
    atomic_fetch_add(&s->bad, 1);
    json_decref(d);
    return tl_error_set(TL_EINVAL, "in_tx: unexpected events");
  }
  atomic_fetch_add(&s->slot_calls[slot], 1);
  const char *value = json_string_value(json_object_get(d, "value"));
  int rc = tl_tx_exec(tx, NULL, s->insert, TL_ARGS(tl_text(value)));
  if (rc) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    rc = tl_error_set(rc, "reservation '%s': %s", value, msg);
  }
  json_decref(d);
  return rc;
}

/* in_tx_batch: refuse the items whose data asks for it, insert the rest
 * with one statement. */
static int cg_reserve_batch(tl_tx *tx, tl_aggregate_tx_item *items, size_t n, void *ctx)
{
  cg_sink *s = ctx;
  atomic_fetch_add(&s->batch_calls, 1);
  if (s->batch_fails) return tl_error_set(TL_EIO, "side store unavailable");
  json_t **data = calloc(n, sizeof *data);
  tl_value *args = calloc(n, sizeof *args);
  size_t cap = 64 + n * 16;
  char *sql = malloc(cap);
  if (!data || !args || !sql) {
    free(data);
    free(args);
    free(sql);
    return tl_error_set(TL_ENOMEM, "in_tx_batch: out of memory");
  }
  size_t k = 0, len = (size_t)snprintf(sql, cap, "INSERT INTO %s (v) VALUES ", s->table);
  for (size_t i = 0; i < n; i++) {
    int slot = -1;
    data[i] = cg_appended(items[i].state, items[i].events, items[i].n, &slot);
    if (!data[i] || strcmp(items[i].stream, items[i].events[0].aggregate_id) != 0) {
      atomic_fetch_add(&s->bad, 1);
      continue;
    }
    const char *value = json_string_value(json_object_get(data[i], "value"));
    const char *refuse = json_string_value(json_object_get(data[i], "refuse"));
    if (refuse) {
      items[i].rc = strcmp(refuse, "conflict") == 0 ? TL_ECONFLICT : TL_ECONSTRAINT;
      snprintf(items[i].error, sizeof items[i].error, "value '%s' refused", value);
      continue;
    }
    args[k++] = tl_text(value);
    len += (size_t)snprintf(sql + len, cap - len, "%s($%zu)", k > 1 ? ", " : "", k);
  }
  int rc = 0;
  if (k > 0) {
    rc = tl_tx_exec(tx, NULL, sql, args, k);
    int seen = atomic_load(&s->max_rows);
    while (rc == 0 && (int)k > seen && !atomic_compare_exchange_weak(&s->max_rows, &seen, (int)k)) {
    }
  }
  for (size_t i = 0; i < n; i++) json_decref(data[i]);
  free(data);
  free(args);
  free(sql);
  return rc;
}

static void *cg_reserve_main(void *arg)
{
  cg_thread *w = arg;
  cg_plan *p = w->shared;
  for (int i = 0; i < p->per; i++) {
    int slot = w->t * p->per + i;
    char stream[64], value[64];
    cg_names(p, slot, stream, value, sizeof stream);
    json_t *cmd = json_pack("{s:i, s:s, s:s*}", "slot", slot, "value", value, "refuse",
                            cg_refusal(p, slot));
    cg_call *c = &p->calls[slot];
    c->rc = tl_aggregate_execute_opts(cg_es, &cg_def, stream, cmd, cg_decide_reserve, NULL,
                                      &p->opts, &c->version);
    if (c->rc) snprintf(c->error, sizeof c->error, "%s", tl_error_last());
    json_decref(cmd);
  }
  return NULL;
}

/* Make the table (with the taken values), run every decision through a
 * group of its own, and free the group. */
static void cg_plan_run(cg_plan *p)
{
  int total = p->threads * p->per;
  snprintf(p->table, sizeof p->table, "cg_%s", p->name);
  char sql[160];
  snprintf(sql, sizeof sql, "CREATE TABLE %s (v VARCHAR(100) PRIMARY KEY)", p->table);
  cg_must(tl_db_exec(cg_db, NULL, sql, TL_NOARGS), sql);
  snprintf(p->sink.insert, sizeof p->sink.insert, "INSERT INTO %s (v) VALUES ($1)", p->table);
  p->sink.table = p->table;
  p->sink.batch_fails = p->batch_fails;
  p->sink.nslots = total;
  p->sink.slot_calls = calloc((size_t)total, sizeof *p->sink.slot_calls);
  p->calls = calloc((size_t)total, sizeof *p->calls);
  assert_non_null(p->sink.slot_calls);
  assert_non_null(p->calls);
  for (int slot = 0; slot < total; slot++) {
    if (cg_expected(p, slot) != CG_TAKEN) continue;
    char stream[64], value[64];
    cg_names(p, slot, stream, value, sizeof stream);
    cg_must(tl_db_exec(cg_db, NULL, p->sink.insert, TL_ARGS(tl_text(value))), "taken value");
  }
  cg_must(tl_metrics_new(&p->metrics), "metrics");
  p->cfg.metrics = p->metrics;
  tl_aggregate_group *g;
  cg_must(tl_aggregate_group_new(cg_es, &p->cfg, &g), "group");
  p->opts = (tl_aggregate_exec_opts){ .new_stream = true, .group = g, .in_tx = cg_reserve,
                                      .in_tx_ctx = &p->sink,
                                      .in_tx_batch = p->use_batch ? cg_reserve_batch : NULL };
  cg_spawn(p->threads, cg_reserve_main, p);
  tl_aggregate_group_free(g);
}

static void cg_plan_free(cg_plan *p)
{
  tl_metrics_free(p->metrics);
  free(p->sink.slot_calls);
  free(p->calls);
}

/* Every call returned its own outcome; every stored decision has its
 * event, and nothing of a refused one is stored. Returns how many were
 * stored. */
static int cg_check_calls_and_streams(const cg_plan *p)
{
  int total = p->threads * p->per, stored = 0;
  assert_int_equal(atomic_load(&p->sink.bad), 0);
  for (int slot = 0; slot < total; slot++) {
    char stream[64], value[64], want[128];
    cg_names(p, slot, stream, value, sizeof stream);
    const cg_call *c = &p->calls[slot];
    cg_expect e = cg_expected(p, slot);
    if (e == CG_STORED) {
      if (c->rc != 0)
        fail_msg("%s: %s (%s)", stream, tl_status_name(c->rc), c->error);
      assert_int_equal(c->version, 1);
      stored++;
    } else {
      snprintf(want, sizeof want, e == CG_TAKEN ? "reservation '%s'" : "value '%s' refused", value);
      if (c->rc != TL_ECONSTRAINT || !strstr(c->error, want))
        fail_msg("%s: %s (%s), expected TL_ECONSTRAINT with \"%s\"", stream,
                 tl_status_name(c->rc), c->error, want);
    }
    tl_event_list *l;
    cg_must(tl_es_read_stream(cg_es, stream, NULL, &l), stream);
    size_t count = l->count;
    json_t *d = count ? json_loads(l->events[0].data, 0, NULL) : NULL;
    tl_event_list_free(l);
    assert_int_equal(count, e == CG_STORED ? 1 : 0);
    if (d) assert_string_equal(json_string_value(json_object_get(d, "value")), value);
    json_decref(d);
  }
  return stored;
}

/* The table holds one row per stored decision plus the taken values, and
 * none of a refused decision. */
static void cg_check_rows(const cg_plan *p)
{
  int total = p->threads * p->per, rows = 0, want_rows = 0;
  int *seen = calloc((size_t)total, sizeof *seen);
  assert_non_null(seen);
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT v FROM %s", p->table);
  tl_rows *r;
  cg_must(tl_db_query(cg_db, &r, sql, TL_NOARGS), sql);
  int rc;
  while ((rc = tl_rows_next(r)) == 1) {
    const char *v;
    size_t len;
    cg_must(tl_rows_text(r, 0, &v, &len), "row");
    const char *dash = memrchr(v, '-', len);
    int slot = dash ? atoi(dash + 1) : -1;
    if (slot >= 0 && slot < total) seen[slot]++;
    rows++;
  }
  tl_rows_free(r);
  assert_int_equal(rc, 0);
  for (int slot = 0; slot < total; slot++) {
    int want = cg_expected(p, slot) == CG_REFUSED ? 0 : 1;
    want_rows += want;
    if (seen[slot] != want)
      fail_msg("%s: %d rows for decision %d, expected %d", p->table, seen[slot], slot, want);
  }
  free(seen);
  assert_int_equal(rows, want_rows);
}

/* The batch size histogram of the plan's group: each committed decision
 * is counted once, in the transaction that committed it, and fewer
 * transactions than decisions means that some committed more than one. */
static void cg_check_batch_sizes(const cg_plan *p, int stored)
{
  char *text;
  size_t len;
  cg_must(tl_metrics_render(p->metrics, &text, &len), "render");
  const char *s = strstr(text, "\ntrellis_cqrs_group_commit_batch_size_sum ");
  const char *c = strstr(text, "\ntrellis_cqrs_group_commit_batch_size_count ");
  double sum = s ? strtod(strchr(s + 1, ' '), NULL) : -1;
  double count = c ? strtod(strchr(c + 1, ' '), NULL) : -1;
  tl_free(text);
  if (sum != stored || count < 1 || count >= sum)
    fail_msg("trellis_cqrs_group_commit_batch_size: sum %g, count %g for %d committed decisions",
             sum, count, stored);
}

/* (a) 16 threads x 50 new streams, each with an in_tx insert, through a
 * group: all stored, one row each, and decisions shared transactions. */
static void cg_group_commit(void **state)
{
  (void)state;
  cg_plan p = { .name = "cga", .threads = 16, .per = 50 };
  cg_plan_run(&p);
  int stored = cg_check_calls_and_streams(&p);
  assert_int_equal(stored, 16 * 50);
  cg_check_rows(&p);
  cg_check_batch_sizes(&p, stored);
  cg_plan_free(&p);
}

/* (b) Half of the threads reserve values that are taken: only their
 * decisions fail, with their own insert's message, and the decisions
 * they shared batches with are committed. One batch at a time, so that
 * an in_tx that ran twice for a stored decision can only mean its batch
 * ran again after a refusal. */
static void cg_in_tx_refusals(void **state)
{
  (void)state;
  cg_plan p = { .name = "cgb", .threads = 16, .per = 20, .odd_threads_collide = true,
                .cfg = { .max_inflight = 1 } };
  cg_plan_run(&p);
  int stored = cg_check_calls_and_streams(&p);
  assert_int_equal(stored, 8 * 20);
  cg_check_rows(&p);
  int rerun = 0;
  for (int slot = 0; slot < 16 * 20; slot++)
    if (cg_expected(&p, slot) == CG_STORED && atomic_load(&p.sink.slot_calls[slot]) > 1) rerun++;
  assert_true(rerun > 0);
  cg_check_batch_sizes(&p, stored);
  cg_plan_free(&p);
}

/* (c) in_tx_batch refuses every third decision (as a constraint or as a
 * conflict of its own) and inserts the others with one statement. */
static void cg_in_tx_batch(void **state)
{
  (void)state;
  cg_plan p = { .name = "cgc", .threads = 16, .per = 20, .refuse_every = 3, .use_batch = true };
  cg_plan_run(&p);
  int stored = cg_check_calls_and_streams(&p);
  assert_int_equal(stored, 16 * 20 - (16 * 20 + 2) / 3);
  cg_check_rows(&p);
  assert_true(atomic_load(&p.sink.batch_calls) > 0);
  assert_true(atomic_load(&p.sink.max_rows) > 1);
  assert_int_equal(atomic_load(&p.sink.in_tx_calls), 0); /* no batch failed as a whole */
  cg_plan_free(&p);
}

/* (e) in_tx_batch fails every batch as a whole: each decision then runs
 * alone with in_tx, once, and gets its own outcome. */
static void cg_whole_batch_failure(void **state)
{
  (void)state;
  cg_plan p = { .name = "cge", .threads = 16, .per = 10, .odd_threads_collide = true,
                .use_batch = true, .batch_fails = true };
  cg_plan_run(&p);
  int stored = cg_check_calls_and_streams(&p);
  assert_int_equal(stored, 8 * 10);
  cg_check_rows(&p);
  assert_true(atomic_load(&p.sink.batch_calls) > 0);
  assert_int_equal(atomic_load(&p.sink.in_tx_calls), 16 * 10);
  for (int slot = 0; slot < 16 * 10; slot++)
    assert_int_equal(atomic_load(&p.sink.slot_calls[slot]), 1);
  cg_plan_free(&p);
}

/* ---- one stream, many writers ------------------------------------------- */

typedef struct cg_counter {
  const char *stream;
  int per;
  tl_aggregate_group *group;
  atomic_int decides;
  cg_call *calls;
} cg_counter;

/* One event {"n": version + 1}; the state must be the fold of them all. */
static int cg_decide_count(const json_t *state, int64_t version, const json_t *cmd,
                           tl_aggregate_emit *em, void *ctx)
{
  (void)cmd;
  cg_counter *k = ctx;
  atomic_fetch_add(&k->decides, 1);
  if (json_integer_value(json_object_get(state, "count")) != version)
    return tl_error_set(TL_ESTATE, "state folds %lld events at version %lld",
                        (long long)json_integer_value(json_object_get(state, "count")),
                        (long long)version);
  return tl_aggregate_emit_event(em, "Counted", json_pack("{s:I}", "n", (json_int_t)version + 1));
}

static void *cg_count_main(void *arg)
{
  cg_thread *w = arg;
  cg_counter *k = w->shared;
  tl_aggregate_def def = { .apply = cg_apply, .max_attempts = 100000 };
  tl_aggregate_exec_opts o = { .group = k->group };
  for (int i = 0; i < k->per; i++) {
    cg_call *c = &k->calls[w->t * k->per + i];
    c->rc = tl_aggregate_execute_opts(cg_es, &def, k->stream, NULL, cg_decide_count, k, &o,
                                      &c->version);
    if (c->rc) snprintf(c->error, sizeof c->error, "%s", tl_error_last());
  }
  return NULL;
}

static int cg_cmp_i64(const void *a, const void *b)
{
  int64_t x = ((const cg_call *)a)->version, y = ((const cg_call *)b)->version;
  return (x > y) - (x < y);
}

/* (d) Many threads append to the same existing stream through a group:
 * decisions of one batch that saw the same version conflict, go back to
 * their decide loop, and all succeed in the end, each at its own
 * version. */
static void cg_version_conflicts(void **state)
{
  (void)state;
  enum { THREADS = 8, PER = 25, CALLS = THREADS * PER };
  cg_counter k = { .stream = "cgd-counter", .per = PER };
  k.calls = calloc(CALLS, sizeof *k.calls);
  assert_non_null(k.calls);
  int64_t v;
  cg_must(tl_aggregate_execute_opts(cg_es, &cg_def, k.stream, NULL, cg_decide_count, &k,
                                    &(tl_aggregate_exec_opts){ .new_stream = true }, &v),
          "create");
  assert_int_equal(v, 1);
  atomic_store(&k.decides, 0);
  cg_must(tl_aggregate_group_new(cg_es, NULL, &k.group), "group");
  cg_spawn(THREADS, cg_count_main, &k);
  tl_aggregate_group_free(k.group);
  for (int i = 0; i < CALLS; i++)
    if (k.calls[i].rc)
      fail_msg("call %d: %s (%s)", i, tl_status_name(k.calls[i].rc), k.calls[i].error);
  /* Conflicts happened and were retried, not lost. */
  assert_true(atomic_load(&k.decides) > CALLS);
  /* Each call got a version of its own: 2 .. CALLS + 1. */
  qsort(k.calls, CALLS, sizeof *k.calls, cg_cmp_i64);
  for (int i = 0; i < CALLS; i++) assert_int_equal(k.calls[i].version, i + 2);
  cg_must(tl_es_stream_version(cg_es, k.stream, &v), "version");
  assert_int_equal(v, CALLS + 1);
  tl_event_list *l;
  cg_must(tl_es_read_stream(cg_es, k.stream, NULL, &l), "read");
  assert_int_equal(l->count, CALLS + 1);
  for (size_t i = 0; i < l->count; i++) {
    json_t *d = json_loads(l->events[i].data, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(d, "n")), l->events[i].version);
    json_decref(d);
  }
  tl_event_list_free(l);
  free(k.calls);
}

/* Run the scenarios on `es` (over `db`, where their tables go). */
static int cg_run(tl_db *db, tl_es *es, const char *name)
{
  cg_db = db;
  cg_es = es;
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(cg_group_commit),
    cmocka_unit_test(cg_in_tx_refusals),
    cmocka_unit_test(cg_in_tx_batch),
    cmocka_unit_test(cg_version_conflicts),
    cmocka_unit_test(cg_whole_batch_failure),
  };
  return _cmocka_run_group_tests(name, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

/* The whole program for a server (PostgreSQL, MariaDB): the scenarios in
 * a database of the run's own, on the server scripts/services gives as
 * `key`. The process's exit status. */
static inline int cg_main_on_server(const char *key, const char *service, const char *suite)
{
  tl_log_set_level(TL_LOG_ERROR);
  char base[512], name[64], url[600];
  tl_test_service_url(key, service, base, sizeof base);
  snprintf(name, sizeof name, "trellis_cqrs_%d", (int)getpid());
  if (tl_test_make_database(base, name, url, sizeof url) != 0)
    return 1;
  tl_db *db = NULL;
  tl_es *es = NULL;
  tl_db_config dc = { .url = url, .max_connections = 8, .acquire_timeout_us = 30000000 };
  int failed = 1;
  if (tl_db_connect(&db, &dc) != 0 || tl_es_open(&es, &(tl_es_config){ .db = db }) != 0)
    fprintf(stderr, "setup: %s\n", tl_error_last());
  else
    failed = cg_run(db, es, suite);
  tl_es_close(es);
  tl_db_close(db);
  tl_test_drop_database(base, name);
  return failed ? 1 : 0;
}

#endif
