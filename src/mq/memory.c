/* The in-process bus: the same semantics as the brokers (fan-out, groups,
 * retries, dead letters, per-key order, backpressure) inside one process.
 * Handles that name the same bus ("memory://NAME") share it.
 *
 * Each subscription without a group, and each (group, pattern), owns a
 * queue of lanes; a message goes to the lane of its key, and a lane is
 * worked by one thread at a time, which keeps per-key order. Slots are
 * reused ring entries whose buffers are kept between messages, so a
 * steady stream allocates nothing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq_int.h"

#define BATCH 64
#define SPIN_ROUNDS 400
#define SLOT_KEEP_BYTES 65536

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* A copied message. buf: subject\0 key\0 request-id\0 given-id\0
 * (key\0 value\0)* data */
struct mslot {
  char *buf;
  size_t cap;
  size_t data_off, data_len;
  uint16_t subject_len, key_len, rid_len, gid_len, nuser;
  uint8_t id[16], trace[16], span[8], flags;
  int64_t published_us;
  unsigned prior;            /* deliveries before this one (requeued) */
  /* Publishers reserve a slot under the queue lock and fill it outside:
   * 0 while being filled, then SLOT_READY or SLOT_SKIP (fill failed). */
  atomic_int state;
};

enum { SLOT_FILLING = 0, SLOT_READY = 1, SLOT_SKIP = 2 };

struct mlane {
  struct mslot *slots;
  unsigned head, count;
  bool busy;
};

struct msub;

struct mqueue {
  struct bus *bus;
  struct mqueue *next;
  char pattern[TL_MQ_SUBJECT_MAX + 1];
  char group[65];
  pthread_mutex_t mu;
  pthread_cond_t not_empty;  /* workers */
  pthread_cond_t not_full;   /* publishers */
  struct mlane *lanes;
  unsigned nlanes, cap, rr;
  _Atomic unsigned pending;  /* messages in all lanes, for spinning */
  unsigned idle, waiting_pubs;
  unsigned wakes;            /* signals sent to idle workers not yet awake */
  unsigned live;             /* members not leaving */
  bool dead;                 /* live == 0: publishers skip it */
  struct msub *members;      /* guarded by bus->lock (write) */
};

struct msub {
  tl_mq_sub *sub;
  struct mqueue *q;
  struct msub *next;
  unsigned nthreads;
  pthread_t *threads;
  atomic_bool stop;
};

struct bus {
  char name[128];
  unsigned refs;             /* guarded by registry_mu */
  struct bus *next;
  pthread_rwlock_t lock;     /* queues list; write for (un)subscribe */
  struct mqueue *queues;
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct bus *registry;

/* ---- handles ---- */

static int mem_open(tl_mq *mq)
{
  const char *url = mq->cfg.url;
  if (strncmp(url, "memory://", 9) != 0 || strlen(url + 9) >= sizeof registry->name)
    return tl_error_set(TL_EINVAL, "memory bus url '%.60s': expected memory://NAME", url);
  const char *name = url[9] ? url + 9 : "default";
  pthread_mutex_lock(&registry_mu);
  struct bus *b = registry;
  while (b && strcmp(b->name, name) != 0)
    b = b->next;
  if (!b) {
    b = calloc(1, sizeof *b);
    if (!b) {
      pthread_mutex_unlock(&registry_mu);
      return tl_error_set(TL_ENOMEM, "mq: out of memory");
    }
    snprintf(b->name, sizeof b->name, "%s", name);
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    /* A steady stream of publishers must not starve (un)subscribe. */
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&b->lock, &a);
    pthread_rwlockattr_destroy(&a);
    b->next = registry;
    registry = b;
  }
  b->refs++;
  pthread_mutex_unlock(&registry_mu);
  mq->impl = b;
  return 0;
}

static int mem_close(tl_mq *mq, int64_t deadline)
{
  (void)deadline;
  struct bus *b = mq->impl;
  pthread_mutex_lock(&registry_mu);
  if (--b->refs == 0) {
    struct bus **pp = &registry;
    while (*pp != b)
      pp = &(*pp)->next;
    *pp = b->next;
    pthread_rwlock_destroy(&b->lock);
    free(b);
  }
  pthread_mutex_unlock(&registry_mu);
  return 0;
}

static int mem_ready(tl_mq *mq)
{
  (void)mq;
  return 0;
}

