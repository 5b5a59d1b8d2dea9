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
 * commits per job, so a fetch leases up to `batch` jobs in one statement
 * (PostgreSQL: UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
 * RETURNING; MariaDB: SELECT ... FOR UPDATE SKIP LOCKED then UPDATE in one
 * transaction; SQLite: the same UPDATE under BEGIN IMMEDIATE, one writer)
 * and keeps the extra ones for this process's next fetches, and plain
 * completions are recorded together by the next statement that goes to
 * the database. A completion not yet recorded when the process dies runs
 * again: the queue is at-least-once, like any queue whose workers can die
 * between the work and its acknowledgement. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs_int.h"
#include "trellis/resilience.h"
#include "trellis/error.h"
#include "trellis/log.h"

#define PENDING_STATES "('available','scheduled','retryable')"
#define LIVE_STATES "('available','scheduled','running','retryable')"
#define MAX_DONE 256  /* completions recorded by one statement at most */
#define MAX_DUES 256  /* future run_at values remembered for idle sleeps */
#define PRUNE_ROWS 10000

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
  int64_t last_renew_mono, next_prune;
  tl_jobs_stats st;       /* totals since open */
} sql_store;

static sql_store *S(tl__jobs_store *s)
{
  return (sql_store *)s;
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

static void note_due(sql_store *m, int64_t run_at, int64_t now)
{
  if (run_at <= now || m->ndues == MAX_DUES)
    return; /* due already, or the poll interval will find it */
  m->dues[m->ndues++] = run_at;
}

/* ---- holding ------------------------------------------------------------------------ */

/* A held record for the current row of a fetch's result:
 * id, kind, queue, args, unique_key, priority, attempt, max_attempts, run_at. */
static held *held_from_row(tl_rows *r, int64_t token)
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
  h->job.attempt = (unsigned)col_int(r, 6);
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

/* Append "id IN (...) AND (id, lease_token) IN (...)" for `n` holds. */
static void hold_list_sql(sql_store *m, char *sql, size_t size, const done_rec *d, size_t n)
{
  size_t len = strlen(sql);
  len += (size_t)snprintf(sql + len, size - len, " AND id IN (");
  for (size_t i = 0; i < n && len < size; i++)
    len += (size_t)snprintf(sql + len, size - len, "%s%lld", i ? "," : "", (long long)d[i].id);
  len += (size_t)snprintf(sql + len, size - len, ") AND (id, lease_token) IN (%s",
                          m->d == TL_DB_SQLITE ? "VALUES " : "");
  for (size_t i = 0; i < n && len < size; i++)
    len += (size_t)snprintf(sql + len, size - len, "%s(%lld,%lld)", i ? "," : "",
                            (long long)d[i].id, (long long)d[i].token);
  if (len < size)
    snprintf(sql + len, size - len, ")");
}

/* Mark `n` holds completed, in one statement. Returns 0 or a status. */
static int complete_holds(sql_store *m, const done_rec *d, size_t n, int64_t now,
                          int64_t *affected)
{
  if (!n) {
    if (affected)
      *affected = 0;
    return 0;
  }
  size_t size = 256 + n * 64;
  char *sql = malloc(size);
  if (!sql)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  snprintf(sql, size, "UPDATE trellis_jobs SET state = 'completed', finished_us = $1,"
                      " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                      " WHERE state = 'running'");
  hold_list_sql(m, sql, size, d, n);
  int rc = wexec(m, affected, sql, TL_ARGS(tl_int(now)));
  free(sql);
  return rc;
}

/* Record the completions waiting in memory, stamped with the latest of
 * their times (they are a few milliseconds apart at most). */
static void flush_done(sql_store *m)
{
  done_rec d[MAX_DONE];
  pthread_mutex_lock(&m->mu);
  size_t n = m->ndone;
  memcpy(d, m->done, n * sizeof *d);
  m->ndone = 0;
  pthread_mutex_unlock(&m->mu);
  int64_t at = INT64_MIN;
  for (size_t i = 0; i < n; i++)
    if (d[i].at > at)
      at = d[i].at;
  if (n && complete_holds(m, d, n, at, NULL) != 0)
    /* Not retried here: the leases end and the jobs run again. */
    tl_log(TL_LOG_ERROR, "jobs: recording completions failed", TL_F_INT("jobs", n),
           TL_F_STR("error", tl_error_last()));
}

/* Keep a completion for the next statement; records them now when the
 * list is full. */
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

static const char *INSERT_COLS =
  "INSERT INTO trellis_jobs (kind, queue, args, state, priority, run_at, max_attempts,"
  " unique_key, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

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
    rc = tl_db_query(m->db, &r, "SELECT id FROM trellis_jobs WHERE kind = $1 AND"
                     " unique_key = $2 AND state IN " LIVE_STATES,
                     TL_ARGS(tl_text(j->kind), tl_text(j->unique_key)));
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
  return 0;
}

static int sql_enqueue_many(tl__jobs_store *s, const tl__job_new *jobs, size_t n)
{
  sql_store *m = S(s);
  if (!n)
    return 0;
  tl_value *a = malloc(n * 9 * sizeof *a);
  if (!a)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  for (size_t i = 0; i < n; i++)
    job_args(&jobs[i], a + i * 9);
  wlock(m);
  int rc = tl_db_exec_many(m->db, NULL, INSERT_COLS, a, 9, n);
  wunlock(m);
  free(a);
  if (rc)
    return tl_error_wrap(rc, "jobs: enqueue %zu '%s' jobs", n, jobs[0].kind);
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < n; i++)
    note_due(m, jobs[i].run_at_us, jobs[i].created_us);
  m->st.submitted += n;
  pthread_mutex_unlock(&m->mu);
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

/* The WHERE clause of a fetch: due, pending, in our queues, not an
 * excluded kind. Placeholders from $first on; the values go to `a`. */
static size_t where_sql(char *sql, size_t size, const tl__fetch *f, int first, tl_value *a,
                        size_t *na)
{
  size_t len = (size_t)snprintf(sql, size, " WHERE state IN " PENDING_STATES
                                " AND run_at <= $%d", first);
  a[(*na)++] = tl_int(f->now_us);
  int p = first + 1;
  if (f->nqueues) {
    len += (size_t)snprintf(sql + len, size - len, " AND queue IN (");
    for (size_t i = 0; i < f->nqueues; i++) {
      len += (size_t)snprintf(sql + len, size - len, "%s$%d", i ? ", " : "", p++);
      a[(*na)++] = tl_text(f->queues[i]);
    }
    len += (size_t)snprintf(sql + len, size - len, ")");
  }
  if (f->nexclude) {
    len += (size_t)snprintf(sql + len, size - len, " AND kind NOT IN (");
    for (size_t i = 0; i < f->nexclude; i++) {
      len += (size_t)snprintf(sql + len, size - len, "%s$%d", i ? ", " : "", p++);
      a[(*na)++] = tl_text(f->exclude_kinds[i]);
    }
    len += (size_t)snprintf(sql + len, size - len, ")");
  }
  return len;
}

#define RET_COLS "id, kind, queue, args, unique_key, priority, attempt, max_attempts, run_at"

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
static int read_holds(tl_rows *r, int64_t token, held **out, size_t cap, size_t *n)
{
  int rc;
  while ((rc = tl_rows_next(r)) == 1) {
    held *h = held_from_row(r, token);
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

/* Lease up to `limit` jobs in the database. */
static int lease_jobs(sql_store *m, const tl__fetch *f, unsigned limit, held **out, size_t *n)
{
  int64_t token = (int64_t)(m->token_base | (atomic_fetch_add(&m->token_seq, 1) + 1));
  size_t nv = f->nqueues + f->nexclude + 8;
  size_t size = 1024 + (f->nqueues + f->nexclude) * 16;
  tl_value *a = malloc(nv * sizeof *a);
  char *where = malloc(size), *sql = malloc(size + 512);
  int rc = 0;
  *n = 0;
  if (!a || !where || !sql) {
    rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
    goto out;
  }
  size_t na = 0;
  a[na++] = tl_text(m->owner);
  a[na++] = tl_int(token);
  a[na++] = tl_int(f->lease_until_us);
  a[na++] = tl_int(limit);
  if (m->d != TL_DB_MYSQL)
    where_sql(where, size, f, 5, a, &na);
  static const char *set = "UPDATE trellis_jobs SET state = 'running', attempt = attempt + 1,"
                           " lease_owner = $1, lease_token = $2, lease_until = $3,"
                           " cancel_requested = 0";
  if (m->d == TL_DB_MYSQL) {
    /* MariaDB has no UPDATE ... RETURNING: lock the rows, update them by
     * id, read them back, in one transaction. READ COMMITTED takes no gap
     * locks, which otherwise make concurrent fetches deadlock. */
    tl_tx *tx;
    tl_tx_opts to = { .isolation = TL_ISO_READ_COMMITTED };
    if ((rc = tl_db_begin_opts(m->db, &tx, &to)) != 0)
      goto out;
    tl_rows *r;
    int64_t ids[256];
    size_t nid = 0, nb = 0;
    tl_value *b = malloc(nv * sizeof *b);
    char *sel = malloc(size + 512);
    if (!sel || !b) {
      free(sel);
      free(b);
      tl_tx_rollback(tx);
      rc = tl_error_set(TL_ENOMEM, "jobs: out of memory");
      goto out;
    }
    b[nb++] = tl_int(limit);
    where_sql(where, size, f, 2, b, &nb);
    snprintf(sel, size + 512, "SELECT id FROM trellis_jobs%s ORDER BY priority DESC, run_at, id"
             " LIMIT $1 FOR UPDATE SKIP LOCKED", where);
    rc = tl_tx_query(tx, &r, sel, b, nb);
    free(sel);
    free(b);
    if (rc == 0) {
      while ((rc = tl_rows_next(r)) == 1)
        if (nid < 256)
          ids[nid++] = col_int(r, 0);
      tl_rows_free(r);
    }
    if (rc == 0 && nid) {
      size_t len = (size_t)snprintf(sql, size + 512, "%s WHERE id IN (", set);
      for (size_t i = 0; i < nid; i++)
        len += (size_t)snprintf(sql + len, size + 512 - len, "%s%lld", i ? "," : "",
                                (long long)ids[i]);
      snprintf(sql + len, size + 512 - len, ")");
      rc = tl_tx_exec(tx, NULL, sql, a, 3);
      if (rc == 0) {
        snprintf(sql, size + 512, "SELECT " RET_COLS " FROM trellis_jobs WHERE lease_token = $1"
                 " AND state = 'running'");
        if ((rc = tl_tx_query(tx, &r, sql, TL_ARGS(tl_int(token)))) == 0) {
          rc = read_holds(r, token, out, limit, n);
          tl_rows_free(r);
        }
      }
    }
    if (rc == 0)
      rc = tl_tx_commit(tx);
    else
      tl_tx_rollback(tx);
  } else {
    /* PostgreSQL: = ANY(ARRAY(...)) rather than IN (...), so the planner
     * looks the few ids up by primary key instead of joining the subquery
     * against a scan of the table when its statistics are stale. */
    if (m->d == TL_DB_POSTGRES)
      snprintf(sql, size + 512, "%s WHERE id = ANY(ARRAY(SELECT id FROM trellis_jobs%s"
               " ORDER BY priority DESC, run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED))"
               " RETURNING " RET_COLS, set, where);
    else
      snprintf(sql, size + 512, "%s WHERE id IN (SELECT id FROM trellis_jobs%s"
               " ORDER BY priority DESC, run_at, id LIMIT $4) RETURNING " RET_COLS, set, where);
    tl_rows *r;
    if (m->d == TL_DB_SQLITE) {
      /* One writer: BEGIN IMMEDIATE takes the write lock before reading. */
      tl_tx *tx;
      wlock(m);
      if ((rc = tl_db_begin(m->db, &tx)) == 0) {
        if ((rc = tl_tx_query(tx, &r, sql, a, na)) == 0) {
          rc = read_holds(r, token, out, limit, n);
          tl_rows_free(r);
        }
        if (rc == 0)
          rc = tl_tx_commit(tx);
        else
          tl_tx_rollback(tx);
      }
      wunlock(m);
      if (rc)
        goto out;
    } else if ((rc = tl_db_query(m->db, &r, sql, a, na)) == 0) {
      rc = read_holds(r, token, out, limit, n);
      tl_rows_free(r);
    }
  }
  if (rc != 0) {
    for (size_t i = 0; i < *n; i++)
      free(out[i]);
    *n = 0;
  }
  qsort(out, *n, sizeof *out, by_order);
out:
  free(a);
  free(where);
  free(sql);
  return rc;
}

static int sql_fetch(tl__jobs_store *s, const tl__fetch *f, tl__job *out)
{
  sql_store *m = S(s);
  if (f->done)
    defer_done(m, f->done, f->now_us);
  pthread_mutex_lock(&m->mu);
  if (m->stopped) {
    pthread_mutex_unlock(&m->mu);
    flush_done(m);
    return 0;
  }
  held *h = buf_take(m, f);
  /* Forget due times that passed: this fetch looks for those jobs. */
  size_t k = 0;
  for (size_t i = 0; i < m->ndues; i++)
    if (m->dues[i] > f->now_us)
      m->dues[k++] = m->dues[i];
  m->ndues = k;
  pthread_mutex_unlock(&m->mu);
  if (h) {
    *out = h->job;
    return 1;
  }
  flush_done(m);
  held *got[256];
  size_t n = 0;
  unsigned limit = m->batch > 256 ? 256 : m->batch;
  int rc = lease_jobs(m, f, limit, got, &n);
  /* Two fetches that lock the same index range can deadlock (MariaDB) or
   * meet busy (SQLite): nothing was taken; try again. */
  for (int i = 0; i < 3 && rc == TL_ERETRY; i++)
    rc = lease_jobs(m, f, limit, got, &n);
  if (rc == TL_ERETRY)
    return 0; /* the next poll looks again */
  if (rc)
    return tl_error_wrap(rc, "jobs: fetch");
  if (!n)
    return 0;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < n; i++)
    held_link(m, got[i]);
  got[0]->started = true;
  held **nb = n > 1 ? realloc(m->buf, (m->nbuf + n - 1) * sizeof *nb) : m->buf;
  if (n > 1 && nb) {
    m->buf = nb;
    memcpy(&m->buf[m->nbuf], &got[1], (n - 1) * sizeof *got);
    m->nbuf += n - 1;
  }
  bool lost_extra = n > 1 && !nb;
  pthread_mutex_unlock(&m->mu);
  if (lost_extra) /* out of memory: their leases end and they run elsewhere */
    for (size_t i = 1; i < n; i++)
      held_drop(m, got[i]);
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

/* Give back holds (attempt not counted), in one statement. */
static int release_holds(sql_store *m, const done_rec *d, size_t n)
{
  if (!n)
    return 0;
  size_t size = 256 + n * 64;
  char *sql = malloc(size);
  if (!sql)
    return tl_error_set(TL_ENOMEM, "jobs: out of memory");
  snprintf(sql, size, "UPDATE trellis_jobs SET state = 'available', attempt = attempt - 1,"
                      " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                      " WHERE state = 'running'");
  hold_list_sql(m, sql, size, d, n);
  int rc = wexec(m, NULL, sql, TL_NOARGS);
  free(sql);
  return rc;
}

/* The holder keeps its record (it is still running the job); its
 * finishing call finds the token gone and gets TL_ESTATE. */
static int sql_release(tl__jobs_store *s, tl__job *j, int64_t now)
{
  (void)now;
  sql_store *m = S(s);
  done_rec d = { j->id, (int64_t)j->lease, now };
  int rc = release_holds(m, &d, 1);
  return rc ? tl_error_wrap(rc, "job %lld: release", (long long)j->id) : 0;
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
  if (!n) {
    free(d);
    return 0;
  }
  size_t size = 256 + n * 64;
  char *sql = malloc(size);
  int rc = TL_ENOMEM;
  if (sql) {
    snprintf(sql, size, "UPDATE trellis_jobs SET lease_until = $1 WHERE state = 'running'");
    hold_list_sql(m, sql, size, d, n);
    rc = wexec(m, NULL, sql, TL_ARGS(tl_int(lease_until)));
    if (rc == 0) {
      snprintf(sql, size, "SELECT id FROM trellis_jobs WHERE state = 'running'"
               " AND cancel_requested = 1");
      hold_list_sql(m, sql, size, d, n);
      tl_rows *r;
      if (tl_db_query(m->db, &r, sql, TL_NOARGS) == 0) {
        while (tl_rows_next(r) == 1) {
          int64_t id = col_int(r, 0);
          pthread_mutex_lock(&m->mu);
          for (held *h = m->held; h; h = h->next)
            if (h->job.id == id)
              atomic_fetch_or(&h->cancel, TL__CANCEL_USER);
          pthread_mutex_unlock(&m->mu);
        }
        tl_rows_free(r);
      }
    }
  }
  free(sql);
  free(d);
  if (rc)
    tl_log(TL_LOG_ERROR, "jobs: lease renewal failed", TL_F_STR("error", tl_error_last()));
  return rc;
}

/* Delete completed jobs and claimed cron slots older than the retention,
 * a bounded number per call; the newest slot of each schedule stays (a
 * restart catches up from it). */
static void prune(sql_store *m, int64_t now)
{
  int64_t cut = now - m->retention_us, n = 0;
  int rc;
  if (m->d == TL_DB_MYSQL) {
    rc = wexec(m, &n, "DELETE FROM trellis_jobs WHERE state = 'completed' AND"
                    " finished_us < $1 LIMIT 10000", TL_ARGS(tl_int(cut)));
    if (rc == 0)
      rc = wexec(m, NULL, "DELETE s FROM trellis_jobs_cron_slots s JOIN (SELECT name,"
                      " MAX(slot_us) AS m FROM trellis_jobs_cron_slots GROUP BY name) x"
                      " ON x.name = s.name WHERE s.slot_us < x.m AND s.slot_us < $1",
                      TL_ARGS(tl_int(cut)));
  } else {
    rc = wexec(m, &n, "DELETE FROM trellis_jobs WHERE id IN (SELECT id FROM"
                    " trellis_jobs WHERE state = 'completed' AND finished_us < $1 LIMIT 10000)",
                    TL_ARGS(tl_int(cut)));
    if (rc == 0)
      rc = wexec(m, NULL, "DELETE FROM trellis_jobs_cron_slots WHERE slot_us < $1 AND"
                      " slot_us < (SELECT MAX(s2.slot_us) FROM trellis_jobs_cron_slots s2"
                      " WHERE s2.name = trellis_jobs_cron_slots.name)", TL_ARGS(tl_int(cut)));
  }
  if (rc)
    tl_log(TL_LOG_ERROR, "jobs: pruning failed", TL_F_STR("error", tl_error_last()));
  else if (n)
    tl_log(TL_LOG_DEBUG, "jobs: pruned completed jobs", TL_F_INT("count", n));
}

static int sql_recover(tl__jobs_store *s, int64_t now, size_t *count)
{
  sql_store *m = S(s);
  int64_t n = 0;
  flush_done(m);
  int rc = wexec(m, &n, "UPDATE trellis_jobs SET state = CASE WHEN attempt <"
                      " max_attempts THEN 'retryable' ELSE 'discarded' END,"
                      " finished_us = CASE WHEN attempt < max_attempts THEN NULL ELSE $1 END,"
                      " run_at = $1, last_error = 'lease expired: the worker was lost',"
                      " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                      " WHERE state = 'running' AND lease_until < $1", TL_ARGS(tl_int(now)));
  if (count)
    *count = rc == 0 ? (size_t)n : 0;
  pthread_mutex_lock(&m->mu);
  bool due = now >= m->next_prune;
  if (due) {
    int64_t every = m->retention_us / 4;
    m->next_prune = now + (every < 1000000 ? 1000000 : every > 60000000 ? 60000000 : every);
  }
  if (rc == 0 && n)
    m->st.retried += (uint64_t)n;
  pthread_mutex_unlock(&m->mu);
  if (due)
    prune(m, now);
  return rc ? tl_error_wrap(rc, "jobs: recover") : 0;
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
  if (n)
    return 0;
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

/* ---- cron slots ---------------------------------------------------------------------------------- */

typedef struct slot_claim {
  sql_store *m;
  const char *name;
  int64_t slot;
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
  int rc = tl_tx_exec(tx, &n, sql, TL_ARGS(tl_text(c->name), tl_int(c->slot),
                                          tl_int(c->j->created_us)));
  if (rc || n == 0)
    return rc;
  if ((rc = insert_job(m, tx, c->j, false, &id)) < 0)
    return rc;
  rc = tl_tx_exec(tx, NULL, "UPDATE trellis_jobs_cron_slots SET job_id = $3 WHERE name = $1 AND"
                  " slot_us = $2", TL_ARGS(tl_text(c->name), tl_int(c->slot), tl_int(id)));
  if (rc == 0)
    c->claimed = true;
  return rc;
}

static int sql_enqueue_slot(tl__jobs_store *s, const char *name, int64_t slot_us,
                            const tl__job_new *j, bool *claimed)
{
  sql_store *m = S(s);
  slot_claim c = { m, name, slot_us, j, false };
  wlock(m);
  int rc = tl_db_transact(m->db, claim_tx, &c, NULL);
  wunlock(m);
  *claimed = rc == 0 && c.claimed;
  if (rc)
    return tl_error_wrap(rc, "schedule '%s': claim slot", name);
  if (c.claimed) {
    pthread_mutex_lock(&m->mu);
    note_due(m, j->run_at_us, j->created_us);
    m->st.submitted++;
    pthread_mutex_unlock(&m->mu);
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
  if (n && release_holds(m, d, n) != 0)
    tl_log(TL_LOG_ERROR, "jobs: returning fetched jobs failed; their leases will end",
           TL_F_STR("error", tl_error_last()));
  for (size_t i = 0; i < n; i++)
    free(give[i]);
  free(d);
  free(give);
}

static void sql_close(tl__jobs_store *s)
{
  sql_store *m = S(s);
  if (!m)
    return;
  sql_quiesce(s, tl_time_now_us());
  for (held *h = m->held, *nx; h; h = nx) {
    nx = h->next;
    free(h);
  }
  free(m->buf);
  pthread_mutex_destroy(&m->mu);
  pthread_mutex_destroy(&m->wmu);
  free(m);
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
  /* The MariaDB statements exist below, but the queue on MariaDB has not
   * yet passed its kill -9 and shutdown tests reliably: it is refused
   * until it does. */
  if (d == TL_DB_MYSQL)
    return tl_error_set(TL_EUNSUPP, "jobs: db: the durable queue runs on SQLite or PostgreSQL; "
                        "MySQL/MariaDB is not supported yet");
  if (d != TL_DB_SQLITE && d != TL_DB_POSTGRES)
    return tl_error_set(TL_EINVAL, "jobs: db: the durable queue needs SQLite or PostgreSQL");
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
  m->batch = o && o->batch ? o->batch : 1;
  m->retention_us = o && o->retention_us > 0 ? o->retention_us : INT64_C(86400000000);
  m->lease_us = o ? o->lease_us : 0;
  uint32_t nonce = 0;
  tl_random_bytes(&nonce, sizeof nonce);
  nonce &= 0x7fffffff; /* tokens stay positive in a signed BIGINT */
  m->token_base = (uint64_t)nonce << 32;
  char host[64] = "";
  gethostname(host, sizeof host - 1);
  snprintf(m->owner, sizeof m->owner, "%.60s:%d:%08x", host, (int)getpid(), nonce);
  pthread_mutex_init(&m->mu, NULL);
  pthread_mutex_init(&m->wmu, NULL);
  *out = &m->base;
  return 0;
}
