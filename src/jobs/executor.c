/* The job executor: worker threads that fetch from the store and run the
 * worker registered for each kind, and one timer thread for timeouts,
 * lease renewal, lease recovery, cron schedules and gauges.
 *
 * The store does the ordering; the executor decides what an attempt's
 * result means (done, retry after a backoff, discard, snooze, cancelled).
 * Waits are on real time, computed from the configured clock and capped
 * by poll_us, so a fake clock only needs tl_jobs_wake() after a move. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include "core/core_int.h"
#include "jobs_int.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/resilience.h"

#define MAX_KINDS 256
#define KIND_SLOTS 512 /* open addressing, twice MAX_KINDS */
#define MAX_WORKERS 1024
#define MAX_AGED 256 /* queues tracked by trellis_jobs_oldest_pending_age_seconds */

enum { O_COMPLETED, O_RETRIED, O_DISCARDED, O_CANCELLED, O_SNOOZED, O_LOST, O_COUNT };
static const char *const outcome_names[O_COUNT] = { "completed", "retried", "discarded",
                                                    "cancelled", "snoozed", "lost" };

typedef struct kind {
  char name[65];
  tl_worker w;            /* w.kind points at name */
  int max_retries;        /* resolved: -1 means none */
  tl_backoff backoff;
  int64_t timeout_us;     /* 0: none */
  unsigned running;       /* locks: cap_mu; only with a concurrency limit */
  tl_series *submitted, *run_seconds, *outcome[O_COUNT];
} kind;

typedef struct slot {
  pthread_mutex_t mu;     /* guards busy, job and deadline against the timer */
  bool busy;
  tl__job job;
  int64_t fetched_at;     /* executor clock */
  int64_t deadline;       /* executor clock; INT64_MAX: none */
  pthread_t th;
  bool started;
  struct tl_jobs *ex;
} __attribute__((aligned(64))) slot;

struct tl_job_ctx {
  tl_jobs *ex;
  const kind *k;
  const tl__job *job;
  int64_t snooze_us;
  bool has_err;
  char err[512];
};

struct tl_jobs {
  tl__jobs_store *store;
  tl_clock_fn clock;
  void *clock_ctx;
  unsigned nworkers;
  int64_t poll_us, shutdown_us, lease_us;
  char **queues;          /* NULL: every queue */
  size_t nqueues;
  char *cron_tz;
  tl_metrics *metrics;
  tl_metric *m_submitted, *m_finished, *m_run, *m_depth, *m_oldest, *m_cron_missed;
  tl_series *depth[4];
  /* Queues the oldest-pending gauge has shown, set to 0 when they have
   * no due job (timer thread only). */
  tl_series *aged[MAX_AGED];
  char *aged_names[MAX_AGED];
  size_t naged;

  pthread_mutex_t mu;     /* registration, sleeping workers, lifecycle */
  kind *kinds[MAX_KINDS];
  _Atomic(kind *) khash[KIND_SLOTS];
  size_t nkinds;
  /* The registered kinds' names, for fetches: a fetch takes only these,
   * since a shared store also holds jobs for other programs' kinds. The
   * count is published after the name (release); names never change. */
  const char *names[MAX_KINDS];
  atomic_size_t nnames;
  atomic_bool any_caps;
  pthread_mutex_t cap_mu; /* per-kind running counts, at_cap */
  const char *at_cap[MAX_KINDS];
  size_t nat_cap;

  slot *slots;
  pthread_cond_t work_cv;
  atomic_uint idle;
  atomic_bool paused, stopping, closed;
  unsigned alive;         /* workers in their loop; locks: mu */
  pthread_cond_t done_cv;
  bool shutting, shut;
  int shutdown_rc;

  bool durable;           /* the store is shared through a database */
  tl_jobs_cron_missed cron_missed;

  pthread_t timer;
  bool timer_started, timer_stop, timer_kick;
  pthread_cond_t timer_cv;
  tl__sched *sched;
};

/* ---- small helpers --------------------------------------------------------- */

static int64_t now_of(tl_jobs *ex)
{
  return ex->clock(ex->clock_ctx);
}

int64_t tl__jobs_now(tl_jobs *ex)
{
  return now_of(ex);
}

bool tl__jobs_name_ok(const char *s)
{
  size_t n = 0;
  if (!s)
    return false;
  for (; s[n]; n++) {
    char c = s[n];
    if (n >= 64 || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' || c == '-'))
      return false;
  }
  return n > 0;
}

static int64_t sat_add(int64_t a, int64_t b)
{
  if (b > 0 && a > INT64_MAX - b)
    return INT64_MAX;
  if (b < 0 && a < INT64_MIN - b)
    return INT64_MIN;
  return a + b;
}

/* Absolute CLOCK_MONOTONIC time `us` from now, for condition waits. */
static struct timespec mono_in(int64_t us)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t ns = (int64_t)ts.tv_nsec + (us % 1000000) * 1000;
  ts.tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
  ts.tv_nsec = (long)(ns % 1000000000);
  return ts;
}


/* New work is there: let one sleeping worker look, or all of them. */
static void wake_idle(tl_jobs *ex, bool all)
{
  /* Paused workers would only look and sleep again; resuming wakes them. */
  if (atomic_load_explicit(&ex->idle, memory_order_seq_cst) &&
      !atomic_load_explicit(&ex->paused, memory_order_relaxed)) {
    pthread_mutex_lock(&ex->mu);
    if (all)
      pthread_cond_broadcast(&ex->work_cv);
    else
      pthread_cond_signal(&ex->work_cv);
    pthread_mutex_unlock(&ex->mu);
  }
}

/* Another process made jobs runnable (the store's listener thread). */
static void wake_all(void *p)
{
  wake_idle(p, true);
}

/* ---- JSON check --------------------------------------------------------------- */

typedef struct jscan {
  const char *p, *e;
} jscan;

static void jws(jscan *j)
{
  while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
    j->p++;
}

static bool jlit(jscan *j, const char *lit, size_t n)
{
  if ((size_t)(j->e - j->p) < n || memcmp(j->p, lit, n) != 0)
    return false;
  j->p += n;
  return true;
}

static bool jdigits(jscan *j)
{
  const char *s = j->p;
  while (j->p < j->e && *j->p >= '0' && *j->p <= '9')
    j->p++;
  return j->p > s;
}

static bool jstring(jscan *j)
{
  j->p++; /* the opening quote */
  while (j->p < j->e) {
    unsigned char c = (unsigned char)*j->p;
    if (c == '"') {
      j->p++;
      return true;
    }
    if (c < 0x20)
      return false;
    if (c == '\\') {
      if (++j->p >= j->e)
        return false;
      if (*j->p == 'u') {
        for (int i = 1; i <= 4; i++) {
          char h = j->p + i < j->e ? j->p[i] : 0;
          if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F')))
            return false;
        }
        j->p += 4;
      } else if (!strchr("\"\\/bfnrt", *j->p) || !*j->p) {
        return false;
      }
    }
    j->p++;
  }
  return false;
}

