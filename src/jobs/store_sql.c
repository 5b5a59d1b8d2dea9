/* The durable job store: one table of jobs in a SQL database (SQLite,
 * PostgreSQL, MySQL/MariaDB), shared by every executor that uses it.
 *
 * A fetch leases jobs: state 'running', lease_owner (this process),
 * lease_token (this fetch) and lease_until, renewed by heartbeats. Every
 * finishing statement checks the token, so a holder whose lease expired
 * (and whose job another worker took) changes nothing. A process that
 * dies leaves its rows running until their lease ends; any executor's
 * recovery then counts the lost attempt and makes them runnable again.
 *
 * Taking jobs one statement at a time would cost two round trips and two
 * commits per job, so a fetch leases up to `batch` jobs at once and keeps
 * the extra ones for this process's next fetches, and plain completions
 * wait in memory to be recorded by the next fetch in the same step:
 * PostgreSQL runs both in one statement (a data-modifying WITH, then
 * UPDATE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED))
 * RETURNING), SQLite in one BEGIN IMMEDIATE transaction (one writer), and
 * MariaDB in one READ COMMITTED transaction (SELECT ... FOR UPDATE SKIP
 * LOCKED, then UPDATE by id: it has no UPDATE ... RETURNING). A completion
 * not yet recorded when the process dies runs again: the queue is
 * at-least-once, like any queue whose workers can die between the work
 * and its acknowledgement.
 *
 * Statements that name jobs by id take the ids as parameters, in lists
 * padded to a power of two, so that a handful of texts serve every count
 * and prepared statements are reused rather than prepared per call.
 *
 * On PostgreSQL, idle workers of other processes are woken by NOTIFY: a
 * listener thread per store wakes the executor's workers, and a notifier
 * thread sends at most one notification per NOTIFY_GAP_US for the jobs
 * this process made runnable (a NOTIFY per insert would serialize every
 * committing submitter on the server's notification queue). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core_int.h"
#include "jobs_int.h"
#include "trellis/resilience.h"
#include "trellis/error.h"
#include "trellis/log.h"

#define PENDING_STATES "('available','scheduled','retryable')"
#define LIVE_STATES "('available','scheduled','running','retryable')"
/* The same on SQLite, which builds a table for an IN list each time a
 * statement runs: once per row inserted, where a CHECK or the predicate
 * of a partial index has one, which cost more than the insert. Its schema
 * says them with ORs, and its queries must say the same to use the
 * partial indexes. */
#define PENDING_OR "(state = 'available' OR state = 'scheduled' OR state = 'retryable')"
#define LIVE_OR "(state = 'available' OR state = 'scheduled' OR state = 'running' OR" \
                " state = 'retryable')"
#define COLUMNS "id, kind, queue, args, state, priority, run_at, attempt, max_attempts," \
                " last_error, unique_key, cancel_requested, lease_owner, lease_token," \
                " lease_until, created_us, finished_us"
#define MAX_DONE 256  /* completions recorded by one statement at most */
#define MAX_DUES 256  /* future run_at values remembered for idle sleeps */
#define MAX_LIST 256  /* jobs named by one statement at most */
#define MAX_BATCH 128 /* jobs one fetch asks for at most */
#define PRUNE_ROWS 10000
#define NOTIFY_CHANNEL "trellis_jobs"
#define NOTIFY_GAP_US 10000 /* between two notifications from one process */

/* ---- schema ----------------------------------------------------------------- */

