/* The cache contract: one suite that every backend must pass (memory,
 * Redis, Redis with an in-process layer), so none can quietly do less.
 *
 * The including file defines, before including this header:
 *   static void ccx_config(tl_cache_config *cfg);  -- url, key_prefix, clock
 *   static void ccx_advance(int64_t us);           -- let time pass: move a
 *                                                     fake clock, or sleep
 * and calls ccx_run("group name"). Every key starts with "k", so the
 * teardown can delete what a test left with one prefix delete. */
#ifndef TRELLIS_TESTS_CACHE_CONTRACT_H
#define TRELLIS_TESTS_CACHE_CONTRACT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include <trellis/trellis.h>

#include "support.h"

#pragma GCC diagnostic ignored "-Wunused-function"

static void ccx_config(tl_cache_config *cfg);
static void ccx_advance(int64_t us);

/* A cache for one test: the backend's config plus these TTLs. */
static tl_cache *ccx_open_ttl(int64_t default_ttl_us, int64_t negative_ttl_us, tl_metrics *reg)
{
  tl_cache_config cfg = { .name = "contract", .default_ttl_us = default_ttl_us,
                          .negative_ttl_us = negative_ttl_us, .metrics = reg };
  ccx_config(&cfg);
  tl_cache *c = NULL;
  int rc = tl_cache_open(&c, &cfg);
  if (rc) fail_msg("tl_cache_open: %s: %s", tl_status_name(rc), tl_error_last());
  return c;
}

static int ccx_setup(void **state)
{
  *state = ccx_open_ttl(TL_CACHE_NO_EXPIRY, 60000000, NULL);
  return 0;
}

static int ccx_teardown(void **state)
{
  tl_cache *c = *state;
  int rc = tl_cache_delete_prefix(c, "k", NULL);
  if (rc) fail_msg("cleanup: %s", tl_error_last());
  tl_cache_close(c);
  return 0;
}

static void ccx_put(tl_cache *c, const char *key, const char *val, int64_t ttl_us)
{
  int rc = tl_cache_set(c, key, val, strlen(val), ttl_us);
  if (rc) fail_msg("set '%s': %s: %s", key, tl_status_name(rc), tl_error_last());
}

/* Assert that `key` holds `want` (NULL: a miss) at `version`. */
static void ccx_expect(tl_cache *c, const char *key, const char *want, int64_t version)
{
  tl_cache_val v;
  int rc = tl_cache_get(c, key, &v);
  if (!want) {
    if (rc != TL_ENOTFOUND)
      fail_msg("'%s': expected a miss, got %s (%s)", key, tl_status_name(rc),
               rc ? tl_error_last() : v.data);
    assert_null(v.data);
    return;
  }
  if (rc) fail_msg("'%s': expected '%s', got %s: %s", key, want, tl_status_name(rc), tl_error_last());
  assert_int_equal(v.len, strlen(want));
  assert_memory_equal(v.data, want, v.len);
  assert_int_equal(v.data[v.len], '\0');
  assert_int_equal(v.version, version);
  tl_free(v.data);
}

/* ---- get, set, delete -------------------------------------------------- */

static void ccx_set_get_delete(void **state)
{
  tl_cache *c = *state;
  ccx_expect(c, "k:a", NULL, 0);
  ccx_put(c, "k:a", "one", 0);
  ccx_expect(c, "k:a", "one", 0);
  ccx_put(c, "k:a", "two, longer", 0);
  ccx_expect(c, "k:a", "two, longer", 0);

  /* Bytes, not strings: NULs and high bytes survive; an empty value is a
   * value, not a miss. */
  const char bin[] = { 'x', 0, (char)0xff, 0, 'y' };
  assert_int_equal(tl_cache_set(c, "k:bin", bin, sizeof bin, 0), 0);
  tl_cache_val v;
  assert_int_equal(tl_cache_get(c, "k:bin", &v), 0);
  assert_int_equal(v.len, sizeof bin);
  assert_memory_equal(v.data, bin, sizeof bin);
  tl_free(v.data);
  assert_int_equal(tl_cache_set(c, "k:empty", NULL, 0, 0), 0);
  ccx_expect(c, "k:empty", "", 0);

  /* A large value (64 KiB) and a long key. */
  size_t big = 64 << 10;
  char *blob = malloc(big);
  for (size_t i = 0; i < big; i++) blob[i] = (char)('a' + i % 26);
  char key[TL_CACHE_KEY_MAX + 1];
  memset(key, 'k', TL_CACHE_KEY_MAX);
  key[TL_CACHE_KEY_MAX] = '\0';
  assert_int_equal(tl_cache_set(c, key, blob, big, 0), 0);
  assert_int_equal(tl_cache_get(c, key, &v), 0);
  assert_int_equal(v.len, big);
  assert_memory_equal(v.data, blob, big);
  tl_free(v.data);
  free(blob);

  assert_int_equal(tl_cache_delete(c, "k:a"), 0);
  ccx_expect(c, "k:a", NULL, 0);
  assert_int_equal(tl_cache_delete(c, "k:a"), 0); /* not there: still 0 */
  assert_int_equal(tl_cache_delete(c, "k:bin"), 0);
  ccx_expect(c, "k:bin", NULL, 0);
}

