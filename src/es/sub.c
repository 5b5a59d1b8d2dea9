/* Subscriptions: a thread per subscription that holds a lease row, reads
 * the log in global order from its stored checkpoint, calls the handler
 * and saves the checkpoint after it succeeded (in the handler's
 * transaction when the subscription is transactional). The lease is
 * renewed as the checkpoint is saved, and every save checks that this
 * replica still owns it, so a replica that lost its lease stops. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "es/es_int.h"

struct tl_es_sub {
  tl_es *es;
  char *name;
  char owner[96];
  tl_es_sub_opts o;
  char *category;
  char **types;
  tl_es_handler handler;
  void *ctx;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop, paused, busy; /* locks: mu */
  bool reload;             /* locks: mu: read the checkpoint again */
  bool leader;             /* locks: mu */
  tl_es_checkpoint cp;     /* locks: mu */
  int64_t lease_until;     /* written by the thread only */
  tl_db_listener *listener; /* PostgreSQL: woken by commits of any process */
  /* Lag gauges, written by the thread only. */
  tl_series *lag_events, *lag_seconds;
  int64_t beyond;          /* visible events after the current batch */
  int64_t counted_at;      /* mono µs of the last count of them */
};

/* Count the lag beyond a full batch at most this often, and this far. */
#define LAG_COUNT_EVERY_US 1000000
#define LAG_COUNT_MAX 100000

static int ensure_row(tl_es *es, const char *name)
{
  const char *sql = es->dialect == TL_DB_MYSQL
    ? "INSERT IGNORE INTO trellis_es_subscriptions (name) VALUES ($1)"
    : "INSERT INTO trellis_es_subscriptions (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
  return tl_db_exec(es->db, NULL, sql, TL_ARGS(tl_text(name)));
}

