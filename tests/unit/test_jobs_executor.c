/* The executor on the in-memory store: ordering, retries and backoff,
 * discards, snoozes, timeouts, cancellation, unique keys, per-kind
 * concurrency, graceful shutdown, and 50,000 jobs each run once. Timing
 * that matters runs on a fake clock the test moves by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/trellis.h>
#include <trellis/jobs.h>

#define T0 INT64_C(1767225600000000) /* 2026-01-01T00:00:00Z */

static _Atomic int64_t fake_now = T0;
static int64_t fake_clock(void *ctx)
{
  (void)ctx;
  return atomic_load(&fake_now);
}

/* Poll `cond` every millisecond for up to `ms`. */
#define WAIT_UNTIL(cond, ms)                                  \
  do {                                                        \
    for (int w_ = 0; w_ < (ms) && !(cond); w_++)              \
      tl_sleep_us(1000);                                      \
    if (!(cond))                                              \
      fail_msg("timed out waiting for: %s", #cond);           \
  } while (0)

static tl_metrics *reg;

static tl_jobs *open_ex(unsigned workers, bool paused)
{
  atomic_store(&fake_now, T0);
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = workers, .paused = paused, .clock = fake_clock,
                         .poll_us = 20000, .metrics = reg };
  int rc = tl_jobs_open(&ex, &cfg);
  if (rc)
    fail_msg("tl_jobs_open: %s", tl_error_last());
  return ex;
}

static tl_job_info *info_of(tl_jobs *ex, int64_t id)
{
  tl_job_info *info = NULL;
  if (tl_jobs_get(ex, id, &info) != 0)
    fail_msg("tl_jobs_get(%lld): %s", (long long)id, tl_error_last());
  return info;
}

static tl_job_state state_of(tl_jobs *ex, int64_t id)
{
  tl_job_info *info = NULL;
  if (tl_jobs_get(ex, id, &info) != 0)
    return 0; /* completed jobs are not kept */
  tl_job_state s = info->state;
  tl_job_info_free(info);
  return s;
}

static uint64_t stat_completed(tl_jobs *ex)
{
  tl_jobs_stats st;
  assert_int_equal(tl_jobs_stats_get(ex, &st), 0);
  return st.completed;
}

/* ---- ordering ----------------------------------------------------------------- */

static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;
static int order[64], norder;

static int record(const char *args, tl_job_ctx *ctx)
{
  (void)ctx;
  int n = -1;
  sscanf(args, "{\"n\":%d}", &n);
  pthread_mutex_lock(&order_mu);
  order[norder++] = n;
  pthread_mutex_unlock(&order_mu);
  return TL_JOB_OK;
}

static void submit_n(tl_jobs *ex, const char *kind, int n, const tl_job_opts *o)
{
  char args[32];
  snprintf(args, sizeof args, "{\"n\":%d}", n);
  if (tl_jobs_submit(ex, kind, args, o) != 0)
    fail_msg("submit %d: %s", n, tl_error_last());
}

static void priority_then_run_at_then_fifo(void **state)
{
  (void)state;
  norder = 0;
  tl_jobs *ex = open_ex(1, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = record }), 0);
  /* Priorities 0, 5, 0, 5, 10, 0 submitted at the same instant. */
  int prio[] = { 0, 5, 0, 5, 10, 0 };
  for (int i = 0; i < 6; i++)
    submit_n(ex, "rec", i, &(tl_job_opts){ .priority = prio[i] });
  /* Priority 1: a job delayed to +10 s submitted first, then two plain
   * ones at +20 s and +30 s: earliest run_at first, whatever the id. */
  submit_n(ex, "rec", 10, &(tl_job_opts){ .priority = 1, .delay_us = 10000000 });
  atomic_store(&fake_now, T0 + 20000000);
  submit_n(ex, "rec", 11, &(tl_job_opts){ .priority = 1 });
  atomic_store(&fake_now, T0 + 30000000);
  submit_n(ex, "rec", 12, &(tl_job_opts){ .priority = 1 });
  /* Delayed past now: must not run yet, priority or not. */
  submit_n(ex, "rec", 99, &(tl_job_opts){ .priority = 100, .delay_us = 3600000000 });
  tl_jobs_resume(ex);
  WAIT_UNTIL(stat_completed(ex) == 9, 5000);
  int want[] = { 4, 1, 3, 10, 11, 12, 0, 2, 5 };
  pthread_mutex_lock(&order_mu);
  assert_int_equal(norder, 9);
  for (int i = 0; i < 9; i++)
    assert_int_equal(order[i], want[i]);
  pthread_mutex_unlock(&order_mu);
  /* The delayed one (submitted at +30 s) runs once its time comes. */
  atomic_store(&fake_now, T0 + 3629000000);
  tl_jobs_wake(ex);
  tl_sleep_us(30000);
  assert_int_equal(stat_completed(ex), 9);
  atomic_store(&fake_now, T0 + 3630000000);
  tl_jobs_wake(ex);
  WAIT_UNTIL(stat_completed(ex) == 10, 5000);
  assert_int_equal(order[9], 99);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- retries, backoff, discard ------------------------------------------------------ */

