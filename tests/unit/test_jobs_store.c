/* The job store interface, driven directly: ordering, filters, unique
 * keys, every transition, leases and recovery, retention, inspection.
 * Written against struct tl__jobs_store only, so another store can run
 * the same cases by adding its opener to `stores`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <trellis/trellis.h>

#include "jobs/jobs_int.h"

typedef int (*store_open_fn)(tl__jobs_store **out, unsigned retain_dead);

static int open_memory(tl__jobs_store **out, unsigned retain_dead)
{
  return tl__jobs_store_memory_open(out, retain_dead);
}

static const struct {
  const char *name;
  store_open_fn open;
} stores[] = {
  { "memory", open_memory },
};

static store_open_fn current;

static tl__jobs_store *store(unsigned retain)
{
  tl__jobs_store *s = NULL;
  if (current(&s, retain) != 0)
    fail_msg("open: %s", tl_error_last());
  return s;
}

#define OPS(s) ((s)->ops)

static int64_t put(tl__jobs_store *s, const char *kind, const char *queue, int prio,
                   int64_t run_at, int64_t now, const char *key)
{
  char args[64];
  snprintf(args, sizeof args, "{\"p\":%d,\"t\":%lld}", prio, (long long)run_at);
  tl__job_new j = { .kind = kind, .queue = queue, .args = args, .args_len = strlen(args),
                    .unique_key = key, .priority = prio, .max_retries = 2, .run_at_us = run_at,
                    .created_us = now };
  int64_t id = 0;
  bool dup = true;
  if (OPS(s)->enqueue(s, &j, &id, &dup) != 0)
    fail_msg("enqueue: %s", tl_error_last());
  assert_true(id > 0);
  assert_false(dup);
  return id;
}

static int fetch(tl__jobs_store *s, int64_t now, tl__job *out)
{
  tl__fetch f = { .now_us = now, .lease_until_us = now + 1000 };
  return OPS(s)->fetch(s, &f, out);
}

static tl_job_state state(tl__jobs_store *s, int64_t id)
{
  tl_job_info *info;
  if (OPS(s)->get(s, id, &info) != 0)
    return 0;
  tl_job_state st = info->state;
  tl_job_info_free(info);
  return st;
}

static void order_is_priority_then_run_at_then_id(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  int64_t a = put(s, "k", "q", 0, 100, 100, NULL);
  int64_t b = put(s, "k", "q", 5, 100, 100, NULL);
  int64_t c = put(s, "k", "q", 0, 50, 100, NULL);  /* earlier run_at, later id */
  int64_t d = put(s, "k2", "q", 5, 100, 100, NULL); /* another lane, same key */
  int64_t e = put(s, "k", "q", 9, 500, 100, NULL);  /* not due until 500 */
  int64_t f = put(s, "k", "q2", 0, 100, 100, NULL);
  assert_int_equal(OPS(s)->next_due(s), 500);
  int64_t want[] = { b, d, c, a, f };
  tl__job j;
  for (int i = 0; i < 5; i++) {
    assert_int_equal(fetch(s, 200, &j), 1);
    assert_int_equal(j.id, want[i]);
    assert_int_equal(j.attempt, 1);
    assert_int_equal(OPS(s)->complete(s, &j, 200), 0);
  }
  assert_int_equal(fetch(s, 499, &j), 0);
  assert_int_equal(fetch(s, 500, &j), 1);
  assert_int_equal(j.id, e);
  assert_string_equal(j.args, "{\"p\":9,\"t\":500}");
  assert_string_equal(j.kind, "k");
  assert_int_equal(j.priority, 9);
  assert_int_equal(OPS(s)->next_due(s), INT64_MAX);
  assert_int_equal(OPS(s)->complete(s, &j, 600), 0);
  tl_jobs_stats stats;
  OPS(s)->stats(s, &stats);
  assert_int_equal(stats.completed, 6);
  assert_int_equal(stats.pending + stats.running, 0);
  OPS(s)->close(s);
}

