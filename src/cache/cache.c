/* The front end: configuration, opening, reads and writes through the
 * optional in-process layer and the backend, the circuit breaker around a
 * remote backend, metrics and the readiness check. */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache_int.h"
#include "trellis/log.h"

#define NAME_MAX_LEN 64
#define PREFIX_MAX 256
#define NSTRIPES 8

enum { R_HIT, R_MISS, R_ERROR, NRESULTS };

/* Read counts, striped by thread so that two threads reading do not
 * share a cache line; the collect hook moves them into the counters. */
typedef struct stripe {
  _Alignas(64) _Atomic uint64_t n[NRESULTS];
} stripe;

struct tl_cache {
  stripe stripes[NSTRIPES];
  const tl__cache_backend *be;
  void *st;
  void *local;                /* the in-process layer in front of a remote backend */
  tl_breaker *breaker;        /* remote backends only */
  _Atomic int breaker_seen;   /* the state last logged */
  char name[NAME_MAX_LEN + 1];
  char *masked_url;
  int64_t default_ttl_us, negative_ttl_us, local_ttl_us;
  int jitter_pct;
  tl__flights *flights;
  tl_metrics *metrics;
  tl_series *m_req[NRESULTS], *m_evict, *m_bytes, *m_entries, *m_breaker, *m_load, *m_loads[3];
  uint64_t evictions_reported; /* locks: g_mu */
  pthread_mutex_t err_mu;
  char last_error[200];       /* the last failure of the backend; locks: err_mu */
  struct tl_cache *gnext;     /* every open cache, for the collect hook; locks: g_mu */
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static tl_cache *g_caches;

static int64_t coarse_mono_us(void *ctx)
{
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int tl__cache_read_copy(tl__cache_read *r, const char *src, size_t len)
{
  r->len = len;
  if (r->buf) {
    if (len > r->cap) return TL_ETOOBIG;
    if (len) memcpy(r->buf, src, len);
    r->data = r->buf;
    return 0;
  }
  if (!(r->data = malloc(len + 1))) return TL_ENOMEM;
  if (len) memcpy(r->data, src, len);
  r->data[len] = '\0';
  return 0;
}

/* ---- configuration ----------------------------------------------------- */

static int size_key(const tl_config *cfg, const char *key, size_t *out)
{
  const char *v = tl_config_get(cfg, key);
  uint64_t n = 0;
  *out = 0;
  if (!v || !*v) return 0;
  if (tl__cache_size_parse(v, strlen(v), &n) != 0 || (n && n < (16u << 10)) ||
      n > ((uint64_t)1 << 40))
    return tl_error_set(TL_EINVAL, "%s: '%.64s' is not 0 or a size from 16KiB to 1024GiB "
                        "(bytes, or a number with KiB, MiB, GiB, KB, MB or GB)", key, v);
  *out = (size_t)n;
  return 0;
}

static int positive_duration(const tl_config *cfg, const char *key, int64_t def, int64_t *out)
{
  int rc = tl_config_duration(cfg, key, def, out);
  if (!rc && *out == 0) rc = tl_error_set(TL_EINVAL, "%s: must be more than 0", key);
  return rc;
}

int tl_cache_config_from(const tl_config *cfg, tl_cache_config *out)
{
  if (!cfg || !out) return tl_error_set(TL_EINVAL, "tl_cache_config_from: NULL argument");
  memset(out, 0, sizeof *out);
  const char *url, *prefix;
  int rc = tl_config_string(cfg, "CACHE_URL", "memory://?max_bytes=64MiB", &url);
  if (rc) return rc;
  tl__cache_url u;
  if ((rc = tl__cache_url_parse(url, &u)) != 0) return tl_error_wrap(rc, "CACHE_URL");
  tl__cache_url_free(&u);
  if ((rc = tl_config_string(cfg, "CACHE_KEY_PREFIX", "", &prefix))) return rc;
  if (strlen(prefix) > PREFIX_MAX)
    return tl_error_set(TL_EINVAL, "CACHE_KEY_PREFIX: %zu bytes, more than %d", strlen(prefix),
                        PREFIX_MAX);
  int64_t ttl, neg, jitter, timeout, pool, failures, open_us, local_ttl;
  if ((rc = tl_config_duration(cfg, "CACHE_DEFAULT_TTL", 300000000, &ttl)) ||
      (rc = tl_config_duration(cfg, "CACHE_NEGATIVE_TTL", 30000000, &neg)) ||
      (rc = tl_config_int(cfg, "CACHE_TTL_JITTER", 10, 0, 50, &jitter)) ||
      (rc = positive_duration(cfg, "CACHE_TIMEOUT", 250000, &timeout)) ||
      (rc = tl_config_int(cfg, "CACHE_POOL_SIZE", 8, 1, 1024, &pool)) ||
      (rc = tl_config_int(cfg, "CACHE_BREAKER_FAILURES", 5, 1, 1000, &failures)) ||
      (rc = positive_duration(cfg, "CACHE_BREAKER_OPEN", 5000000, &open_us)) ||
      (rc = size_key(cfg, "CACHE_LOCAL_MAX_BYTES", &out->local_max_bytes)) ||
      (rc = positive_duration(cfg, "CACHE_LOCAL_TTL", 2000000, &local_ttl)))
    return rc;
  out->url = url;
  out->key_prefix = prefix;
  /* In the environment 0 means "none": no expiry, no negative caching,
   * no jitter. */
  out->default_ttl_us = ttl ? ttl : -1;
  out->negative_ttl_us = neg ? neg : -1;
  out->ttl_jitter_pct = jitter ? (int)jitter : -1;
  out->timeout_us = timeout;
  out->pool_size = (unsigned)pool;
  out->breaker_failures = (unsigned)failures;
  out->breaker_open_us = open_us;
  out->local_ttl_us = local_ttl;
  return 0;
}

/* ---- metrics ----------------------------------------------------------- */

static tl_series *series1(tl_metric *m, const char *name)
{
  return m ? tl_metric_series(m, TL_LABELS(name)) : NULL;
}

static int open_metrics(tl_cache *c, bool store)
{
  tl_metrics *r = c->metrics;
  tl_metric *req, *ev, *by, *en, *ld, *lds, *br;
  int rc;
  if ((rc = tl_metrics_counter(r, "trellis_cache_requests_total",
                               "Cache reads by result: hit (a value or a cached not-found), "
                               "miss, error (the backend could not answer).",
                               "cache,result", &req)) ||
      (rc = tl_metrics_counter(r, "trellis_cache_evictions_total",
                               "Entries the in-process store dropped to stay within its bytes.",
                               "cache", &ev)) ||
      (rc = tl_metrics_gauge(r, "trellis_cache_bytes",
                             "Bytes held by the in-process store, entry headers included.",
                             "cache", &by)) ||
      (rc = tl_metrics_gauge(r, "trellis_cache_entries",
                             "Entries in the in-process store (expired ones until dropped).",
                             "cache", &en)) ||
      (rc = tl_metrics_histogram(r, "trellis_cache_load_duration_seconds",
                                 "Time a loader took after a miss.", "cache", NULL, 0, &ld)) ||
      (rc = tl_metrics_counter(r, "trellis_cache_loads_total",
                               "Loader calls by result: ok, not_found, error.", "cache,result",
                               &lds)) ||
      (rc = tl_metrics_gauge(r, "trellis_cache_breaker_open",
                             "1 while the circuit breaker in front of Redis is open.", "cache",
                             &br)))
    return rc;
  static const char *const results[NRESULTS] = { "hit", "miss", "error" };
  static const char *const loads[3] = { "ok", "not_found", "error" };
  for (int i = 0; i < NRESULTS; i++) c->m_req[i] = tl_metric_series(req, TL_LABELS(c->name, results[i]));
  for (int i = 0; i < 3; i++) c->m_loads[i] = tl_metric_series(lds, TL_LABELS(c->name, loads[i]));
  c->m_load = series1(ld, c->name);
  if (store) {
    c->m_evict = series1(ev, c->name);
    c->m_bytes = series1(by, c->name);
    c->m_entries = series1(en, c->name);
  }
  if (c->breaker) {
    c->m_breaker = series1(br, c->name);
    tl_series_set(c->m_breaker, 0);
  }
  return 0;
}

static void count(tl_cache *c, int result, uint64_t n)
{
  static _Thread_local unsigned mine; /* stripe + 1; 0 until first use */
  static _Atomic unsigned next;
  if (!mine) mine = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) % NSTRIPES + 1;
  atomic_fetch_add_explicit(&c->stripes[mine - 1].n[result], n, memory_order_relaxed);
}

/* Move the striped counts and the store's figures into the registry.
 * locks: g_mu held */
static void publish(tl_cache *c)
{
  for (int r = 0; r < NRESULTS; r++) {
    uint64_t n = 0;
    for (int s = 0; s < NSTRIPES; s++)
      n += atomic_exchange_explicit(&c->stripes[s].n[r], 0, memory_order_relaxed);
    if (n) tl_series_add(c->m_req[r], (double)n);
  }
  void *st = c->local ? c->local : c->be->stats ? c->st : NULL;
  if (!st) return;
  tl__cache_stats s;
  tl__cache_memory.stats(st, &s);
  tl_series_add(c->m_evict, (double)(s.evictions - c->evictions_reported));
  c->evictions_reported = s.evictions;
  tl_series_add(c->m_bytes, (double)s.bytes);
  tl_series_add(c->m_entries, (double)s.entries);
}

/* The collect hook of a registry: every open cache that counts into it.
 * Gauges are summed, as caches may share a name. */
static void collect(void *reg)
{
  pthread_mutex_lock(&g_mu);
  for (tl_cache *c = g_caches; c; c = c->gnext) {
    if (c->metrics != reg) continue;
    tl_series_set(c->m_bytes, 0);
    tl_series_set(c->m_entries, 0);
  }
  for (tl_cache *c = g_caches; c; c = c->gnext)
    if (c->metrics == reg) publish(c);
  pthread_mutex_unlock(&g_mu);
}

void tl__cache_load_done(tl_cache *c, int64_t duration_us, int rc)
{
  tl_series_observe(c->m_load, (double)duration_us / 1e6);
  tl_series_inc(c->m_loads[rc == 0 ? 0 : rc == TL_ENOTFOUND ? 1 : 2]);
}

/* ---- the circuit breaker ----------------------------------------------- */

static void breaker_note(tl_cache *c)
{
  tl_breaker_state s = tl_breaker_state_get(c->breaker);
  int was = atomic_exchange(&c->breaker_seen, (int)s);
  if (was == (int)s) return;
  tl_series_set(c->m_breaker, s == TL_BREAKER_OPEN ? 1 : 0);
  if (s == TL_BREAKER_OPEN) {
    char err[sizeof c->last_error];
    pthread_mutex_lock(&c->err_mu);
    memcpy(err, c->last_error, sizeof err);
    pthread_mutex_unlock(&c->err_mu);
    tl_log(TL_LOG_WARN, "cache breaker open: reads go to the loaders", TL_F_STR("cache", c->name),
           TL_F_STR("url", c->masked_url), TL_F_STR("error", err));
  } else if (s == TL_BREAKER_CLOSED) {
    tl_log(TL_LOG_INFO, "cache breaker closed", TL_F_STR("cache", c->name),
           TL_F_STR("url", c->masked_url));
  }
}

/* May a call go to the backend now? */
static int remote_begin(tl_cache *c)
{
  if (!c->breaker || tl_breaker_allow(c->breaker)) return 0;
  breaker_note(c);
  pthread_mutex_lock(&c->err_mu);
  int rc = tl_error_set(TL_ECONNECT, "cache '%s': circuit breaker open after: %s", c->name,
                        c->last_error[0] ? c->last_error : "failed calls");
  pthread_mutex_unlock(&c->err_mu);
  return rc;
}

/* Report the call's outcome: a lost connection or a timeout counts
 * against the backend; anything else (a value, an error reply) shows it
 * is up. Returns rc. */
static int remote_end(tl_cache *c, int rc)
{
  if (!c->breaker) return rc;
  if (rc == TL_ECONNECT || rc == TL_ETIMEOUT) {
    pthread_mutex_lock(&c->err_mu);
    snprintf(c->last_error, sizeof c->last_error, "%s", tl_error_last());
    pthread_mutex_unlock(&c->err_mu);
    tl_breaker_failure(c->breaker);
  } else {
    tl_breaker_success(c->breaker);
  }
  breaker_note(c);
  return rc;
}

tl_breaker_state tl_cache_breaker_state(tl_cache *c)
{
  return c && c->breaker ? tl_breaker_state_get(c->breaker) : TL_BREAKER_CLOSED;
}

/* ---- open and close ---------------------------------------------------- */

static int check_config(const tl_cache_config *cfg, const tl__cache_url *u)
{
  const char *where = u->masked;
  if (cfg->name && (!*cfg->name || strlen(cfg->name) > NAME_MAX_LEN))
    return tl_error_set(TL_EINVAL, "cache '%s': name must be 1 to %d bytes", where, NAME_MAX_LEN);
  if (cfg->key_prefix && strlen(cfg->key_prefix) > PREFIX_MAX)
    return tl_error_set(TL_EINVAL, "cache '%s': key_prefix is more than %d bytes", where,
                        PREFIX_MAX);
  if (cfg->ttl_jitter_pct > 50)
    return tl_error_set(TL_EINVAL, "cache '%s': ttl_jitter_pct %d is more than 50", where,
                        cfg->ttl_jitter_pct);
  if (cfg->pool_size > 1024)
    return tl_error_set(TL_EINVAL, "cache '%s': pool_size %u is more than 1024", where,
                        cfg->pool_size);
  if (cfg->timeout_us < 0 || cfg->breaker_open_us < 0 || cfg->local_ttl_us < 0)
    return tl_error_set(TL_EINVAL, "cache '%s': timeout_us, breaker_open_us and local_ttl_us "
                        "must not be negative", where);
  if (u->kind == TL__CACHE_REDIS && cfg->local_max_bytes && cfg->local_max_bytes < (16u << 10))
    return tl_error_set(TL_EINVAL, "cache '%s': local_max_bytes %zu is less than 16KiB", where,
                        cfg->local_max_bytes);
  return 0;
}

static int64_t or_default(int64_t v, int64_t def) { return v == 0 ? def : v; }

int tl_cache_open(tl_cache **out, const tl_cache_config *cfg)
{
  if (!out) return tl_error_set(TL_EINVAL, "tl_cache_open: NULL argument");
  *out = NULL;
  tl_cache_config d = cfg ? *cfg : (tl_cache_config){ 0 };
  tl__cache_url u;
  int rc = tl__cache_url_parse(d.url ? d.url : "memory://?max_bytes=64MiB", &u);
  if (rc) return rc;
  if ((rc = check_config(&d, &u)) != 0) {
    tl__cache_url_free(&u);
    return rc;
  }
  tl_cache *c = aligned_alloc(64, sizeof *c);
  if (!c) {
    tl__cache_url_free(&u);
    return tl_error_set(TL_ENOMEM, "cache: out of memory");
  }
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->err_mu, NULL);
  snprintf(c->name, sizeof c->name, "%s", d.name ? d.name : "default");
  c->masked_url = u.masked;
  u.masked = NULL;
  c->default_ttl_us = or_default(d.default_ttl_us, 300000000);
  c->negative_ttl_us = or_default(d.negative_ttl_us, 30000000);
  c->local_ttl_us = or_default(d.local_ttl_us, 2000000);
  c->jitter_pct = d.ttl_jitter_pct ? d.ttl_jitter_pct : 10;
  c->metrics = d.metrics ? d.metrics : tl_metrics_default();
  c->be = u.kind == TL__CACHE_MEMORY ? &tl__cache_memory : &tl__cache_redis;
  tl__cache_opts o = {
    .name = c->name, .key_prefix = d.key_prefix ? d.key_prefix : "",
    .timeout_us = or_default(d.timeout_us, 250000), .pool_size = d.pool_size ? d.pool_size : 8,
    .max_bytes = u.max_bytes, .shards = u.shards,
    .clock = d.clock ? d.clock : coarse_mono_us, .clock_ctx = d.clock ? d.clock_ctx : NULL,
  };
  tl_breaker_config bc = { .failure_threshold = d.breaker_failures ? d.breaker_failures : 5,
                           .open_us = or_default(d.breaker_open_us, 5000000),
                           .half_open_max = 1, .clock = o.clock, .clock_ctx = o.clock_ctx };
  if ((rc = c->be->open(&c->st, &u, &o)) != 0) goto fail;
  if (c->be->remote) {
    if ((rc = tl_breaker_new(&c->breaker, &bc)) != 0) goto fail;
    if (d.local_max_bytes) {
      tl__cache_url lu = { .kind = TL__CACHE_MEMORY, .max_bytes = d.local_max_bytes };
      o.max_bytes = d.local_max_bytes;
      o.shards = 0;
      if ((rc = tl__cache_memory.open(&c->local, &lu, &o)) != 0) goto fail;
    }
  }
  if ((rc = tl__flights_new(&c->flights)) != 0) goto fail;
  if ((rc = open_metrics(c, !c->be->remote || c->local)) != 0) goto fail;
  pthread_mutex_lock(&g_mu);
  bool hooked = false;
  for (tl_cache *o2 = g_caches; o2 && !hooked; o2 = o2->gnext) hooked = o2->metrics == c->metrics;
  /* A hook is added when no open cache counts into this registry; hooks
   * cannot be removed, and one that finds nothing to do is harmless. */
  rc = hooked ? 0 : tl_metrics_on_collect(c->metrics, collect, c->metrics);
  if (!rc) {
    c->gnext = g_caches;
    g_caches = c;
  }
  pthread_mutex_unlock(&g_mu);
  if (rc) goto fail;
  tl_log(TL_LOG_INFO, "cache opened", TL_F_STR("cache", c->name),
         TL_F_STR("backend", c->be->name), TL_F_STR("url", c->masked_url),
         TL_F_INT("local_max_bytes", c->local ? (int64_t)d.local_max_bytes : 0));
  tl__cache_url_free(&u);
  *out = c;
  return 0;
fail:
  tl__cache_url_free(&u);
  c->gnext = NULL;
  if (c->st) c->be->close(c->st);
  if (c->local) tl__cache_memory.close(c->local);
  tl_breaker_free(c->breaker);
  tl__flights_free(c->flights);
  pthread_mutex_destroy(&c->err_mu);
  free(c->masked_url);
  free(c);
  return rc;
}

