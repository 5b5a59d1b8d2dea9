/* Value types: names, lossless conversions, and UTC timestamps in text. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "db/db_int.h"

const char *tl_type_name(tl_type t)
{
  static const char *const names[] = { "null", "bool", "int", "double",
                                        "text", "blob", "timestamp", "json" };
  return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

int tl__parse_i64(const char *s, size_t len, int64_t *out)
{
  size_t i = 0;
  bool neg = false;
  if (i < len && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  if (i == len) return TL_EPROTO;
  uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; i < len; i++) {
    unsigned d = (unsigned)(s[i] - '0');
    if (d > 9) return TL_EPROTO;
    if (v > (lim - d) / 10) return TL_EPROTO;
    v = v * 10 + d;
  }
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

/* ---- civil time (proleptic Gregorian, days since 1970-01-01) ----------- */

static int64_t days_from_civil(int64_t y, int m, int d)
{
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int64_t tl__ts_from_civil(int y, int mo, int d, int h, int mi, int s, int usec)
{
  int64_t days = days_from_civil(y, mo, d);
  return ((days * 24 + h) * 60 + mi) * 60 * 1000000 + (int64_t)s * 1000000 + usec;
}

void tl__ts_to_civil(int64_t us, int *y, int *mo, int *d, int *h, int *mi,
                     int *s, int *usec)
{
  int64_t days = us / 86400000000;
  int64_t rem = us % 86400000000;
  if (rem < 0) {
    rem += 86400000000;
    days--;
  }
  int64_t z = days + 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int dd = (int)(doy - (153 * mp + 2) / 5 + 1);
  int mm = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yoe + era * 400 + (mm <= 2));
  *mo = mm;
  *d = dd;
  *usec = (int)(rem % 1000000);
  rem /= 1000000;
  *s = (int)(rem % 60);
  rem /= 60;
  *mi = (int)(rem % 60);
  *h = (int)(rem / 60);
}

size_t tl__ts_format(int64_t us, char *buf, size_t size)
{
  int y, mo, d, h, mi, s, usec;
  tl__ts_to_civil(us, &y, &mo, &d, &h, &mi, &s, &usec);
  int n = snprintf(buf, size, "%04d-%02d-%02d %02d:%02d:%02d.%06d", y, mo, d,
                   h, mi, s, usec);
  return n < 0 ? 0 : (size_t)n;
}

static bool digits(const char *s, size_t len, size_t *i, int n, int *out)
{
  int v = 0;
  for (int k = 0; k < n; k++) {
    if (*i >= len || s[*i] < '0' || s[*i] > '9') return false;
    v = v * 10 + (s[(*i)++] - '0');
  }
  *out = v;
  return true;
}

int tl__ts_parse(const char *s, size_t len, int64_t *out)
{
  size_t i = 0;
  while (len && (s[len - 1] == ' ' || s[len - 1] == '\n')) len--;
  if (len == 8 && strncasecmp(s, "infinity", 8) == 0) { *out = INT64_MAX; return 0; }
  if (len == 9 && strncasecmp(s, "-infinity", 9) == 0) { *out = INT64_MIN; return 0; }
  bool bc = len > 3 && strncasecmp(s + len - 3, " BC", 3) == 0;
  if (bc) len -= 3;
  bool neg = false;
  if (i < len && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  int64_t year = 0;
  size_t y0 = i;
  while (i < len && s[i] >= '0' && s[i] <= '9' && i - y0 < 7) year = year * 10 + (s[i++] - '0');
  if (i - y0 < 4 || i >= len || s[i++] != '-') return TL_EPROTO;
  int mo, d, h = 0, mi = 0, sec = 0, usec = 0;
  if (!digits(s, len, &i, 2, &mo) || i >= len || s[i++] != '-' ||
      !digits(s, len, &i, 2, &d))
    return TL_EPROTO;
  if (mo < 1 || mo > 12 || d < 1 || d > 31) return TL_EPROTO;
  if (i < len && (s[i] == 'T' || s[i] == 't' || s[i] == ' ')) {
    i++;
    if (!digits(s, len, &i, 2, &h) || i >= len || s[i++] != ':' ||
        !digits(s, len, &i, 2, &mi))
      return TL_EPROTO;
    if (i < len && s[i] == ':') {
      i++;
      if (!digits(s, len, &i, 2, &sec)) return TL_EPROTO;
      if (i < len && (s[i] == '.' || s[i] == ',')) {
        i++;
        int scale = 100000, nd = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
          if (nd++ < 6) {
            usec += (s[i] - '0') * scale;
            scale /= 10;
          }
          i++;
        }
        if (nd == 0) return TL_EPROTO;
      }
    }
    if (h > 24 || mi > 59 || sec > 60) return TL_EPROTO;
  }
  int64_t off = 0;
  if (i < len && s[i] == ' ') i++;
  if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i < len && (s[i] == '+' || s[i] == '-')) {
    int sign = s[i++] == '-' ? -1 : 1, oh, om = 0, os = 0;
    if (!digits(s, len, &i, 2, &oh)) return TL_EPROTO;
    if (i < len && s[i] == ':') i++;
    if (i < len && digits(s, len, &i, 2, &om) && i < len && s[i] == ':') {
      i++;
      if (!digits(s, len, &i, 2, &os)) return TL_EPROTO;
    }
    off = sign * ((int64_t)oh * 3600 + om * 60 + os);
  }
  if (i != len) return TL_EPROTO;
  if (neg) year = -year;
  if (bc) year = 1 - year; /* 1 BC is year 0 */
  *out = tl__ts_from_civil((int)year, mo, d, h, mi, sec, usec) - off * 1000000;
  return 0;
}

