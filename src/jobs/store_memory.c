/* The in-memory job store. One mutex guards everything; each operation
 * is a few pointer moves, so it stays short.
 *
 * Runnable jobs sit in lanes, one per (queue, kind), so a fetch can skip
 * a queue or a kind at its concurrency limit by looking at lane heads
 * only. A lane holds one FIFO per priority, kept in (run_at, id) order;
 * jobs arrive in that order almost always, so inserting from the tail is
 * O(1). Jobs not yet due wait in a min-heap on (run_at, id) and move to
 * their lane when a fetch finds them due. Completed jobs are dropped;
 * discarded and cancelled ones are kept, oldest dropped first.
 *
 * Submitting takes no lock unless the job has a unique key: the record is
 * pushed on a lock-free inbox, and every operation that takes the lock
 * first moves the inbox into the structures above. A worker and the
 * submitters then meet on the lock once per job instead of three times. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "jobs_int.h"
#include "trellis/error.h"

typedef struct mrec mrec;
typedef struct lane lane;

struct mrec {
  int64_t id;
  lane *lane;               /* its queue and kind */
  char *args, *ukey;        /* inline in data[]; ukey NULL when none */
  char *in_kind, *in_queue; /* inline, while in the inbox */
  char *error;              /* heap, or NULL */
  int priority;
  unsigned attempt;
  int max_retries;
  tl_job_state state;
  int64_t created, run_at, finished, lease_until;
  uint64_t lease;
  atomic_int cancel;
  unsigned refs;            /* 1 while stored, plus 1 per holder */
  bool stored;
  mrec *prev, *next;        /* a ready FIFO, the running list or the dead list */
  size_t heap_i;            /* position in the delayed heap, or NOT_IN_HEAP */
  mrec *hnext, *unext;      /* id and unique-key hash chains */
  char data[];
};

#define NOT_IN_HEAP SIZE_MAX

typedef struct fifo {
  int prio;
  mrec *head, *tail;
} fifo;

struct lane {
  char *queue, *kind;
  fifo *f;                  /* non-empty FIFOs, priority descending */
  size_t nf, capf;
  size_t count;
};

typedef struct dlist {
  mrec *head, *tail;
} dlist;

typedef struct mem_store {
  tl__jobs_store base;
  pthread_mutex_t mu;
  _Atomic(mrec *) inbox;    /* submitted, not yet placed; newest first */
  atomic_llong next_id;
  unsigned retain_dead;
  uint64_t lease_seq;
  lane **lanes;
  size_t nlanes, caplanes;
  lane *last_lane;
  mrec **heap;
  size_t nheap, capheap;
  mrec **ids;               /* hash on id, chained */
  size_t idcap, idcount;
  mrec **ukeys;             /* hash on (kind, unique key), chained */
  size_t ukcap, ukcount;
  dlist running, dead;
  size_t ndead;
  tl_jobs_stats st;
} mem_store;

static mem_store *M(tl__jobs_store *s)
{
  return (mem_store *)s;
}

/* ---- records ---------------------------------------------------------------- */

static mrec *rec_alloc(size_t need)
{
  mrec *r = malloc(sizeof *r + need);
  if (!r)
    return NULL;
  memset(r, 0, sizeof *r);
  r->heap_i = NOT_IN_HEAP;
  atomic_init(&r->cancel, 0);
  return r;
}

static void rec_release(mem_store *m, mrec *r)
{
  (void)m;
  free(r->error);
  free(r);
}

/* Drop one reference; the last one frees. locks: m->mu held */
static void unref(mem_store *m, mrec *r)
{
  if (--r->refs == 0)
    rec_release(m, r);
}

static void set_error(mrec *r, const char *error)
{
  if (!error)
    return;
  char *e = strdup(error);
  if (!e)
    return; /* keep the previous one rather than fail the transition */
  free(r->error);
  r->error = e;
}

/* ---- hashes ------------------------------------------------------------------ */

static bool id_grow(mem_store *m)
{
  size_t ncap = m->idcap ? m->idcap * 2 : 1024;
  mrec **nb = calloc(ncap, sizeof *nb);
  if (!nb)
    return false;
  for (size_t i = 0; i < m->idcap; i++) {
    for (mrec *r = m->ids[i], *nx; r; r = nx) {
      nx = r->hnext;
      size_t b = (size_t)r->id & (ncap - 1);
      r->hnext = nb[b];
      nb[b] = r;
    }
  }
  free(m->ids);
  m->ids = nb;
  m->idcap = ncap;
  return true;
}