static atomic_int calls;

/* Fails every time; pauses the executor before returning so the test can
 * look at the job between attempts whatever the jittered delay was. */
static int always_fails(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  atomic_fetch_add(&calls, 1);
  tl_jobs_pause(tl_job_worker_ctx(ctx));
  return tl_job_error(ctx, "boom %u", tl_job_attempt(ctx));
}

static void retries_back_off_then_discard_with_last_error(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  tl_jobs *ex = open_ex(2, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "flaky", .execute = always_fails,
                                                      .ctx = ex, .max_retries = 3,
                                                      .retry_delay_ms = 1000 }), 0);
  int64_t id;
  assert_int_equal(tl_jobs_submit(ex, "flaky", "{}", &(tl_job_opts){ .id_out = &id }), 0);
  for (int attempt = 1; attempt <= 4; attempt++) {
    WAIT_UNTIL(atomic_load(&calls) == attempt && state_of(ex, id) != TL_JOB_RUNNING, 5000);
    tl_job_info *info = info_of(ex, id);
    char want[32];
    snprintf(want, sizeof want, "boom %d", attempt);
    assert_string_equal(info->last_error, want);
    assert_int_equal(info->attempt, attempt);
    if (attempt < 4) {
      /* Full jitter: a delay in [0, 1 s * 2^(attempt-1)]. */
      assert_int_equal(info->state, TL_JOB_PENDING);
      int64_t delay = info->run_at_us - atomic_load(&fake_now);
      assert_in_range(delay, 0, INT64_C(1000000) << (attempt - 1));
      atomic_store(&fake_now, info->run_at_us);
    } else {
      assert_int_equal(info->state, TL_JOB_DISCARDED);
      assert_true(info->finished_us > 0);
    }
    tl_job_info_free(info);
    tl_jobs_resume(ex);
  }
  tl_sleep_us(50000);
  assert_int_equal(atomic_load(&calls), 4); /* 1 + max_retries, no more */

  /* Manual retry: a fresh count of retries. */
  assert_int_equal(tl_jobs_retry(ex, id), 0);
  WAIT_UNTIL(atomic_load(&calls) == 5 && state_of(ex, id) == TL_JOB_PENDING, 5000);
  tl_job_info *info = info_of(ex, id);
  assert_int_equal(info->attempt, 1);
  assert_string_equal(info->last_error, "boom 1");
  tl_job_info_free(info);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* The jitter is real: over many retries the first delays spread over
 * [0, base]. */
static int fails_quietly(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  atomic_fetch_add(&calls, 1);
  return TL_JOB_RETRY;
}

static void backoff_has_full_jitter(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  tl_jobs *ex = open_ex(2, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "f", .execute = fails_quietly,
                                                      .retry_delay_ms = 10000 }), 0);
  int64_t ids[200];
  for (int i = 0; i < 200; i++)
    assert_int_equal(tl_jobs_submit(ex, "f", NULL, &(tl_job_opts){ .id_out = &ids[i] }), 0);
  tl_jobs_stats st;
  WAIT_UNTIL(atomic_load(&calls) >= 200 && tl_jobs_stats_get(ex, &st) == 0 && st.running == 0,
             5000);
  int64_t lo = INT64_MAX, hi = -1;
  for (int i = 0; i < 200; i++) {
    tl_job_info *info = info_of(ex, ids[i]);
    if (info->attempt == 1 && info->state == TL_JOB_PENDING) {
      int64_t d = info->run_at_us - T0;
      lo = d < lo ? d : lo;
      hi = d > hi ? d : hi;
      assert_in_range(d, 0, 10000000);
      assert_string_equal(info->last_error, "failed (returned 1)");
    }
    tl_job_info_free(info);
  }
  assert_true(lo < 1000000);
  assert_true(hi > 9000000);
  tl_jobs_close(ex);
}

static int fails_for_good(const char *args, tl_job_ctx *ctx)
{
  atomic_fetch_add(&calls, 1);
  if (strstr(args, "silent"))
    return TL_JOB_DISCARD;
  return tl_job_discard(ctx, "bad address '%s'", "nobody@");
}

static int fails_with_status(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  atomic_fetch_add(&calls, 1);
  return tl_error_set(TL_EIO, "disk full");
}

static void permanent_failure_and_status_errors(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  tl_jobs *ex = open_ex(1, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "perm", .execute = fails_for_good,
                                                      .max_retries = 5 }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "io", .execute = fails_with_status,
                                                      .max_retries = -1 }), 0);
  int64_t a, b, c;
  assert_int_equal(tl_jobs_submit(ex, "perm", "{}", &(tl_job_opts){ .id_out = &a }), 0);
  assert_int_equal(tl_jobs_submit(ex, "perm", "\"silent\"", &(tl_job_opts){ .id_out = &b }), 0);
  assert_int_equal(tl_jobs_submit(ex, "io", "[1,2]", &(tl_job_opts){ .id_out = &c }), 0);
  WAIT_UNTIL(state_of(ex, a) == TL_JOB_DISCARDED && state_of(ex, b) == TL_JOB_DISCARDED &&
             state_of(ex, c) == TL_JOB_DISCARDED, 5000);
  assert_int_equal(atomic_load(&calls), 3); /* no retries at all */
  tl_job_info *info = info_of(ex, a);
  assert_string_equal(info->last_error, "bad address 'nobody@'");
  assert_int_equal(info->attempt, 1);
  tl_job_info_free(info);
  info = info_of(ex, b);
  assert_string_equal(info->last_error, "discarded by the worker");
  tl_job_info_free(info);
  info = info_of(ex, c);
  assert_string_equal(info->last_error, "TL_EIO: disk full");
  assert_string_equal(info->args, "[1,2]");
  tl_job_info_free(info);
  tl_jobs_close(ex);
}

