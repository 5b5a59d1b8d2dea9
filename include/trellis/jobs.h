/* trellis: background jobs. An executor runs jobs on worker threads; a
 * job is a kind plus JSON arguments, and a worker is registered per kind.
 * Jobs have priorities, delays, unique keys, queues, retries with
 * exponential backoff and full jitter, timeouts, cancellation, and cron
 * schedules (docs/jobs.md).
 *
 *   tl_jobs *ex;  tl_jobs_open(&ex, &(tl_jobs_config){ .workers = 4 });
 *   tl_jobs_register(ex, &(tl_worker){ .kind = "email", .execute = send_email,
 *                                      .max_retries = 3, .retry_delay_ms = 60000 });
 *   tl_jobs_submit(ex, "email", "{\"to\":\"user@example.com\"}", &(tl_job_opts){ .priority = 5 });
 *   tl_jobs_schedule(ex, "cleanup", "0 * * * *", "cleanup", "{}");
 *   ...
 *   tl_jobs_close(ex);
 *
 * The store is in memory, where jobs live as long as the executor, or a
 * database (tl_jobs_config.db): a durable queue shared by every executor
 * using it (docs/jobs.md, "Durable queue"). Every function here may be
 * called from any thread unless it says otherwise. */
#ifndef TRELLIS_JOBS_H
#define TRELLIS_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "config.h"
#include "cron.h"
#include "db.h"
#include "metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_jobs tl_jobs;       /* an executor and its store */
typedef struct tl_job_ctx tl_job_ctx; /* one run of one job */

/* ---- executor ---------------------------------------------------------- */

/* Where jobs are kept. */
typedef enum tl_jobs_store_type {
  TL_JOBS_STORE_AUTO = 0, /* the database when `db` is set, else memory */
  TL_JOBS_STORE_MEMORY,
  TL_JOBS_STORE_DATABASE  /* requires `db` */
} tl_jobs_store_type;

/* What a durable executor does at start-up with a schedule's slot that
 * passed while no replica was running. */
typedef enum tl_jobs_cron_missed {
  TL_JOBS_CRON_CATCH_UP_ONE = 0, /* run the latest missed slot once */
  TL_JOBS_CRON_SKIP              /* wait for the next slot */
} tl_jobs_cron_missed;

/* Zero fields take the defaults in brackets. tl_jobs_open copies what it
 * needs. */
typedef struct tl_jobs_config {
  unsigned workers;            /* worker threads [number of CPU cores] */
  /* Queues this executor works, comma-separated ("mail,reports");
   * jobs in other queues stay pending [NULL: every queue]. */
  const char *queues;
  int64_t poll_us;             /* longest idle sleep before looking again [1 s] */
  int64_t shutdown_timeout_us; /* tl_jobs_close's deadline for running jobs [25 s] */
  int64_t lease_us;            /* a running job's lease, renewed while it runs [5 min] */
  /* In memory: discarded and cancelled jobs kept for inspection and
   * manual retry, oldest dropped first [10000]. */
  unsigned retain_dead;
  const char *cron_tz;         /* default zone of schedules [UTC] */
  bool paused;                 /* open without running jobs until tl_jobs_resume */
  /* The wall clock, µs since the epoch [tl_clock_wall]. Tests pass a fake
   * one and call tl_jobs_wake() after moving it. Called from any thread. */
  tl_clock_fn clock;
  void *clock_ctx;
  tl_metrics *metrics;         /* [tl_metrics_default()] */
  /* The durable store: jobs are rows in this database (SQLite,
   * PostgreSQL, MariaDB 10.6+), shared by every executor using it; its
   * schema is migrated by tl_jobs_open. Borrowed: close it after
   * tl_jobs_close [NULL: in memory]. */
  tl_db *db;
  tl_jobs_store_type store;    /* [TL_JOBS_STORE_AUTO] */
  int64_t retention_us;        /* completed jobs kept in the database [24 h] */
  tl_jobs_cron_missed cron_missed; /* [TL_JOBS_CRON_CATCH_UP_ONE] */
} tl_jobs_config;