static void filters_by_queue_and_excluded_kind(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  int64_t a = put(s, "mail", "default", 9, 0, 0, NULL);
  int64_t b = put(s, "report", "default", 1, 0, 0, NULL);
  int64_t c = put(s, "mail", "bulk", 5, 0, 0, NULL);
  const char *q[] = { "bulk" };
  const char *ex[] = { "mail" };
  tl__job j;
  tl__fetch f = { .now_us = 1, .lease_until_us = 100, .exclude_kinds = ex, .nexclude = 1 };
  assert_int_equal(OPS(s)->fetch(s, &f, &j), 1);
  assert_int_equal(j.id, b);
  assert_int_equal(OPS(s)->complete(s, &j, 1), 0);
  assert_int_equal(OPS(s)->fetch(s, &f, &j), 0);
  f = (tl__fetch){ .now_us = 1, .lease_until_us = 100, .queues = q, .nqueues = 1 };
  assert_int_equal(OPS(s)->fetch(s, &f, &j), 1);
  assert_int_equal(j.id, c);
  assert_string_equal(j.queue, "bulk");
  assert_int_equal(OPS(s)->complete(s, &j, 1), 0);
  assert_int_equal(OPS(s)->fetch(s, &f, &j), 0);
  assert_int_equal(state(s, a), TL_JOB_PENDING);
  OPS(s)->close(s);
}

static void unique_keys_while_pending_or_running(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  int64_t a = put(s, "k", "q", 0, 0, 0, "key");
  tl__job_new j = { .kind = "k", .queue = "other", .args = "1", .args_len = 1,
                    .unique_key = "key", .created_us = 0 };
  int64_t id;
  bool dup;
  assert_int_equal(OPS(s)->enqueue(s, &j, &id, &dup), 0);
  assert_true(dup);
  assert_int_equal(id, a);
  tl__job h;
  assert_int_equal(fetch(s, 1, &h), 1);
  assert_int_equal(OPS(s)->enqueue(s, &j, &id, &dup), 0);
  assert_true(dup); /* running still holds it */
  assert_string_equal(h.unique_key, "key");
  assert_int_equal((OPS(s)->fail)(s, &h, 1, 5, "x"), 0);
  assert_int_equal(OPS(s)->enqueue(s, &j, &id, &dup), 0);
  assert_true(dup); /* so does waiting for a retry */
  assert_int_equal(fetch(s, 5, &h), 1);
  assert_int_equal(OPS(s)->discard(s, &h, 6, TL_JOB_DISCARDED, "y"), 0);
  assert_int_equal(OPS(s)->enqueue(s, &j, &id, &dup), 0);
  assert_false(dup); /* discarded: free */
  assert_true(id > a);
  assert_int_equal(OPS(s)->retry(s, a, 7), TL_ECONFLICT);
  OPS(s)->close(s);
}