/* ---- snooze -------------------------------------------------------------------------- */

static unsigned seen_attempt[8];

static int snoozes_twice(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  int n = atomic_fetch_add(&calls, 1);
  seen_attempt[n] = tl_job_attempt(ctx);
  if (n < 2) {
    tl_jobs_pause(tl_job_worker_ctx(ctx));
    return tl_job_snooze(ctx, 30000000);
  }
  return TL_JOB_OK;
}

static void snooze_does_not_count_an_attempt(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  tl_jobs *ex = open_ex(1, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "s", .execute = snoozes_twice,
                                                      .ctx = ex, .max_retries = -1 }), 0);
  int64_t id;
  assert_int_equal(tl_jobs_submit(ex, "s", NULL, &(tl_job_opts){ .id_out = &id }), 0);
  for (int k = 1; k <= 2; k++) {
    WAIT_UNTIL(atomic_load(&calls) == k && state_of(ex, id) == TL_JOB_PENDING, 5000);
    tl_job_info *info = info_of(ex, id);
    assert_int_equal(info->run_at_us, atomic_load(&fake_now) + 30000000);
    assert_int_equal(info->attempt, 0);
    tl_job_info_free(info);
    tl_jobs_resume(ex);
    tl_sleep_us(30000);
    assert_int_equal(atomic_load(&calls), k); /* not before its time */
    atomic_fetch_add(&fake_now, 30000000);
    tl_jobs_wake(ex);
  }
  WAIT_UNTIL(stat_completed(ex) == 1, 5000);
  for (int k = 0; k < 3; k++)
    assert_int_equal(seen_attempt[k], 1);
  tl_jobs_stats st;
  tl_jobs_stats_get(ex, &st);
  assert_int_equal(st.snoozed, 2);
  assert_int_equal(st.retried, 0);
  tl_jobs_close(ex);
}

/* ---- timeout ------------------------------------------------------------------------- */

static atomic_bool started;

static int waits_for_cancel(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  int n = atomic_fetch_add(&calls, 1);
  if (n > 0)
    return TL_JOB_OK;
  atomic_store(&started, true);
  while (!tl_job_cancelled(ctx))
    tl_sleep_us(1000);
  return TL_JOB_OK; /* too late: the attempt timed out */
}

static void timeout_fails_the_attempt(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  atomic_store(&started, false);
  tl_jobs *ex = open_ex(1, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "slow", .execute = waits_for_cancel,
                                                      .timeout_ms = 5000, .max_retries = 1,
                                                      .retry_delay_ms = 1 }), 0);
  int64_t id;
  assert_int_equal(tl_jobs_submit(ex, "slow", NULL, &(tl_job_opts){ .id_out = &id }), 0);
  WAIT_UNTIL(atomic_load(&started), 5000);
  tl_sleep_us(30000);
  assert_int_equal(state_of(ex, id), TL_JOB_RUNNING); /* the fake clock has not moved */
  atomic_fetch_add(&fake_now, 4999000);
  tl_jobs_wake(ex);
  tl_sleep_us(30000);
  assert_int_equal(state_of(ex, id), TL_JOB_RUNNING);
  atomic_fetch_add(&fake_now, 1000);
  tl_jobs_wake(ex);
  WAIT_UNTIL(atomic_load(&calls) == 2 || state_of(ex, id) == TL_JOB_PENDING, 5000);
  /* Attempt 2 returns at once: completed. The first left its error. */
  atomic_fetch_add(&fake_now, 10000);
  tl_jobs_wake(ex);
  WAIT_UNTIL(stat_completed(ex) == 1, 5000);
  assert_int_equal(atomic_load(&calls), 2);
  tl_jobs_stats st;
  tl_jobs_stats_get(ex, &st);
  assert_int_equal(st.retried, 1);
  tl_jobs_close(ex);

  /* Without retries the timed-out job is discarded with the reason. */
  atomic_store(&calls, 0);
  atomic_store(&started, false);
  ex = open_ex(1, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "slow", .execute = waits_for_cancel,
                                                      .timeout_ms = 5000, .max_retries = -1 }), 0);
  assert_int_equal(tl_jobs_submit(ex, "slow", NULL, &(tl_job_opts){ .id_out = &id }), 0);
  WAIT_UNTIL(atomic_load(&started), 5000);
  atomic_fetch_add(&fake_now, 6000000);
  tl_jobs_wake(ex);
  WAIT_UNTIL(state_of(ex, id) == TL_JOB_DISCARDED, 5000);
  tl_job_info *info = info_of(ex, id);
  assert_string_equal(info->last_error, "timed out after 5000 ms");
  tl_job_info_free(info);
  tl_jobs_close(ex);
}

