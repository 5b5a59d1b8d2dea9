/* Backoff bounds and circuit breaker transitions on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <trellis/trellis.h>

static void backoff_ceiling_grows_and_caps(void **state)
{
  (void)state;
  tl_backoff b = { .base_us = 1000, .cap_us = 100000, .multiplier = 2 };
  assert_int_equal(tl_backoff_ceiling(&b, 0), 1000);
  assert_int_equal(tl_backoff_ceiling(&b, 1), 2000);
  assert_int_equal(tl_backoff_ceiling(&b, 6), 64000);
  assert_int_equal(tl_backoff_ceiling(&b, 7), 100000);
  /* Huge attempts must not overflow into negative or zero delays. */
  assert_int_equal(tl_backoff_ceiling(&b, 100000), 100000);
  tl_backoff dflt = { 0 };
  assert_int_equal(tl_backoff_ceiling(&dflt, 0), 100000);
  assert_int_equal(tl_backoff_ceiling(&dflt, 30), 30000000);
}

static void backoff_delay_is_full_jitter_within_bounds(void **state)
{
  (void)state;
  tl_backoff b = { .base_us = 1000, .cap_us = 50000 };
  assert_int_equal(tl_backoff_delay_r(&b, 3, 0), 0);
  assert_int_equal(tl_backoff_delay_r(&b, 3, UINT64_MAX), 8000);
  assert_int_equal(tl_backoff_delay_r(&b, 3, UINT64_MAX / 2), 4000);
  for (unsigned attempt = 0; attempt < 20; attempt++) {
    int64_t lo = INT64_MAX, hi = -1, ceil_us = tl_backoff_ceiling(&b, attempt);
    for (int i = 0; i < 2000; i++) {
      int64_t d = tl_backoff_delay(&b, attempt);
      assert_in_range(d, 0, ceil_us);
      lo = d < lo ? d : lo;
      hi = d > hi ? d : hi;
    }
    /* Spread over the range: jitter is really applied. */
    assert_true(lo < ceil_us / 10 + 1);
    assert_true(hi > ceil_us - ceil_us / 10 - 1);
  }
}

static int64_t fake_now;
static int64_t fake_clock(void *ctx)
{
  (void)ctx;
  return fake_now;
}

static void breaker_opens_half_opens_and_closes(void **state)
{
  (void)state;
  fake_now = 1000;
  tl_breaker *b;
  tl_breaker_config cfg = { .failure_threshold = 3, .open_us = 10000, .half_open_max = 1,
                            .clock = fake_clock };
  assert_int_equal(tl_breaker_new(&b, &cfg), 0);
  assert_int_equal(tl_breaker_state_get(b), TL_BREAKER_CLOSED);

  /* A success in between resets the count of consecutive failures. */
  assert_true(tl_breaker_allow(b)); tl_breaker_failure(b);
  assert_true(tl_breaker_allow(b)); tl_breaker_failure(b);
  assert_true(tl_breaker_allow(b)); tl_breaker_success(b);
  assert_true(tl_breaker_allow(b)); tl_breaker_failure(b);
  assert_true(tl_breaker_allow(b)); tl_breaker_failure(b);
  assert_int_equal(tl_breaker_state_get(b), TL_BREAKER_CLOSED);
  assert_true(tl_breaker_allow(b)); tl_breaker_failure(b);
  assert_int_equal(tl_breaker_state_get(b), TL_BREAKER_OPEN);
  assert_false(tl_breaker_allow(b));

  fake_now += 9999;
  assert_false(tl_breaker_allow(b));
  fake_now += 1;
  assert_int_equal(tl_breaker_state_get(b), TL_BREAKER_HALF_OPEN);
  assert_true(tl_breaker_allow(b));
  assert_false(tl_breaker_allow(b)); /* one trial at a time */
  tl_breaker_failure(b);             /* the trial failed: open again */
  assert_int_equal(tl_breaker_state_get(b), TL_BREAKER_OPEN);
  assert_false(tl_breaker_allow(b));

  fake_now += 10000;
  assert_true(tl_breaker_allow(b));
  tl_breaker_success(b);
  assert_int_equal(tl_breaker_state_get(b), TL_BREAKER_CLOSED);
  assert_true(tl_breaker_allow(b));
  assert_string_equal(tl_breaker_state_name(TL_BREAKER_HALF_OPEN), "half_open");
  tl_breaker_free(b);
  tl_breaker_free(NULL);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(backoff_ceiling_grows_and_caps),
    cmocka_unit_test(backoff_delay_is_full_jitter_within_bounds),
    cmocka_unit_test(breaker_opens_half_opens_and_closes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