/* ---- conversions ------------------------------------------------------ */

static int parse_bool(const char *s, size_t n, bool *out)
{
  static const char *const yes[] = { "t", "true", "1", "yes", "y", "on" };
  static const char *const no[] = { "f", "false", "0", "no", "n", "off" };
  for (size_t k = 0; k < 6; k++) {
    if (strlen(yes[k]) == n && strncasecmp(s, yes[k], n) == 0) { *out = true; return 0; }
    if (strlen(no[k]) == n && strncasecmp(s, no[k], n) == 0) { *out = false; return 0; }
  }
  return TL_EPROTO;
}

static int parse_double(const char *s, size_t n, double *out)
{
  char buf[64];
  if (n == 0 || n >= sizeof buf) return TL_EPROTO;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *end;
  *out = strtod(buf, &end);
  return *end ? TL_EPROTO : 0;
}

int tl__value_convert(const tl_value *in, tl_type want, tl_value *out)
{
  if (in->type == TL_TYPE_NULL) return TL_ENOTFOUND;
  if (in->type == want) {
    *out = *in;
    return 0;
  }
  bool textual = in->type == TL_TYPE_TEXT || in->type == TL_TYPE_JSON;
  *out = (tl_value){ .type = want };
  switch (want) {
  case TL_TYPE_INT:
    if (in->type == TL_TYPE_BOOL) { out->i = in->b; return 0; }
    if (in->type == TL_TYPE_DOUBLE) {
      if (in->d != floor(in->d) || !(in->d >= -9.2233720368547758e18 && in->d < 9.2233720368547758e18))
        return TL_EPROTO;
      out->i = (int64_t)in->d;
      return 0;
    }
    if (textual) return tl__parse_i64(in->s, in->len, &out->i);
    return TL_EPROTO;
  case TL_TYPE_DOUBLE:
    if (in->type == TL_TYPE_INT) { out->d = (double)in->i; return 0; }
    if (textual) return parse_double(in->s, in->len, &out->d);
    return TL_EPROTO;
  case TL_TYPE_BOOL:
    if (in->type == TL_TYPE_INT && (in->i == 0 || in->i == 1)) { out->b = in->i; return 0; }
    if (textual) return parse_bool(in->s, in->len, &out->b);
    return TL_EPROTO;
  case TL_TYPE_TEXT:
  case TL_TYPE_JSON:
    if (!textual) return TL_EPROTO;
    out->s = in->s;
    out->len = in->len;
    return 0;
  case TL_TYPE_BLOB:
    if (!textual) return TL_EPROTO;
    out->p = in->s;
    out->len = in->len;
    return 0;
  case TL_TYPE_TIMESTAMP:
    if (in->type == TL_TYPE_INT) { out->i = in->i; return 0; }
    if (textual) return tl__ts_parse(in->s, in->len, &out->i);
    return TL_EPROTO;
  default:
    return TL_EPROTO;
  }
}

/* ---- small helpers ------------------------------------------------------ */

bool tl__sql_ident_ok(const char *name)
{
  if (!name || !*name || strlen(name) > 63) return false;
  if (!(name[0] == '_' || ((name[0] | 32) >= 'a' && (name[0] | 32) <= 'z'))) return false;
  for (const char *p = name; *p; p++)
    if (!(*p == '_' || (*p >= '0' && *p <= '9') || ((*p | 32) >= 'a' && (*p | 32) <= 'z')))
      return false;
  return true;
}