static bool jvalue(jscan *j, int depth)
{
  jws(j);
  if (j->p >= j->e || depth > 64)
    return false;
  switch (*j->p) {
  case '{':
  case '[': {
    char close = *j->p == '{' ? '}' : ']';
    bool obj = close == '}';
    j->p++;
    jws(j);
    if (j->p < j->e && *j->p == close) {
      j->p++;
      return true;
    }
    for (;;) {
      if (obj) {
        jws(j);
        if (j->p >= j->e || *j->p != '"' || !jstring(j))
          return false;
        jws(j);
        if (j->p >= j->e || *j->p != ':')
          return false;
        j->p++;
      }
      if (!jvalue(j, depth + 1))
        return false;
      jws(j);
      if (j->p < j->e && *j->p == ',') {
        j->p++;
        continue;
      }
      if (j->p < j->e && *j->p == close) {
        j->p++;
        return true;
      }
      return false;
    }
  }
  case '"':
    return jstring(j);
  case 't':
    return jlit(j, "true", 4);
  case 'f':
    return jlit(j, "false", 5);
  case 'n':
    return jlit(j, "null", 4);
  default:
    if (*j->p == '-')
      j->p++;
    if (j->p < j->e && *j->p == '0')
      j->p++;
    else if (!jdigits(j))
      return false;
    if (j->p < j->e && *j->p == '.') {
      j->p++;
      if (!jdigits(j))
        return false;
    }
    if (j->p < j->e && (*j->p == 'e' || *j->p == 'E')) {
      j->p++;
      if (j->p < j->e && (*j->p == '+' || *j->p == '-'))
        j->p++;
      if (!jdigits(j))
        return false;
    }
    return true;
  }
}

bool tl__json_valid(const char *s, size_t n, size_t *bad_at)
{
  jscan j = { s, s + n };
  bool ok = jvalue(&j, 0);
  if (ok) {
    jws(&j);
    ok = j.p == j.e;
  }
  if (!ok && bad_at)
    *bad_at = (size_t)(j.p - s);
  return ok;
}

/* ---- job info snapshots ---------------------------------------------------------- */

static size_t slen(const char *s)
{
  return s ? strlen(s) + 1 : 0;
}

size_t tl__job_info_strsize(const tl_job_info *src)
{
  return slen(src->kind) + slen(src->queue) + slen(src->args) + slen(src->unique_key) +
         slen(src->last_error);
}

static const char *put(const char *s, char **cur)
{
  if (!s)
    return NULL;
  size_t n = strlen(s) + 1;
  char *d = *cur;
  memcpy(d, s, n);
  *cur += n;
  return d;
}

void tl__job_info_copy(tl_job_info *dst, const tl_job_info *src, char **cursor)
{
  *dst = *src;
  dst->kind = put(src->kind, cursor);
  dst->queue = put(src->queue, cursor);
  dst->args = put(src->args, cursor);
  dst->unique_key = put(src->unique_key, cursor);
  dst->last_error = put(src->last_error, cursor);
}

void tl_job_info_free(tl_job_info *info)
{
  free(info);
}

void tl_job_list_free(tl_job_list *list)
{
  free(list);
}

const char *tl_job_state_name(tl_job_state state)
{
  switch (state) {
  case TL_JOB_PENDING:
    return "pending";
  case TL_JOB_RUNNING:
    return "running";
  case TL_JOB_COMPLETED:
    return "completed";
  case TL_JOB_DISCARDED:
    return "discarded";
  case TL_JOB_CANCELLED:
    return "cancelled";
  }
  return "unknown";
}

/* ---- kinds --------------------------------------------------------------------- */

static size_t name_hash(const char *s)
{
  uint64_t h = 1469598103934665603u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211u;
  return (size_t)(h ^ (h >> 29));
}

/* Lock-free: kinds are published with release stores and never removed. */
static kind *kind_find(tl_jobs *ex, const char *name)
{
  for (size_t i = name_hash(name) & (KIND_SLOTS - 1);; i = (i + 1) & (KIND_SLOTS - 1)) {
    kind *k = atomic_load_explicit(&ex->khash[i], memory_order_acquire);
    if (!k)
      return NULL;
    if (!strcmp(k->name, name))
      return k;
  }
}

bool tl__jobs_has_kind(tl_jobs *ex, const char *kind_name)
{
  return kind_name && kind_find(ex, kind_name) != NULL;
}

int tl_jobs_register(tl_jobs *ex, const tl_worker *w)
{
  if (!ex || !w)
    return tl_error_set(TL_EINVAL, "tl_jobs_register: NULL argument");
  if (!tl__jobs_name_ok(w->kind))
    return tl_error_set(TL_EINVAL, "worker kind '%.64s': must be 1-64 of A-Z a-z 0-9 _ . : -",
                        w->kind ? w->kind : "(null)");
  if (!w->execute)
    return tl_error_set(TL_EINVAL, "worker '%s': execute is NULL", w->kind);
  if (w->retry_delay_ms < 0 || w->retry_cap_ms < 0 || w->timeout_ms < 0 ||
      w->retry_delay_ms > INT64_MAX / 1000 || w->retry_cap_ms > INT64_MAX / 1000 ||
      w->timeout_ms > INT64_MAX / 1000)
    return tl_error_set(TL_EINVAL, "worker '%s': retry_delay_ms, retry_cap_ms and timeout_ms "
                        "must be 0 or more", w->kind);
  kind *k = calloc(1, sizeof *k);
  if (!k)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  snprintf(k->name, sizeof k->name, "%s", w->kind);
  k->w = *w;
  k->w.kind = k->name;
  k->max_retries = w->max_retries < 0 ? -1 : w->max_retries ? w->max_retries : 3;
  k->backoff = (tl_backoff){ .base_us = (w->retry_delay_ms ? w->retry_delay_ms : 1000) * 1000,
                             .cap_us = (w->retry_cap_ms ? w->retry_cap_ms : 3600000) * 1000,
                             .multiplier = 2.0 };
  k->timeout_us = w->timeout_ms * 1000;
  k->submitted = tl_metric_series(ex->m_submitted, TL_LABELS(k->name));
  k->run_seconds = tl_metric_series(ex->m_run, TL_LABELS(k->name));
  for (int o = 0; o < O_COUNT; o++)
    k->outcome[o] = tl_metric_series(ex->m_finished, TL_LABELS(k->name, outcome_names[o]));

  pthread_mutex_lock(&ex->mu);
  int rc = 0;
  if (ex->shutting)
    rc = tl_error_set(TL_ECLOSED, "jobs: shut down");
  else if (kind_find(ex, k->name))
    rc = tl_error_set(TL_ECONFLICT, "worker '%s': kind already registered", k->name);
  else if (ex->nkinds == MAX_KINDS)
    rc = tl_error_set(TL_ETOOBIG, "worker '%s': more than %d kinds", k->name, MAX_KINDS);
  if (rc) {
    pthread_mutex_unlock(&ex->mu);
    free(k);
    return rc;
  }
  ex->kinds[ex->nkinds] = k;
  ex->names[ex->nkinds++] = k->name;
  atomic_store_explicit(&ex->nnames, ex->nkinds, memory_order_release);
  if (k->w.max_concurrency)
    atomic_store(&ex->any_caps, true);
  size_t i = name_hash(k->name) & (KIND_SLOTS - 1);
  while (atomic_load_explicit(&ex->khash[i], memory_order_relaxed))
    i = (i + 1) & (KIND_SLOTS - 1);
  atomic_store_explicit(&ex->khash[i], k, memory_order_release);
  pthread_cond_broadcast(&ex->work_cv); /* jobs of this kind may be waiting */
  pthread_mutex_unlock(&ex->mu);
  return 0;
}

