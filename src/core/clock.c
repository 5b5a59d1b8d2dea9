/* Clocks, UTC timestamps, UUIDv7 and random numbers. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "trellis/clock.h"
#include "trellis/error.h"

static int64_t clock_us(clockid_t id)
{
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t tl_time_now_us(void) { return clock_us(CLOCK_REALTIME); }
int64_t tl_time_mono_us(void) { return clock_us(CLOCK_MONOTONIC); }
int64_t tl_clock_wall(void *ctx) { (void)ctx; return tl_time_now_us(); }
int64_t tl_clock_mono(void *ctx) { (void)ctx; return tl_time_mono_us(); }

void tl_sleep_us(int64_t us)
{
  if (us <= 0)
    return;
  struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

/* Days since 1970-01-01 for a proleptic Gregorian date, and back. These
 * work for any year, so timestamps before 1970 format and parse exactly
 * (gmtime/timegm depend on time_t and the C library). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = (unsigned)(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int64_t floordiv(int64_t a, int64_t b)
{
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

size_t tl_time_format(int64_t us, int frac_digits, char *buf, size_t size)
{
  int64_t secs = floordiv(us, 1000000);
  int64_t frac = us - secs * 1000000;
  int64_t days = floordiv(secs, 86400);
  int64_t sod = secs - days * 86400;
  int64_t y;
  unsigned m, d;
  civil_from_days(days, &y, &m, &d);
  int n;
  if (frac_digits >= 6)
    n = snprintf(buf, size, "%04lld-%02u-%02uT%02d:%02d:%02d.%06lldZ", (long long)y, m, d,
                 (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), (long long)frac);
  else if (frac_digits > 0)
    n = snprintf(buf, size, "%04lld-%02u-%02uT%02d:%02d:%02d.%03lldZ", (long long)y, m, d,
                 (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60),
                 (long long)(frac / 1000));
  else
    n = snprintf(buf, size, "%04lld-%02u-%02uT%02d:%02d:%02dZ", (long long)y, m, d,
                 (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
  if (n < 0)
    return 0;
  return (size_t)n < size ? (size_t)n : (size ? size - 1 : 0);
}

/* Read exactly `n` digits. */
static bool digits(const char **p, int n, int *out)
{
  int v = 0;
  for (int i = 0; i < n; i++) {
    char c = (*p)[i];
    if (c < '0' || c > '9')
      return false;
    v = v * 10 + (c - '0');
  }
  *p += n;
  *out = v;
  return true;
}

static int bad_time(const char *text)
{
  return tl_error_set(TL_EINVAL,
                      "'%.64s' is not an RFC 3339 time (expected e.g. 2026-01-01T00:30:00Z)",
                      text);
}

int tl_time_parse(const char *text, int64_t *out_us)
{
  const char *p = text;
  int y, mo, d, h = 0, mi = 0, s = 0;
  int64_t frac_us = 0, offset_s = 0;
  if (!text || !digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
      !digits(&p, 2, &d))
    return bad_time(text ? text : "(null)");
  static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap))
    return bad_time(text);
  if (*p) {
    if (*p != 'T' && *p != 't' && *p != ' ')
      return bad_time(text);
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
        !digits(&p, 2, &s) || h > 23 || mi > 59 || s > 60)
      return bad_time(text);
    if (s == 60) /* a leap second is read as the next second's start */
      s = 59, frac_us = 999999;
    if (*p == '.' || *p == ',') {
      p++;
      int n = 0;
      int64_t scale = 100000;
      while (*p >= '0' && *p <= '9') {
        if (n < 6)
          frac_us += (*p - '0') * scale, scale /= 10;
        n++, p++;
      }
      if (n == 0 || n > 9)
        return bad_time(text);
    }
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      int sign = *p++ == '-' ? -1 : 1, oh, om;
      if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59)
        return bad_time(text);
      offset_s = sign * (oh * 3600 + om * 60);
    } else {
      return bad_time(text);
    }
    if (*p)
      return bad_time(text);
  }
  int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
  int64_t secs = days * 86400 + h * 3600 + mi * 60 + s - offset_s;
  *out_us = secs * 1000000 + frac_us;
  return 0;
}

/* ---- random numbers ---- */

static _Thread_local uint64_t rng[4];
static _Thread_local bool rng_seeded;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