static const tl_migration jobs_migrations[] = {
  { .version = 1, .name = "durable job queue",
    .sql_sqlite =
      "CREATE TABLE trellis_jobs ("
      " id INTEGER PRIMARY KEY AUTOINCREMENT,"
      " kind TEXT NOT NULL, queue TEXT NOT NULL, args TEXT NOT NULL,"
      " state TEXT NOT NULL CHECK (state IN ('available','scheduled','running','retryable',"
      "'completed','discarded','cancelled')),"
      " priority INTEGER NOT NULL DEFAULT 0, run_at INTEGER NOT NULL,"
      " attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,"
      " last_error TEXT, unique_key TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,"
      " lease_owner TEXT, lease_token INTEGER, lease_until INTEGER,"
      " created_us INTEGER NOT NULL, finished_us INTEGER);"
      "CREATE INDEX trellis_jobs_fetch ON trellis_jobs (priority DESC, run_at, id)"
      " WHERE state IN " PENDING_STATES ";"
      "CREATE INDEX trellis_jobs_lease ON trellis_jobs (lease_until) WHERE state = 'running';"
      "CREATE INDEX trellis_jobs_state ON trellis_jobs (state, id);"
      "CREATE INDEX trellis_jobs_finished ON trellis_jobs (finished_us)"
      " WHERE state = 'completed';"
      "CREATE UNIQUE INDEX trellis_jobs_unique ON trellis_jobs (kind, unique_key)"
      " WHERE unique_key IS NOT NULL AND state IN " LIVE_STATES ";"
      "CREATE TABLE trellis_jobs_cron_slots ("
      " name TEXT NOT NULL, slot_us INTEGER NOT NULL, job_id INTEGER,"
      " created_us INTEGER NOT NULL, PRIMARY KEY (name, slot_us))",
    .sql_postgres =
      "CREATE TABLE trellis_jobs ("
      " id BIGSERIAL PRIMARY KEY,"
      " kind VARCHAR(64) NOT NULL, queue VARCHAR(64) NOT NULL, args TEXT NOT NULL,"
      " state VARCHAR(16) NOT NULL CHECK (state IN ('available','scheduled','running',"
      "'retryable','completed','discarded','cancelled')),"
      " priority INT NOT NULL DEFAULT 0, run_at BIGINT NOT NULL,"
      " attempt INT NOT NULL DEFAULT 0, max_attempts INT NOT NULL,"
      " last_error TEXT, unique_key VARCHAR(255), cancel_requested SMALLINT NOT NULL DEFAULT 0,"
      " lease_owner VARCHAR(128), lease_token BIGINT, lease_until BIGINT,"
      " created_us BIGINT NOT NULL, finished_us BIGINT);"
      "CREATE INDEX trellis_jobs_fetch ON trellis_jobs (priority DESC, run_at, id)"
      " WHERE state IN " PENDING_STATES ";"
      "CREATE INDEX trellis_jobs_lease ON trellis_jobs (lease_until) WHERE state = 'running';"
      "CREATE INDEX trellis_jobs_state ON trellis_jobs (state, id);"
      "CREATE INDEX trellis_jobs_finished ON trellis_jobs (finished_us)"
      " WHERE state = 'completed';"
      "CREATE UNIQUE INDEX trellis_jobs_unique ON trellis_jobs (kind, unique_key)"
      " WHERE unique_key IS NOT NULL AND state IN " LIVE_STATES ";"
      "CREATE TABLE trellis_jobs_cron_slots ("
      " name VARCHAR(64) NOT NULL, slot_us BIGINT NOT NULL, job_id BIGINT,"
      " created_us BIGINT NOT NULL, PRIMARY KEY (name, slot_us))",
    /* No partial indexes: the unique key lives in a generated column that
     * is NULL unless the job is pending or running, and NULLs never
     * collide in a unique index. */
    .sql_mysql =
      "CREATE TABLE trellis_jobs ("
      " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
      " kind VARCHAR(64) NOT NULL, queue VARCHAR(64) NOT NULL, args LONGTEXT NOT NULL,"
      " state VARCHAR(16) NOT NULL,"
      " priority INT NOT NULL DEFAULT 0, run_at BIGINT NOT NULL,"
      " attempt INT NOT NULL DEFAULT 0, max_attempts INT NOT NULL,"
      " last_error TEXT, unique_key VARCHAR(255), cancel_requested SMALLINT NOT NULL DEFAULT 0,"
      " lease_owner VARCHAR(128), lease_token BIGINT, lease_until BIGINT,"
      " created_us BIGINT NOT NULL, finished_us BIGINT,"
      " unique_live VARCHAR(255) AS (CASE WHEN state IN " LIVE_STATES
      " THEN unique_key END) PERSISTENT,"
      " CONSTRAINT trellis_jobs_state_ok CHECK (state IN ('available','scheduled','running',"
      "'retryable','completed','discarded','cancelled')),"
      " UNIQUE KEY trellis_jobs_unique (kind, unique_live),"
      " KEY trellis_jobs_fetch (state, priority, run_at, id),"
      " KEY trellis_jobs_lease (state, lease_until),"
      " KEY trellis_jobs_finished (state, finished_us)"
      ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;"
      "CREATE TABLE trellis_jobs_cron_slots ("
      " name VARCHAR(64) NOT NULL, slot_us BIGINT NOT NULL, job_id BIGINT,"
      " created_us BIGINT NOT NULL, PRIMARY KEY (name, slot_us)"
      ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" },
  /* PostgreSQL, SQLite: completed jobs, the bulk of the table, leave the
   * state index, so that recording a completion writes one index entry
   * less (lists of completed jobs walk the primary key).
   * MariaDB: a fetch must lock only the rows it takes. Ordered by
   * priority DESC over three states, MariaDB sorts every pending row and
   * locks them all until the fetch commits, so concurrent fetches find
   * nothing (or deadlock on the index). fetch_order is -priority while the
   * job is pending, else NULL: its index gives the fetch order, and the
   * scan stops at LIMIT. */
  { .version = 2, .name = "indexes for concurrent fetches",
    .sql_postgres = "DROP INDEX trellis_jobs_state;"
                    "CREATE INDEX trellis_jobs_state ON trellis_jobs (state, id)"
                    " WHERE state <> 'completed'",
    /* SQLite cannot change a CHECK: the table is rebuilt, and keeps its
     * AUTOINCREMENT sequence, so that ids of pruned jobs never return. */
    .sql_sqlite =
      "CREATE TABLE trellis_jobs_v2 ("
      " id INTEGER PRIMARY KEY AUTOINCREMENT,"
      " kind TEXT NOT NULL, queue TEXT NOT NULL, args TEXT NOT NULL,"
      " state TEXT NOT NULL CHECK (" LIVE_OR " OR state = 'completed' OR state = 'discarded'"
      " OR state = 'cancelled'),"
      " priority INTEGER NOT NULL DEFAULT 0, run_at INTEGER NOT NULL,"
      " attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,"
      " last_error TEXT, unique_key TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,"
      " lease_owner TEXT, lease_token INTEGER, lease_until INTEGER,"
      " created_us INTEGER NOT NULL, finished_us INTEGER);"
      "INSERT INTO trellis_jobs_v2 (" COLUMNS ") SELECT " COLUMNS " FROM trellis_jobs;"
      "DELETE FROM sqlite_sequence WHERE name = 'trellis_jobs_v2';"
      "INSERT INTO sqlite_sequence (name, seq) SELECT 'trellis_jobs_v2', MAX(seq) FROM"
      " (SELECT seq FROM sqlite_sequence WHERE name = 'trellis_jobs'"
      " UNION ALL SELECT MAX(id) FROM trellis_jobs) WHERE seq IS NOT NULL HAVING COUNT(*) > 0;"
      "DROP TABLE trellis_jobs;"
      "ALTER TABLE trellis_jobs_v2 RENAME TO trellis_jobs;"
      "CREATE INDEX trellis_jobs_fetch ON trellis_jobs (priority DESC, run_at, id)"
      " WHERE " PENDING_OR ";"
      "CREATE INDEX trellis_jobs_lease ON trellis_jobs (lease_until) WHERE state = 'running';"
      "CREATE INDEX trellis_jobs_state ON trellis_jobs (state, id) WHERE state <> 'completed';"
      "CREATE INDEX trellis_jobs_finished ON trellis_jobs (finished_us)"
      " WHERE state = 'completed';"
      "CREATE UNIQUE INDEX trellis_jobs_unique ON trellis_jobs (kind, unique_key)"
      " WHERE unique_key IS NOT NULL AND " LIVE_OR,
    .sql_mysql =
      "ALTER TABLE trellis_jobs ADD COLUMN fetch_order BIGINT AS (CASE WHEN state IN "
      PENDING_STATES " THEN -priority END) STORED,"
      " ADD KEY trellis_jobs_next (fetch_order, run_at, id), DROP KEY trellis_jobs_fetch" },
};

/* ---- the store ------------------------------------------------------------------- */

/* A job this process holds: fetched and not yet finished. */
typedef struct held {
  tl__job job;
  atomic_int cancel;
  bool started;           /* handed to a worker (else waiting in the buffer) */
  struct held *prev, *next;
  char data[];
} held;

/* A job named by a statement: its id and the token of its hold. */
typedef struct done_rec {
  int64_t id, token;
  int64_t at;             /* completions: when (the executor's clock) */
} done_rec;

typedef struct sql_store {
  tl__jobs_store base;
  tl_db *db;
  tl_db_dialect d;
  unsigned batch;
  int64_t retention_us, lease_us;
  char owner[96];
  uint64_t token_base;
  atomic_ullong token_seq;
  void (*wake)(void *ctx);
  void *wake_ctx;

  /* SQLite has one writer: this process's writers take turns here
   * rather than in SQLite's busy handler, whose sleeps grow to tens of
   * milliseconds and then fail with "database is locked". */
  pthread_mutex_t wmu;
  pthread_mutex_t mu;     /* everything below */
  held *held;             /* every held job, newest first */
  held **buf;             /* fetched, not started: oldest first */
  size_t nbuf;
  done_rec done[MAX_DONE];
  size_t ndone;
  int64_t dues[MAX_DUES];
  size_t ndues;
  bool stopped;
  /* One fetch at a time goes to the database; workers that find the
   * buffer empty meanwhile wait for its jobs. Concurrent fetches of one
   * process would race for the same rows at the head of the queue, and
   * under READ COMMITTED a row updated after a fetch's snapshot is locked
   * in its new version even with SKIP LOCKED, so they would wait for
   * each other (and deadlock with completions). */
  bool fetching;
  uint64_t fetch_gen;     /* fetches done */
  bool drained;           /* the last fetch found fewer jobs than it asked for */
  pthread_cond_t fetch_cv;
  /* How many jobs a fetch asks for: `batch` (the number of workers)
   * while jobs take longer than a round trip, doubled up to MAX_BATCH
   * while this process runs a whole batch faster than it fetches one, so
   * that short jobs are not held up by round trips and long ones are not
   * held back from other processes in a buffer. */
  unsigned limit;
  int64_t fetch_us, fetched_mono; /* the last fetch's round trip, and its end */
  int64_t last_renew_mono, next_prune;
  tl_jobs_stats st;       /* totals since open */

  /* PostgreSQL wake-ups (see the top of the file). */
  tl_db_listener *listener;
  pthread_t listen_th, notify_th;
  bool threads;           /* both started */
  atomic_bool quit;
  pthread_mutex_t nmu;    /* the notifier's state below */
  pthread_cond_t ncv;
  bool npending;
  int64_t nrun_at;        /* the earliest run_at announced since the last notification */
} sql_store;

static sql_store *S(tl__jobs_store *s)
{
  return (sql_store *)s;
}

/* "Pending" and "pending or running" as conditions, in the words of
 * the partial indexes of this database. */
static const char *pending_sql(const sql_store *m)
{
  return m->d == TL_DB_SQLITE ? PENDING_OR : "state IN " PENDING_STATES;
}

static const char *live_sql(const sql_store *m)
{
  return m->d == TL_DB_SQLITE ? LIVE_OR : "state IN " LIVE_STATES;
}

static void wlock(sql_store *m)
{
  if (m->d == TL_DB_SQLITE)
    pthread_mutex_lock(&m->wmu);
}

static void wunlock(sql_store *m)
{
  if (m->d == TL_DB_SQLITE)
    pthread_mutex_unlock(&m->wmu);
}

/* A writing statement. It runs alone (autocommit), so a deadlock or
 * serialization failure rolled it back whole and it is safe to run again:
 * MariaDB reports deadlocks between a fetch's row locks and a concurrent
 * cancel, release or completion. */
static int wexec(sql_store *m, int64_t *affected, const char *sql, const tl_value *args,
                 size_t nargs)
{
  static const tl_backoff retry = { .base_us = 2000, .cap_us = 100000 };
  for (unsigned attempt = 0;; attempt++) {
    wlock(m);
    int rc = tl_db_exec(m->db, affected, sql, args, nargs);
    wunlock(m);
    if (rc != TL_ERETRY || attempt >= 5)
      return rc;
    tl_sleep_us(tl_backoff_delay(&retry, attempt));
  }
}

static const char *state_text(tl_job_state st)
{
  switch (st) {
  case TL_JOB_RUNNING: return "running";
  case TL_JOB_COMPLETED: return "completed";
  case TL_JOB_DISCARDED: return "discarded";
  case TL_JOB_CANCELLED: return "cancelled";
  default: return "available";
  }
}

static tl_job_state state_of(const char *s)
{
  if (!strcmp(s, "running")) return TL_JOB_RUNNING;
  if (!strcmp(s, "completed")) return TL_JOB_COMPLETED;
  if (!strcmp(s, "discarded")) return TL_JOB_DISCARDED;
  if (!strcmp(s, "cancelled")) return TL_JOB_CANCELLED;
  return TL_JOB_PENDING;
}

static int max_attempts_of(int max_retries)
{
  return max_retries < 0 ? 1 : max_retries + 1;
}

static int max_retries_of(int64_t max_attempts)
{
  return max_attempts <= 1 ? -1 : (int)(max_attempts - 1);
}

static int64_t col_int(tl_rows *r, int c)
{
  int64_t v = 0;
  tl_rows_int(r, c, &v);
  return v;
}

static const char *col_text(tl_rows *r, int c)
{
  const char *s = NULL;
  size_t n;
  if (tl_rows_text(r, c, &s, &n) != 0)
    return NULL;
  return s;
}

/* locks: m->mu held */
static void note_due(sql_store *m, int64_t run_at, int64_t now)
{
  if (run_at <= now || m->ndues == MAX_DUES)
    return; /* due already, or the poll interval will find it */
  m->dues[m->ndues++] = run_at;
}

/* Jobs became runnable at `run_at` (or later): tell the other processes'
 * idle workers, through the notifier thread. */
static void announce(sql_store *m, int64_t run_at)
{
  if (!m->threads)
    return;
  pthread_mutex_lock(&m->nmu);
  if (!m->npending || run_at < m->nrun_at)
    m->nrun_at = run_at;
  m->npending = true;
  pthread_cond_signal(&m->ncv);
  pthread_mutex_unlock(&m->nmu);
}

/* ---- naming jobs in statements ------------------------------------------------------------ */

static size_t padded(size_t n)
{
  size_t p = 1;
  while (p < n)
    p <<= 1;
  return p;
}

/* Append " WHERE id IN ($f, ...) AND (id, lease_token) IN (($f, $f+1),
 * ...)" for holds d[0..n), n <= MAX_LIST, padded to a power of two by
 * repeating the last one; their values go to a[]. Returns the number of
 * values. A token is set only while its job runs, so this also says
 * "running"; saying it again would let the planner walk the state index,
 * full of the dead entries of every job that ran since the last vacuum. */
static size_t holds_sql(const sql_store *m, tl__buf *b, size_t first, const done_rec *d,
                        size_t n, tl_value *a)
{
  size_t p = padded(n);
  tl__buf_puts(b, " WHERE id IN (");
  for (size_t i = 0; i < p; i++)
    tl__buf_printf(b, "%s$%zu", i ? "," : "", first + 2 * i);
  tl__buf_printf(b, ") AND (id, lease_token) IN (%s", m->d == TL_DB_SQLITE ? "VALUES " : "");
  for (size_t i = 0; i < p; i++) {
    tl__buf_printf(b, "%s($%zu,$%zu)", i ? "," : "", first + 2 * i, first + 2 * i + 1);
    const done_rec *r = &d[i < n ? i : n - 1];
    a[2 * i] = tl_int(r->id);
    a[2 * i + 1] = tl_int(r->token);
  }
  tl__buf_puts(b, ")");
  return 2 * p;
}

/* Append "($f, ...)" for ids[0..n), n <= MAX_LIST, padded as above. */
static size_t ids_sql(tl__buf *b, size_t first, const int64_t *ids, size_t n, tl_value *a)
{
  size_t p = padded(n);
  tl__buf_puts(b, "(");
  for (size_t i = 0; i < p; i++) {
    tl__buf_printf(b, "%s$%zu", i ? "," : "", first + i);
    a[i] = tl_int(ids[i < n ? i : n - 1]);
  }
  tl__buf_puts(b, ")");
  return p;
}

#define COMPLETE_SET "UPDATE trellis_jobs SET state = 'completed', lease_owner = NULL," \
                     " lease_token = NULL, lease_until = NULL, finished_us = $"

/* The statement that records completions of holds d[0..n) at `at`, with
 * placeholders from $first. Returns the number of values put in a[]. */
static size_t complete_sql(const sql_store *m, tl__buf *b, size_t first, const done_rec *d,
                           size_t n, int64_t at, tl_value *a)
{
  tl__buf_printf(b, COMPLETE_SET "%zu", first);
  a[0] = tl_int(at);
  return 1 + holds_sql(m, b, first + 1, d, n, a + 1);
}

/* Run "`head` WHERE <holds>" (head's values in args) for holds d[0..n),
 * MAX_LIST at a time; `*affected` (may be NULL) gets the total. */
static int exec_holds(sql_store *m, const char *head, const tl_value *args, size_t nargs,
                      const done_rec *d, size_t n, int64_t *affected)
{
  tl_value a[2 * MAX_LIST + 8];
  int64_t total = 0;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i += MAX_LIST) {
    size_t k = n - i < MAX_LIST ? n - i : MAX_LIST, na = nargs;
    char stack[4096];
    tl__buf b = TL__BUF_STACK(stack);
    tl__buf_puts(&b, head);
    if (nargs)
      memcpy(a, args, nargs * sizeof *a);
    na += holds_sql(m, &b, nargs + 1, d + i, k, a + nargs);
    int64_t got = 0;
    rc = b.failed ? tl_error_set(TL_ENOMEM, "jobs: out of memory")
                  : wexec(m, &got, b.data, a, na);
    total += got;
    tl__buf_free(&b);
  }
  if (affected)
    *affected = total;
  return rc;
}

