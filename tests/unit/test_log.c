/* Log lines are valid JSON with the fields given; errors carry messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>
#include <trellis/trellis.h>

/* Log into a pipe and return the line(s) written. */
static char captured[65536];
static const char *capture_begin(int fds[2])
{
  assert_int_equal(pipe(fds), 0);
  tl_log_set_fd(fds[1]);
  return NULL;
}
static const char *capture_end(int fds[2])
{
  tl_log_set_fd(2);
  close(fds[1]);
  ssize_t n, got = 0;
  while ((n = read(fds[0], captured + got, sizeof captured - 1 - (size_t)got)) > 0)
    got += n;
  close(fds[0]);
  captured[got] = '\0';
  return captured;
}

static void line_is_json_with_fields_and_context(void **state)
{
  (void)state;
  int fds[2];
  capture_begin(fds);
  tl_log_set_level(TL_LOG_INFO);
  tl_log_context_set("req-1", "4bf92f3577b34da6a3ce929d0e0e4736");
  tl_log(TL_LOG_INFO, "hello \"world\"\n", TL_F_STR("s", "tab\there"), TL_F_INT("i", -42),
         TL_F_BOOL("b", true), TL_F_DBL("d", 1.5), TL_F_JSON("j", "{\"k\":[1,2]}"),
         TL_F_STR("null", NULL), TL_F_STR("bad_utf8", "a\xff" "b"));
  tl_log_context_set(NULL, NULL);
  tl_log(TL_LOG_DEBUG, "dropped below the level");
  tl_log(TL_LOG_WARN, "second");
  const char *out = capture_end(fds);

  const char *nl = strchr(out, '\n');
  assert_non_null(nl);
  json_error_t err;
  json_t *line = json_loadb(out, (size_t)(nl - out), 0, &err);
  assert_non_null(line);
  assert_string_equal(json_string_value(json_object_get(line, "level")), "info");
  assert_string_equal(json_string_value(json_object_get(line, "msg")), "hello \"world\"\n");
  assert_string_equal(json_string_value(json_object_get(line, "s")), "tab\there");
  assert_int_equal(json_integer_value(json_object_get(line, "i")), -42);
  assert_true(json_is_true(json_object_get(line, "b")));
  assert_true(json_real_value(json_object_get(line, "d")) == 1.5);
  assert_int_equal(json_integer_value(json_array_get(json_object_get(json_object_get(line, "j"), "k"), 1)), 2);
  assert_true(json_is_null(json_object_get(line, "null")));
  assert_string_equal(json_string_value(json_object_get(line, "bad_utf8")), "a\xef\xbf\xbd" "b");
  assert_string_equal(json_string_value(json_object_get(line, "request_id")), "req-1");
  assert_string_equal(json_string_value(json_object_get(line, "trace_id")),
                      "4bf92f3577b34da6a3ce929d0e0e4736");
  int64_t ts;
  assert_int_equal(tl_time_parse(json_string_value(json_object_get(line, "ts")), &ts), 0);
  assert_true(ts <= tl_time_now_us() && ts > tl_time_now_us() - 60000000);
  json_decref(line);

  /* Second line: no context, and the debug line was dropped. */
  json_t *second = json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, &err);
  assert_non_null(second);
  assert_string_equal(json_string_value(json_object_get(second, "msg")), "second");
  assert_null(json_object_get(second, "request_id"));
  json_decref(second);
  assert_null(strstr(out, "dropped"));
}

static void long_lines_are_written_whole(void **state)
{
  (void)state;
  static char big[20000];
  memset(big, 'x', sizeof big - 1);
  int fds[2];
  capture_begin(fds);
  tl_log(TL_LOG_ERROR, "big", TL_F_STR("v", big));
  const char *out = capture_end(fds);
  json_error_t err;
  json_t *line = json_loads(out, 0, &err);
  assert_non_null(line);
  assert_int_equal(strlen(json_string_value(json_object_get(line, "v"))), sizeof big - 1);
  json_decref(line);
}

static void levels_parse(void **state)
{
  (void)state;
  tl_log_level l;
  assert_int_equal(tl_log_level_parse("DEBUG", &l), 0);
  assert_int_equal(l, TL_LOG_DEBUG);
  assert_int_equal(tl_log_level_parse("warning", &l), 0);
  assert_int_equal(l, TL_LOG_WARN);
  assert_int_equal(tl_log_level_parse("verbose", &l), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "'verbose' is not a log level"));
}

static void status_table_and_messages(void **state)
{
  (void)state;
  assert_string_equal(tl_status_name(TL_ECONFLICT), "TL_ECONFLICT");
  assert_string_equal(tl_strerror(TL_ETIMEOUT), "timed out");
  assert_string_equal(tl_status_name(0), "TL_OK");
  assert_string_equal(tl_strerror(-9999), "unknown status");
  assert_int_equal(tl_error_set(TL_EINVAL, "HTTP_PORT: '%s' is bad", "abc"), TL_EINVAL);
  assert_string_equal(tl_error_last(), "HTTP_PORT: 'abc' is bad");
  assert_int_equal(tl_error_wrap(TL_EINVAL, "config"), TL_EINVAL);
  assert_string_equal(tl_error_last(), "config: HTTP_PORT: 'abc' is bad");
  tl_error_clear();
  assert_string_equal(tl_error_last(), "");
  tl_error_wrap(TL_ETIMEOUT, "db");
  assert_string_equal(tl_error_last(), "db: timed out");
  /* Messages longer than the buffer are cut, never overflow. */
  char big[3000];
  memset(big, 'y', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  tl_error_set(TL_EINVAL, "%s", big);
  tl_error_wrap(TL_EINVAL, "%s", big);
  assert_true(strlen(tl_error_last()) < 1024);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(line_is_json_with_fields_and_context),
    cmocka_unit_test(long_lines_are_written_whole),
    cmocka_unit_test(levels_parse),
    cmocka_unit_test(status_table_and_messages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
