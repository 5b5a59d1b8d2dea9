/* Subscription lag: from an append's commit (its call returning) to the
 * handler of a live subscription getting the event, one event every
 * PACE_US so that the subscriber is idle when each one arrives.
 *
 * Baseline: the same row written with a plain INSERT, woken the same way,
 * and read by a thread that SELECTs the rows after the last it saw. The
 * wake-up: SQLite, a condition variable in the process (as the store's);
 * PostgreSQL, LISTEN/NOTIFY with the NOTIFY sent by a statement trigger
 * of the INSERT, so it leaves at the commit itself (the store sends it
 * after the commit, from another thread). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_es.h"

#define PACE_US 2000
#define CHANNEL "bench_es_lag"

typedef struct lag_run {
  bes_db *d;
  long n;                /* events per round */
  int round;
  int64_t *commit_us, *seen_us;
  atomic_long seen;
  char category[48];
  /* baseline: the reader thread and its wake-up */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint64_t seq;
  bool stop;
  tl_db_listener *listener;
} lag_run;

static void record_seen(lag_run *r)
{
  long i = atomic_fetch_add(&r->seen, 1);
  if (i < r->n) r->seen_us[i] = tl_time_mono_us();
}

static int on_event(const tl_event *ev, tl_tx *tx, void *ctx)
{
  (void)ev, (void)tx;
  record_seen(ctx);
  return 0;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Wait until every event was seen; then the p50 and p99 of the lags. */
static int finish(lag_run *r, double *figures)
{
  int64_t end = tl_time_mono_us() + 10000000;
  while (atomic_load(&r->seen) < r->n && tl_time_mono_us() < end) tl_sleep_us(1000);
  if (atomic_load(&r->seen) < r->n) {
    fprintf(stderr, "bench_es: lag: %ld of %ld events seen\n", atomic_load(&r->seen), r->n);
    return -1;
  }
  double *lag = malloc(sizeof *lag * (size_t)r->n);
  for (long i = 0; i < r->n; i++) {
    /* The reader may get the event before the writer's call returns. */
    int64_t d = r->seen_us[i] - r->commit_us[i];
    lag[i] = d > 1 ? (double)d : 1.0; /* µs; figures must be positive */
  }
  qsort(lag, (size_t)r->n, sizeof *lag, cmp_double);
  figures[0] = lag[(r->n - 1) / 2];
  figures[1] = lag[(long)(0.99 * (double)(r->n - 1) + 0.5)];
  free(lag);
  return 0;
}

static void new_round(lag_run *r, const char *side)
{
  r->round++;
  atomic_store(&r->seen, 0);
  snprintf(r->category, sizeof r->category, "lag%d%s%d", (int)getpid(), side, r->round);
}

static int run_ours(void *ctx, double *figures)
{
  lag_run *r = ctx;
  new_round(r, "o");
  char name[64], stream[64];
  snprintf(name, sizeof name, "%s-sub", r->category);
  snprintf(stream, sizeof stream, "%s-1", r->category);
  tl_es_sub_opts o = { .name = name, .filter = { .category = r->category } };
  tl_es_sub *sub;
  if (tl_es_subscribe(r->d->es, &o, on_event, r, &sub)) {
    fprintf(stderr, "bench_es: subscribe: %s\n", tl_error_last());
    return -1;
  }
  int64_t end = tl_time_mono_us() + 5000000;
  while (!tl_es_sub_is_leader(sub) && tl_time_mono_us() < end) tl_sleep_us(1000);
  tl_sleep_us(50000); /* caught up (nothing to read) and idle */
  int rc = 0;
  for (long i = 0; i < r->n && !rc; i++) {
    tl_event e = { .aggregate_id = stream, .event_type = "LagMeasured", .data = BES_DATA };
    rc = tl_es_append_to(r->d->es, stream, TL_ES_ANY, &e, 1);
    r->commit_us[i] = tl_time_mono_us();
    tl_sleep_us(PACE_US);
  }
  if (rc) fprintf(stderr, "bench_es: append: %s\n", tl_error_last());
  if (!rc) rc = finish(r, figures);
  tl_es_sub_stop(sub);
  return rc;
}

/* The baseline's reader: wait for a wake-up, read the new rows. */
static void *reader(void *arg)
{
  lag_run *r = arg;
  int64_t last = 0;
  uint64_t seen_seq = 0;
  for (;;) {
    if (r->listener) {
      char payload[8];
      tl_db_listener_wait(r->listener, 100000, payload, sizeof payload);
    } else {
      pthread_mutex_lock(&r->mu);
      if (r->seq == seen_seq && !r->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
      }
      seen_seq = r->seq;
      pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_lock(&r->mu);
    bool stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    if (stop) break;
    tl_rows *rows;
    if (tl_db_query(r->d->db, &rows, "SELECT position, tx, id, stream, category, type, version, "
                    "data, metadata, schema_version, created_us FROM bench_es_lag WHERE "
                    "position > $1 AND category = $2 ORDER BY position",
                    TL_ARGS(tl_int(last), tl_text(r->category))))
      continue;
    while (tl_rows_next(rows) == 1) {
      tl_rows_int(rows, 0, &last);
      record_seen(r);
    }
    tl_rows_free(rows);
  }
  return NULL;
}

static int run_base(void *ctx, double *figures)
{
  lag_run *r = ctx;
  new_round(r, "b");
  r->stop = false;
  pthread_t th;
  pthread_create(&th, NULL, reader, r);
  tl_sleep_us(50000);
  char stream[64], id[TL_UUID_STRLEN];
  snprintf(stream, sizeof stream, "%s-1", r->category);
  int rc = 0;
  for (long i = 0; i < r->n && !rc; i++) {
    tl_uuid7(id);
    rc = tl_db_exec(r->d->db, NULL, "INSERT INTO bench_es_lag (" BES_PLAIN_COLS ") VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    TL_ARGS(tl_text(id), tl_text(stream), tl_text(r->category),
                            tl_text("LagMeasured"), tl_int(i + 1), tl_json(BES_DATA), tl_json("{}"),
                            tl_int(1), tl_int(tl_time_now_us())));
    r->commit_us[i] = tl_time_mono_us();
    pthread_mutex_lock(&r->mu);
    r->seq++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    tl_sleep_us(PACE_US);
  }
  if (rc) fprintf(stderr, "bench_es: insert: %s\n", tl_error_last());
  if (!rc) rc = finish(r, figures);
  pthread_mutex_lock(&r->mu);
  r->stop = true;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  pthread_join(th, NULL);
  return rc;
}

int bes_lag(bes_db *d)
{
  char cname[64];
  snprintf(cname, sizeof cname, "%s_subscription_lag", d->name);
  if (!bes_selected(cname)) return 0;
  if (bes_plain_table(d, "bench_es_lag")) return -1;
  lag_run r = { .d = d, .n = bench_size(400, 20) };
  bool pg = d->dialect == TL_DB_POSTGRES;
  if (pg && (tl_db_exec(d->db, NULL, "CREATE OR REPLACE FUNCTION bench_es_lag_notify() RETURNS "
                        "trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('" CHANNEL "', ''); "
                        "RETURN NULL; END $$", TL_NOARGS) ||
             tl_db_exec(d->db, NULL, "CREATE TRIGGER bench_es_lag_notify AFTER INSERT ON "
                        "bench_es_lag FOR EACH STATEMENT EXECUTE FUNCTION bench_es_lag_notify()",
                        TL_NOARGS) ||
             tl_db_listen(d->db, CHANNEL, &r.listener))) {
    fprintf(stderr, "bench_es: lag baseline: %s\n", tl_error_last());
    return -1;
  }
  r.commit_us = calloc((size_t)r.n, sizeof *r.commit_us);
  r.seen_us = calloc((size_t)r.n, sizeof *r.seen_us);
  pthread_mutex_init(&r.mu, NULL);
  pthread_cond_init(&r.cv, NULL);
  char n50[80], n99[80], cond[400];
  snprintf(n50, sizeof n50, "%s_p50", cname);
  snprintf(n99, sizeof n99, "%s_p99", cname);
  const bench_metric m[] = { { n50, "us", true },
                             { n99, "us", true } };
  snprintf(cond, sizeof cond, "%s; one event every %d us, %ld per round, a live subscription "
           "filtered by category vs a thread reading new rows of a plain table; wake-up: %s",
           d->durability, PACE_US, r.n,
           pg ? "LISTEN/NOTIFY (ours: NOTIFY after the commit; baseline: a statement trigger)"
              : "a condition variable in the process");
  bench_spec spec = { .bench = "es", .baseline_name = "plain INSERT + the same wake-up",
                      .conditions = cond, .metrics = m, .nmetrics = 2, .ours = run_ours,
                      .ours_ctx = &r, .baseline = run_base, .baseline_ctx = &r };
  int rc = bench_compare(&spec);
  tl_db_listener_close(r.listener);
  pthread_cond_destroy(&r.cv);
  pthread_mutex_destroy(&r.mu);
  free(r.commit_us);
  free(r.seen_us);
  return rc;
}
