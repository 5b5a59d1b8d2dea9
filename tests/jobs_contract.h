/* The durable job queue's contract: one suite that the database store
 * passes on every SQL backend. A test program includes this header, sets
 * jc_url to a database of its own (a file, or a database created for the
 * run) and calls jc_run(name). Also: helpers to make and drop a scratch
 * database on a server, and to count rows, used by the fault tests. */
#ifndef TRELLIS_TESTS_JOBS_CONTRACT_H
#define TRELLIS_TESTS_JOBS_CONTRACT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <cmocka.h>

#include "support.h"

#include <trellis/trellis.h>
#include <trellis/db.h>
#include <trellis/jobs.h>

#pragma GCC diagnostic ignored "-Wunused-function"

#define JC_T0 INT64_C(1767225600000000) /* 2026-01-01T00:00:00Z */

static char jc_url[512];
static tl_db *jc_db;
static tl_metrics *jc_reg;
static _Atomic int64_t jc_now = JC_T0;

static int64_t jc_clock(void *ctx)
{
  (void)ctx;
  return atomic_load(&jc_now);
}

/* Wait up to `ms` of real time for `cond`. It is evaluated once per
 * look and the last look decides: a condition that can turn false again
 * (a count of running jobs) must not be read a second time. */
#define JC_WAIT(cond, ms)                                                \
  do {                                                                   \
    int64_t until_ = tl_time_mono_us() + (int64_t)(ms) * 1000;           \
    bool ok_;                                                            \
    while (!(ok_ = (cond)) && tl_time_mono_us() < until_)                \
      tl_sleep_us(1000);                                                 \
    if (!ok_)                                                            \
      fail_msg("timed out after %d ms waiting for: %s", (int)(ms), #cond); \
  } while (0)

static void jc_exec(tl_db *db, const char *sql)
{
  int rc = tl_db_exec(db, NULL, sql, TL_NOARGS);
  if (rc)
    fail_msg("%s: %s", sql, tl_error_last());
}

static int64_t jc_scalar(tl_db *db, const char *sql)
{
  tl_rows *r;
  int64_t v = -1;
  if (tl_db_query(db, &r, sql, TL_NOARGS) != 0)
    fail_msg("%s: %s", sql, tl_error_last());
  if (tl_rows_next(r) == 1)
    tl_rows_int(r, 0, &v);
  tl_rows_free(r);
  return v;
}

/* A durable executor on jc_db with the fake clock (or the wall clock). */
static tl_jobs *jc_open(unsigned workers, bool paused, bool fake)
{
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = workers, .paused = paused, .poll_us = 20000,
                         .metrics = jc_reg, .db = jc_db };
  if (fake) {
    cfg.clock = jc_clock;
    cfg.clock_ctx = NULL;
  }
  if (tl_jobs_open(&ex, &cfg) != 0)
    fail_msg("tl_jobs_open: %s", tl_error_last());
  return ex;
}

static int jc_clean(void **state)
{
  (void)state;
  atomic_store(&jc_now, JC_T0);
  jc_exec(jc_db, "DELETE FROM trellis_jobs");
  jc_exec(jc_db, "DELETE FROM trellis_jobs_cron_slots");
  return 0;
}

static tl_job_info *jc_info(tl_jobs *ex, int64_t id)
{
  tl_job_info *info = NULL;
  if (tl_jobs_get(ex, id, &info) != 0)
    fail_msg("tl_jobs_get(%lld): %s", (long long)id, tl_error_last());
  return info;
}

static tl_job_state jc_state(tl_jobs *ex, int64_t id)
{
  tl_job_info *info = NULL;
  if (tl_jobs_get(ex, id, &info) != 0)
    return 0;
  tl_job_state s = info->state;
  tl_job_info_free(info);
  return s;
}

/* A series of jc_reg: `family` is a counter or gauge with `labels`
 * (comma-separated) and the values given. */
static double jc_metric(const char *family, bool counter, const char *labels,
                        const char *const *values, size_t n)
{
  tl_metric *m;
  int rc = counter ? tl_metrics_counter(jc_reg, family, "", labels, &m)
                   : tl_metrics_gauge(jc_reg, family, "", labels, &m);
  if (rc)
    fail_msg("metric %s: %s", family, tl_error_last());
  return tl_series_value(tl_metric_series(m, values, n));
}

static double jc_cron_missed(const char *schedule)
{
  return jc_metric("trellis_jobs_cron_missed_total", true, "schedule", TL_LABELS(schedule));
}

/* ---- priority and FIFO ------------------------------------------------------- */

static pthread_mutex_t jc_mu = PTHREAD_MUTEX_INITIALIZER;
static int jc_order[256], jc_norder;
static atomic_int jc_runs;

static int jc_record(const char *args, tl_job_ctx *ctx)
{
  (void)ctx;
  int n = -1;
  sscanf(args, "{\"n\":%d}", &n);
  pthread_mutex_lock(&jc_mu);
  if (jc_norder < 256)
    jc_order[jc_norder++] = n;
  pthread_mutex_unlock(&jc_mu);
  atomic_fetch_add(&jc_runs, 1);
  return TL_JOB_OK;
}

static void jc_submit_n(tl_jobs *ex, const char *kind, int n, int prio, int64_t *id)
{
  char args[32];
  snprintf(args, sizeof args, "{\"n\":%d}", n);
  if (tl_jobs_submit(ex, kind, args, &(tl_job_opts){ .priority = prio, .id_out = id }) != 0)
    fail_msg("submit: %s", tl_error_last());
}