void tl_cache_close(tl_cache *c)
{
  if (!c) return;
  pthread_mutex_lock(&g_mu);
  for (tl_cache **p = &g_caches; *p; p = &(*p)->gnext) {
    if (*p == c) {
      *p = c->gnext;
      break;
    }
  }
  publish(c); /* the last counts; its gauges leave with it */
  tl_series_set(c->m_bytes, 0);
  tl_series_set(c->m_entries, 0);
  tl_series_set(c->m_breaker, 0);
  pthread_mutex_unlock(&g_mu);
  c->be->close(c->st);
  if (c->local) tl__cache_memory.close(c->local);
  tl_breaker_free(c->breaker);
  tl__flights_free(c->flights);
  pthread_mutex_destroy(&c->err_mu);
  free(c->masked_url);
  free(c);
}

const char *tl_cache_backend(const tl_cache *c) { return c ? c->be->name : "none"; }
const char *tl__cache_name(const tl_cache *c) { return c->name; }
int64_t tl__cache_negative_ttl(const tl_cache *c) { return c->negative_ttl_us; }
tl__flights *tl__cache_flights(tl_cache *c) { return c->flights; }

/* ---- reads ------------------------------------------------------------- */

int tl__cache_key(const tl_cache *c, const char *key, size_t *klen, const char *fn)
{
  if (!c || !key) return tl_error_set(TL_EINVAL, "%s: NULL %s", fn, c ? "key" : "cache");
  size_t n = strnlen(key, TL_CACHE_KEY_MAX + 1);
  if (n == 0) return tl_error_set(TL_EINVAL, "cache '%s': empty key", c->name);
  if (n > TL_CACHE_KEY_MAX)
    return tl_error_set(TL_EINVAL, "cache '%s': key '%.40s...' is more than %d bytes", c->name,
                        key, TL_CACHE_KEY_MAX);
  *klen = n;
  return 0;
}