int tl_es_checkpoint_load(tl_es *es, const char *name, tl_es_checkpoint *out)
{
  if (!es || !name || !out) return tl_error_set(TL_EINVAL, "checkpoint: missing argument");
  *out = (tl_es_checkpoint){ 0, 0 };
  tl_rows *r;
  int rc = tl_db_query(es->db, &r, "SELECT tx, position FROM trellis_es_subscriptions WHERE name = $1",
                       TL_ARGS(tl_text(name)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  if (rc == 1) {
    tl_rows_int(r, 0, &out->tx);
    tl_rows_int(r, 1, &out->position);
  }
  tl_rows_free(r);
  return rc < 0 ? rc : 0;
}

int tl_es_checkpoint_store(tl_es *es, const char *name, const tl_es_checkpoint *cp)
{
  if (!es || !name || !cp) return tl_error_set(TL_EINVAL, "checkpoint: missing argument");
  int rc = ensure_row(es, name);
  if (rc) return rc;
  return tl_db_exec(es->db, NULL, "UPDATE trellis_es_subscriptions SET tx = $1, position = $2, "
                    "updated_us = $3 WHERE name = $4",
                    TL_ARGS(tl_int(cp->tx), tl_int(cp->position), tl_int(tl_time_now_us()),
                            tl_text(name)));
}

/* Take or renew the lease. 1: held, 0: someone else holds it. */
static int lease(tl_es_sub *s)
{
  int64_t now = tl_time_now_us(), n = 0;
  int rc = tl_db_exec(s->es->db, &n, "UPDATE trellis_es_subscriptions SET owner = $1, "
                      "lease_until = $2 WHERE name = $3 AND (owner = $1 OR owner IS NULL OR "
                      "lease_until < $4)",
                      TL_ARGS(tl_text(s->owner), tl_int(now + s->o.lease_us), tl_text(s->name),
                              tl_int(now)));
  if (rc) return rc;
  if (n == 1) s->lease_until = now + s->o.lease_us;
  return n == 1;
}

/* Save the checkpoint (renewing the lease) on `tx` or the pool. */
static int save(tl_es_sub *s, tl_tx *tx, const tl_es_checkpoint *cp)
{
  int64_t now = tl_time_now_us(), n = 0;
  const char *sql = "UPDATE trellis_es_subscriptions SET tx = $1, position = $2, updated_us = $3, "
                    "lease_until = $4 WHERE name = $5 AND owner = $6";
  tl_value args[] = { tl_int(cp->tx), tl_int(cp->position), tl_int(now),
                      tl_int(now + s->o.lease_us), tl_text(s->name), tl_text(s->owner) };
  int rc = tx ? tl_tx_exec(tx, &n, sql, args, 6) : tl_db_exec(s->es->db, &n, sql, args, 6);
  if (rc) return rc;
  if (n != 1) return tl_error_set(TL_ESTATE, "subscription '%s': lease lost", s->name);
  s->lease_until = now + s->o.lease_us;
  return 0;
}

static void set_leader(tl_es_sub *s, bool leader)
{
  pthread_mutex_lock(&s->mu);
  if (s->leader != leader)
    tl_log(TL_LOG_INFO, leader ? "subscription lease taken" : "subscription lease lost",
           TL_F_STR("subscription", s->name), TL_F_STR("owner", s->owner));
  s->leader = leader;
  pthread_mutex_unlock(&s->mu);
}

/* Sleep up to `us`, waking early on a local append or stop. Returns
 * false when stopping. */
static bool stopped(tl_es_sub *s)
{
  pthread_mutex_lock(&s->mu);
  bool stop = s->stop;
  pthread_mutex_unlock(&s->mu);
  return stop;
}

/* Wait up to `us` on PostgreSQL's notifications of commits by any process,
 * in slices so a stop is seen promptly. Returns 1 on a notification, or
 * when the listener's connection was lost (events may have been missed,
 * so read again); 0 after the whole wait. */
static int wait_listener(tl_es_sub *s, int64_t us)
{
  int64_t deadline = tl_time_mono_us() + us;
  for (;;) {
    int64_t left = deadline - tl_time_mono_us();
    if (left <= 0 || stopped(s))
      return 0;
    char payload[8];
    int rc = tl_db_listener_wait(s->listener, left < 50000 ? left : 50000, payload, sizeof payload);
    if (rc != 0) /* 1: notified; < 0: lost, so read again */
      return 1;
  }
}

/* How many appends this process has committed; read before reading the
 * log, so that a wait after the read wakes for an append in between. */
static uint64_t appends_so_far(tl_es *es)
{
  pthread_mutex_lock(&es->mu);
  uint64_t seq = es->append_seq;
  pthread_mutex_unlock(&es->mu);
  return seq;
}

/* Wait up to `us` for an append after `seq` (in this process, or by any
 * process on PostgreSQL). Returns -1 when the subscription is stopping,
 * 1 when an append woke it, 0 after the whole wait. */
static int wait_for(tl_es_sub *s, int64_t us, uint64_t seq)
{
  tl_es *es = s->es;
  int woken = 0;
  if (s->listener) {
    woken = wait_listener(s, us);
    return stopped(s) ? -1 : woken;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t ns = (int64_t)ts.tv_nsec + us * 1000;
  ts.tv_sec += (time_t)(ns / 1000000000);
  ts.tv_nsec = (long)(ns % 1000000000);
  pthread_mutex_lock(&es->mu);
  while (es->append_seq == seq) {
    if (stopped(s)) break;
    /* Short slices so a stop is seen promptly. */
    struct timespec slice;
    clock_gettime(CLOCK_REALTIME, &slice);
    int64_t sns = (int64_t)slice.tv_nsec + 20000000;
    slice.tv_sec += (time_t)(sns / 1000000000);
    slice.tv_nsec = (long)(sns % 1000000000);
    if (slice.tv_sec > ts.tv_sec || (slice.tv_sec == ts.tv_sec && slice.tv_nsec > ts.tv_nsec))
      slice = ts;
    if (pthread_cond_timedwait(&es->appended, &es->mu, &slice) != 0 &&
        (slice.tv_sec == ts.tv_sec && slice.tv_nsec == ts.tv_nsec))
      break;
  }
  woken = es->append_seq != seq;
  pthread_mutex_unlock(&es->mu);
  return stopped(s) ? -1 : woken;
}

/* Before handling list->events[i]: the events left (this one, the rest
 * of the batch, what is beyond it) and the age of this one, the oldest
 * not handled. */
static void lag_at(tl_es_sub *s, const tl_event_list *list, size_t i)
{
  tl_series_set(s->lag_events, (double)(list->count - i + (size_t)s->beyond));
  int64_t age = tl_time_now_us() - list->events[i].timestamp_us;
  tl_series_set(s->lag_seconds, age > 0 ? (double)age / 1e6 : 0.0);
}

static void lag_zero(tl_es_sub *s)
{
  s->beyond = 0;
  tl_series_set(s->lag_events, 0);
  tl_series_set(s->lag_seconds, 0);
}

/* A read returned `list`: estimate what is visible beyond it. A short
 * batch means nothing; after a full one, count (capped) at most once a
 * second, and in between take the batch off the last count. */
static void lag_beyond(tl_es_sub *s, const tl_es_filter *f, const tl_event_list *list)
{
  if (list->count < s->o.batch) {
    s->beyond = 0;
    return;
  }
  int64_t now = tl_time_mono_us();
  if (s->counted_at && now - s->counted_at < LAG_COUNT_EVERY_US) {
    s->beyond = s->beyond > (int64_t)list->count ? s->beyond - (int64_t)list->count : 0;
    return;
  }
  s->counted_at = now;
  char inner[4096], sql[4200];
  tl_value args[72];
  size_t nargs;
  if (tl__es_all_sql(s->es, "1", f, inner, sizeof inner, args, &nargs, 72) != 0) return;
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM (%s) AS beyond", inner);
  const tl_event *last = &list->events[list->count - 1];
  args[0] = tl_int(last->tx);
  args[1] = tl_int(last->position);
  args[2] = tl_int(LAG_COUNT_MAX);
  tl_rows *r;
  if (tl_db_query(s->es->db, &r, sql, args, nargs) != 0) return;
  if (tl_rows_next(r) == 1) tl_rows_int(r, 0, &s->beyond);
  tl_rows_free(r);
}

typedef struct batch_ctx {
  tl_es_sub *s;
  tl_event_list *list;
  tl_es_checkpoint next;
} batch_ctx;

/* One batch in one transaction with its checkpoint. */
static int run_tx_batch(tl_es_sub *s, tl_event_list *list, tl_es_checkpoint *next)
{
  tl_tx *tx;
  int rc = tl_db_begin(s->es->db, &tx);
  if (rc) return rc;
  for (size_t i = 0; i < list->count && rc == 0; i++) {
    lag_at(s, list, i);
    rc = s->handler(&list->events[i], tx, s->ctx);
    if (rc) tl_log(TL_LOG_WARN, "subscription handler failed", TL_F_STR("subscription", s->name),
                   TL_F_INT("position", list->events[i].position), TL_F_INT("status", rc));
  }
  tl_es_checkpoint cp = { list->events[list->count - 1].tx, list->events[list->count - 1].position };
  if (rc == 0) rc = save(s, tx, &cp);
  if (rc) {
    tl_tx_rollback(tx);
    return rc;
  }
  rc = tl_tx_commit(tx);
  if (rc == 0) *next = cp;
  return rc;
}

/* Events one by one; the checkpoint after the batch or the last success. */
static int run_batch(tl_es_sub *s, tl_event_list *list, tl_es_checkpoint *next)
{
  tl_es_checkpoint cp = *next;
  int rc = 0;
  for (size_t i = 0; i < list->count; i++) {
    lag_at(s, list, i);
    rc = s->handler(&list->events[i], NULL, s->ctx);
    if (rc) {
      tl_log(TL_LOG_WARN, "subscription handler failed", TL_F_STR("subscription", s->name),
             TL_F_INT("position", list->events[i].position), TL_F_INT("status", rc));
      break;
    }
    cp = (tl_es_checkpoint){ list->events[i].tx, list->events[i].position };
  }
  if (tl_es_checkpoint_cmp(&cp, next) != 0) {
    int src = save(s, NULL, &cp);
    if (src == 0) *next = cp;
    else if (!rc) rc = src;
  }
  return rc;
}

static void *sub_main(void *arg)
{
  tl_es_sub *s = arg;
  tl_es *es = s->es;
  int64_t idle = s->o.poll_min_us;
  /* After a wake that found nothing (on PostgreSQL the commit can still be
   * above the horizon of an older transaction), the next looks come
   * quickly: 1 ms, doubling up to poll_min. */
  int64_t recheck = 0;
  bool have_cp = false;
  tl_es_checkpoint cp = { 0, 0 };
  for (;;) {
    pthread_mutex_lock(&s->mu);
    bool stop = s->stop, paused = s->paused;
    if (!stop && !paused) s->busy = true;
    if (!paused && s->reload) {
      s->reload = false;
      have_cp = false;
    }
    pthread_mutex_unlock(&s->mu);
    if (stop) break;
    bool leader = s->leader;
    int64_t now = tl_time_now_us();
    if (!leader || paused || s->lease_until - now < s->o.lease_us / 2) {
      if (ensure_row(es, s->name) == 0) {
        int got = lease(s);
        if (got == 1 && !leader) have_cp = false; /* reload: another may have advanced it */
        set_leader(s, got == 1);
      }
    }
    if (paused || !s->leader) {
      lag_zero(s); /* the replica holding the lease reports it */
      pthread_mutex_lock(&s->mu);
      s->busy = false;
      pthread_cond_broadcast(&s->cv);
      pthread_mutex_unlock(&s->mu);
      if (wait_for(s, paused ? s->o.lease_us / 4 : s->o.lease_us / 4 + 1, appends_so_far(es)) < 0)
        break;
      continue;
    }
    if (!have_cp) {
      if (tl_es_checkpoint_load(es, s->name, &cp) == 0) {
        have_cp = true;
        pthread_mutex_lock(&s->mu);
        s->cp = cp;
        pthread_mutex_unlock(&s->mu);
      }
    }
    uint64_t seq = appends_so_far(es);
    tl_event_list *list = NULL;
    const char *const *types = (const char *const *)s->types;
    tl_es_filter f = { .category = s->category, .types = types, .ntypes = s->o.filter.ntypes };
    int rc = have_cp ? tl_es_read_all(es, &cp, &f, s->o.batch, &list) : TL_ERETRY;
    int64_t delay = 0;
    if (rc == 0 && list->count > 0) {
      lag_beyond(s, &f, list);
      tl_es_checkpoint next = cp;
      rc = s->o.transactional ? run_tx_batch(s, list, &next) : run_batch(s, list, &next);
      cp = next;
      pthread_mutex_lock(&s->mu);
      s->cp = cp;
      pthread_mutex_unlock(&s->mu);
      if (rc == TL_ESTATE) set_leader(s, false);
      if (rc == 0 && s->beyond == 0) lag_zero(s);
      delay = rc ? s->o.retry_us : 0;
      idle = s->o.poll_min_us;
      recheck = 0;
    } else if (rc == 0 && recheck > 0 && recheck < idle) {
      delay = recheck;
      recheck *= 2;
    } else if (rc == 0) {
      lag_zero(s);
      delay = idle;
      idle = idle * 2 > s->o.poll_max_us ? s->o.poll_max_us : idle * 2;
      recheck = 0;
    } else {
      delay = s->o.retry_us;
    }
    tl_event_list_free(list);
    pthread_mutex_lock(&s->mu);
    s->busy = false;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (delay > 0) {
      int w = wait_for(s, delay, seq);
      if (w < 0) break;
      /* Something committed. On PostgreSQL it may still be beyond the
       * horizon (an older transaction is running): look again soon
       * rather than after a long idle backoff (recheck). */
      if (w > 0) {
        idle = s->o.poll_min_us;
        recheck = 1000;
      }
    }
  }
  lag_zero(s);
  if (s->leader) {
    /* Hand the lease over at once instead of making others wait. */
    tl_db_exec(es->db, NULL, "UPDATE trellis_es_subscriptions SET owner = NULL, lease_until = 0 "
               "WHERE name = $1 AND owner = $2", TL_ARGS(tl_text(s->name), tl_text(s->owner)));
  }
  pthread_mutex_lock(&s->mu);
  s->busy = false;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static void sub_free(tl_es_sub *s)
{
  if (!s) return;
  free(s->name);
  free(s->category);
  for (size_t i = 0; s->types && i < s->o.filter.ntypes; i++) free(s->types[i]);
  free(s->types);
  tl_db_listener_close(s->listener);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

int tl_es_subscribe(tl_es *es, const tl_es_sub_opts *opts, tl_es_handler handler, void *ctx,
                    tl_es_sub **out)
{
  if (!es || !opts || !handler || !out || !opts->name || !*opts->name)
    return tl_error_set(TL_EINVAL, "subscribe: a store, a name and a handler are required");
  if (strlen(opts->name) > TL_ES_NAME_MAX)
    return tl_error_set(TL_EINVAL, "subscribe: name longer than %d bytes", TL_ES_NAME_MAX);
  if (opts->filter.ntypes > 64) return tl_error_set(TL_EINVAL, "subscribe: more than 64 types");
  *out = NULL;
  tl_es_sub *s = calloc(1, sizeof *s);
  if (!s) return tl_error_set(TL_ENOMEM, "subscribe: out of memory");
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->es = es;
  s->o = *opts;
  s->handler = handler;
  s->ctx = ctx;
  if (!s->o.batch) s->o.batch = 256;
  if (s->o.lease_us <= 0) s->o.lease_us = 10000000;
  if (s->o.poll_min_us <= 0) s->o.poll_min_us = 5000;
  if (s->o.poll_max_us <= 0) s->o.poll_max_us = 500000;
  if (s->o.poll_max_us < s->o.poll_min_us) s->o.poll_max_us = s->o.poll_min_us;
  if (s->o.retry_us <= 0) s->o.retry_us = 100000;
  char host[64] = "host";
  gethostname(host, sizeof host - 1);
  char uuid[TL_UUID_STRLEN];
  tl_uuid7(uuid);
  snprintf(s->owner, sizeof s->owner, "%.40s-%d-%.12s", host, (int)getpid(), uuid + 24);
  /* Listen before the first read, so no commit falls between the two. */
  if (es->dialect == TL_DB_POSTGRES && tl_db_listen(es->db, "trellis_es", &s->listener) != 0)
    tl_log(TL_LOG_WARN, "subscription polls: cannot listen for appends",
           TL_F_STR("subscription", opts->name), TL_F_STR("error", tl_error_last()));
  s->name = strdup(opts->name);
  if (s->name && es->m_lag_events) {
    s->lag_events = tl_metric_series(es->m_lag_events, TL_LABELS(s->name));
    s->lag_seconds = tl_metric_series(es->m_lag_seconds, TL_LABELS(s->name));
  }
  s->category = opts->filter.category ? strdup(opts->filter.category) : NULL;
  bool oom = !s->name || (opts->filter.category && !s->category);
  if (opts->filter.ntypes) {
    s->types = calloc(opts->filter.ntypes, sizeof *s->types);
    oom = oom || !s->types;
    for (size_t i = 0; s->types && i < opts->filter.ntypes; i++) {
      s->types[i] = strdup(opts->filter.types[i]);
      oom = oom || !s->types[i];
    }
  }
  if (oom) {
    sub_free(s);
    return tl_error_set(TL_ENOMEM, "subscribe: out of memory");
  }
  int rc = ensure_row(es, s->name);
  if (rc) {
    sub_free(s);
    return rc;
  }
  if (pthread_create(&s->thread, NULL, sub_main, s) != 0) {
    sub_free(s);
    return tl_error_set(TL_ENOMEM, "subscribe '%s': cannot start a thread", opts->name);
  }
  *out = s;
  return 0;
}

void tl_es_sub_stop(tl_es_sub *sub)
{
  if (!sub) return;
  pthread_mutex_lock(&sub->mu);
  sub->stop = true;
  pthread_mutex_unlock(&sub->mu);
  pthread_mutex_lock(&sub->es->mu);
  pthread_cond_broadcast(&sub->es->appended);
  pthread_mutex_unlock(&sub->es->mu);
  pthread_join(sub->thread, NULL);
  sub_free(sub);
}

void tl_es_sub_checkpoint(tl_es_sub *sub, tl_es_checkpoint *out)
{
  pthread_mutex_lock(&sub->mu);
  *out = sub->cp;
  pthread_mutex_unlock(&sub->mu);
}

bool tl_es_sub_is_leader(tl_es_sub *sub)
{
  pthread_mutex_lock(&sub->mu);
  bool l = sub->leader;
  pthread_mutex_unlock(&sub->mu);
  return l;
}

void tl_es_sub_pause(tl_es_sub *sub, bool paused)
{
  pthread_mutex_lock(&sub->mu);
  sub->paused = paused;
  if (!paused) sub->reload = true;
  while (paused && sub->busy) pthread_cond_wait(&sub->cv, &sub->mu);
  pthread_mutex_unlock(&sub->mu);
}