static void priority_then_fifo(void **state)
{
  (void)state;
  jc_norder = 0;
  atomic_store(&jc_runs, 0);
  tl_jobs *ex = jc_open(1, true, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  int prios[] = { 0, 5, 0, 9, 5, 0, 9 };
  for (int i = 0; i < 7; i++)
    jc_submit_n(ex, "rec", i, prios[i], NULL);
  /* Another process's jobs are in the same table: a second executor
   * sees what the first submitted. */
  tl_jobs_stats st;
  assert_int_equal(tl_jobs_stats_get(ex, &st), 0);
  assert_int_equal(st.pending, 7);
  tl_jobs_resume(ex);
  JC_WAIT(atomic_load(&jc_runs) == 7, 10000);
  int want[] = { 3, 6, 1, 4, 0, 2, 5 };
  for (int i = 0; i < 7; i++)
    assert_int_equal(jc_order[i], want[i]);
  assert_int_equal(tl_jobs_close(ex), 0);
  /* Completed jobs stay in the table (for the retention period). */
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state = 'completed'"),
                   7);
}

static void submit_many_runs_all(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  jc_norder = 0;
  tl_jobs *ex = jc_open(4, false, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  const char *args[200];
  char buf[200][24];
  for (int i = 0; i < 200; i++) {
    snprintf(buf[i], sizeof buf[i], "{\"n\":%d}", i);
    args[i] = buf[i];
  }
  assert_int_equal(tl_jobs_submit_many(ex, "rec", args, 200, NULL), 0);
  assert_int_equal(tl_jobs_submit_many(ex, "rec", args, 1, &(tl_job_opts){ .unique_key = "k" }),
                   TL_EINVAL);
  assert_int_equal(tl_jobs_submit_many(ex, "nope", args, 1, NULL), TL_ENOTFOUND);
  JC_WAIT(atomic_load(&jc_runs) == 200, 20000);
  assert_int_equal(tl_jobs_close(ex), 0);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state = 'completed'"),
                   200);
}

/* Several programs may share the table, each with its own kinds: an
 * executor takes only the kinds registered with it, and a job of another
 * kind waits for a worker of its kind instead of being discarded. */
static void jobs_of_other_kinds_wait(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  jc_norder = 0;
  tl_jobs *a = jc_open(1, true, false);
  assert_int_equal(tl_jobs_register(a, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  for (int i = 0; i < 3; i++)
    jc_submit_n(a, "rec", i, 0, NULL);
  assert_int_equal(tl_jobs_close(a), 0);
  /* Running, with no kind registered yet, then with another kind. */
  tl_jobs *b = jc_open(2, false, false);
  tl_sleep_us(100000);
  assert_int_equal(tl_jobs_register(b, &(tl_worker){ .kind = "other", .execute = jc_record }),
                   0);
  tl_sleep_us(200000);
  assert_int_equal(atomic_load(&jc_runs), 0);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state ="
                                    " 'available' AND attempt = 0"), 3);
  assert_int_equal(tl_jobs_register(b, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  JC_WAIT(atomic_load(&jc_runs) == 3, 5000);
  assert_int_equal(tl_jobs_close(b), 0);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state ="
                                    " 'completed'"), 3);
}

/* trellis_jobs_oldest_pending_age_seconds{queue}: how long the oldest job
 * that is due and not running has waited (0 when none), updated every
 * second by the executor. */
static void oldest_pending_age(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  tl_jobs *ex = jc_open(1, true, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  assert_int_equal(tl_jobs_submit(ex, "rec", "{\"n\":1}", &(tl_job_opts){ .queue = "aged" }),
                   0);
  assert_int_equal(tl_jobs_submit(ex, "rec", "{\"n\":2}", &(tl_job_opts){
                     .queue = "aged", .delay_us = INT64_C(60000000) }), 0);
  atomic_fetch_add(&jc_now, INT64_C(90000000));
  /* Due since 90 s (the other one since 30 s): the oldest counts. */
  JC_WAIT(jc_metric("trellis_jobs_oldest_pending_age_seconds", false, "queue",
                    TL_LABELS("aged")) == 90.0, 5000);
  tl_jobs_resume(ex);
  JC_WAIT(atomic_load(&jc_runs) == 2, 5000);
  JC_WAIT(jc_metric("trellis_jobs_oldest_pending_age_seconds", false, "queue",
                    TL_LABELS("aged")) == 0.0, 5000);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- retries, backoff, discard --------------------------------------------------- */

static int jc_failing(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  atomic_fetch_add(&jc_runs, 1);
  return tl_job_error(ctx, "boom %u", tl_job_attempt(ctx));
}

static void retries_back_off_then_discard(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  tl_jobs *ex = jc_open(1, false, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "fail", .execute = jc_failing,
                                                      .max_retries = 2,
                                                      .retry_delay_ms = 10000 }), 0);
  int64_t id;
  assert_int_equal(tl_jobs_submit(ex, "fail", NULL, &(tl_job_opts){ .id_out = &id }), 0);
  for (int attempt = 1; attempt <= 3; attempt++) {
    JC_WAIT(atomic_load(&jc_runs) == attempt, 10000);
    if (attempt < 3) {
      tl_job_info *i = NULL;
      JC_WAIT((tl_job_info_free(i), i = jc_info(ex, id), i->state == TL_JOB_PENDING), 5000);
      char want[32];
      snprintf(want, sizeof want, "boom %d", attempt);
      assert_string_equal(i->last_error, want);
      assert_int_equal(i->attempt, attempt);
      /* Full jitter: somewhere in [now, now + 10 s * 2^(attempt-1)]. */
      int64_t now = atomic_load(&jc_now);
      assert_true(i->run_at_us >= now);
      assert_true(i->run_at_us <= now + (INT64_C(10000000) << (attempt - 1)));
      tl_job_info_free(i);
      atomic_fetch_add(&jc_now, INT64_C(60000000));
      tl_jobs_wake(ex);
    }
  }
  tl_job_info *i = NULL;
  JC_WAIT((tl_job_info_free(i), i = jc_info(ex, id), i->state == TL_JOB_DISCARDED), 5000);
  assert_string_equal(i->last_error, "boom 3");
  assert_int_equal(i->attempt, 3);
  assert_true(i->finished_us > 0);
  tl_job_info_free(i);
  assert_int_equal(tl_jobs_close(ex), 0);
  assert_int_equal(atomic_load(&jc_runs), 3);
}

