/* bench_jobs: in-memory no-op jobs per second, submit -> execute, through
 * the trellis executor and through a plain mutex + condition variable
 * queue with the same threads doing the same work; and the durable queue
 * on SQLite and PostgreSQL: enqueue rate (one job per call, and batches
 * of 1000 through tl_jobs_submit_many) against plain INSERTs of the same
 * rows, and completed no-op jobs per second with 10 workers against plain
 * UPDATEs that take and finish the same rows.
 *
 *   bench_jobs
 *
 * PostgreSQL comes from BENCH_POSTGRES_URL, else TRELLIS_TEST_POSTGRES_URL,
 * else the scripts/services file; without one its cases are skipped.
 * BENCH_JOBS_ONLY=memory,sqlite,pg runs only the groups named.
 *
 * One thread submits N jobs with the arguments "{}" (copied per job on
 * both sides); K worker threads (1, then 2) take them and call a no-op
 * function that counts the run; a round ends when all N have run. The
 * executor keeps its metrics (counters, run-time histogram) on, as in
 * production. Environment: BENCH_QUICK=1, BENCH_ROUNDS=N,
 * BENCH_JOBS_N=count (default 1,000,000). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <trellis/trellis.h>
#include <trellis/jobs.h>

#include "bench.h"

static long n_jobs;
static atomic_long done;

/* Wait for the workers without taking a core from them. */
static void wait_done(long target)
{
  while (atomic_load_explicit(&done, memory_order_acquire) < target)
    usleep(50);
}

/* ---- trellis ---------------------------------------------------------------- */

static int noop(const char *args, tl_job_ctx *ctx)
{
  (void)args;
  (void)ctx;
  atomic_fetch_add_explicit(&done, 1, memory_order_release);
  return TL_JOB_OK;
}

typedef struct ours_ctx {
  tl_jobs *ex;
} ours_ctx;

static double ours_run(void *p)
{
  ours_ctx *c = p;
  long base = atomic_load(&done);
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < n_jobs; i++) {
    if (tl_jobs_submit(c->ex, "noop", "{}", NULL) != 0) {
      fprintf(stderr, "bench_jobs: submit: %s\n", tl_error_last());
      return -1;
    }
  }
  wait_done(base + n_jobs);
  return (double)n_jobs / ((double)(bench_now_ns() - t0) / 1e9);
}

/* ---- baseline: a mutex + condvar FIFO of heap nodes ---------------------------- */

typedef struct node {
  struct node *next;
  void (*fn)(const char *args);
  char args[];
} node;

typedef struct plain_queue {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  node *head, *tail;
  int waiting;
  bool stop;
  pthread_t th[8];
  int nthreads;
} plain_queue;

static void plain_noop(const char *args)
{
  (void)args;
  atomic_fetch_add_explicit(&done, 1, memory_order_release);
}

static void *plain_worker(void *p)
{
  plain_queue *q = p;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    while (!q->head && !q->stop) {
      q->waiting++;
      pthread_cond_wait(&q->cv, &q->mu);
      q->waiting--;
    }
    if (!q->head)
      break;
    node *n = q->head;
    q->head = n->next;
    if (!q->head)
      q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    n->fn(n->args);
    free(n);
    pthread_mutex_lock(&q->mu);
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}

static int plain_submit(plain_queue *q, const char *args)
{
  size_t len = strlen(args);
  node *n = malloc(sizeof *n + len + 1);
  if (!n)
    return -1;
  n->next = NULL;
  n->fn = plain_noop;
  memcpy(n->args, args, len + 1);
  pthread_mutex_lock(&q->mu);
  if (q->tail)
    q->tail->next = n;
  else
    q->head = n;
  q->tail = n;
  if (q->waiting)
    pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
  return 0;
}

static double plain_run(void *p)
{
  plain_queue *q = p;
  long base = atomic_load(&done);
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < n_jobs; i++) {
    if (plain_submit(q, "{}") != 0)
      return -1;
  }
  wait_done(base + n_jobs);
  return (double)n_jobs / ((double)(bench_now_ns() - t0) / 1e9);
}

static void plain_start(plain_queue *q, int threads)
{
  memset(q, 0, sizeof *q);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  q->nthreads = threads;
  for (int i = 0; i < threads; i++)
    pthread_create(&q->th[i], NULL, plain_worker, q);
}

static void plain_stop(plain_queue *q)
{
  pthread_mutex_lock(&q->mu);
  q->stop = true;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  for (int i = 0; i < q->nthreads; i++)
    pthread_join(q->th[i], NULL);
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cv);
}

/* ---- main ------------------------------------------------------------------------ */