/* ---- holding ------------------------------------------------------------------------ */

/* A held record for the current row of a fetch's result:
 * id, kind, queue, args, unique_key, priority, attempt, max_attempts, run_at.
 * `bump`: the row shows the attempt before this fetch counted it. */
static held *held_from_row(tl_rows *r, int64_t token, bool bump)
{
  const char *kind = col_text(r, 1), *queue = col_text(r, 2), *args = col_text(r, 3),
             *key = col_text(r, 4);
  if (!kind || !queue || !args)
    return NULL;
  size_t kl = strlen(kind) + 1, ql = strlen(queue) + 1, al = strlen(args) + 1,
         ul = key ? strlen(key) + 1 : 0;
  held *h = calloc(1, sizeof *h + kl + ql + al + ul);
  if (!h)
    return NULL;
  char *p = h->data;
  memcpy(p, kind, kl);
  h->job.kind = p;
  p += kl;
  memcpy(p, queue, ql);
  h->job.queue = p;
  p += ql;
  memcpy(p, args, al);
  h->job.args = p;
  p += al;
  if (key) {
    memcpy(p, key, ul);
    h->job.unique_key = p;
  }
  h->job.id = col_int(r, 0);
  h->job.priority = (int)col_int(r, 5);
  h->job.attempt = (unsigned)col_int(r, 6) + bump;
  h->job.max_retries = max_retries_of(col_int(r, 7));
  h->job.run_at_us = col_int(r, 8);
  h->job.lease = (uint64_t)token;
  atomic_init(&h->cancel, 0);
  h->job.cancel = &h->cancel;
  h->job.ref = h;
  return h;
}

/* locks: m->mu held */
static void held_link(sql_store *m, held *h)
{
  h->prev = NULL;
  h->next = m->held;
  if (m->held)
    m->held->prev = h;
  m->held = h;
}

/* locks: m->mu held */
static void held_unlink(sql_store *m, held *h)
{
  if (h->prev)
    h->prev->next = h->next;
  else
    m->held = h->next;
  if (h->next)
    h->next->prev = h->prev;
}

static void held_drop(sql_store *m, held *h)
{
  pthread_mutex_lock(&m->mu);
  held_unlink(m, h);
  pthread_mutex_unlock(&m->mu);
  free(h);
}

/* ---- recording completions together ------------------------------------------------- */

/* Take the completions waiting in memory; returns their count and the
 * latest of their times (they are a few milliseconds apart at most), by
 * which they are all stamped. locks: m->mu held */
static size_t take_done(sql_store *m, done_rec *d, int64_t *at)
{
  size_t n = m->ndone;
  memcpy(d, m->done, n * sizeof *d);
  m->ndone = 0;
  *at = INT64_MIN;
  for (size_t i = 0; i < n; i++)
    if (d[i].at > *at)
      *at = d[i].at;
  return n;
}

static void record_done(sql_store *m, const done_rec *d, size_t n, int64_t at)
{
  if (!n)
    return;
  int rc = exec_holds(m, COMPLETE_SET "1", TL_ARGS(tl_int(at)), d, n, NULL);
  if (rc != 0) /* not retried here: the leases end and the jobs run again */
    tl_log(TL_LOG_ERROR, "jobs: recording completions failed", TL_F_INT("jobs", n),
           TL_F_STR("error", tl_error_last()));
}

/* Record the completions waiting in memory now. */
static void flush_done(sql_store *m)
{
  done_rec d[MAX_DONE];
  int64_t at;
  pthread_mutex_lock(&m->mu);
  size_t n = take_done(m, d, &at);
  pthread_mutex_unlock(&m->mu);
  record_done(m, d, n, at);
}

/* Keep a completion for the next fetch; records them now when the list
 * is full. */
static void defer_done(sql_store *m, tl__job *j, int64_t now)
{
  held *h = j->ref;
  bool full;
  pthread_mutex_lock(&m->mu);
  held_unlink(m, h);
  m->done[m->ndone++] = (done_rec){ h->job.id, (int64_t)h->job.lease, now };
  full = m->ndone == MAX_DONE;
  m->st.completed++;
  pthread_mutex_unlock(&m->mu);
  free(h);
  if (full)
    flush_done(m);
}

/* ---- enqueue ---------------------------------------------------------------------------- */

#define INSERT_VALUES " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
static const char *INSERT_COLS =
  "INSERT INTO trellis_jobs (kind, queue, args, state, priority, run_at, max_attempts,"
  " unique_key, created_us)" INSERT_VALUES;
#define INSERT_ROWS 64 /* rows of one multi-row INSERT at most (a power of two) */

static void job_args(const tl__job_new *j, tl_value *a)
{
  a[0] = tl_text(j->kind);
  a[1] = tl_text(j->queue);
  a[2] = tl_textn(j->args, j->args_len);
  a[3] = tl_text(j->run_at_us > j->created_us ? "scheduled" : "available");
  a[4] = tl_int(j->priority);
  a[5] = tl_int(j->run_at_us);
  a[6] = tl_int(max_attempts_of(j->max_retries));
  a[7] = tl_text(j->unique_key);
  a[8] = tl_int(j->created_us);
}

/* Insert one job; with `ignore`, a unique-key collision inserts nothing.
 * Returns 1 with *id, 0 when ignored, or a status. */
static int insert_job(sql_store *m, tl_tx *tx, const tl__job_new *j, bool ignore, int64_t *id)
{
  char sql[512];
  if (m->d == TL_DB_MYSQL)
    snprintf(sql, sizeof sql, "%s%s RETURNING id", ignore ? "INSERT IGNORE" : "INSERT",
             INSERT_COLS + 6);
  else
    snprintf(sql, sizeof sql, "%s%s RETURNING id", INSERT_COLS,
             ignore ? " ON CONFLICT DO NOTHING" : "");
  tl_value a[9];
  job_args(j, a);
  tl_rows *r;
  if (!tx)
    wlock(m);
  int rc = tx ? tl_tx_query(tx, &r, sql, a, 9) : tl_db_query(m->db, &r, sql, a, 9);
  if (rc == 0) {
    rc = tl_rows_next(r);
    if (rc == 1)
      *id = col_int(r, 0);
    tl_rows_free(r);
  }
  if (!tx)
    wunlock(m);
  return rc;
}

static int sql_enqueue(tl__jobs_store *s, const tl__job_new *j, int64_t *id, bool *dup)
{
  sql_store *m = S(s);
  *dup = false;
  int rc;
  for (int tries = 0; tries < 10; tries++) {
    rc = insert_job(m, NULL, j, j->unique_key != NULL, id);
    if (rc < 0)
      return tl_error_wrap(rc, "jobs: enqueue '%s'", j->kind);
    if (rc == 1)
      break;
    /* The key is taken: find its holder, unless it finished meanwhile. */
    tl_rows *r;
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT id FROM trellis_jobs WHERE kind = $1 AND unique_key = $2"
             " AND %s", live_sql(m));
    rc = tl_db_query(m->db, &r, sql, TL_ARGS(tl_text(j->kind), tl_text(j->unique_key)));
    if (rc)
      return tl_error_wrap(rc, "jobs: enqueue '%s'", j->kind);
    rc = tl_rows_next(r);
    if (rc == 1)
      *id = col_int(r, 0);
    tl_rows_free(r);
    if (rc == 1) {
      *dup = true;
      return 0;
    }
  }
  if (rc != 1)
    return tl_error_set(TL_ERETRY, "jobs: enqueue '%s': unique key '%s' kept changing hands",
                        j->kind, j->unique_key);
  pthread_mutex_lock(&m->mu);
  note_due(m, j->run_at_us, j->created_us);
  m->st.submitted++;
  pthread_mutex_unlock(&m->mu);
  announce(m, j->run_at_us);
  return 0;
}