/* ---- unique keys -------------------------------------------------------------------- */

static atomic_int jc_gate;

static int jc_blocking(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  atomic_fetch_add(&jc_runs, 1);
  while (!atomic_load(&jc_gate) && !tl_job_cancelled(ctx))
    tl_sleep_us(1000);
  return tl_job_cancelled(ctx) ? tl_job_error(ctx, "stopped") : TL_JOB_OK;
}

static void unique_keys(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  atomic_store(&jc_gate, 0);
  tl_jobs *ex = jc_open(2, false, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "blk", .execute = jc_blocking }),
                   0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  int64_t a, b, c, d;
  assert_int_equal(tl_jobs_submit(ex, "blk", NULL, &(tl_job_opts){ .unique_key = "u1",
                                                                   .id_out = &a }), 0);
  assert_int_equal(tl_jobs_submit(ex, "blk", NULL, &(tl_job_opts){ .unique_key = "u1",
                                                                   .id_out = &b }), 0);
  assert_int_equal(a, b); /* pending: the same job */
  JC_WAIT(atomic_load(&jc_runs) == 1, 5000);
  assert_int_equal(tl_jobs_submit(ex, "blk", NULL, &(tl_job_opts){ .unique_key = "u1",
                                                                   .id_out = &b }), 0);
  assert_int_equal(a, b); /* running: still the same */
  /* Keys are per kind. */
  assert_int_equal(tl_jobs_submit(ex, "rec", "{\"n\":1}",
                                  &(tl_job_opts){ .unique_key = "u1", .id_out = &c }), 0);
  assert_true(c != a);
  atomic_store(&jc_gate, 1);
  JC_WAIT(jc_state(ex, a) == TL_JOB_COMPLETED, 5000);
  /* Free again once completed. */
  assert_int_equal(tl_jobs_submit(ex, "blk", NULL, &(tl_job_opts){ .unique_key = "u1",
                                                                   .id_out = &d }), 0);
  assert_true(d != a);
  JC_WAIT(jc_state(ex, d) == TL_JOB_COMPLETED, 5000);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- snooze ----------------------------------------------------------------------------- */

static int jc_snoozer(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  if (atomic_fetch_add(&jc_runs, 1) == 0)
    return tl_job_snooze(ctx, INT64_C(30000000));
  return tl_job_attempt(ctx) == 1 ? TL_JOB_OK : tl_job_discard(ctx, "attempt counted");
}

static void snooze_does_not_count_an_attempt(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  tl_jobs *ex = jc_open(1, false, true);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "snz", .execute = jc_snoozer }),
                   0);
  int64_t id;
  assert_int_equal(tl_jobs_submit(ex, "snz", NULL, &(tl_job_opts){ .id_out = &id }), 0);
  JC_WAIT(atomic_load(&jc_runs) == 1, 5000);
  tl_job_info *i = NULL;
  JC_WAIT((tl_job_info_free(i), i = jc_info(ex, id), i->state == TL_JOB_PENDING), 5000);
  assert_int_equal(i->attempt, 0);
  assert_int_equal(i->run_at_us, JC_T0 + 30000000);
  tl_job_info_free(i);
  tl_sleep_us(100000);
  assert_int_equal(atomic_load(&jc_runs), 1); /* not due yet */
  atomic_fetch_add(&jc_now, INT64_C(30000000));
  tl_jobs_wake(ex);
  JC_WAIT(jc_state(ex, id) == TL_JOB_COMPLETED, 5000);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- cancel and manual retry -------------------------------------------------------------- */