static mrec *id_find(mem_store *m, int64_t id)
{
  if (!m->idcap)
    return NULL;
  for (mrec *r = m->ids[(size_t)id & (m->idcap - 1)]; r; r = r->hnext)
    if (r->id == id)
      return r;
  return NULL;
}

static void id_insert(mem_store *m, mrec *r)
{
  size_t b = (size_t)r->id & (m->idcap - 1);
  r->hnext = m->ids[b];
  m->ids[b] = r;
  m->idcount++;
}

static void id_remove(mem_store *m, mrec *r)
{
  for (mrec **p = &m->ids[(size_t)r->id & (m->idcap - 1)]; *p; p = &(*p)->hnext) {
    if (*p == r) {
      *p = r->hnext;
      m->idcount--;
      return;
    }
  }
}

static size_t ukey_hash(const char *kind, const char *key)
{
  uint64_t h = 1469598103934665603u;
  for (const char *p = kind; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211u;
  h = (h ^ 0xff) * 1099511628211u;
  for (const char *p = key; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211u;
  return (size_t)h;
}

static mrec *ukey_find(mem_store *m, const char *kind, const char *key)
{
  for (mrec *r = m->ukeys[ukey_hash(kind, key) & (m->ukcap - 1)]; r; r = r->unext)
    if (!strcmp(r->ukey, key) && !strcmp(r->lane->kind, kind))
      return r;
  return NULL;
}

static void ukey_link(mrec **buckets, size_t cap, mrec *r)
{
  size_t b = ukey_hash(r->lane->kind, r->ukey) & (cap - 1);
  r->unext = buckets[b];
  buckets[b] = r;
}

/* Growing is best effort: chains just get longer when memory is short. */
static void ukey_insert(mem_store *m, mrec *r)
{
  if (m->ukcount >= m->ukcap) {
    size_t ncap = m->ukcap * 2;
    mrec **nb = calloc(ncap, sizeof *nb);
    if (nb) {
      for (size_t i = 0; i < m->ukcap; i++) {
        for (mrec *o = m->ukeys[i], *nx; o; o = nx) {
          nx = o->unext;
          ukey_link(nb, ncap, o);
        }
      }
      free(m->ukeys);
      m->ukeys = nb;
      m->ukcap = ncap;
    }
  }
  ukey_link(m->ukeys, m->ukcap, r);
  m->ukcount++;
}

/* Only pending and running jobs hold their key. */
static void ukey_remove(mem_store *m, mrec *r)
{
  if (!r->ukey)
    return;
  for (mrec **p = &m->ukeys[ukey_hash(r->lane->kind, r->ukey) & (m->ukcap - 1)]; *p;
       p = &(*p)->unext) {
    if (*p == r) {
      *p = r->unext;
      m->ukcount--;
      return;
    }
  }
}

/* ---- lists ------------------------------------------------------------------- */

static void dl_push(dlist *l, mrec *r)
{
  r->next = NULL;
  r->prev = l->tail;
  if (l->tail)
    l->tail->next = r;
  else
    l->head = r;
  l->tail = r;
}

static void dl_remove(dlist *l, mrec *r)
{
  if (r->prev)
    r->prev->next = r->next;
  else
    l->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    l->tail = r->prev;
  r->prev = r->next = NULL;
}

/* ---- lanes ------------------------------------------------------------------- */

static lane *lane_get(mem_store *m, const char *queue, const char *kind)
{
  lane *l = m->last_lane;
  if (l && !strcmp(l->kind, kind) && !strcmp(l->queue, queue))
    return l;
  for (size_t i = 0; i < m->nlanes; i++) {
    l = m->lanes[i];
    if (!strcmp(l->kind, kind) && !strcmp(l->queue, queue))
      return m->last_lane = l;
  }
  if (m->nlanes == m->caplanes) {
    size_t ncap = m->caplanes ? m->caplanes * 2 : 8;
    lane **nl = realloc(m->lanes, ncap * sizeof *nl);
    if (!nl)
      return NULL;
    m->lanes = nl;
    m->caplanes = ncap;
  }
  l = calloc(1, sizeof *l);
  if (!l || !(l->queue = strdup(queue)) || !(l->kind = strdup(kind))) {
    if (l)
      free(l->queue);
    free(l);
    return NULL;
  }
  m->lanes[m->nlanes++] = l;
  return m->last_lane = l;
}

static bool before(const mrec *a, const mrec *b)
{
  return a->run_at < b->run_at || (a->run_at == b->run_at && a->id < b->id);
}

/* Put a runnable job in its lane. Fails only when memory runs out for a
 * new priority, and then leaves the job out. locks: m->mu held */
static bool lane_push(mrec *r)
{
  lane *l = r->lane;
  size_t i = 0;
  while (i < l->nf && l->f[i].prio > r->priority)
    i++;
  if (i == l->nf || l->f[i].prio != r->priority) {
    if (l->nf == l->capf) {
      size_t ncap = l->capf ? l->capf * 2 : 4;
      fifo *nf = realloc(l->f, ncap * sizeof *nf);
      if (!nf)
        return false;
      l->f = nf;
      l->capf = ncap;
    }
    memmove(&l->f[i + 1], &l->f[i], (l->nf - i) * sizeof *l->f);
    l->f[i] = (fifo){ .prio = r->priority };
    l->nf++;
  }
  fifo *f = &l->f[i];
  mrec *after = f->tail;
  while (after && before(r, after))
    after = after->prev;
  r->prev = after;
  r->next = after ? after->next : f->head;
  if (r->next)
    r->next->prev = r;
  else
    f->tail = r;
  if (after)
    after->next = r;
  else
    f->head = r;
  l->count++;
  return true;
}

static void lane_remove(mrec *r)
{
  lane *l = r->lane;
  size_t i = 0;
  while (l->f[i].prio != r->priority)
    i++;
  fifo *f = &l->f[i];
  if (r->prev)
    r->prev->next = r->next;
  else
    f->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    f->tail = r->prev;
  r->prev = r->next = NULL;
  l->count--;
  if (!f->head) {
    memmove(&l->f[i], &l->f[i + 1], (l->nf - i - 1) * sizeof *l->f);
    l->nf--;
  }
}

/* ---- the delayed heap --------------------------------------------------------- */

static void heap_set(mem_store *m, size_t i, mrec *r)
{
  m->heap[i] = r;
  r->heap_i = i;
}

static void heap_up(mem_store *m, size_t i)
{
  mrec *r = m->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!before(r, m->heap[p]))
      break;
    heap_set(m, i, m->heap[p]);
    i = p;
  }
  heap_set(m, i, r);
}