static int sql_enqueue_many(tl__jobs_store *s, const tl__job_new *jobs, size_t n)
{
  sql_store *m = S(s);
  if (!n)
    return 0;
  tl_value *a = malloc(INSERT_ROWS * 9 * sizeof *a);
  if (!a)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  tl_tx *tx;
  wlock(m);
  int rc = tl_db_begin(m->db, &tx);
  /* Multi-row INSERTs of INSERT_ROWS, then of the powers of two that
   * make up the rest: a few statement texts, each a prepared statement
   * run once per chunk rather than once per row. */
  for (size_t i = 0; i < n && rc == 0;) {
    size_t k = INSERT_ROWS;
    while (k > n - i)
      k /= 2;
    char stack[8192];
    tl__buf b = TL__BUF_STACK(stack);
    tl__buf_add(&b, INSERT_COLS, strlen(INSERT_COLS) - strlen(INSERT_VALUES));
    tl__buf_puts(&b, " VALUES");
    for (size_t r = 0; r < k; r++) {
      tl__buf_printf(&b, "%s(", r ? ", " : " ");
      for (size_t c = 0; c < 9; c++)
        tl__buf_printf(&b, "%s$%zu", c ? ", " : "", r * 9 + c + 1);
      tl__buf_puts(&b, ")");
      job_args(&jobs[i + r], a + r * 9);
    }
    rc = b.failed ? tl_error_set(TL_ENOMEM, "jobs: out of memory")
                  : tl_tx_exec(tx, NULL, b.data, a, k * 9);
    tl__buf_free(&b);
    i += k;
  }
  if (rc == 0)
    rc = tl_tx_commit(tx);
  else
    tl_tx_rollback(tx);
  wunlock(m);
  free(a);
  if (rc)
    return tl_error_wrap(rc, "jobs: enqueue %zu '%s' jobs", n, jobs[0].kind);
  int64_t first = INT64_MAX;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < n; i++) {
    note_due(m, jobs[i].run_at_us, jobs[i].created_us);
    if (jobs[i].run_at_us < first)
      first = jobs[i].run_at_us;
  }
  m->st.submitted += n;
  pthread_mutex_unlock(&m->mu);
  announce(m, first);
  return 0;
}

/* ---- fetch ------------------------------------------------------------------------------ */

static bool in_list(const char *s, const char *const *list, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (!strcmp(list[i], s))
      return true;
  return false;
}

/* Take the oldest buffered job that the filter allows. locks: m->mu held */
static held *buf_take(sql_store *m, const tl__fetch *f)
{
  for (size_t i = 0; i < m->nbuf; i++) {
    held *h = m->buf[i];
    if (f->nexclude && in_list(h->job.kind, f->exclude_kinds, f->nexclude))
      continue;
    memmove(&m->buf[i], &m->buf[i + 1], (m->nbuf - i - 1) * sizeof *m->buf);
    m->nbuf--;
    h->started = true;
    return h;
  }
  return NULL;
}

static void name_list(tl__buf *b, const char *what, const char *const *names, size_t n,
                      size_t *p, tl_value *a, size_t *na)
{
  if (!n)
    return;
  tl__buf_printf(b, " AND %s (", what);
  for (size_t i = 0; i < n; i++) {
    tl__buf_printf(b, "%s$%zu", i ? ", " : "", (*p)++);
    a[(*na)++] = tl_text(names[i]);
  }
  tl__buf_puts(b, ")");
}

/* " FROM trellis_jobs WHERE <due, pending, ours> ORDER BY <fetch order>"
 * with placeholders from $first; the values go to a[*na...]. */
static void fetch_from_sql(const sql_store *m, tl__buf *b, const tl__fetch *f, size_t first,
                           tl_value *a, size_t *na)
{
  tl__buf_printf(b, " FROM trellis_jobs WHERE %s AND run_at <= $%zu",
                 m->d == TL_DB_MYSQL ? "fetch_order IS NOT NULL" : pending_sql(m),
                 first);
  a[(*na)++] = tl_int(f->now_us);
  size_t p = first + 1;
  name_list(b, "queue IN", f->queues, f->nqueues, &p, a, na);
  name_list(b, "kind IN", f->kinds, f->nkinds, &p, a, na);
  name_list(b, "kind NOT IN", f->exclude_kinds, f->nexclude, &p, a, na);
  tl__buf_puts(b, m->d == TL_DB_MYSQL ? " ORDER BY fetch_order, run_at, id"
                                      : " ORDER BY priority DESC, run_at, id");
}

#define RET_COLS "id, kind, queue, args, unique_key, priority, attempt, max_attempts, run_at"
#define LEASE_SET "UPDATE trellis_jobs SET state = 'running', attempt = attempt + 1," \
                  " lease_owner = $1, lease_token = $2, lease_until = $3, cancel_requested = 0"

static int by_order(const void *x, const void *y)
{
  const held *a = *(held *const *)x, *b = *(held *const *)y;
  if (a->job.priority != b->job.priority)
    return a->job.priority > b->job.priority ? -1 : 1;
  if (a->job.run_at_us != b->job.run_at_us)
    return a->job.run_at_us < b->job.run_at_us ? -1 : 1;
  return (a->job.id > b->job.id) - (a->job.id < b->job.id);
}

/* Read a result of RET_COLS rows into `out` (up to `cap`). */
static int read_holds(tl_rows *r, int64_t token, bool bump, held **out, size_t cap, size_t *n)
{
  int rc;
  while ((rc = tl_rows_next(r)) == 1) {
    held *h = held_from_row(r, token, bump);
    if (!h)
      return tl_error_set(TL_ENOMEM, "jobs: out of memory");
    if (*n == cap) {
      free(h);
      continue;
    }
    out[(*n)++] = h;
  }
  return rc;
}

/* Lease up to `limit` jobs in the database, recording the completions
 * d[0..nd) stamped `at` in the same step. */
static int lease_jobs(sql_store *m, const tl__fetch *f, unsigned limit, const done_rec *d,
                      size_t nd, int64_t at, held **out, size_t *n)
{
  int64_t token = (int64_t)(m->token_base | (atomic_fetch_add(&m->token_seq, 1) + 1));
  size_t nv = f->nqueues + f->nkinds + f->nexclude + 2 * MAX_DONE + MAX_LIST + 16;
  char s1[2048], s2[2048];
  tl__buf sql = TL__BUF_STACK(s1), from = TL__BUF_STACK(s2);
  tl_value *a = malloc(nv * sizeof *a);
  size_t na = 0;
  tl_tx *tx = NULL;
  tl_rows *r;
  int rc = 0;
  *n = 0;
  if (!a) {
    rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
    goto out;
  }
  a[na++] = tl_text(m->owner);
  a[na++] = tl_int(token);
  a[na++] = tl_int(f->lease_until_us);
  a[na++] = tl_int(limit);
  fetch_from_sql(m, &from, f, 5, a, &na);
  if (from.failed) {
    rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
    goto out;
  }
  if (m->d == TL_DB_POSTGRES) {
    /* One statement. = ANY(ARRAY(...)) rather than IN (...), so the
     * planner looks the few ids up by primary key instead of joining the
     * subquery against a scan of the table when its statistics are stale. */
    if (nd) {
      tl__buf_puts(&sql, "WITH done AS (");
      na += complete_sql(m, &sql, na + 1, d, nd, at, a + na);
      tl__buf_puts(&sql, ") ");
    }
    tl__buf_printf(&sql, LEASE_SET " WHERE id = ANY(ARRAY(SELECT id%s LIMIT $4 FOR UPDATE"
                   " SKIP LOCKED)) RETURNING " RET_COLS, from.data);
    if (sql.failed)
      rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
    else if ((rc = tl_db_query(m->db, &r, sql.data, a, na)) == 0) {
      rc = read_holds(r, token, false, out, limit, n);
      tl_rows_free(r);
    }
    goto out;
  }

  /* SQLite and MariaDB: one transaction. SQLite's BEGIN IMMEDIATE takes
   * the write lock before reading. MariaDB reads under READ COMMITTED,
   * which takes no gap locks (they would make concurrent fetches wait for
   * each other), then updates the rows it locked by id, as it has no
   * UPDATE ... RETURNING; the row shows the attempt before it counts. */
  bool my = m->d == TL_DB_MYSQL;
  if (my)
    tl__buf_printf(&sql, "SELECT " RET_COLS "%s LIMIT $4 FOR UPDATE SKIP LOCKED", from.data);
  else
    tl__buf_printf(&sql, LEASE_SET " WHERE id IN (SELECT id%s LIMIT $4) RETURNING " RET_COLS,
                   from.data);
  if (sql.failed) {
    rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
    goto out;
  }
  tl_tx_opts to = { .isolation = my ? TL_ISO_READ_COMMITTED : TL_ISO_DEFAULT };
  wlock(m);
  if ((rc = tl_db_begin_opts(m->db, &tx, &to)) != 0) {
    wunlock(m);
    goto out;
  }
  if (nd) {
    /* The statement's text goes in `from`, which is no longer needed. */
    tl_value *da = a + na;
    from.len = 0;
    size_t dn = complete_sql(m, &from, 1, d, nd, at, da);
    rc = from.failed ? tl_error_set(TL_ENOMEM, "jobs: out of memory")
                     : tl_tx_exec(tx, NULL, from.data, da, dn);
  }
  /* MariaDB's SELECT takes $4 and on, but every placeholder up to the
   * highest must be bound: $1-$3 stay, unused, in the statement's
   * arguments. */
  if (rc == 0 && (rc = tl_tx_query(tx, &r, sql.data, a, na)) == 0) {
    rc = read_holds(r, token, my, out, limit, n);
    tl_rows_free(r);
  }
  if (rc == 0 && my && *n) {
    int64_t ids[MAX_LIST];
    for (size_t i = 0; i < *n; i++)
      ids[i] = out[i]->job.id;
    sql.len = 0;
    tl__buf_puts(&sql, LEASE_SET " WHERE id IN ");
    size_t nu = 3 + ids_sql(&sql, 4, ids, *n, a + 3);
    rc = sql.failed ? tl_error_set(TL_ENOMEM, "jobs: out of memory")
                    : tl_tx_exec(tx, NULL, sql.data, a, nu);
  }
  if (rc == 0)
    rc = tl_tx_commit(tx);
  else
    tl_tx_rollback(tx);
  wunlock(m);
out:
  if (rc != 0) {
    for (size_t i = 0; i < *n; i++)
      free(out[i]);
    *n = 0;
  }
  qsort(out, *n, sizeof *out, by_order);
  tl__buf_free(&sql);
  tl__buf_free(&from);
  free(a);
  return rc;
}

