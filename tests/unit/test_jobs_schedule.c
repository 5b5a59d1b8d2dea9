/* Cron schedules on the executor, on a fake clock: one job per slot, the
 * slot as the job's scheduled time, the latest slot only after a stall,
 * replace and remove, zones, and errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <trellis/trellis.h>
#include <trellis/jobs.h>

static _Atomic int64_t fake_now;
static int64_t fake_clock(void *ctx)
{
  (void)ctx;
  return atomic_load(&fake_now);
}

#define WAIT_UNTIL(cond, ms)                                  \
  do {                                                        \
    for (int w_ = 0; w_ < (ms) && !(cond); w_++)              \
      tl_sleep_us(1000);                                      \
    if (!(cond))                                              \
      fail_msg("timed out waiting for: %s", #cond);           \
  } while (0)

static int64_t at(const char *iso)
{
  int64_t us;
  if (tl_time_parse(iso, &us) != 0)
    fail_msg("bad time %s", iso);
  return us;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t slots[64];
static char args_seen[64][32];
static atomic_int nslots;

static int tick(const char *args, tl_job_ctx *ctx)
{
  pthread_mutex_lock(&mu);
  int n = atomic_load(&nslots);
  if (n < 64) {
    slots[n] = tl_job_scheduled_at(ctx);
    strncpy(args_seen[n], args, sizeof args_seen[n] - 1);
  }
  atomic_store(&nslots, n + 1);
  pthread_mutex_unlock(&mu);
  return TL_JOB_OK;
}

static tl_metrics *reg;

static tl_jobs *open_at(const char *iso, const char *tz)
{
  atomic_store(&fake_now, at(iso));
  atomic_store(&nslots, 0);
  tl_jobs *ex;
  tl_jobs_config cfg = { .workers = 1, .clock = fake_clock, .poll_us = 20000,
                         .cron_tz = tz, .metrics = reg };
  if (tl_jobs_open(&ex, &cfg) != 0)
    fail_msg("open: %s", tl_error_last());
  if (tl_jobs_register(ex, &(tl_worker){ .kind = "tick", .execute = tick }) != 0)
    fail_msg("register: %s", tl_error_last());
  return ex;
}

/* trellis_jobs_cron_missed_total{schedule} in `reg`. */
static double missed(const char *schedule)
{
  tl_metric *m;
  if (tl_metrics_counter(reg, "trellis_jobs_cron_missed_total", "", "schedule", &m) != 0)
    fail_msg("metric: %s", tl_error_last());
  return tl_series_value(tl_metric_series(m, TL_LABELS(schedule)));
}

static void move_to(tl_jobs *ex, const char *iso)
{
  atomic_store(&fake_now, at(iso));
  tl_jobs_wake(ex);
}

static void one_job_per_slot(void **state)
{
  (void)state;
  tl_jobs *ex = open_at("2026-01-01T00:30:00Z", NULL);
  assert_int_equal(tl_jobs_schedule(ex, "hourly", "0 * * * *", "tick", "{\"job\":\"cleanup\"}"), 0);
  int64_t next;
  assert_int_equal(tl_jobs_schedule_next(ex, "hourly", &next), 0);
  assert_int_equal(next, at("2026-01-01T01:00:00Z"));
  move_to(ex, "2026-01-01T00:59:59Z");
  tl_sleep_us(50000);
  assert_int_equal(atomic_load(&nslots), 0);
  move_to(ex, "2026-01-01T01:00:00Z");
  WAIT_UNTIL(atomic_load(&nslots) == 1, 5000);
  assert_int_equal(slots[0], at("2026-01-01T01:00:00Z"));
  assert_string_equal(args_seen[0], "{\"job\":\"cleanup\"}");
  /* Waking again within the slot does not fire it twice. */
  move_to(ex, "2026-01-01T01:30:00Z");
  tl_sleep_us(50000);
  assert_int_equal(atomic_load(&nslots), 1);
  move_to(ex, "2026-01-01T02:00:05Z");
  WAIT_UNTIL(atomic_load(&nslots) == 2, 5000);
  assert_int_equal(slots[1], at("2026-01-01T02:00:00Z"));
  assert_int_equal(tl_jobs_schedule_next(ex, "hourly", &next), 0);
  assert_int_equal(next, at("2026-01-01T03:00:00Z"));
  assert_true(missed("hourly") == 0);
  /* A stall over slots 03:00-06:00: only the latest runs, and the three
   * before it are counted as missed. */
  move_to(ex, "2026-01-01T06:10:00Z");
  WAIT_UNTIL(atomic_load(&nslots) == 3, 5000);
  tl_sleep_us(50000);
  assert_int_equal(atomic_load(&nslots), 3);
  assert_int_equal(slots[2], at("2026-01-01T06:00:00Z"));
  WAIT_UNTIL(missed("hourly") == 3, 5000);
  assert_int_equal(tl_jobs_schedule_next(ex, "hourly", &next), 0);
  assert_int_equal(next, at("2026-01-01T07:00:00Z"));
  /* A stall of years over a per-minute schedule is still bounded work. */
  assert_int_equal(tl_jobs_schedule(ex, "minutely", "* * * * *", "tick", NULL), 0);
  int64_t t0 = tl_time_mono_us();
  move_to(ex, "2029-06-01T12:34:56Z");
  WAIT_UNTIL(atomic_load(&nslots) == 5, 5000);
  assert_true(tl_time_mono_us() - t0 < 3000000);
  int64_t a = slots[3] < slots[4] ? slots[3] : slots[4], b = slots[3] ^ slots[4] ^ a;
  assert_int_equal(a, at("2029-06-01T12:00:00Z"));  /* hourly */
  assert_int_equal(b, at("2029-06-01T12:34:00Z"));  /* minutely */
  /* Every hour from 07:00 on the first day to the one before the slot
   * that ran; the minutes are counted up to the bound of 100,000. */
  double hours = (double)(at("2029-06-01T12:00:00Z") - at("2026-01-01T07:00:00Z")) / 3.6e9;
  WAIT_UNTIL(missed("minutely") > 0, 5000); /* counted after the submit */
  assert_true(missed("hourly") == 3 + hours);
  assert_true(missed("minutely") == 100001);
  tl_jobs_close(ex);
}