/* ---- the job context -------------------------------------------------------------- */

int64_t tl_job_id(const tl_job_ctx *ctx)
{
  return ctx->job->id;
}

const char *tl_job_kind(const tl_job_ctx *ctx)
{
  return ctx->k->name;
}

const char *tl_job_queue(const tl_job_ctx *ctx)
{
  return ctx->job->queue;
}

unsigned tl_job_attempt(const tl_job_ctx *ctx)
{
  return ctx->job->attempt;
}

int64_t tl_job_scheduled_at(const tl_job_ctx *ctx)
{
  return ctx->job->run_at_us;
}

void *tl_job_worker_ctx(const tl_job_ctx *ctx)
{
  return ctx->k->w.ctx;
}

bool tl_job_cancelled(const tl_job_ctx *ctx)
{
  return atomic_load_explicit(ctx->job->cancel, memory_order_relaxed) != 0;
}

static void ctx_msg(tl_job_ctx *ctx, const char *fmt, va_list ap)
{
  vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
  ctx->has_err = true;
}

int tl_job_error(tl_job_ctx *ctx, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  ctx_msg(ctx, fmt, ap);
  va_end(ap);
  return TL_JOB_RETRY;
}

int tl_job_discard(tl_job_ctx *ctx, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  ctx_msg(ctx, fmt, ap);
  va_end(ap);
  return TL_JOB_DISCARD;
}

int tl_job_snooze(tl_job_ctx *ctx, int64_t delay_us)
{
  ctx->snooze_us = delay_us > 0 ? delay_us : 0;
  return TL_JOB_SNOOZE;
}

/* ---- workers ---------------------------------------------------------------------- */

/* Fetch one job into the slot, first completing `done` (NULL: none) in
 * the same step. `now` is the clock's value, or 0 to read it. Returns 1,
 * 0 (none) or a status. */
static int take(tl_jobs *ex, slot *sl, tl__job *done, int64_t now)
{
  if (!now)
    now = now_of(ex);
  tl__fetch f = { .now_us = now, .lease_until_us = sat_add(now, ex->lease_us),
                  .queues = (const char *const *)ex->queues, .nqueues = ex->nqueues,
                  .kinds = ex->names,
                  .nkinds = atomic_load_explicit(&ex->nnames, memory_order_acquire),
                  .done = done };
  tl__job job;
  int rc;
  kind *k = NULL;
  if (atomic_load_explicit(&ex->any_caps, memory_order_relaxed)) {
    pthread_mutex_lock(&ex->cap_mu);
    f.exclude_kinds = ex->at_cap;
    f.nexclude = ex->nat_cap;
    rc = ex->store->ops->fetch(ex->store, &f, &job);
    if (rc == 1 && (k = kind_find(ex, job.kind)) && k->w.max_concurrency &&
        ++k->running == k->w.max_concurrency)
      ex->at_cap[ex->nat_cap++] = k->name;
    pthread_mutex_unlock(&ex->cap_mu);
  } else {
    rc = ex->store->ops->fetch(ex->store, &f, &job);
    if (rc == 1)
      k = kind_find(ex, job.kind);
  }
  if (rc != 1)
    return rc;
  pthread_mutex_lock(&sl->mu);
  sl->job = job;
  sl->busy = true;
  sl->fetched_at = now;
  sl->deadline = k && k->timeout_us ? sat_add(now, k->timeout_us) : INT64_MAX;
  pthread_mutex_unlock(&sl->mu);
  return 1;
}

/* A capped kind has a free slot again: let a sleeping worker look. */
static void cap_release(tl_jobs *ex, kind *k)
{
  pthread_mutex_lock(&ex->cap_mu);
  if (k->running-- == k->w.max_concurrency) {
    for (size_t i = 0; i < ex->nat_cap; i++) {
      if (ex->at_cap[i] == k->name) {
        ex->at_cap[i] = ex->at_cap[--ex->nat_cap];
        break;
      }
    }
  }
  pthread_mutex_unlock(&ex->cap_mu);
  wake_idle(ex, false);
}

/* Run the slot's job and record its result. A plain completion (no
 * unique key to give back) is left in *done for the next fetch to
 * record; returns true then. With the wall clock, *end gets the time the
 * run ended (the next fetch's "now": it is a few instructions old). */
