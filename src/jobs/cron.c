/* Cron expressions: the parser, the next fire time, and the time zones it
 * needs, read from TZif files (RFC 8536) and their POSIX TZ footer rule,
 * so no call ever touches the process's TZ (setenv is not thread-safe). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs_int.h"
#include "trellis/cron.h"
#include "trellis/error.h"

/* Instants the search may return: [0001-01-01, 10000-01-01) UTC. */
#define T_MIN INT64_C(-62135596800)
#define T_MAX INT64_C(253402300800)
/* cronie treats a clock change of up to 3 hours as daylight saving time;
 * a larger one is a clock reset with no catch-up and no skipping. */
#define DST_LIMIT (3 * 3600)

/* ---- calendar ------------------------------------------------------------ */

static int64_t floordiv(int64_t a, int64_t b)
{
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

int64_t tl__days_from_civil(int64_t y, unsigned m, unsigned d)
{
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;                              /* [0, 399] */
  int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;      /* [0, 146096] */
  return era * 146097 + doe - 719468;
}

void tl__civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
  days += 719468;
  int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  int64_t doe = days - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
  *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
  static const unsigned dim[13] = { 0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  return m == 2 && is_leap(y) ? 29 : dim[m];
}

/* 0 = Sunday; 1970-01-01 was a Thursday. */
static unsigned weekday(int64_t days)
{
  int64_t w = (days + 4) % 7;
  return (unsigned)(w < 0 ? w + 7 : w);
}

static int64_t year_of(int64_t t)
{
  int64_t y;
  unsigned m, d;
  tl__civil_from_days(floordiv(t, 86400), &y, &m, &d);
  return y;
}

/* ---- time zones ------------------------------------------------------------ */

static int64_t rule_local(const tl__tz_date *r, int64_t y)
{
  int64_t days;
  if (r->kind == 'J') {
    days = tl__days_from_civil(y, 1, 1) + r->d - 1 + (is_leap(y) && r->d >= 60);
  } else if (r->kind == 'D') {
    days = tl__days_from_civil(y, 1, 1) + r->d;
  } else {
    int64_t first = tl__days_from_civil(y, (unsigned)r->m, 1);
    int day = (r->d - (int)weekday(first) + 7) % 7 + 7 * (r->w - 1);
    int dim = (int)days_in_month(y, (unsigned)r->m);
    while (day >= dim)
      day -= 7;
    days = first + day;
  }
  return days * 86400 + r->secs;
}

/* The rule's two changes in year `y`, as instants. The start is given in
 * standard time, the end in daylight time. */
static void rule_changes(const tl__tz *tz, int64_t y, int64_t *start, int64_t *end)
{
  *start = rule_local(&tz->start, y) - tz->std_off;
  *end = rule_local(&tz->end, y) - tz->dst_off;
}

/* The latest of the rule's changes at or before t decides, a start of
 * daylight time winning over an end at the same instant (rules that keep
 * daylight time all year end and restart at once). So the offset only
 * changes at the rule's change instants, which next/prev_change walk. */
static int32_t rule_offset(const tl__tz *tz, int64_t t)
{
  if (!tz->rule_dst)
    return tz->std_off;
  int64_t y = year_of(t), best = INT64_MIN;
  int32_t off = tz->std_off;
  for (int64_t yy = y - 2; yy <= y + 1; yy++) {
    int64_t s, e;
    rule_changes(tz, yy, &s, &e);
    if (e <= t && e > best)
      best = e, off = tz->std_off;
    if (s <= t && s >= best)
      best = s, off = tz->dst_off;
  }
  return off;
}

/* Largest i with trans[i] <= t; requires trans[0] <= t. */
static size_t trans_index(const tl__tz *tz, int64_t t)
{
  size_t lo = 0, hi = tz->n;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (tz->trans[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

int32_t tl__tz_offset(const tl__tz *tz, int64_t t)
{
  if (!tz)
    return 0;
  if (tz->n == 0)
    return tz->has_rule ? rule_offset(tz, t) : tz->off0;
  if (t < tz->trans[0])
    return tz->off0;
  if (t >= tz->trans[tz->n - 1])
    return tz->has_rule ? rule_offset(tz, t) : tz->offs[tz->n - 1];
  return tz->offs[trans_index(tz, t)];
}

/* The first possible change > t (a transition, or a change of the rule,
 * which may turn out to change nothing). */
static int64_t raw_next(const tl__tz *tz, int64_t t)
{
  if (tz->n && t < tz->trans[tz->n - 1]) {
    if (t < tz->trans[0])
      return tz->trans[0];
    return tz->trans[trans_index(tz, t) + 1];
  }
  if (!tz->has_rule || !tz->rule_dst)
    return INT64_MAX;
  int64_t floor_t = tz->n && tz->trans[tz->n - 1] > t ? tz->trans[tz->n - 1] : t;
  int64_t y = year_of(floor_t), best = INT64_MAX;
  for (int64_t yy = y - 1; yy <= y + 2; yy++) {
    int64_t c[2];
    rule_changes(tz, yy, &c[0], &c[1]);
    for (int i = 0; i < 2; i++)
      if (c[i] > floor_t && c[i] < best)
        best = c[i];
  }
  return best;
}

/* The last possible change <= t. */
static int64_t raw_prev(const tl__tz *tz, int64_t t)
{
  if (tz->has_rule && tz->rule_dst && (tz->n == 0 || t > tz->trans[tz->n - 1])) {
    int64_t lower = tz->n ? tz->trans[tz->n - 1] : INT64_MIN;
    int64_t y = year_of(t), best = INT64_MIN;
    for (int64_t yy = y - 2; yy <= y + 1; yy++) {
      int64_t c[2];
      rule_changes(tz, yy, &c[0], &c[1]);
      for (int i = 0; i < 2; i++)
        if (c[i] <= t && c[i] > lower && c[i] > best)
          best = c[i];
    }
    if (best != INT64_MIN)
      return best;
  }
  if (tz->n == 0 || t < tz->trans[0])
    return INT64_MIN;
  return tz->trans[trans_index(tz, t)];
}

int64_t tl__tz_next_change(const tl__tz *tz, int64_t t)
{
  if (!tz)
    return INT64_MAX;
  /* Each step moves forward, and the search stops at the year 10000.
   * Like prev_change, it sees nothing before the year 1. */
  if (t < T_MIN - 1)
    t = T_MIN - 1;
  for (int64_t x = t;;) {
    x = raw_next(tz, x);
    if (x == INT64_MAX || x > T_MAX)
      return INT64_MAX;
    if (tl__tz_offset(tz, x - 1) != tl__tz_offset(tz, x))
      return x;
  }
}

int64_t tl__tz_prev_change(const tl__tz *tz, int64_t t)
{
  if (!tz)
    return INT64_MIN;
  for (int64_t x = t;;) {
    int64_t p = raw_prev(tz, x);
    if (p == INT64_MIN || p < T_MIN)
      return INT64_MIN;
    if (tl__tz_offset(tz, p - 1) != tl__tz_offset(tz, p))
      return p;
    x = p - 1;
  }
}

/* POSIX TZ rules ("EST5EDT,M3.2.0,M11.1.0", "<+0330>-3:30"). */

static bool p_name(const char **p, const char *e)
{
  const char *q = *p;
  if (q < e && *q == '<') {
    const char *s = ++q;
    while (q < e && *q != '>') {
      if (!isalnum((unsigned char)*q) && *q != '+' && *q != '-')
        return false;
      q++;
    }
    if (q == e || q - s < 3)
      return false;
    *p = q + 1;
    return true;
  }
  while (q < e && isalpha((unsigned char)*q))
    q++;
  if (q - *p < 3)
    return false;
  *p = q;
  return true;
}

static bool p_num(const char **p, const char *e, int maxdigits, int max, int *out)
{
  const char *q = *p;
  int v = 0, n = 0;
  while (q < e && *q >= '0' && *q <= '9' && n < maxdigits) {
    v = v * 10 + (*q - '0');
    q++, n++;
  }
  if (n == 0 || v > max || (q < e && *q >= '0' && *q <= '9'))
    return false;
  *p = q;
  *out = v;
  return true;
}

/* [+|-]hh[:mm[:ss]] with hours up to `maxh`. */
static bool p_hms(const char **p, const char *e, int maxh, int32_t *out)
{
  int sign = 1, h, m = 0, s = 0;
  if (*p < e && (**p == '+' || **p == '-'))
    sign = *(*p)++ == '-' ? -1 : 1;
  if (!p_num(p, e, 3, maxh, &h))
    return false;
  if (*p < e && **p == ':') {
    (*p)++;
    if (!p_num(p, e, 2, 59, &m))
      return false;
    if (*p < e && **p == ':') {
      (*p)++;
      if (!p_num(p, e, 2, 59, &s))
        return false;
    }
  }
  *out = sign * (h * 3600 + m * 60 + s);
  return true;
}

static bool p_date(const char **p, const char *e, tl__tz_date *r)
{
  *r = (tl__tz_date){ .secs = 7200 };
  if (*p < e && **p == 'M') {
    (*p)++;
    r->kind = 'M';
    if (!p_num(p, e, 2, 12, &r->m) || r->m < 1 || *p >= e || *(*p)++ != '.' ||
        !p_num(p, e, 1, 5, &r->w) || r->w < 1 || *p >= e || *(*p)++ != '.' ||
        !p_num(p, e, 1, 6, &r->d))
      return false;
  } else if (*p < e && **p == 'J') {
    (*p)++;
    r->kind = 'J';
    if (!p_num(p, e, 3, 365, &r->d) || r->d < 1)
      return false;
  } else {
    r->kind = 'D';
    if (!p_num(p, e, 3, 365, &r->d))
      return false;
  }
  if (*p < e && **p == '/') {
    (*p)++;
    if (!p_hms(p, e, 167, &r->secs))
      return false;
  }
  return true;
}

int tl__tz_parse_posix(tl__tz *tz, const char *s, size_t len)
{
  const char *p = s, *e = s + len;
  int32_t v;
  tl__tz r = *tz;
  if (!p_name(&p, e) || !p_hms(&p, e, 24, &v))
    goto bad;
  r.std_off = -v;
  r.dst_off = r.std_off;
  r.rule_dst = false;
  if (p < e) {
    if (!p_name(&p, e))
      goto bad;
    r.dst_off = r.std_off + 3600;
    if (p < e && *p != ',') {
      if (!p_hms(&p, e, 24, &v))
        goto bad;
      r.dst_off = -v;
    }
    if (p == e) {
      /* POSIX leaves the dates to the implementation: the US rules. */
      r.start = (tl__tz_date){ .kind = 'M', .m = 3, .w = 2, .d = 0, .secs = 7200 };
      r.end = (tl__tz_date){ .kind = 'M', .m = 11, .w = 1, .d = 0, .secs = 7200 };
    } else if (*p++ != ',' || !p_date(&p, e, &r.start) || p >= e || *p++ != ',' ||
               !p_date(&p, e, &r.end) || p != e) {
      goto bad;
    }
    r.rule_dst = r.dst_off != r.std_off;
  }
  r.has_rule = true;
  *tz = r;
  return 0;
bad:
  return tl_error_set(TL_EINVAL, "time zone '%s': bad POSIX TZ rule '%.*s'",
                      tz->name ? tz->name : "", (int)(len > 64 ? 64 : len), s);
}

static uint32_t be32(const unsigned char *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
  return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

void tl__tz_free(tl__tz *tz)
{
  if (!tz)
    return;
  free(tz->name);
  free(tz->trans);
  free(tz->offs);
  free(tz);
}

static tl__tz *tz_new(const char *name)
{
  tl__tz *tz = calloc(1, sizeof *tz);
  if (tz && !(tz->name = strdup(name ? name : ""))) {
    free(tz);
    tz = NULL;
  }
  return tz;
}

int tl__tz_parse_tzif(tl__tz **out, const unsigned char *d, size_t len, const char *name)
{
  *out = NULL;
  if (!name)
    name = "";
  if (len < 44 || memcmp(d, "TZif", 4) != 0)
    return tl_error_set(TL_EINVAL, "time zone '%s': not a TZif file", name);
  uint32_t cnt[6]; /* isut, isstd, leap, time, type, char */
  size_t hdr = 0, tsize = 4;
  for (int pass = 0;; pass++) {
    if (hdr + 44 > len || memcmp(d + hdr, "TZif", 4) != 0)
      return tl_error_set(TL_EINVAL, "time zone '%s': truncated TZif file", name);
    for (int i = 0; i < 6; i++)
      cnt[i] = be32(d + hdr + 20 + 4 * i);
    if (cnt[3] > 65536 || cnt[4] == 0 || cnt[4] > 256 || cnt[5] > 65536 || cnt[2] > 65536 ||
        cnt[0] > 256 || cnt[1] > 256)
      return tl_error_set(TL_EINVAL, "time zone '%s': bad TZif counts", name);
    if (pass == 1 || d[4] < '2')
      break;
    /* Version 2+: skip the 32-bit block to the 64-bit one. */
    hdr += 44 + (size_t)cnt[3] * 5 + (size_t)cnt[4] * 6 + cnt[5] + (size_t)cnt[2] * 8 + cnt[1] +
           cnt[0];
    tsize = 8;
  }
  size_t timecnt = cnt[3], typecnt = cnt[4];
  size_t body = hdr + 44;
  size_t block = timecnt * tsize + timecnt + typecnt * 6 + cnt[5] + cnt[2] * (tsize + 4) +
                 cnt[1] + cnt[0];
  if (body + block > len)
    return tl_error_set(TL_EINVAL, "time zone '%s': truncated TZif file", name);
  if (cnt[2] != 0)
    return tl_error_set(TL_EINVAL, "time zone '%s': leap-second zones are not supported", name);
  const unsigned char *times = d + body, *idx = times + timecnt * tsize,
                      *types = idx + timecnt;
  int32_t utoff[256];
  for (size_t i = 0; i < typecnt; i++) {
    utoff[i] = (int32_t)be32(types + 6 * i);
    if (utoff[i] < -25 * 3600 || utoff[i] > 26 * 3600)
      return tl_error_set(TL_EINVAL, "time zone '%s': bad UTC offset %ld", name, (long)utoff[i]);
  }
  tl__tz *tz = tz_new(name);
  if (!tz || (timecnt && (!(tz->trans = malloc(timecnt * sizeof *tz->trans)) ||
                          !(tz->offs = malloc(timecnt * sizeof *tz->offs))))) {
    tl__tz_free(tz);
    return tl_error_set(TL_ENOMEM, "time zone '%s': out of memory", name);
  }
  for (size_t i = 0; i < timecnt; i++) {
    int64_t t = tsize == 8 ? be64(times + 8 * i) : (int32_t)be32(times + 4 * i);
    if (idx[i] >= typecnt || (i > 0 && t <= tz->trans[i - 1])) {
      tl__tz_free(tz);
      return tl_error_set(TL_EINVAL, "time zone '%s': bad TZif transitions", name);
    }
    tz->trans[i] = t;
    tz->offs[i] = utoff[idx[i]];
  }
  tz->n = timecnt;
  tz->off0 = utoff[0];
  size_t f = body + block;
  if (tsize == 8 && f < len && d[f] == '\n') {
    const unsigned char *nl = memchr(d + f + 1, '\n', len - f - 1);
    size_t flen = nl ? (size_t)(nl - (d + f + 1)) : 0;
    if (nl && flen > 0 && tl__tz_parse_posix(tz, (const char *)d + f + 1, flen) != 0) {
      tl__tz_free(tz);
      return TL_EINVAL;
    }
  }
  *out = tz;
  return 0;
}

static bool zone_name_ok(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n > 255 || s[0] == '/' || s[0] == '.')
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!isalnum(c) && c != '/' && c != '_' && c != '-' && c != '+' && c != '.')
      return false;
    if (c == '.' && i + 1 < n && s[i + 1] == '.')
      return false;
  }
  return true;
}

int tl__tz_load(tl__tz **out, const char *name)
{
  *out = NULL;
  if (!name || !*name || !strcmp(name, "UTC"))
    return 0;
  const char *dir = getenv("TZDIR");
  if (!dir || !*dir)
    dir = "/usr/share/zoneinfo";
  int fd = -1;
  if (zone_name_ok(name)) {
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n > 0 && (size_t)n < sizeof path)
      fd = open(path, O_RDONLY | O_CLOEXEC);
  }
  if (fd >= 0) {
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 20)) {
      close(fd);
      return tl_error_set(TL_EINVAL, "time zone '%s': not a zone file in %s", name, dir);
    }
    size_t size = (size_t)st.st_size, got = 0;
    unsigned char *data = malloc(size ? size : 1);
    if (!data) {
      close(fd);
      return tl_error_set(TL_ENOMEM, "time zone '%s': out of memory", name);
    }
    while (got < size) {
      ssize_t r = read(fd, data + got, size - got);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        break;
      got += (size_t)r;
    }
    close(fd);
    int rc = tl__tz_parse_tzif(out, data, got, name);
    free(data);
    return rc;
  }
  /* Not a file: perhaps a POSIX TZ rule. */
  tl__tz *tz = NULL;
  if (strpbrk(name, "0123456789") && strlen(name) < 256 && (tz = tz_new(name)) &&
      tl__tz_parse_posix(tz, name, strlen(name)) == 0) {
    *out = tz;
    return 0;
  }
  tl__tz_free(tz);
  return tl_error_set(TL_EINVAL, "time zone '%.64s': unknown (no such zone in %s, and not a "
                      "POSIX TZ rule)", name, dir);
}