static void ccx_get_buf(void **state)
{
  tl_cache *c = *state;
  char buf[8];
  size_t len = 99;
  assert_int_equal(tl_cache_get_buf(c, "k:b", buf, sizeof buf, &len), TL_ENOTFOUND);
  assert_int_equal(len, 0);
  ccx_put(c, "k:b", "12345678", 0);
  assert_int_equal(tl_cache_get_buf(c, "k:b", buf, sizeof buf, &len), 0);
  assert_int_equal(len, 8);
  assert_memory_equal(buf, "12345678", 8);
  ccx_put(c, "k:b", "123456789", 0);
  memset(buf, '#', sizeof buf);
  assert_int_equal(tl_cache_get_buf(c, "k:b", buf, sizeof buf, &len), TL_ETOOBIG);
  assert_int_equal(len, 9);
  assert_non_null(strstr(tl_error_last(), "9 bytes"));
  assert_memory_equal(buf, "########", 8); /* nothing written */
}

static void ccx_bad_input(void **state)
{
  tl_cache *c = *state;
  tl_cache_val v;
  assert_int_equal(tl_cache_get(c, "", &v), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "empty key"));
  char key[TL_CACHE_KEY_MAX + 2];
  memset(key, 'k', sizeof key - 1);
  key[sizeof key - 1] = '\0';
  assert_int_equal(tl_cache_set(c, key, "x", 1, 0), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "more than 1024 bytes"));
  assert_int_equal(tl_cache_set(c, "k:x", NULL, 3, 0), TL_EINVAL);
  assert_int_equal(tl_cache_set_version(c, "k:x", "x", 1, -1, 0), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "version -1"));
  assert_int_equal(tl_cache_set_version(c, "k:x", "x", 1, ((int64_t)1 << 53) + 1, 0), TL_EINVAL);
  assert_int_equal(tl_cache_get(NULL, "k:x", &v), TL_EINVAL);
  assert_int_equal(tl_cache_delete_prefix(c, "", NULL), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "prefix"));
  assert_int_equal(tl_cache_invalidate(c, "k:x", -5), TL_EINVAL);
  ccx_expect(c, "k:x", NULL, 0);
}

/* ---- TTL --------------------------------------------------------------- */

static void ccx_ttl_expiry(void **state)
{
  (void)state;
  /* Jitter only shortens a TTL, by 10% at most. */
  tl_cache *c = ccx_open_ttl(400000, 60000000, NULL);
  ccx_put(c, "k:short", "s", 200000);
  ccx_put(c, "k:default", "d", 0);
  ccx_put(c, "k:forever", "f", TL_CACHE_NO_EXPIRY);
  ccx_expect(c, "k:short", "s", 0);
  ccx_advance(60000);
  ccx_expect(c, "k:short", "s", 0);
  ccx_advance(200000); /* 260 ms */
  ccx_expect(c, "k:short", NULL, 0);
  ccx_expect(c, "k:default", "d", 0);
  ccx_advance(200000); /* 460 ms */
  ccx_expect(c, "k:default", NULL, 0);
  ccx_expect(c, "k:forever", "f", 0);
  /* A write gives a new TTL. */
  ccx_put(c, "k:short", "again", 200000);
  ccx_expect(c, "k:short", "again", 0);
  assert_int_equal(tl_cache_delete_prefix(c, "k", NULL), 0);
  tl_cache_close(c);
}

/* ---- prefix delete, multi-get ------------------------------------------ */