static void transitions(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  int64_t a = put(s, "k", "q", 0, 0, 0, NULL);
  tl__job h;
  /* fail: pending at retry_at with the error, attempt counted */
  assert_int_equal(fetch(s, 10, &h), 1);
  assert_int_equal((OPS(s)->fail)(s, &h, 10, 30, "first"), 0);
  tl_job_info *info;
  assert_int_equal(OPS(s)->get(s, a, &info), 0);
  assert_int_equal(info->state, TL_JOB_PENDING);
  assert_int_equal(info->attempt, 1);
  assert_int_equal(info->run_at_us, 30);
  assert_string_equal(info->last_error, "first");
  assert_int_equal(info->max_retries, 2);
  tl_job_info_free(info);
  assert_int_equal(fetch(s, 29, &h), 0);
  assert_int_equal(OPS(s)->next_due(s), 30);
  /* snooze: attempt not counted */
  assert_int_equal(fetch(s, 30, &h), 1);
  assert_int_equal(h.attempt, 2);
  assert_int_equal(OPS(s)->snooze(s, &h, 40), 0);
  assert_int_equal(fetch(s, 40, &h), 1);
  assert_int_equal(h.attempt, 2);
  /* a finished hold cannot finish again */
  assert_int_equal(OPS(s)->complete(s, &h, 41), 0);
  assert_int_equal(state(s, a), 0);
  assert_int_equal(OPS(s)->get(s, a, &info), TL_ENOTFOUND);

  /* discard keeps it, with the error; retry revives it from attempt 0 */
  int64_t b = put(s, "k", "q", 0, 0, 0, NULL);
  assert_int_equal(fetch(s, 50, &h), 1);
  assert_int_equal(OPS(s)->discard(s, &h, 51, TL_JOB_DISCARDED, "bad"), 0);
  assert_int_equal(OPS(s)->get(s, b, &info), 0);
  assert_int_equal(info->state, TL_JOB_DISCARDED);
  assert_int_equal(info->finished_us, 51);
  assert_string_equal(info->last_error, "bad");
  tl_job_info_free(info);
  assert_int_equal(OPS(s)->cancel(s, b, 52), TL_ESTATE);
  assert_int_equal(OPS(s)->retry(s, b, 60), 0);
  assert_int_equal(fetch(s, 60, &h), 1);
  assert_int_equal(h.id, b);
  assert_int_equal(h.attempt, 1);
  assert_int_equal(OPS(s)->retry(s, b, 60), TL_ESTATE); /* running */
  /* cancel of a running job raises its flag only */
  assert_int_equal(OPS(s)->cancel(s, b, 61), 0);
  assert_int_equal(atomic_load(h.cancel) & TL__CANCEL_USER, TL__CANCEL_USER);
  assert_int_equal(OPS(s)->get(s, b, &info), 0);
  assert_true(info->cancel_requested);
  tl_job_info_free(info);
  assert_int_equal(OPS(s)->discard(s, &h, 62, TL_JOB_CANCELLED, "cancelled"), 0);
  assert_int_equal(state(s, b), TL_JOB_CANCELLED);
  /* cancel of a pending job */
  int64_t c = put(s, "k", "q", 0, 1000, 0, NULL);
  assert_int_equal(OPS(s)->cancel(s, c, 70), 0);
  assert_int_equal(state(s, c), TL_JOB_CANCELLED);
  assert_int_equal(OPS(s)->next_due(s), INT64_MAX);
  assert_int_equal(OPS(s)->cancel(s, 12345, 70), TL_ENOTFOUND);
  /* retry of a waiting job runs it now */
  int64_t d = put(s, "k", "q", 0, 5000, 0, NULL);
  assert_int_equal(OPS(s)->retry(s, d, 80), 0);
  assert_int_equal(fetch(s, 80, &h), 1);
  assert_int_equal(h.id, d);
  assert_int_equal(OPS(s)->complete(s, &h, 80), 0);
  tl_jobs_stats stats;
  OPS(s)->stats(s, &stats);
  assert_int_equal(stats.cancelled, 2);
  assert_int_equal(stats.discarded, 0);
  assert_int_equal(stats.completed, 2);
  assert_int_equal(stats.retried, 1);
  assert_int_equal(stats.snoozed, 1);
  OPS(s)->close(s);
}

typedef struct lost_log {
  int retried, discarded;
  char kind[65];
} lost_log;
static lost_log lost_seen;

static void on_lost(void *ctx, const char *kind, bool discarded)
{
  lost_log *l = ctx;
  if (discarded)
    l->discarded++;
  else
    l->retried++;
  snprintf(l->kind, sizeof l->kind, "%s", kind);
}

