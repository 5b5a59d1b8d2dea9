/* bench_jobs: in-memory no-op jobs per second, submit -> execute, through
 * the trellis executor and through a plain mutex + condition variable
 * queue with the same threads doing the same work.
 *
 *   bench_jobs
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

int main(void)
{
  tl_log_set_level(TL_LOG_WARN);
  const char *n = getenv("BENCH_JOBS_N");
  n_jobs = n && atol(n) > 0 ? atol(n) : bench_size(1000000, 20000);
  int rc = 0;
  if (compare(1) != 0)
    rc = 1;
  if (compare(2) != 0)
    rc = 1;
  return rc;
}