static void heap_down(mem_store *m, size_t i)
{
  mrec *r = m->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= m->nheap)
      break;
    if (c + 1 < m->nheap && before(m->heap[c + 1], m->heap[c]))
      c++;
    if (!before(m->heap[c], r))
      break;
    heap_set(m, i, m->heap[c]);
    i = c;
  }
  heap_set(m, i, r);
}

static bool heap_push(mem_store *m, mrec *r)
{
  if (m->nheap == m->capheap) {
    size_t ncap = m->capheap ? m->capheap * 2 : 64;
    mrec **nh = realloc(m->heap, ncap * sizeof *nh);
    if (!nh)
      return false;
    m->heap = nh;
    m->capheap = ncap;
  }
  m->heap[m->nheap++] = r;
  heap_up(m, m->nheap - 1);
  return true;
}

static void heap_remove(mem_store *m, mrec *r)
{
  size_t i = r->heap_i;
  r->heap_i = NOT_IN_HEAP;
  mrec *last = m->heap[--m->nheap];
  if (i == m->nheap)
    return;
  heap_set(m, i, last);
  heap_up(m, i);
  heap_down(m, last->heap_i);
}

/* A pending job goes to its lane when due, else to the heap. Both keep
 * it when memory runs out only if the other can take it; it can then
 * still be seen through get/list. locks: m->mu held */
static void place(mem_store *m, mrec *r, int64_t now)
{
  r->state = TL_JOB_PENDING;
  if (r->run_at <= now && lane_push(r))
    return;
  if (!heap_push(m, r))
    lane_push(r);
}

static void unplace(mem_store *m, mrec *r)
{
  if (r->heap_i != NOT_IN_HEAP)
    heap_remove(m, r);
  else
    lane_remove(r);
}