static void release_and_lease_recovery(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  int64_t a = put(s, "k", "q", 0, 0, 0, NULL);
  tl__job h, h2;
  assert_int_equal(fetch(s, 10, &h), 1); /* lease until 1010 */
  /* release: back to pending at once, attempt not counted; the old
   * holder's result is refused */
  assert_int_equal(OPS(s)->release(s, &h, 20), 0);
  assert_int_equal(state(s, a), TL_JOB_PENDING);
  assert_int_equal(fetch(s, 20, &h2), 1);
  assert_int_equal(h2.id, a);
  assert_int_equal(h2.attempt, 1);
  assert_int_equal(OPS(s)->complete(s, &h, 21), TL_ESTATE);
  assert_int_equal(state(s, a), TL_JOB_RUNNING);

  /* heartbeat extends the lease; recovery takes expired ones only */
  tl__job *hp = &h2;
  assert_int_equal(OPS(s)->heartbeat(s, &hp, 1, 5000), 0);
  size_t n = 99;
  lost_seen = (lost_log){ 0 };
  assert_int_equal(OPS(s)->recover(s, 4999, on_lost, &lost_seen, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(OPS(s)->recover(s, 5001, on_lost, &lost_seen, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(lost_seen.retried, 1);
  assert_int_equal(lost_seen.discarded, 0);
  assert_string_equal(lost_seen.kind, "k");
  tl_job_info *info;
  assert_int_equal(OPS(s)->get(s, a, &info), 0);
  assert_int_equal(info->state, TL_JOB_PENDING);
  assert_int_equal(info->attempt, 1);
  assert_non_null(strstr(info->last_error, "lease expired"));
  tl_job_info_free(info);
  assert_int_equal((OPS(s)->fail)(s, &h2, 5002, 6000, "late"), TL_ESTATE);
  assert_non_null(strstr(tl_error_last(), "no longer held"));
  /* max_retries (2) used up by lost leases: discarded */
  for (int i = 0; i < 2; i++) {
    assert_int_equal(fetch(s, 6000 + i * 2000, &h), 1);
    assert_int_equal(OPS(s)->recover(s, 6000 + i * 2000 + 1001, on_lost, &lost_seen, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(OPS(s)->complete(s, &h, 0), TL_ESTATE);
  }
  assert_int_equal(state(s, a), TL_JOB_DISCARDED);
  assert_int_equal(lost_seen.retried, 2);   /* told which of them were discarded */
  assert_int_equal(lost_seen.discarded, 1);
  assert_int_equal(OPS(s)->release(s, &h, 0), TL_ESTATE);
  OPS(s)->close(s);
}

typedef struct ages {
  int n;
  char queue[4][16];
  int64_t run_at[4];
} ages;

static void on_age(void *ctx, const char *queue, int64_t run_at)
{
  ages *g = ctx;
  if (g->n < 4) {
    snprintf(g->queue[g->n], sizeof g->queue[0], "%s", queue);
    g->run_at[g->n++] = run_at;
  }
}

static void oldest_due_by_queue(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  put(s, "k", "q1", 0, 300, 100, NULL);
  put(s, "k", "q1", 5, 200, 100, NULL);  /* other priority, older */
  put(s, "k2", "q1", 0, 150, 100, NULL); /* other kind: another lane of q1 */
  put(s, "k", "q2", 0, 900, 100, NULL);  /* not due at 400 */
  ages g = { 0 };
  assert_int_equal(OPS(s)->oldest_due(s, 400, on_age, &g), 0);
  assert_int_equal(g.n, 1);
  assert_string_equal(g.queue[0], "q1");
  assert_int_equal(g.run_at[0], 150);
  /* A running job is not pending: the next oldest counts. */
  tl__job j;
  assert_int_equal(fetch(s, 400, &j), 1); /* priority 5 first: run_at 200 */
  g = (ages){ 0 };
  assert_int_equal(OPS(s)->oldest_due(s, 400, on_age, &g), 0);
  assert_int_equal(g.run_at[0], 150);
  assert_int_equal(fetch(s, 400, &j), 1);
  assert_int_equal(fetch(s, 400, &j), 1);
  g = (ages){ 0 };
  assert_int_equal(OPS(s)->oldest_due(s, 400, on_age, &g), 0);
  assert_int_equal(g.n, 0);
  g = (ages){ 0 };
  assert_int_equal(OPS(s)->oldest_due(s, 1000, on_age, &g), 0);
  assert_int_equal(g.n, 1);
  assert_string_equal(g.queue[0], "q2");
  assert_int_equal(g.run_at[0], 900);
  OPS(s)->close(s);
}

static void retention_of_dead_jobs(void **st)
{
  (void)st;
  tl__jobs_store *s = store(3);
  int64_t ids[5];
  for (int i = 0; i < 5; i++) {
    ids[i] = put(s, "k", "q", 0, 0, 0, NULL);
    tl__job h;
    assert_int_equal(fetch(s, 1, &h), 1);
    assert_int_equal(OPS(s)->discard(s, &h, 2, TL_JOB_DISCARDED, "x"), 0);
  }
  assert_int_equal(state(s, ids[0]), 0);
  assert_int_equal(state(s, ids[1]), 0);
  for (int i = 2; i < 5; i++)
    assert_int_equal(state(s, ids[i]), TL_JOB_DISCARDED);
  tl_jobs_stats stats;
  OPS(s)->stats(s, &stats);
  assert_int_equal(stats.discarded, 3);
  OPS(s)->close(s);
}

static void listing(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  for (int i = 0; i < 30; i++)
    put(s, i % 2 ? "odd" : "even", i % 3 ? "q" : "q3", i, 0, 0, NULL);
  tl_job_list *l;
  assert_int_equal(OPS(s)->list(s, NULL, &l), 0);
  assert_int_equal(l->count, 30);
  for (size_t i = 0; i < l->count; i++)
    assert_int_equal(l->items[i].id, (int64_t)i + 1);
  tl_job_list_free(l);
  assert_int_equal(OPS(s)->list(s, &(tl_job_filter){ .kind = "odd", .queue = "q3" }, &l), 0);
  assert_int_equal(l->count, 5); /* i = 3, 9, 15, 21, 27 */
  assert_int_equal(l->items[0].id, 4);
  assert_string_equal(l->items[0].kind, "odd");
  assert_string_equal(l->items[0].queue, "q3");
  assert_string_equal(l->items[0].args, "{\"p\":3,\"t\":0}");
  assert_null(l->items[0].last_error);
  tl_job_list_free(l);
  assert_int_equal(OPS(s)->list(s, &(tl_job_filter){ .after_id = 10, .limit = 4 }, &l), 0);
  assert_int_equal(l->count, 4);
  assert_int_equal(l->items[0].id, 11);
  assert_int_equal(l->items[3].id, 14);
  tl_job_list_free(l);
  tl__job h;
  assert_int_equal(fetch(s, 1, &h), 1);
  assert_int_equal(OPS(s)->list(s, &(tl_job_filter){ .state = TL_JOB_RUNNING }, &l), 0);
  assert_int_equal(l->count, 1);
  assert_int_equal(l->items[0].id, h.id);
  assert_int_equal(l->items[0].priority, 29);
  tl_job_list_free(l);
  assert_int_equal(OPS(s)->complete(s, &h, 1), 0);
  OPS(s)->close(s);
}

/* Many priorities and delayed jobs at once, checked against the
 * definition of the order. */
static void order_under_load(void **st)
{
  (void)st;
  tl__jobs_store *s = store(100);
  enum { N = 3000 };
  static int prio[N + 1];
  static int64_t run_at[N + 1];
  uint64_t r = 7;
  for (int i = 1; i <= N; i++) {
    r = r * 6364136223846793005u + 1442695040888963407u;
    prio[i] = (int)(r >> 60) - 8;
    run_at[i] = (int64_t)((r >> 20) % 1000);
    assert_int_equal(put(s, "k", "q", prio[i], run_at[i], (int64_t)((r >> 40) % 1000), NULL), i);
  }
  int64_t prev = 0;
  tl__job h;
  for (int n = 0; n < N; n++) {
    assert_int_equal(fetch(s, 1000, &h), 1);
    if (prev) {
      bool ok = prio[prev] > prio[h.id] ||
                (prio[prev] == prio[h.id] &&
                 (run_at[prev] < run_at[h.id] || (run_at[prev] == run_at[h.id] && prev < h.id)));
      if (!ok)
        fail_msg("job %lld after %lld", (long long)h.id, (long long)prev);
    }
    prev = h.id;
    assert_int_equal(OPS(s)->complete(s, &h, 1000), 0);
  }
  assert_int_equal(fetch(s, 1000, &h), 0);
  OPS(s)->close(s);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(order_is_priority_then_run_at_then_id),
    cmocka_unit_test(filters_by_queue_and_excluded_kind),
    cmocka_unit_test(oldest_due_by_queue),
    cmocka_unit_test(unique_keys_while_pending_or_running),
    cmocka_unit_test(transitions),
    cmocka_unit_test(release_and_lease_recovery),
    cmocka_unit_test(retention_of_dead_jobs),
    cmocka_unit_test(listing),
    cmocka_unit_test(order_under_load),
  };
  int failed = 0;
  for (size_t i = 0; i < sizeof stores / sizeof stores[0]; i++) {
    current = stores[i].open;
    fprintf(stderr, "store: %s\n", stores[i].name);
    failed += cmocka_run_group_tests_name(stores[i].name, tests, NULL, NULL);
  }
  return failed;
}