/* ---- publishing ---- */

static int slot_fill(struct mslot *s, tl__mq_out *o)
{
  size_t gid_len = o->id_given ? strlen(o->id_text) : 0;
  size_t need = o->subject_len + 1 + (o->key_is_subject ? 0 : o->key_len + 1) +
                o->request_id_len + 1 + gid_len + 1 + o->len;
  for (size_t i = 0; i < o->nuser; i++)
    if (!tl__mq_out_skip(o, i))
      need += strlen(o->user[i].key) + strlen(o->user[i].value) + 2;
  if (need > s->cap) {
    size_t cap = s->cap ? s->cap : 256;
    while (cap < need)
      cap *= 2;
    char *nb = malloc(cap);
    if (!nb)
      return tl_error_set(TL_ENOMEM, "mq: out of memory");
    free(s->buf);
    s->buf = nb;
    s->cap = cap;
  }
  char *p = s->buf;
  memcpy(p, o->subject, o->subject_len + 1);
  p += o->subject_len + 1;
  s->subject_len = (uint16_t)o->subject_len;
  if (o->key_is_subject) {
    s->key_len = 0;
  } else {
    memcpy(p, o->key, o->key_len + 1);
    p += o->key_len + 1;
    s->key_len = (uint16_t)o->key_len;
  }
  if (o->request_id_len)
    memcpy(p, o->request_id, o->request_id_len);
  p[o->request_id_len] = '\0';
  p += o->request_id_len + 1;
  s->rid_len = (uint16_t)o->request_id_len;
  memcpy(p, o->id_text, gid_len);
  p[gid_len] = '\0';
  p += gid_len + 1;
  s->gid_len = (uint16_t)gid_len;
  uint16_t nu = 0;
  for (size_t i = 0; i < o->nuser; i++) {
    if (tl__mq_out_skip(o, i))
      continue;
    size_t kl = strlen(o->user[i].key) + 1, vl = strlen(o->user[i].value) + 1;
    memcpy(p, o->user[i].key, kl);
    p += kl;
    memcpy(p, o->user[i].value, vl);
    p += vl;
    nu++;
  }
  s->nuser = nu;
  s->data_off = (size_t)(p - s->buf);
  s->data_len = o->len;
  if (o->len)
    memcpy(p, o->data, o->len);
  if (!gid_len)
    memcpy(s->id, o->id, 16);
  memcpy(s->trace, o->trace_id, 16);
  memcpy(s->span, o->span_id, 8);
  s->flags = o->trace_flags;
  s->published_us = o->published_us;
  s->prior = 0;
  return 0;
}

/* Queue `o` on `q`. locks: bus->lock held (read). */
static int enqueue(tl_mq *mq, struct mqueue *q, tl__mq_out *o, int64_t *deadline)
{
  pthread_mutex_lock(&q->mu);
  struct mlane *l = &q->lanes[q->nlanes == 1 ? 0 : tl__mq_hash(o->key, o->key_len) % q->nlanes];
  while (l->count == q->cap && !q->dead) {
    if (*deadline == 0)
      *deadline = tl__mq_deadline(mq->cfg.publish_timeout_us);
    o->waited = true;
    q->waiting_pubs++;
    int w = tl__mq_cond_wait_until(&q->not_full, &q->mu, *deadline);
    q->waiting_pubs--;
    if (w == ETIMEDOUT && l->count == q->cap && !q->dead) {
      pthread_mutex_unlock(&q->mu);
      return tl_error_set(TL_ETIMEOUT,
                          "subject '%s': subscription '%s' queue full (%u messages) for the "
                          "whole publish timeout",
                          o->subject, q->pattern, q->cap);
    }
  }
  if (q->dead) {
    /* its subscribers are leaving: nobody to deliver to */
    pthread_mutex_unlock(&q->mu);
    return 0;
  }
  struct mslot *s = &l->slots[(l->head + l->count) % q->cap];
  l->count++;
  atomic_fetch_add_explicit(&q->pending, 1, memory_order_release);
  /* One wakeup per sleeping worker, not one per message. */
  bool wake = q->idle > q->wakes;
  if (wake)
    q->wakes++;
  pthread_mutex_unlock(&q->mu);
  /* The slot is ours until it is marked: copy without holding the lock. */
  int rc = slot_fill(s, o);
  atomic_store_explicit(&s->state, rc == 0 ? SLOT_READY : SLOT_SKIP, memory_order_release);
  if (wake)
    pthread_cond_signal(&q->not_empty);
  return rc;
}

