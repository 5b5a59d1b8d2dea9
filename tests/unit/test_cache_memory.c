/* The cache contract on the memory backend, on a fake clock, plus what
 * only the in-process store has: the byte bound and its eviction policy,
 * TTL jitter, readers racing evictions; and configuration errors. */
#include "cache_contract.h"

static _Atomic int64_t fake_now = 1000000;

static int64_t fake_clock(void *ctx)
{
  (void)ctx;
  return atomic_load(&fake_now);
}

static void ccx_config(tl_cache_config *cfg)
{
  cfg->url = "memory://?max_bytes=8MiB";
  cfg->clock = fake_clock;
}

static void ccx_advance(int64_t us) { atomic_fetch_add(&fake_now, us); }

static tl_cache *open_url(const char *url, tl_metrics *reg)
{
  tl_cache_config cfg = { .url = url, .name = "mem", .clock = fake_clock, .metrics = reg,
                          .default_ttl_us = TL_CACHE_NO_EXPIRY };
  tl_cache *c = NULL;
  int rc = tl_cache_open(&c, &cfg);
  if (rc) fail_msg("open %s: %s", url, tl_error_last());
  return c;
}

static void put_kib(tl_cache *c, const char *key)
{
  char val[1024];
  memset(val, key[strlen(key) - 1], sizeof val);
  int rc = tl_cache_set(c, key, val, sizeof val, 0);
  if (rc) fail_msg("set %s: %s", key, tl_error_last());
}

static bool present(tl_cache *c, const char *key)
{
  char buf[2048];
  size_t len;
  return tl_cache_get_buf(c, key, buf, sizeof buf, &len) == 0;
}

/* ---- the byte bound ---------------------------------------------------- */

static void eviction_under_byte_bound(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_cache *c = open_url("memory://?max_bytes=256KiB", reg);
  char key[32];
  for (int i = 0; i < 2000; i++) { /* about 2 MiB through 256 KiB */
    snprintf(key, sizeof key, "k%d", i);
    put_kib(c, key);
  }
  double bytes = ccx_metric(reg, "trellis_cache_bytes{cache=\"mem\"} ");
  double entries = ccx_metric(reg, "trellis_cache_entries{cache=\"mem\"} ");
  double evicted = ccx_metric(reg, "trellis_cache_evictions_total{cache=\"mem\"} ");
  assert_true(bytes <= 256 * 1024);
  assert_true(bytes > 200 * 1024); /* bounded, not emptied */
  assert_true(entries > 150 && entries < 256);
  assert_true(evicted + entries == 2000);
  assert_true(present(c, "k1999"));
  assert_false(present(c, "k0"));

  /* An entry larger than the store is refused, and nothing is lost. */
  char *big = calloc(1, 300 << 10);
  assert_int_equal(tl_cache_set(c, "k:big", big, 300 << 10, 0), TL_ETOOBIG);
  assert_non_null(strstr(tl_error_last(), "share of max_bytes"));
  free(big);
  assert_true(present(c, "k1999"));
  assert_true(ccx_metric(reg, "trellis_cache_entries{cache=\"mem\"} ") == entries);

  /* Deleting gives the bytes back. */
  size_t n;
  assert_int_equal(tl_cache_delete_prefix(c, "k", &n), 0);
  assert_int_equal((double)n, entries);
  assert_true(ccx_metric(reg, "trellis_cache_bytes{cache=\"mem\"} ") == 0);
  tl_cache_close(c);
  tl_metrics_free(reg);
}

/* Keys read often survive a scan of keys read never, four times the
 * store's size (an LRU would lose every one of them). */
static void scan_keeps_hot_keys(void **state)
{
  (void)state;
  tl_cache *c = open_url("memory://?max_bytes=256KiB", NULL);
  char key[32];
  for (int i = 0; i < 50; i++) {
    snprintf(key, sizeof key, "hot%d", i);
    put_kib(c, key);
    for (int r = 0; r < 3; r++) assert_true(present(c, key));
  }
  for (int i = 0; i < 1000; i++) {
    snprintf(key, sizeof key, "scan%d", i);
    put_kib(c, key);
  }
  for (int i = 0; i < 50; i++) {
    snprintf(key, sizeof key, "hot%d", i);
    if (!present(c, key)) fail_msg("%s was evicted by the scan", key);
  }
  assert_false(present(c, "scan0"));
  assert_true(present(c, "scan999"));
  tl_cache_close(c);
}