/* The TTL to store with: the default for 0, jitter applied. */
static int64_t ttl_for(const tl_cache *c, int64_t ttl)
{
  if (ttl == 0) ttl = c->default_ttl_us;
  if (ttl < 0) return -1;
  if (c->jitter_pct > 0 && ttl > 1) {
    uint64_t span = (uint64_t)ttl / 100 * (uint64_t)c->jitter_pct + 1;
    ttl -= (int64_t)(tl_rand64() % span);
  }
  return ttl > 0 ? ttl : 1;
}

/* Put what the backend returned into the in-process layer, for at most
 * local_ttl; it refuses anything older than what it has. */
static void local_fill(tl_cache *c, const char *key, size_t klen, const tl__cache_read *r)
{
  tl__cache_write w = { .key = key, .klen = klen, .val = r->data, .len = r->kind == TL__CK_VALUE ? r->len : 0,
                        .kind = r->kind, .version = r->version, .versioned = true,
                        .ttl_us = c->local_ttl_us };
  tl__cache_memory.set(c->local, &w);
}

int tl__cache_lookup(tl_cache *c, const char *key, size_t klen, tl__cache_read *r, bool counted)
{
  int rc = 0;
  r->kind = 0;
  if (c->local) rc = tl__cache_memory.get(c->local, key, klen, r);
  if (!rc && !r->kind) {
    if (!(rc = remote_begin(c))) rc = remote_end(c, c->be->get(c->st, key, klen, r));
    if (!rc && r->kind && c->local) local_fill(c, key, klen, r);
  }
  if (counted && rc != TL_ETOOBIG) count(c, rc ? R_ERROR : r->kind ? R_HIT : R_MISS, 1);
  return rc;
}

