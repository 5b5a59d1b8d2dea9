/* `trellis db ping|query|migrate` on SQLite: output lines, exit codes.
 * The command's file is compiled into this test so it runs without the
 * CLI's dispatcher. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../tools/trellis/cmd_db.c"

#define CLI_COMMAND cli_cmd_db
#define CLI_NAME "db"
#include "cli_harness.h"

static char dbpath[128], url[160];

static void query_prints_json_lines(void **state)
{
  tl_config *cfg = *state;
  int rc = run(cfg, 6, "query", "--url", url, "SELECT $1 AS x", "42");
  if (rc) fail_msg("%s", last_fail);
  assert_string_equal(out, "{\"x\":42}\n");
  assert_int_equal(run(cfg, 9, "query", "--url", url,
                       "SELECT $1 AS t, $2 AS b, $3 AS n, $4 AS neg, 0.5 AS d, x'00ff' AS bl",
                       "he said \"hi\"\n", "true", "null", "-7"), 0);
  assert_string_equal(out, "{\"t\":\"he said \\\"hi\\\"\\n\",\"b\":1,\"n\":null,\"neg\":-7,"
                           "\"d\":0.5,\"bl\":\"\\\\x00ff\"}\n");
  assert_int_equal(run(cfg, 4, "query", "--url=sqlite::memory:",
                       "WITH t(v) AS (VALUES (1), (2)) SELECT v FROM t"), 0);
  assert_string_equal(out, "{\"v\":1}\n{\"v\":2}\n");
  /* Big numbers that don't fit int64 stay text. */
  assert_int_equal(run(cfg, 6, "query", "--url", url, "SELECT $1 AS x", "99999999999999999999"), 0);
  assert_string_equal(out, "{\"x\":\"99999999999999999999\"}\n");
}

static void defaults_to_database_url(void **state)
{
  tl_config *cfg = *state;
  tl_config_set(cfg, "DATABASE_URL", url);
  assert_int_equal(run(cfg, 3, "query", "SELECT 'ok' AS s"), 0);
  assert_string_equal(out, "{\"s\":\"ok\"}\n");
  assert_int_equal(run(cfg, 2, "ping"), 0);
  assert_non_null(strstr(out, "ok"));
  assert_int_equal(run(cfg, 2, "migrate"), 0);
  assert_non_null(strstr(out, "applied"));
  tl_config_set(cfg, "DATABASE_URL", "");
}

static void exit_codes(void **state)
{
  tl_config *cfg = *state;
  assert_int_equal(run(cfg, 1), CLI_USAGE);
  assert_int_equal(run(cfg, 2, "frobnicate"), CLI_USAGE);
  assert_int_equal(run(cfg, 2, "query"), CLI_USAGE);            /* no SQL */
  assert_int_equal(run(cfg, 3, "query", "--url"), CLI_USAGE);   /* no value */
  assert_int_equal(run(cfg, 3, "query", "SELECT 1"), CLI_USAGE); /* no URL at all */
  assert_non_null(strstr(last_fail, "DATABASE_URL"));
  assert_int_equal(run(cfg, 5, "query", "--url", url, "SELEC 1"), CLI_FAIL);
  assert_non_null(strstr(last_fail, "syntax"));
  assert_int_equal(run(cfg, 4, "ping", "--url", "postgres://u:pw@127.0.0.1:1/x"), CLI_FAIL);
  assert_null(strstr(last_fail, ":pw@"));
  assert_int_equal(run(cfg, 5, "query", "--url", "nope://x", "SELECT 1"), CLI_FAIL);
}

static int setup(void **state)
{
  snprintf(dbpath, sizeof dbpath, "/tmp/trellis-db-cli-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", dbpath);
  tl_config *cfg;
  if (tl_config_new(&cfg) != 0) return -1;
  tl_config_set(cfg, "LOG_LEVEL", "error");
  tl_log_set_level(TL_LOG_ERROR);
  *state = cfg;
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
    cmocka_unit_test(query_prints_json_lines),
    cmocka_unit_test(defaults_to_database_url),
    cmocka_unit_test(exit_codes),
  };
  return cmocka_run_group_tests_name("db_cli", tests, setup, teardown);
}
