/* Internal interfaces of the jobs module: the job store (a table of
 * functions filled by one file per store), the executor's hooks for the
 * scheduler, and time zones for cron. Not installed. */
#ifndef TRELLIS_JOBS_INT_H
#define TRELLIS_JOBS_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trellis/jobs.h"

/* ---- time zones ----------------------------------------------------------
 * A zone is the transitions of a TZif file plus the POSIX TZ rule of its
 * footer for times after the last transition. Offsets are seconds east of
 * UTC; instants are seconds since the epoch. NULL stands for UTC. */

typedef struct tl__tz_date {
  char kind;    /* 'M' (Mm.w.d), 'J' (Jn, no Feb 29) or 'D' (n, 0-based) */
  int m, w, d;  /* M: month 1-12, week 1-5 (5: last), weekday 0-6; J/D: d */
  int32_t secs; /* local time of day of the change, -167 h to 167 h */
} tl__tz_date;

typedef struct tl__tz {
  char *name;
  int64_t *trans;  /* ascending */
  int32_t *offs;   /* offset from trans[i] on */
  size_t n;
  int32_t off0;    /* before the first transition */
  bool has_rule;   /* a footer (or POSIX string) governs times after trans */
  bool rule_dst;   /* the rule has daylight saving time */
  int32_t std_off, dst_off;
  tl__tz_date start, end;
} tl__tz;

/* Load `name` from $TZDIR or /usr/share/zoneinfo, else read it as a POSIX
 * TZ rule. "UTC" and "" give NULL (UTC) with status 0. Returns 0,
 * TL_EINVAL ("time zone 'X': ...") or TL_ENOMEM. */
int tl__tz_load(tl__tz **out, const char *name);
/* Parse TZif data (RFC 8536, versions 1 to 4). */
int tl__tz_parse_tzif(tl__tz **out, const unsigned char *data, size_t len, const char *name);
/* Parse a POSIX TZ rule ("EST5EDT,M3.2.0,M11.1.0") into `tz`'s rule. */
int tl__tz_parse_posix(tl__tz *tz, const char *s, size_t len);
void tl__tz_free(tl__tz *tz);

/* The offset in effect at instant `t`. */
int32_t tl__tz_offset(const tl__tz *tz, int64_t t);
/* The first instant > t where the offset changes (INT64_MAX: none). */
int64_t tl__tz_next_change(const tl__tz *tz, int64_t t);
/* The last instant <= t where the offset changed (INT64_MIN: none). */
int64_t tl__tz_prev_change(const tl__tz *tz, int64_t t);

/* Proleptic Gregorian calendar helpers (days since 1970-01-01). */
int64_t tl__days_from_civil(int64_t y, unsigned m, unsigned d);
void tl__civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d);

/* ---- the job store ------------------------------------------------------- */

/* Why a running job's cancel flag is up (bits). */
enum {
  TL__CANCEL_USER = 1,     /* tl_jobs_cancel */
  TL__CANCEL_TIMEOUT = 2,  /* the kind's timeout passed */
  TL__CANCEL_SHUTDOWN = 4  /* the shutdown deadline passed; job released */
};

/* A job to enqueue. Strings are borrowed for the call. */
typedef struct tl__job_new {
  const char *kind, *queue;
  const char *args;
  size_t args_len;
  const char *unique_key;  /* NULL: none */
  int priority;
  int max_retries;
  int64_t run_at_us, created_us;
} tl__job_new;

typedef struct tl__job tl__job;

/* What a worker may take. */
typedef struct tl__fetch {
  int64_t now_us;
  int64_t lease_until_us;
  const char *const *queues;        /* NULL: every queue */
  size_t nqueues;
  /* Only jobs of these kinds (none when nkinds is 0). A store that can
   * hold only registered kinds (memory) may ignore it. */
  const char *const *kinds;
  size_t nkinds;
  const char *const *exclude_kinds; /* at their concurrency limit */
  size_t nexclude;
  /* A held job that completed, finished first as complete() would, in
   * the same step (one lock, or one transaction). NULL: none. */
  tl__job *done;
} tl__fetch;

/* A job held by a worker, filled by fetch into the caller's storage. Its
 * strings and `cancel` stay valid until the holder calls one finishing
 * operation (complete, fail, discard, snooze), which ends the hold
 * whatever it returns. */