static int not_found(const tl_cache *c, const char *key)
{
  return tl_error_set(TL_ENOTFOUND, "cache '%s': no entry for '%.64s'", c->name, key);
}

int tl_cache_get(tl_cache *c, const char *key, tl_cache_val *out)
{
  size_t klen;
  if (out) memset(out, 0, sizeof *out);
  int rc = tl__cache_key(c, key, &klen, "tl_cache_get");
  if (!rc && !out) rc = tl_error_set(TL_EINVAL, "tl_cache_get: NULL out");
  if (rc) return rc;
  tl__cache_read r = { 0 };
  if ((rc = tl__cache_lookup(c, key, klen, &r, true)) != 0) return rc;
  if (r.kind != TL__CK_VALUE) return not_found(c, key);
  *out = (tl_cache_val){ .data = r.data, .len = r.len, .version = r.version };
  return 0;
}

int tl_cache_get_buf(tl_cache *c, const char *key, void *buf, size_t cap, size_t *len)
{
  size_t klen;
  int rc = tl__cache_key(c, key, &klen, "tl_cache_get_buf");
  if (!rc && ((!buf && cap) || !len)) rc = tl_error_set(TL_EINVAL, "tl_cache_get_buf: NULL buffer");
  if (rc) return rc;
  /* A zero-size read still needs a non-NULL buf so that it is not
   * taken as "allocate". */
  static char none;
  tl__cache_read r = { .buf = buf ? buf : &none, .cap = cap };
  rc = tl__cache_lookup(c, key, klen, &r, true);
  *len = r.kind == TL__CK_VALUE ? r.len : 0;
  if (rc == TL_ETOOBIG) {
    *len = r.len;
    count(c, R_HIT, 1);
    return tl_error_set(rc, "cache '%s': the value of '%.64s' is %zu bytes, more than the "
                        "buffer's %zu", c->name, key, r.len, cap);
  }
  if (rc) return rc;
  return r.kind == TL__CK_VALUE ? 0 : not_found(c, key);
}

