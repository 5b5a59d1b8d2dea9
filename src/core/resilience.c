/* Exponential backoff with full jitter, and a circuit breaker. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "trellis/error.h"
#include "trellis/resilience.h"

int64_t tl_backoff_ceiling(const tl_backoff *b, unsigned attempt)
{
  int64_t base = b && b->base_us > 0 ? b->base_us : 100000;
  int64_t cap = b && b->cap_us > 0 ? b->cap_us : 30000000;
  double mult = b && b->multiplier >= 1.0 ? b->multiplier : 2.0;
  /* Computed in floating point and clamped, so huge attempts cannot
   * overflow. */
  double ceil_us = (double)base * pow(mult, (double)attempt);
  if (!(ceil_us < (double)cap))
    return cap;
  return (int64_t)ceil_us;
}

int64_t tl_backoff_delay_r(const tl_backoff *b, unsigned attempt, uint64_t r)
{
  int64_t ceil_us = tl_backoff_ceiling(b, attempt);
  /* Uniform in [0, ceil_us]: scale the top 53 bits of r. */
  double u = (double)(r >> 11) / (double)(UINT64_C(1) << 53);
  int64_t d = (int64_t)(u * (double)(ceil_us + 1));
  return d > ceil_us ? ceil_us : d;
}

int64_t tl_backoff_delay(const tl_backoff *b, unsigned attempt)
{
  return tl_backoff_delay_r(b, attempt, tl_rand64());
}

struct tl_breaker {
  pthread_mutex_t mu;
  tl_breaker_config cfg;
  tl_breaker_state state;
  unsigned failures;   /* consecutive, while closed */
  unsigned trials;     /* calls let through while half-open */
  int64_t opened_at;
};

int tl_breaker_new(tl_breaker **out, const tl_breaker_config *cfg)
{
  tl_breaker *b = calloc(1, sizeof *b);
  if (!b)
    return tl_error_set(TL_ENOMEM, "breaker: out of memory");
  if (cfg)
    b->cfg = *cfg;
  if (!b->cfg.failure_threshold)
    b->cfg.failure_threshold = 5;
  if (b->cfg.open_us <= 0)
    b->cfg.open_us = 30000000;
  if (!b->cfg.half_open_max)
    b->cfg.half_open_max = 1;
  if (!b->cfg.clock)
    b->cfg.clock = tl_clock_mono;
  pthread_mutex_init(&b->mu, NULL);
  *out = b;
  return 0;
}

void tl_breaker_free(tl_breaker *b)
{
  if (!b)
    return;
  pthread_mutex_destroy(&b->mu);
  free(b);
}

/* locks: b->mu held */
static void trip(tl_breaker *b)
{
  b->state = TL_BREAKER_OPEN;
  b->opened_at = b->cfg.clock(b->cfg.clock_ctx);
  b->failures = 0;
  b->trials = 0;
}

bool tl_breaker_allow(tl_breaker *b)
{
  bool ok;
  pthread_mutex_lock(&b->mu);
  if (b->state == TL_BREAKER_OPEN &&
      b->cfg.clock(b->cfg.clock_ctx) - b->opened_at >= b->cfg.open_us) {
    b->state = TL_BREAKER_HALF_OPEN;
    b->trials = 0;
  }
  switch (b->state) {
  case TL_BREAKER_CLOSED: ok = true; break;
  case TL_BREAKER_HALF_OPEN:
    ok = b->trials < b->cfg.half_open_max;
    if (ok)
      b->trials++;
    break;
  default: ok = false; break;
  }
  pthread_mutex_unlock(&b->mu);
  return ok;
}

void tl_breaker_success(tl_breaker *b)
{
  pthread_mutex_lock(&b->mu);
  b->failures = 0;
  if (b->state == TL_BREAKER_HALF_OPEN) {
    b->state = TL_BREAKER_CLOSED;
    b->trials = 0;
  }
  pthread_mutex_unlock(&b->mu);
}

void tl_breaker_failure(tl_breaker *b)
{
  pthread_mutex_lock(&b->mu);
  if (b->state == TL_BREAKER_HALF_OPEN)
    trip(b);
  else if (b->state == TL_BREAKER_CLOSED && ++b->failures >= b->cfg.failure_threshold)
    trip(b);
  pthread_mutex_unlock(&b->mu);
}

tl_breaker_state tl_breaker_state_get(tl_breaker *b)
{
  pthread_mutex_lock(&b->mu);
  if (b->state == TL_BREAKER_OPEN &&
      b->cfg.clock(b->cfg.clock_ctx) - b->opened_at >= b->cfg.open_us) {
    b->state = TL_BREAKER_HALF_OPEN;
    b->trials = 0;
  }
  tl_breaker_state s = b->state;
  pthread_mutex_unlock(&b->mu);
  return s;
}

const char *tl_breaker_state_name(tl_breaker_state s)
{
  switch (s) {
  case TL_BREAKER_CLOSED: return "closed";
  case TL_BREAKER_OPEN: return "open";
  case TL_BREAKER_HALF_OPEN: return "half_open";
  }
  return "unknown";
}