static int sql_fetch(tl__jobs_store *s, const tl__fetch *f, tl__job *out)
{
  sql_store *m = S(s);
  if (f->done)
    defer_done(m, f->done, f->now_us);
  done_rec d[MAX_DONE];
  size_t nd = 0;
  int64_t at = 0;
  pthread_mutex_lock(&m->mu);
  /* Forget due times that passed: this fetch looks for those jobs. */
  size_t k = 0;
  for (size_t i = 0; i < m->ndues; i++)
    if (m->dues[i] > f->now_us)
      m->dues[k++] = m->dues[i];
  m->ndues = k;
  held *h = NULL;
  bool idle = false;
  for (uint64_t gen = m->fetch_gen;;) {
    idle = m->stopped || !f->nkinds; /* stopped, or nothing registered yet */
    if (idle || (h = buf_take(m, f)) != NULL)
      break;
    if (!m->fetching && (gen == m->fetch_gen || !m->drained))
      break; /* our turn to go to the database */
    if (!m->fetching) {
      idle = true; /* a fetch made while we waited found the queue empty */
      break;
    }
    pthread_cond_wait(&m->fetch_cv, &m->mu);
  }
  if (!h)
    nd = take_done(m, d, &at);
  unsigned limit = m->limit;
  if (!h && !idle) {
    m->fetching = true;
    /* The buffer ran dry: faster than a round trip means short jobs. */
    int64_t drain = tl_time_mono_us() - m->fetched_mono;
    if (m->fetch_gen && !m->drained) {
      if (drain < m->fetch_us && limit < MAX_BATCH)
        limit = limit * 2 > MAX_BATCH ? MAX_BATCH : limit * 2;
      else if (drain > 4 * m->fetch_us && limit > m->batch)
        limit = limit / 2 < m->batch ? m->batch : limit / 2;
    }
    m->limit = limit;
  }
  pthread_mutex_unlock(&m->mu);
  if (h) {
    *out = h->job;
    return 1;
  }
  if (idle) {
    record_done(m, d, nd, at);
    return 0;
  }
  held *got[MAX_BATCH];
  size_t n = 0;
  int64_t t0 = tl_time_mono_us();
  int rc = lease_jobs(m, f, limit, d, nd, at, got, &n);
  /* A fetch that met another process's can deadlock (MariaDB, and
   * PostgreSQL through the updated rows above) or meet busy (SQLite):
   * nothing was taken; try again. */
  for (int i = 0; i < 3 && rc == TL_ERETRY; i++)
    rc = lease_jobs(m, f, limit, d, nd, at, got, &n);
  if (rc)
    record_done(m, d, nd, at); /* the fetch failed: the completions on their own */
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < n; i++)
    held_link(m, got[i]);
  if (n)
    got[0]->started = true;
  held **nb = n > 1 ? realloc(m->buf, (m->nbuf + n - 1) * sizeof *nb) : m->buf;
  if (n > 1 && nb) {
    m->buf = nb;
    memcpy(&m->buf[m->nbuf], &got[1], (n - 1) * sizeof *got);
    m->nbuf += n - 1;
  }
  bool lost_extra = n > 1 && !nb;
  m->fetching = false;
  m->fetch_gen++;
  m->drained = rc != 0 || n < limit;
  m->fetched_mono = tl_time_mono_us();
  m->fetch_us = m->fetched_mono - t0;
  pthread_cond_broadcast(&m->fetch_cv);
  pthread_mutex_unlock(&m->mu);
  if (lost_extra) /* out of memory: their leases end and they run elsewhere */
    for (size_t i = 1; i < n; i++)
      held_drop(m, got[i]);
  if (rc == TL_ERETRY)
    return 0; /* the next poll looks again */
  if (rc)
    return tl_error_wrap(rc, "jobs: fetch");
  if (!n)
    return 0;
  *out = got[0]->job;
  return 1;
}

static int64_t sql_next_due(tl__jobs_store *s)
{
  sql_store *m = S(s);
  int64_t t = INT64_MAX;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->ndues; i++)
    if (m->dues[i] < t)
      t = m->dues[i];
  if (m->nbuf)
    t = 0; /* fetched jobs wait (kinds at their limit): look again soon */
  pthread_mutex_unlock(&m->mu);
  return t;
}

/* ---- finishing ----------------------------------------------------------------------------- */

static int lost(sql_store *m, tl__job *j)
{
  int64_t id = j->id;
  held_drop(m, j->ref);
  return tl_error_set(TL_ESTATE, "job %lld: no longer held (lease expired or released)",
                      (long long)id);
}

/* Run a finishing UPDATE "... WHERE id = $1 AND lease_token = $2 AND
 * state = 'running'" with more arguments from $3 on, then end the hold. */
static int finish(sql_store *m, tl__job *j, const char *set, const tl_value *more, size_t nmore)
{
  char sql[512];
  snprintf(sql, sizeof sql, "UPDATE trellis_jobs SET %s, lease_owner = NULL, lease_token = NULL,"
           " lease_until = NULL WHERE id = $1 AND lease_token = $2 AND state = 'running'", set);
  tl_value a[8] = { tl_int(j->id), tl_int((int64_t)j->lease) };
  for (size_t i = 0; i < nmore; i++)
    a[2 + i] = more[i];
  int64_t n = 0;
  int rc = wexec(m, &n, sql, a, 2 + nmore);
  if (rc) {
    held_drop(m, j->ref);
    return tl_error_wrap(rc, "job %lld", (long long)j->id);
  }
  if (n == 0)
    return lost(m, j);
  held_drop(m, j->ref);
  return 0;
}

static int sql_complete(tl__jobs_store *s, tl__job *j, int64_t now)
{
  sql_store *m = S(s);
  int rc = finish(m, j, "state = 'completed', finished_us = $3", TL_ARGS(tl_int(now)));
  if (rc == 0) {
    pthread_mutex_lock(&m->mu);
    m->st.completed++;
    pthread_mutex_unlock(&m->mu);
  }
  return rc;
}

