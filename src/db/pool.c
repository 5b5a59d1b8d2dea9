/* The connection pool shared by every SQL backend.
 *
 * One mutex guards everything; the fast path (an idle connection and no
 * waiters) holds it once per get and once per put. Idle connections form
 * a LIFO stack (the warm one is reused, the cold ones age out); waiters
 * form a FIFO queue and are handed a connection directly by tl_pool_put(),
 * so a newcomer never overtakes them. Connections are opened and closed
 * outside the lock. A keeper thread per pool closes idle and expired
 * connections, keeps min_idle open and warns about leaks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

typedef struct waiter {
  pthread_cond_t cv;
  tl_conn *conn;   /* handed over by put */
  bool may_open;   /* a slot was reserved for it: open a connection */
  struct waiter *next;
} waiter;

struct tl_pool {
  pthread_mutex_t mu;
  const tl__backend *be;
  const tl__url *url;
  tl__db_opts o;
  char role[24];
  tl_conn **all;     /* slots, max_connections of them */
  tl_conn *idle;     /* LIFO stack through conn->next */
  unsigned total;    /* open + being opened */
  unsigned in_use;
  unsigned nidle;
  waiter *whead, *wtail;
  unsigned pending;
  bool closed;
  uint64_t acquired, timeouts, created, nclosed, nbroken;
  pthread_t keeper;
  pthread_cond_t kcv;
  bool keeper_on;
  /* metrics (NULL when the registry refused them) */
  tl_series *m_in_use, *m_idle, *m_pending, *m_acquire, *m_timeouts;
  _Atomic(tl_series *) m_err[TL_DB_ERR_OTHER + 1];
  tl_pool *gnext, *gprev;
};

/* ---- metrics: gauges are read at render time from every live pool ------ */

static pthread_once_t m_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static tl_pool *g_pools; /* locks: g_mu */
static tl_metric *m_conns, *m_pend, *m_acq, *m_tmo, *m_errs;

static void collect(void *ctx)
{
  (void)ctx;
  pthread_mutex_lock(&g_mu);
  for (tl_pool *p = g_pools; p; p = p->gnext) {
    if (p->m_in_use) tl_series_set(p->m_in_use, 0);
    if (p->m_idle) tl_series_set(p->m_idle, 0);
    if (p->m_pending) tl_series_set(p->m_pending, 0);
  }
  for (tl_pool *p = g_pools; p; p = p->gnext) {
    pthread_mutex_lock(&p->mu);
    unsigned in_use = p->in_use, nidle = p->nidle, pending = p->pending;
    pthread_mutex_unlock(&p->mu);
    if (p->m_in_use) tl_series_add(p->m_in_use, in_use);
    if (p->m_idle) tl_series_add(p->m_idle, nidle);
    if (p->m_pending) tl_series_add(p->m_pending, pending);
  }
  pthread_mutex_unlock(&g_mu);
}

static void metrics_init(void)
{
  tl_metrics *r = tl_metrics_default();
  tl_metrics_gauge(r, "trellis_db_pool_connections",
                   "Database connections by state", "pool,role,state", &m_conns);
  tl_metrics_gauge(r, "trellis_db_pool_pending_acquires",
                   "Callers waiting for a database connection", "pool,role", &m_pend);
  tl_metrics_histogram(r, "trellis_db_pool_acquire_duration_seconds",
                       "Time to take a connection from the pool", "pool,role",
                       NULL, 0, &m_acq);
  tl_metrics_counter(r, "trellis_db_pool_timeouts_total",
                     "Connection acquires that timed out", "pool,role", &m_tmo);
  tl_metrics_counter(r, "trellis_db_errors_total",
                     "Database errors by class", "pool,role,class", &m_errs);
  tl_metrics_on_collect(r, collect, NULL);
}

static tl_series *series(tl_metric *m, const char *const *v, size_t n)
{
  return m ? tl_metric_series(m, v, n) : NULL;
}

