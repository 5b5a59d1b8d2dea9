/* The in-process store: bounded by bytes, S3-FIFO eviction, sharded.
 *
 * A key hashes to one of N shards; each has its own read-write lock, hash
 * table, byte budget (max_bytes / N) and queues. A read takes its shard's
 * lock shared and changes nothing but the entry's 2-bit access counter
 * (a relaxed atomic, written only while below 3), so readers never wait
 * for each other and a hot entry's cache line is not written by reads.
 *
 * Eviction is S3-FIFO: a new entry goes to the small queue (10% of the
 * bytes), or to the main queue when its key's hash is in the ghost table
 * (it was dropped from the small queue recently, so it came back). When a
 * shard is over budget it evicts from the small queue while that is over
 * its 10%, else from the main queue. The small queue's oldest entry moves
 * to main (counter kept) if it was read since it came in, else it is
 * dropped and its hash remembered in the ghost table; the main queue's
 * oldest entry goes round again with its counter decreased while that is
 * above 0 (CLOCK).
 * So a key read once and never again (a scan) leaves quickly without
 * pushing out the keys read often, and hits never relink lists, which is
 * what a shared lock on reads needs. Expired entries are dropped when the
 * queues reach them or their key is written. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

enum { Q_SMALL = 0, Q_MAIN = 1 };

_Static_assert(TL_CACHE_KEY_MAX <= UINT16_MAX, "a key's length must fit in ment.klen");

typedef struct ment {
  struct ment *hnext;        /* hash chain; also the list of entries to free */
  struct ment *newer, *older; /* queue links */
  uint64_t hash;
  int64_t expires_us;        /* 0: never */
  int64_t version;
  uint32_t vlen;
  uint16_t klen;
  uint8_t kind, queue;
  _Atomic uint8_t freq;      /* reads since it entered its queue, up to 3 */
  char key[];                /* key, NUL, value, NUL */
} ment;

typedef struct fifo {
  ment *head, *tail; /* head: newest */
  uint64_t bytes;
} fifo;

typedef struct shard {
  _Alignas(64) pthread_rwlock_t lock;
  ment **tab;
  size_t mask, count;
  fifo q[2];
  uint64_t cap, small_cap;
  uint64_t *ghost;  /* direct-mapped: hash | 1 of recent small-queue drops */
  size_t gmask;
  uint64_t evictions;
} shard;

typedef struct mstore {
  shard *sh;
  unsigned nshards;
  uint64_t seed;
  tl_clock_fn clock;
  void *clock_ctx;
  const char *name;
} mstore;

/* The bytes an entry is charged: its header, key, value and two NULs. */
static size_t ment_size(const ment *e) { return sizeof(ment) + e->klen + e->vlen + 2; }

static size_t pow2_at_least(size_t v)
{
  size_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

static int m_open(void **out, const tl__cache_url *u, const tl__cache_opts *o)
{
  unsigned n = u->shards;
  if (!n) { /* at least 1 MiB each, at most 64 shards */
    n = 1;
    while (n < 64 && o->max_bytes / ((uint64_t)n * 2) >= (1u << 20)) n *= 2;
  }
  mstore *m = calloc(1, sizeof *m);
  shard *sh = aligned_alloc(64, sizeof(shard) * n);
  if (!m || !sh) {
    free(m);
    free(sh);
    return tl_error_set(TL_ENOMEM, "cache '%s': out of memory", o->name);
  }
  memset(sh, 0, sizeof(shard) * n);
  m->sh = sh;
  m->nshards = n;
  m->seed = tl_rand64();
  m->clock = o->clock;
  m->clock_ctx = o->clock_ctx;
  m->name = o->name;
  for (unsigned i = 0; i < n; i++) {
    shard *s = &sh[i];
    pthread_rwlock_init(&s->lock, NULL);
    s->cap = o->max_bytes / n;
    s->small_cap = s->cap / 10;
    s->mask = 63;
    size_t g = pow2_at_least((size_t)(s->cap / 512));
    s->gmask = (g < 64 ? 64 : g > 65536 ? 65536 : g) - 1;
    s->tab = calloc(s->mask + 1, sizeof *s->tab);
    s->ghost = calloc(s->gmask + 1, sizeof *s->ghost);
    if (!s->tab || !s->ghost) {
      m->nshards = i + 1;
      tl__cache_memory.close(m);
      return tl_error_set(TL_ENOMEM, "cache '%s': out of memory", o->name);
    }
  }
  *out = m;
  return 0;
}

static void free_chain(ment *e)
{
  while (e) {
    ment *next = e->hnext;
    free(e);
    e = next;
  }
}

static void m_close(void *st)
{
  mstore *m = st;
  if (!m) return;
  for (unsigned i = 0; i < m->nshards; i++) {
    shard *s = &m->sh[i];
    for (size_t b = 0; s->tab && b <= s->mask; b++) free_chain(s->tab[b]);
    free(s->tab);
    free(s->ghost);
    pthread_rwlock_destroy(&s->lock);
  }
  free(m->sh);
  free(m);
}

/* ---- lookups, queues and the ghost table: locks: s->lock held ---------- */

static shard *shard_of(mstore *m, uint64_t h) { return &m->sh[h & (m->nshards - 1)]; }
static size_t bucket_of(const shard *s, uint64_t h) { return (size_t)(h >> 24) & s->mask; }

/* The link that points at the entry for `key` (or at NULL). */
static ment **find(shard *s, uint64_t h, const char *key, size_t klen)
{
  ment **link = &s->tab[bucket_of(s, h)];
  for (ment *e = *link; e; link = &e->hnext, e = e->hnext)
    if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0) return link;
  return link;
}