/* ---- TTL jitter -------------------------------------------------------- */

static int count_present(tl_cache *c, int n)
{
  char key[32];
  int k = 0;
  for (int i = 0; i < n; i++) {
    snprintf(key, sizeof key, "j%d", i);
    k += present(c, key);
  }
  return k;
}

static void ttl_jitter_spreads_expiry(void **state)
{
  (void)state;
  for (int jitter = 0; jitter < 2; jitter++) {
    tl_cache_config cfg = { .url = "memory://?max_bytes=1MiB", .clock = fake_clock,
                            .ttl_jitter_pct = jitter ? 0 : -1 };
    tl_cache *c;
    assert_int_equal(tl_cache_open(&c, &cfg), 0);
    char key[32];
    for (int i = 0; i < 200; i++) {
      snprintf(key, sizeof key, "j%d", i);
      ccx_put(c, key, "x", 1000000);
    }
    ccx_advance(899999); /* 10% at most: everything is there */
    assert_int_equal(count_present(c, 200), 200);
    ccx_advance(50000);  /* 950 ms */
    int mid = count_present(c, 200);
    if (jitter) assert_true(mid > 20 && mid < 180); /* spread over [900, 1000] ms */
    else assert_int_equal(mid, 200);
    ccx_advance(50001);  /* 1 s */
    assert_int_equal(count_present(c, 200), 0);
    tl_cache_close(c);
  }
}

/* ---- readers racing writers that evict ---------------------------------- */

typedef struct race {
  tl_cache *c;
  int id;
  _Atomic int *bad;
} race;

static void *race_main(void *arg)
{
  race *r = arg;
  char key[32], buf[2048];
  for (int i = 0; i < 4000; i++) {
    snprintf(key, sizeof key, "r%d", (i * 7 + r->id) % 300);
    if (r->id % 2) {
      put_kib(r->c, key);
      continue;
    }
    size_t len;
    int rc = tl_cache_get_buf(r->c, key, buf, sizeof buf, &len);
    if (rc == TL_ENOTFOUND) continue;
    char want = key[strlen(key) - 1];
    if (rc != 0 || len != 1024 || buf[0] != want || buf[1023] != want) atomic_fetch_add(r->bad, 1);
  }
  return NULL;
}

static void readers_race_evictions(void **state)
{
  (void)state;
  tl_cache *c = open_url("memory://?max_bytes=64KiB&shards=2", NULL);
  _Atomic int bad = 0;
  pthread_t th[8];
  race r[8];
  for (int i = 0; i < 8; i++) {
    r[i] = (race){ c, i, &bad };
    pthread_create(&th[i], NULL, race_main, &r[i]);
  }
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  assert_int_equal(atomic_load(&bad), 0);
  tl_cache_close(c);
}

/* ---- the in-process layer hooks ---------------------------------------- */

static void local_drop_and_readiness(void **state)
{
  (void)state;
  tl_cache *c = open_url("memory://?max_bytes=1MiB", NULL);
  assert_string_equal(tl_cache_backend(c), "memory");
  ccx_put(c, "k:a", "a", 0);
  ccx_put(c, "k:b1", "b", 0);
  ccx_put(c, "k:b2", "b", 0);
  assert_int_equal(tl_cache_drop_local(c, "k:a", 0), 0);
  ccx_expect(c, "k:a", NULL, 0);
  /* With a version it leaves a fence, as tl_cache_invalidate does. */
  assert_int_equal(tl_cache_drop_local(c, "k:a", 4), 0);
  assert_int_equal(tl_cache_set_version(c, "k:a", "3", 1, 3, 0), TL_ECONFLICT);
  assert_int_equal(tl_cache_drop_local_prefix(c, "k:b"), 0);
  ccx_expect(c, "k:b1", NULL, 0);
  ccx_expect(c, "k:b2", NULL, 0);
  char detail[128];
  assert_int_equal(tl_cache_ready_check(c, detail, sizeof detail), 0);
  assert_string_equal(detail, "ok (memory)");
  assert_int_equal(tl_cache_breaker_state(c), TL_BREAKER_CLOSED);
  tl_cache_close(c);
  tl_cache_close(NULL);
}