/* ---- parsing ------------------------------------------------------------- */

typedef struct field_def {
  const char *name;
  int min, max;
  const char *names; /* three letters per value from `name_base`, or NULL */
  int name_base;
} field_def;

enum { F_SEC, F_MIN, F_HOUR, F_DOM, F_MON, F_DOW, F_COUNT };

static const field_def fields[F_COUNT] = {
  { "second", 0, 59, NULL, 0 },
  { "minute", 0, 59, NULL, 0 },
  { "hour", 0, 23, NULL, 0 },
  { "day-of-month", 1, 31, NULL, 0 },
  { "month", 1, 12, "JANFEBMARAPRMAYJUNJULAUGSEPOCTNOVDEC", 1 },
  { "day-of-week", 0, 7, "SUNMONTUEWEDTHUFRISAT", 0 },
};

struct tl_cron {
  uint64_t bits[F_COUNT];
  bool dom_star, dow_star; /* the field begins with '*' */
  bool fixed;              /* neither minute nor hour begins with '*' */
  tl__tz *tz;
  char *expr, *zone;
};

/* Parse errors: "cron '<expr>': <field>: <detail>". */
static int perr(const char *expr, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(const char *expr, const char *field, const char *fmt, ...)
{
  char detail[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  size_t n = strlen(expr);
  if (field)
    return tl_error_set(TL_EINVAL, "cron '%.100s%s': %s: %s", expr, n > 100 ? "..." : "", field,
                        detail);
  return tl_error_set(TL_EINVAL, "cron '%.100s%s': %s", expr, n > 100 ? "..." : "", detail);
}

#define TOK(s, n) (int)((n) > 40 ? 40 : (n)), (s)

static int parse_value(const char *expr, const field_def *f, const char *s, size_t n, int *out)
{
  if (n == 0)
    return perr(expr, f->name, "missing value");
  if (isdigit((unsigned char)s[0])) {
    int v = 0;
    for (size_t i = 0; i < n; i++) {
      if (!isdigit((unsigned char)s[i]))
        return perr(expr, f->name, "'%.*s' is not a number", TOK(s, n));
      if (v < 1000000)
        v = v * 10 + (s[i] - '0');
    }
    if (v < f->min || v > f->max)
      return perr(expr, f->name, "'%.*s' is out of range %d-%d", TOK(s, n), f->min, f->max);
    *out = v;
    return 0;
  }
  if (f->names && n == 3) {
    for (int i = 0; f->names[3 * i]; i++) {
      if (toupper((unsigned char)s[0]) == f->names[3 * i] &&
          toupper((unsigned char)s[1]) == f->names[3 * i + 1] &&
          toupper((unsigned char)s[2]) == f->names[3 * i + 2]) {
        *out = f->name_base + i;
        return 0;
      }
    }
  }
  if (f->names && isalpha((unsigned char)s[0]))
    return perr(expr, f->name, "'%.*s' is not a %s name (%s)", TOK(s, n),
                f->name_base ? "month" : "day", f->name_base ? "JAN-DEC" : "SUN-SAT");
  return perr(expr, f->name, "'%.*s' is not a number", TOK(s, n));
}

/* One list item: "*", "N", "N-M", each with an optional "/STEP". */
static int parse_item(const char *expr, const field_def *f, const char *s, size_t n,
                      uint64_t *bits)
{
  const char *slash = memchr(s, '/', n);
  size_t rlen = slash ? (size_t)(slash - s) : n;
  int lo, hi, step = 1, rc;
  if (slash) {
    const char *st = slash + 1;
    size_t sn = n - rlen - 1;
    int span = f->max - f->min + 1, v = 0;
    if (sn == 0)
      return perr(expr, f->name, "'%.*s' has no step after '/'", TOK(s, n));
    for (size_t i = 0; i < sn; i++) {
      if (!isdigit((unsigned char)st[i]))
        return perr(expr, f->name, "step '%.*s' is not a number", TOK(st, sn));
      if (v <= span)
        v = v * 10 + (st[i] - '0');
    }
    if (v < 1 || v > span)
      return perr(expr, f->name, "step '%.*s' is out of range 1-%d", TOK(st, sn), span);
    step = v;
  }
  if (rlen == 1 && s[0] == '*') {
    lo = f->min;
    hi = f->max;
  } else {
    const char *dash = memchr(s, '-', rlen);
    if (dash) {
      if ((rc = parse_value(expr, f, s, (size_t)(dash - s), &lo)) ||
          (rc = parse_value(expr, f, dash + 1, rlen - (size_t)(dash - s) - 1, &hi)))
        return rc;
      if (lo > hi)
        return perr(expr, f->name, "'%.*s' is a backwards range", TOK(s, rlen));
    } else {
      if ((rc = parse_value(expr, f, s, rlen, &lo)))
        return rc;
      hi = slash ? f->max : lo;
    }
  }
  for (int v = lo; v <= hi; v += step)
    *bits |= UINT64_C(1) << v;
  return 0;
}

static int parse_field(const char *expr, const field_def *f, const char *s, size_t n,
                       uint64_t *bits)
{
  *bits = 0;
  const char *end = s + n;
  for (const char *p = s;;) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *ie = comma ? comma : end;
    if (ie == p)
      return perr(expr, f->name, "empty item in list '%.*s'", TOK(s, n));
    int rc = parse_item(expr, f, p, (size_t)(ie - p), bits);
    if (rc)
      return rc;
    if (!comma)
      return 0;
    p = comma + 1;
  }
}

static const struct {
  const char *name, *expr;
} macros[] = {
  { "@yearly", "0 0 1 1 *" },  { "@annually", "0 0 1 1 *" }, { "@monthly", "0 0 1 * *" },
  { "@weekly", "0 0 * * 0" },  { "@daily", "0 0 * * *" },    { "@midnight", "0 0 * * *" },
  { "@hourly", "0 * * * *" },
};

static int compile(tl_cron *c, const char *expr)
{
  const char *s = expr, *e = expr + strlen(expr);
  for (const char *p = s; p < e; p++) {
    unsigned char ch = (unsigned char)*p;
    if ((ch < 0x20 && ch != '\t') || ch > 0x7e)
      return tl_error_set(TL_EINVAL, "cron: invalid character (byte 0x%02x) at offset %zu", ch,
                          (size_t)(p - s));
  }
  if (e - s > 1024)
    return perr(expr, NULL, "longer than 1024 characters");
  while (s < e && (*s == ' ' || *s == '\t'))
    s++;
  while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
    e--;
  if (s == e)
    return perr(expr, NULL, "empty expression");
  if (*s == '@') {
    size_t wl = strcspn(s, " \t");
    if (s + wl != e)
      return perr(expr, NULL, "unexpected text after '%.*s'", TOK(s, wl));
    for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++)
      if (strlen(macros[i].name) == wl && strncasecmp(s, macros[i].name, wl) == 0)
        return compile(c, macros[i].expr);
    if (wl == 7 && strncasecmp(s, "@reboot", 7) == 0)
      return perr(expr, NULL, "'@reboot' is not supported: it names no time");
    return perr(expr, NULL, "'%.*s' is not a macro (@yearly, @annually, @monthly, @weekly, "
                "@daily, @midnight, @hourly)", TOK(s, wl));
  }
  const char *fs[7];
  size_t fl[7];
  int nf = 0;
  for (const char *p = s; p < e;) {
    size_t l = strcspn(p, " \t");
    if (p + l > e)
      l = (size_t)(e - p);
    if (nf < 7) {
      fs[nf] = p;
      fl[nf] = l;
    }
    nf++;
    p += l;
    while (p < e && (*p == ' ' || *p == '\t'))
      p++;
  }
  if (nf != 5 && nf != 6)
    return perr(expr, NULL, "expected 5 fields (minute hour day-of-month month day-of-week) "
                "or 6 (second first), got %d", nf);
  int first = nf == 6 ? F_SEC : F_MIN;
  if (nf == 5)
    c->bits[F_SEC] = 1;
  for (int i = 0; i < nf; i++) {
    int rc = parse_field(expr, &fields[first + i], fs[i], fl[i], &c->bits[first + i]);
    if (rc)
      return rc;
  }
  const char *dom = fs[F_DOM - first], *mon = fs[F_MON - first];
  size_t doml = fl[F_DOM - first], monl = fl[F_MON - first];
  c->dom_star = dom[0] == '*';
  c->dow_star = fs[F_DOW - first][0] == '*';
  c->fixed = fs[F_MIN - first][0] != '*' && fs[F_HOUR - first][0] != '*';
  if (c->bits[F_DOW] & (1u << 7))
    c->bits[F_DOW] |= 1;
  c->bits[F_DOW] &= 0x7f;
  /* With a '*' in a day field both day fields must match: the selected
   * days must exist in some selected month (Feb 29 counts), or the
   * schedule never fires. */
  if (c->dom_star || c->dow_star) {
    static const unsigned maxdim[13] = { 0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool ok = false;
    for (unsigned m = 1; m <= 12 && !ok; m++)
      if (c->bits[F_MON] >> m & 1)
        ok = (c->bits[F_DOM] & ((UINT64_C(2) << maxdim[m]) - 2)) != 0;
    if (!ok)
      return perr(expr, "day-of-month", "'%.*s' never occurs in month '%.*s'", TOK(dom, doml),
                  TOK(mon, monl));
  }
  return 0;
}

void tl_cron_free(tl_cron *c)
{
  if (!c)
    return;
  tl__tz_free(c->tz);
  free(c->expr);
  free(c->zone);
  free(c);
}

int tl_cron_parse(tl_cron **out, const char *expr, const char *tz)
{
  if (!out || !expr)
    return tl_error_set(TL_EINVAL, "tl_cron_parse: NULL argument");
  *out = NULL;
  tl_cron *c = calloc(1, sizeof *c);
  if (!c || !(c->expr = strdup(expr)) || !(c->zone = strdup(tz && *tz ? tz : "UTC"))) {
    tl_cron_free(c);
    return tl_error_set(TL_ENOMEM, "cron: out of memory");
  }
  int rc = compile(c, expr);
  if (rc == 0)
    rc = tl__tz_load(&c->tz, tz);
  if (rc) {
    tl_cron_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

const char *tl_cron_expr(const tl_cron *c)
{
  return c ? c->expr : NULL;
}

const char *tl_cron_zone(const tl_cron *c)
{
  return c ? c->zone : NULL;
}

/* ---- the search ------------------------------------------------------------ */

static bool day_ok(const tl_cron *c, int64_t y, unsigned m, unsigned d)
{
  bool dom = c->bits[F_DOM] >> d & 1;
  bool dow = c->bits[F_DOW] >> weekday(tl__days_from_civil(y, m, d)) & 1;
  return (c->dom_star || c->dow_star) ? dom && dow : dom || dow;
}

/* The smallest set bit >= from, or -1. */
static int next_bit(uint64_t bits, int from, int max)
{
  if (from > max)
    return -1;
  uint64_t b = bits >> from;
  if (!b)
    return -1;
  int v = from + __builtin_ctzll(b);
  return v <= max ? v : -1;
}

/* The first local wall-clock time (seconds, as if UTC) in [lo, hi) that
 * matches every field. Moves field by field, each step forward, so the
 * work is bounded by the days in the range, and at most ~40 years pass
 * between matches for a schedule that compiled. */
static bool civil_next(const tl_cron *c, int64_t lo, int64_t hi, int64_t *out)
{
  if (lo >= hi)
    return false;
  int64_t days = floordiv(lo, 86400), y;
  int sod = (int)(lo - days * 86400);
  unsigned m, d;
  tl__civil_from_days(days, &y, &m, &d);
  int h = sod / 3600, mi = sod / 60 % 60, s = sod % 60;
  for (;;) {
    if ((tl__days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + s) >= hi)
      return false;
    int v;
    if (!(c->bits[F_MON] >> m & 1)) {
      v = next_bit(c->bits[F_MON], (int)m + 1, 12);
      if (v < 0) {
        y++;
        v = next_bit(c->bits[F_MON], 1, 12);
      }
      m = (unsigned)v, d = 1, h = mi = s = 0;
      continue;
    }
    if (!day_ok(c, y, m, d)) {
      goto next_day;
    }
    if (!(c->bits[F_HOUR] >> h & 1)) {
      if ((v = next_bit(c->bits[F_HOUR], h + 1, 23)) < 0)
        goto next_day;
      h = v, mi = s = 0;
      continue;
    }
    if (!(c->bits[F_MIN] >> mi & 1)) {
      if ((v = next_bit(c->bits[F_MIN], mi + 1, 59)) < 0)
        goto next_hour;
      mi = v, s = 0;
      continue;
    }
    if (!(c->bits[F_SEC] >> s & 1)) {
      if ((v = next_bit(c->bits[F_SEC], s + 1, 59)) < 0)
        goto next_minute;
      s = v;
      continue;
    }
    *out = tl__days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + s;
    return true;
  next_minute:
    s = 0;
    if (++mi < 60)
      continue;
  next_hour:
    mi = s = 0;
    if (++h < 24)
      continue;
  next_day:
    h = mi = s = 0;
    if (++d > days_in_month(y, m)) {
      d = 1;
      if (++m > 12)
        m = 1, y++;
    }
  }
}

/* Search instants > t zone segment by zone segment (spans of constant
 * offset), applying cronie's rules at each change. */
static bool search(const tl_cron *c, int64_t t, int64_t *out)
{
  if (!c->tz) {
    int64_t l;
    if (!civil_next(c, t + 1, T_MAX, &l))
      return false;
    *out = l;
    return true;
  }
  while (t < T_MAX) {
    int64_t x = t + 1;
    int32_t off = tl__tz_offset(c->tz, x);
    int64_t start = tl__tz_prev_change(c->tz, x);
    int64_t end = tl__tz_next_change(c->tz, x);
    int32_t prev = start == INT64_MIN ? off : tl__tz_offset(c->tz, start - 1);
    int64_t delta = (int64_t)off - prev, l;
    /* Jump forward: a fixed-time job whose time was skipped runs once,
     * right after the jump. */
    if (c->fixed && start == x && delta > 0 && delta <= DST_LIMIT &&
        civil_next(c, start + prev, start + off, &l)) {
      *out = start;
      return true;
    }
    int64_t lo = x + off;
    /* Jump back: a fixed-time job does not run again in the repeated
     * wall-clock times. */
    if (c->fixed && start != INT64_MIN && delta < 0 && -delta <= DST_LIMIT &&
        lo < start + prev)
      lo = start + prev;
    int64_t hi = (end == INT64_MAX || end > T_MAX ? T_MAX : end) + off;
    if (civil_next(c, lo, hi, &l)) {
      *out = l - off;
      return true;
    }
    if (end == INT64_MAX)
      return false;
    t = end - 1;
  }
  return false;
}

int tl_cron_next(const tl_cron *c, int64_t after_us, int64_t *next_us)
{
  if (!c || !next_us)
    return tl_error_set(TL_EINVAL, "tl_cron_next: NULL argument");
  int64_t t = floordiv(after_us, 1000000);
  if (t < T_MIN)
    t = T_MIN - 1;
  int64_t r;
  if (t >= T_MAX - 1 || !search(c, t, &r) || r >= T_MAX)
    return tl_error_set(TL_ENOTFOUND, "cron '%.100s': no fire time before the year 10000",
                        c->expr);
  *next_us = r * 1000000;
  return 0;
}