/* ---- cancellation ----------------------------------------------------------------------- */

static atomic_bool saw_cancel;

static int until_cancelled(const char *args, tl_job_ctx *ctx)
{
  atomic_fetch_add(&calls, 1);
  atomic_store(&started, true);
  while (!tl_job_cancelled(ctx))
    tl_sleep_us(1000);
  atomic_store(&saw_cancel, true);
  return strstr(args, "finish") ? TL_JOB_OK : TL_JOB_RETRY;
}

static void cancellation(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  atomic_store(&started, false);
  atomic_store(&saw_cancel, false);
  tl_jobs *ex = open_ex(1, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "c", .execute = until_cancelled }), 0);
  int64_t pending, running, finishing;
  assert_int_equal(tl_jobs_submit(ex, "c", "{}", &(tl_job_opts){ .id_out = &running }), 0);
  assert_int_equal(tl_jobs_submit(ex, "c", "{}", &(tl_job_opts){ .id_out = &pending }), 0);
  /* A pending job: cancelled at once, never runs. */
  assert_int_equal(tl_jobs_cancel(ex, pending), 0);
  assert_int_equal(state_of(ex, pending), TL_JOB_CANCELLED);
  assert_int_equal(tl_jobs_cancel(ex, pending), TL_ESTATE);
  assert_non_null(strstr(tl_error_last(), "is cancelled"));
  assert_int_equal(tl_jobs_cancel(ex, 424242), TL_ENOTFOUND);

  /* A running job sees the flag; returning anything but OK cancels it,
   * with no retry. */
  tl_jobs_resume(ex);
  WAIT_UNTIL(atomic_load(&started), 5000);
  tl_job_info *info = info_of(ex, running);
  assert_false(info->cancel_requested);
  tl_job_info_free(info);
  assert_int_equal(tl_jobs_cancel(ex, running), 0);
  WAIT_UNTIL(state_of(ex, running) == TL_JOB_CANCELLED, 5000);
  assert_true(atomic_load(&saw_cancel));
  info = info_of(ex, running);
  assert_string_equal(info->last_error, "cancelled");
  assert_int_equal(info->attempt, 1);
  tl_job_info_free(info);
  tl_sleep_us(30000);
  assert_int_equal(atomic_load(&calls), 1);

  /* One that finishes its work anyway completes. */
  atomic_store(&started, false);
  assert_int_equal(tl_jobs_submit(ex, "c", "\"finish\"", &(tl_job_opts){ .id_out = &finishing }), 0);
  WAIT_UNTIL(atomic_load(&started), 5000);
  assert_int_equal(tl_jobs_cancel(ex, finishing), 0);
  WAIT_UNTIL(stat_completed(ex) == 1, 5000);

  /* A cancelled job can be retried by hand. */
  assert_int_equal(tl_jobs_retry(ex, pending), 0);
  WAIT_UNTIL(atomic_load(&calls) == 3, 5000);
  assert_int_equal(tl_jobs_cancel(ex, pending), 0);
  WAIT_UNTIL(state_of(ex, pending) == TL_JOB_CANCELLED, 5000);
  tl_jobs_close(ex);
}

/* ---- unique keys ------------------------------------------------------------------------ */

static int noop(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  return TL_JOB_OK;
}

static void unique_keys(void **state)
{
  (void)state;
  atomic_store(&started, false);
  tl_jobs *ex = open_ex(1, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "a", .execute = noop }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "b", .execute = noop }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "c", .execute = until_cancelled }), 0);
  int64_t id1, id2, id3, id4;
  assert_int_equal(tl_jobs_submit(ex, "a", "{\"v\":1}", &(tl_job_opts){ .unique_key = "k", .id_out = &id1 }), 0);
  assert_int_equal(tl_jobs_submit(ex, "a", "{\"v\":2}", &(tl_job_opts){ .unique_key = "k", .id_out = &id2 }), 0);
  assert_int_equal(id1, id2);
  /* Keys are per kind. */
  assert_int_equal(tl_jobs_submit(ex, "b", "{}", &(tl_job_opts){ .unique_key = "k", .id_out = &id3 }), 0);
  assert_true(id3 != id1);
  tl_jobs_stats st;
  tl_jobs_stats_get(ex, &st);
  assert_int_equal(st.submitted, 2);
  tl_job_info *info = info_of(ex, id1);
  assert_string_equal(info->args, "{\"v\":1}"); /* the first one stands */
  assert_string_equal(info->unique_key, "k");
  tl_job_info_free(info);
  tl_jobs_resume(ex);
  WAIT_UNTIL(stat_completed(ex) == 2, 5000);
  /* Once finished, the key is free again. */
  assert_int_equal(tl_jobs_submit(ex, "a", "{}", &(tl_job_opts){ .unique_key = "k", .id_out = &id4 }), 0);
  assert_true(id4 > id3);
  WAIT_UNTIL(stat_completed(ex) == 3, 5000);
  /* While running it is still held. */
  int64_t r1, r2;
  assert_int_equal(tl_jobs_submit(ex, "c", "{}", &(tl_job_opts){ .unique_key = "run", .id_out = &r1 }), 0);
  WAIT_UNTIL(atomic_load(&started), 5000);
  assert_int_equal(tl_jobs_submit(ex, "c", "{}", &(tl_job_opts){ .unique_key = "run", .id_out = &r2 }), 0);
  assert_int_equal(r1, r2);
  assert_int_equal(tl_jobs_cancel(ex, r1), 0);
  WAIT_UNTIL(state_of(ex, r1) == TL_JOB_CANCELLED, 5000);
  /* A cancelled job gave its key back; retrying it while another job
   * holds the key is a conflict. */
  tl_jobs_pause(ex);
  assert_int_equal(tl_jobs_submit(ex, "c", "{}", &(tl_job_opts){ .unique_key = "run", .id_out = &r2 }), 0);
  assert_true(r2 != r1);
  assert_int_equal(tl_jobs_retry(ex, r1), TL_ECONFLICT);
  assert_non_null(strstr(tl_error_last(), "unique key 'run'"));
  assert_int_equal(tl_jobs_cancel(ex, r2), 0);
  tl_jobs_close(ex);
}