static bool run(tl_jobs *ex, slot *sl, tl__job *done, int64_t *end)
{
  *end = 0;
  tl__job *j = &sl->job;
  bool deferred = false;
  kind *k = kind_find(ex, j->kind);
  const tl__jobs_store_ops *ops = ex->store->ops;
  if (!k) {
    /* Only a store shared with other programs can hold such a job. */
    pthread_mutex_lock(&sl->mu);
    sl->busy = false;
    pthread_mutex_unlock(&sl->mu);
    char msg[128];
    snprintf(msg, sizeof msg, "no worker registered for kind '%s'", j->kind);
    ops->discard(ex->store, j, now_of(ex), TL_JOB_DISCARDED, msg);
    return false;
  }
  tl_job_ctx ctx = { .ex = ex, .k = k, .job = j };
  tl_error_clear();
  /* With the wall clock, the fetch time starts the run and one read ends
   * it; another clock (a fake one) says nothing about durations. */
  bool wall = ex->clock == tl_clock_wall;
  int64_t t0 = wall ? sl->fetched_at : tl_time_mono_us();
  int rc = k->w.execute(j->args, &ctx);
  int64_t t1 = wall ? tl_time_now_us() : tl_time_mono_us();
  tl_series_observe(k->run_seconds, t1 > t0 ? (double)(t1 - t0) / 1e6 : 0.0);
  int64_t now = wall ? t1 : now_of(ex);
  if (wall)
    *end = t1;
  pthread_mutex_lock(&sl->mu);
  int64_t deadline = sl->deadline;
  sl->busy = false;
  pthread_mutex_unlock(&sl->mu);

  int cancel = atomic_load(j->cancel), outcome, src;
  char buf[600];
  const char *err = ctx.has_err ? ctx.err : NULL;
  bool timed_out = (cancel & TL__CANCEL_TIMEOUT) || now >= deadline;
  if ((cancel & TL__CANCEL_USER) && rc != TL_JOB_OK) {
    outcome = O_CANCELLED;
    src = ops->discard(ex->store, j, now, TL_JOB_CANCELLED, err ? err : "cancelled");
  } else if (!timed_out && rc == TL_JOB_OK) {
    outcome = O_COMPLETED;
    if (!j->unique_key) {
      *done = *j;
      deferred = true;
      src = 0;
    } else {
      src = ops->complete(ex->store, j, now);
    }
  } else if (!timed_out && rc == TL_JOB_SNOOZE) {
    outcome = O_SNOOZED;
    src = ops->snooze(ex->store, j, sat_add(now, ctx.snooze_us ? ctx.snooze_us : 1000000));
  } else {
    if (timed_out) {
      snprintf(buf, sizeof buf, "timed out after %lld ms", (long long)(k->timeout_us / 1000));
      err = buf;
    } else if (!err && rc < 0) {
      const char *last = tl_error_last();
      snprintf(buf, sizeof buf, "%s: %s", tl_status_name(rc), *last ? last : tl_strerror(rc));
      err = buf;
    } else if (!err) {
      snprintf(buf, sizeof buf, rc == TL_JOB_DISCARD ? "discarded by the worker"
                                                     : "failed (returned %d)", rc);
      err = buf;
    }
    bool retry = !timed_out && rc == TL_JOB_DISCARD ? false
                 : j->max_retries >= 0 && j->attempt <= (unsigned)j->max_retries;
    if (retry) {
      outcome = O_RETRIED;
      int64_t delay = tl_backoff_delay(&k->backoff, j->attempt - 1);
      tl_log(TL_LOG_DEBUG, "job failed, will retry", TL_F_INT("job_id", j->id),
             TL_F_STR("kind", k->name), TL_F_INT("attempt", j->attempt),
             TL_F_INT("retry_in_ms", delay / 1000), TL_F_STR("error", err));
      src = ops->fail(ex->store, j, now, sat_add(now, delay), err);
    } else {
      outcome = O_DISCARDED;
      tl_log(TL_LOG_WARN, "job discarded", TL_F_INT("job_id", j->id),
             TL_F_STR("kind", k->name), TL_F_INT("attempt", j->attempt),
             TL_F_STR("error", err));
      src = ops->discard(ex->store, j, now, TL_JOB_DISCARDED, err);
    }
  }
  if (src == TL_ESTATE)
    outcome = O_LOST; /* returned to the queue at shutdown, or its lease ended */
  else if (src != 0)
    tl_log(TL_LOG_ERROR, "job store error", TL_F_STR("error", tl_error_last()));
  tl_series_inc(k->outcome[outcome]);
  if (k->w.max_concurrency)
    cap_release(ex, k);
  return deferred;
}

/* How long an idle worker may sleep, in µs. locks: ex->mu held */
static int64_t idle_wait(tl_jobs *ex)
{
  int64_t due = ex->store->ops->next_due(ex->store), wait = ex->poll_us;
  if (due != INT64_MAX) {
    int64_t d = due - now_of(ex);
    wait = d < 1000 ? 1000 : d < wait ? d : wait;
  }
  return wait;
}

static void flush(tl_jobs *ex, tl__job *done, bool *have)
{
  if (*have)
    ex->store->ops->complete(ex->store, done, now_of(ex));
  *have = false;
}

static void *worker_main(void *arg)
{
  slot *sl = arg;
  tl_jobs *ex = sl->ex;
  tl__job done;
  bool have = false;
  int64_t end = 0;
  while (!atomic_load(&ex->stopping)) {
    int got = 0;
    if (atomic_load(&ex->paused))
      flush(ex, &done, &have);
    else
      got = take(ex, sl, have ? &done : NULL, end), have = false;
    if (got == 1) {
      have = run(ex, sl, &done, &end);
      continue;
    }
    if (got < 0)
      tl_log(TL_LOG_ERROR, "job store fetch failed", TL_F_STR("error", tl_error_last()));
    pthread_mutex_lock(&ex->mu);
    atomic_fetch_add(&ex->idle, 1);
    /* Look again now that submitters can see us idle, or a wake-up could
     * fall between the fetch above and the wait below. */
    if (got == 0 && !atomic_load(&ex->stopping) && !atomic_load(&ex->paused))
      got = take(ex, sl, NULL, 0);
    if (got != 1 && !atomic_load(&ex->stopping)) {
      bool paused = atomic_load(&ex->paused);
      struct timespec ts = mono_in(got < 0 || paused ? ex->poll_us : idle_wait(ex));
      pthread_cond_timedwait(&ex->work_cv, &ex->mu, &ts);
    }
    atomic_fetch_sub(&ex->idle, 1);
    pthread_mutex_unlock(&ex->mu);
    end = 0;
    if (got == 1)
      have = run(ex, sl, &done, &end);
  }
  flush(ex, &done, &have);
  pthread_mutex_lock(&ex->mu);
  ex->alive--;
  pthread_cond_broadcast(&ex->done_cv);
  pthread_mutex_unlock(&ex->mu);
  return NULL;
}

/* ---- the timer thread -------------------------------------------------------------- */

typedef struct aging {
  tl_jobs *ex;
  int64_t now;
  bool seen[MAX_AGED];
} aging;

static void set_age(void *p, const char *queue, int64_t run_at)
{
  aging *g = p;
  tl_jobs *ex = g->ex;
  size_t i = 0;
  while (i < ex->naged && strcmp(ex->aged_names[i], queue) != 0)
    i++;
  if (i == ex->naged) {
    if (i == MAX_AGED || !(ex->aged_names[i] = strdup(queue)))
      return;
    ex->aged[ex->naged++] = tl_metric_series(ex->m_oldest, TL_LABELS(queue));
  }
  g->seen[i] = true;
  tl_series_set(ex->aged[i], g->now > run_at ? (double)(g->now - run_at) / 1e6 : 0.0);
}

/* The depth and age gauges, from the store. On the timer thread. */
static void update_gauges(tl_jobs *ex)
{
  tl_jobs_stats st;
  if (ex->store->ops->stats(ex->store, &st) == 0) {
    tl_series_set(ex->depth[0], (double)st.pending);
    tl_series_set(ex->depth[1], (double)st.running);
    tl_series_set(ex->depth[2], (double)st.discarded);
    tl_series_set(ex->depth[3], (double)st.cancelled);
  }
  aging g = { .ex = ex, .now = now_of(ex) };
  if (ex->store->ops->oldest_due(ex->store, g.now, set_age, &g) != 0)
    return;
  for (size_t i = 0; i < ex->naged; i++)
    if (!g.seen[i])
      tl_series_set(ex->aged[i], 0.0);
}

/* A job lost its lease (its process died, or stalled past the lease). */
static void count_lost(void *p, const char *kind_name, bool discarded)
{
  tl_jobs *ex = p;
  tl_series_inc(tl_metric_series(ex->m_finished, TL_LABELS(kind_name, outcome_names[
                                   discarded ? O_DISCARDED : O_LOST])));
}

