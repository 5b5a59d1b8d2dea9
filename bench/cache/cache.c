/* bench_cache: the cache module against the least the same work can cost.
 *
 * Cases (each alternates trellis and the baseline, same keys, same values,
 * same access order):
 *   mem_get_hit      tl_cache_get_buf on the memory backend vs a hash table
 *                    behind one mutex, both copying the value out; 1 thread
 *   mem_get_hit_2t   the same with 2 threads (ns per get per thread)
 *   zipf_hit_ratio   hit ratio of the memory backend's eviction (S3-FIFO) vs
 *                    an LRU holding as many entries, on a Zipf(0.99) trace
 *   redis_get        tl_cache_get_buf on Redis vs hiredis GET on one
 *                    connection with the same timeout, same server
 *   redis_get_many   tl_cache_get_many of 100 keys vs 100 GETs pipelined
 *                    by hand with hiredis
 * Redis comes from TRELLIS_TEST_REDIS_URL or the scripts/services env file;
 * no server is started here: without one the redis cases are skipped (on
 * stderr). BENCH_QUICK=1 shrinks everything. */
#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <trellis/trellis.h>

#include "bench.h"

#define NKEYS 10000
#define VLEN 64
#define TRACE (1 << 16)

static char keys[NKEYS][24];
static char value[VLEN];
static unsigned trace[TRACE]; /* key indexes, in access order */

static void die(const char *what)
{
  fprintf(stderr, "bench_cache: %s: %s\n", what, tl_error_last());
  exit(1);
}