struct tl__job {
  int64_t id;
  const char *kind, *queue, *args, *unique_key;
  int priority;
  unsigned attempt;        /* this run's number, 1 on the first */
  int max_retries;
  int64_t run_at_us;
  uint64_t lease;          /* this fetch's token */
  atomic_int *cancel;      /* TL__CANCEL_* bits */
  void *ref;               /* the store's */
};

typedef struct tl__jobs_store tl__jobs_store;

/* Told of each job that lost its lease: its kind, and whether it was
 * discarded (no attempt left) rather than made pending again. */
typedef void (*tl__lost_fn)(void *ctx, const char *kind, bool discarded);
/* Told the run_at of the oldest due pending job of a queue. */
typedef void (*tl__queue_age_fn)(void *ctx, const char *queue, int64_t run_at);

/* The operations of a store. Finishing operations return TL_ESTATE, and
 * change nothing, when the hold was lost (the lease expired and the job
 * was recovered, or it was released at shutdown). Every operation is
 * safe to call from any thread. */
typedef struct tl__jobs_store_ops {
  const char *name;
  /* Insert, or when a pending or running job of the same kind holds
   * `unique_key`, set *dup and give that job's id. */
  int (*enqueue)(tl__jobs_store *s, const tl__job_new *j, int64_t *id, bool *dup);
  /* Take the next runnable job: run_at <= now, highest priority, then
   * earliest run_at, then lowest id (FIFO). Returns 1 with *out filled,
   * 0 when none, or a negative status. */
  int (*fetch)(tl__jobs_store *s, const tl__fetch *f, tl__job *out);
  /* The earliest run_at among jobs not yet runnable (INT64_MAX: none): a
   * hint for how long an idle worker may sleep. */
  int64_t (*next_due)(tl__jobs_store *s);
  int (*complete)(tl__jobs_store *s, tl__job *j, int64_t now);
  /* A failed attempt: pending again at retry_at, keeping the error. */
  int (*fail)(tl__jobs_store *s, tl__job *j, int64_t now, int64_t retry_at, const char *error);
  /* Finished for good: TL_JOB_DISCARDED or TL_JOB_CANCELLED. */
  int (*discard)(tl__jobs_store *s, tl__job *j, int64_t now, tl_job_state state,
                 const char *error);
  /* Pending again at run_at; the attempt is not counted. */
  int (*snooze)(tl__jobs_store *s, tl__job *j, int64_t run_at);
  /* Return a held job to the queue now, attempt not counted, while the
   * holder still runs it: its finishing call will get TL_ESTATE. */
  int (*release)(tl__jobs_store *s, tl__job *j, int64_t now);
  /* Extend the leases of held jobs. */
  int (*heartbeat)(tl__jobs_store *s, tl__job *const *jobs, size_t n, int64_t lease_until);
  /* Running jobs whose lease ended before `now` count a failed attempt
   * ("lease expired"): pending again, or discarded past max_retries.
   * `lost` (may be NULL) is told of each. */
  int (*recover)(tl__jobs_store *s, int64_t now, tl__lost_fn lost, void *ctx, size_t *count);
  /* By id. cancel: pending -> cancelled, running -> cancel flag raised.
   * retry: discarded, cancelled or pending -> pending at now, attempts
   * reset. */
  int (*cancel)(tl__jobs_store *s, int64_t id, int64_t now);
  int (*retry)(tl__jobs_store *s, int64_t id, int64_t now);
  int (*get)(tl__jobs_store *s, int64_t id, tl_job_info **out);
  int (*list)(tl__jobs_store *s, const tl_job_filter *f, tl_job_list **out);
  int (*stats)(tl__jobs_store *s, tl_jobs_stats *out);
  /* For each queue with pending jobs due at `now`, the oldest run_at. */
  int (*oldest_due)(tl__jobs_store *s, int64_t now, tl__queue_age_fn fn, void *ctx);
  /* 0 when usable, else a status with the message set. */
  int (*ready)(tl__jobs_store *s);
  void (*close)(tl__jobs_store *s);

  /* Optional (NULL: not supported). */
  /* Insert `n` jobs without unique keys, all or none. */
  int (*enqueue_many)(tl__jobs_store *s, const tl__job_new *jobs, size_t n);
  /* Claim cron slot (`name`, `slot_us`) and insert `j` in one step: once
   * per slot among every executor sharing the store. *claimed is false
   * when another executor had it; when claimed, *prev_us is the latest
   * slot claimed before it (INT64_MIN: none). */
  int (*enqueue_slot)(tl__jobs_store *s, const char *name, int64_t slot_us,
                      const tl__job_new *j, bool *claimed, int64_t *prev_us);
  /* The latest claimed slot of schedule `name`: 1 with *slot_us, 0 when
   * none was ever claimed, or a negative status. */
  int (*last_slot)(tl__jobs_store *s, const char *name, int64_t *slot_us);
  /* At shutdown, once workers stopped fetching: record what is pending
   * and give back jobs fetched but not started. Later fetches find none. */
  void (*quiesce)(tl__jobs_store *s, int64_t now);
} tl__jobs_store_ops;