int tl_cache_get_many(tl_cache *c, const char *const *keys, size_t n, tl_cache_val *out)
{
  if (out) memset(out, 0, n * sizeof *out);
  if (!c || (n && (!keys || !out))) return tl_error_set(TL_EINVAL, "tl_cache_get_many: NULL argument");
  size_t klen;
  for (size_t i = 0; i < n; i++) {
    int rc = tl__cache_key(c, keys[i], &klen, "tl_cache_get_many");
    if (rc) return tl_error_wrap(rc, "key %zu", i);
  }
  tl__cache_read *r = calloc(n ? n : 1, sizeof *r);
  const char **miss = malloc((n ? n : 1) * sizeof *miss);
  size_t *at = malloc((n ? n : 1) * sizeof *at), nmiss = 0;
  int rc = 0;
  if (!r || !miss || !at) rc = tl_error_set(TL_ENOMEM, "cache '%s': out of memory", c->name);
  for (size_t i = 0; !rc && i < n; i++) {
    if (c->local) rc = tl__cache_memory.get(c->local, keys[i], strlen(keys[i]), &r[i]);
    if (!r[i].kind) {
      miss[nmiss] = keys[i];
      at[nmiss++] = i;
    }
  }
  tl__cache_read *mr = !rc && nmiss ? calloc(nmiss, sizeof *mr) : NULL;
  if (!rc && nmiss && !mr) rc = tl_error_set(TL_ENOMEM, "cache '%s': out of memory", c->name);
  if (!rc && nmiss && !(rc = remote_begin(c))) {
    if (c->be->get_many) {
      rc = c->be->get_many(c->st, miss, nmiss, mr);
    } else {
      for (size_t j = 0; !rc && j < nmiss; j++)
        rc = c->be->get(c->st, miss[j], strlen(miss[j]), &mr[j]);
    }
    rc = remote_end(c, rc);
    for (size_t j = 0; j < nmiss; j++) {
      r[at[j]] = mr[j];
      if (!rc && mr[j].kind && c->local) local_fill(c, miss[j], strlen(miss[j]), &mr[j]);
    }
  }
  uint64_t hits = 0;
  for (size_t i = 0; i < n && r; i++) {
    if (!rc && r[i].kind == TL__CK_VALUE)
      out[i] = (tl_cache_val){ .data = r[i].data, .len = r[i].len, .version = r[i].version };
    else
      free(r[i].data);
    hits += r[i].kind != 0;
  }
  if (rc) count(c, R_ERROR, n);
  else {
    count(c, R_HIT, hits);
    count(c, R_MISS, n - hits);
  }
  free(r);
  free(mr);
  free(miss);
  free(at);
  return rc;
}