static int compare(unsigned workers)
{
  tl_metrics *reg;
  if (tl_metrics_new(&reg) != 0)
    return -1;
  ours_ctx oc = { 0 };
  tl_jobs_config cfg = { .workers = workers, .metrics = reg };
  if (tl_jobs_open(&oc.ex, &cfg) != 0 ||
      tl_jobs_register(oc.ex, &(tl_worker){ .kind = "noop", .execute = noop }) != 0) {
    fprintf(stderr, "bench_jobs: %s\n", tl_error_last());
    return -1;
  }
  plain_queue q;
  plain_start(&q, (int)workers);
  char name[32], cond[200];
  snprintf(name, sizeof name, "noop_%uw", workers);
  snprintf(cond, sizeof cond,
           "in memory, %ld no-op jobs per round, args \"{}\" copied, 1 submitting thread, "
           "%u worker thread%s, trellis metrics on", n_jobs, workers, workers > 1 ? "s" : "");
  int rc = bench_compare1("jobs", name, "jobs/s", false, "mutex+condvar queue", cond, ours_run,
                          &oc, plain_run, &q);
  plain_stop(&q);
  tl_jobs_close(oc.ex);
  tl_metrics_free(reg);
  return rc;
}

/* ---- durable queue ----------------------------------------------------------------- */

typedef struct dur_ctx {
  tl_db *db;
  tl_jobs *ex;
  const char *name;  /* "sqlite", "pg" */
  long n;
  bool batched;
} dur_ctx;

static const char *const *noop_args(long n)
{
  static const char **args;
  static long have;
  if (have < n) {
    free(args);
    args = malloc((size_t)n * sizeof *args);
    for (long i = 0; i < n; i++)
      args[i] = "{}";
    have = n;
  }
  return args;
}

static int dexec(tl_db *db, const char *sql)
{
  if (tl_db_exec(db, NULL, sql, TL_NOARGS) != 0) {
    fprintf(stderr, "bench_jobs: %s: %s\n", sql, tl_error_last());
    return -1;
  }
  return 0;
}

/* The baseline's table: the job row's columns, no queue logic. */
static int plain_table(tl_db *db)
{
  bool my = tl_db_dialect_of(db) == TL_DB_MYSQL;
  dexec(db, "DROP TABLE IF EXISTS bench_plain_jobs");
  return dexec(db, my ? "CREATE TABLE bench_plain_jobs (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                        " kind VARCHAR(64), queue VARCHAR(64), args TEXT, state VARCHAR(16),"
                        " priority INT, run_at BIGINT, max_attempts INT, unique_key VARCHAR(255),"
                        " created_us BIGINT, attempt INT DEFAULT 0, finished_us BIGINT)"
                 : tl_db_dialect_of(db) == TL_DB_SQLITE
                 ? "CREATE TABLE bench_plain_jobs (id INTEGER PRIMARY KEY, kind TEXT, queue TEXT,"
                   " args TEXT, state TEXT, priority INT, run_at BIGINT, max_attempts INT,"
                   " unique_key TEXT, created_us BIGINT, attempt INT DEFAULT 0, finished_us BIGINT)"
                 : "CREATE TABLE bench_plain_jobs (id BIGSERIAL PRIMARY KEY, kind VARCHAR(64),"
                   " queue VARCHAR(64), args TEXT, state VARCHAR(16), priority INT, run_at BIGINT,"
                   " max_attempts INT, unique_key VARCHAR(255), created_us BIGINT,"
                   " attempt INT DEFAULT 0, finished_us BIGINT)");
}

#define PLAIN_INSERT "INSERT INTO bench_plain_jobs (kind, queue, args, state, priority, run_at," \
                     " max_attempts, unique_key, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7," \
                     " $8, $9)"

static void plain_row(tl_value *a, int64_t now)
{
  a[0] = tl_text("noop");
  a[1] = tl_text("default");
  a[2] = tl_text("{}");
  a[3] = tl_text("available");
  a[4] = tl_int(0);
  a[5] = tl_int(now);
  a[6] = tl_int(4);
  a[7] = tl_null();
  a[8] = tl_int(now);
}

static double dur_enqueue_ours(void *p)
{
  dur_ctx *c = p;
  if (dexec(c->db, "DELETE FROM trellis_jobs") != 0)
    return -1;
  const char *const *args = noop_args(1000);
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n;) {
    long k = c->batched ? (c->n - i < 1000 ? c->n - i : 1000) : 1;
    int rc = c->batched ? tl_jobs_submit_many(c->ex, "noop", args, (size_t)k, NULL)
                        : tl_jobs_submit(c->ex, "noop", "{}", NULL);
    if (rc != 0) {
      fprintf(stderr, "bench_jobs: submit: %s\n", tl_error_last());
      return -1;
    }
    i += k;
  }
  return (double)c->n / ((double)(bench_now_ns() - t0) / 1e9);
}