static int mem_publish(tl_mq *mq, tl__mq_out *o, tl__mq_pub *pub, int64_t deadline)
{
  struct bus *b = mq->impl;
  int rc = 0;
  pthread_rwlock_rdlock(&b->lock);
  for (struct mqueue *q = b->queues; q; q = q->next) {
    if (!tl__mq_match(q->pattern, o->subject, o->subject_len))
      continue;
    int r = enqueue(mq, q, o, &deadline);
    if (r && !rc)
      rc = r;
  }
  pthread_rwlock_unlock(&b->lock);
  if (pub && rc == 0)
    tl__mq_pub_done(pub, 0);
  return rc;
}

/* ---- workers ---- */

struct scratch {
  tl_mq_header hdrs[TL_MQ_HEADERS_MAX];
  char id[TL_UUID_STRLEN];
  char published[24];
  char traceparent[56];
  tl__mq_delivery d;
};

static size_t fmt_i64(int64_t v, char *out)
{
  char tmp[24];
  size_t n = 0;
  uint64_t u = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  size_t k = 0;
  if (v < 0)
    out[k++] = '-';
  while (n)
    out[k++] = tmp[--n];
  out[k] = '\0';
  return k;
}

static void slot_view(struct mslot *s, struct scratch *sc)
{
  tl_mq_msg *m = &sc->d.msg;
  const char *p = s->buf;
  m->subject = p;
  p += s->subject_len + 1;
  if (s->key_len) {
    m->key = p;
    p += s->key_len + 1;
  } else {
    m->key = m->subject;
  }
  const char *rid = p;
  p += s->rid_len + 1;
  const char *id = sc->id;
  if (s->gid_len)
    id = p;
  else
    tl_uuid_format(s->id, sc->id);
  p += s->gid_len + 1;
  fmt_i64(s->published_us, sc->published);
  tl__mq_fmt_traceparent(s->trace, s->span, s->flags, sc->traceparent);
  size_t k = 0;
  sc->hdrs[k++] = (tl_mq_header){ TL__MQ_H_ID, id };
  sc->hdrs[k++] = (tl_mq_header){ TL__MQ_H_PUBLISHED, sc->published };
  sc->hdrs[k++] = (tl_mq_header){ TL__MQ_H_TRACEPARENT, sc->traceparent };
  sc->d.traceparent = sc->traceparent;
  sc->d.request_id = NULL;
  if (s->rid_len) {
    sc->hdrs[k++] = (tl_mq_header){ TL__MQ_H_REQUEST_ID, rid };
    sc->d.request_id = rid;
  }
  for (unsigned i = 0; i < s->nuser; i++) {
    const char *key = p;
    p += strlen(p) + 1;
    sc->hdrs[k++] = (tl_mq_header){ key, p };
    p += strlen(p) + 1;
  }
  m->headers = sc->hdrs;
  m->nheaders = k;
  m->data = s->buf + s->data_off;
  m->len = s->data_len;
  m->id = id;
  m->published_us = s->published_us;
  sc->d.broker_count = 1 + s->prior;
}

/* A lane with work that no one is working. locks: q->mu held */
static struct mlane *pick_lane(struct mqueue *q)
{
  for (unsigned i = 0; i < q->nlanes; i++) {
    unsigned k = (q->rr + i) % q->nlanes;
    struct mlane *l = &q->lanes[k];
    if (l->count && !l->busy) {
      q->rr = k + 1;
      return l;
    }
  }
  return NULL;
}