/* ---- per-kind concurrency --------------------------------------------------------------- */

static atomic_int running_limited, max_limited, running_free, max_free, done_jobs;

static void track_max(atomic_int *max, int v)
{
  int m = atomic_load(max);
  while (v > m && !atomic_compare_exchange_weak(max, &m, v))
    ;
}

static int limited(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  track_max(&max_limited, atomic_fetch_add(&running_limited, 1) + 1);
  tl_sleep_us(15000);
  atomic_fetch_sub(&running_limited, 1);
  atomic_fetch_add(&done_jobs, 1);
  return TL_JOB_OK;
}

static int unlimited(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  track_max(&max_free, atomic_fetch_add(&running_free, 1) + 1);
  tl_sleep_us(15000);
  atomic_fetch_sub(&running_free, 1);
  atomic_fetch_add(&done_jobs, 1);
  return TL_JOB_OK;
}

static void per_kind_concurrency(void **state)
{
  (void)state;
  atomic_store(&max_limited, 0);
  atomic_store(&max_free, 0);
  atomic_store(&done_jobs, 0);
  tl_jobs *ex = open_ex(4, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "lim", .execute = limited,
                                                      .max_concurrency = 2 }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "free", .execute = unlimited }), 0);
  /* The capped kind first and at a higher priority: the other kind must
   * still get the spare workers. */
  for (int i = 0; i < 12; i++)
    assert_int_equal(tl_jobs_submit(ex, "lim", NULL, &(tl_job_opts){ .priority = 1 }), 0);
  for (int i = 0; i < 12; i++)
    assert_int_equal(tl_jobs_submit(ex, "free", NULL, NULL), 0);
  tl_jobs_resume(ex);
  WAIT_UNTIL(atomic_load(&done_jobs) == 24, 10000);
  assert_int_equal(atomic_load(&max_limited), 2);
  assert_true(atomic_load(&max_free) >= 2);
  tl_jobs_close(ex);
}

/* ---- graceful shutdown ------------------------------------------------------------------- */

static int sleeps_20ms(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  atomic_fetch_add(&calls, 1);
  tl_sleep_us(20000);
  return TL_JOB_OK;
}

static int ignores_cancel_300ms(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  atomic_fetch_add(&calls, 1);
  tl_sleep_us(300000);
  if (tl_job_cancelled(ctx))
    atomic_store(&saw_cancel, true);
  return TL_JOB_OK;
}

static void count_states(tl_jobs *ex, size_t *pending, size_t *running)
{
  tl_job_list *l;
  assert_int_equal(tl_jobs_list(ex, &(tl_job_filter){ .limit = 10000 }, &l), 0);
  *pending = *running = 0;
  for (size_t i = 0; i < l->count; i++) {
    *pending += l->items[i].state == TL_JOB_PENDING;
    *running += l->items[i].state == TL_JOB_RUNNING;
  }
  tl_job_list_free(l);
}

static void shutdown_waits_for_running_jobs(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  tl_jobs *ex = open_ex(2, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "s", .execute = sleeps_20ms }), 0);
  for (int i = 0; i < 40; i++)
    assert_int_equal(tl_jobs_submit(ex, "s", NULL, NULL), 0);
  WAIT_UNTIL(atomic_load(&calls) >= 2, 5000);
  assert_int_equal(tl_jobs_shutdown(ex, 5000000), 0);
  /* Every job is either done or still pending: none lost, none stuck. */
  size_t pending, running;
  count_states(ex, &pending, &running);
  uint64_t done = stat_completed(ex);
  assert_int_equal(running, 0);
  assert_int_equal(done + pending, 40);
  assert_int_equal(done, (uint64_t)atomic_load(&calls));
  assert_true(pending > 0);
  assert_int_equal(tl_jobs_submit(ex, "s", NULL, NULL), TL_ECLOSED);
  assert_int_equal(tl_jobs_ready(ex), TL_ECLOSED);
  assert_int_equal(tl_jobs_shutdown(ex, 0), 0); /* the first result again */
  assert_int_equal(tl_jobs_close(ex), 0);
}