static void *timer_main(void *arg)
{
  tl_jobs *ex = arg;
  int64_t next_hb = INT64_MIN, next_gauges = 0;
  pthread_mutex_lock(&ex->mu);
  while (!ex->timer_stop) {
    pthread_mutex_unlock(&ex->mu);
    int64_t now = now_of(ex), wake = INT64_MAX;

    /* Timeouts raise the cancel flag; renewals keep leases alive. Each
     * slot's lock keeps its job held while we look at it. */
    bool hb = now >= next_hb;
    int64_t until = sat_add(now, ex->lease_us);
    for (unsigned i = 0; i < ex->nworkers; i++) {
      slot *sl = &ex->slots[i];
      pthread_mutex_lock(&sl->mu);
      if (sl->busy) {
        if (now >= sl->deadline)
          atomic_fetch_or(sl->job.cancel, TL__CANCEL_TIMEOUT);
        else if (sl->deadline < wake)
          wake = sl->deadline;
        if (hb) {
          tl__job *j = &sl->job;
          ex->store->ops->heartbeat(ex->store, &j, 1, until);
        }
      }
      pthread_mutex_unlock(&sl->mu);
    }
    if (hb) {
      size_t n = 0;
      ex->store->ops->recover(ex->store, now, count_lost, ex, &n);
      if (n)
        tl_log(TL_LOG_WARN, "jobs recovered from expired leases", TL_F_INT("count", n));
      next_hb = sat_add(now, ex->lease_us / 3);
    }
    if (next_hb < wake)
      wake = next_hb;
    int64_t cron = tl__sched_run(ex->sched, ex, now);
    if (cron < wake)
      wake = cron;
    int64_t mono = tl_time_mono_us();
    if (mono >= next_gauges) {
      update_gauges(ex);
      next_gauges = mono + 1000000;
    }

    int64_t wait = wake == INT64_MAX ? ex->poll_us : wake - now;
    if (wait > ex->poll_us)
      wait = ex->poll_us;
    if (wait > 1000000)
      wait = 1000000; /* gauges */
    if (wait < 1000)
      wait = 1000;
    struct timespec ts = mono_in(wait);
    pthread_mutex_lock(&ex->mu);
    if (!ex->timer_kick && !ex->timer_stop)
      pthread_cond_timedwait(&ex->timer_cv, &ex->mu, &ts);
    ex->timer_kick = false;
  }
  pthread_mutex_unlock(&ex->mu);
  update_gauges(ex);
  return NULL;
}

void tl__jobs_wake_timer(tl_jobs *ex)
{
  pthread_mutex_lock(&ex->mu);
  ex->timer_kick = true;
  pthread_cond_signal(&ex->timer_cv);
  pthread_mutex_unlock(&ex->mu);
}

tl__sched *tl__jobs_sched(tl_jobs *ex)
{
  return ex->sched;
}

const char *tl__jobs_cron_tz(tl_jobs *ex)
{
  return ex->cron_tz;
}

/* ---- configuration and lifecycle ------------------------------------------------------ */

static unsigned cores(void)
{
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
}

static void free_list(char **list, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(list[i]);
  free(list);
}

/* Split "a, b,c" into names, each checked. `what` names the source. */
static int parse_queues(const char *text, const char *what, char ***out, size_t *count)
{
  *out = NULL;
  *count = 0;
  char **list = NULL;
  size_t n = 0;
  for (const char *p = text; p && *p;) {
    size_t l = strcspn(p, ",");
    const char *s = p, *e = p + l;
    while (s < e && (*s == ' ' || *s == '\t'))
      s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if (e > s) {
      char *name = tl__strndup(s, (size_t)(e - s));
      char **nl = name ? realloc(list, (n + 1) * sizeof *nl) : NULL;
      if (!nl) {
        free(name);
        free_list(list, n);
        return tl_error_set(TL_ENOMEM, "jobs: out of memory");
      }
      list = nl;
      list[n++] = name;
      if (!tl__jobs_name_ok(name)) {
        int rc = tl_error_set(TL_EINVAL, "%s: '%.64s' is not a queue name (1-64 of A-Z a-z "
                              "0-9 _ . : -)", what, name);
        free_list(list, n);
        return rc;
      }
    }
    p += l;
    if (*p == ',')
      p++;
  }
  *out = list;
  *count = n;
  return 0;
}

int tl_jobs_config_from(const tl_config *cfg, tl_jobs_config *jc)
{
  if (!cfg || !jc)
    return tl_error_set(TL_EINVAL, "tl_jobs_config_from: NULL argument");
  *jc = (tl_jobs_config){ 0 };
  int64_t v;
  int rc;
  if ((rc = tl_config_int(cfg, "JOB_WORKERS", cores(), 1, MAX_WORKERS, &v)))
    return rc;
  jc->workers = (unsigned)v;
  if ((rc = tl_config_string(cfg, "JOB_QUEUES", NULL, &jc->queues)))
    return rc;
  if (jc->queues && !*jc->queues)
    jc->queues = NULL;
  char **q;
  size_t nq;
  if ((rc = parse_queues(jc->queues, "JOB_QUEUES", &q, &nq)))
    return rc;
  free_list(q, nq);
  static const struct {
    const char *key;
    int64_t def, min;
    const char *min_text;
  } durs[] = {
    { "JOB_POLL_INTERVAL", 1000000, 1000, "1ms" },
    { "JOB_SHUTDOWN_TIMEOUT", 25000000, 1000, "1ms" },
    { "JOB_LEASE", 300000000, 1000000, "1s" },
  };
  int64_t *dst[] = { &jc->poll_us, &jc->shutdown_timeout_us, &jc->lease_us };
  for (size_t i = 0; i < 3; i++) {
    if ((rc = tl_config_duration(cfg, durs[i].key, durs[i].def, dst[i])))
      return rc;
    if (*dst[i] < durs[i].min)
      return tl_error_set(TL_EINVAL, "%s: '%s' is shorter than %s", durs[i].key,
                          tl_config_get(cfg, durs[i].key), durs[i].min_text);
  }
  if ((rc = tl_config_int(cfg, "JOB_RETAIN_DEAD", 10000, 1, 100000000, &v)))
    return rc;
  jc->retain_dead = (unsigned)v;
  if ((rc = tl_config_string(cfg, "JOB_CRON_TZ", NULL, &jc->cron_tz)))
    return rc;
  if (jc->cron_tz && !*jc->cron_tz)
    jc->cron_tz = NULL;
  tl__tz *tz;
  if (jc->cron_tz && (rc = tl__tz_load(&tz, jc->cron_tz)))
    return tl_error_wrap(rc, "JOB_CRON_TZ");
  if (jc->cron_tz)
    tl__tz_free(tz);
  const char *text;
  if ((rc = tl_config_string(cfg, "JOB_STORE", "auto", &text)))
    return rc;
  if (!strcmp(text, "auto") || !*text)
    jc->store = TL_JOBS_STORE_AUTO;
  else if (!strcmp(text, "memory"))
    jc->store = TL_JOBS_STORE_MEMORY;
  else if (!strcmp(text, "database"))
    jc->store = TL_JOBS_STORE_DATABASE;
  else
    return tl_error_set(TL_EINVAL, "JOB_STORE: '%.64s' is not one of auto, memory, database",
                        text);
  if ((rc = tl_config_duration(cfg, "JOB_RETENTION", 86400000000, &jc->retention_us)))
    return rc;
  if (jc->retention_us < 1000000)
    return tl_error_set(TL_EINVAL, "JOB_RETENTION: '%s' is shorter than 1s",
                        tl_config_get(cfg, "JOB_RETENTION"));
  if ((rc = tl_config_string(cfg, "JOB_CRON_MISSED", "catch_up_one", &text)))
    return rc;
  if (!strcmp(text, "catch_up_one") || !*text)
    jc->cron_missed = TL_JOBS_CRON_CATCH_UP_ONE;
  else if (!strcmp(text, "skip"))
    jc->cron_missed = TL_JOBS_CRON_SKIP;
  else
    return tl_error_set(TL_EINVAL, "JOB_CRON_MISSED: '%.64s' is not one of catch_up_one, skip",
                        text);
  return 0;
}