static void *mem_worker(void *arg)
{
  struct msub *m = arg;
  struct mqueue *q = m->q;
  struct scratch *sc = malloc(sizeof *sc);
  if (!sc) {
    tl_log(TL_LOG_ERROR, "mq: memory worker cannot start: out of memory");
    return NULL;
  }
  pthread_mutex_lock(&q->mu);
  while (!atomic_load_explicit(&m->stop, memory_order_acquire)) {
    struct mlane *l = pick_lane(q);
    if (!l) {
      /* Under load work arrives within microseconds: wait for it awake
       * rather than paying a wakeup per message. */
      unsigned seen = atomic_load_explicit(&q->pending, memory_order_acquire);
      pthread_mutex_unlock(&q->mu);
      for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&q->pending, memory_order_acquire) != seen ||
            atomic_load_explicit(&m->stop, memory_order_acquire))
          break;
        /* look rarely: every look pulls the line away from publishers */
        for (int k = 0; k < 16; k++)
          cpu_relax();
      }
      pthread_mutex_lock(&q->mu);
      if (atomic_load_explicit(&q->pending, memory_order_acquire) != seen || pick_lane(q) ||
          atomic_load_explicit(&m->stop, memory_order_acquire))
        continue;
      q->idle++;
      pthread_cond_wait(&q->not_empty, &q->mu);
      q->idle--;
      if (q->wakes)
        q->wakes--;
      continue;
    }
    l->busy = true;
    unsigned n = l->count < BATCH ? l->count : BATCH, start = l->head, done = 0;
    pthread_mutex_unlock(&q->mu);
    bool requeued = false;
    for (; done < n; done++) {
      struct mslot *s = &l->slots[(start + done) % q->cap];
      int st;
      while ((st = atomic_load_explicit(&s->state, memory_order_acquire)) == SLOT_FILLING)
        cpu_relax(); /* a publisher is copying into it right now */
      if (st == SLOT_SKIP) {
        atomic_store_explicit(&s->state, SLOT_FILLING, memory_order_relaxed);
        continue;
      }
      slot_view(s, sc);
      sc->d.attempts = 0;
      int how = tl__mq_dispatch(m->sub, &sc->d);
      if (how == TL__MQ_SETTLE_REQUEUE) {
        s->prior += sc->d.attempts;
        requeued = true;
        break;
      }
      atomic_store_explicit(&s->state, SLOT_FILLING, memory_order_relaxed);
      if (s->cap > SLOT_KEEP_BYTES) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
      }
    }
    if (n < 16 && !requeued) {
      /* Keeping up one message at a time means taking the lock and
       * moving its cache lines once per message, in the publisher's way:
       * let a few more arrive first (a microsecond or two). */
      for (int k = 0; k < 128; k++)
        cpu_relax();
    }
    pthread_mutex_lock(&q->mu);
    l->head = (l->head + done) % q->cap;
    l->count -= done;
    atomic_fetch_sub_explicit(&q->pending, done, memory_order_release);
    l->busy = false;
    if (q->waiting_pubs)
      pthread_cond_broadcast(&q->not_full);
    if ((l->count || requeued) && q->idle > q->wakes) {
      q->wakes++;
      pthread_cond_signal(&q->not_empty);
    }
  }
  pthread_mutex_unlock(&q->mu);
  tl_log_context_set(NULL, NULL);
  free(sc);
  return NULL;
}

/* ---- subscriptions ---- */

static struct mqueue *queue_new(tl_mq_sub *sub, struct bus *b)
{
  struct mqueue *q = calloc(1, sizeof *q);
  if (!q)
    return NULL;
  q->bus = b;
  snprintf(q->pattern, sizeof q->pattern, "%s", sub->pattern);
  snprintf(q->group, sizeof q->group, "%s", sub->group);
  /* Groups get several lanes so members work in parallel. */
  unsigned lanes = sub->opts.concurrency;
  if (sub->group[0] && lanes < 8)
    lanes = 8;
  unsigned cap = sub->mq->cfg.queue_capacity / lanes;
  q->nlanes = lanes;
  q->cap = cap < 16 ? 16 : cap;
  q->lanes = calloc(lanes, sizeof *q->lanes);
  if (!q->lanes) {
    free(q);
    return NULL;
  }
  for (unsigned i = 0; i < lanes; i++) {
    q->lanes[i].slots = calloc(q->cap, sizeof(struct mslot));
    if (!q->lanes[i].slots) {
      for (unsigned j = 0; j < i; j++)
        free(q->lanes[j].slots);
      free(q->lanes);
      free(q);
      return NULL;
    }
  }
  /* Critical sections are a few hundred nanoseconds: spin briefly rather
   * than sleep in the kernel when the other side holds the lock. */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(&q->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  pthread_cond_init(&q->not_empty, NULL);
  tl__cond_init_mono(&q->not_full);
  atomic_init(&q->pending, 0);
  return q;
}

static void queue_free(struct mqueue *q)
{
  for (unsigned i = 0; i < q->nlanes; i++) {
    for (unsigned j = 0; j < q->cap; j++)
      free(q->lanes[i].slots[j].buf);
    free(q->lanes[i].slots);
  }
  free(q->lanes);
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->not_empty);
  pthread_cond_destroy(&q->not_full);
  free(q);
}