struct tl__jobs_store {
  const tl__jobs_store_ops *ops;
};

/* The in-memory store; keeps at most `retain_dead` discarded and
 * cancelled jobs. */
int tl__jobs_store_memory_open(tl__jobs_store **out, unsigned retain_dead);

/* The database store over `db` (borrowed). Migrates the schema first.
 * `batch` is how many jobs one fetch may take from the database at once
 * (the extra ones wait, leased, for this process's next fetches);
 * `retention_us` is how long completed jobs and claimed cron slots are
 * kept. On PostgreSQL, `wake` (may be NULL) is called from the store's
 * listener thread when another process made jobs runnable. */
typedef struct tl__sql_store_opts {
  unsigned batch;
  int64_t retention_us;
  int64_t lease_us;
  void (*wake)(void *ctx);
  void *wake_ctx;
} tl__sql_store_opts;
int tl__jobs_store_sql_open(tl__jobs_store **out, tl_db *db, const tl__sql_store_opts *o);

/* Helpers for stores to build snapshots as single allocations (freed
 * with free(), which tl_job_info_free and tl_job_list_free do): the bytes
 * `src`'s strings need, and a copy of `src` into `dst` whose strings are
 * written at *cursor (advanced). */
size_t tl__job_info_strsize(const tl_job_info *src);
void tl__job_info_copy(tl_job_info *dst, const tl_job_info *src, char **cursor);

/* ---- executor hooks used by the scheduler --------------------------------- */

typedef struct tl__sched tl__sched;

/* The executor's clock. */
int64_t tl__jobs_now(tl_jobs *ex);
/* Wake the thread that fires schedules. */
void tl__jobs_wake_timer(tl_jobs *ex);
/* The executor's scheduler; NULL after shutdown. */
tl__sched *tl__jobs_sched(tl_jobs *ex);
const char *tl__jobs_cron_tz(tl_jobs *ex);
/* Submit the job of cron slot `slot_us` of schedule `name`: once per
 * slot across executors when the store is shared. *prev_us gets
 * INT64_MAX when another executor had the slot, else the slot claimed
 * before it in a shared store, or INT64_MIN when there is none (or the
 * store is not shared). */
int tl__jobs_submit_slot(tl_jobs *ex, const char *name, int64_t slot_us, const char *kind,
                         const char *args, const tl_job_opts *o, int64_t *prev_us);
/* Count `n` slots of schedule `name` that passed unclaimed. */
void tl__jobs_cron_missed(tl_jobs *ex, const char *name, uint64_t n);
/* The first slot a new schedule should consider, given its cron: in a
 * shared store, the latest slot missed since the last claimed one (when
 * the configuration says to catch up), else the next one after now. */
int64_t tl__jobs_first_slot(tl_jobs *ex, const char *name, const tl_cron *c);
/* Is `kind` registered? */
bool tl__jobs_has_kind(tl_jobs *ex, const char *kind);
/* Check a kind or queue name: 1-64 of [A-Za-z0-9_.:-]. */
bool tl__jobs_name_ok(const char *s);
/* Is s[0..n) one JSON value (RFC 8259, nesting up to 64)? On failure
 * writes the offset of the first bad byte. No allocation. */
bool tl__json_valid(const char *s, size_t n, size_t *bad_at);

/* The scheduler: a set of named cron schedules. */
int tl__sched_new(tl__sched **out);
void tl__sched_free(tl__sched *s);
/* Submit a job for every due slot (the latest one when several are due)
 * and return the earliest next slot (INT64_MAX: none). Runs on the
 * executor's timer thread. */
int64_t tl__sched_run(tl__sched *s, tl_jobs *ex, int64_t now);
/* Stop firing; later adds fail with TL_ECLOSED. */
void tl__sched_stop(tl__sched *s);

#endif