static void shutdown_deadline_returns_jobs_to_the_queue(void **state)
{
  (void)state;
  atomic_store(&calls, 0);
  atomic_store(&saw_cancel, false);
  tl_jobs *ex = open_ex(2, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "s", .execute = ignores_cancel_300ms }), 0);
  int64_t ids[5];
  for (int i = 0; i < 5; i++)
    assert_int_equal(tl_jobs_submit(ex, "s", NULL, &(tl_job_opts){ .id_out = &ids[i] }), 0);
  WAIT_UNTIL(atomic_load(&calls) == 2, 5000);
  int64_t t0 = tl_time_mono_us();
  assert_int_equal(tl_jobs_shutdown(ex, 50000), TL_ETIMEOUT);
  assert_true(tl_time_mono_us() - t0 < 250000);
  assert_non_null(strstr(tl_error_last(), "returned to the queue"));
  size_t pending, running;
  count_states(ex, &pending, &running);
  assert_int_equal(running, 0);
  assert_int_equal(pending, 5);
  /* The returned jobs did not use up an attempt. */
  for (int i = 0; i < 5; i++) {
    tl_job_info *info = info_of(ex, ids[i]);
    assert_int_equal(info->attempt, 0);
    tl_job_info_free(info);
  }
  /* close waits for the workers; what they return is ignored. */
  assert_int_equal(tl_jobs_close(ex), TL_ETIMEOUT);
  assert_true(atomic_load(&saw_cancel));
}

/* ---- many jobs, each exactly once ---------------------------------------------------------- */

#define MANY 50000
static atomic_int runs[MANY + 1];
static int64_t first_id;

static int count_run(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  int64_t i = tl_job_id(ctx) - first_id;
  if (i >= 0 && i < MANY)
    atomic_fetch_add(&runs[i], 1);
  else
    atomic_fetch_add(&runs[MANY], 1);
  return TL_JOB_OK;
}

static void *submitter(void *arg)
{
  tl_jobs *ex = arg;
  for (int i = 0; i < MANY / 2; i++)
    if (tl_jobs_submit(ex, "n", "{}", NULL) != 0)
      return (void *)1;
  return NULL;
}

static void fifty_thousand_jobs_run_exactly_once(void **state)
{
  (void)state;
  memset(runs, 0, sizeof runs);
  tl_jobs *ex = open_ex(4, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "n", .execute = count_run }), 0);
  /* Ids are handed out in order from 1 in a new store. */
  first_id = 1;
  tl_jobs_resume(ex);
  pthread_t a, b;
  pthread_create(&a, NULL, submitter, ex);
  pthread_create(&b, NULL, submitter, ex);
  void *ra, *rb;
  pthread_join(a, &ra);
  pthread_join(b, &rb);
  assert_null(ra);
  assert_null(rb);
  WAIT_UNTIL(stat_completed(ex) == MANY, 60000);
  for (int i = 0; i < MANY; i++)
    if (atomic_load(&runs[i]) != 1)
      fail_msg("job %d ran %d times", i + 1, atomic_load(&runs[i]));
  assert_int_equal(atomic_load(&runs[MANY]), 0);
  tl_jobs_stats st;
  tl_jobs_stats_get(ex, &st);
  assert_int_equal(st.submitted, MANY);
  assert_int_equal(st.pending + st.running, 0);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- API checks, queues, delays, readiness, metrics ----------------------------------------- */