/* ---- configuration ----------------------------------------------------- */

static int from_env(const char *text, tl_cache_config *out)
{
  static tl_config *cfg; /* kept: `out` borrows its strings */
  tl_config_free(cfg);
  cfg = NULL;
  assert_int_equal(tl_config_new(&cfg), 0);
  assert_int_equal(tl_config_parse(cfg, text, strlen(text), "test"), 0);
  return tl_cache_config_from(cfg, out);
}

static void expect_config_error(const char *env, int status, const char *msg)
{
  tl_cache_config out;
  int rc = from_env(env, &out);
  if (rc != status || !strstr(tl_error_last(), msg))
    fail_msg("%s: got %s '%s', expected %s with '%s'", env, tl_status_name(rc), tl_error_last(),
             tl_status_name(status), msg);
}

static void config_from_env(void **state)
{
  (void)state;
  tl_cache_config out;
  assert_int_equal(from_env("", &out), 0);
  assert_string_equal(out.url, "memory://?max_bytes=64MiB");
  assert_int_equal(out.default_ttl_us, 300000000);
  assert_int_equal(out.negative_ttl_us, 30000000);
  assert_int_equal(out.ttl_jitter_pct, 10);
  assert_int_equal(out.timeout_us, 250000);
  assert_int_equal(out.pool_size, 8);
  assert_int_equal(out.local_max_bytes, 0);
  assert_int_equal(from_env("CACHE_URL=redis://:pw@cache:6380/2\nCACHE_KEY_PREFIX=svc:\n"
                            "CACHE_DEFAULT_TTL=0\nCACHE_NEGATIVE_TTL=0\nCACHE_TTL_JITTER=0\n"
                            "CACHE_TIMEOUT=1s\nCACHE_POOL_SIZE=3\nCACHE_BREAKER_FAILURES=2\n"
                            "CACHE_BREAKER_OPEN=10s\nCACHE_LOCAL_MAX_BYTES=8MiB\n"
                            "CACHE_LOCAL_TTL=500ms\n", &out), 0);
  assert_string_equal(out.key_prefix, "svc:");
  assert_int_equal(out.default_ttl_us, -1);
  assert_int_equal(out.negative_ttl_us, -1);
  assert_int_equal(out.ttl_jitter_pct, -1);
  assert_int_equal(out.timeout_us, 1000000);
  assert_int_equal(out.pool_size, 3);
  assert_int_equal(out.breaker_failures, 2);
  assert_int_equal(out.breaker_open_us, 10000000);
  assert_int_equal(out.local_max_bytes, 8 << 20);
  assert_int_equal(out.local_ttl_us, 500000);

  expect_config_error("CACHE_URL=memcached://x", TL_EUNSUPP,
                      "CACHE_URL: cache url 'memcached://x': unknown scheme 'memcached'");
  expect_config_error("CACHE_URL=memory://?max_bytes=lots", TL_EINVAL, "max_bytes 'lots' is not a size");
  expect_config_error("CACHE_URL=memory://?max_bytes=1KiB", TL_EINVAL, "from 16KiB");
  expect_config_error("CACHE_URL=memory://?shards=3", TL_EINVAL, "shards '3' is not a power of two");
  expect_config_error("CACHE_URL=memory://?max_bytes=64KiB&shards=32", TL_EINVAL, "less than 4KiB");
  expect_config_error("CACHE_URL=memory://?size=1", TL_EINVAL, "unknown option 'size'");
  expect_config_error("CACHE_URL=memory://u:s3cret@host", TL_EINVAL,
                      "'memory://u:***@host': unexpected text after 'memory://'");
  assert_null(strstr(tl_error_last(), "s3cret"));
  expect_config_error("CACHE_URL=redis://", TL_EINVAL, "no host");
  expect_config_error("CACHE_URL=redis://h:99999", TL_EINVAL, "port '99999' is not an integer");
  expect_config_error("CACHE_URL=redis://h/x", TL_EINVAL, "database 'x'");
  expect_config_error("CACHE_URL=redis://h/0?timeout=1", TL_EINVAL, "redis URLs take none");
  expect_config_error("CACHE_URL=rediss://h", TL_EUNSUPP, "TLS");
  expect_config_error("CACHE_URL=redis://h:1/0#x", TL_EINVAL, "unexpected '#' fragment");
  expect_config_error("CACHE_URL=redis://[::1", TL_EINVAL, "without ']'");
  expect_config_error("CACHE_URL=redis", TL_EINVAL, "no scheme");
  expect_config_error("CACHE_URL=redis://u:s3cret@h:1/x", TL_EINVAL, "'redis://u:***@h:1/x'");
  assert_null(strstr(tl_error_last(), "s3cret"));
  expect_config_error("CACHE_POOL_SIZE=0", TL_EINVAL, "CACHE_POOL_SIZE: '0'");
  expect_config_error("CACHE_TTL_JITTER=60", TL_EINVAL, "CACHE_TTL_JITTER: '60'");
  expect_config_error("CACHE_TIMEOUT=0", TL_EINVAL, "CACHE_TIMEOUT: must be more than 0");
  expect_config_error("CACHE_DEFAULT_TTL=5", TL_EINVAL, "CACHE_DEFAULT_TTL");
  expect_config_error("CACHE_LOCAL_MAX_BYTES=2KiB", TL_EINVAL,
                      "CACHE_LOCAL_MAX_BYTES: '2KiB' is not 0 or a size");
  expect_config_error("CACHE_BREAKER_FAILURES=x", TL_EINVAL, "CACHE_BREAKER_FAILURES: 'x'");
  tl_cache_config ok;
  assert_int_equal(from_env("CACHE_URL=redis://[::1]:7000/3", &ok), 0);
  assert_int_equal(from_env("CACHE_URL=memory://?max_bytes=100000&shards=2", &ok), 0);
  assert_int_equal(from_env("CACHE_URL=memory://?max_bytes=1GB", &ok), 0);
  from_env("", &ok); /* frees the last config */
}