void tl__pool_count_error(tl_pool *p, tl_db_error_class cls)
{
  if (!p || cls <= TL_DB_ERR_NONE || cls > TL_DB_ERR_OTHER) return;
  tl_series *s = atomic_load_explicit(&p->m_err[cls], memory_order_acquire);
  if (!s) {
    s = series(m_errs, TL_LABELS(p->o.name, p->role, tl_db_error_class_name(cls)));
    atomic_store_explicit(&p->m_err[cls], s, memory_order_release);
  }
  if (s) tl_series_inc(s);
}

const tl__db_opts *tl__pool_opts(const tl_pool *p) { return &p->o; }
const char *tl__pool_role(const tl_pool *p) { return p->role; }

/* ---- opening and closing connections (outside the lock) --------------- */

static int open_conn(tl_pool *p, tl_conn **out)
{
  tl__target t = { .url = p->url, .name = p->o.name, .role = p->role,
                   .connect_timeout_us = p->o.connect_timeout_us,
                   .statement_timeout_us = p->o.statement_timeout_us };
  tl_conn *c = NULL;
  int rc = p->be->connect(&t, &c);
  if (rc != 0) {
    tl__pool_count_error(p, TL_DB_ERR_CONNECTION_LOST);
    tl_log(TL_LOG_WARN, "database connect failed", TL_F_STR("pool", p->o.name),
           TL_F_STR("role", p->role), TL_F_STR("error", tl_error_last()));
    return rc;
  }
  int64_t now = tl__mono_coarse_us();
  c->be = p->be;
  c->pool = p;
  c->created_us = c->idle_since_us = c->acquired_us = now;
  c->stmt_timeout_us = p->o.statement_timeout_us;
  if (p->o.max_lifetime_us > 0) {
    int64_t jitter = (int64_t)(tl_rand64() % (uint64_t)(p->o.max_lifetime_us / 10 + 1));
    c->expires_us = now + p->o.max_lifetime_us - jitter;
  }
  pthread_mutex_lock(&p->mu);
  for (int i = 0; i < p->o.max_connections; i++) {
    if (!p->all[i]) {
      p->all[i] = c;
      c->slot = i;
      break;
    }
  }
  p->created++;
  pthread_mutex_unlock(&p->mu);
  *out = c;
  return 0;
}

static void destroy_conn(tl_conn *c)
{
  tl__conn_cache_clear(c);
  c->be->disconnect(c);
}

/* Give a reserved slot to the first waiter, if any. locks: p->mu held */
static void pass_slot(tl_pool *p)
{
  waiter *w = p->whead;
  if (!w || p->total >= (unsigned)p->o.max_connections) return;
  p->whead = w->next;
  if (!p->whead) p->wtail = NULL;
  p->total++;
  w->may_open = true;
  pthread_cond_signal(&w->cv);
}

/* Forget `c` (it will be closed by the caller). locks: p->mu held */
static void forget(tl_pool *p, tl_conn *c)
{
  if (c->slot >= 0 && c->slot < p->o.max_connections && p->all[c->slot] == c)
    p->all[c->slot] = NULL;
  p->total--;
  p->nclosed++;
  if (c->broken) p->nbroken++;
  pass_slot(p);
}

static void discard(tl_pool *p, tl_conn *c, bool was_in_use)
{
  pthread_mutex_lock(&p->mu);
  if (was_in_use) p->in_use--;
  c->in_use = false;
  forget(p, c);
  pthread_mutex_unlock(&p->mu);
  destroy_conn(c);
}

/* Check a connection just taken: expired, or idle long enough to need a
 * ping? Returns false when it was discarded. */
static bool checkout(tl_pool *p, tl_conn *c, int64_t now)
{
  if ((c->expires_us && now >= c->expires_us) ||
      (p->o.validate_after_us >= 0 && now - c->idle_since_us > p->o.validate_after_us &&
       p->be->ping(c) != 0)) {
    if (!(c->expires_us && now >= c->expires_us)) c->broken = true;
    discard(p, c, true);
    return false;
  }
  return true;
}

/* Mark `c` taken. locks: p->mu held */
static void take(tl_pool *p, tl_conn *c, int64_t now)
{
  p->acquired++;
  c->in_use = true;
  c->acquired_us = now;
  c->leak_warned = false;
}