/* Fill `jc` from JOB_WORKERS (1-1024), JOB_QUEUES, JOB_POLL_INTERVAL,
 * JOB_SHUTDOWN_TIMEOUT, JOB_LEASE, JOB_RETAIN_DEAD, JOB_CRON_TZ (a zone
 * that must load), JOB_STORE (memory, database or auto), JOB_RETENTION
 * and JOB_CRON_MISSED (catch_up_one or skip). `jc->db` stays NULL: the
 * caller opens the database and sets it. Strings are borrowed from `cfg`
 * (keep it alive until tl_jobs_open). Returns 0 or TL_EINVAL naming the
 * key and what was expected ("JOB_WORKERS: 'many' is not an integer in
 * [1, 1024]"). */
int tl_jobs_config_from(const tl_config *cfg, tl_jobs_config *jc);

/* Create an executor with its store and start its threads (no job runs
 * before its kind is registered, nor while paused). With a database the
 * jobs schema is migrated first. `cfg` may be NULL for the defaults.
 * Returns 0, TL_EINVAL naming the field (TL_JOBS_STORE_DATABASE without
 * a db, a MongoDB db), TL_ENOMEM, or the database's error. Close with
 * tl_jobs_close(). */
int tl_jobs_open(tl_jobs **out, const tl_jobs_config *cfg);

/* Graceful shutdown: stop fetching and firing schedules, and wait up to
 * `timeout_us` (negative: the configured shutdown timeout) for running
 * jobs to return. Jobs still running at the deadline see their cancel
 * flag and are returned to the queue as pending, attempt not counted;
 * whatever they return later is ignored. Pending jobs stay pending and
 * can still be inspected. Returns 0, or TL_ETIMEOUT when jobs had to be
 * returned. Later calls return the first result. Not from a worker. */
int tl_jobs_shutdown(tl_jobs *ex, int64_t timeout_us);

/* tl_jobs_shutdown with the configured timeout if not done yet, then
 * wait until every worker function has returned, and free. Returns the
 * shutdown's result. NULL-safe. Not from a worker. */
int tl_jobs_close(tl_jobs *ex);

/* Stop starting jobs (running ones finish), and start again. */
void tl_jobs_pause(tl_jobs *ex);
void tl_jobs_resume(tl_jobs *ex);

/* Make the executor's threads look at the clock now. Only needed with a
 * fake clock, after moving it. */
void tl_jobs_wake(tl_jobs *ex);

/* 0 while the executor runs (paused counts as running), else TL_ECLOSED
 * with the reason. tl_jobs_ready_check has the shape of a tl_http_check:
 * tl_http_ready_check(srv, "jobs", tl_jobs_ready_check, ex, 0). */
int tl_jobs_ready(tl_jobs *ex);
int tl_jobs_ready_check(void *ex, char *detail, size_t n);

/* ---- workers ----------------------------------------------------------- */

/* What a worker's execute returns. A negative TL_E* status counts as
 * TL_JOB_RETRY, with tl_error_last() as the job's error. */
enum {
  TL_JOB_OK = 0,      /* done */
  TL_JOB_RETRY = 1,   /* this attempt failed: retry after a backoff */
  TL_JOB_DISCARD = 2, /* failed for good: no retry (see tl_job_discard) */
  TL_JOB_SNOOZE = 3   /* not now: run again later, attempt not counted
                         (see tl_job_snooze; alone it means 1 s) */
};

/* Run one job. `args_json` and `ctx` are borrowed until it returns. It
 * runs on one of the executor's worker threads, several at once for
 * different jobs. It should check tl_job_cancelled() when it can: the
 * flag is raised by tl_jobs_cancel, at the kind's timeout and at the
 * shutdown deadline. */
typedef int (*tl_job_fn)(const char *args_json, tl_job_ctx *ctx);

/* A worker for one kind. Zero fields take the defaults in brackets. */
typedef struct tl_worker {
  const char *kind;            /* 1-64 of [A-Za-z0-9_.:-]; copied */
  tl_job_fn execute;           /* required */
  void *ctx;                   /* handed back by tl_job_worker_ctx() */
  int max_retries;             /* retries after the first attempt [3]; negative: none */
  int64_t retry_delay_ms;      /* base of the backoff [1000] */
  int64_t retry_cap_ms;        /* the backoff's cap [3600000: 1 h] */
  int64_t timeout_ms;          /* a run longer than this fails the attempt [0: none] */
  unsigned max_concurrency;    /* runs of this kind at once here [0: no limit] */
} tl_worker;

