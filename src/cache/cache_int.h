/* Internal: the cache front end and its backends. Not installed.
 *
 * The front end (cache.c, load.c) validates keys, applies TTL defaults and
 * jitter, counts, runs the circuit breaker around remote backends, keeps
 * the optional in-process layer in front of a remote one, and runs
 * single-flight loads. A backend (memory.c, redis.c) only stores. */
#ifndef TRELLIS_CACHE_INT_H
#define TRELLIS_CACHE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/core_int.h"
#include "trellis/cache.h"
#include "trellis/error.h"

/* What an entry holds. The letters are also the first byte of a value in
 * Redis ("V7:payload"), so a Lua script can read the version. */
enum {
  TL__CK_VALUE = 'V',    /* a value */
  TL__CK_NEGATIVE = 'N', /* a loader said "not found" */
  TL__CK_FENCE = 'F'     /* an invalidation at a version: reads miss, older
                            versioned writes are refused */
};

/* ---- CACHE_URL ------------------------------------------------------- */

typedef enum { TL__CACHE_MEMORY = 1, TL__CACHE_REDIS } tl__cache_kind;

typedef struct tl__cache_url {
  tl__cache_kind kind;
  char *masked;        /* the URL with its password as "***", for messages */
  /* memory */
  uint64_t max_bytes;  /* [64 MiB] */
  unsigned shards;     /* 0: chosen from max_bytes */
  /* redis */
  char *host, *user, *password;
  int port;            /* [6379] */
  int db;              /* [0] */
} tl__cache_url;

/* Parse `text`. Messages start with "cache url '<masked>': ". Returns 0,
 * TL_EINVAL, TL_EUNSUPP (unknown scheme) or TL_ENOMEM; on failure `u`
 * needs no freeing. */
int tl__cache_url_parse(const char *text, tl__cache_url *u);
void tl__cache_url_free(tl__cache_url *u);

/* "65536", "64KiB", "64MiB", "1GiB", "64KB" (10^3), ... into bytes.
 * Returns 0 or TL_EINVAL (no message set). */
int tl__cache_size_parse(const char *text, size_t len, uint64_t *out);

/* ---- what backends exchange with the front end ----------------------- */

/* A read copies the value out: into `buf` when the caller gave one, else
 * into a new allocation (`data`, NUL-terminated). */
typedef struct tl__cache_read {
  void *buf;        /* in: NULL to allocate */
  size_t cap;       /* in: size of buf */
  char *data;       /* out: the copy (== buf when one was given) */
  size_t len;       /* out: the value's size, also when it did not fit */
  int64_t version;  /* out */
  int kind;         /* out: 0 (miss), TL__CK_VALUE or TL__CK_NEGATIVE */
} tl__cache_read;

/* Copy `len` bytes into `r` as above and set r->len. Returns 0, TL_ETOOBIG
 * (r->len set, nothing copied) or TL_ENOMEM. */
int tl__cache_read_copy(tl__cache_read *r, const char *src, size_t len);

typedef struct tl__cache_write {
  const char *key;
  size_t klen;
  const void *val;
  size_t len;
  int kind;        /* TL__CK_* */
  int64_t version;
  bool versioned;  /* refuse (TL_ECONFLICT) when a higher version is stored */
  int64_t ttl_us;  /* > 0, or < 0 for no expiry */
} tl__cache_write;

typedef struct tl__cache_opts {
  const char *name;
  const char *key_prefix;
  int64_t timeout_us;
  unsigned pool_size;
  uint64_t max_bytes;
  unsigned shards;
  tl_clock_fn clock;
  void *clock_ctx;
} tl__cache_opts;

typedef struct tl__cache_stats {
  uint64_t bytes, entries, evictions;
} tl__cache_stats;

/* A backend. Every function may be called from many threads at once;
 * errors set the thread's message. */
typedef struct tl__cache_backend {
  const char *name;
  bool remote; /* its calls go through the front end's circuit breaker */
  int (*open)(void **out, const tl__cache_url *u, const tl__cache_opts *o);
  void (*close)(void *st);
  /* 0 with r->kind set (0 for a miss), or an error */
  int (*get)(void *st, const char *key, size_t klen, tl__cache_read *r);
  /* NULL: the front end calls get for each key */
  int (*get_many)(void *st, const char *const *keys, size_t n, tl__cache_read *r);
  /* 0, TL_ECONFLICT (w->versioned and a higher version is stored) */
  int (*set)(void *st, const tl__cache_write *w);
  int (*del)(void *st, const char *key, size_t klen);
  int (*del_prefix)(void *st, const char *prefix, size_t plen, size_t *deleted);
  int (*ping)(void *st);                            /* NULL: always up */
  void (*stats)(void *st, tl__cache_stats *s);      /* NULL: none kept */
} tl__cache_backend;

extern const tl__cache_backend tl__cache_memory;
extern const tl__cache_backend tl__cache_redis;

/* ---- the front end, for load.c --------------------------------------- */

/* Versions are compared as Lua numbers in Redis: exact up to 2^53. */
#define TL__CACHE_VERSION_MAX ((int64_t)1 << 53)

/* Check a key (c and key not NULL, 1 to TL_CACHE_KEY_MAX bytes) and get
 * its length. `fn` names the caller in messages. */
int tl__cache_key(const tl_cache *c, const char *key, size_t *klen, const char *fn);
/* Read through the in-process layer and the backend (and the breaker);
 * when `count`, add the result to trellis_cache_requests_total. */
int tl__cache_lookup(tl_cache *c, const char *key, size_t klen, tl__cache_read *r, bool count);
/* Write to the backend, then the in-process layer (dropped there when
 * the backend failed). `w->ttl_us` is what the caller passed (0: the
 * default); the jitter is applied here. */
int tl__cache_store(tl_cache *c, tl__cache_write *w);
/* The configured negative TTL (< 0: not kept), and the cache's name. */
int64_t tl__cache_negative_ttl(const tl_cache *c);
const char *tl__cache_name(const tl_cache *c);
/* Count one load: its duration and result (0, TL_ENOTFOUND, or another
 * status for an error). */
void tl__cache_load_done(tl_cache *c, int64_t duration_us, int rc);

/* In-flight loads, by key (load.c). */
typedef struct tl__flights tl__flights;
int tl__flights_new(tl__flights **out);
void tl__flights_free(tl__flights *f);
tl__flights *tl__cache_flights(tl_cache *c);

/* A 64-bit hash of a key, seeded. */
static inline uint64_t tl__cache_hash(const char *s, size_t n, uint64_t seed)
{
  return tl__hash64(s, n, seed);
}

#endif