static bool expired(const mstore *m, const ment *e)
{
  return e->expires_us && m->clock(m->clock_ctx) >= e->expires_us;
}

static void push_head(fifo *q, ment *e)
{
  e->newer = NULL;
  e->older = q->head;
  if (q->head) q->head->newer = e;
  else q->tail = e;
  q->head = e;
  q->bytes += ment_size(e);
}

static void unlink_q(fifo *q, ment *e)
{
  if (e->newer) e->newer->older = e->older;
  else q->head = e->older;
  if (e->older) e->older->newer = e->newer;
  else q->tail = e->newer;
  q->bytes -= ment_size(e);
}

/* Take `e` (already out of its queue) out of the table and onto `dead`. */
static void drop(shard *s, ment *e, ment **dead)
{
  ment **link = &s->tab[bucket_of(s, e->hash)];
  while (*link != e) link = &(*link)->hnext;
  *link = e->hnext;
  s->count--;
  e->hnext = *dead;
  *dead = e;
}

static size_t ghost_slot(const shard *s, uint64_t h) { return (size_t)(h >> 40) & s->gmask; }

static bool ghost_take(shard *s, uint64_t h)
{
  size_t i = ghost_slot(s, h);
  if (s->ghost[i] != (h | 1)) return false;
  s->ghost[i] = 0;
  return true;
}

static void grow(shard *s)
{
  size_t n = (s->mask + 1) * 2;
  ment **tab = calloc(n, sizeof *tab);
  if (!tab) return; /* longer chains, still correct */
  ment **old = s->tab;
  size_t old_n = s->mask + 1;
  s->tab = tab;
  s->mask = n - 1;
  for (size_t b = 0; b < old_n; b++) {
    for (ment *e = old[b], *next; e; e = next) {
      next = e->hnext;
      size_t i = bucket_of(s, e->hash);
      e->hnext = tab[i];
      tab[i] = e;
    }
  }
  free(old);
}

/* Evict until the shard is within its budget, sparing `keep` (the entry
 * just written, which fits on its own). */
static void evict(mstore *m, shard *s, const ment *keep, ment **dead)
{
  fifo *small = &s->q[Q_SMALL], *main = &s->q[Q_MAIN];
  while (small->bytes + main->bytes > s->cap) {
    ment *st = small->tail != keep ? small->tail : NULL;
    ment *mt = main->tail != keep ? main->tail : NULL;
    if (!st && !mt) break;
    bool from_small = st && (small->bytes > s->small_cap || !mt);
    ment *e = from_small ? st : mt;
    unlink_q(from_small ? small : main, e);
    bool live = !expired(m, e);
    uint8_t f = atomic_load_explicit(&e->freq, memory_order_relaxed);
    if (live && f > 0) {
      if (!from_small) atomic_store_explicit(&e->freq, f - 1, memory_order_relaxed);
      e->queue = Q_MAIN;
      push_head(main, e);
      continue;
    }
    if (from_small && live) s->ghost[ghost_slot(s, e->hash)] = e->hash | 1;
    if (live) s->evictions++;
    drop(s, e, dead);
  }
}

/* ---- the backend ------------------------------------------------------- */

static int m_get(void *st, const char *key, size_t klen, tl__cache_read *r)
{
  mstore *m = st;
  uint64_t h = tl__cache_hash(key, klen, m->seed);
  shard *s = shard_of(m, h);
  int rc = 0;
  r->kind = 0;
  pthread_rwlock_rdlock(&s->lock);
  ment *e = *find(s, h, key, klen);
  if (e && e->kind != TL__CK_FENCE && !expired(m, e)) {
    uint8_t f = atomic_load_explicit(&e->freq, memory_order_relaxed);
    if (f < 3) atomic_store_explicit(&e->freq, f + 1, memory_order_relaxed);
    if (e->kind == TL__CK_VALUE) rc = tl__cache_read_copy(r, e->key + e->klen + 1, e->vlen);
    if (rc != TL_ENOMEM) {
      r->kind = e->kind;
      r->version = e->version;
    }
  }
  pthread_rwlock_unlock(&s->lock);
  return rc == TL_ENOMEM ? tl_error_set(rc, "cache '%s': out of memory", m->name) : rc;
}

