/* trellis: a cache with one API over an in-process store and Redis.
 *
 *   tl_cache *c;  tl_cache_open(&c, &(tl_cache_config){ .url = "memory://?max_bytes=64MiB" });
 *   tl_cache_set(c, "user:123", json, len, 0);            // default TTL
 *   tl_cache_val v;
 *   if (tl_cache_get_or_load(c, "user:123", 0, load_user, db, &v) == 0) {
 *     ... v.data, v.len ...;  tl_free(v.data);
 *   }
 *   tl_cache_invalidate(c, "user:123", 7);   // the read model changed at version 7
 *   tl_cache_close(c);
 *
 * CACHE_URL picks the backend: memory:// (bounded by bytes, S3-FIFO
 * eviction, sharded) or redis://host:port/db (pooled, pipelined multi-get,
 * a timeout on every call, a circuit breaker), optionally with an
 * in-process layer in front. docs/caching.md gives the invalidation model
 * and its stale window. Every function may be called from any thread. */
#ifndef TRELLIS_CACHE_H
#define TRELLIS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "config.h"
#include "metrics.h"
#include "resilience.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_cache tl_cache;

/* Longest key, in bytes. Keys are NUL-terminated and not empty. */
#define TL_CACHE_KEY_MAX 1024

/* A `ttl_us` that keeps the entry until it is evicted or deleted. 0 means
 * the configured default TTL. */
#define TL_CACHE_NO_EXPIRY ((int64_t)-1)

/* Zero fields take the defaults in brackets; tl_cache_open copies what it
 * needs. Durations are µs. */
typedef struct tl_cache_config {
  /* memory://?max_bytes=64MiB[&shards=N] or
   * redis://[[user]:password@]host[:port][/db] [memory://?max_bytes=64MiB] */
  const char *url;
  const char *name;            /* the `cache` label of metrics and logs ["default"] */
  /* Redis: prepended to every key, so services (or test runs) can share
   * a database [""] */
  const char *key_prefix;
  int64_t default_ttl_us;      /* for a ttl of 0 [5 min]; negative: no expiry */
  int64_t negative_ttl_us;     /* a loader's "not found" is kept [30 s];
                                  negative: not kept */
  int ttl_jitter_pct;          /* TTLs are shortened by a random 0..pct % so
                                  entries set together expire apart [10];
                                  negative: none; at most 50 */
  int64_t timeout_us;          /* Redis: connect and every call [250 ms] */
  unsigned pool_size;          /* Redis: connections at most [8] */
  unsigned breaker_failures;   /* Redis: consecutive failures that open the
                                  breaker [5] */
  int64_t breaker_open_us;     /* Redis: how long it stays open before one
                                  trial call [5 s] */
  /* Redis: an in-process layer of this many bytes in front of Redis
   * [0: none]. Its entries live at most local_ttl_us [2 s]. */
  size_t local_max_bytes;
  int64_t local_ttl_us;
  /* Monotonic µs for TTLs of the in-process store and for the breaker
   * [a coarse CLOCK_MONOTONIC]. Tests pass a fake one. Any thread. */
  tl_clock_fn clock;
  void *clock_ctx;
  tl_metrics *metrics;         /* must outlive the cache [tl_metrics_default()] */
} tl_cache_config;

/* Fill `out` from CACHE_URL, CACHE_KEY_PREFIX, CACHE_DEFAULT_TTL,
 * CACHE_NEGATIVE_TTL, CACHE_TTL_JITTER (percent), CACHE_TIMEOUT,
 * CACHE_POOL_SIZE, CACHE_BREAKER_FAILURES, CACHE_BREAKER_OPEN,
 * CACHE_LOCAL_MAX_BYTES and CACHE_LOCAL_TTL; in the environment a TTL of
 * 0 means "none". The URL is parsed here, so a bad one stops start-up.
 * Strings are borrowed from `cfg`. Returns 0 or TL_EINVAL naming the key
 * and what was expected ("CACHE_POOL_SIZE: 'x' is not an integer in
 * [1, 1024]"), TL_EUNSUPP for an unknown scheme. */
int tl_cache_config_from(const tl_config *cfg, tl_cache_config *out);

/* Open a cache. Redis is not contacted here (a cache that is down must
 * not stop a service from starting): the first calls connect. Returns 0,
 * TL_EINVAL (bad URL or field, named), TL_EUNSUPP or TL_ENOMEM. */
int tl_cache_open(tl_cache **out, const tl_cache_config *cfg);

/* Close connections and free everything. No call may be running on `c`
 * (including a loader). NULL-safe. */
void tl_cache_close(tl_cache *c);

/* "memory" or "redis". */
const char *tl_cache_backend(const tl_cache *c);

/* A value read from the cache. */
typedef struct tl_cache_val {
  char *data;      /* NUL-terminated copy; the caller frees it with tl_free() */
  size_t len;      /* bytes, without the NUL */
  int64_t version; /* as given to tl_cache_set_version or a loader, else 0 */
} tl_cache_val;

