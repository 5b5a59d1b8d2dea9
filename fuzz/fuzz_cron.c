/* libFuzzer target for cron: the expression parser, the next-time search,
 * POSIX TZ rules and TZif data. Nothing may crash, leak, search without
 * bound (libFuzzer's -timeout catches that) or break the invariants below.
 *
 * Input: byte 0 picks the zone (value % 6): 0 UTC, 1 America/New_York,
 * 2 Europe/London, 3 Australia/Lord_Howe, 4 a POSIX TZ rule given after
 * the first '\n' of the text, 5 the text is TZif data (its zone is then
 * probed, the expression is "0 2 * * *"). Bytes 1-8: the start time, µs,
 * little-endian. The rest: the text. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/jobs_int.h"
#include "trellis/cron.h"
#include "trellis/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

static void walk(const tl_cron *c, int64_t t)
{
  for (int i = 0; i < 6; i++) {
    int64_t n = 0;
    int rc = tl_cron_next(c, t, &n);
    if (rc != 0) {
      check(rc == TL_ENOTFOUND, "next failed with a code other than TL_ENOTFOUND");
      check(tl_error_last()[0] != '\0', "failure without a message");
      return;
    }
    check(n > t, "next is not after the start");
    check(n % 1000000 == 0, "next is not a whole second");
    int64_t again = 0;
    check(tl_cron_next(c, n - 1, &again) == 0 && again == n,
          "next from just before a fire time is not that fire time");
    t = n;
  }
}

static void probe_zone(const tl__tz *tz, int64_t t)
{
  int64_t s = t / 1000000;
  for (int i = 0; i < 4; i++) {
    int32_t off = tl__tz_offset(tz, s);
    check(off >= -26 * 3600 && off <= 26 * 3600, "offset out of range");
    int64_t n = tl__tz_next_change(tz, s);
    if (n == INT64_MAX)
      break;
    check(n > s, "next change is not after");
    check(tl__tz_prev_change(tz, n) == n, "prev change of a change is not itself");
    s = n;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const char *const zones[] = { NULL, "America/New_York", "Europe/London",
                                       "Australia/Lord_Howe" };
  if (size < 1)
    return 0;
  int mode = data[0] % 6;
  int64_t start = INT64_C(1767225600000000);
  if (size >= 9) {
    uint64_t u = 0;
    for (int i = 8; i >= 1; i--)
      u = u << 8 | data[i];
    start = (int64_t)u;
  }
  size_t off = size >= 9 ? 9 : size;
  size_t n = size - off;
  if (mode == 5) {
    tl__tz *tz = NULL;
    if (tl__tz_parse_tzif(&tz, data + off, n, "fuzz") == 0) {
      probe_zone(tz, start);
      tl__tz_free(tz);
    } else {
      check(tl_error_last()[0] != '\0', "failure without a message");
    }
    return 0;
  }
  char *text = malloc(n + 1);
  if (!text)
    return 0;
  memcpy(text, data + off, n);
  text[n] = '\0';
  const char *tz = mode < 4 ? zones[mode] : NULL;
  if (mode == 4) {
    char *nl = strchr(text, '\n');
    if (nl) {
      *nl = '\0';
      tz = nl + 1;
    }
  }
  tl_cron *c = NULL;
  int rc = tl_cron_parse(&c, text, tz);
  if (rc == 0) {
    check(c != NULL, "parse succeeded without a schedule");
    walk(c, start);
    tl__tz *zone = NULL;
    if (tz && tl__tz_load(&zone, tz) == 0) {
      probe_zone(zone, start);
      tl__tz_free(zone);
    }
    tl_cron_free(c);
  } else {
    check(rc == TL_EINVAL, "parse failed with a code other than TL_EINVAL");
    check(c == NULL, "failed parse left a schedule");
    check(tl_error_last()[0] != '\0', "failure without a message");
  }
  free(text);
  return 0;
}