static double dur_enqueue_plain(void *p)
{
  dur_ctx *c = p;
  if (dexec(c->db, "DELETE FROM bench_plain_jobs") != 0)
    return -1;
  tl_value *a = malloc(1000 * 9 * sizeof *a);
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < c->n;) {
    long k = c->batched ? (c->n - i < 1000 ? c->n - i : 1000) : 1;
    int64_t now = tl_time_now_us();
    for (long r = 0; r < k; r++)
      plain_row(a + r * 9, now);
    int rc = c->batched ? tl_db_exec_many(c->db, NULL, PLAIN_INSERT, a, 9, (size_t)k)
                        : tl_db_exec(c->db, NULL, PLAIN_INSERT, a, 9);
    if (rc != 0) {
      fprintf(stderr, "bench_jobs: insert: %s\n", tl_error_last());
      free(a);
      return -1;
    }
    i += k;
  }
  free(a);
  return (double)c->n / ((double)(bench_now_ns() - t0) / 1e9);
}

/* Enqueue n no-op jobs (paused), then time the workers taking and
 * completing all of them, until the completions are recorded. */
static double dur_complete_ours(void *p)
{
  dur_ctx *c = p;
  if (dexec(c->db, "DELETE FROM trellis_jobs") != 0)
    return -1;
  const char *const *args = noop_args(1000);
  for (long i = 0; i < c->n; i += 1000)
    if (tl_jobs_submit_many(c->ex, "noop", args, (size_t)(c->n - i < 1000 ? c->n - i : 1000),
                            NULL) != 0) {
      fprintf(stderr, "bench_jobs: submit: %s\n", tl_error_last());
      return -1;
    }
  long base = atomic_load(&done);
  uint64_t t0 = bench_now_ns();
  tl_jobs_resume(c->ex);
  wait_done(base + c->n);
  tl_jobs_pause(c->ex);
  tl_jobs_stats st;
  tl_jobs_stats_get(c->ex, &st); /* records what is still in memory */
  double r = (double)c->n / ((double)(bench_now_ns() - t0) / 1e9);
  return r;
}

typedef struct plain_worker_arg {
  tl_db *db;
  long from, to;
  int rc;
} plain_worker_arg;

static void *plain_update_worker(void *p)
{
  plain_worker_arg *w = p;
  for (long id = w->from; id < w->to && w->rc == 0; id++) {
    int64_t now = tl_time_now_us();
    if (tl_db_exec(w->db, NULL, "UPDATE bench_plain_jobs SET state = 'running', attempt ="
                   " attempt + 1 WHERE id = $1", TL_ARGS(tl_int(id))) != 0 ||
        tl_db_exec(w->db, NULL, "UPDATE bench_plain_jobs SET state = 'completed', finished_us ="
                   " $2 WHERE id = $1", TL_ARGS(tl_int(id), tl_int(now))) != 0)
      w->rc = -1;
  }
  return NULL;
}

static double dur_complete_plain(void *p)
{
  dur_ctx *c = p;
  if (dexec(c->db, "DELETE FROM bench_plain_jobs") != 0)
    return -1;
  tl_value *a = malloc(1000 * 9 * sizeof *a);
  for (long i = 0; i < c->n; i += 1000) {
    long k = c->n - i < 1000 ? c->n - i : 1000;
    for (long r = 0; r < k; r++)
      plain_row(a + r * 9, tl_time_now_us());
    tl_db_exec_many(c->db, NULL, PLAIN_INSERT, a, 9, (size_t)k);
  }
  free(a);
  tl_rows *r;
  int64_t lo = 0;
  if (tl_db_query(c->db, &r, "SELECT MIN(id) FROM bench_plain_jobs", TL_NOARGS) == 0) {
    if (tl_rows_next(r) == 1)
      tl_rows_int(r, 0, &lo);
    tl_rows_free(r);
  }
  enum { T = 10 };
  pthread_t th[T];
  plain_worker_arg w[T];
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < T; i++) {
    w[i] = (plain_worker_arg){ c->db, lo + c->n * i / T, lo + c->n * (i + 1) / T, 0 };
    pthread_create(&th[i], NULL, plain_update_worker, &w[i]);
  }
  int rc = 0;
  for (int i = 0; i < T; i++) {
    pthread_join(th[i], NULL);
    rc |= w[i].rc;
  }
  if (rc) {
    fprintf(stderr, "bench_jobs: update: %s\n", tl_error_last());
    return -1;
  }
  return (double)c->n / ((double)(bench_now_ns() - t0) / 1e9);
}