/* Register a worker. `w` is copied. Returns 0, TL_EINVAL (naming the
 * field), TL_ECONFLICT (kind already registered), TL_ETOOBIG (more than
 * 256 kinds) or TL_ECLOSED. */
int tl_jobs_register(tl_jobs *ex, const tl_worker *w);

/* ---- submitting -------------------------------------------------------- */

/* Zero fields take the defaults in brackets. */
typedef struct tl_job_opts {
  int priority;          /* higher runs first; FIFO within a priority [0] */
  int64_t run_at_us;     /* not before this time, µs since the epoch [now] */
  int64_t delay_us;      /* or: not before now + delay (if run_at_us is 0) */
  /* While a job of the same kind with this key is pending or running, a
   * submit is a no-op that gives that job's id [NULL: no key]. */
  const char *unique_key;
  const char *queue;     /* 1-64 of [A-Za-z0-9_.:-] ["default"] */
  int max_retries;       /* [the worker's]; negative: none */
  int64_t *id_out;       /* when set, receives the job's id (> 0) */
} tl_job_opts;

/* Submit a job of a registered kind. `args_json` (NULL means "{}") must
 * be JSON text; it is copied. `opts` may be NULL. Returns 0, TL_EINVAL
 * (bad JSON, name or option), TL_ENOTFOUND (no worker registered for the
 * kind) or TL_ECLOSED (shut down). */
int tl_jobs_submit(tl_jobs *ex, const char *kind, const char *args_json,
                   const tl_job_opts *opts);

/* Submit `n` jobs of one kind with the same options, `args[i]` (NULL:
 * "{}") each, in one round trip where the store allows (a durable store
 * inserts them in one transaction: all or none). Unique keys and id_out
 * are refused (TL_EINVAL): use tl_jobs_submit for those. Returns as
 * tl_jobs_submit. */
int tl_jobs_submit_many(tl_jobs *ex, const char *kind, const char *const *args, size_t n,
                        const tl_job_opts *opts);

/* ---- cron schedules ----------------------------------------------------- */

/* Options of a schedule; zero fields take the defaults in brackets. */
typedef struct tl_schedule_opts {
  const char *tz;        /* the expression's zone [the executor's cron_tz] */
  int priority;          /* of each submitted job [0] */
  const char *queue;     /* of each submitted job ["default"] */
} tl_schedule_opts;

/* Submit a `kind` job with `args` (NULL: "{}") at each fire time of the
 * cron expression `expr` (see cron.h), once per slot; the job's
 * tl_job_scheduled_at() is the slot. The first slot is the first after
 * now; when the executor finds several slots past at once (a stalled
 * process, a clock jump) it runs only the latest. With a database, every
 * executor sharing it runs the schedule and each slot runs once among
 * them; a slot missed while none ran runs once at start-up (see
 * cron_missed). Scheduling an existing `name` replaces it. Everything is
 * copied. Returns 0, TL_EINVAL (bad expression, zone or name, with the
 * reason), TL_ENOTFOUND (kind not registered) or TL_ECLOSED. */
int tl_jobs_schedule(tl_jobs *ex, const char *name, const char *expr, const char *kind,
                     const char *args);
int tl_jobs_schedule_opts(tl_jobs *ex, const char *name, const char *expr, const char *kind,
                          const char *args, const tl_schedule_opts *opts);

/* Remove a schedule. Returns 0 or TL_ENOTFOUND. */
int tl_jobs_unschedule(tl_jobs *ex, const char *name);

/* The next slot of schedule `name`. Returns 0 or TL_ENOTFOUND. */
int tl_jobs_schedule_next(tl_jobs *ex, const char *name, int64_t *next_us);

/* ---- inside a worker --------------------------------------------------- */

