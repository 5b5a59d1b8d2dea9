/* trellis: cron expressions, compiled once and asked for their next fire
 * time. Usable on its own (docs/jobs.md, "Cron").
 *
 *   tl_cron *c;
 *   tl_cron_parse(&c, "30 2 * * 1-5", "America/New_York");
 *   int64_t next;
 *   tl_cron_next(c, tl_time_now_us(), &next);
 *   tl_cron_free(c);
 *
 * Grammar (Vixie cron): five fields "minute hour day-of-month month
 * day-of-week", or six with seconds first. Each field is a comma list of
 * `*`, `N`, `N-M`, with an optional `/STEP`; `N/STEP` means N through the
 * field's maximum. Months and weekdays take names (JAN, mon); Sunday is 0
 * or 7. When both day fields are restricted a day matches if either does,
 * unless one of them begins with `*`: then both must match. Macros:
 * @yearly @annually @monthly @weekly @daily @midnight @hourly. */
#ifndef TRELLIS_CRON_H
#define TRELLIS_CRON_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A compiled schedule. Immutable once parsed: any number of threads may
 * call tl_cron_next on it at once. */
typedef struct tl_cron tl_cron;

/* Compile `expr` for the IANA time zone `tz` ("Europe/London"; NULL, ""
 * or "UTC" mean UTC), read from the system's tzdata ($TZDIR or
 * /usr/share/zoneinfo) without touching the process's TZ; a POSIX TZ
 * rule ("EST5EDT,M3.2.0,M11.1.0") is accepted too. Both strings are
 * copied. Returns 0, TL_ENOMEM, or TL_EINVAL with a message naming the
 * field and the token ("cron '0 0 32 * *': day-of-month: '32' is out of
 * range 1-31") or the zone. A schedule that can never fire
 * ("0 0 30 2 *") is an error too. Free with tl_cron_free(). */
int tl_cron_parse(tl_cron **out, const char *expr, const char *tz);

/* The first fire time strictly after `after_us` (µs since the epoch,
 * UTC), written to `*next_us` as a whole second. Time-zone changes follow
 * cronie: a job whose minute and hour fields are both fixed (neither
 * begins with `*`) runs once right after a clock jump forward when its
 * time was skipped, and once, the first time, in a repeated hour; other
 * jobs run at the wall-clock times that exist, in both passes of a
 * repeated hour. Bounded work, never a search without end. Returns 0,
 * TL_EINVAL (NULL argument) or TL_ENOTFOUND (no fire time before the
 * year 10000). Any thread. */
int tl_cron_next(const tl_cron *c, int64_t after_us, int64_t *next_us);

/* The expression and the zone name as given to tl_cron_parse ("UTC" when
 * none). Borrowed from `c`. */
const char *tl_cron_expr(const tl_cron *c);
const char *tl_cron_zone(const tl_cron *c);

/* NULL-safe. */
void tl_cron_free(tl_cron *c);

#ifdef __cplusplus
}
#endif
#endif