static void ccx_prefix_delete(void **state)
{
  tl_cache *c = *state;
  const char *keys[] = { "k:a:1", "k:a:2", "k:ab", "k:b:1", "k*[x]?1", "k*[x]?2", "k*y" };
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) ccx_put(c, keys[i], keys[i], 0);
  size_t n = 99;
  assert_int_equal(tl_cache_delete_prefix(c, "k:a:", &n), 0);
  assert_int_equal(n, 2);
  ccx_expect(c, "k:a:1", NULL, 0);
  ccx_expect(c, "k:a:2", NULL, 0);
  ccx_expect(c, "k:ab", "k:ab", 0);
  ccx_expect(c, "k:b:1", "k:b:1", 0);
  /* Glob characters in a prefix are literal. */
  assert_int_equal(tl_cache_delete_prefix(c, "k*[x]?", &n), 0);
  assert_int_equal(n, 2);
  ccx_expect(c, "k*y", "k*y", 0);
  assert_int_equal(tl_cache_delete_prefix(c, "k:zzz", &n), 0);
  assert_int_equal(n, 0);
}

static int ccx_none_loader(void *ctx, const char *key, tl_cache_fill *fill)
{
  (void)ctx;
  (void)key;
  (void)fill;
  return tl_error_set(TL_ENOTFOUND, "none");
}

static void ccx_get_many(void **state)
{
  tl_cache *c = *state;
  ccx_put(c, "k:m1", "one", 0);
  ccx_put(c, "k:m3", "three", 0);
  assert_int_equal(tl_cache_set_version(c, "k:m4", "four", 4, 4, 0), 0);
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:neg", 0, ccx_none_loader, NULL, &v), TL_ENOTFOUND);
  const char *keys[] = { "k:m1", "k:m2", "k:m3", "k:neg", "k:m4", "k:m1" };
  tl_cache_val out[6];
  assert_int_equal(tl_cache_get_many(c, keys, 6, out), 0);
  assert_string_equal(out[0].data, "one");
  assert_null(out[1].data);
  assert_string_equal(out[2].data, "three");
  assert_int_equal(out[2].len, 5);
  assert_null(out[3].data); /* a cached "not found" reads as a miss */
  assert_string_equal(out[4].data, "four");
  assert_int_equal(out[4].version, 4);
  assert_string_equal(out[5].data, "one");
  for (int i = 0; i < 6; i++) tl_free(out[i].data);
  assert_int_equal(tl_cache_get_many(c, keys, 0, out), 0);
  const char *bad[] = { "k:m1", "" };
  assert_int_equal(tl_cache_get_many(c, bad, 2, out), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "key 1"));
}

/* ---- versions and invalidation ------------------------------------------ */

static void ccx_versioned_set(void **state)
{
  tl_cache *c = *state;
  assert_int_equal(tl_cache_set_version(c, "k:v", "five", 4, 5, 0), 0);
  assert_int_equal(tl_cache_set_version(c, "k:v", "four", 4, 4, 0), TL_ECONFLICT);
  assert_non_null(strstr(tl_error_last(), "version above 4"));
  ccx_expect(c, "k:v", "five", 5);
  assert_int_equal(tl_cache_set_version(c, "k:v", "five again", 10, 5, 0), 0); /* same: allowed */
  ccx_expect(c, "k:v", "five again", 5);
  assert_int_equal(tl_cache_set_version(c, "k:v", "six", 3, 6, 0), 0);
  ccx_expect(c, "k:v", "six", 6);

  /* An invalidation at 8 drops the value and refuses older fills. */
  assert_int_equal(tl_cache_invalidate(c, "k:v", 8), 0);
  ccx_expect(c, "k:v", NULL, 0);
  assert_int_equal(tl_cache_set_version(c, "k:v", "seven", 5, 7, 0), TL_ECONFLICT);
  ccx_expect(c, "k:v", NULL, 0);
  assert_int_equal(tl_cache_set_version(c, "k:v", "eight", 5, 8, 0), 0);
  ccx_expect(c, "k:v", "eight", 8);
  /* An invalidation older than what is there changes nothing. */
  assert_int_equal(tl_cache_invalidate(c, "k:v", 3), 0);
  ccx_expect(c, "k:v", "eight", 8);
  /* Version 0 is a plain delete: anything may be written after it. */
  assert_int_equal(tl_cache_invalidate(c, "k:v", 0), 0);
  ccx_expect(c, "k:v", NULL, 0);
  assert_int_equal(tl_cache_set_version(c, "k:v", "one", 3, 1, 0), 0);
  /* A plain set replaces whatever is there. */
  ccx_put(c, "k:v", "plain", 0);
  ccx_expect(c, "k:v", "plain", 0);
}

