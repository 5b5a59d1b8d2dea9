/* Cron schedules driving submissions. Each schedule keeps its next slot;
 * the executor's timer thread calls tl__sched_run, which submits one job
 * per due slot. In memory there is one scheduler per executor, so each
 * slot fires once by construction; with a shared database every replica
 * runs the same schedules, and the store claims each slot once (a unique
 * row per name and slot, inserted with the job). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "jobs_int.h"
#include "trellis/error.h"
#include "trellis/log.h"

typedef struct entry {
  char *name, *kind, *args, *queue;
  int priority;
  tl_cron *cron;
  int64_t next;            /* the next slot, µs; INT64_MAX: none left */
  bool catch_up;           /* `next` is a slot missed while no executor ran */
  struct entry *link;
} entry;

struct tl__sched {
  pthread_mutex_t mu;
  entry *head;
  bool stopped;
};

static void entry_free(entry *e)
{
  if (!e)
    return;
  free(e->name);
  free(e->kind);
  free(e->args);
  free(e->queue);
  tl_cron_free(e->cron);
  free(e);
}

int tl__sched_new(tl__sched **out)
{
  tl__sched *s = calloc(1, sizeof *s);
  if (!s)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  pthread_mutex_init(&s->mu, NULL);
  *out = s;
  return 0;
}

void tl__sched_free(tl__sched *s)
{
  if (!s)
    return;
  for (entry *e = s->head, *nx; e; e = nx) {
    nx = e->link;
    entry_free(e);
  }
  pthread_mutex_destroy(&s->mu);
  free(s);
}

void tl__sched_stop(tl__sched *s)
{
  if (!s)
    return;
  pthread_mutex_lock(&s->mu);
  s->stopped = true;
  pthread_mutex_unlock(&s->mu);
}

static int64_t next_after(const tl_cron *c, int64_t t)
{
  int64_t n;
  return tl_cron_next(c, t, &n) == 0 ? n : INT64_MAX;
}

/* The latest slot <= now, given that `slot` is one. Probes windows of
 * growing size back from now, then walks forward, so a long stall costs
 * a bounded number of steps rather than one per missed slot. */
static int64_t latest_slot(const tl_cron *c, int64_t slot, int64_t now)
{
  if (next_after(c, slot) > now)
    return slot;
  static const int64_t windows[] = { 1, 60, 3600, 86400, 32 * 86400, 367 * 86400,
                                     5 * 366 * 86400, 50 * 366 * 86400 };
  for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++) {
    int64_t from = now - windows[i] * 1000000;
    if (from <= slot)
      break;
    int64_t s = next_after(c, from);
    if (s <= now) {
      slot = s;
      break;
    }
  }
  for (int steps = 0; steps < 100000; steps++) {
    int64_t n = next_after(c, slot);
    if (n > now)
      break;
    slot = n;
  }
  return slot;
}

/* Slots strictly between `from` and `to`, counted up to a bound (a gap
 * of more slots counts as that many), so a long stall stays cheap. */
static uint64_t slots_between(const tl_cron *c, int64_t from, int64_t to)
{
  uint64_t n = 0;
  for (int64_t t = next_after(c, from); t < to && n < 100000; t = next_after(c, t))
    n++;
  return n;
}

int64_t tl__sched_run(tl__sched *s, tl_jobs *ex, int64_t now)
{
  int64_t earliest = INT64_MAX;
  pthread_mutex_lock(&s->mu);
  for (entry *e = s->stopped ? NULL : s->head; e; e = e->link) {
    if (e->next <= now) {
      int64_t slot = latest_slot(e->cron, e->next, now), prev;
      if (slot != e->next)
        tl_log(TL_LOG_WARN, "cron slots missed; running the latest only",
               TL_F_STR("schedule", e->name), TL_F_INT("first_missed_us", e->next),
               TL_F_INT("slot_us", slot));
      tl_job_opts o = { .priority = e->priority, .queue = e->queue, .run_at_us = slot };
      if (tl__jobs_submit_slot(ex, e->name, slot, e->kind, e->args, &o, &prev) != 0)
        tl_log(TL_LOG_ERROR, "cron submit failed", TL_F_STR("schedule", e->name),
               TL_F_STR("error", tl_error_last()));
      else if (prev != INT64_MAX) {
        /* Missed: in a shared store, the slots nobody claimed since the
         * last claim; else the ones this scheduler skipped. A slot caught
         * up at start-up was missed too. */
        uint64_t missed = prev != INT64_MIN ? slots_between(e->cron, prev, slot)
                          : slot != e->next ? 1 + slots_between(e->cron, e->next, slot) : 0;
        missed += e->catch_up;
        if (missed)
          tl__jobs_cron_missed(ex, e->name, missed);
      }
      e->catch_up = false;
      e->next = next_after(e->cron, slot);
    }
    if (e->next < earliest)
      earliest = e->next;
  }
  pthread_mutex_unlock(&s->mu);
  return earliest;
}