static void cancel_and_manual_retry(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  atomic_store(&jc_gate, 0);
  jc_norder = 0;
  tl_jobs *ex = jc_open(1, false, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "blk", .execute = jc_blocking,
                                                      .max_retries = 5 }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  int64_t later, running;
  assert_int_equal(tl_jobs_submit(ex, "rec", "{\"n\":7}",
                                  &(tl_job_opts){ .delay_us = 3600000000, .id_out = &later }), 0);
  assert_int_equal(tl_jobs_cancel(ex, later), 0);
  assert_int_equal(jc_state(ex, later), TL_JOB_CANCELLED);
  assert_int_equal(tl_jobs_cancel(ex, later), TL_ESTATE);
  assert_int_equal(tl_jobs_cancel(ex, 987654321), TL_ENOTFOUND);

  /* A running job sees its flag and ends cancelled, not retried. */
  assert_int_equal(tl_jobs_submit(ex, "blk", NULL, &(tl_job_opts){ .id_out = &running }), 0);
  JC_WAIT(atomic_load(&jc_runs) == 1, 5000);
  assert_int_equal(jc_state(ex, running), TL_JOB_RUNNING);
  assert_int_equal(tl_jobs_retry(ex, running), TL_ESTATE);
  assert_int_equal(tl_jobs_cancel(ex, running), 0);
  JC_WAIT(jc_state(ex, running) == TL_JOB_CANCELLED, 5000);
  tl_job_info *i = jc_info(ex, running);
  assert_string_equal(i->last_error, "stopped");
  tl_job_info_free(i);

  /* Manual retry: a cancelled job runs again with fresh attempts. */
  assert_int_equal(tl_jobs_retry(ex, later), 0);
  JC_WAIT(jc_state(ex, later) == TL_JOB_COMPLETED, 5000);
  assert_int_equal(jc_order[0], 7);
  i = jc_info(ex, later);
  assert_int_equal(i->attempt, 1);
  tl_job_info_free(i);
  assert_int_equal(tl_jobs_retry(ex, later), TL_ESTATE); /* completed */
  assert_int_equal(tl_jobs_retry(ex, 987654321), TL_ENOTFOUND);
  atomic_store(&jc_gate, 1);
  assert_int_equal(tl_jobs_retry(ex, running), 0);
  JC_WAIT(jc_state(ex, running) == TL_JOB_COMPLETED, 5000);

  /* Listing by state and kind. */
  tl_job_list *l;
  assert_int_equal(tl_jobs_list(ex, &(tl_job_filter){ .state = TL_JOB_COMPLETED }, &l), 0);
  assert_int_equal(l->count, 2);
  assert_true(l->items[0].id < l->items[1].id);
  assert_string_equal(l->items[0].kind, "rec");
  tl_job_list_free(l);
  assert_int_equal(tl_jobs_list(ex, &(tl_job_filter){ .kind = "blk", .limit = 10 }, &l), 0);
  assert_int_equal(l->count, 1);
  assert_int_equal(l->items[0].id, running);
  tl_job_list_free(l);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- pruning ------------------------------------------------------------------------------------ */

static void completed_jobs_are_pruned(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = 1, .poll_us = 20000, .metrics = jc_reg, .db = jc_db,
                         .clock = jc_clock, .retention_us = 3600000000,
                         .lease_us = 3000000 };
  assert_int_equal(tl_jobs_open(&ex, &cfg), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "fail", .execute = jc_failing,
                                                      .max_retries = -1 }), 0);
  int64_t done, dead;
  assert_int_equal(tl_jobs_submit(ex, "rec", "{\"n\":1}", &(tl_job_opts){ .id_out = &done }), 0);
  assert_int_equal(tl_jobs_submit(ex, "fail", NULL, &(tl_job_opts){ .id_out = &dead }), 0);
  JC_WAIT(jc_state(ex, done) == TL_JOB_COMPLETED && jc_state(ex, dead) == TL_JOB_DISCARDED,
          5000);
  /* Within the retention period: kept. */
  atomic_fetch_add(&jc_now, INT64_C(1800000000));
  tl_jobs_wake(ex);
  tl_sleep_us(200000);
  assert_int_equal(jc_state(ex, done), TL_JOB_COMPLETED);
  /* After it: gone. Discarded jobs stay for inspection. */
  atomic_fetch_add(&jc_now, INT64_C(3600000000));
  tl_jobs_wake(ex);
  JC_WAIT(jc_state(ex, done) == 0, 5000);
  assert_int_equal(jc_state(ex, dead), TL_JOB_DISCARDED);
  assert_int_equal(tl_jobs_close(ex), 0);
}

/* ---- lease expiry ----------------------------------------------------------------------------------- */

static void expired_lease_runs_again(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  jc_norder = 0;
  /* A job some other process took and then lost: running, lease over. */
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO trellis_jobs (kind, queue, args, state, priority, run_at, attempt,"
           " max_attempts, created_us, lease_owner, lease_token, lease_until) VALUES"
           " ('rec', 'default', '{\"n\":42}', 'running', 0, %lld, 1, 4, %lld, 'gone:1', 5, %lld)",
           (long long)JC_T0, (long long)JC_T0, (long long)(JC_T0 + 2000000));
  jc_exec(jc_db, sql);
  /* An exhausted one is discarded instead. */
  snprintf(sql, sizeof sql,
           "INSERT INTO trellis_jobs (kind, queue, args, state, priority, run_at, attempt,"
           " max_attempts, created_us, lease_owner, lease_token, lease_until) VALUES"
           " ('rec', 'default', '{\"n\":43}', 'running', 0, %lld, 1, 1, %lld, 'gone:1', 6, %lld)",
           (long long)JC_T0, (long long)JC_T0, (long long)(JC_T0 + 2000000));
  jc_exec(jc_db, sql);
  double discarded0 = jc_metric("trellis_jobs_finished_total", true, "kind,outcome",
                                TL_LABELS("rec", "discarded"));
  double lost0 = jc_metric("trellis_jobs_finished_total", true, "kind,outcome",
                           TL_LABELS("rec", "lost"));
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = 1, .poll_us = 20000, .metrics = jc_reg, .db = jc_db,
                         .clock = jc_clock, .lease_us = 3000000 };
  assert_int_equal(tl_jobs_open(&ex, &cfg), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "rec", .execute = jc_record }), 0);
  tl_sleep_us(100000);
  assert_int_equal(atomic_load(&jc_runs), 0); /* the lease still holds */
  atomic_fetch_add(&jc_now, INT64_C(3000000));
  tl_jobs_wake(ex);
  JC_WAIT(atomic_load(&jc_runs) == 1, 5000);
  assert_int_equal(jc_order[0], 42);
  tl_job_list *l;
  assert_int_equal(tl_jobs_list(ex, NULL, &l), 0);
  assert_int_equal(l->count, 2);
  JC_WAIT((tl_job_list_free(l), tl_jobs_list(ex, NULL, &l), l->items[0].state ==
           TL_JOB_COMPLETED), 5000);
  assert_int_equal(l->items[0].attempt, 2);
  assert_int_equal(l->items[1].state, TL_JOB_DISCARDED);
  assert_string_equal(l->items[1].last_error, "lease expired: the worker was lost");
  tl_job_list_free(l);
  assert_int_equal(tl_jobs_close(ex), 0);
  /* The executor that recovered them counted both, by kind. */
  assert_true(jc_metric("trellis_jobs_finished_total", true, "kind,outcome",
                        TL_LABELS("rec", "discarded")) == discarded0 + 1);
  assert_true(jc_metric("trellis_jobs_finished_total", true, "kind,outcome",
                        TL_LABELS("rec", "lost")) == lost0 + 1);
}

/* ---- cron slots ------------------------------------------------------------------------------------ */