static int sql_fail(tl__jobs_store *s, tl__job *j, int64_t now, int64_t retry_at,
                    const char *error)
{
  sql_store *m = S(s);
  int rc = finish(m, j, "state = 'retryable', run_at = $3, last_error = $4",
                  TL_ARGS(tl_int(retry_at), tl_text(error)));
  pthread_mutex_lock(&m->mu);
  if (rc == 0) {
    note_due(m, retry_at, now);
    m->st.retried++;
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static int sql_discard(tl__jobs_store *s, tl__job *j, int64_t now, tl_job_state state,
                       const char *error)
{
  sql_store *m = S(s);
  return finish(m, j, "state = $3, finished_us = $4, last_error = $5",
                TL_ARGS(tl_text(state == TL_JOB_CANCELLED ? "cancelled" : "discarded"),
                        tl_int(now), tl_text(error)));
}

static int sql_snooze(tl__jobs_store *s, tl__job *j, int64_t run_at)
{
  sql_store *m = S(s);
  int rc = finish(m, j, "state = 'scheduled', attempt = attempt - 1, run_at = $3",
                  TL_ARGS(tl_int(run_at)));
  pthread_mutex_lock(&m->mu);
  if (rc == 0) {
    note_due(m, run_at, INT64_MIN);
    m->st.snoozed++;
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

/* Give back holds (attempt not counted). */
static int release_holds(sql_store *m, const done_rec *d, size_t n, int64_t now)
{
  int64_t back = 0;
  int rc = exec_holds(m, "UPDATE trellis_jobs SET state = 'available', attempt = attempt - 1,"
                         " lease_owner = NULL, lease_token = NULL, lease_until = NULL",
                      NULL, 0, d, n, &back);
  if (back)
    announce(m, now);
  return rc;
}

/* The holder keeps its record (it is still running the job); its
 * finishing call finds the token gone and gets TL_ESTATE. */
static int sql_release(tl__jobs_store *s, tl__job *j, int64_t now)
{
  sql_store *m = S(s);
  done_rec d = { j->id, (int64_t)j->lease, now };
  int rc = release_holds(m, &d, 1, now);
  return rc ? tl_error_wrap(rc, "job %lld: release", (long long)j->id) : 0;
}

/* Raise the cancel flag of the held jobs among the current rows (ids). */
static int raise_cancels(sql_store *m, tl_rows *r)
{
  int rc;
  while ((rc = tl_rows_next(r)) == 1) {
    int64_t id = col_int(r, 0);
    pthread_mutex_lock(&m->mu);
    for (held *h = m->held; h; h = h->next)
      if (h->job.id == id)
        atomic_fetch_or(&h->cancel, TL__CANCEL_USER);
    pthread_mutex_unlock(&m->mu);
  }
  return rc;
}

/* Renew every lease this process holds (running and buffered jobs), at
 * most once a second whatever the number of calls, and pick up cancel
 * requests made by other processes. */
static int sql_heartbeat(tl__jobs_store *s, tl__job *const *jobs, size_t njobs,
                         int64_t lease_until)
{
  (void)jobs, (void)njobs;
  sql_store *m = S(s);
  int64_t mono = tl_time_mono_us();
  pthread_mutex_lock(&m->mu);
  if (mono - m->last_renew_mono < 1000000 && m->last_renew_mono) {
    pthread_mutex_unlock(&m->mu);
    return 0;
  }
  m->last_renew_mono = mono;
  size_t n = 0;
  for (held *h = m->held; h; h = h->next)
    n++;
  done_rec *d = n ? malloc(n * sizeof *d) : NULL;
  n = 0;
  if (d)
    for (held *h = m->held; h; h = h->next)
      d[n++] = (done_rec){ h->job.id, (int64_t)h->job.lease, 0 };
  pthread_mutex_unlock(&m->mu);
  int rc = exec_holds(m, "UPDATE trellis_jobs SET lease_until = $1",
                      TL_ARGS(tl_int(lease_until)), d, n, NULL);
  for (size_t i = 0; i < n && rc == 0; i += MAX_LIST) {
    size_t k = n - i < MAX_LIST ? n - i : MAX_LIST;
    tl_value a[2 * MAX_LIST];
    char stack[4096];
    tl__buf b = TL__BUF_STACK(stack);
    tl__buf_puts(&b, "SELECT id FROM trellis_jobs");
    size_t na = holds_sql(m, &b, 1, d + i, k, a);
    tl__buf_puts(&b, " AND cancel_requested = 1");
    tl_rows *r;
    if (b.failed)
      rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
    else if ((rc = tl_db_query(m->db, &r, b.data, a, na)) == 0) {
      rc = raise_cancels(m, r);
      tl_rows_free(r);
    }
    tl__buf_free(&b);
  }
  free(d);
  if (rc)
    tl_log(TL_LOG_ERROR, "jobs: lease renewal failed", TL_F_STR("error", tl_error_last()));
  return rc < 0 ? rc : 0;
}

/* Ids (up to `max`) of a query's first column. */
static int read_ids(tl_rows *r, int64_t *ids, size_t max, size_t *n)
{
  int rc;
  *n = 0;
  while ((rc = tl_rows_next(r)) == 1)
    if (*n < max)
      ids[(*n)++] = col_int(r, 0);
  return rc;
}

/* Delete completed jobs and claimed cron slots older than the retention,
 * a bounded number per call; the newest slot of each schedule stays (a
 * restart catches up from it). Rows are found by a plain read and
 * deleted by id: a range DELETE under MariaDB's REPEATABLE READ would
 * lock gaps of the index that completions insert into. */
static void prune(sql_store *m, int64_t now)
{
  int64_t cut = now - m->retention_us, total = 0;
  int rc = 0;
  for (size_t pass = 0; rc == 0 && pass < PRUNE_ROWS / MAX_LIST; pass++) {
    int64_t ids[MAX_LIST];
    size_t n = 0;
    tl_rows *r;
    if ((rc = tl_db_query(m->db, &r, "SELECT id FROM trellis_jobs WHERE state = 'completed'"
                          " AND finished_us < $1 LIMIT $2", TL_ARGS(tl_int(cut), tl_int(MAX_LIST)))) != 0)
      break;
    rc = read_ids(r, ids, MAX_LIST, &n);
    tl_rows_free(r);
    if (rc < 0 || n == 0)
      break;
    tl_value a[MAX_LIST];
    char stack[4096];
    tl__buf b = TL__BUF_STACK(stack);
    tl__buf_puts(&b, "DELETE FROM trellis_jobs WHERE state = 'completed' AND id IN ");
    size_t na = ids_sql(&b, 1, ids, n, a);
    int64_t got = 0;
    rc = b.failed ? tl_error_set(TL_ENOMEM, "jobs: out of memory") : wexec(m, &got, b.data, a, na);
    tl__buf_free(&b);
    total += got;
    if (n < MAX_LIST)
      break;
  }
  if (rc == 0)
    rc = wexec(m, NULL, m->d == TL_DB_MYSQL
                  ? "DELETE s FROM trellis_jobs_cron_slots s JOIN (SELECT name, MAX(slot_us) AS m"
                    " FROM trellis_jobs_cron_slots GROUP BY name) x ON x.name = s.name"
                    " WHERE s.slot_us < x.m AND s.slot_us < $1"
                  : "DELETE FROM trellis_jobs_cron_slots WHERE slot_us < $1 AND slot_us <"
                    " (SELECT MAX(s2.slot_us) FROM trellis_jobs_cron_slots s2"
                    " WHERE s2.name = trellis_jobs_cron_slots.name)", TL_ARGS(tl_int(cut)));
  if (rc < 0)
    tl_log(TL_LOG_ERROR, "jobs: pruning failed", TL_F_STR("error", tl_error_last()));
  else if (total)
    tl_log(TL_LOG_DEBUG, "jobs: pruned completed jobs", TL_F_INT("count", total));
}

/* Running jobs whose lease ended: found by a plain read, then each taken
 * back by id if its lease is still over (it may have been renewed in
 * between), so that the count and the kinds reported are exact and no
 * range of the lease index is locked. */
static int sql_recover(tl__jobs_store *s, int64_t now, tl__lost_fn lost_fn, void *ctx,
                       size_t *count)
{
  sql_store *m = S(s);
  size_t total = 0;
  flush_done(m);
  int rc = 0;
  typedef struct cand {
    int64_t id;
    bool discard;
    char kind[65];
  } cand;
  cand *c = malloc(MAX_LIST * sizeof *c);
  if (!c)
    rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
  for (int pass = 0; rc == 0 && pass < 64; pass++) {
    tl_rows *r;
    size_t n = 0;
    if ((rc = tl_db_query(m->db, &r, "SELECT id, kind, attempt, max_attempts FROM trellis_jobs"
                          " WHERE state = 'running' AND lease_until < $1 ORDER BY id LIMIT $2",
                          TL_ARGS(tl_int(now), tl_int(MAX_LIST)))) != 0)
      break;
    while ((rc = tl_rows_next(r)) == 1 && n < MAX_LIST) {
      c[n].id = col_int(r, 0);
      snprintf(c[n].kind, sizeof c[n].kind, "%s", col_text(r, 1) ? col_text(r, 1) : "");
      c[n].discard = col_int(r, 2) >= col_int(r, 3);
      n++;
    }
    tl_rows_free(r);
    if (rc < 0 || n == 0)
      break;
    size_t back = 0;
    for (size_t i = 0; i < n && rc >= 0; i++) {
      int64_t got = 0;
      rc = wexec(m, &got, "UPDATE trellis_jobs SET state = CASE WHEN attempt <"
                 " max_attempts THEN 'retryable' ELSE 'discarded' END,"
                 " finished_us = CASE WHEN attempt < max_attempts THEN NULL ELSE $1 END,"
                 " run_at = $1, last_error = 'lease expired: the worker was lost',"
                 " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                 " WHERE id = $2 AND state = 'running' AND lease_until < $1",
                 TL_ARGS(tl_int(now), tl_int(c[i].id)));
      if (rc == 0 && got) {
        total++;
        back += !c[i].discard;
        if (lost_fn)
          lost_fn(ctx, c[i].kind, c[i].discard);
      }
    }
    if (back) {
      pthread_mutex_lock(&m->mu);
      m->st.retried += back;
      pthread_mutex_unlock(&m->mu);
      announce(m, now);
    }
    if (n < MAX_LIST)
      break;
  }
  free(c);
  if (count)
    *count = total;
  pthread_mutex_lock(&m->mu);
  bool due = now >= m->next_prune;
  if (due) {
    int64_t every = m->retention_us / 4;
    m->next_prune = now + (every < 1000000 ? 1000000 : every > 60000000 ? 60000000 : every);
  }
  pthread_mutex_unlock(&m->mu);
  if (due)
    prune(m, now);
  return rc < 0 ? tl_error_wrap(rc, "jobs: recover") : 0;
}

/* ---- by id ----------------------------------------------------------------------------------- */

static int state_now(sql_store *m, int64_t id, char *buf, size_t size)
{
  tl_rows *r;
  int rc = tl_db_query(m->db, &r, "SELECT state FROM trellis_jobs WHERE id = $1",
                       TL_ARGS(tl_int(id)));
  if (rc)
    return rc;
  rc = tl_rows_next(r);
  if (rc == 1)
    snprintf(buf, size, "%s", col_text(r, 0) ? col_text(r, 0) : "");
  tl_rows_free(r);
  if (rc == 0)
    return tl_error_set(TL_ENOTFOUND, "job %lld: not found", (long long)id);
  return rc < 0 ? rc : 0;
}

static int sql_cancel(tl__jobs_store *s, int64_t id, int64_t now)
{
  sql_store *m = S(s);
  int64_t n = 0;
  int rc = wexec(m, &n, "UPDATE trellis_jobs SET state = 'cancelled', finished_us = $2"
                      " WHERE id = $1 AND state IN " PENDING_STATES,
                      TL_ARGS(tl_int(id), tl_int(now)));
  if (rc == 0 && n == 0)
    rc = wexec(m, &n, "UPDATE trellis_jobs SET cancel_requested = 1 WHERE id = $1"
                    " AND state = 'running'", TL_ARGS(tl_int(id)));
  if (rc)
    return tl_error_wrap(rc, "job %lld: cancel", (long long)id);
  if (n) {
    /* Running here: raise the flag now rather than at the next renewal. */
    pthread_mutex_lock(&m->mu);
    for (held *h = m->held; h; h = h->next)
      if (h->job.id == id)
        atomic_fetch_or(&h->cancel, TL__CANCEL_USER);
    pthread_mutex_unlock(&m->mu);
    return 0;
  }
  char st[32];
  if ((rc = state_now(m, id, st, sizeof st)) != 0)
    return rc;
  return tl_error_set(TL_ESTATE, "job %lld is %s: cannot cancel it", (long long)id, st);
}

static int sql_retry(tl__jobs_store *s, int64_t id, int64_t now)
{
  sql_store *m = S(s);
  int64_t n = 0;
  int rc = wexec(m, &n, "UPDATE trellis_jobs SET state = 'available', attempt = 0,"
                      " run_at = $2, finished_us = NULL, cancel_requested = 0 WHERE id = $1"
                      " AND state IN ('available','scheduled','retryable','discarded',"
                      "'cancelled')", TL_ARGS(tl_int(id), tl_int(now)));
  if (rc == TL_ECONFLICT)
    return tl_error_set(TL_ECONFLICT, "job %lld: its unique key is held by another job",
                        (long long)id);
  if (rc)
    return tl_error_wrap(rc, "job %lld: retry", (long long)id);
  if (n) {
    announce(m, now);
    return 0;
  }
  char st[32];
  if ((rc = state_now(m, id, st, sizeof st)) != 0)
    return rc;
  return tl_error_set(TL_ESTATE, "job %lld is %s: cannot retry it", (long long)id, st);
}

#define INFO_COLS "id, kind, queue, args, unique_key, last_error, state, priority, attempt," \
                  " max_attempts, cancel_requested, created_us, run_at, finished_us"

static tl_job_info info_of(tl_rows *r)
{
  return (tl_job_info){ .id = col_int(r, 0), .kind = col_text(r, 1), .queue = col_text(r, 2),
                        .args = col_text(r, 3), .unique_key = col_text(r, 4),
                        .last_error = col_text(r, 5),
                        .state = state_of(col_text(r, 6) ? col_text(r, 6) : ""),
                        .priority = (int)col_int(r, 7), .attempt = (unsigned)col_int(r, 8),
                        .max_retries = max_retries_of(col_int(r, 9)),
                        .cancel_requested = col_int(r, 10) != 0,
                        .created_us = col_int(r, 11), .run_at_us = col_int(r, 12),
                        .finished_us = col_int(r, 13) };
}


static int sql_get(tl__jobs_store *s, int64_t id, tl_job_info **out)
{
  sql_store *m = S(s);
  *out = NULL;
  flush_done(m); /* a job this process finished reads as finished */
  tl_rows *r;
  int rc = tl_db_query(m->db, &r, "SELECT " INFO_COLS " FROM trellis_jobs WHERE id = $1",
                       TL_ARGS(tl_int(id)));
  if (rc)
    return tl_error_wrap(rc, "job %lld", (long long)id);
  rc = tl_rows_next(r);
  if (rc != 1) {
    tl_rows_free(r);
    return rc < 0 ? rc : tl_error_set(TL_ENOTFOUND, "job %lld: not found", (long long)id);
  }
  tl_job_info v = info_of(r);
  tl_job_info *info = malloc(sizeof *info + tl__job_info_strsize(&v));
  if (info) {
    char *cur = (char *)(info + 1);
    tl__job_info_copy(info, &v, &cur);
  }
  tl_rows_free(r);
  if (!info)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  *out = info;
  return 0;
}

static int sql_list(tl__jobs_store *s, const tl_job_filter *fp, tl_job_list **out)
{
  sql_store *m = S(s);
  tl_job_filter f = fp ? *fp : (tl_job_filter){ 0 };
  size_t limit = f.limit ? (f.limit > 10000 ? 10000 : f.limit) : 100;
  *out = NULL;
  flush_done(m);
  char sql[512];
  tl_value a[4];
  size_t na = 0;
  int len = snprintf(sql, sizeof sql, "SELECT " INFO_COLS " FROM trellis_jobs WHERE id > $1");
  a[na++] = tl_int(f.after_id);
  if (f.state == TL_JOB_PENDING)
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND state IN " PENDING_STATES);
  else if (f.state) {
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND state = $%zu", na + 1);
    a[na++] = tl_text(state_text(f.state));
  }
  if (f.kind) {
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND kind = $%zu", na + 1);
    a[na++] = tl_text(f.kind);
  }
  if (f.queue) {
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND queue = $%zu", na + 1);
    a[na++] = tl_text(f.queue);
  }
  snprintf(sql + len, sizeof sql - (size_t)len, " ORDER BY id LIMIT %zu", limit);
  tl_rows *r;
  int rc = tl_db_query(m->db, &r, sql, a, na);
  if (rc)
    return tl_error_wrap(rc, "jobs: list");
  /* Rows are borrowed one at a time: grow one block as they come. */
  size_t cap = 4096, used = 0, count = 0;
  tl_job_info *items = malloc(limit * sizeof *items);
  char *strs = malloc(cap);
  size_t *offs = malloc(limit * 5 * sizeof *offs);
  while (items && strs && offs && (rc = tl_rows_next(r)) == 1) {
    tl_job_info v = info_of(r);
    size_t need = tl__job_info_strsize(&v);
    if (used + need > cap) {
      while (used + need > cap)
        cap *= 2;
      char *ns = realloc(strs, cap);
      if (!ns) {
        free(strs);
        strs = NULL;
        break;
      }
      strs = ns;
    }
    char *cur = strs + used;
    tl__job_info_copy(&items[count], &v, &cur);
    /* Remember offsets: the block may move when it grows. */
    const char *fields[5] = { items[count].kind, items[count].queue, items[count].args,
                              items[count].unique_key, items[count].last_error };
    for (int i = 0; i < 5; i++)
      offs[count * 5 + (size_t)i] = fields[i] ? (size_t)(fields[i] - strs) + 1 : 0;
    used = (size_t)(cur - strs);
    count++;
  }
  tl_rows_free(r);
  tl_job_list *list = NULL;
  if (items && strs && offs && rc >= 0 &&
      (list = malloc(sizeof *list + count * sizeof(tl_job_info) + used + 1))) {
    list->count = count;
    list->items = (tl_job_info *)(list + 1);
    char *base = (char *)(list->items + count);
    memcpy(base, strs, used);
    for (size_t i = 0; i < count; i++) {
      list->items[i] = items[i];
      const char **fields[5] = { &list->items[i].kind, &list->items[i].queue,
                                 &list->items[i].args, &list->items[i].unique_key,
                                 &list->items[i].last_error };
      for (int k = 0; k < 5; k++) {
        size_t o = offs[i * 5 + (size_t)k];
        *fields[k] = o ? base + o - 1 : NULL;
      }
    }
  }
  free(items);
  free(strs);
  free(offs);
  if (rc < 0)
    return tl_error_wrap(rc, "jobs: list");
  if (!list)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  *out = list;
  return 0;
}

static int sql_stats(tl__jobs_store *s, tl_jobs_stats *out)
{
  sql_store *m = S(s);
  flush_done(m);
  pthread_mutex_lock(&m->mu);
  *out = m->st;
  pthread_mutex_unlock(&m->mu);
  out->pending = out->running = out->discarded = out->cancelled = 0;
  tl_rows *r;
  int rc = tl_db_query(m->db, &r, "SELECT state, COUNT(*) FROM trellis_jobs WHERE state <>"
                       " 'completed' GROUP BY state", TL_NOARGS);
  if (rc)
    return tl_error_wrap(rc, "jobs: stats");
  while ((rc = tl_rows_next(r)) == 1) {
    tl_job_state st = state_of(col_text(r, 0) ? col_text(r, 0) : "");
    uint64_t n = (uint64_t)col_int(r, 1);
    if (st == TL_JOB_PENDING) out->pending += n;
    else if (st == TL_JOB_RUNNING) out->running += n;
    else if (st == TL_JOB_DISCARDED) out->discarded += n;
    else if (st == TL_JOB_CANCELLED) out->cancelled += n;
  }
  tl_rows_free(r);
  return rc < 0 ? tl_error_wrap(rc, "jobs: stats") : 0;
}

static int sql_ready(tl__jobs_store *s)
{
  int rc = tl_db_ping(S(s)->db);
  return rc ? tl_error_wrap(rc, "jobs: database") : 0;
}


/* The oldest due pending job of each queue: one scan of the pending rows
 * (the fetch index on PostgreSQL and SQLite). */
static int sql_oldest_due(tl__jobs_store *s, int64_t now, tl__queue_age_fn fn, void *ctx)
{
  sql_store *m = S(s);
  tl_rows *r;
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT queue, MIN(run_at) FROM trellis_jobs WHERE %s AND"
           " run_at <= $1 GROUP BY queue", pending_sql(m));
  int rc = tl_db_query(m->db, &r, sql, TL_ARGS(tl_int(now)));
  if (rc)
    return tl_error_wrap(rc, "jobs: oldest due");
  while ((rc = tl_rows_next(r)) == 1)
    if (col_text(r, 0))
      fn(ctx, col_text(r, 0), col_int(r, 1));
  tl_rows_free(r);
  return rc < 0 ? tl_error_wrap(rc, "jobs: oldest due") : 0;
}

/* ---- cron slots ---------------------------------------------------------------------------------- */

typedef struct slot_claim {
  sql_store *m;
  const char *name;
  int64_t slot, prev;
  const tl__job_new *j;
  bool claimed;
} slot_claim;

static int claim_tx(tl_tx *tx, void *p)
{
  slot_claim *c = p;
  sql_store *m = c->m;
  const char *sql = m->d == TL_DB_MYSQL
    ? "INSERT IGNORE INTO trellis_jobs_cron_slots (name, slot_us, created_us) VALUES ($1, $2, $3)"
    : m->d == TL_DB_SQLITE
    ? "INSERT OR IGNORE INTO trellis_jobs_cron_slots (name, slot_us, created_us) VALUES ($1, $2, $3)"
    : "INSERT INTO trellis_jobs_cron_slots (name, slot_us, created_us) VALUES ($1, $2, $3)"
      " ON CONFLICT DO NOTHING";
  int64_t n = 0, id = 0;
  c->claimed = false;
  c->prev = INT64_MIN;
  int rc = tl_tx_exec(tx, &n, sql, TL_ARGS(tl_text(c->name), tl_int(c->slot),
                                          tl_int(c->j->created_us)));
  if (rc || n == 0)
    return rc;
  if ((rc = insert_job(m, tx, c->j, false, &id)) < 0)
    return rc;
  rc = tl_tx_exec(tx, NULL, "UPDATE trellis_jobs_cron_slots SET job_id = $3 WHERE name = $1 AND"
                  " slot_us = $2", TL_ARGS(tl_text(c->name), tl_int(c->slot), tl_int(id)));
  tl_rows *r;
  if (rc == 0 && (rc = tl_tx_query(tx, &r, "SELECT MAX(slot_us) FROM trellis_jobs_cron_slots"
                                   " WHERE name = $1 AND slot_us < $2",
                                   TL_ARGS(tl_text(c->name), tl_int(c->slot)))) == 0) {
    if ((rc = tl_rows_next(r)) == 1 && !tl_rows_is_null(r, 0))
      c->prev = col_int(r, 0);
    tl_rows_free(r);
    rc = rc < 0 ? rc : 0;
  }
  if (rc == 0)
    c->claimed = true;
  return rc;
}

static int sql_enqueue_slot(tl__jobs_store *s, const char *name, int64_t slot_us,
                            const tl__job_new *j, bool *claimed, int64_t *prev_us)
{
  sql_store *m = S(s);
  slot_claim c = { m, name, slot_us, INT64_MIN, j, false };
  wlock(m);
  int rc = tl_db_transact(m->db, claim_tx, &c, NULL);
  wunlock(m);
  *claimed = rc == 0 && c.claimed;
  *prev_us = c.prev;
  if (rc)
    return tl_error_wrap(rc, "schedule '%s': claim slot", name);
  if (c.claimed) {
    pthread_mutex_lock(&m->mu);
    note_due(m, j->run_at_us, j->created_us);
    m->st.submitted++;
    pthread_mutex_unlock(&m->mu);
    announce(m, j->run_at_us);
  }
  return 0;
}

static int sql_last_slot(tl__jobs_store *s, const char *name, int64_t *slot_us)
{
  sql_store *m = S(s);
  tl_rows *r;
  int rc = tl_db_query(m->db, &r, "SELECT MAX(slot_us) FROM trellis_jobs_cron_slots WHERE"
                       " name = $1", TL_ARGS(tl_text(name)));
  if (rc)
    return tl_error_wrap(rc, "schedule '%s': last slot", name);
  rc = tl_rows_next(r);
  if (rc == 1)
    rc = tl_rows_int(r, 0, slot_us) == 0 ? 1 : 0;
  tl_rows_free(r);
  return rc;
}

/* ---- wake-ups across processes (PostgreSQL) ------------------------------------------------------- */

/* Listen for other processes' announcements and wake our idle workers;
 * the payload is the earliest run_at announced, remembered when it is
 * still ahead so that idle workers wake for it. A lost connection may
 * have lost notifications: wake the workers to look, and listen again. */
static void *listen_main(void *p)
{
  sql_store *m = p;
  while (!atomic_load(&m->quit)) {
    char payload[32];
    int rc = tl_db_listener_wait(m->listener, 250000, payload, sizeof payload);
    if (rc == 0)
      continue;
    if (rc == 1) {
      int64_t at = strtoll(payload, NULL, 10);
      pthread_mutex_lock(&m->mu);
      note_due(m, at, tl_time_now_us());
      pthread_mutex_unlock(&m->mu);
    }
    m->wake(m->wake_ctx);
    if (rc < 0) {
      tl_log(TL_LOG_WARN, "jobs: listening for new jobs failed; retrying",
             TL_F_STR("error", tl_error_last()));
      for (int i = 0; i < 10 && !atomic_load(&m->quit); i++)
        tl_sleep_us(100000);
    }
  }
  return NULL;
}

/* Send what announce() gathered, at most one notification per
 * NOTIFY_GAP_US; what comes within the gap goes out at its end. Sends
 * what is pending before it quits. */
static void *notify_main(void *p)
{
  sql_store *m = p;
  int64_t last = INT64_MIN / 2;
  pthread_mutex_lock(&m->nmu);
  for (;;) {
    while (!m->npending && !atomic_load(&m->quit))
      pthread_cond_wait(&m->ncv, &m->nmu);
    if (!m->npending)
      break;
    int64_t wait = last + NOTIFY_GAP_US - tl_time_mono_us();
    if (wait > 0 && !atomic_load(&m->quit)) {
      pthread_mutex_unlock(&m->nmu);
      tl_sleep_us(wait);
      pthread_mutex_lock(&m->nmu);
    }
    char payload[32];
    snprintf(payload, sizeof payload, "%lld", (long long)m->nrun_at);
    m->npending = false;
    pthread_mutex_unlock(&m->nmu);
    if (tl_db_notify(m->db, NOTIFY_CHANNEL, payload) != 0)
      tl_log(TL_LOG_WARN, "jobs: notifying other processes failed; they will poll",
             TL_F_STR("error", tl_error_last()));
    last = tl_time_mono_us();
    pthread_mutex_lock(&m->nmu);
  }
  pthread_mutex_unlock(&m->nmu);
  return NULL;
}

/* On PostgreSQL: LISTEN now (so that what is submitted after
 * tl_jobs_open returns wakes us), then start both threads. Elsewhere
 * nothing: idle workers poll. */
static int start_wakeups(sql_store *m)
{
  if (m->d != TL_DB_POSTGRES || !m->wake)
    return 0;
  int rc = tl_db_listen(m->db, NOTIFY_CHANNEL, &m->listener);
  if (rc)
    return tl_error_wrap(rc, "jobs: listen");
  if (pthread_create(&m->listen_th, NULL, listen_main, m) != 0) {
    tl_db_listener_close(m->listener);
    m->listener = NULL;
    return tl_error_set(TL_ENOMEM, "jobs: cannot start the listener thread");
  }
  if (pthread_create(&m->notify_th, NULL, notify_main, m) != 0) {
    atomic_store(&m->quit, true);
    pthread_join(m->listen_th, NULL);
    tl_db_listener_close(m->listener);
    m->listener = NULL;
    return tl_error_set(TL_ENOMEM, "jobs: cannot start the notifier thread");
  }
  m->threads = true;
  return 0;
}

static void stop_wakeups(sql_store *m)
{
  if (!m->threads)
    return;
  pthread_mutex_lock(&m->nmu);
  atomic_store(&m->quit, true);
  pthread_cond_signal(&m->ncv);
  pthread_mutex_unlock(&m->nmu);
  pthread_join(m->notify_th, NULL);
  pthread_join(m->listen_th, NULL);
  tl_db_listener_close(m->listener);
  m->listener = NULL;
  m->threads = false;
}

/* ---- lifecycle --------------------------------------------------------------------------------------- */

static void sql_quiesce(tl__jobs_store *s, int64_t now)
{
  sql_store *m = S(s);
  pthread_mutex_lock(&m->mu);
  m->stopped = true;
  size_t n = m->nbuf;
  done_rec *d = n ? malloc(n * sizeof *d) : NULL;
  held **give = n ? malloc(n * sizeof *give) : NULL;
  if (n && d && give) {
    for (size_t i = 0; i < n; i++) {
      held *h = m->buf[i];
      d[i] = (done_rec){ h->job.id, (int64_t)h->job.lease, 0 };
      give[i] = h;
      held_unlink(m, h);
    }
    m->nbuf = 0;
  } else {
    n = 0;
  }
  pthread_mutex_unlock(&m->mu);
  flush_done(m);
  if (n && release_holds(m, d, n, now) != 0)
    tl_log(TL_LOG_ERROR, "jobs: returning fetched jobs failed; their leases will end",
           TL_F_STR("error", tl_error_last()));
  for (size_t i = 0; i < n; i++)
    free(give[i]);
  free(d);
  free(give);
}

static void store_free(sql_store *m)
{
  free(m->buf);
  pthread_mutex_destroy(&m->mu);
  pthread_mutex_destroy(&m->wmu);
  pthread_mutex_destroy(&m->nmu);
  pthread_cond_destroy(&m->ncv);
  pthread_cond_destroy(&m->fetch_cv);
  free(m);
}

static void sql_close(tl__jobs_store *s)
{
  sql_store *m = S(s);
  if (!m)
    return;
  sql_quiesce(s, tl_time_now_us());
  stop_wakeups(m);
  for (held *h = m->held, *nx; h; h = nx) {
    nx = h->next;
    free(h);
  }
  store_free(m);
}

static const tl__jobs_store_ops sql_ops = {
  .name = "database",
  .enqueue = sql_enqueue,
  .fetch = sql_fetch,
  .next_due = sql_next_due,
  .complete = sql_complete,
  .fail = sql_fail,
  .discard = sql_discard,
  .snooze = sql_snooze,
  .release = sql_release,
  .heartbeat = sql_heartbeat,
  .recover = sql_recover,
  .cancel = sql_cancel,
  .retry = sql_retry,
  .get = sql_get,
  .list = sql_list,
  .stats = sql_stats,
  .oldest_due = sql_oldest_due,
  .ready = sql_ready,
  .close = sql_close,
  .enqueue_many = sql_enqueue_many,
  .enqueue_slot = sql_enqueue_slot,
  .last_slot = sql_last_slot,
  .quiesce = sql_quiesce,
};

int tl__jobs_store_sql_open(tl__jobs_store **out, tl_db *db, const tl__sql_store_opts *o)
{
  *out = NULL;
  tl_db_dialect d = tl_db_dialect_of(db);
  if (d != TL_DB_SQLITE && d != TL_DB_POSTGRES && d != TL_DB_MYSQL)
    return tl_error_set(TL_EINVAL, "jobs: db: the durable queue needs SQLite, PostgreSQL or "
                        "MySQL/MariaDB");
  int rc = tl_db_migrations_register("trellis_jobs", jobs_migrations,
                                     sizeof jobs_migrations / sizeof jobs_migrations[0]);
  if (rc == 0 && (rc = tl_db_migrate(db, "trellis_jobs", NULL)) != 0)
    return tl_error_wrap(rc, "jobs: schema");
  if (rc)
    return rc;
  sql_store *m = calloc(1, sizeof *m);
  if (!m)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  m->base.ops = &sql_ops;
  m->db = db;
  m->d = d;
  m->batch = o && o->batch ? (o->batch > MAX_BATCH ? MAX_BATCH : o->batch) : 1;
  m->limit = m->batch;
  m->retention_us = o && o->retention_us > 0 ? o->retention_us : INT64_C(86400000000);
  m->lease_us = o ? o->lease_us : 0;
  m->wake = o ? o->wake : NULL;
  m->wake_ctx = o ? o->wake_ctx : NULL;
  uint32_t nonce = 0;
  tl_random_bytes(&nonce, sizeof nonce);
  nonce &= 0x7fffffff; /* tokens stay positive in a signed BIGINT */
  m->token_base = (uint64_t)nonce << 32;
  char host[64] = "";
  gethostname(host, sizeof host - 1);
  snprintf(m->owner, sizeof m->owner, "%.60s:%d:%08x", host, (int)getpid(), nonce);
  pthread_mutex_init(&m->mu, NULL);
  pthread_mutex_init(&m->wmu, NULL);
  pthread_mutex_init(&m->nmu, NULL);
  pthread_cond_init(&m->ncv, NULL);
  pthread_cond_init(&m->fetch_cv, NULL);
  if ((rc = start_wakeups(m)) != 0) {
    store_free(m);
    return rc;
  }
  *out = &m->base;
  return 0;
}
