/* trellis: exponential backoff with full jitter, and a circuit breaker. */
#ifndef TRELLIS_RESILIENCE_H
#define TRELLIS_RESILIENCE_H

#include <stdbool.h>
#include <stdint.h>

#include "clock.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exponential backoff: attempt n (0-based) waits a uniformly random time
 * in [0, min(cap, base * multiplier^n)] ("full jitter"). Zero fields take
 * defaults: base 100 ms, cap 30 s, multiplier 2. */
typedef struct tl_backoff {
  int64_t base_us;
  int64_t cap_us;
  double multiplier;
} tl_backoff;

/* The upper bound of the delay for `attempt` (no jitter). */
int64_t tl_backoff_ceiling(const tl_backoff *b, unsigned attempt);
/* A delay for `attempt`, drawn with tl_rand64(). */
int64_t tl_backoff_delay(const tl_backoff *b, unsigned attempt);
/* Same, drawing from `r` (a value from 0 to UINT64_MAX) for tests. */
int64_t tl_backoff_delay_r(const tl_backoff *b, unsigned attempt, uint64_t r);

typedef enum tl_breaker_state {
  TL_BREAKER_CLOSED = 0,
  TL_BREAKER_OPEN = 1,
  TL_BREAKER_HALF_OPEN = 2
} tl_breaker_state;

/* Zero fields take defaults: 5 consecutive failures open it, it stays
 * open 30 s, then lets 1 trial call through (half-open); a success there
 * closes it, a failure opens it again. `clock` defaults to the monotonic
 * clock. */
typedef struct tl_breaker_config {
  unsigned failure_threshold;
  int64_t open_us;
  unsigned half_open_max;
  tl_clock_fn clock;
  void *clock_ctx;
} tl_breaker_config;

typedef struct tl_breaker tl_breaker;

/* Config copied. Returns 0 or TL_ENOMEM. Any thread may use the breaker. */
int tl_breaker_new(tl_breaker **out, const tl_breaker_config *cfg);
void tl_breaker_free(tl_breaker *b);
/* May a call go through now? In half-open, true for at most half_open_max
 * calls until they report. Each true must be followed by one report. */
bool tl_breaker_allow(tl_breaker *b);
void tl_breaker_success(tl_breaker *b);
void tl_breaker_failure(tl_breaker *b);
tl_breaker_state tl_breaker_state_get(tl_breaker *b);
const char *tl_breaker_state_name(tl_breaker_state s);

#ifdef __cplusplus
}
#endif
#endif