/* Read `key`. Returns 0 and fills `out`; TL_ENOTFOUND on a miss, and for
 * a loader's cached "not found"; TL_ECONNECT or TL_ETIMEOUT when Redis
 * cannot answer (at once while the breaker is open); TL_EBUSY when no
 * pooled connection came free within the timeout; TL_EINVAL for a bad
 * key; TL_EPROTO for a Redis value not written by trellis. `*out` is
 * zeroed on failure. */
int tl_cache_get(tl_cache *c, const char *key, tl_cache_val *out);

/* The same into the caller's buffer, without allocating: `*len` gets the
 * value's size. TL_ETOOBIG (with `*len` set) when it is more than `cap`. */
int tl_cache_get_buf(tl_cache *c, const char *key, void *buf, size_t cap, size_t *len);

/* Read `n` keys at once (Redis: one pipelined round trip). out[i].data
 * is NULL for a miss (or a cached "not found"). Returns 0, or the error
 * of the backend, with every out[i] zeroed. `keys` borrowed for the call. */
int tl_cache_get_many(tl_cache *c, const char *const *keys, size_t n, tl_cache_val *out);

/* Store a copy of `len` bytes at `val` under `key` for `ttl_us` (0: the
 * default TTL, TL_CACHE_NO_EXPIRY), replacing whatever is there,
 * versioned or not. Returns 0, TL_EINVAL, TL_ETOOBIG (memory: more than
 * one shard's share of max_bytes), TL_ECONNECT or TL_ETIMEOUT. */
int tl_cache_set(tl_cache *c, const char *key, const void *val, size_t len, int64_t ttl_us);

/* Store `val` as `version` (>= 0) of `key`, unless the entry there has a
 * higher version (a value, or an invalidation's marker): then nothing
 * changes and it returns TL_ECONFLICT. Atomic on every backend, so a
 * late, stale fill cannot overwrite a newer value. */
int tl_cache_set_version(tl_cache *c, const char *key, const void *val, size_t len,
                         int64_t version, int64_t ttl_us);

/* Remove `key` (from the in-process layer too). 0 whether it was there
 * or not. */
int tl_cache_delete(tl_cache *c, const char *key);

/* Remove every key that starts with `prefix` (not empty); `*deleted`
 * (may be NULL) gets how many. Redis: SCAN + UNLINK, O(keys in the db). */
int tl_cache_delete_prefix(tl_cache *c, const char *prefix, size_t *deleted);

/* The data behind `key` changed at `version`: drop the cached value and,
 * for version > 0, leave a marker for the default TTL that makes
 * tl_cache_set_version and loaders refuse anything older than `version`.
 * An entry already at a higher version is kept. Version 0 is a delete.
 * Call it in the step that updates the read model; on error (Redis down)
 * fail that step so it is retried. */
int tl_cache_invalidate(tl_cache *c, const char *key, int64_t version);

/* Only the in-process layer: for invalidations that another replica
 * announced (the shared backend already has them). The memory backend is
 * that layer; Redis without one does nothing. `version` as above. */
int tl_cache_drop_local(tl_cache *c, const char *key, int64_t version);
int tl_cache_drop_local_prefix(tl_cache *c, const char *prefix);

/* Where a loader puts what it loaded. */
typedef struct tl_cache_fill tl_cache_fill;

/* Hand the loaded value to the cache (copied) with its version (>= 0;
 * 0 when the data has none). Returns 0, TL_EINVAL or TL_ENOMEM. */
int tl_cache_fill_value(tl_cache_fill *fill, const void *val, size_t len, int64_t version);

/* A loader reads `key`'s data from its source. It returns 0 after
 * tl_cache_fill_value, TL_ENOTFOUND when there is no such data (cached for
 * the negative TTL), or another negative status (not cached; every caller
 * waiting for this load gets it, with this thread's tl_error_last()). It
 * runs on the thread of one of the callers. */
typedef int (*tl_cache_loader)(void *ctx, const char *key, tl_cache_fill *fill);

/* Read `key`; on a miss call `loader` and store its value for `ttl_us`
 * (as tl_cache_set_version with the loader's version, so a fill older
 * than an invalidation is not stored). Concurrent misses for one key in
 * this process call the loader once and share its result. When Redis is
 * unavailable the loader's value is returned all the same (slower,
 * correct). Returns 0, TL_ENOTFOUND, TL_EINVAL or the loader's error. */
int tl_cache_get_or_load(tl_cache *c, const char *key, int64_t ttl_us,
                         tl_cache_loader loader, void *ctx, tl_cache_val *out);

/* A readiness check with the shape of tl_http_check, for
 * tl_http_ready_check(srv, "cache", tl_cache_ready_check, c, 0): it
 * returns 0 (ready) even when Redis is down, since every call then falls
 * back to its loader; `detail` says "ok", or "degraded: ..." with the
 * breaker's state and the last error. Redis is pinged unless the breaker
 * is open. */
int tl_cache_ready_check(void *cache, char *detail, size_t n);

/* The breaker's state (always closed for the memory backend). */
tl_breaker_state tl_cache_breaker_state(tl_cache *c);

#ifdef __cplusplus
}
#endif
#endif