static int open_metrics(tl_jobs *ex)
{
  tl_metrics *r = ex->metrics;
  int rc;
  if ((rc = tl_metrics_counter(r, "trellis_jobs_submitted_total", "Jobs submitted, by kind.", "kind",
                               &ex->m_submitted)) ||
      (rc = tl_metrics_counter(r, "trellis_jobs_finished_total",
                               "Job runs by kind and outcome: completed, retried, discarded, "
                               "cancelled, snoozed, lost (returned to the queue).",
                               "kind,outcome", &ex->m_finished)) ||
      (rc = tl_metrics_histogram(r, "trellis_jobs_run_duration_seconds", "Time spent in a worker.",
                                 "kind", NULL, 0, &ex->m_run)) ||
      (rc = tl_metrics_gauge(r, "trellis_jobs_depth",
                             "Jobs in the store by state (pending is the queue depth).",
                             "state", &ex->m_depth)) ||
      (rc = tl_metrics_gauge(r, "trellis_jobs_oldest_pending_age_seconds",
                             "Age of the oldest job that is due and not running, by queue "
                             "(0 when none).", "queue", &ex->m_oldest)) ||
      (rc = tl_metrics_counter(r, "trellis_jobs_cron_missed_total",
                               "Cron slots that passed without being claimed by any replica "
                               "(skipped, or the one caught up), by schedule.", "schedule",
                               &ex->m_cron_missed)))
    return rc;
  const char *states[4] = { "pending", "running", "discarded", "cancelled" };
  for (int i = 0; i < 4; i++)
    ex->depth[i] = tl_metric_series(ex->m_depth, TL_LABELS(states[i]));
  return 0;
}

static void destroy(tl_jobs *ex)
{
  for (size_t i = 0; i < ex->nkinds; i++)
    free(ex->kinds[i]);
  if (ex->slots) {
    for (unsigned i = 0; i < ex->nworkers; i++)
      pthread_mutex_destroy(&ex->slots[i].mu);
    free(ex->slots);
  }
  if (ex->store)
    ex->store->ops->close(ex->store);
  tl__sched_free(ex->sched);
  free_list(ex->queues, ex->nqueues);
  for (size_t i = 0; i < ex->naged; i++)
    free(ex->aged_names[i]);
  free(ex->cron_tz);
  pthread_mutex_destroy(&ex->mu);
  pthread_mutex_destroy(&ex->cap_mu);
  pthread_cond_destroy(&ex->work_cv);
  pthread_cond_destroy(&ex->done_cv);
  pthread_cond_destroy(&ex->timer_cv);
  free(ex);
}

static void join_all(tl_jobs *ex)
{
  for (unsigned i = 0; i < ex->nworkers; i++)
    if (ex->slots[i].started)
      pthread_join(ex->slots[i].th, NULL);
  if (ex->timer_started) {
    pthread_mutex_lock(&ex->mu);
    ex->timer_stop = true;
    pthread_cond_signal(&ex->timer_cv);
    pthread_mutex_unlock(&ex->mu);
    pthread_join(ex->timer, NULL);
  }
}

int tl_jobs_open(tl_jobs **out, const tl_jobs_config *cfgp)
{
  if (!out)
    return tl_error_set(TL_EINVAL, "tl_jobs_open: NULL argument");
  *out = NULL;
  tl_jobs_config cfg = cfgp ? *cfgp : (tl_jobs_config){ 0 };
  if (cfg.workers > MAX_WORKERS)
    return tl_error_set(TL_EINVAL, "jobs: workers: %u is more than %d", cfg.workers,
                        MAX_WORKERS);
  if (cfg.poll_us < 0 || cfg.shutdown_timeout_us < 0 || cfg.lease_us < 0)
    return tl_error_set(TL_EINVAL, "jobs: poll_us, shutdown_timeout_us and lease_us must be "
                        "0 (default) or more");
  tl_jobs *ex = calloc(1, sizeof *ex);
  if (!ex)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  pthread_mutex_init(&ex->mu, NULL);
  pthread_mutex_init(&ex->cap_mu, NULL);
  tl__cond_init_mono(&ex->work_cv);
  tl__cond_init_mono(&ex->done_cv);
  tl__cond_init_mono(&ex->timer_cv);
  ex->clock = cfg.clock ? cfg.clock : tl_clock_wall;
  ex->clock_ctx = cfg.clock_ctx;
  ex->nworkers = cfg.workers ? cfg.workers : cores();
  ex->poll_us = cfg.poll_us ? cfg.poll_us : 1000000;
  ex->shutdown_us = cfg.shutdown_timeout_us ? cfg.shutdown_timeout_us : 25000000;
  ex->lease_us = cfg.lease_us ? cfg.lease_us : 300000000;
  ex->metrics = cfg.metrics ? cfg.metrics : tl_metrics_default();
  atomic_store(&ex->paused, cfg.paused);
  int rc;
  tl__tz *tz = NULL;
  if (cfg.cron_tz && (rc = tl__tz_load(&tz, cfg.cron_tz)) != 0) {
    destroy(ex);
    return tl_error_wrap(rc, "jobs: cron_tz");
  }
  tl__tz_free(tz);
  if (cfg.store == TL_JOBS_STORE_DATABASE && !cfg.db) {
    destroy(ex);
    return tl_error_set(TL_EINVAL, "jobs: store: the database store needs db (JOB_STORE="
                        "database without a database)");
  }
  if (cfg.retention_us < 0) {
    destroy(ex);
    return tl_error_set(TL_EINVAL, "jobs: retention_us must be 0 (default) or more");
  }
  ex->durable = cfg.db && cfg.store != TL_JOBS_STORE_MEMORY;
  ex->cron_missed = cfg.cron_missed;
  /* A fetch leases as many jobs as there are workers, more while jobs
   * are shorter than a round trip (the store adapts it). */
  tl__sql_store_opts so = { .batch = ex->nworkers,
                            .retention_us = cfg.retention_us, .lease_us = ex->lease_us,
                            .wake = wake_all, .wake_ctx = ex };
  if ((rc = parse_queues(cfg.queues, "jobs: queues", &ex->queues, &ex->nqueues)) ||
      (rc = open_metrics(ex)) ||
      (rc = ex->durable
                ? tl__jobs_store_sql_open(&ex->store, cfg.db, &so)
                : tl__jobs_store_memory_open(&ex->store,
                                             cfg.retain_dead ? cfg.retain_dead : 10000)) ||
      (rc = tl__sched_new(&ex->sched))) {
    destroy(ex);
    return rc;
  }
  if (cfg.cron_tz && *cfg.cron_tz && !(ex->cron_tz = strdup(cfg.cron_tz))) {
    destroy(ex);
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  }
  if (!(ex->slots = calloc(ex->nworkers, sizeof *ex->slots))) {
    destroy(ex);
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  }
  for (unsigned i = 0; i < ex->nworkers; i++) {
    pthread_mutex_init(&ex->slots[i].mu, NULL);
    ex->slots[i].ex = ex;
  }
  for (unsigned i = 0; i < ex->nworkers && rc == 0; i++) {
    if (pthread_create(&ex->slots[i].th, NULL, worker_main, &ex->slots[i]) != 0) {
      rc = tl_error_set(TL_ENOMEM, "jobs: cannot start worker thread %u", i);
      break;
    }
    ex->slots[i].started = true;
    pthread_mutex_lock(&ex->mu);
    ex->alive++;
    pthread_mutex_unlock(&ex->mu);
  }
  if (rc == 0 && pthread_create(&ex->timer, NULL, timer_main, ex) != 0)
    rc = tl_error_set(TL_ENOMEM, "jobs: cannot start the timer thread");
  else if (rc == 0)
    ex->timer_started = true;
  if (rc) {
    atomic_store(&ex->stopping, true);
    pthread_mutex_lock(&ex->mu);
    pthread_cond_broadcast(&ex->work_cv);
    pthread_mutex_unlock(&ex->mu);
    join_all(ex);
    destroy(ex);
    return rc;
  }
  *out = ex;
  return 0;
}