/* 32 threads write one key with versions from one counter, each also
 * writing and reading back keys of its own: the key ends at the highest
 * version, and no thread ever reads another value than its last write. */
#define CCX_THREADS 32
#define CCX_ROUNDS 100

typedef struct ccx_hammer {
  tl_cache *c;
  _Atomic int64_t next;
  _Atomic int failures;
} ccx_hammer;

typedef struct ccx_hammer_arg {
  ccx_hammer *h;
  int id;
} ccx_hammer_arg;

static void *ccx_hammer_main(void *arg)
{
  ccx_hammer *h = ((ccx_hammer_arg *)arg)->h;
  int id = ((ccx_hammer_arg *)arg)->id;
  char key[32], val[32];
  for (int i = 0; i < CCX_ROUNDS; i++) {
    int64_t v = atomic_fetch_add(&h->next, 1) + 1;
    snprintf(val, sizeof val, "v%lld", (long long)v);
    int rc = tl_cache_set_version(h->c, "k:shared", val, strlen(val), v, 0);
    if (rc != 0 && rc != TL_ECONFLICT) atomic_fetch_add(&h->failures, 1);
    snprintf(key, sizeof key, "k:t%d:%d", id, i % 4);
    snprintf(val, sizeof val, "%d-%d", id, i);
    if (tl_cache_set(h->c, key, val, strlen(val), 0) != 0) atomic_fetch_add(&h->failures, 1);
    tl_cache_val got;
    if (tl_cache_get(h->c, key, &got) != 0 || strcmp(got.data, val) != 0)
      atomic_fetch_add(&h->failures, 1);
    tl_free(got.data);
  }
  return NULL;
}

static void ccx_threads_no_lost_update(void **state)
{
  ccx_hammer h = { .c = *state };
  pthread_t th[CCX_THREADS];
  ccx_hammer_arg args[CCX_THREADS];
  for (int i = 0; i < CCX_THREADS; i++) {
    args[i] = (ccx_hammer_arg){ &h, i };
    assert_int_equal(pthread_create(&th[i], NULL, ccx_hammer_main, &args[i]), 0);
  }
  for (int i = 0; i < CCX_THREADS; i++) pthread_join(th[i], NULL);
  assert_int_equal(atomic_load(&h.failures), 0);
  char want[32];
  snprintf(want, sizeof want, "v%d", CCX_THREADS * CCX_ROUNDS);
  ccx_expect(*state, "k:shared", want, CCX_THREADS * CCX_ROUNDS);
}

/* ---- get_or_load ------------------------------------------------------- */

typedef struct ccx_loader {
  _Atomic int calls;
  int64_t sleep_us;
  int rc;                 /* what to return; 0: a value */
  const char *value;
  int64_t version;
  /* While loading, another writer: stores race_value at race_version,
   * or invalidates the key at race_version when race_value is NULL. */
  tl_cache *race;
  const char *race_value;
  int64_t race_version;
  pthread_barrier_t *start;
} ccx_loader;

static int ccx_load(void *ctx, const char *key, tl_cache_fill *fill)
{
  ccx_loader *l = ctx;
  atomic_fetch_add(&l->calls, 1);
  if (l->sleep_us) tl_sleep_us(l->sleep_us);
  if (l->race && l->race_value)
    tl_cache_set_version(l->race, key, l->race_value, strlen(l->race_value), l->race_version, 0);
  else if (l->race)
    tl_cache_invalidate(l->race, key, l->race_version);
  if (l->rc) return tl_error_set(l->rc, "loader says %s", tl_status_name(l->rc));
  return tl_cache_fill_value(fill, l->value, strlen(l->value), l->version);
}

typedef struct ccx_caller {
  tl_cache *c;
  ccx_loader *l;
  const char *key;
  int rc;
  char got[32];
  char msg[64];
} ccx_caller;