static int64_t jc_slots[64];
static atomic_int jc_nslots;

static int jc_cron(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  int i = atomic_fetch_add(&jc_nslots, 1);
  if (i < 64)
    jc_slots[i] = tl_job_scheduled_at(ctx);
  return TL_JOB_OK;
}

static tl_jobs *jc_open_cron(tl_jobs_cron_missed missed)
{
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = 1, .poll_us = 20000, .metrics = jc_reg, .db = jc_db,
                         .clock = jc_clock, .cron_missed = missed };
  assert_int_equal(tl_jobs_open(&ex, &cfg), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "tick", .execute = jc_cron }), 0);
  assert_int_equal(tl_jobs_schedule(ex, "tick", "* * * * *", "tick", NULL), 0);
  return ex;
}

static void cron_slot_runs_once_across_executors(void **state)
{
  (void)state;
  atomic_store(&jc_nslots, 0);
  tl_jobs *a = jc_open_cron(TL_JOBS_CRON_CATCH_UP_ONE);
  tl_jobs *b = jc_open_cron(TL_JOBS_CRON_CATCH_UP_ONE);
  tl_jobs *c = jc_open_cron(TL_JOBS_CRON_CATCH_UP_ONE);
  for (int minute = 1; minute <= 3; minute++) {
    atomic_store(&jc_now, JC_T0 + minute * INT64_C(60000000));
    tl_jobs_wake(a), tl_jobs_wake(b), tl_jobs_wake(c);
    JC_WAIT(atomic_load(&jc_nslots) == minute, 5000);
  }
  tl_sleep_us(200000);
  assert_int_equal(atomic_load(&jc_nslots), 3);
  for (int i = 0; i < 3; i++)
    assert_int_equal(jc_slots[i], JC_T0 + (i + 1) * INT64_C(60000000));
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs_cron_slots"), 3);
  tl_jobs_close(a), tl_jobs_close(b), tl_jobs_close(c);
  double missed0 = jc_cron_missed("tick");

  /* Every replica down for 10 minutes: the latest missed slot runs once
   * at start-up, or none with skip. */
  atomic_store(&jc_nslots, 0);
  atomic_store(&jc_now, JC_T0 + 13 * INT64_C(60000000) + 30000000);
  a = jc_open_cron(TL_JOBS_CRON_CATCH_UP_ONE);
  b = jc_open_cron(TL_JOBS_CRON_CATCH_UP_ONE);
  tl_jobs_wake(a), tl_jobs_wake(b);
  JC_WAIT(atomic_load(&jc_nslots) == 1, 5000);
  tl_sleep_us(200000);
  assert_int_equal(atomic_load(&jc_nslots), 1);
  assert_int_equal(jc_slots[0], JC_T0 + 13 * INT64_C(60000000));
  tl_jobs_close(a), tl_jobs_close(b);
  /* Missed, counted once among the replicas: 4 to 12 skipped, 13 caught up. */
  assert_true(jc_cron_missed("tick") == missed0 + 10);

  atomic_store(&jc_nslots, 0);
  atomic_store(&jc_now, JC_T0 + 20 * INT64_C(60000000) + 30000000);
  a = jc_open_cron(TL_JOBS_CRON_SKIP);
  tl_jobs_wake(a);
  tl_sleep_us(200000);
  assert_int_equal(atomic_load(&jc_nslots), 0);
  atomic_store(&jc_now, JC_T0 + 21 * INT64_C(60000000));
  tl_jobs_wake(a);
  JC_WAIT(atomic_load(&jc_nslots) == 1, 5000);
  assert_int_equal(jc_slots[0], JC_T0 + 21 * INT64_C(60000000));
  tl_jobs_close(a);
  assert_true(jc_cron_missed("tick") == missed0 + 10 + 7); /* 14 to 20 skipped */
}

/* ---- shutdown ---------------------------------------------------------------------------------------- */

static void shutdown_returns_unfinished_jobs(void **state)
{
  (void)state;
  atomic_store(&jc_runs, 0);
  atomic_store(&jc_gate, 0);
  tl_jobs *ex = jc_open(2, false, false);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "blk", .execute = jc_blocking }),
                   0);
  for (int i = 0; i < 6; i++)
    assert_int_equal(tl_jobs_submit(ex, "blk", NULL, NULL), 0);
  JC_WAIT(atomic_load(&jc_runs) == 2, 5000);
  assert_int_equal(tl_jobs_shutdown(ex, 100000), TL_ETIMEOUT);
  /* Nothing is left running or leased: every job is available again
   * with no attempt counted. */
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state = 'available'"
                                    " AND attempt = 0 AND lease_owner IS NULL"), 6);
  assert_int_equal(tl_jobs_close(ex), TL_ETIMEOUT);
}


/* ---- waking across processes (PostgreSQL) ------------------------------------------ */

/* An idle executor that would look again only after 10 s starts a job
 * submitted by another executor, on another pool, within 2 s: the
 * submitter's NOTIFY wakes it. Without the notification this fails. */
static void jc_wakes_across_pools(void **state)
{
  (void)state;
  jc_clean(NULL);
  atomic_store(&jc_runs, 0);
  tl_db *other;
  tl_db_config c = { .url = jc_url, .max_connections = 4 };
  assert_int_equal(tl_db_connect(&other, &c), 0);
  tl_jobs *idle = NULL, *sub = NULL;
  tl_jobs_config ic = { .workers = 2, .poll_us = 10000000, .metrics = jc_reg, .db = other };
  assert_int_equal(tl_jobs_open(&idle, &ic), 0);
  assert_int_equal(tl_jobs_register(idle, &(tl_worker){ .kind = "rec", .execute = jc_record }),
                   0);
  tl_jobs_config sc = { .workers = 1, .paused = true, .metrics = jc_reg, .db = jc_db };
  assert_int_equal(tl_jobs_open(&sub, &sc), 0);
  assert_int_equal(tl_jobs_register(sub, &(tl_worker){ .kind = "rec", .execute = jc_record }),
                   0);
  for (int round = 1; round <= 3; round++) {
    tl_sleep_us(300000); /* the idle executor's workers are asleep for 10 s */
    jc_submit_n(sub, "rec", round, 0, NULL);
    JC_WAIT(atomic_load(&jc_runs) == round, 2000);
  }
  assert_int_equal(tl_jobs_close(sub), 0);
  assert_int_equal(tl_jobs_close(idle), 0);
  tl_db_close(other);
}