static int m_set(void *st, const tl__cache_write *w)
{
  mstore *m = st;
  uint64_t h = tl__cache_hash(w->key, w->klen, m->seed);
  shard *s = shard_of(m, h);
  size_t size = sizeof(ment) + w->klen + w->len + 2;
  if (size > s->cap || w->len > UINT32_MAX)
    return tl_error_set(TL_ETOOBIG, "cache '%s': an entry of %zu bytes is more than a "
                        "shard's share of max_bytes (%llu bytes)", m->name, size,
                        (unsigned long long)s->cap);
  ment *n = malloc(size);
  if (!n) return tl_error_set(TL_ENOMEM, "cache '%s': out of memory", m->name);
  memcpy(n->key, w->key, w->klen);
  n->key[w->klen] = '\0';
  if (w->len) memcpy(n->key + w->klen + 1, w->val, w->len);
  n->key[w->klen + 1 + w->len] = '\0';
  n->hash = h;
  n->klen = (uint16_t)w->klen;
  n->vlen = (uint32_t)w->len;
  n->kind = (uint8_t)w->kind;
  n->version = w->version;
  n->expires_us = w->ttl_us > 0 ? m->clock(m->clock_ctx) + w->ttl_us : 0;
  atomic_init(&n->freq, 0);

  ment *dead = NULL;
  pthread_rwlock_wrlock(&s->lock);
  ment **link = find(s, h, w->key, w->klen), *old = *link;
  if (old && w->versioned && old->version > w->version && !expired(m, old)) {
    pthread_rwlock_unlock(&s->lock);
    free(n);
    return TL_ECONFLICT;
  }
  if (old) { /* take its place: same chain position, same queue */
    n->hnext = old->hnext;
    *link = n;
    n->queue = old->queue;
    unlink_q(&s->q[old->queue], old);
    old->hnext = dead;
    dead = old;
  } else {
    n->hnext = *link;
    *link = n;
    n->queue = ghost_take(s, h) ? Q_MAIN : Q_SMALL;
    if (++s->count > s->mask + 1) grow(s);
  }
  push_head(&s->q[n->queue], n);
  evict(m, s, n, &dead);
  pthread_rwlock_unlock(&s->lock);
  free_chain(dead);
  return 0;
}

static int m_del(void *st, const char *key, size_t klen)
{
  mstore *m = st;
  uint64_t h = tl__cache_hash(key, klen, m->seed);
  shard *s = shard_of(m, h);
  ment *dead = NULL;
  pthread_rwlock_wrlock(&s->lock);
  ment *e = *find(s, h, key, klen);
  if (e) {
    unlink_q(&s->q[e->queue], e);
    drop(s, e, &dead);
  }
  pthread_rwlock_unlock(&s->lock);
  free_chain(dead);
  return 0;
}

static int m_del_prefix(void *st, const char *prefix, size_t plen, size_t *deleted)
{
  mstore *m = st;
  size_t n = 0;
  for (unsigned i = 0; i < m->nshards; i++) {
    shard *s = &m->sh[i];
    ment *dead = NULL;
    pthread_rwlock_wrlock(&s->lock);
    for (size_t b = 0; b <= s->mask; b++) {
      for (ment *e = s->tab[b], *next; e; e = next) {
        next = e->hnext;
        if (e->klen >= plen && memcmp(e->key, prefix, plen) == 0) {
          unlink_q(&s->q[e->queue], e);
          drop(s, e, &dead);
          n++;
        }
      }
    }
    pthread_rwlock_unlock(&s->lock);
    free_chain(dead);
  }
  if (deleted) *deleted = n;
  return 0;
}

static void m_stats(void *st, tl__cache_stats *out)
{
  mstore *m = st;
  memset(out, 0, sizeof *out);
  for (unsigned i = 0; i < m->nshards; i++) {
    shard *s = &m->sh[i];
    pthread_rwlock_rdlock(&s->lock);
    out->bytes += s->q[Q_SMALL].bytes + s->q[Q_MAIN].bytes;
    out->entries += s->count;
    out->evictions += s->evictions;
    pthread_rwlock_unlock(&s->lock);
  }
}

const tl__cache_backend tl__cache_memory = {
  .name = "memory",
  .remote = false,
  .open = m_open,
  .close = m_close,
  .get = m_get,
  .set = m_set,
  .del = m_del,
  .del_prefix = m_del_prefix,
  .stats = m_stats,
};