static void *ccx_caller_main(void *arg)
{
  ccx_caller *k = arg;
  pthread_barrier_wait(k->l->start);
  tl_cache_val v;
  k->rc = tl_cache_get_or_load(k->c, k->key, 0, ccx_load, k->l, &v);
  if (k->rc == 0) snprintf(k->got, sizeof k->got, "%s", v.data);
  else snprintf(k->msg, sizeof k->msg, "%s", tl_error_last());
  tl_free(v.data);
  return NULL;
}

/* n concurrent get_or_load of one key; returns the loader's call count. */
static int ccx_concurrent(tl_cache *c, ccx_loader *l, const char *key, int n, ccx_caller *out)
{
  pthread_barrier_t b;
  pthread_barrier_init(&b, NULL, (unsigned)n);
  l->start = &b;
  pthread_t *th = calloc((size_t)n, sizeof *th);
  for (int i = 0; i < n; i++) {
    out[i] = (ccx_caller){ .c = c, .l = l, .key = key };
    assert_int_equal(pthread_create(&th[i], NULL, ccx_caller_main, &out[i]), 0);
  }
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  free(th);
  pthread_barrier_destroy(&b);
  return atomic_load(&l->calls);
}

static void ccx_single_flight(void **state)
{
  tl_cache *c = *state;
  ccx_caller callers[100];
  ccx_loader l = { .sleep_us = 300000, .value = "loaded", .version = 3 };
  assert_int_equal(ccx_concurrent(c, &l, "k:sf", 100, callers), 1);
  for (int i = 0; i < 100; i++) {
    assert_int_equal(callers[i].rc, 0);
    assert_string_equal(callers[i].got, "loaded");
  }
  ccx_expect(c, "k:sf", "loaded", 3);
  /* Now a hit for everyone. */
  assert_int_equal(ccx_concurrent(c, &l, "k:sf", 100, callers), 1);

  /* A failing load: every waiter gets the loader's error, nothing is
   * cached, the next call loads again. */
  ccx_loader bad = { .sleep_us = 200000, .rc = TL_EIO };
  assert_int_equal(ccx_concurrent(c, &bad, "k:sf-err", 20, callers), 1);
  for (int i = 0; i < 20; i++) {
    assert_int_equal(callers[i].rc, TL_EIO);
    assert_string_equal(callers[i].msg, "loader says TL_EIO");
  }
  ccx_expect(c, "k:sf-err", NULL, 0);
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:sf-err", 0, ccx_load, &bad, &v), TL_EIO);
  assert_int_equal(atomic_load(&bad.calls), 2);
}

static void ccx_negative_caching(void **state)
{
  (void)state;
  tl_cache *c = ccx_open_ttl(TL_CACHE_NO_EXPIRY, 200000, NULL);
  ccx_loader l = { .rc = TL_ENOTFOUND };
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:ghost", 0, ccx_load, &l, &v), TL_ENOTFOUND);
  assert_int_equal(tl_cache_get_or_load(c, "k:ghost", 0, ccx_load, &l, &v), TL_ENOTFOUND);
  assert_non_null(strstr(tl_error_last(), "not found (cached)"));
  assert_int_equal(tl_cache_get(c, "k:ghost", &v), TL_ENOTFOUND);
  assert_int_equal(atomic_load(&l.calls), 1);
  /* The negative TTL passes: the loader is asked again. */
  ccx_advance(260000);
  assert_int_equal(tl_cache_get_or_load(c, "k:ghost", 0, ccx_load, &l, &v), TL_ENOTFOUND);
  assert_int_equal(atomic_load(&l.calls), 2);
  /* The data appears (version 1) and the key is invalidated: the cached
   * "not found" is gone, and a late "not found" fill is refused. */
  assert_int_equal(tl_cache_invalidate(c, "k:ghost", 1), 0);
  assert_int_equal(tl_cache_get_or_load(c, "k:ghost", 0, ccx_load, &l, &v), TL_ENOTFOUND);
  assert_int_equal(tl_cache_get_or_load(c, "k:ghost", 0, ccx_load, &l, &v), TL_ENOTFOUND);
  assert_int_equal(atomic_load(&l.calls), 4);
  l = (ccx_loader){ .value = "here", .version = 1 };
  assert_int_equal(tl_cache_get_or_load(c, "k:ghost", 0, ccx_load, &l, &v), 0);
  assert_string_equal(v.data, "here");
  tl_free(v.data);
  ccx_expect(c, "k:ghost", "here", 1);
  assert_int_equal(tl_cache_delete_prefix(c, "k", NULL), 0);
  tl_cache_close(c);
}