/* ---- fault tests: other processes on the same database ---------------------------- */

#include <signal.h>
#include <sys/wait.h>

static tl_db *jc_child_db;

/* Record a run in jc_done (job_id unique). A second run of the same job
 * fails the insert: the job is discarded as "ran twice", unless its
 * arguments say "again" is fine (after a crash a job may run again: its
 * completion may have died with the process). */
static int jc_done_run(const char *args, tl_job_ctx *ctx)
{
  int ms = 0;
  sscanf(args, "{\"ms\":%d}", &ms);
  if (ms)
    tl_sleep_us(ms * 1000);
  int rc = tl_db_exec(jc_child_db, NULL, "INSERT INTO jc_done (job_id, pid) VALUES ($1, $2)",
                      TL_ARGS(tl_int(tl_job_id(ctx)), tl_int(getpid())));
  if (rc == TL_ECONFLICT)
    return strstr(args, "again") ? TL_JOB_OK : tl_job_discard(ctx, "ran twice");
  return rc ? rc : TL_JOB_OK;
}

static int jc_tick(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  return tl_db_exec(jc_child_db, NULL, "INSERT INTO jc_ticks (slot_us, job_id, pid) VALUES ($1,"
                    " $2, $3)", TL_ARGS(tl_int(tl_job_scheduled_at(ctx)),
                                        tl_int(tl_job_id(ctx)), tl_int(getpid())));
}

static void jc_make_fault_tables(tl_db *db)
{
  tl_db_exec(db, NULL, "DROP TABLE IF EXISTS jc_done", TL_NOARGS);
  tl_db_exec(db, NULL, "DROP TABLE IF EXISTS jc_ticks", TL_NOARGS);
  tl_db_exec(db, NULL, "DROP TABLE IF EXISTS jc_life", TL_NOARGS);
  tl_db_exec(db, NULL, "DROP TABLE IF EXISTS jc_held", TL_NOARGS);
  jc_exec(db, "CREATE TABLE jc_done (job_id BIGINT PRIMARY KEY, pid BIGINT NOT NULL)");
  jc_exec(db, "CREATE TABLE jc_ticks (slot_us BIGINT NOT NULL, job_id BIGINT NOT NULL,"
              " pid BIGINT NOT NULL)");
  jc_exec(db, "CREATE TABLE jc_life (pid BIGINT NOT NULL, up_us BIGINT NOT NULL,"
              " down_us BIGINT NOT NULL)");
  jc_exec(db, "CREATE TABLE jc_held (id BIGINT PRIMARY KEY)");
}

/* The body of a child process: `mode` is "crash" (run slow jobs until
 * killed), "cron" (run a per-second schedule for `arg` seconds) or
 * "drain" (run jobs until none is left). Exits. */
static int jc_child_main(const char *mode, const char *url, int arg)
{
  tl_log_set_level(TL_LOG_ERROR);
  tl_db_config c = { .url = url, .max_connections = 8 };
  if (tl_db_connect(&jc_child_db, &c) != 0) {
    fprintf(stderr, "child: connect: %s\n", tl_error_last());
    return 3;
  }
  tl_metrics *reg;
  tl_metrics_new(&reg);
  bool cron = !strcmp(mode, "cron");
  tl_jobs_config cfg = { .workers = cron ? 1 : !strcmp(mode, "crash") ? 4 : 2,
                         .poll_us = 50000, .db = jc_child_db, .metrics = reg,
                         .lease_us = 2000000 };
  tl_jobs *ex;
  if (tl_jobs_open(&ex, &cfg) != 0 ||
      tl_jobs_register(ex, &(tl_worker){ .kind = "done", .execute = jc_done_run }) != 0 ||
      tl_jobs_register(ex, &(tl_worker){ .kind = "tick", .execute = jc_tick }) != 0) {
    fprintf(stderr, "child: open: %s\n", tl_error_last());
    return 3;
  }
  if (cron) {
    int64_t up = tl_time_now_us();
    if (tl_jobs_schedule(ex, "every-second", "* * * * * *", "tick", NULL) != 0) {
      fprintf(stderr, "child: schedule: %s\n", tl_error_last());
      return 3;
    }
    tl_sleep_us((int64_t)arg * 1000000);
    int64_t down = tl_time_now_us();
    tl_jobs_close(ex);
    tl_db_exec(jc_child_db, NULL, "INSERT INTO jc_life (pid, up_us, down_us) VALUES ($1, $2, $3)",
               TL_ARGS(tl_int(getpid()), tl_int(up), tl_int(down)));
  } else if (!strcmp(mode, "crash")) {
    for (;;)
      tl_sleep_us(1000000);
  } else {
    while (jc_scalar(jc_child_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state <> 'completed'"
                                  " AND state <> 'discarded'") > 0)
      tl_sleep_us(100000);
    tl_jobs_close(ex);
  }
  tl_db_close(jc_child_db);
  tl_metrics_free(reg);
  return 0;
}