/* ---- writes ------------------------------------------------------------ */

int tl__cache_store(tl_cache *c, tl__cache_write *w)
{
  w->ttl_us = ttl_for(c, w->ttl_us);
  int rc = remote_begin(c);
  if (!rc) rc = remote_end(c, c->be->set(c->st, w));
  if (!c->local) return rc;
  if (rc == 0) {
    tl__cache_write lw = *w;
    if (lw.ttl_us < 0 || lw.ttl_us > c->local_ttl_us) lw.ttl_us = c->local_ttl_us;
    int lrc = tl__cache_memory.set(c->local, &lw);
    if (lrc == 0 || lrc == TL_ECONFLICT) return 0; /* refused: the layer knows newer */
  }
  /* Not stored (or refused) below: what this layer has may be older. */
  tl__cache_memory.del(c->local, w->key, w->klen);
  return rc;
}

static int write_entry(tl_cache *c, const char *key, const void *val, size_t len,
                       int64_t version, bool versioned, int64_t ttl_us, const char *fn)
{
  size_t klen;
  int rc = tl__cache_key(c, key, &klen, fn);
  if (rc) return rc;
  if (!val && len) return tl_error_set(TL_EINVAL, "%s: NULL value with length %zu", fn, len);
  if (version < 0 || version > TL__CACHE_VERSION_MAX)
    return tl_error_set(TL_EINVAL, "cache '%s': version %lld is not in [0, 2^53]", c->name,
                        (long long)version);
  tl__cache_write w = { .key = key, .klen = klen, .val = val, .len = len, .kind = TL__CK_VALUE,
                        .version = version, .versioned = versioned, .ttl_us = ttl_us };
  rc = tl__cache_store(c, &w);
  if (rc == TL_ECONFLICT)
    return tl_error_set(rc, "cache '%s': '%.64s' holds a version above %lld", c->name, key,
                        (long long)version);
  return rc;
}