int tl_jobs_shutdown(tl_jobs *ex, int64_t timeout_us)
{
  if (!ex)
    return tl_error_set(TL_EINVAL, "tl_jobs_shutdown: NULL argument");
  if (timeout_us < 0)
    timeout_us = ex->shutdown_us;
  /* Before taking ex->mu: the timer thread holds the scheduler's lock
   * while it submits, and a submit may take ex->mu. */
  tl__sched_stop(ex->sched);
  pthread_mutex_lock(&ex->mu);
  if (ex->shutting) {
    while (!ex->shut)
      pthread_cond_wait(&ex->done_cv, &ex->mu);
    int rc = ex->shutdown_rc;
    pthread_mutex_unlock(&ex->mu);
    return rc;
  }
  ex->shutting = true;
  atomic_store(&ex->closed, true);
  atomic_store(&ex->stopping, true);
  pthread_cond_broadcast(&ex->work_cv);
  struct timespec deadline = mono_in(timeout_us);
  while (ex->alive > 0)
    if (pthread_cond_timedwait(&ex->done_cv, &ex->mu, &deadline) != 0 && ex->alive > 0)
      break;
  int rc = 0;
  if (ex->alive > 0) {
    /* The deadline passed: hand the unfinished jobs back to the queue. */
    size_t returned = 0;
    int64_t now = now_of(ex);
    for (unsigned i = 0; i < ex->nworkers; i++) {
      slot *sl = &ex->slots[i];
      pthread_mutex_lock(&sl->mu);
      if (sl->busy) {
        atomic_fetch_or(sl->job.cancel, TL__CANCEL_SHUTDOWN);
        if (ex->store->ops->release(ex->store, &sl->job, now) == 0)
          returned++;
      }
      pthread_mutex_unlock(&sl->mu);
    }
    tl_log(TL_LOG_WARN, "jobs shutdown deadline passed; running jobs returned to the queue",
           TL_F_INT("returned", returned));
    rc = tl_error_set(TL_ETIMEOUT, "jobs: %zu running job(s) did not finish within %lld ms and "
                      "were returned to the queue", returned, (long long)(timeout_us / 1000));
  }
  if (ex->store->ops->quiesce)
    ex->store->ops->quiesce(ex->store, now_of(ex));
  ex->shut = true;
  ex->shutdown_rc = rc;
  pthread_cond_broadcast(&ex->done_cv);
  pthread_mutex_unlock(&ex->mu);
  return rc;
}

int tl_jobs_close(tl_jobs *ex)
{
  if (!ex)
    return 0;
  int rc = tl_jobs_shutdown(ex, -1);
  join_all(ex);
  destroy(ex);
  return rc;
}

void tl_jobs_pause(tl_jobs *ex)
{
  if (ex)
    atomic_store(&ex->paused, true);
}

void tl_jobs_resume(tl_jobs *ex)
{
  if (!ex)
    return;
  atomic_store(&ex->paused, false);
  pthread_mutex_lock(&ex->mu);
  pthread_cond_broadcast(&ex->work_cv);
  pthread_mutex_unlock(&ex->mu);
}

void tl_jobs_wake(tl_jobs *ex)
{
  if (!ex)
    return;
  pthread_mutex_lock(&ex->mu);
  ex->timer_kick = true;
  pthread_cond_signal(&ex->timer_cv);
  pthread_cond_broadcast(&ex->work_cv);
  pthread_mutex_unlock(&ex->mu);
}

int tl_jobs_ready(tl_jobs *ex)
{
  if (!ex)
    return tl_error_set(TL_EINVAL, "tl_jobs_ready: NULL argument");
  if (atomic_load(&ex->closed))
    return tl_error_set(TL_ECLOSED, "jobs: shut down");
  return ex->store->ops->ready(ex->store);
}

int tl_jobs_ready_check(void *ex, char *detail, size_t n)
{
  int rc = tl_jobs_ready(ex);
  if (rc && detail && n)
    snprintf(detail, n, "%s", tl_error_last());
  return rc;
}

/* ---- submitting and inspecting ---------------------------------------------------------- */

/* Check a submission and fill `j` (strings borrowed from the arguments
 * and the kind). Returns 0 or a status. */