/* Start this test program again as a child: argv "child MODE URL ARG". */
static pid_t jc_spawn(const char *mode, const char *url, int arg)
{
  char a[16];
  snprintf(a, sizeof a, "%d", arg);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    tl_test_child_dies_with_parent();
    execl("/proc/self/exe", "jobs-child", "child", mode, url, a, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static int jc_wait_exit(pid_t pid, int seconds)
{
  int st = 0;
  for (int i = 0; i < seconds * 10; i++) {
    if (waitpid(pid, &st, WNOHANG) == pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    tl_sleep_us(100000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  return -1;
}

/* Say where the jobs are, when a wait for them failed. */
static void jc_dump_states(void)
{
  tl_rows *r;
  if (tl_db_query(jc_db, &r, "SELECT state, COUNT(*), MIN(last_error) FROM trellis_jobs GROUP BY"
                  " state", TL_NOARGS) != 0)
    return;
  while (tl_rows_next(r) == 1) {
    const char *st = "", *e = "";
    size_t l;
    int64_t n = 0;
    tl_rows_text(r, 0, &st, &l);
    tl_rows_int(r, 1, &n);
    tl_rows_text(r, 2, &e, &l);
    fprintf(stderr, "state %s: %lld (%s)\n", st, (long long)n, e ? e : "");
  }
  tl_rows_free(r);
}

/* kill -9 a process in the middle of its jobs; a new executor finishes
 * every one of them, and none is lost. */
static void jc_crash_test(void **state)
{
  (void)state;
  jc_clean(NULL);
  jc_make_fault_tables(jc_db);
  jc_child_db = jc_db;
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = 4, .poll_us = 50000, .db = jc_db, .metrics = jc_reg,
                         .lease_us = 2000000, .paused = true };
  assert_int_equal(tl_jobs_open(&ex, &cfg), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "done", .execute = jc_done_run }), 0);
  enum { N = 200 };
  const char *args[N];
  for (int i = 0; i < N; i++)
    args[i] = "{\"ms\":100,\"again\":1}"; /* long enough to be caught running */
  assert_int_equal(tl_jobs_submit_many(ex, "done", args, N, NULL), 0);
  pid_t child = jc_spawn("crash", jc_url, 0);
  assert_true(child > 0);
  /* Kill it at a moment it holds jobs. Between two fetches it may hold
   * none, so it is stopped first: what it holds cannot change between
   * the look and the kill (a statement it sent just before the stop has
   * a moment to finish). The jobs it held are kept in jc_held. */
  int64_t held = 0;
  for (int tries = 0; held == 0; tries++) {
    assert_true(tries < 50);
    if (tries)
      kill(child, SIGCONT);
    JC_WAIT(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_done") >= 40 &&
            jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state = 'running'") > 0,
            60000);
    kill(child, SIGSTOP);
    tl_sleep_us(200000);
    held = jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state = 'running'");
  }
  /* Read without locking: a stopped fetch transaction may hold row locks. */
  int64_t ids[N];
  size_t nids = 0;
  tl_rows *r;
  assert_int_equal(tl_db_query(jc_db, &r, "SELECT id FROM trellis_jobs WHERE state = 'running'",
                               TL_NOARGS), 0);
  while (nids < N && tl_rows_next(r) == 1)
    tl_rows_int(r, 0, &ids[nids++]);
  tl_rows_free(r);
  kill(child, SIGKILL);
  int st;
  waitpid(child, &st, 0);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(nids, held);
  for (size_t i = 0; i < nids; i++)
    assert_int_equal(tl_db_exec(jc_db, NULL, "INSERT INTO jc_held (id) VALUES ($1)",
                                TL_ARGS(tl_int(ids[i]))), 0);
  assert_true(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_done") < N);
  tl_jobs_resume(ex);
  int64_t done = 0, until = tl_time_mono_us() + 120000000;
  while ((done = jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE state ="
                                  " 'completed'")) < N && tl_time_mono_us() < until)
    tl_sleep_us(100000);
  if (done < N) {
    jc_dump_states();
    fail_msg("%lld of %d jobs completed after the crash", (long long)done, N);
  }
  assert_int_equal(tl_jobs_close(ex), 0);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_done"), N);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(DISTINCT job_id) FROM jc_done"), N);
  /* Every job the dead process held counted a lost attempt, then ran. */
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_held"), held);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs j JOIN jc_held h ON"
                                    " h.id = j.id WHERE j.attempt >= 2 AND j.last_error ="
                                    " 'lease expired: the worker was lost'"), held);
}

/* Three processes run the same per-second schedule for `secs` seconds.
 * Exactly once: no slot has two claims or two runs, and no job ran twice.
 * No gaps: every second from one second after the last process started
 * to one second before the first one stopped has its run (only the edges,
 * where fewer than three processes were up, may be missing). */
static void jc_cron_three_processes(void **state)
{
  (void)state;
  int secs = *(int *)*state;
  jc_clean(NULL);
  jc_make_fault_tables(jc_db);
  pid_t kids[3];
  for (int i = 0; i < 3; i++)
    assert_true((kids[i] = jc_spawn("cron", jc_url, secs)) > 0);
  for (int i = 0; i < 3; i++)
    assert_int_equal(jc_wait_exit(kids[i], secs + 60), 0);
  tl_sleep_us(500000);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_life"), 3);
  int64_t up = jc_scalar(jc_db, "SELECT MAX(up_us) FROM jc_life");
  int64_t down = jc_scalar(jc_db, "SELECT MIN(down_us) FROM jc_life");
  int64_t from = (up / 1000000 + 2) * 1000000, to = (down / 1000000 - 1) * 1000000;
  assert_true(to - from >= (int64_t)(secs - 5) * 1000000);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM (SELECT slot_us FROM jc_ticks GROUP BY"
                                    " slot_us HAVING COUNT(*) > 1) d"), 0);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM (SELECT job_id FROM jc_ticks GROUP BY"
                                    " job_id HAVING COUNT(*) > 1) d"), 0);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM jc_ticks WHERE slot_us >= %lld AND slot_us <="
           " %lld", (long long)from, (long long)to);
  assert_int_equal(jc_scalar(jc_db, sql), (to - from) / 1000000 + 1);
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM jc_ticks WHERE slot_us %% 1000000 <> 0");
  assert_int_equal(jc_scalar(jc_db, sql), 0);
  /* Each run is one claimed slot, and the claims carry their job. */
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_ticks t JOIN trellis_jobs_cron_slots"
                                    " s ON s.slot_us = t.slot_us AND s.job_id = t.job_id"),
                   jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_ticks"));
  /* The work was shared: more than one process ran ticks. */
  assert_true(jc_scalar(jc_db, "SELECT COUNT(DISTINCT pid) FROM jc_ticks") >= 2);
}