static void stop_threads(struct msub *m)
{
  struct mqueue *q = m->q;
  pthread_mutex_lock(&q->mu);
  atomic_store_explicit(&m->stop, true, memory_order_release);
  q->wakes = q->idle;
  pthread_cond_broadcast(&q->not_empty);
  pthread_mutex_unlock(&q->mu);
  for (unsigned i = 0; i < m->nthreads; i++)
    pthread_join(m->threads[i], NULL);
  m->nthreads = 0;
}

static int mem_subscribe(tl_mq_sub *sub)
{
  struct bus *b = sub->mq->impl;
  struct msub *m = calloc(1, sizeof *m);
  if (!m)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  m->sub = sub;
  atomic_init(&m->stop, false);
  m->threads = calloc(sub->opts.concurrency, sizeof *m->threads);
  if (!m->threads) {
    free(m);
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  pthread_rwlock_wrlock(&b->lock);
  struct mqueue *q = NULL;
  if (sub->group[0])
    for (q = b->queues; q; q = q->next)
      if (!strcmp(q->group, sub->group) && !strcmp(q->pattern, sub->pattern))
        break;
  bool fresh = !q;
  if (fresh && !(q = queue_new(sub, b))) {
    pthread_rwlock_unlock(&b->lock);
    free(m->threads);
    free(m);
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  m->q = q;
  for (unsigned i = 0; i < sub->opts.concurrency; i++) {
    if (pthread_create(&m->threads[i], NULL, mem_worker, m) != 0)
      break;
    m->nthreads++;
  }
  if (m->nthreads < sub->opts.concurrency) {
    stop_threads(m);
    if (fresh)
      queue_free(q);
    pthread_rwlock_unlock(&b->lock);
    free(m->threads);
    free(m);
    return tl_error_set(TL_ENOMEM, "mq: cannot start a handler thread");
  }
  m->next = q->members;
  q->members = m;
  pthread_mutex_lock(&q->mu);
  q->live++;
  q->dead = false;
  pthread_mutex_unlock(&q->mu);
  if (fresh) {
    q->next = b->queues;
    b->queues = q;
  }
  pthread_rwlock_unlock(&b->lock);
  sub->impl = m;
  return 0;
}

static void mem_sub_stop(tl_mq_sub *sub)
{
  struct msub *m = sub->impl;
  struct mqueue *q = m->q;
  struct bus *b = q->bus;
  /* Publishers waiting on a full queue hold the bus lock: once no member
   * is left, let them skip the queue so the lock can be had. */
  pthread_mutex_lock(&q->mu);
  if (--q->live == 0) {
    q->dead = true;
    pthread_cond_broadcast(&q->not_full);
  }
  pthread_mutex_unlock(&q->mu);
  stop_threads(m);
  pthread_rwlock_wrlock(&b->lock);
  struct msub **mp = &q->members;
  while (*mp != m)
    mp = &(*mp)->next;
  *mp = m->next;
  bool empty = q->members == NULL;
  if (empty) {
    struct mqueue **qp = &b->queues;
    while (*qp != q)
      qp = &(*qp)->next;
    *qp = q->next;
  }
  pthread_rwlock_unlock(&b->lock);
  if (empty)
    queue_free(q);
  m->q = NULL;
}

static void mem_sub_free(tl_mq_sub *sub)
{
  struct msub *m = sub->impl;
  free(m->threads);
  free(m);
  sub->impl = NULL;
}

static void mem_settle(tl_mq_sub *sub, tl__mq_delivery *d, int how)
{
  (void)sub, (void)d, (void)how;
}

const struct tl__mq_backend tl__mq_memory = {
  .name = "memory",
  .open = mem_open,
  .close = mem_close,
  .ready = mem_ready,
  .publish = mem_publish,
  .subscribe = mem_subscribe,
  .sub_stop = mem_sub_stop,
  .sub_free = mem_sub_free,
  .settle = mem_settle,
  .sync_publish = true,
  .own_workers = true,
};