static int durable(const char *name, const char *url, const char *durability)
{
  tl_db *db;
  tl_metrics *reg;
  tl_metrics_new(&reg);
  if (tl_db_connect(&db, &(tl_db_config){ .url = url, .max_connections = 12 }) != 0) {
    fprintf(stderr, "bench_jobs: %s: %s\n", name, tl_error_last());
    return -1;
  }
  dur_ctx c = { .db = db, .name = name };
  if (tl_jobs_open(&c.ex, &(tl_jobs_config){ .workers = 10, .db = db, .paused = true,
                                             .metrics = reg, .poll_us = 100000 }) != 0 ||
      tl_jobs_register(c.ex, &(tl_worker){ .kind = "noop", .execute = noop }) != 0 ||
      plain_table(db) != 0) {
    fprintf(stderr, "bench_jobs: %s: %s\n", name, tl_error_last());
    return -1;
  }
  int rc = 0;
  char cs[64], cond[400];
  c.n = bench_size(!strcmp(name, "sqlite") ? 5000 : 3000, 300);
  snprintf(cs, sizeof cs, "%s_enqueue_1", name);
  snprintf(cond, sizeof cond, "%s, %s; one job per call (tl_jobs_submit) vs one INSERT of the "
           "same row per statement, autocommit, %ld jobs, 1 thread", name, durability, c.n);
  rc |= bench_compare1("jobs", cs, "jobs/s", false, "plain INSERT", cond, dur_enqueue_ours, &c,
                       dur_enqueue_plain, &c);
  c.batched = true;
  c.n = bench_size(100000, 3000);
  snprintf(cs, sizeof cs, "%s_enqueue_batch", name);
  snprintf(cond, sizeof cond, "%s, %s; tl_jobs_submit_many of 1000 vs tl_db_exec_many of the "
           "same 1000 INSERTs, one transaction per batch, %ld jobs, 1 thread", name, durability,
           c.n);
  rc |= bench_compare1("jobs", cs, "jobs/s", false, "plain INSERT batch", cond, dur_enqueue_ours,
                       &c, dur_enqueue_plain, &c);
  c.n = bench_size(50000, 2000);
  snprintf(cs, sizeof cs, "%s_complete_10w", name);
  snprintf(cond, sizeof cond, "%s, %s; %ld no-op jobs enqueued beforehand, 10 workers take and "
           "complete them (leases, SKIP LOCKED on PostgreSQL, completions recorded) vs 10 "
           "threads each running UPDATE running + UPDATE completed per row of their own range, "
           "autocommit", name, durability, c.n);
  rc |= bench_compare1("jobs", cs, "jobs/s", false, "plain UPDATEs", cond, dur_complete_ours, &c,
                       dur_complete_plain, &c);
  tl_jobs_close(c.ex);
  dexec(db, "DROP TABLE IF EXISTS bench_plain_jobs");
  dexec(db, "DELETE FROM trellis_jobs");
  tl_db_close(db);
  tl_metrics_free(reg);
  return rc ? -1 : 0;
}

/* Is the group `name` wanted? BENCH_JOBS_ONLY="memory,sqlite,pg" picks
 * groups (all by default). */
static bool wanted(const char *name)
{
  const char *only = getenv("BENCH_JOBS_ONLY");
  if (!only || !*only)
    return true;
  size_t n = strlen(name);
  for (const char *p = only; *p; p += strcspn(p, ","), p += *p == ',')
    if (strcspn(p, ",") == n && !strncmp(p, name, n))
      return true;
  return false;
}

int main(void)
{
  tl_log_set_level(TL_LOG_WARN);
  const char *n = getenv("BENCH_JOBS_N");
  n_jobs = n && atol(n) > 0 ? atol(n) : bench_size(1000000, 20000);
  int rc = 0;
  if (wanted("memory") && (compare(1) != 0 || compare(2) != 0))
    rc = 1;
  char path[128], url[160], buf[1024];
  snprintf(path, sizeof path, "/tmp/trellis-bench-jobs-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  if (wanted("sqlite") && durable("sqlite", url, "WAL, synchronous=NORMAL") != 0)
    rc = 1;
  for (const char *sfx = ""; sfx; sfx = !*sfx ? "-wal" : !strcmp(sfx, "-wal") ? "-shm" : NULL) {
    char p[160];
    snprintf(p, sizeof p, "%s%s", path, sfx);
    unlink(p);
  }
  const char *pg = getenv("BENCH_POSTGRES_URL");
  if (!pg || !*pg)
    pg = bench_service_url("TRELLIS_TEST_POSTGRES_URL", buf, sizeof buf);
  if (!wanted("pg"))
    ;
  else if (!pg)
    fprintf(stderr, "bench_jobs: no PostgreSQL (set BENCH_POSTGRES_URL or run scripts/services "
                    "start postgres): durable pg cases skipped\n");
  else if (durable("pg", pg, "server defaults (synchronous_commit=on)") != 0)
    rc = 1;
  return rc;
}