int tl_cache_set(tl_cache *c, const char *key, const void *val, size_t len, int64_t ttl_us)
{
  return write_entry(c, key, val, len, 0, false, ttl_us, "tl_cache_set");
}

int tl_cache_set_version(tl_cache *c, const char *key, const void *val, size_t len,
                         int64_t version, int64_t ttl_us)
{
  return write_entry(c, key, val, len, version, true, ttl_us, "tl_cache_set_version");
}

int tl_cache_delete(tl_cache *c, const char *key)
{
  size_t klen;
  int rc = tl__cache_key(c, key, &klen, "tl_cache_delete");
  if (rc) return rc;
  /* The backend first: a reader here between the two steps still finds
   * the old value in this layer, but cannot put it back afterwards. */
  if (!(rc = remote_begin(c))) rc = remote_end(c, c->be->del(c->st, key, klen));
  if (c->local) tl__cache_memory.del(c->local, key, klen);
  return rc;
}

static int check_prefix(const tl_cache *c, const char *prefix, size_t *plen, const char *fn)
{
  int rc = tl__cache_key(c, prefix, plen, fn);
  return rc ? tl_error_wrap(rc, "prefix") : 0;
}

int tl_cache_delete_prefix(tl_cache *c, const char *prefix, size_t *deleted)
{
  size_t plen, n = 0;
  if (deleted) *deleted = 0;
  int rc = check_prefix(c, prefix, &plen, "tl_cache_delete_prefix");
  if (rc) return rc;
  if (!(rc = remote_begin(c))) rc = remote_end(c, c->be->del_prefix(c->st, prefix, plen, &n));
  if (c->local) tl__cache_memory.del_prefix(c->local, prefix, plen, NULL);
  if (deleted) *deleted = n;
  return rc;
}