/* ---- get and put ------------------------------------------------------- */

static void observe_acquire(tl_pool *p, int64_t t0)
{
  if (p->m_acquire)
    tl_series_observe(p->m_acquire, t0 ? (double)(tl_time_mono_us() - t0) / 1e6 : 0.0);
}

int tl_pool_get(tl_pool *p, tl_conn **out)
{
  if (!p || !out) return tl_error_set(TL_EINVAL, "tl_pool_get: NULL argument");
  int64_t t0 = 0, deadline = 0, now = tl__mono_coarse_us();
  tl_conn *c;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if (p->closed) {
      pthread_mutex_unlock(&p->mu);
      return tl_error_set(TL_ECLOSED, "pool '%s/%s': closed", p->o.name, p->role);
    }
    if (p->idle && !p->whead) {
      c = p->idle;
      p->idle = c->next;
      p->nidle--;
      p->in_use++;
      take(p, c, now);
      pthread_mutex_unlock(&p->mu);
      if (checkout(p, c, now)) break;
      now = tl__mono_coarse_us();
      pthread_mutex_lock(&p->mu);
      p->acquired--;
      continue;
    }
    bool may_open = false;
    if (!p->whead && p->total < (unsigned)p->o.max_connections) {
      p->total++;
      may_open = true;
    } else {
      if (p->o.acquire_timeout_us < 0) {
        pthread_mutex_unlock(&p->mu);
        return tl_error_set(TL_EBUSY, "pool '%s/%s': all %d connections in use",
                            p->o.name, p->role, p->o.max_connections);
      }
      if (!t0) {
        t0 = tl_time_mono_us();
        deadline = t0 + p->o.acquire_timeout_us;
      }
      waiter w = { .conn = NULL };
      tl__cond_init_mono(&w.cv);
      if (p->wtail) p->wtail->next = &w;
      else p->whead = &w;
      p->wtail = &w;
      p->pending++;
      struct timespec ts = { .tv_sec = deadline / 1000000,
                             .tv_nsec = (deadline % 1000000) * 1000 };
      while (!w.conn && !w.may_open && !p->closed) {
        if (pthread_cond_timedwait(&w.cv, &p->mu, &ts) == ETIMEDOUT) break;
      }
      p->pending--;
      if (!w.conn && !w.may_open) { /* still queued: take it out */
        waiter **pp = &p->whead, *prev = NULL;
        while (*pp && *pp != &w) {
          prev = *pp;
          pp = &(*pp)->next;
        }
        if (*pp) *pp = w.next;
        if (p->wtail == &w) p->wtail = prev;
      }
      pthread_cond_destroy(&w.cv);
      if (w.conn) {
        c = w.conn;
        now = tl__mono_coarse_us();
        take(p, c, now);
        pthread_mutex_unlock(&p->mu);
        if (checkout(p, c, now)) break;
        pthread_mutex_lock(&p->mu);
        p->acquired--;
        continue;
      }
      if (!w.may_open) {
        if (p->closed) continue;
        p->timeouts++;
        unsigned in_use = p->in_use, pending = p->pending;
        pthread_mutex_unlock(&p->mu);
        if (p->m_timeouts) tl_series_inc(p->m_timeouts);
        observe_acquire(p, t0);
        return tl_error_set(TL_ETIMEOUT, "pool '%s/%s' (%s): no connection free "
                            "after %lld ms (%u in use, %u waiting)", p->o.name,
                            p->role, p->url->masked,
                            (long long)(p->o.acquire_timeout_us / 1000), in_use, pending);
      }
      may_open = true; /* the slot was reserved by pass_slot() */
    }
    if (may_open) {
      pthread_mutex_unlock(&p->mu);
      int rc = open_conn(p, &c);
      pthread_mutex_lock(&p->mu);
      if (rc != 0) {
        p->total--;
        pass_slot(p);
        pthread_mutex_unlock(&p->mu);
        return rc;
      }
      p->in_use++;
      take(p, c, tl__mono_coarse_us());
      pthread_mutex_unlock(&p->mu);
      break;
    }
  }
  observe_acquire(p, t0);
  *out = c;
  return 0;
}