static int prepare(tl_jobs *ex, const char *kind_name, const char *args, const tl_job_opts *o,
                   int64_t now, kind **kp, tl__job_new *j)
{
  if (atomic_load_explicit(&ex->closed, memory_order_relaxed))
    return tl_error_set(TL_ECLOSED, "jobs: shut down");
  kind *k = kind_find(ex, kind_name);
  if (!k) {
    if (!tl__jobs_name_ok(kind_name))
      return tl_error_set(TL_EINVAL, "job kind '%.64s': must be 1-64 of A-Z a-z 0-9 _ . : -",
                          kind_name);
    return tl_error_set(TL_ENOTFOUND, "job kind '%s': no worker registered", kind_name);
  }
  if (!args)
    args = "{}";
  size_t alen = strlen(args), bad;
  if (!tl__json_valid(args, alen, &bad))
    return tl_error_set(TL_EINVAL, "job '%s': args are not JSON text (at byte %zu)", k->name,
                        bad);
  if (o->queue && !tl__jobs_name_ok(o->queue))
    return tl_error_set(TL_EINVAL, "job '%s': queue '%.64s' must be 1-64 of A-Z a-z 0-9 "
                        "_ . : -", k->name, o->queue);
  if (o->unique_key && (!*o->unique_key || strlen(o->unique_key) > 255))
    return tl_error_set(TL_EINVAL, "job '%s': unique_key must be 1-255 bytes", k->name);
  if (o->delay_us < 0)
    return tl_error_set(TL_EINVAL, "job '%s': delay_us is negative", k->name);
  *j = (tl__job_new){ .kind = k->name, .queue = o->queue ? o->queue : "default", .args = args,
                      .args_len = alen, .unique_key = o->unique_key, .priority = o->priority,
                      .max_retries = o->max_retries < 0 ? -1
                                     : o->max_retries ? o->max_retries : k->max_retries,
                      .run_at_us = o->run_at_us ? o->run_at_us : sat_add(now, o->delay_us),
                      .created_us = now };
  *kp = k;
  return 0;
}

int tl_jobs_submit(tl_jobs *ex, const char *kind_name, const char *args,
                   const tl_job_opts *optsp)
{
  if (!ex || !kind_name)
    return tl_error_set(TL_EINVAL, "tl_jobs_submit: NULL argument");
  static const tl_job_opts none;
  const tl_job_opts *o = optsp ? optsp : &none;
  kind *k;
  tl__job_new j;
  int rc = prepare(ex, kind_name, args, o, now_of(ex), &k, &j);
  if (rc)
    return rc;
  int64_t id;
  bool dup;
  if ((rc = ex->store->ops->enqueue(ex->store, &j, &id, &dup)) != 0)
    return rc;
  if (o->id_out)
    *o->id_out = id;
  if (!dup) {
    tl_series_inc(k->submitted);
    wake_idle(ex, false);
  }
  return 0;
}

int tl_jobs_submit_many(tl_jobs *ex, const char *kind_name, const char *const *args, size_t n,
                        const tl_job_opts *optsp)
{
  if (!ex || !kind_name || (n && !args))
    return tl_error_set(TL_EINVAL, "tl_jobs_submit_many: NULL argument");
  static const tl_job_opts none;
  const tl_job_opts *o = optsp ? optsp : &none;
  if (o->unique_key || o->id_out)
    return tl_error_set(TL_EINVAL, "tl_jobs_submit_many: unique_key and id_out need "
                        "tl_jobs_submit");
  if (!n)
    return 0;
  tl__job_new *jobs = malloc(n * sizeof *jobs);
  if (!jobs)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  int64_t now = now_of(ex);
  kind *k = NULL;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = prepare(ex, kind_name, args[i], o, now, &k, &jobs[i]);
  if (rc == 0 && ex->store->ops->enqueue_many) {
    rc = ex->store->ops->enqueue_many(ex->store, jobs, n);
  } else {
    for (size_t i = 0; i < n && rc == 0; i++) {
      int64_t id;
      bool dup;
      rc = ex->store->ops->enqueue(ex->store, &jobs[i], &id, &dup);
    }
  }
  free(jobs);
  if (rc)
    return rc;
  tl_series_add(k->submitted, (double)n);
  wake_idle(ex, true);
  return 0;
}

int tl__jobs_submit_slot(tl_jobs *ex, const char *name, int64_t slot_us, const char *kind_name,
                         const char *args, const tl_job_opts *o, int64_t *prev_us)
{
  *prev_us = INT64_MIN;
  if (!ex->store->ops->enqueue_slot)
    return tl_jobs_submit(ex, kind_name, args, o);
  kind *k;
  tl__job_new j;
  int rc = prepare(ex, kind_name, args, o, now_of(ex), &k, &j);
  bool claimed = false;
  if (rc == 0)
    rc = ex->store->ops->enqueue_slot(ex->store, name, slot_us, &j, &claimed, prev_us);
  if (rc == 0 && claimed) {
    tl_series_inc(k->submitted);
    wake_idle(ex, false);
  } else {
    *prev_us = INT64_MAX;
  }
  return rc;
}

void tl__jobs_cron_missed(tl_jobs *ex, const char *name, uint64_t n)
{
  tl_series_add(tl_metric_series(ex->m_cron_missed, TL_LABELS(name)), (double)n);
}

int64_t tl__jobs_first_slot(tl_jobs *ex, const char *name, const tl_cron *c)
{
  int64_t now = now_of(ex), next, last;
  if (tl_cron_next(c, now, &next) != 0)
    next = INT64_MAX;
  if (!ex->durable || ex->cron_missed != TL_JOBS_CRON_CATCH_UP_ONE ||
      !ex->store->ops->last_slot || ex->store->ops->last_slot(ex->store, name, &last) != 1)
    return next;
  /* A slot after the last one claimed has passed: the scheduler runs the
   * latest such slot once, as soon as it looks. */
  int64_t missed;
  if (tl_cron_next(c, last, &missed) == 0 && missed <= now)
    return missed;
  return next;
}

int tl_jobs_get(tl_jobs *ex, int64_t id, tl_job_info **out)
{
  if (!ex || !out)
    return tl_error_set(TL_EINVAL, "tl_jobs_get: NULL argument");
  return ex->store->ops->get(ex->store, id, out);
}

int tl_jobs_list(tl_jobs *ex, const tl_job_filter *f, tl_job_list **out)
{
  if (!ex || !out)
    return tl_error_set(TL_EINVAL, "tl_jobs_list: NULL argument");
  return ex->store->ops->list(ex->store, f, out);
}

int tl_jobs_retry(tl_jobs *ex, int64_t id)
{
  if (!ex)
    return tl_error_set(TL_EINVAL, "tl_jobs_retry: NULL argument");
  if (atomic_load(&ex->closed))
    return tl_error_set(TL_ECLOSED, "jobs: shut down");
  int rc = ex->store->ops->retry(ex->store, id, now_of(ex));
  if (rc == 0)
    wake_idle(ex, false);
  return rc;
}

int tl_jobs_cancel(tl_jobs *ex, int64_t id)
{
  if (!ex)
    return tl_error_set(TL_EINVAL, "tl_jobs_cancel: NULL argument");
  return ex->store->ops->cancel(ex->store, id, now_of(ex));
}

int tl_jobs_stats_get(tl_jobs *ex, tl_jobs_stats *out)
{
  if (!ex || !out)
    return tl_error_set(TL_EINVAL, "tl_jobs_stats_get: NULL argument");
  return ex->store->ops->stats(ex->store, out);
}