static uint64_t xorshift(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* ---- the baseline: one mutex, one chained hash table ------------------- */

typedef struct node {
  struct node *next;
  const char *key;
  size_t klen;
  char val[VLEN];
} node;

typedef struct mutex_map {
  pthread_mutex_t mu;
  node *tab[16384];
  node nodes[NKEYS];
} mutex_map;

static uint64_t fnv(const char *s, size_t n)
{
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

static void map_fill(mutex_map *m)
{
  pthread_mutex_init(&m->mu, NULL);
  for (int i = 0; i < NKEYS; i++) {
    node *n = &m->nodes[i];
    n->key = keys[i];
    n->klen = strlen(keys[i]);
    memcpy(n->val, value, VLEN);
    size_t b = fnv(n->key, n->klen) & 16383;
    n->next = m->tab[b];
    m->tab[b] = n;
  }
}

static int map_get(mutex_map *m, const char *key, char *buf, size_t cap, size_t *len)
{
  size_t klen = strlen(key);
  size_t b = fnv(key, klen) & 16383;
  int rc = -1;
  pthread_mutex_lock(&m->mu);
  for (node *n = m->tab[b]; n; n = n->next) {
    if (n->klen == klen && memcmp(n->key, key, klen) == 0 && cap >= VLEN) {
      memcpy(buf, n->val, VLEN);
      *len = VLEN;
      rc = 0;
      break;
    }
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

/* ---- memory get hit ----------------------------------------------------- */

typedef struct mem_ctx {
  tl_cache *c;
  mutex_map *map;
  long n;
  int threads;
  bool ours;
} mem_ctx;

typedef struct mem_arg {
  mem_ctx *ctx;
  unsigned offset;
} mem_arg;

static void *mem_loop(void *arg)
{
  mem_arg *a = arg;
  mem_ctx *c = a->ctx;
  char buf[VLEN];
  size_t len;
  for (long i = 0; i < c->n; i++) {
    const char *k = keys[trace[(a->offset + (unsigned)i) & (TRACE - 1)]];
    int rc = c->ours ? tl_cache_get_buf(c->c, k, buf, sizeof buf, &len)
                     : map_get(c->map, k, buf, sizeof buf, &len);
    if (rc != 0 || len != VLEN) die("get hit");
    __asm__ volatile("" : : "r"(buf) : "memory");
  }
  return NULL;
}

/* ns per get per thread: wall time x threads / gets. */
static int mem_run(mem_ctx *c, double *fig)
{
  pthread_t th[2];
  mem_arg args[2];
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < c->threads; i++) {
    args[i] = (mem_arg){ c, (unsigned)i * (TRACE / 2) };
    pthread_create(&th[i], NULL, mem_loop, &args[i]);
  }
  for (int i = 0; i < c->threads; i++) pthread_join(th[i], NULL);
  fig[0] = (double)(bench_now_ns() - t0) / (double)c->n;
  return 0;
}

static int ours_mem(void *ctx, double *fig)
{
  mem_ctx *c = ctx;
  c->ours = true;
  return mem_run(c, fig);
}

static int base_mem(void *ctx, double *fig)
{
  mem_ctx *c = ctx;
  c->ours = false;
  return mem_run(c, fig);
}

static void bench_memory(void)
{
  tl_cache *c;
  if (tl_cache_open(&c, &(tl_cache_config){ .url = "memory://?max_bytes=64MiB",
                                            .default_ttl_us = TL_CACHE_NO_EXPIRY }) != 0)
    die("open memory");
  for (int i = 0; i < NKEYS; i++)
    if (tl_cache_set(c, keys[i], value, VLEN, 0) != 0) die("set");
  mutex_map *map = calloc(1, sizeof *map);
  map_fill(map);
  mem_ctx ctx = { .c = c, .map = map, .n = bench_size(5000000, 100000), .threads = 1 };
  bench_metric m = { "mem_get_hit", "ns/get", true };
  bench_spec s = { .bench = "cache", .baseline_name = "mutex+hash", .metrics = &m, .nmetrics = 1,
                   .conditions = "1 thread, 10k keys, 64-byte values copied out, random order",
                   .ours = ours_mem, .ours_ctx = &ctx, .baseline = base_mem, .baseline_ctx = &ctx };
  bench_compare(&s);
  ctx.threads = 2;
  bench_metric m2 = { "mem_get_hit_2t", "ns/get per thread", true };
  s.metrics = &m2;
  s.conditions = "2 threads, 10k keys, 64-byte values copied out, random order";
  bench_compare(&s);
  tl_cache_close(c);
  free(map);
}

/* ---- hit ratio under skew ----------------------------------------------- */

/* The baseline policy: LRU over as many entries as the store holds. */
typedef struct lru {
  int *prev, *next, *slot_of; /* per key index; -1 when absent */
  int head, tail, size, cap;
} lru;

static void lru_unlink(lru *l, int k)
{
  if (l->prev[k] >= 0) l->next[l->prev[k]] = l->next[k];
  else l->head = l->next[k];
  if (l->next[k] >= 0) l->prev[l->next[k]] = l->prev[k];
  else l->tail = l->prev[k];
}

static void lru_front(lru *l, int k)
{
  l->prev[k] = -1;
  l->next[k] = l->head;
  if (l->head >= 0) l->prev[l->head] = k;
  l->head = k;
  if (l->tail < 0) l->tail = k;
}

/* True on a hit; on a miss the key goes in, the least recent out. */
static bool lru_access(lru *l, int k)
{
  if (l->slot_of[k] >= 0) {
    lru_unlink(l, k);
    lru_front(l, k);
    return true;
  }
  if (l->size == l->cap) {
    int victim = l->tail;
    lru_unlink(l, victim);
    l->slot_of[victim] = -1;
    l->size--;
  }
  lru_front(l, k);
  l->slot_of[k] = 1;
  l->size++;
  return false;
}

typedef struct zipf_ctx {
  int *trace;
  long n;
  int universe;
  int lru_cap;
} zipf_ctx;

static int ours_zipf(void *ctx, double *fig)
{
  zipf_ctx *z = ctx;
  tl_cache *c;
  if (tl_cache_open(&c, &(tl_cache_config){ .url = "memory://?max_bytes=1MiB&shards=1",
                                            .default_ttl_us = TL_CACHE_NO_EXPIRY }) != 0)
    die("open zipf");
  char key[24], buf[VLEN];
  long hits = 0;
  for (long i = 0; i < z->n; i++) {
    snprintf(key, sizeof key, "z%d", z->trace[i]);
    size_t len;
    if (tl_cache_get_buf(c, key, buf, sizeof buf, &len) == 0) hits++;
    else if (tl_cache_set(c, key, value, VLEN, 0) != 0) die("set zipf");
  }
  tl_cache_close(c);
  fig[0] = 100.0 * (double)hits / (double)z->n;
  return 0;
}

static int lru_zipf(void *ctx, double *fig)
{
  zipf_ctx *z = ctx;
  lru l = { .head = -1, .tail = -1, .cap = z->lru_cap };
  l.prev = malloc(sizeof(int) * (size_t)z->universe);
  l.next = malloc(sizeof(int) * (size_t)z->universe);
  l.slot_of = malloc(sizeof(int) * (size_t)z->universe);
  memset(l.slot_of, -1, sizeof(int) * (size_t)z->universe);
  long hits = 0;
  for (long i = 0; i < z->n; i++) hits += lru_access(&l, z->trace[i]);
  free(l.prev);
  free(l.next);
  free(l.slot_of);
  fig[0] = 100.0 * (double)hits / (double)z->n;
  return 0;
}

/* How many entries of this shape the 1 MiB store holds: fill it and count. */
static int entries_held(void)
{
  tl_metrics *reg;
  tl_cache *c;
  tl_metrics_new(&reg);
  if (tl_cache_open(&c, &(tl_cache_config){ .url = "memory://?max_bytes=1MiB&shards=1",
                                            .metrics = reg, .name = "fill",
                                            .default_ttl_us = TL_CACHE_NO_EXPIRY }) != 0)
    die("open fill");
  char key[24];
  for (int i = 0; i < 100000; i++) {
    snprintf(key, sizeof key, "z%d", i);
    tl_cache_set(c, key, value, VLEN, 0);
  }
  char *text;
  size_t len;
  tl_metrics_render(reg, &text, &len);
  const char *p = strstr(text, "trellis_cache_entries{cache=\"fill\"} ");
  int n = p ? atoi(p + strlen("trellis_cache_entries{cache=\"fill\"} ")) : 0;
  tl_free(text);
  tl_cache_close(c);
  tl_metrics_free(reg);
  return n;
}

static void bench_zipf(void)
{
  zipf_ctx z = { .universe = 100000, .n = bench_size(2000000, 100000) };
  /* Zipf(0.99) by inverting the cumulative weights. */
  double *cdf = malloc(sizeof(double) * (size_t)z.universe), sum = 0;
  for (int i = 0; i < z.universe; i++) cdf[i] = sum += 1.0 / pow(i + 1, 0.99);
  z.trace = malloc(sizeof(int) * (size_t)z.n);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (long i = 0; i < z.n; i++) {
    double u = (double)(xorshift(&s) >> 11) / 9007199254740992.0 * sum;
    int lo = 0, hi = z.universe - 1;
    while (lo < hi) {
      int mid = (lo + hi) / 2;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    z.trace[i] = (int)((uint64_t)lo * 2654435761u % (uint64_t)z.universe); /* scatter ranks */
  }
  free(cdf);
  z.lru_cap = entries_held();
  char cond[160];
  snprintf(cond, sizeof cond, "Zipf 0.99 over 100k keys, 64-byte values, 1 MiB store = %d "
           "entries, LRU of the same count; get, set on miss", z.lru_cap);
  bench_metric m = { "zipf_hit_ratio", "% hits", false };
  bench_spec sp = { .bench = "cache", .baseline_name = "LRU", .metrics = &m, .nmetrics = 1,
                    .conditions = cond, .ours = ours_zipf, .ours_ctx = &z, .baseline = lru_zipf,
                    .baseline_ctx = &z };
  bench_compare(&sp);
  free(z.trace);
}

/* ---- Redis -------------------------------------------------------------- */

typedef struct redis_ctx {
  tl_cache *c;
  redisContext *raw;
  long n;
  char prefix[32];     /* ours: the cache's key_prefix */
  char raw_prefix[32]; /* the baseline's own copy of the same values */
} redis_ctx;

static char raw_keys[NKEYS][64]; /* raw_prefix + key, made once */


static int ours_redis(void *ctx, double *fig)
{
  redis_ctx *r = ctx;
  char buf[VLEN];
  size_t len;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < r->n; i++)
    if (tl_cache_get_buf(r->c, keys[trace[i & (TRACE - 1)]], buf, sizeof buf, &len) != 0 ||
        len != VLEN)
      die("redis get");
  fig[0] = (double)r->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_redis(void *ctx, double *fig)
{
  redis_ctx *r = ctx;
  char buf[VLEN];
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < r->n; i++) {
    const char *argv[2] = { "GET", raw_keys[trace[i & (TRACE - 1)]] };
    size_t lens[2] = { 3, strlen(argv[1]) };
    redisReply *rep = redisCommandArgv(r->raw, 2, argv, lens);
    if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != VLEN) die("raw get");
    memcpy(buf, rep->str, VLEN);
    __asm__ volatile("" : : "r"(buf) : "memory");
    freeReplyObject(rep);
  }
  fig[0] = (double)r->n * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

#define BATCH 100

static int ours_redis_many(void *ctx, double *fig)
{
  redis_ctx *r = ctx;
  const char *ks[BATCH];
  tl_cache_val out[BATCH];
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < r->n; i++) {
    for (int j = 0; j < BATCH; j++) ks[j] = keys[trace[(i * BATCH + j) & (TRACE - 1)]];
    if (tl_cache_get_many(r->c, ks, BATCH, out) != 0) die("get_many");
    for (int j = 0; j < BATCH; j++) {
      if (!out[j].data || out[j].len != VLEN) die("get_many value");
      tl_free(out[j].data);
    }
  }
  fig[0] = (double)r->n * BATCH * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static int raw_redis_many(void *ctx, double *fig)
{
  redis_ctx *r = ctx;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < r->n; i++) {
    for (int j = 0; j < BATCH; j++) {
      const char *argv[2] = { "GET", raw_keys[trace[(i * BATCH + j) & (TRACE - 1)]] };
      size_t lens[2] = { 3, strlen(argv[1]) };
      redisAppendCommandArgv(r->raw, 2, argv, lens);
    }
    for (int j = 0; j < BATCH; j++) {
      void *rep;
      if (redisGetReply(r->raw, &rep) != REDIS_OK || ((redisReply *)rep)->len != VLEN) die("raw pipeline");
      char *copy = malloc(VLEN + 1); /* what get_many hands out */
      memcpy(copy, ((redisReply *)rep)->str, VLEN);
      __asm__ volatile("" : : "r"(copy) : "memory");
      free(copy);
      freeReplyObject(rep);
    }
  }
  fig[0] = (double)r->n * BATCH * 1e9 / (double)(bench_now_ns() - t0);
  return 0;
}

static void raw_each(redis_ctx *r, const char *cmd)
{
  for (int i = 0; i < NKEYS; i++) {
    redisReply *rep = cmd[0] == 'S'
        ? redisCommand(r->raw, "SET %s %b EX 600", raw_keys[i], value, (size_t)VLEN)
        : redisCommand(r->raw, "UNLINK %s", raw_keys[i]);
    if (!rep) die("raw command");
    freeReplyObject(rep);
  }
}

static void bench_redis(const char *url)
{
  redis_ctx r = { .n = bench_size(30000, 500) };
  snprintf(r.prefix, sizeof r.prefix, "bench%d:", (int)getpid());
  snprintf(r.raw_prefix, sizeof r.raw_prefix, "rawbench%d:", (int)getpid());
  for (int i = 0; i < NKEYS; i++) snprintf(raw_keys[i], sizeof raw_keys[i], "%s%.23s", r.raw_prefix, keys[i]);
  char host[128];
  int port, db;
  if (sscanf(url, "redis://%127[^:]:%d/%d", host, &port, &db) != 3) {
    fprintf(stderr, "bench_cache: cannot read host:port/db from '%s'\n", url);
    exit(1);
  }
  /* The same timeout on both sides; long, so a starved server on a shared
   * machine slows a round instead of ending the run. */
  struct timeval tv = { 2, 0 };
  r.raw = redisConnectWithTimeout(host, port, tv);
  if (!r.raw || r.raw->err) die("raw connect");
  redisSetTimeout(r.raw, tv);
  redisReply *rep = redisCommand(r.raw, "SELECT %d", db);
  if (!rep) die("raw select");
  freeReplyObject(rep);
  if (tl_cache_open(&r.c, &(tl_cache_config){ .url = url, .key_prefix = r.prefix,
                                              .timeout_us = 2000000,
                                              .default_ttl_us = 600000000 }) != 0)
    die("open redis");
  for (int i = 0; i < NKEYS; i++)
    if (tl_cache_set(r.c, keys[i], value, VLEN, 0) != 0) die("redis set");
  raw_each(&r, "SET");
  bench_metric m = { "redis_get", "ops/s", false };
  bench_spec s = { .bench = "cache", .baseline_name = "hiredis", .metrics = &m, .nmetrics = 1,
                   .conditions = "1 thread, 1 connection each, 64-byte values, 2 s timeout, "
                                 "localhost, SIGPIPE ignored as a service does",
                   .ours = ours_redis, .ours_ctx = &r, .baseline = raw_redis, .baseline_ctx = &r };
  bench_compare(&s);
  r.n = bench_size(1000, 20);
  bench_metric m2 = { "redis_get_many", "keys/s", false };
  s.metrics = &m2;
  s.conditions = "1 thread, 100 keys per call pipelined on 1 connection, 64-byte values copied out";
  s.ours = ours_redis_many;
  s.baseline = raw_redis_many;
  bench_compare(&s);
  if (tl_cache_delete_prefix(r.c, "user:", NULL) != 0) die("cleanup");
  tl_cache_close(r.c);
  raw_each(&r, "UNLINK");
  redisFree(r.raw);
}

int main(int argc, char **argv)
{
  const char *only = argc > 1 ? argv[1] : NULL; /* "mem", "zipf", "redis" */
  tl_log_set_level(TL_LOG_WARN);
  signal(SIGPIPE, SIG_IGN);
  for (int i = 0; i < NKEYS; i++) snprintf(keys[i], sizeof keys[i], "user:%d", i);
  memset(value, 'v', sizeof value);
  uint64_t s = 88172645463325252ull;
  for (int i = 0; i < TRACE; i++) trace[i] = (unsigned)(xorshift(&s) % NKEYS);
  if (!only || !strcmp(only, "mem")) bench_memory();
  if (!only || !strcmp(only, "zipf")) bench_zipf();
  if (!only || !strcmp(only, "redis")) {
    char buf[1024];
    const char *url = bench_service_url("TRELLIS_TEST_REDIS_URL", buf, sizeof buf);
    if (url) bench_redis(url);
    else fprintf(stderr, "bench_cache: no Redis (scripts/services start redis): redis cases skipped\n");
  }
  return 0;
}