static void validation(void **state)
{
  (void)state;
  tl_jobs *ex = open_ex(1, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "bad kind", .execute = noop }), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "'bad kind'"));
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "", .execute = noop }), TL_EINVAL);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "k" }), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "execute is NULL"));
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "k", .execute = noop,
                                                      .retry_delay_ms = -1 }), TL_EINVAL);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "k", .execute = noop }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "k", .execute = noop }), TL_ECONFLICT);
  assert_int_equal(tl_jobs_submit(ex, "nope", "{}", NULL), TL_ENOTFOUND);
  assert_non_null(strstr(tl_error_last(), "'nope': no worker registered"));
  assert_int_equal(tl_jobs_submit(ex, "no pe", "{}", NULL), TL_EINVAL);
  const char *bad_json[] = { "", "{", "{\"a\":}", "[1,]", "{'a':1}", "01", "1.", "tru",
                             "\"\\x\"", "{} {}", "nul", "{\"a\" 1}", "\"\x01\"" };
  for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
    if (tl_jobs_submit(ex, "k", bad_json[i], NULL) != TL_EINVAL)
      fail_msg("'%s' was taken as JSON", bad_json[i]);
    assert_non_null(strstr(tl_error_last(), "not JSON"));
  }
  const char *good_json[] = { "{}", " [ ] ", "0", "-1.5e+3", "\"\\u00e9\\n\"", "null",
                              "{\"a\":[true,false,null,{\"b\":\"c\"}]}", "\"caf\xc3\xa9\"" };
  for (size_t i = 0; i < sizeof good_json / sizeof good_json[0]; i++)
    if (tl_jobs_submit(ex, "k", good_json[i], NULL) != 0)
      fail_msg("'%s' was refused: %s", good_json[i], tl_error_last());
  char deep[201];
  memset(deep, '[', 100);
  memset(deep + 100, ']', 100);
  deep[200] = '\0';
  assert_int_equal(tl_jobs_submit(ex, "k", deep, NULL), TL_EINVAL);
  deep[64 - 1] = '\0'; /* 63 levels are fine: "[[[...]]]" */
  memset(deep + 63, ']', 63);
  deep[126] = '\0';
  assert_int_equal(tl_jobs_submit(ex, "k", deep, NULL), 0);
  assert_int_equal(tl_jobs_submit(ex, "k", "{}", &(tl_job_opts){ .queue = "a b" }), TL_EINVAL);
  assert_int_equal(tl_jobs_submit(ex, "k", "{}", &(tl_job_opts){ .unique_key = "" }), TL_EINVAL);
  assert_int_equal(tl_jobs_submit(ex, "k", "{}", &(tl_job_opts){ .delay_us = -1 }), TL_EINVAL);
  assert_int_equal(tl_jobs_get(ex, 999999, &(tl_job_info *){ NULL }), TL_ENOTFOUND);
  assert_int_equal(tl_jobs_retry(ex, 999999), TL_ENOTFOUND);
  tl_jobs_close(ex);
  assert_int_equal(tl_jobs_close(NULL), 0);
  tl_jobs *bad;
  assert_int_equal(tl_jobs_open(&bad, &(tl_jobs_config){ .workers = 5000 }), TL_EINVAL);
  assert_int_equal(tl_jobs_open(&bad, &(tl_jobs_config){ .queues = "a,b c" }), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "'b c'"));
  assert_int_equal(tl_jobs_open(&bad, &(tl_jobs_config){ .cron_tz = "Nowhere/Land" }), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "cron_tz: time zone 'Nowhere/Land'"));
}

static void queues_and_delays(void **state)
{
  (void)state;
  atomic_store(&fake_now, T0);
  tl_jobs *ex;
  tl_jobs_config cfg = { .workers = 2, .queues = " mail , reports", .clock = fake_clock,
                         .poll_us = 20000, .metrics = reg };
  assert_int_equal(tl_jobs_open(&ex, &cfg), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "k", .execute = noop }), 0);
  int64_t other, mail, later, at;
  assert_int_equal(tl_jobs_submit(ex, "k", NULL, &(tl_job_opts){ .id_out = &other }), 0);
  assert_int_equal(tl_jobs_submit(ex, "k", NULL, &(tl_job_opts){ .queue = "mail", .id_out = &mail }), 0);
  assert_int_equal(tl_jobs_submit(ex, "k", NULL, &(tl_job_opts){ .queue = "reports",
                                                                  .delay_us = 60000000,
                                                                  .id_out = &later }), 0);
  assert_int_equal(tl_jobs_submit(ex, "k", NULL, &(tl_job_opts){ .queue = "mail",
                                                                  .run_at_us = T0 + 120000000,
                                                                  .id_out = &at }), 0);
  WAIT_UNTIL(stat_completed(ex) == 1, 5000);
  assert_int_equal(state_of(ex, mail), 0);
  tl_sleep_us(50000);
  assert_int_equal(state_of(ex, other), TL_JOB_PENDING); /* not a queue we work */
  assert_int_equal(state_of(ex, later), TL_JOB_PENDING);
  tl_job_info *info = info_of(ex, other);
  assert_string_equal(info->queue, "default");
  tl_job_info_free(info);
  atomic_store(&fake_now, T0 + 60000000);
  tl_jobs_wake(ex);
  WAIT_UNTIL(stat_completed(ex) == 2, 5000);
  assert_int_equal(state_of(ex, at), TL_JOB_PENDING);
  atomic_store(&fake_now, T0 + 120000000);
  tl_jobs_wake(ex);
  WAIT_UNTIL(stat_completed(ex) == 3, 5000);
  tl_job_list *l;
  assert_int_equal(tl_jobs_list(ex, &(tl_job_filter){ .queue = "default" }, &l), 0);
  assert_int_equal(l->count, 1);
  assert_int_equal(l->items[0].id, other);
  tl_job_list_free(l);
  tl_jobs_close(ex);
}

