/* Timestamps, UUIDv7 and random numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <trellis/trellis.h>

static void format_known_instants(void **state)
{
  (void)state;
  char buf[40];
  tl_time_format(0, 0, buf, sizeof buf);
  assert_string_equal(buf, "1970-01-01T00:00:00Z");
  tl_time_format(INT64_C(1767227400123456), 6, buf, sizeof buf);
  assert_string_equal(buf, "2026-01-01T00:30:00.123456Z");
  tl_time_format(INT64_C(1767227400123456), 3, buf, sizeof buf);
  assert_string_equal(buf, "2026-01-01T00:30:00.123Z");
  /* Before 1970: one microsecond before the epoch, and a date in 1900. */
  tl_time_format(-1, 6, buf, sizeof buf);
  assert_string_equal(buf, "1969-12-31T23:59:59.999999Z");
  tl_time_format(INT64_C(-2208988800000000), 0, buf, sizeof buf);
  assert_string_equal(buf, "1900-01-01T00:00:00Z");
  /* A leap day. */
  tl_time_format(INT64_C(951782400000000), 0, buf, sizeof buf);
  assert_string_equal(buf, "2000-02-29T00:00:00Z");
}

static void parse_round_trips_and_offsets(void **state)
{
  (void)state;
  int64_t us;
  assert_int_equal(tl_time_parse("2026-01-01T00:30:00Z", &us), 0);
  assert_int_equal(us, INT64_C(1767227400000000));
  assert_int_equal(tl_time_parse("2026-01-01T02:30:00+02:00", &us), 0);
  assert_int_equal(us, INT64_C(1767227400000000));
  assert_int_equal(tl_time_parse("2025-12-31T19:30:00.5-05:00", &us), 0);
  assert_int_equal(us, INT64_C(1767227400500000));
  assert_int_equal(tl_time_parse("2026-01-01", &us), 0);
  assert_int_equal(us, INT64_C(1767225600000000));
  assert_int_equal(tl_time_parse("1969-12-31T23:59:59.999999Z", &us), 0);
  assert_int_equal(us, -1);
  /* Nanoseconds are accepted and truncated to microseconds. */
  assert_int_equal(tl_time_parse("1970-01-01T00:00:00.123456789Z", &us), 0);
  assert_int_equal(us, 123456);

  for (int64_t t = INT64_C(-5000000000000000); t < INT64_C(5000000000000000);
       t += INT64_C(123456789012345)) {
    char buf[40];
    tl_time_format(t, 6, buf, sizeof buf);
    assert_int_equal(tl_time_parse(buf, &us), 0);
    assert_int_equal(us, t);
  }
}

static void parse_rejects_bad_text(void **state)
{
  (void)state;
  const char *bad[] = { "", "2026", "2026-13-01", "2026-02-29", "2026-01-01T25:00:00Z",
                        "2026-01-01T00:00:00", "2026-01-01T00:00:00Zjunk", "2026-01-01T00:00Z",
                        "2026-01-01T00:00:00.Z", "2026-01-01T00:00:00+5:00", "abcd-ef-ghT" };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t us = 42;
    assert_int_equal(tl_time_parse(bad[i], &us), TL_EINVAL);
    assert_int_equal(us, 42);
    assert_non_null(strstr(tl_error_last(), "is not an RFC 3339 time"));
  }
}

static void uuid7_is_ordered_and_well_formed(void **state)
{
  (void)state;
  char prev[TL_UUID_STRLEN] = "", cur[TL_UUID_STRLEN];
  int64_t before_ms = tl_time_now_us() / 1000;
  for (int i = 0; i < 20000; i++) {
    tl_uuid7(cur);
    assert_int_equal(strlen(cur), 36);
    assert_int_equal(cur[14], '7');                  /* version */
    assert_non_null(strchr("89ab", cur[19]));         /* RFC 9562 variant */
    assert_true(strcmp(prev, cur) < 0);               /* strictly increasing */
    memcpy(prev, cur, sizeof cur);
  }
  uint8_t b[16];
  assert_int_equal(tl_uuid_parse(cur, b), 0);
  uint64_t ms = 0;
  for (int i = 0; i < 6; i++)
    ms = ms << 8 | b[i];
  /* 20,000 ids may borrow a few milliseconds ahead, never fall behind. */
  assert_true((int64_t)ms >= before_ms);
  assert_true((int64_t)ms <= tl_time_now_us() / 1000 + 10);
  char again[TL_UUID_STRLEN];
  tl_uuid_format(b, again);
  assert_string_equal(again, cur);
  assert_int_equal(tl_uuid_parse("0190a6e2-8e8a-7c3f-9d1e-7f2a3b4c5d6", b), TL_EINVAL);
  assert_int_equal(tl_uuid_parse("0190a6e28e8a-7c3f-9d1e-7f2a3b4c5d6e0", b), TL_EINVAL);
  assert_int_equal(tl_uuid_parse("0190a6e2-8e8a-7c3f-9d1e-7f2a3b4c5d6g", b), TL_EINVAL);
}

static void uuid7_at_encodes_the_instant(void **state)
{
  (void)state;
  uint8_t a[16], b[16], c[16];
  int64_t us = INT64_C(1767227400123456); /* 2026-01-01T00:30:00.123456Z */
  tl_uuid7_at(us, a);
  tl_uuid7_at(us + 500, b);               /* half a millisecond later */
  tl_uuid7_at(us, c);
  uint64_t ms = 0;
  for (int i = 0; i < 6; i++)
    ms = ms << 8 | a[i];
  assert_int_equal(ms, (uint64_t)(us / 1000));
  assert_int_equal(a[6] >> 4, 7);                    /* version */
  assert_int_equal(a[8] >> 6, 2);                    /* RFC 9562 variant */
  unsigned frac = (unsigned)((a[6] & 0x0f) << 8 | a[7]);
  assert_int_equal(frac, 456 * 4096 / 1000);         /* the sub-millisecond part */
  assert_true(memcmp(a, b, 16) < 0);                 /* ordered by time */
  assert_memory_not_equal(a, c, 16);                 /* same instant, other random bits */
  assert_memory_equal(a, c, 8);
}

static void random_numbers_vary(void **state)
{
  (void)state;
  uint64_t a = tl_rand64(), b = tl_rand64();
  assert_true(a != b);
  /* Each bit is set about half the time. */
  int ones = 0;
  for (int i = 0; i < 1000; i++)
    ones += __builtin_popcountll(tl_rand64());
  assert_in_range(ones, 30000, 34000);
  uint8_t buf[32] = { 0 }, zero[32] = { 0 };
  assert_int_equal(tl_random_bytes(buf, sizeof buf), 0);
  assert_memory_not_equal(buf, zero, sizeof buf);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(format_known_instants),
    cmocka_unit_test(parse_round_trips_and_offsets),
    cmocka_unit_test(parse_rejects_bad_text),
    cmocka_unit_test(uuid7_is_ordered_and_well_formed),
    cmocka_unit_test(uuid7_at_encodes_the_instant),
    cmocka_unit_test(random_numbers_vary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