static void replace_and_remove(void **state)
{
  (void)state;
  tl_jobs *ex = open_at("2026-01-01T00:00:30Z", NULL);
  assert_int_equal(tl_jobs_schedule(ex, "s", "0 0 * * *", "tick", "1"), 0);
  /* Same name: replaced, with its new expression and args. */
  assert_int_equal(tl_jobs_schedule(ex, "s", "*/5 * * * *", "tick", "2"), 0);
  int64_t next;
  assert_int_equal(tl_jobs_schedule_next(ex, "s", &next), 0);
  assert_int_equal(next, at("2026-01-01T00:05:00Z"));
  move_to(ex, "2026-01-01T00:05:00Z");
  WAIT_UNTIL(atomic_load(&nslots) == 1, 5000);
  assert_string_equal(args_seen[0], "2");
  assert_int_equal(tl_jobs_unschedule(ex, "s"), 0);
  assert_int_equal(tl_jobs_unschedule(ex, "s"), TL_ENOTFOUND);
  assert_int_equal(tl_jobs_schedule_next(ex, "s", &next), TL_ENOTFOUND);
  move_to(ex, "2026-01-01T00:10:00Z");
  tl_sleep_us(50000);
  assert_int_equal(atomic_load(&nslots), 1);
  tl_jobs_close(ex);
}

static void zones(void **state)
{
  (void)state;
  /* The executor's default zone, and one per schedule. */
  tl_jobs *ex = open_at("2026-03-07T12:00:00Z", "America/New_York");
  assert_int_equal(tl_jobs_schedule(ex, "ny", "30 2 * * *", "tick", NULL), 0);
  assert_int_equal(tl_jobs_schedule_opts(ex, "ldn", "30 2 * * *", "tick", NULL,
                                         &(tl_schedule_opts){ .tz = "Europe/London",
                                                              .priority = 3,
                                                              .queue = "cron" }), 0);
  int64_t next;
  assert_int_equal(tl_jobs_schedule_next(ex, "ny", &next), 0);
  assert_int_equal(next, at("2026-03-08T07:00:00Z")); /* 02:30 skipped: right after the jump */
  assert_int_equal(tl_jobs_schedule_next(ex, "ldn", &next), 0);
  assert_int_equal(next, at("2026-03-08T02:30:00Z"));
  move_to(ex, "2026-03-08T02:30:00Z");
  WAIT_UNTIL(atomic_load(&nslots) == 1, 5000);
  tl_jobs_close(ex);
}

static void errors(void **state)
{
  (void)state;
  tl_jobs *ex = open_at("2026-01-01T00:00:00Z", NULL);
  assert_int_equal(tl_jobs_schedule(ex, "bad", "61 * * * *", "tick", NULL), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "schedule 'bad': cron '61 * * * *': minute: '61'"));
  assert_int_equal(tl_jobs_schedule(ex, "x", "0 * * * *", "nokind", NULL), TL_ENOTFOUND);
  assert_non_null(strstr(tl_error_last(), "'nokind'"));
  assert_int_equal(tl_jobs_schedule(ex, "bad name", "0 * * * *", "tick", NULL), TL_EINVAL);
  assert_int_equal(tl_jobs_schedule(ex, "x", "0 * * * *", "tick", "{oops"), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "not JSON"));
  assert_int_equal(tl_jobs_schedule_opts(ex, "x", "0 * * * *", "tick", NULL,
                                         &(tl_schedule_opts){ .tz = "Mars/Base" }), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "time zone 'Mars/Base'"));
  assert_int_equal(tl_jobs_schedule(ex, "x", "0 0 30 2 *", "tick", NULL), TL_EINVAL);
  assert_int_equal(tl_jobs_schedule(NULL, "x", "0 * * * *", "tick", NULL), TL_EINVAL);
  /* After shutdown, schedules stop and new ones are refused. */
  assert_int_equal(tl_jobs_schedule(ex, "ok", "* * * * *", "tick", NULL), 0);
  assert_int_equal(tl_jobs_shutdown(ex, 1000000), 0);
  assert_int_equal(tl_jobs_schedule(ex, "late", "* * * * *", "tick", NULL), TL_ECLOSED);
  move_to(ex, "2026-01-01T00:05:00Z");
  tl_sleep_us(50000);
  assert_int_equal(atomic_load(&nslots), 0);
  tl_jobs_close(ex);
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
    cmocka_unit_test(one_job_per_slot),
    cmocka_unit_test(replace_and_remove),
    cmocka_unit_test(zones),
    cmocka_unit_test(errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