void tl_pool_put(tl_pool *p, tl_conn *c)
{
  if (!c) return;
  if (!p) p = c->pool;
  if (c->rows.open) {
    c->rows.release_to = NULL;
    tl_rows_free(&c->rows);
  }
  bool discard_it = c->broken ||
                    (c->expires_us && tl__mono_coarse_us() >= c->expires_us);
  if (!discard_it && (c->tx.active || c->be->in_tx(c)))
    discard_it = tl__conn_reset(c) != 0;
  c->tx.active = false;
  int64_t now = tl__mono_coarse_us();
  pthread_mutex_lock(&p->mu);
  if (discard_it || p->closed) {
    p->in_use--;
    c->in_use = false;
    forget(p, c);
    pthread_mutex_unlock(&p->mu);
    destroy_conn(c);
    return;
  }
  c->idle_since_us = now;
  waiter *w = p->whead;
  if (w) { /* hand it straight to the oldest waiter */
    p->whead = w->next;
    if (!p->whead) p->wtail = NULL;
    w->conn = c;
    pthread_cond_signal(&w->cv);
  } else {
    p->in_use--;
    c->in_use = false;
    c->next = p->idle;
    p->idle = c;
    p->nidle++;
  }
  pthread_mutex_unlock(&p->mu);
}

void tl_pool_stats_get(tl_pool *p, tl_pool_stats *out)
{
  memset(out, 0, sizeof *out);
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  out->total = p->total;
  out->in_use = p->in_use;
  out->idle = p->nidle;
  out->pending = p->pending;
  out->acquired = p->acquired;
  out->timeouts = p->timeouts;
  out->created = p->created;
  out->closed = p->nclosed;
  out->broken = p->nbroken;
  pthread_mutex_unlock(&p->mu);
}

/* ---- the keeper ------------------------------------------------------- */

#define KEEPER_PERIOD_US 1000000
#define KEEPER_MAX_LEAKS 8