static void promote(mem_store *m, int64_t now)
{
  while (m->nheap && m->heap[0]->run_at <= now) {
    mrec *r = m->heap[0];
    heap_remove(m, r);
    if (!lane_push(r)) {
      heap_push(m, r); /* the slot it left is free: cannot fail */
      return;
    }
  }
}

/* ---- operations ----------------------------------------------------------------- */

/* A new record with the job's fields and a copy of its strings; `extra`
 * more bytes follow the arguments and the key. */
static mrec *rec_new(const tl__job_new *j, size_t extra)
{
  size_t klen = j->unique_key ? strlen(j->unique_key) + 1 : 0;
  mrec *r = rec_alloc(j->args_len + 1 + klen + extra);
  if (!r)
    return NULL;
  r->args = r->data;
  memcpy(r->args, j->args, j->args_len);
  r->args[j->args_len] = '\0';
  if (klen) {
    r->ukey = r->data + j->args_len + 1;
    memcpy(r->ukey, j->unique_key, klen);
  }
  r->priority = j->priority;
  r->max_retries = j->max_retries;
  r->created = j->created_us;
  r->run_at = j->run_at_us;
  r->refs = 1;
  r->stored = true;
  return r;
}

/* Index and place a new record. locks: m->mu held */
static void admit(mem_store *m, mrec *r)
{
  if (m->idcount >= m->idcap)
    id_grow(m); /* on failure the chains just get longer */
  id_insert(m, r);
  if (r->ukey)
    ukey_insert(m, r);
  place(m, r, r->created);
  m->st.pending++;
  m->st.submitted++;
}

/* Move the inbox into the store, oldest first. A record whose lane cannot
 * be made (out of memory) goes back to the inbox with the ones after it.
 * locks: m->mu held */
static void drain(mem_store *m)
{
  /* Sequentially consistent, like the push: a submitter pushes and then
   * looks for idle workers, a worker says it is idle and then looks here;
   * one of the two must see the other. */
  if (!atomic_load(&m->inbox))
    return;
  mrec *r = atomic_exchange(&m->inbox, NULL), *old = NULL;
  while (r) {
    mrec *nx = r->next;
    r->next = old;
    old = r;
    r = nx;
  }
  for (r = old; r; r = old) {
    old = r->next;
    r->next = NULL;
    lane *l = lane_get(m, r->in_queue, r->in_kind);
    if (!l) {
      /* r and the rest, oldest first, go back newest first; r ends up
       * last and links to whatever arrived meanwhile. */
      r->next = old;
      mrec *rev = NULL;
      for (mrec *p = r, *nx; p; p = nx) {
        nx = p->next;
        p->next = rev;
        rev = p;
      }
      r->next = atomic_load(&m->inbox);
      while (!atomic_compare_exchange_weak(&m->inbox, &r->next, rev))
        ;
      return;
    }
    r->lane = l;
    admit(m, r);
  }
}

