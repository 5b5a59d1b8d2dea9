/* `trellis jobs ls|retry|cancel` on SQLite: JSON lines, filters, exit
 * codes. The command's file is compiled into this test so it runs
 * without the CLI's dispatcher. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../tools/trellis/cmd_jobs.c"

#define CLI_COMMAND cli_cmd_jobs
#define CLI_NAME "jobs"
#include "cli_harness.h"

static char dbpath[128], url[160];
static int64_t ids[4];

static int lines(const char *s)
{
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

static int fail_job(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  return tl_job_discard(ctx, "bad \"input\"");
}

static void ls_filters_and_prints_json_lines(void **state)
{
  tl_config *cfg = *state;
  int rc = run(cfg, 4, "ls", "--url", url);
  if (rc) fail_msg("%s", last_fail);
  assert_int_equal(lines(out), 4);
  char want[128];
  snprintf(want, sizeof want, "{\"id\":%lld,\"kind\":\"mail\",\"queue\":\"default\","
           "\"state\":\"pending\",\"priority\":3,", (long long)ids[0]);
  assert_memory_equal(out, want, strlen(want));
  assert_non_null(strstr(out, "\"args\":{\"to\":\"a@b\"}}\n"));
  assert_non_null(strstr(out, "\"last_error\":\"bad \\\"input\\\"\""));
  assert_non_null(strstr(out, "\"run_at\":\"2"));
  assert_int_equal(run(cfg, 6, "ls", "--url", url, "--state", "discarded"), 0);
  assert_int_equal(lines(out), 1);
  assert_non_null(strstr(out, "\"kind\":\"bad\""));
  assert_int_equal(run(cfg, 6, "ls", "--url", url, "--state", "available"), 0);
  assert_int_equal(lines(out), 3);
  assert_int_equal(run(cfg, 9, "ls", "--url", url, "--kind=mail", "--limit", "2", "--state",
                       "pending"), 0);
  assert_int_equal(lines(out), 2);
  assert_null(strstr(out, "\"kind\":\"report\""));
}

static void retry_and_cancel(void **state)
{
  tl_config *cfg = *state;
  char id[32];
  snprintf(id, sizeof id, "%lld", (long long)ids[1]);
  assert_int_equal(run(cfg, 5, "cancel", "--url", url, id), 0);
  assert_non_null(strstr(out, "cancelled"));
  assert_int_equal(run(cfg, 5, "cancel", "--url", url, id), CLI_FAIL);
  assert_non_null(strstr(last_fail, "is cancelled"));
  assert_int_equal(run(cfg, 5, "retry", "--url", url, id), 0);
  assert_non_null(strstr(out, "pending"));
  snprintf(id, sizeof id, "%lld", (long long)ids[3]);
  assert_int_equal(run(cfg, 5, "retry", "--url", url, id), 0);
  assert_int_equal(run(cfg, 6, "ls", "--url", url, "--state", "discarded"), 0);
  assert_int_equal(lines(out), 0);
  assert_int_equal(run(cfg, 5, "retry", "--url", url, "999999"), CLI_FAIL);
  assert_non_null(strstr(last_fail, "not found"));
}

static void exit_codes(void **state)
{
  tl_config *cfg = *state;
  assert_int_equal(run(cfg, 1), CLI_USAGE);
  assert_int_equal(run(cfg, 2, "frobnicate"), CLI_USAGE);
  assert_int_equal(run(cfg, 4, "retry", "--url", url), CLI_USAGE);           /* no id */
  assert_int_equal(run(cfg, 5, "retry", "--url", url, "x1"), CLI_USAGE);     /* bad id */
  assert_int_equal(run(cfg, 6, "ls", "--url", url, "--state", "zombie"), CLI_USAGE);
  assert_int_equal(run(cfg, 6, "ls", "--url", url, "--limit", "0"), CLI_USAGE);
  assert_int_equal(run(cfg, 3, "ls", "--kind"), CLI_USAGE);
  assert_int_equal(run(cfg, 2, "ls"), CLI_USAGE); /* no URL at all */
  assert_non_null(strstr(last_fail, "DATABASE_URL"));
  assert_int_equal(run(cfg, 4, "ls", "--url", "postgres://u:pw@127.0.0.1:1/x"), CLI_FAIL);
  assert_null(strstr(last_fail, ":pw@"));
  tl_config_set(cfg, "DATABASE_URL", url);
  assert_int_equal(run(cfg, 2, "ls"), 0);
  tl_config_set(cfg, "DATABASE_URL", "");
}

static int setup(void **state)
{
  snprintf(dbpath, sizeof dbpath, "/tmp/trellis-jobs-cli-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", dbpath);
  tl_config *cfg;
  if (tl_config_new(&cfg) != 0) return -1;
  tl_log_set_level(TL_LOG_ERROR);
  *state = cfg;
  /* Some jobs: three pending, one discarded. */
  tl_db *db;
  tl_jobs *ex;
  tl_metrics *reg;
  tl_metrics_new(&reg);
  if (tl_db_connect(&db, &(tl_db_config){ .url = url }) != 0 ||
      tl_jobs_open(&ex, &(tl_jobs_config){ .workers = 1, .db = db, .paused = true,
                                           .metrics = reg }) != 0)
    return -1;
  tl_jobs_register(ex, &(tl_worker){ .kind = "mail", .execute = fail_job });
  tl_jobs_register(ex, &(tl_worker){ .kind = "report", .execute = fail_job });
  tl_jobs_register(ex, &(tl_worker){ .kind = "bad", .execute = fail_job });
  tl_jobs_submit(ex, "mail", "{\"to\":\"a@b\"}", &(tl_job_opts){ .priority = 3, .id_out = &ids[0] });
  tl_jobs_submit(ex, "mail", "{\"to\":\"c@d\"}", &(tl_job_opts){ .id_out = &ids[1] });
  tl_jobs_submit(ex, "report", NULL, &(tl_job_opts){ .id_out = &ids[2] });
  tl_jobs_submit(ex, "bad", "[1]", &(tl_job_opts){ .priority = 9, .id_out = &ids[3] });
  tl_jobs_resume(ex);
  tl_job_info *i = NULL;
  for (int k = 0; k < 5000; k++) {
    if (tl_jobs_get(ex, ids[3], &i) == 0 && i->state == TL_JOB_DISCARDED) break;
    tl_job_info_free(i);
    i = NULL;
    tl_sleep_us(1000);
  }
  tl_jobs_pause(ex);
  tl_job_info_free(i);
  tl_jobs_close(ex);
  /* The other jobs may have started: put them back as they were. */
  tl_db_exec(db, NULL, "UPDATE trellis_jobs SET state = 'available', attempt = 0,"
             " last_error = NULL, finished_us = NULL WHERE kind <> 'bad'", TL_NOARGS);
  tl_db_close(db);
  tl_metrics_free(reg);
  return 0;
}

static int teardown(void **state)
{
  tl_config_free(*state);
  char p[160];
  unlink(dbpath);
  snprintf(p, sizeof p, "%s-wal", dbpath);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", dbpath);
  unlink(p);
  return 0;
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(ls_filters_and_prints_json_lines),
    cmocka_unit_test(retry_and_cancel),
    cmocka_unit_test(exit_codes),
  };
  return cmocka_run_group_tests_name("jobs_cli", tests, setup, teardown);
}
