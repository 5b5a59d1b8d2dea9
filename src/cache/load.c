/* Read-through with single-flight: concurrent misses for one key in this
 * process call the loader once and share its result.
 *
 * The first caller to miss registers a flight for the key and becomes its
 * leader; later callers find the flight and wait on it. The leader looks
 * in the cache once more after registering (a flight that just finished
 * stored its value before it left the table, so a caller that found no
 * flight sees that value), then loads, stores, and hands the result to the
 * waiters. The leader's store is versioned, so it cannot overwrite an
 * invalidation that happened while it loaded. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"
#include "trellis/clock.h"

#define NSLOTS 16

struct tl_cache_fill {
  char *data;
  size_t len;
  int64_t version;
  bool set;
};

typedef struct flight {
  struct flight *next;
  char *key;
  pthread_cond_t cv;
  unsigned waiters;
  bool done;
  /* the result, for the waiters */
  int rc;
  char *msg;
  char *data;
  size_t len;
  int64_t version;
} flight;

struct tl__flights {
  struct {
    _Alignas(64) pthread_mutex_t mu;
    flight *head;
  } slot[NSLOTS];
};

int tl__flights_new(tl__flights **out)
{
  tl__flights *f = aligned_alloc(64, sizeof *f);
  if (!f) return tl_error_set(TL_ENOMEM, "cache: out of memory");
  memset(f, 0, sizeof *f);
  for (int i = 0; i < NSLOTS; i++) pthread_mutex_init(&f->slot[i].mu, NULL);
  *out = f;
  return 0;
}

void tl__flights_free(tl__flights *f)
{
  if (!f) return;
  for (int i = 0; i < NSLOTS; i++) pthread_mutex_destroy(&f->slot[i].mu);
  free(f);
}

static void flight_free(flight *f)
{
  pthread_cond_destroy(&f->cv);
  free(f->key);
  free(f->msg);
  free(f->data);
  free(f);
}

int tl_cache_fill_value(tl_cache_fill *fill, const void *val, size_t len, int64_t version)
{
  if (!fill || (!val && len)) return tl_error_set(TL_EINVAL, "tl_cache_fill_value: NULL argument");
  if (version < 0 || version > TL__CACHE_VERSION_MAX)
    return tl_error_set(TL_EINVAL, "tl_cache_fill_value: version %lld is not in [0, 2^53]",
                        (long long)version);
  char *d = tl__strndup(len ? val : "", len);
  if (!d) return tl_error_set(TL_ENOMEM, "tl_cache_fill_value: out of memory");
  free(fill->data);
  *fill = (tl_cache_fill){ .data = d, .len = len, .version = version, .set = true };
  return 0;
}

/* Call the loader and store what it returns. On 0, `out` owns the value. */
static int load(tl_cache *c, const char *key, size_t klen, int64_t ttl_us,
                tl_cache_loader loader, void *ctx, tl_cache_val *out)
{
  tl_cache_fill fill = { 0 };
  int64_t t0 = tl_time_mono_us();
  int rc = loader(ctx, key, &fill);
  int64_t took = tl_time_mono_us() - t0;
  if (rc == 0 && !fill.set)
    rc = tl_error_set(TL_ESTATE, "cache '%s': the loader of '%.64s' returned 0 without "
                      "tl_cache_fill_value", tl__cache_name(c), key);
  else if (rc > 0)
    rc = tl_error_set(TL_EINVAL, "cache '%s': the loader of '%.64s' returned %d", tl__cache_name(c),
                      key, rc);
  tl__cache_load_done(c, took, rc);
  tl__cache_write w = { .key = key, .klen = klen, .versioned = true };
  if (rc == 0) {
    w.kind = TL__CK_VALUE;
    w.val = fill.data;
    w.len = fill.len;
    w.version = fill.version;
    w.ttl_us = ttl_us;
    /* A higher version is there already: return it rather than ours. */
    tl__cache_read r = { 0 };
    if (tl__cache_store(c, &w) == TL_ECONFLICT && tl__cache_lookup(c, key, klen, &r, false) == 0 &&
        r.kind == TL__CK_VALUE && r.version > fill.version) {
      free(fill.data);
      fill.data = r.data;
      fill.len = r.len;
      fill.version = r.version;
    } else {
      free(r.data);
    }
    *out = (tl_cache_val){ .data = fill.data, .len = fill.len, .version = fill.version };
    return 0;
  }
  free(fill.data);
  if (rc == TL_ENOTFOUND) {
    if (tl__cache_negative_ttl(c) > 0) {
      w.kind = TL__CK_NEGATIVE;
      w.ttl_us = tl__cache_negative_ttl(c);
      tl__cache_store(c, &w);
    }
    rc = tl_error_set(TL_ENOTFOUND, "cache '%s': '%.64s' not found by its loader",
                      tl__cache_name(c), key);
  }
  return rc;
}

