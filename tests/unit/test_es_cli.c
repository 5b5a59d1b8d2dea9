/* `trellis events append|read|tail` on SQLite: JSON lines, the conflict
 * message and exit codes. The command's file is compiled in. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../tools/trellis/cmd_events.c"

#define CLI_COMMAND cli_cmd_events
#define CLI_NAME "events"
#include "cli_harness.h"

static char dbpath[128], url[160];

static int lines(void)
{
  int n = 0;
  for (const char *p = out; *p; p++) n += *p == '\n';
  return n;
}

static void append_read_tail(void **state)
{
  tl_config *cfg = *state;
  tl_config_set(cfg, "DATABASE_URL", url);
  assert_int_equal(run(cfg, 7, "append", "user-123", "UserCreated",
                       "{\"name\":\"John\",\"email\":\"john@example.com\"}", "--expected-version",
                       "no-stream"), CLI_OK);
  json_t *j = json_loads(out, 0, NULL);
  assert_non_null(j);
  assert_int_equal(json_integer_value(json_object_get(j, "version")), 1);
  assert_string_equal(json_string_value(json_object_get(j, "category")), "user");
  int64_t pos1 = json_integer_value(json_object_get(j, "position"));
  json_decref(j);
  /* The conflict says what was expected and what was found. */
  assert_int_equal(run(cfg, 7, "append", "user-123", "UserCreated", "{}", "--expected-version", "0"),
                   CLI_FAIL);
  assert_non_null(strstr(last_fail, "expected version 0, found 1"));
  tl_sleep_us(2000);
  char mid[40];
  tl_time_format(tl_time_now_us(), 6, mid, sizeof mid);
  tl_sleep_us(2000);
  assert_int_equal(run(cfg, 7, "append", "user-123", "EmailChanged", "{\"email\":\"j@x\"}",
                       "--expected-version", "1"), CLI_OK);
  assert_int_equal(run(cfg, 3, "read", "user-123"), CLI_OK);
  assert_int_equal(lines(), 2);
  assert_int_equal(run(cfg, 5, "read", "user-123", "--until", mid), CLI_OK);
  assert_int_equal(lines(), 1);
  assert_non_null(strstr(out, "\"type\":\"UserCreated\""));
  assert_int_equal(run(cfg, 4, "read", "user-123", "--backward"), CLI_OK);
  assert_true(strstr(out, "EmailChanged") < strstr(out, "UserCreated"));
  assert_int_equal(run(cfg, 5, "read", "user-123", "--from-version", "2"), CLI_OK);
  assert_int_equal(lines(), 1);
  assert_int_equal(run(cfg, 4, "append", "order-1", "OrderPlaced"), CLI_USAGE);
  assert_int_equal(run(cfg, 5, "append", "order-1", "OrderPlaced", "{}"), CLI_OK);
  assert_int_equal(run(cfg, 5, "tail", "--no-follow", "--category", "user"), CLI_OK);
  assert_int_equal(lines(), 2);
  char p2[32];
  snprintf(p2, sizeof p2, "%lld", (long long)pos1 + 1);
  assert_int_equal(run(cfg, 5, "tail", "--no-follow", "--from", p2), CLI_OK);
  assert_int_equal(lines(), 2);
  assert_int_equal(run(cfg, 5, "read", "user-123", "--until", "yesterday"), CLI_USAGE);
  assert_int_equal(run(cfg, 6, "append", "s-1", "T", "{}", "--expected-version"), CLI_USAGE);
  assert_int_equal(run(cfg, 7, "append", "s-1", "T", "{}", "--expected-version", "maybe"), CLI_USAGE);
  assert_int_equal(run(cfg, 3, "bogus", "x"), CLI_USAGE);
}

static int setup(void **state)
{
  tl_config *cfg;
  if (tl_config_new(&cfg)) return -1;
  *state = cfg;
  return 0;
}

static int teardown(void **state)
{
  tl_config_free(*state);
  return 0;
}

int main(void)
{
  snprintf(dbpath, sizeof dbpath, "/tmp/trellis-es-cli-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", dbpath);
  const struct CMUnitTest tests[] = { cmocka_unit_test(append_read_tail) };
  int failed = cmocka_run_group_tests_name("es_cli", tests, setup, teardown);
  char p[200];
  unlink(dbpath);
  snprintf(p, sizeof p, "%s-wal", dbpath);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", dbpath);
  unlink(p);
  return failed ? 1 : 0;
}