static int mem_enqueue(tl__jobs_store *s, const tl__job_new *j, int64_t *id, bool *dup)
{
  mem_store *m = M(s);
  *dup = false;
  if (!j->unique_key) {
    size_t kl = strlen(j->kind) + 1, ql = strlen(j->queue) + 1;
    mrec *r = rec_new(j, kl + ql);
    if (!r)
      return tl_error_set(TL_ENOMEM, "jobs: out of memory");
    r->in_kind = r->args + j->args_len + 1;
    memcpy(r->in_kind, j->kind, kl);
    r->in_queue = r->in_kind + kl;
    memcpy(r->in_queue, j->queue, ql);
    r->id = atomic_fetch_add_explicit(&m->next_id, 1, memory_order_relaxed) + 1;
    *id = r->id;
    r->next = atomic_load_explicit(&m->inbox, memory_order_relaxed);
    while (!atomic_compare_exchange_weak(&m->inbox, &r->next, r))
      ;
    return 0;
  }
  pthread_mutex_lock(&m->mu);
  drain(m);
  mrec *o = ukey_find(m, j->kind, j->unique_key);
  if (o) {
    *id = o->id;
    *dup = true;
    pthread_mutex_unlock(&m->mu);
    return 0;
  }
  lane *l = lane_get(m, j->queue, j->kind);
  mrec *r = l ? rec_new(j, 0) : NULL;
  if (!r) {
    pthread_mutex_unlock(&m->mu);
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  }
  r->lane = l;
  r->id = atomic_fetch_add_explicit(&m->next_id, 1, memory_order_relaxed) + 1;
  admit(m, r);
  *id = r->id;
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static bool in_list(const char *s, const char *const *list, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (list[i] == s || !strcmp(list[i], s))
      return true;
  return false;
}

static void complete_locked(mem_store *m, tl__job *j);

static int mem_fetch(tl__jobs_store *s, const tl__fetch *f, tl__job *out)
{
  mem_store *m = M(s);
  pthread_mutex_lock(&m->mu);
  if (f->done)
    complete_locked(m, f->done);
  drain(m);
  promote(m, f->now_us);
  mrec *best = NULL;
  for (size_t i = 0; i < m->nlanes; i++) {
    lane *l = m->lanes[i];
    if (!l->count || (f->queues && !in_list(l->queue, f->queues, f->nqueues)) ||
        (f->nexclude && in_list(l->kind, f->exclude_kinds, f->nexclude)))
      continue;
    mrec *c = l->f[0].head;
    if (!best || c->priority > best->priority ||
        (c->priority == best->priority && before(c, best)))
      best = c;
  }
  if (!best) {
    pthread_mutex_unlock(&m->mu);
    return 0;
  }
  lane_remove(best);
  best->state = TL_JOB_RUNNING;
  best->attempt++;
  best->lease = ++m->lease_seq;
  best->lease_until = f->lease_until_us;
  best->refs++;
  atomic_store_explicit(&best->cancel, 0, memory_order_relaxed);
  dl_push(&m->running, best);
  m->st.pending--;
  m->st.running++;
  *out = (tl__job){ .id = best->id, .kind = best->lane->kind, .queue = best->lane->queue,
                    .args = best->args, .unique_key = best->ukey, .priority = best->priority,
                    .attempt = best->attempt, .max_retries = best->max_retries,
                    .run_at_us = best->run_at, .lease = best->lease, .cancel = &best->cancel,
                    .ref = best };
  pthread_mutex_unlock(&m->mu);
  return 1;
}

static int64_t mem_next_due(tl__jobs_store *s)
{
  mem_store *m = M(s);
  pthread_mutex_lock(&m->mu);
  drain(m);
  int64_t t = m->nheap ? m->heap[0]->run_at : INT64_MAX;
  pthread_mutex_unlock(&m->mu);
  return t;
}

/* Is `j` still the holder of its record? locks: m->mu held */
static bool holds(const tl__job *j)
{
  const mrec *r = j->ref;
  return r->stored && r->state == TL_JOB_RUNNING && r->lease == j->lease;
}

static int lost(mem_store *m, mrec *r)
{
  int64_t id = r->id;
  unref(m, r);
  pthread_mutex_unlock(&m->mu);
  return tl_error_set(TL_ESTATE, "job %lld: no longer held (lease expired or released)",
                      (long long)id);
}

/* Running -> out of the store. The caller holds it, so the store's
 * reference is never the last. locks: m->mu held */
static void drop(mem_store *m, mrec *r)
{
  ukey_remove(m, r);
  id_remove(m, r);
  r->stored = false;
  r->refs--;
}

/* Running or pending -> kept as discarded or cancelled. */
static void bury(mem_store *m, mrec *r, tl_job_state state, int64_t now)
{
  r->state = state;
  r->finished = now;
  ukey_remove(m, r);
  dl_push(&m->dead, r);
  m->ndead++;
  if (state == TL_JOB_CANCELLED)
    m->st.cancelled++;
  else
    m->st.discarded++;
  while (m->ndead > m->retain_dead) {
    mrec *old = m->dead.head;
    dl_remove(&m->dead, old);
    m->ndead--;
    if (old->state == TL_JOB_CANCELLED)
      m->st.cancelled--;
    else
      m->st.discarded--;
    id_remove(m, old);
    old->stored = false;
    unref(m, old);
  }
}

/* Ends the hold whether or not it was still held. locks: m->mu held */
static void complete_locked(mem_store *m, tl__job *j)
{
  mrec *r = j->ref;
  if (holds(j)) {
    dl_remove(&m->running, r);
    m->st.running--;
    m->st.completed++;
    drop(m, r);
  }
  unref(m, r);
}

static int mem_complete(tl__jobs_store *s, tl__job *j, int64_t now)
{
  mem_store *m = M(s);
  mrec *r = j->ref;
  pthread_mutex_lock(&m->mu);
  if (!holds(j))
    return lost(m, r);
  complete_locked(m, j);
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_fail(tl__jobs_store *s, tl__job *j, int64_t now, int64_t retry_at,
                    const char *error)
{
  mem_store *m = M(s);
  mrec *r = j->ref;
  pthread_mutex_lock(&m->mu);
  if (!holds(j))
    return lost(m, r);
  dl_remove(&m->running, r);
  set_error(r, error);
  r->run_at = retry_at;
  place(m, r, now);
  m->st.running--;
  m->st.pending++;
  m->st.retried++;
  unref(m, r);
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_discard(tl__jobs_store *s, tl__job *j, int64_t now, tl_job_state state,
                       const char *error)
{
  mem_store *m = M(s);
  mrec *r = j->ref;
  pthread_mutex_lock(&m->mu);
  if (!holds(j))
    return lost(m, r);
  dl_remove(&m->running, r);
  set_error(r, error);
  m->st.running--;
  bury(m, r, state == TL_JOB_CANCELLED ? TL_JOB_CANCELLED : TL_JOB_DISCARDED, now);
  unref(m, r);
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_snooze(tl__jobs_store *s, tl__job *j, int64_t run_at)
{
  mem_store *m = M(s);
  mrec *r = j->ref;
  pthread_mutex_lock(&m->mu);
  if (!holds(j))
    return lost(m, r);
  dl_remove(&m->running, r);
  r->attempt--;
  r->run_at = run_at;
  place(m, r, INT64_MIN);
  m->st.running--;
  m->st.pending++;
  m->st.snoozed++;
  unref(m, r);
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_release(tl__jobs_store *s, tl__job *j, int64_t now)
{
  mem_store *m = M(s);
  mrec *r = j->ref;
  pthread_mutex_lock(&m->mu);
  if (!holds(j)) {
    pthread_mutex_unlock(&m->mu);
    return tl_error_set(TL_ESTATE, "job %lld: not held", (long long)j->id);
  }
  dl_remove(&m->running, r);
  r->attempt--;
  r->lease = ++m->lease_seq; /* the holder's finishing call will fail */
  place(m, r, now);
  m->st.running--;
  m->st.pending++;
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_heartbeat(tl__jobs_store *s, tl__job *const *jobs, size_t n, int64_t lease_until)
{
  mem_store *m = M(s);
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < n; i++)
    if (holds(jobs[i]))
      ((mrec *)jobs[i]->ref)->lease_until = lease_until;
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_recover(tl__jobs_store *s, int64_t now, tl__lost_fn lost_fn, void *ctx,
                       size_t *count)
{
  mem_store *m = M(s);
  size_t n = 0;
  pthread_mutex_lock(&m->mu);
  for (mrec *r = m->running.head, *nx; r; r = nx) {
    nx = r->next;
    if (r->lease_until >= now)
      continue;
    dl_remove(&m->running, r);
    m->st.running--;
    r->lease = ++m->lease_seq;
    set_error(r, "lease expired: the worker was lost");
    bool retry = r->max_retries >= 0 && r->attempt <= (unsigned)r->max_retries;
    if (lost_fn) /* before bury: the record may be freed there */
      lost_fn(ctx, r->lane->kind, !retry);
    if (retry) {
      r->run_at = now;
      place(m, r, now);
      m->st.pending++;
      m->st.retried++;
    } else {
      bury(m, r, TL_JOB_DISCARDED, now);
    }
    n++;
  }
  pthread_mutex_unlock(&m->mu);
  if (count)
    *count = n;
  return 0;
}

/* Due jobs are in lanes once promoted: each lane's FIFO heads are its
 * oldest of each priority. */
static int mem_oldest_due(tl__jobs_store *s, int64_t now, tl__queue_age_fn fn, void *ctx)
{
  mem_store *m = M(s);
  pthread_mutex_lock(&m->mu);
  drain(m);
  promote(m, now);
  for (size_t i = 0; i < m->nlanes; i++) {
    lane *l = m->lanes[i];
    int64_t oldest = INT64_MAX;
    bool first = true;
    for (size_t j = 0; j < i && first; j++)
      first = strcmp(m->lanes[j]->queue, l->queue) != 0;
    if (!first)
      continue; /* this queue was done with its first lane */
    for (size_t j = i; j < m->nlanes; j++) {
      lane *o = m->lanes[j];
      if (strcmp(o->queue, l->queue) != 0)
        continue;
      for (size_t k = 0; k < o->nf; k++)
        if (o->f[k].head->run_at < oldest)
          oldest = o->f[k].head->run_at;
    }
    if (oldest <= now)
      fn(ctx, l->queue, oldest);
  }
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int state_error(mrec *r, const char *what)
{
  return tl_error_set(TL_ESTATE, "job %lld is %s: cannot %s it", (long long)r->id,
                      tl_job_state_name(r->state), what);
}

static int mem_cancel(tl__jobs_store *s, int64_t id, int64_t now)
{
  mem_store *m = M(s);
  int rc = 0;
  pthread_mutex_lock(&m->mu);
  drain(m);
  mrec *r = id_find(m, id);
  if (!r) {
    rc = tl_error_set(TL_ENOTFOUND, "job %lld: not found", (long long)id);
  } else if (r->state == TL_JOB_PENDING) {
    unplace(m, r);
    m->st.pending--;
    bury(m, r, TL_JOB_CANCELLED, now);
  } else if (r->state == TL_JOB_RUNNING) {
    atomic_fetch_or(&r->cancel, TL__CANCEL_USER);
  } else {
    rc = state_error(r, "cancel");
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static int mem_retry(tl__jobs_store *s, int64_t id, int64_t now)
{
  mem_store *m = M(s);
  int rc = 0;
  pthread_mutex_lock(&m->mu);
  drain(m);
  mrec *r = id_find(m, id);
  mrec *other = r && r->ukey && r->state != TL_JOB_PENDING
                    ? ukey_find(m, r->lane->kind, r->ukey) : NULL;
  if (!r) {
    rc = tl_error_set(TL_ENOTFOUND, "job %lld: not found", (long long)id);
  } else if (r->state == TL_JOB_RUNNING) {
    rc = state_error(r, "retry");
  } else if (other) {
    rc = tl_error_set(TL_ECONFLICT, "job %lld: its unique key '%s' is held by job %lld",
                      (long long)id, r->ukey, (long long)other->id);
  } else {
    if (r->state == TL_JOB_PENDING) {
      unplace(m, r);
    } else {
      dl_remove(&m->dead, r);
      m->ndead--;
      if (r->state == TL_JOB_CANCELLED)
        m->st.cancelled--;
      else
        m->st.discarded--;
      if (r->ukey)
        ukey_insert(m, r);
      m->st.pending++;
    }
    r->attempt = 0;
    r->finished = 0;
    r->run_at = now;
    place(m, r, now);
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static tl_job_info view(const mrec *r)
{
  return (tl_job_info){ .id = r->id, .kind = r->lane->kind, .queue = r->lane->queue,
                        .args = r->args, .unique_key = r->ukey, .last_error = r->error,
                        .state = r->state, .priority = r->priority, .attempt = r->attempt,
                        .max_retries = r->max_retries,
                        .cancel_requested = r->state == TL_JOB_RUNNING &&
                                            atomic_load(&r->cancel) != 0,
                        .created_us = r->created, .run_at_us = r->run_at,
                        .finished_us = r->finished };
}

static int mem_get(tl__jobs_store *s, int64_t id, tl_job_info **out)
{
  mem_store *m = M(s);
  *out = NULL;
  pthread_mutex_lock(&m->mu);
  drain(m);
  mrec *r = id_find(m, id);
  if (!r) {
    pthread_mutex_unlock(&m->mu);
    return tl_error_set(TL_ENOTFOUND, "job %lld: not found", (long long)id);
  }
  tl_job_info v = view(r);
  tl_job_info *info = malloc(sizeof *info + tl__job_info_strsize(&v));
  if (info) {
    char *cur = (char *)(info + 1);
    tl__job_info_copy(info, &v, &cur);
  }
  pthread_mutex_unlock(&m->mu);
  if (!info)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  *out = info;
  return 0;
}

static bool matches(const mrec *r, const tl_job_filter *f)
{
  return r->id > f->after_id && (!f->state || r->state == f->state) &&
         (!f->kind || !strcmp(f->kind, r->lane->kind)) &&
         (!f->queue || !strcmp(f->queue, r->lane->queue));
}

static int by_id(const void *a, const void *b)
{
  int64_t x = (*(mrec *const *)a)->id, y = (*(mrec *const *)b)->id;
  return (x > y) - (x < y);
}

static int mem_list(tl__jobs_store *s, const tl_job_filter *fp, tl_job_list **out)
{
  mem_store *m = M(s);
  tl_job_filter f = fp ? *fp : (tl_job_filter){ 0 };
  size_t limit = f.limit ? (f.limit > 10000 ? 10000 : f.limit) : 100;
  *out = NULL;
  pthread_mutex_lock(&m->mu);
  drain(m);
  mrec **all = malloc((m->idcount ? m->idcount : 1) * sizeof *all);
  size_t n = 0;
  tl_job_list *list = NULL;
  if (all) {
    for (size_t i = 0; i < m->idcap; i++)
      for (mrec *r = m->ids[i]; r; r = r->hnext)
        if (matches(r, &f))
          all[n++] = r;
    qsort(all, n, sizeof *all, by_id);
    if (n > limit)
      n = limit;
    size_t bytes = sizeof *list + n * sizeof(tl_job_info);
    for (size_t i = 0; i < n; i++) {
      tl_job_info v = view(all[i]);
      bytes += tl__job_info_strsize(&v);
    }
    if ((list = malloc(bytes))) {
      list->count = n;
      list->items = (tl_job_info *)(list + 1);
      char *cur = (char *)(list->items + n);
      for (size_t i = 0; i < n; i++) {
        tl_job_info v = view(all[i]);
        tl__job_info_copy(&list->items[i], &v, &cur);
      }
    }
  }
  pthread_mutex_unlock(&m->mu);
  free(all);
  if (!list)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  *out = list;
  return 0;
}

static int mem_stats(tl__jobs_store *s, tl_jobs_stats *out)
{
  mem_store *m = M(s);
  pthread_mutex_lock(&m->mu);
  drain(m);
  *out = m->st;
  pthread_mutex_unlock(&m->mu);
  return 0;
}

static int mem_ready(tl__jobs_store *s)
{
  (void)s;
  return 0;
}

static void mem_close(tl__jobs_store *s)
{
  mem_store *m = M(s);
  if (!m)
    return;
  for (size_t i = 0; i < m->idcap; i++) {
    for (mrec *r = m->ids[i], *nx; r; r = nx) {
      nx = r->hnext;
      free(r->error);
      free(r);
    }
  }
  for (mrec *r = atomic_load(&m->inbox), *nx; r; r = nx) {
    nx = r->next;
    free(r);
  }
  for (size_t i = 0; i < m->nlanes; i++) {
    free(m->lanes[i]->f);
    free(m->lanes[i]->queue);
    free(m->lanes[i]->kind);
    free(m->lanes[i]);
  }
  free(m->lanes);
  free(m->heap);
  free(m->ids);
  free(m->ukeys);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

static const tl__jobs_store_ops memory_ops = {
  .name = "memory",
  .enqueue = mem_enqueue,
  .fetch = mem_fetch,
  .next_due = mem_next_due,
  .complete = mem_complete,
  .fail = mem_fail,
  .discard = mem_discard,
  .snooze = mem_snooze,
  .release = mem_release,
  .heartbeat = mem_heartbeat,
  .recover = mem_recover,
  .cancel = mem_cancel,
  .retry = mem_retry,
  .get = mem_get,
  .list = mem_list,
  .stats = mem_stats,
  .oldest_due = mem_oldest_due,
  .ready = mem_ready,
  .close = mem_close,
};

int tl__jobs_store_memory_open(tl__jobs_store **out, unsigned retain_dead)
{
  mem_store *m = calloc(1, sizeof *m);
  if (!m || !(m->ukeys = calloc(1024, sizeof *m->ukeys)) || !id_grow(m)) {
    if (m)
      free(m->ukeys);
    free(m);
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  }
  m->base.ops = &memory_ops;
  m->ukcap = 1024;
  m->retain_dead = retain_dead;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(&m->mu, &attr);
  pthread_mutexattr_destroy(&attr);
  *out = &m->base;
  return 0;
}