static void open_rejects_bad_fields(void **state)
{
  (void)state;
  tl_cache *c = (tl_cache *)1;
  assert_int_equal(tl_cache_open(&c, &(tl_cache_config){ .ttl_jitter_pct = 70 }), TL_EINVAL);
  assert_null(c);
  assert_non_null(strstr(tl_error_last(), "ttl_jitter_pct 70 is more than 50"));
  assert_int_equal(tl_cache_open(&c, &(tl_cache_config){ .name = "" }), TL_EINVAL);
  assert_int_equal(tl_cache_open(&c, &(tl_cache_config){ .url = "redis://h", .local_max_bytes = 100 }),
                   TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "less than 16KiB"));
  assert_int_equal(tl_cache_open(&c, &(tl_cache_config){ .url = "nope://" }), TL_EUNSUPP);
  assert_int_equal(tl_cache_open(NULL, NULL), TL_EINVAL);
  /* NULL config: the defaults, memory://?max_bytes=64MiB. */
  assert_int_equal(tl_cache_open(&c, NULL), 0);
  assert_string_equal(tl_cache_backend(c), "memory");
  tl_cache_close(c);
}

int main(void)
{
  tl_log_set_level(TL_LOG_WARN);
  int failed = ccx_run("cache_contract_memory");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(eviction_under_byte_bound),
    cmocka_unit_test(scan_keeps_hot_keys),
    cmocka_unit_test(ttl_jitter_spreads_expiry),
    cmocka_unit_test(readers_race_evictions),
    cmocka_unit_test(local_drop_and_readiness),
    cmocka_unit_test(config_from_env),
    cmocka_unit_test(open_rejects_bad_fields),
  };
  failed += cmocka_run_group_tests_name("cache_memory", tests, NULL, NULL);
  return failed ? 1 : 0;
}