/* About the running job; strings are borrowed until execute returns. */
int64_t tl_job_id(const tl_job_ctx *ctx);
const char *tl_job_kind(const tl_job_ctx *ctx);
const char *tl_job_queue(const tl_job_ctx *ctx);
unsigned tl_job_attempt(const tl_job_ctx *ctx);     /* 1 on the first run */
int64_t tl_job_scheduled_at(const tl_job_ctx *ctx); /* when it became due */
void *tl_job_worker_ctx(const tl_job_ctx *ctx);     /* tl_worker.ctx */

/* True once the job was cancelled, timed out, or the executor passed its
 * shutdown deadline: return soon. Cheap (one atomic load). */
bool tl_job_cancelled(const tl_job_ctx *ctx);

/* Return values with a reason: `return tl_job_error(ctx, "smtp: %s", e);`
 * keeps the message as the job's last error (truncated to 511 bytes) and
 * gives TL_JOB_RETRY; tl_job_discard gives TL_JOB_DISCARD;
 * tl_job_snooze records the delay and gives TL_JOB_SNOOZE. */
int tl_job_error(tl_job_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tl_job_discard(tl_job_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tl_job_snooze(tl_job_ctx *ctx, int64_t delay_us);

/* ---- inspection and manual control -------------------------------------- */

typedef enum tl_job_state {
  TL_JOB_PENDING = 1,   /* waiting to run: now, later, or for its retry */
  TL_JOB_RUNNING = 2,
  TL_JOB_COMPLETED = 3, /* kept for JOB_RETENTION by a durable store only */
  TL_JOB_DISCARDED = 4, /* failed for good; kept with its last error */
  TL_JOB_CANCELLED = 5
} tl_job_state;

/* "pending", "running", "completed", "discarded", "cancelled" ("unknown"). */
const char *tl_job_state_name(tl_job_state state);

/* A snapshot of one job. Strings are NULL when absent. */
typedef struct tl_job_info {
  int64_t id;
  const char *kind, *queue, *args, *unique_key;
  const char *last_error;
  tl_job_state state;
  int priority;
  unsigned attempt;      /* runs started so far */
  int max_retries;
  bool cancel_requested; /* running, asked to stop */
  int64_t created_us, run_at_us, finished_us; /* finished: 0 if not */
} tl_job_info;

/* A snapshot of job `id`. `*out` is freed with tl_job_info_free().
 * Returns 0, TL_ENOTFOUND or TL_ENOMEM. */
int tl_jobs_get(tl_jobs *ex, int64_t id, tl_job_info **out);
void tl_job_info_free(tl_job_info *info); /* NULL-safe */

/* Which jobs tl_jobs_list returns; zero fields match everything. */
typedef struct tl_job_filter {
  tl_job_state state;
  const char *kind;
  const char *queue;
  int64_t after_id;      /* only ids above this, for paging */
  size_t limit;          /* [100], at most 10000 */
} tl_job_filter;

typedef struct tl_job_list {
  size_t count;
  tl_job_info *items;    /* by id, ascending */
} tl_job_list;

/* Jobs matching `f` (NULL: all). `*out` is freed with tl_job_list_free().
 * Returns 0 or TL_ENOMEM. */
int tl_jobs_list(tl_jobs *ex, const tl_job_filter *f, tl_job_list **out);
void tl_job_list_free(tl_job_list *list); /* NULL-safe */

/* Run a discarded, cancelled or waiting job now, with a fresh count of
 * retries. Returns 0, TL_ENOTFOUND, TL_ESTATE (running), TL_ECONFLICT
 * (another job holds its unique key) or TL_ECLOSED. */
int tl_jobs_retry(tl_jobs *ex, int64_t id);

/* Cancel a job: a pending one becomes cancelled; a running one gets its
 * cancel flag, and becomes cancelled when it returns anything but
 * TL_JOB_OK. Returns 0, TL_ENOTFOUND or TL_ESTATE (already finished). */
int tl_jobs_cancel(tl_jobs *ex, int64_t id);

/* Counts of the store right now, and totals since tl_jobs_open. */
typedef struct tl_jobs_stats {
  uint64_t pending, running, discarded, cancelled; /* now (kept ones) */
  uint64_t submitted, completed, retried, snoozed; /* totals */
} tl_jobs_stats;
int tl_jobs_stats_get(tl_jobs *ex, tl_jobs_stats *out);

#ifdef __cplusplus
}
#endif
#endif