int tl_random_bytes(void *buf, size_t n)
{
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return tl_error_set(TL_EIO, "getrandom: %s", strerror(errno));
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

uint64_t tl_rand64(void)
{
  if (!rng_seeded) {
    if (tl_random_bytes(rng, sizeof rng) != 0 || (rng[0] | rng[1] | rng[2] | rng[3]) == 0) {
      /* No OS entropy: fall back to time and address so threads differ. */
      rng[0] = (uint64_t)tl_time_mono_us() ^ 0x9e3779b97f4a7c15ULL;
      rng[1] = (uint64_t)(uintptr_t)&rng_seeded;
      rng[2] = (uint64_t)tl_time_now_us();
      rng[3] = 0x2545f4914f6cdd1dULL;
    }
    rng_seeded = true;
  }
  /* xoshiro256** */
  const uint64_t result = rotl(rng[1] * 5, 7) * 9;
  const uint64_t t = rng[1] << 17;
  rng[2] ^= rng[0];
  rng[3] ^= rng[1];
  rng[1] ^= rng[2];
  rng[0] ^= rng[3];
  rng[2] ^= t;
  rng[3] = rotl(rng[3], 45);
  return result;
}

/* ---- UUIDv7 ---- */

static pthread_mutex_t uuid_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t uuid_last_ms;
static uint16_t uuid_seq;

/* Lay out a UUIDv7: 48-bit milliseconds, 12 bits of rand_a, the variant,
 * then 62 bits from `r`. */
static void uuid7_pack(uint64_t ms, unsigned rand_a, uint64_t r, uint8_t out[16])
{
  for (int i = 0; i < 6; i++)
    out[i] = (uint8_t)(ms >> (40 - 8 * i));
  out[6] = (uint8_t)(0x70 | ((rand_a >> 8) & 0x0f));
  out[7] = (uint8_t)rand_a;
  out[8] = (uint8_t)(0x80 | ((r >> 56) & 0x3f));
  for (int i = 9; i < 16; i++)
    out[i] = (uint8_t)(r >> (8 * (15 - i)));
}

void tl_uuid7_bytes(uint8_t out[16])
{
  uint64_t now_ms = (uint64_t)(tl_time_now_us() / 1000);
  uint64_t r = tl_rand64(), r2 = tl_rand64();
  pthread_mutex_lock(&uuid_mu);
  if (now_ms > uuid_last_ms) {
    uuid_last_ms = now_ms;
    /* Start the counter low but random, leaving room to count up. */
    uuid_seq = (uint16_t)(r & 0x3ff);
  } else if (++uuid_seq > 0xfff) {
    /* 4096 ids in one millisecond (or the clock went back): borrow the
     * next millisecond so order is kept. */
    uuid_last_ms++;
    uuid_seq = 0;
  }
  uint64_t ms = uuid_last_ms;
  uint16_t seq = uuid_seq;
  pthread_mutex_unlock(&uuid_mu);
  uuid7_pack(ms, seq, r2, out);
}

void tl_uuid7_at(int64_t us, uint8_t out[16])
{
  uint64_t ms = (uint64_t)(us / 1000);
  unsigned frac = (unsigned)((uint64_t)(us % 1000) * 4096 / 1000);
  uuid7_pack(ms, frac, tl_rand64(), out);
}

void tl_uuid_format(const uint8_t in[16], char out[TL_UUID_STRLEN])
{
  static const char hex[] = "0123456789abcdef";
  char *p = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *p++ = '-';
    *p++ = hex[in[i] >> 4];
    *p++ = hex[in[i] & 15];
  }
  *p = '\0';
}

void tl_uuid7(char out[TL_UUID_STRLEN])
{
  uint8_t b[16];
  tl_uuid7_bytes(b);
  tl_uuid_format(b, out);
}

static int hexval(char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int tl_uuid_parse(const char *text, uint8_t out[16])
{
  const char *p = text;
  for (int i = 0; i < 16; i++) {
    if ((i == 4 || i == 6 || i == 8 || i == 10) && *p++ != '-')
      goto bad;
    int hi = hexval(p[0]), lo = hi < 0 ? -1 : hexval(p[1]);
    if (lo < 0)
      goto bad;
    out[i] = (uint8_t)(hi << 4 | lo);
    p += 2;
  }
  if (*p == '\0')
    return 0;
bad:
  return tl_error_set(TL_EINVAL, "'%.40s' is not a UUID (expected 8-4-4-4-12 hex digits)",
                      text ? text : "(null)");
}