static void readiness_and_metrics(void **state)
{
  (void)state;
  tl_jobs *ex = open_ex(1, false);
  assert_int_equal(tl_jobs_ready(ex), 0);
  tl_jobs_pause(ex);
  assert_int_equal(tl_jobs_ready(ex), 0);
  tl_jobs_resume(ex);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "metered", .execute = noop }), 0);
  for (int i = 0; i < 5; i++)
    assert_int_equal(tl_jobs_submit(ex, "metered", NULL, NULL), 0);
  WAIT_UNTIL(stat_completed(ex) == 5, 5000);
  tl_jobs_shutdown(ex, 1000000);
  char detail[64] = "";
  assert_int_equal(tl_jobs_ready_check(ex, detail, sizeof detail), TL_ECLOSED);
  assert_string_equal(detail, "jobs: shut down");
  tl_jobs_close(ex);
  char *text;
  size_t len;
  assert_int_equal(tl_metrics_render(reg, &text, &len), 0);
  assert_non_null(strstr(text, "trellis_jobs_submitted_total{kind=\"metered\"} 5"));
  assert_non_null(strstr(text, "trellis_jobs_finished_total{kind=\"metered\",outcome=\"completed\"} 5"));
  assert_non_null(strstr(text, "trellis_jobs_run_duration_seconds_count{kind=\"metered\"} 5"));
  assert_non_null(strstr(text, "trellis_jobs_depth{state=\"pending\"}"));
  tl_free(text);
}

static void config_from(void **state)
{
  (void)state;
  static const struct {
    const char *key, *value, *msg;
  } bad[] = {
    { "JOB_WORKERS", "many", "JOB_WORKERS: 'many' is not an integer in [1, 1024]" },
    { "JOB_WORKERS", "0", "JOB_WORKERS: '0'" },
    { "JOB_QUEUES", "mail, bad queue", "JOB_QUEUES: 'bad queue' is not a queue name" },
    { "JOB_POLL_INTERVAL", "5", "JOB_POLL_INTERVAL" },
    { "JOB_LEASE", "100ms", "JOB_LEASE: '100ms' is shorter than 1s" },
    { "JOB_SHUTDOWN_TIMEOUT", "0", "JOB_SHUTDOWN_TIMEOUT: '0' is shorter than 1ms" },
    { "JOB_RETAIN_DEAD", "-3", "JOB_RETAIN_DEAD" },
    { "JOB_CRON_TZ", "Mars/Olympus", "JOB_CRON_TZ: time zone 'Mars/Olympus': unknown" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tl_config *cfg;
    tl_jobs_config jc;
    assert_int_equal(tl_config_new(&cfg), 0);
    assert_int_equal(tl_config_set(cfg, bad[i].key, bad[i].value), 0);
    assert_int_equal(tl_jobs_config_from(cfg, &jc), TL_EINVAL);
    if (!strstr(tl_error_last(), bad[i].msg))
      fail_msg("%s=%s: got \"%s\"", bad[i].key, bad[i].value, tl_error_last());
    tl_config_free(cfg);
  }
  tl_config *cfg;
  tl_jobs_config jc;
  assert_int_equal(tl_config_new(&cfg), 0);
  assert_int_equal(tl_jobs_config_from(cfg, &jc), 0);
  assert_true(jc.workers >= 1);
  assert_null(jc.queues);
  assert_int_equal(jc.poll_us, 1000000);
  assert_int_equal(jc.shutdown_timeout_us, 25000000);
  assert_int_equal(jc.lease_us, 300000000);
  assert_int_equal(jc.retain_dead, 10000);
  assert_null(jc.cron_tz);
  tl_config_set(cfg, "JOB_WORKERS", "3");
  tl_config_set(cfg, "JOB_QUEUES", "mail,reports");
  tl_config_set(cfg, "JOB_POLL_INTERVAL", "250ms");
  tl_config_set(cfg, "JOB_CRON_TZ", "Europe/London");
  assert_int_equal(tl_jobs_config_from(cfg, &jc), 0);
  assert_int_equal(jc.workers, 3);
  assert_string_equal(jc.queues, "mail,reports");
  assert_int_equal(jc.poll_us, 250000);
  assert_string_equal(jc.cron_tz, "Europe/London");
  tl_jobs *ex;
  assert_int_equal(tl_jobs_open(&ex, &jc), 0);
  tl_jobs_close(ex);
  tl_config_free(cfg);
}

static int setup(void **state)
{
  (void)state;
  tl_log_set_level(TL_LOG_ERROR);
  return tl_metrics_new(&reg);
}

static int teardown(void **state)
{
  (void)state;
  tl_metrics_free(reg);
  return 0;
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(priority_then_run_at_then_fifo),
    cmocka_unit_test(retries_back_off_then_discard_with_last_error),
    cmocka_unit_test(backoff_has_full_jitter),
    cmocka_unit_test(permanent_failure_and_status_errors),
    cmocka_unit_test(snooze_does_not_count_an_attempt),
    cmocka_unit_test(timeout_fails_the_attempt),
    cmocka_unit_test(cancellation),
    cmocka_unit_test(unique_keys),
    cmocka_unit_test(per_kind_concurrency),
    cmocka_unit_test(shutdown_waits_for_running_jobs),
    cmocka_unit_test(shutdown_deadline_returns_jobs_to_the_queue),
    cmocka_unit_test(fifty_thousand_jobs_run_exactly_once),
    cmocka_unit_test(validation),
    cmocka_unit_test(queues_and_delays),
    cmocka_unit_test(readiness_and_metrics),
    cmocka_unit_test(config_from),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