int tl_jobs_schedule_opts(tl_jobs *ex, const char *name, const char *expr, const char *kind,
                          const char *args, const tl_schedule_opts *opts)
{
  if (!ex || !name || !expr || !kind)
    return tl_error_set(TL_EINVAL, "tl_jobs_schedule: NULL argument");
  tl_schedule_opts o = opts ? *opts : (tl_schedule_opts){ 0 };
  if (!tl__jobs_name_ok(name))
    return tl_error_set(TL_EINVAL, "schedule '%.64s': name must be 1-64 of A-Z a-z 0-9 _ . : -",
                        name);
  if (!tl__jobs_has_kind(ex, kind))
    return tl_error_set(tl__jobs_name_ok(kind) ? TL_ENOTFOUND : TL_EINVAL,
                        "schedule '%s': no worker registered for kind '%.64s'", name, kind);
  if (o.queue && !tl__jobs_name_ok(o.queue))
    return tl_error_set(TL_EINVAL, "schedule '%s': queue '%.64s' must be 1-64 of A-Z a-z 0-9 "
                        "_ . : -", name, o.queue);
  if (!args)
    args = "{}";
  size_t bad;
  if (!tl__json_valid(args, strlen(args), &bad))
    return tl_error_set(TL_EINVAL, "schedule '%s': args are not JSON text (at byte %zu)", name,
                        bad);
  entry *e = calloc(1, sizeof *e);
  if (!e)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  int rc = tl_cron_parse(&e->cron, expr, o.tz ? o.tz : tl__jobs_cron_tz(ex));
  if (rc) {
    entry_free(e);
    return tl_error_wrap(rc, "schedule '%s'", name);
  }
  e->priority = o.priority;
  if (!(e->name = strdup(name)) || !(e->kind = strdup(kind)) || !(e->args = strdup(args)) ||
      !(e->queue = strdup(o.queue ? o.queue : "default"))) {
    entry_free(e);
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  }
  e->next = tl__jobs_first_slot(ex, name, e->cron);
  e->catch_up = e->next <= tl__jobs_now(ex);
  tl__sched *s = tl__jobs_sched(ex);
  pthread_mutex_lock(&s->mu);
  if (s->stopped) {
    pthread_mutex_unlock(&s->mu);
    entry_free(e);
    return tl_error_set(TL_ECLOSED, "jobs: shut down");
  }
  entry **pp = &s->head;
  while (*pp && strcmp((*pp)->name, name) != 0)
    pp = &(*pp)->link;
  entry *old = *pp;
  e->link = old ? old->link : NULL;
  *pp = e;
  pthread_mutex_unlock(&s->mu);
  entry_free(old);
  tl__jobs_wake_timer(ex);
  return 0;
}

int tl_jobs_schedule(tl_jobs *ex, const char *name, const char *expr, const char *kind,
                     const char *args)
{
  return tl_jobs_schedule_opts(ex, name, expr, kind, args, NULL);
}

int tl_jobs_unschedule(tl_jobs *ex, const char *name)
{
  if (!ex || !name)
    return tl_error_set(TL_EINVAL, "tl_jobs_unschedule: NULL argument");
  tl__sched *s = tl__jobs_sched(ex);
  pthread_mutex_lock(&s->mu);
  entry **pp = &s->head;
  while (*pp && strcmp((*pp)->name, name) != 0)
    pp = &(*pp)->link;
  entry *e = *pp;
  if (e)
    *pp = e->link;
  pthread_mutex_unlock(&s->mu);
  if (!e)
    return tl_error_set(TL_ENOTFOUND, "schedule '%.64s': not found", name);
  entry_free(e);
  return 0;
}

int tl_jobs_schedule_next(tl_jobs *ex, const char *name, int64_t *next_us)
{
  if (!ex || !name || !next_us)
    return tl_error_set(TL_EINVAL, "tl_jobs_schedule_next: NULL argument");
  tl__sched *s = tl__jobs_sched(ex);
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  entry *e = s->head;
  while (e && strcmp(e->name, name) != 0)
    e = e->link;
  if (e && e->next != INT64_MAX)
    *next_us = e->next;
  else
    rc = tl_error_set(TL_ENOTFOUND, "schedule '%.64s': not found", name);
  pthread_mutex_unlock(&s->mu);
  return rc;
}
