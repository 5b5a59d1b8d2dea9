/* Unit tests for the process metrics: plausible values read at collect
 * time, build info, registration rules, and text that promtool accepts. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "trellis/trellis.h"

static char *render(tl_metrics *reg)
{
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(tl_metrics_render(reg, &text, &len), 0);
  assert_non_null(text);
  assert_int_equal(len, strlen(text));
  return text;
}

/* The value of the sample line that starts with `series` followed by a
 * space ("process_open_fds", "trellis_build_info{...}"); fails if absent. */
static double sample(const char *text, const char *series)
{
  size_t n = strlen(series);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, series, n) == 0 && p[n] == ' ')
      return strtod(p + n + 1, NULL);
  }
  fail_msg("no sample '%s' in:\n%s", series, text);
  return 0;
}

static void test_values_are_plausible(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_register_process(reg), 0);
  char *text = render(reg);

  assert_true(sample(text, "process_resident_memory_bytes") > 0);
  assert_true(sample(text, "process_virtual_memory_bytes") >=
              sample(text, "process_resident_memory_bytes"));
  double fds = sample(text, "process_open_fds");
  assert_true(fds >= 3); /* stdin, stdout, stderr */
  assert_true(sample(text, "process_max_fds") >= fds);
  assert_true(sample(text, "process_threads") >= 1);
  assert_true(sample(text, "process_cpu_seconds_total") >= 0);
  double start = sample(text, "process_start_time_seconds");
  double now = (double)time(NULL);
  assert_true(start <= now + 2); /* boot time is whole seconds */
  assert_true(start > now - 3600);

  char info[256];
  snprintf(info, sizeof info, "trellis_build_info{version=\"%s\",commit=\"%s\"}", tl_version(),
           tl_build_commit());
  assert_true(sample(text, info) == 1);
  assert_non_null(strstr(text, "# TYPE process_cpu_seconds_total counter\n"));
  assert_non_null(strstr(text, "# TYPE process_resident_memory_bytes gauge\n"));
  assert_non_null(strstr(text, "# TYPE trellis_build_info gauge\n"));
  tl_free(text);
  tl_metrics_free(reg);
}

/* Values are read at each render, not once at registration. */
static void test_values_follow_the_process(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_register_process(reg), 0);
  char *before = render(reg);
  int fds[16];
  for (int i = 0; i < 16; i++)
    assert_true((fds[i] = open("/dev/null", O_RDONLY)) >= 0);
  /* Burn a little CPU so the counter moves by at least one tick. */
  volatile double x = 0;
  clock_t c0 = clock();
  while (clock() - c0 < CLOCKS_PER_SEC / 20)
    x += 1;
  char *after = render(reg);
  assert_true(sample(after, "process_open_fds") >= sample(before, "process_open_fds") + 16);
  assert_true(sample(after, "process_cpu_seconds_total") >
              sample(before, "process_cpu_seconds_total"));
  assert_true(sample(after, "process_start_time_seconds") ==
              sample(before, "process_start_time_seconds"));
  for (int i = 0; i < 16; i++)
    close(fds[i]);
  char *closed = render(reg);
  assert_true(sample(closed, "process_open_fds") == sample(before, "process_open_fds"));
  tl_free(before);
  tl_free(after);
  tl_free(closed);
  tl_metrics_free(reg);
}

static size_t count(const char *text, const char *needle)
{
  size_t n = 0;
  for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
    n++;
  return n;
}

static void test_registration_rules(void **state)
{
  (void)state;
  assert_int_equal(tl_metrics_register_process(NULL), TL_EINVAL);

  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_register_process(reg), 0);
  assert_int_equal(tl_metrics_register_process(reg), 0); /* again: nothing new */
  char *text = render(reg);
  assert_int_equal(count(text, "\nprocess_open_fds "), 1);
  assert_int_equal(count(text, "\ntrellis_build_info{"), 1);
  tl_free(text);
  tl_metrics_free(reg);

  /* A name already taken with another type is refused with its name. */
  tl_metric *m;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_counter(reg, "process_open_fds", "taken", NULL, &m), 0);
  assert_int_equal(tl_metrics_register_process(reg), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "process metrics"));
  tl_metrics_free(reg);

  /* The process-wide registry works the same way. */
  assert_int_equal(tl_metrics_register_process(tl_metrics_default()), 0);
  text = render(tl_metrics_default());
  assert_true(sample(text, "process_threads") >= 1);
  tl_free(text);
}

/* promtool's linter accepts the text (names, units, HELP/TYPE); without
 * promtool installed the checks above still hold. */
static void test_promtool_check_metrics(void **state)
{
  (void)state;
  if (system("command -v promtool >/dev/null 2>&1") != 0) {
    printf("promtool not found: skipping its lint, text checked above\n");
    return;
  }
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_register_process(reg), 0);
  char *text = render(reg);
  char path[] = "/tmp/trellis-process-metrics.XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  size_t len = strlen(text);
  assert_int_equal(write(fd, text, len), (ssize_t)len);
  close(fd);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
  int st = system(cmd);
  unlink(path);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
    fail_msg("promtool check metrics failed (%d) on:\n%s", st, text);
  tl_free(text);
  tl_metrics_free(reg);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_values_are_plausible),
    cmocka_unit_test(test_values_follow_the_process),
    cmocka_unit_test(test_registration_rules),
    cmocka_unit_test(test_promtool_check_metrics),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