/* Hand `f`'s result to this caller. */
static int take_result(const flight *f, tl_cache_val *out)
{
  if (f->rc) return tl_error_set(f->rc, "%s", f->msg ? f->msg : tl_strerror(f->rc));
  char *d = tl__strndup(f->data, f->len);
  if (!d) return tl_error_set(TL_ENOMEM, "cache: out of memory");
  *out = (tl_cache_val){ .data = d, .len = f->len, .version = f->version };
  return 0;
}

int tl_cache_get_or_load(tl_cache *c, const char *key, int64_t ttl_us,
                         tl_cache_loader loader, void *ctx, tl_cache_val *out)
{
  size_t klen;
  if (out) memset(out, 0, sizeof *out);
  int rc = tl__cache_key(c, key, &klen, "tl_cache_get_or_load");
  if (!rc && (!loader || !out)) rc = tl_error_set(TL_EINVAL, "tl_cache_get_or_load: NULL argument");
  if (rc) return rc;
  tl__cache_read r = { 0 };
  rc = tl__cache_lookup(c, key, klen, &r, true);
  if (rc == 0 && r.kind == TL__CK_VALUE) {
    *out = (tl_cache_val){ .data = r.data, .len = r.len, .version = r.version };
    return 0;
  }
  if (rc == 0 && r.kind == TL__CK_NEGATIVE)
    return tl_error_set(TL_ENOTFOUND, "cache '%s': '%.64s' not found (cached)", tl__cache_name(c), key);
  /* A miss, or the backend could not answer: load either way. */
  bool backend_up = rc == 0;
  tl__flights *fl = tl__cache_flights(c);
  unsigned s = (unsigned)(tl__cache_hash(key, klen, 0) % NSLOTS);
  pthread_mutex_lock(&fl->slot[s].mu);
  flight *f = fl->slot[s].head;
  while (f && strcmp(f->key, key) != 0) f = f->next;
  if (f) {
    f->waiters++;
    while (!f->done) pthread_cond_wait(&f->cv, &fl->slot[s].mu);
    rc = take_result(f, out);
    bool last = --f->waiters == 0;
    pthread_mutex_unlock(&fl->slot[s].mu);
    if (last) flight_free(f);
    return rc;
  }
  f = calloc(1, sizeof *f);
  if (!f || !(f->key = tl__strndup(key, klen))) {
    pthread_mutex_unlock(&fl->slot[s].mu);
    free(f);
    return tl_error_set(TL_ENOMEM, "cache: out of memory");
  }
  pthread_cond_init(&f->cv, NULL);
  f->next = fl->slot[s].head;
  fl->slot[s].head = f;
  pthread_mutex_unlock(&fl->slot[s].mu);

  memset(&r, 0, sizeof r);
  if (backend_up && tl__cache_lookup(c, key, klen, &r, false) == 0 && r.kind) {
    if (r.kind == TL__CK_VALUE) *out = (tl_cache_val){ .data = r.data, .len = r.len, .version = r.version };
    rc = r.kind == TL__CK_VALUE ? 0 : tl_error_set(TL_ENOTFOUND, "cache '%s': '%.64s' not found "
                                                   "(cached)", tl__cache_name(c), key);
  } else {
    free(r.data);
    rc = load(c, key, klen, ttl_us, loader, ctx, out);
  }

  pthread_mutex_lock(&fl->slot[s].mu);
  flight **p = &fl->slot[s].head;
  while (*p != f) p = &(*p)->next;
  *p = f->next;
  f->done = true;
  f->rc = rc;
  bool shared = f->waiters > 0;
  if (shared && rc) f->msg = strdup(tl_error_last());
  if (shared && !rc && !(f->data = tl__strndup(out->data, out->len))) f->rc = TL_ENOMEM;
  f->len = out->len;
  f->version = out->version;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&fl->slot[s].mu);
  if (!shared) flight_free(f);
  return rc;
}