static void *keeper_main(void *arg)
{
  tl_pool *p = arg;
  pthread_mutex_lock(&p->mu);
  while (!p->closed) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += KEEPER_PERIOD_US / 1000000;
    pthread_cond_timedwait(&p->kcv, &p->mu, &ts);
    if (p->closed) break;
    int64_t now = tl__mono_coarse_us();

    /* Idle connections past their idle timeout (beyond min_idle) or their
     * lifetime: the stack's bottom is the coldest. */
    tl_conn *victims = NULL;
    for (tl_conn **pp = &p->idle; *pp;) {
      tl_conn *c = *pp;
      bool expired = c->expires_us && now >= c->expires_us;
      bool idle_long = p->o.idle_timeout_us > 0 &&
                       now - c->idle_since_us > p->o.idle_timeout_us &&
                       p->nidle > (unsigned)p->o.min_idle;
      if (expired || idle_long) {
        *pp = c->next;
        p->nidle--;
        forget(p, c);
        c->next = victims;
        victims = c;
      } else {
        pp = &c->next;
      }
    }

    /* Connections held past the leak threshold: warn once per checkout. */
    int64_t leaks[KEEPER_MAX_LEAKS];
    int nleaks = 0;
    if (p->o.leak_threshold_us > 0) {
      for (int i = 0; i < p->o.max_connections && nleaks < KEEPER_MAX_LEAKS; i++) {
        tl_conn *c = p->all[i];
        if (c && c->in_use && !c->leak_warned &&
            now - c->acquired_us > p->o.leak_threshold_us) {
          c->leak_warned = true;
          leaks[nleaks++] = now - c->acquired_us;
        }
      }
    }

    int want = 0;
    if (p->nidle < (unsigned)p->o.min_idle && !p->whead) {
      want = p->o.min_idle - (int)p->nidle;
      int room = p->o.max_connections - (int)p->total;
      if (want > room) want = room;
      p->total += (unsigned)want;
    }
    pthread_mutex_unlock(&p->mu);

    while (victims) {
      tl_conn *c = victims;
      victims = c->next;
      destroy_conn(c);
    }
    for (int i = 0; i < nleaks; i++)
      tl_log(TL_LOG_WARN, "database connection held too long (leak?)",
             TL_F_STR("pool", p->o.name), TL_F_STR("role", p->role),
             TL_F_INT("held_ms", leaks[i] / 1000),
             TL_F_INT("threshold_ms", p->o.leak_threshold_us / 1000));
    int opened = 0;
    for (int i = 0; i < want; i++) {
      tl_conn *c;
      if (open_conn(p, &c) != 0) break;
      opened++;
      pthread_mutex_lock(&p->mu);
      c->idle_since_us = tl__mono_coarse_us();
      waiter *w = p->whead;
      if (w) {
        p->whead = w->next;
        if (!p->whead) p->wtail = NULL;
        p->in_use++;
        c->in_use = true; /* the waiter marks it taken when it wakes */
        w->conn = c;
        pthread_cond_signal(&w->cv);
      } else {
        c->next = p->idle;
        p->idle = c;
        p->nidle++;
      }
      pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_lock(&p->mu);
    p->total -= (unsigned)(want - opened);
    if (want > opened) pass_slot(p);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* ---- lifecycle -------------------------------------------------------- */

int tl__pool_new(tl_pool **out, const tl__backend *be, const tl__url *url,
                 const char *role, const tl__db_opts *o)
{
  pthread_once(&m_once, metrics_init);
  tl_pool *p = calloc(1, sizeof *p);
  if (!p) return tl_error_set(TL_ENOMEM, "out of memory");
  p->all = calloc((size_t)o->max_connections, sizeof *p->all);
  if (!p->all) {
    free(p);
    return tl_error_set(TL_ENOMEM, "out of memory");
  }
  p->be = be;
  p->url = url;
  p->o = *o;
  snprintf(p->role, sizeof p->role, "%s", role);
  pthread_mutex_init(&p->mu, NULL);
  tl__cond_init_mono(&p->kcv);

  p->m_in_use = series(m_conns, TL_LABELS(p->o.name, p->role, "in_use"));
  p->m_idle = series(m_conns, TL_LABELS(p->o.name, p->role, "idle"));
  p->m_pending = series(m_pend, TL_LABELS(p->o.name, p->role));
  p->m_acquire = series(m_acq, TL_LABELS(p->o.name, p->role));
  p->m_timeouts = series(m_tmo, TL_LABELS(p->o.name, p->role));

  if (pthread_create(&p->keeper, NULL, keeper_main, p) == 0) p->keeper_on = true;
  pthread_mutex_lock(&g_mu);
  p->gnext = g_pools;
  if (g_pools) g_pools->gprev = p;
  g_pools = p;
  pthread_mutex_unlock(&g_mu);
  *out = p;
  return 0;
}

void tl__pool_free(tl_pool *p)
{
  if (!p) return;
  pthread_mutex_lock(&g_mu);
  if (p->gprev) p->gprev->gnext = p->gnext;
  else g_pools = p->gnext;
  if (p->gnext) p->gnext->gprev = p->gprev;
  pthread_mutex_unlock(&g_mu);

  pthread_mutex_lock(&p->mu);
  p->closed = true;
  for (waiter *w = p->whead; w; w = w->next) pthread_cond_signal(&w->cv);
  pthread_cond_signal(&p->kcv);
  unsigned in_use = p->in_use;
  pthread_mutex_unlock(&p->mu);
  if (p->keeper_on) pthread_join(p->keeper, NULL);
  if (in_use)
    tl_log(TL_LOG_ERROR, "database pool closed with connections in use",
           TL_F_STR("pool", p->o.name), TL_F_STR("role", p->role),
           TL_F_INT("in_use", in_use));
  while (p->idle) {
    tl_conn *c = p->idle;
    p->idle = c->next;
    destroy_conn(c);
  }
  pthread_cond_destroy(&p->kcv);
  pthread_mutex_destroy(&p->mu);
  free(p->all);
  free(p);
}