/* The read model changes (version 2) while a load of version 1 runs: the
 * caller gets what it loaded, but the cache does not keep it. */
static void ccx_stale_fill_refused(void **state)
{
  tl_cache *c = *state;
  ccx_loader l = { .value = "old", .version = 1, .race = c, .race_version = 2 };
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:race", 0, ccx_load, &l, &v), 0);
  assert_string_equal(v.data, "old");
  tl_free(v.data);
  ccx_expect(c, "k:race", NULL, 0);
  l = (ccx_loader){ .value = "new", .version = 2 };
  assert_int_equal(tl_cache_get_or_load(c, "k:race", 0, ccx_load, &l, &v), 0);
  assert_string_equal(v.data, "new");
  tl_free(v.data);
  ccx_expect(c, "k:race", "new", 2);
  /* A newer value is stored while an older one loads: the caller gets
   * the newer one, and it stays. */
  l = (ccx_loader){ .value = "stale", .version = 3, .race = c, .race_value = "nine",
                    .race_version = 9 };
  assert_int_equal(tl_cache_get_or_load(c, "k:race2", 0, ccx_load, &l, &v), 0);
  assert_string_equal(v.data, "nine");
  assert_int_equal(v.version, 9);
  assert_int_equal(atomic_load(&l.calls), 1);
  tl_free(v.data);
  ccx_expect(c, "k:race2", "nine", 9);
}

/* ---- metrics ----------------------------------------------------------- */

static double ccx_metric(tl_metrics *reg, const char *line_start)
{
  char *text;
  size_t len;
  assert_int_equal(tl_metrics_render(reg, &text, &len), 0);
  const char *p = strstr(text, line_start);
  double v = p ? strtod(p + strlen(line_start), NULL) : -1;
  tl_free(text);
  return v;
}

static void ccx_metrics(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_cache *c = ccx_open_ttl(TL_CACHE_NO_EXPIRY, 60000000, reg);
  ccx_put(c, "k:m", "x", 0);
  ccx_expect(c, "k:m", "x", 0);
  ccx_expect(c, "k:m", "x", 0);
  ccx_expect(c, "k:none", NULL, 0);
  ccx_loader l = { .value = "v" };
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:load", 0, ccx_load, &l, &v), 0);
  tl_free(v.data);
  assert_true(ccx_metric(reg, "trellis_cache_requests_total{cache=\"contract\",result=\"hit\"} ") == 2);
  assert_true(ccx_metric(reg, "trellis_cache_requests_total{cache=\"contract\",result=\"miss\"} ") == 2);
  assert_true(ccx_metric(reg, "trellis_cache_requests_total{cache=\"contract\",result=\"error\"} ") == 0);
  assert_true(ccx_metric(reg, "trellis_cache_loads_total{cache=\"contract\",result=\"ok\"} ") == 1);
  assert_true(ccx_metric(reg, "trellis_cache_load_duration_seconds_count{cache=\"contract\"} ") == 1);
  /* Counts survive the close (counters never go down). */
  assert_int_equal(tl_cache_delete_prefix(c, "k", NULL), 0);
  tl_cache_close(c);
  assert_true(ccx_metric(reg, "trellis_cache_requests_total{cache=\"contract\",result=\"hit\"} ") == 2);
  tl_metrics_free(reg);
}

#define CCX_TEST(f) cmocka_unit_test_setup_teardown(f, ccx_setup, ccx_teardown)
#define CCX_TEST_BARE(f) cmocka_unit_test(f)

static int ccx_run(const char *name)
{
  const struct CMUnitTest tests[] = {
    CCX_TEST(ccx_set_get_delete),
    CCX_TEST(ccx_get_buf),
    CCX_TEST(ccx_bad_input),
    CCX_TEST_BARE(ccx_ttl_expiry),
    CCX_TEST(ccx_prefix_delete),
    CCX_TEST(ccx_get_many),
    CCX_TEST(ccx_versioned_set),
    CCX_TEST(ccx_threads_no_lost_update),
    CCX_TEST(ccx_single_flight),
    CCX_TEST_BARE(ccx_negative_caching),
    CCX_TEST(ccx_stale_fill_refused),
    CCX_TEST_BARE(ccx_metrics),
  };
  return _cmocka_run_group_tests(name, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

#endif