/* A fence at `version` in `st` (the backend or a layer) for `ttl_us`;
 * an entry at a higher version stays. */
static int fence(const tl__cache_backend *be, void *st, const char *key, size_t klen,
                 int64_t version, int64_t ttl_us)
{
  tl__cache_write w = { .key = key, .klen = klen, .kind = TL__CK_FENCE, .version = version,
                        .versioned = true, .ttl_us = ttl_us };
  int rc = be->set(st, &w);
  return rc == TL_ECONFLICT ? 0 : rc;
}

static int check_version(const tl_cache *c, int64_t version)
{
  if (version >= 0 && version <= TL__CACHE_VERSION_MAX) return 0;
  return tl_error_set(TL_EINVAL, "cache '%s': version %lld is not in [0, 2^53]", c->name,
                      (long long)version);
}

int tl_cache_invalidate(tl_cache *c, const char *key, int64_t version)
{
  size_t klen;
  int rc = tl__cache_key(c, key, &klen, "tl_cache_invalidate");
  if (!rc) rc = check_version(c, version);
  if (rc) return rc;
  if (version == 0) return tl_cache_delete(c, key);
  if (!(rc = remote_begin(c)))
    rc = remote_end(c, fence(c->be, c->st, key, klen, version, c->default_ttl_us));
  if (c->local && (rc || fence(&tl__cache_memory, c->local, key, klen, version, c->local_ttl_us)))
    tl__cache_memory.del(c->local, key, klen);
  return rc;
}

/* The in-process store of `c`: its layer, or the memory backend itself. */
static void *local_store(tl_cache *c)
{
  return c->local ? c->local : c->be->remote ? NULL : c->st;
}

int tl_cache_drop_local(tl_cache *c, const char *key, int64_t version)
{
  size_t klen;
  int rc = tl__cache_key(c, key, &klen, "tl_cache_drop_local");
  if (!rc) rc = check_version(c, version);
  void *st = rc ? NULL : local_store(c);
  if (!st) return rc;
  if (version == 0) return tl__cache_memory.del(st, key, klen);
  return fence(&tl__cache_memory, st, key, klen, version,
               c->local ? c->local_ttl_us : c->default_ttl_us);
}

int tl_cache_drop_local_prefix(tl_cache *c, const char *prefix)
{
  size_t plen;
  int rc = check_prefix(c, prefix, &plen, "tl_cache_drop_local_prefix");
  void *st = rc ? NULL : local_store(c);
  return st ? tl__cache_memory.del_prefix(st, prefix, plen, NULL) : rc;
}

/* ---- readiness --------------------------------------------------------- */

int tl_cache_ready_check(void *cache, char *detail, size_t n)
{
  tl_cache *c = cache;
  if (!c) return tl_error_set(TL_EINVAL, "tl_cache_ready_check: NULL cache");
  if (!c->breaker) {
    snprintf(detail, n, "ok (%s)", c->be->name);
    return 0;
  }
  int rc = remote_begin(c);
  if (!rc) rc = remote_end(c, c->be->ping(c->st));
  tl_breaker_state s = tl_breaker_state_get(c->breaker);
  if (rc)
    snprintf(detail, n, "degraded: breaker %s: %s; reads go to the loaders",
             tl_breaker_state_name(s), tl_error_last());
  else
    snprintf(detail, n, "ok (redis, breaker %s)", tl_breaker_state_name(s));
  return 0;
}