/* `n` jobs over 4 workers in 2 processes, none failing: each ran exactly
 * once (the record table's unique key refuses a second run). */
static void jc_many_two_processes(void **state)
{
  int n = *(int *)*state;
  jc_clean(NULL);
  jc_make_fault_tables(jc_db);
  jc_child_db = jc_db;
  tl_jobs *ex = NULL;
  tl_jobs_config cfg = { .workers = 1, .db = jc_db, .metrics = jc_reg, .paused = true };
  assert_int_equal(tl_jobs_open(&ex, &cfg), 0);
  assert_int_equal(tl_jobs_register(ex, &(tl_worker){ .kind = "done", .execute = jc_done_run }), 0);
  const char **args = calloc((size_t)n, sizeof *args);
  for (int i = 0; i < n; i++)
    args[i] = "{}";
  for (int i = 0; i < n; i += 5000)
    assert_int_equal(tl_jobs_submit_many(ex, "done", args, (size_t)(n - i < 5000 ? n - i : 5000),
                                         NULL), 0);
  free(args);
  tl_jobs_close(ex);
  int64_t t0 = tl_time_mono_us();
  pid_t a = jc_spawn("drain", jc_url, 0), b = jc_spawn("drain", jc_url, 0);
  assert_int_equal(jc_wait_exit(a, 500), 0);
  assert_int_equal(jc_wait_exit(b, 500), 0);
  fprintf(stderr, "%d jobs in %.1f s over 2 processes x 2 workers\n", n,
          (double)(tl_time_mono_us() - t0) / 1e6);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM trellis_jobs WHERE state = 'completed'");
  assert_int_equal(jc_scalar(jc_db, sql), n);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM jc_done"), n);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(*) FROM trellis_jobs WHERE attempt <> 1"), 0);
  assert_int_equal(jc_scalar(jc_db, "SELECT COUNT(DISTINCT pid) FROM jc_done"), 2);
}

static int jc_group_setup(void **state)
{
  (void)state;
  tl_log_set_level(TL_LOG_ERROR);
  if (tl_metrics_new(&jc_reg) != 0)
    return -1;
  tl_db_config c = { .url = jc_url, .max_connections = 16 };
  if (tl_db_connect(&jc_db, &c) != 0) {
    fprintf(stderr, "connect %s: %s\n", jc_url, tl_error_last());
    return -1;
  }
  /* The schema comes with the first executor. */
  tl_jobs *ex;
  if (tl_jobs_open(&ex, &(tl_jobs_config){ .workers = 1, .db = jc_db, .paused = true,
                                           .metrics = jc_reg }) != 0) {
    fprintf(stderr, "open: %s\n", tl_error_last());
    return -1;
  }
  tl_jobs_close(ex);
  return 0;
}

static int jc_group_teardown(void **state)
{
  (void)state;
  tl_db_close(jc_db);
  jc_db = NULL;
  tl_metrics_free(jc_reg);
  return 0;
}

static int jc_run(const char *name)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup(priority_then_fifo, jc_clean),
    cmocka_unit_test_setup(submit_many_runs_all, jc_clean),
    cmocka_unit_test_setup(jobs_of_other_kinds_wait, jc_clean),
    cmocka_unit_test_setup(oldest_pending_age, jc_clean),
    cmocka_unit_test_setup(retries_back_off_then_discard, jc_clean),
    cmocka_unit_test_setup(unique_keys, jc_clean),
    cmocka_unit_test_setup(snooze_does_not_count_an_attempt, jc_clean),
    cmocka_unit_test_setup(cancel_and_manual_retry, jc_clean),
    cmocka_unit_test_setup(completed_jobs_are_pruned, jc_clean),
    cmocka_unit_test_setup(expired_lease_runs_again, jc_clean),
    cmocka_unit_test_setup(cron_slot_runs_once_across_executors, jc_clean),
    cmocka_unit_test_setup(shutdown_returns_unfinished_jobs, jc_clean),
  };
  return _cmocka_run_group_tests(name, tests, sizeof tests / sizeof tests[0], jc_group_setup,
                                 jc_group_teardown);
}


/* main() of a test on a database server: re-run as a child when asked;
 * else make a database of its own on the server of `key` (`service` in
 * scripts/services), run the contract suite, then `faults`, and drop the
 * database. */
static int jc_server_main(int argc, char **argv, const char *key, const char *service,
                          const char *suite, const struct CMUnitTest *faults, size_t nfaults)
{
  if (argc == 5 && !strcmp(argv[1], "child"))
    return jc_child_main(argv[2], argv[3], atoi(argv[4]));
  char base[512], name[64], group[80];
  tl_test_service_url(key, service, base, sizeof base);
  snprintf(name, sizeof name, "trellis_jobs_%d", (int)getpid());
  if (tl_test_make_database(base, name, jc_url, sizeof jc_url) != 0)
    return 1;
  int failed = jc_run(suite);
  snprintf(group, sizeof group, "%s_processes", suite);
  failed += _cmocka_run_group_tests(group, faults, nfaults, jc_group_setup, jc_group_teardown);
  tl_test_drop_database(base, name);
  return failed;
}

#endif
