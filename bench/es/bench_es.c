/* The event store against plain SQL doing the same work in the same run,
 * on the same server and database with the same durability:
 *  - appends of 1 and 100 events per call, with 1 and 8 writers, to 1 and
 *    1,000 streams, on SQLite (WAL, synchronous=NORMAL), PostgreSQL and
 *    MariaDB, against plain INSERTs of the same rows into a table with the
 *    same definition and indexes, one statement per call, autocommit;
 *  - replay: $all read in batches against one SELECT of the same rows;
 *  - subscription lag p50/p99 on SQLite and PostgreSQL (lag.c).
 * PostgreSQL and MariaDB come from scripts/services (the environment or
 * its env file) and run in a database of their own, dropped at the end.
 * `bench_es [TEXT]` runs only the cases whose name contains TEXT. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_es.h"
#include "benchdb.h"

#define MAX_PER_CALL 100

static const char *only; /* argv[1] */

bool bes_selected(const char *name) { return !only || strstr(name, only); }

/* Does the command line leave database `prefix` ("pg_") in? It does
 * unless it names another database's cases. */
static bool db_selected(const char *prefix)
{
  static const char *const all[] = { "sqlite_", "pg_", "mysql_" };
  for (size_t i = 0; only && i < 3; i++)
    if (!strncmp(only, all[i], strlen(all[i]))) return !strcmp(all[i], prefix);
  return true;
}

/* ---- the baseline table ------------------------------------------------- */

/* SQLite: the stored definitions of the table and its indexes, renamed. */
static int sqlite_copy(bes_db *d, const char *table)
{
  tl_rows *r;
  if (tl_db_query(d->db, &r, "SELECT sql FROM sqlite_master WHERE tbl_name = 'trellis_es_events' "
                  "AND sql IS NOT NULL ORDER BY type DESC", TL_NOARGS))
    return -1;
  char *ddl[8];
  int n = 0;
  while (n < 8 && tl_rows_next(r) == 1) {
    const char *s;
    size_t len;
    tl_rows_text(r, 0, &s, &len);
    /* Every "trellis_es_events" (table and index names) becomes `table`. */
    char *out = malloc(len * 2 + 64);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
      if (!strncmp(s + i, "trellis_es_events", 17)) {
        o += (size_t)sprintf(out + o, "%s", table);
        i += 17;
      } else {
        out[o++] = s[i++];
      }
    }
    out[o] = '\0';
    ddl[n++] = out;
  }
  tl_rows_free(r);
  int rc = n ? 0 : -1;
  for (int i = 0; i < n; i++) {
    if (!rc && tl_db_exec(d->db, NULL, ddl[i], TL_NOARGS)) rc = -1;
    free(ddl[i]);
  }
  return rc;
}

int bes_plain_table(bes_db *d, const char *table)
{
  char sql[256];
  snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
  tl_db_exec(d->db, NULL, sql, TL_NOARGS);
  int rc;
  if (d->dialect == TL_DB_SQLITE) {
    rc = sqlite_copy(d, table);
  } else if (d->dialect == TL_DB_POSTGRES) {
    /* A sequence of its own, so neither side waits on the other's. */
    snprintf(sql, sizeof sql, "CREATE TABLE %s (LIKE trellis_es_events INCLUDING ALL)", table);
    rc = tl_db_exec(d->db, NULL, sql, TL_NOARGS);
    snprintf(sql, sizeof sql, "CREATE SEQUENCE %s_seq OWNED BY %s.position", table, table);
    if (!rc) rc = tl_db_exec(d->db, NULL, sql, TL_NOARGS);
    snprintf(sql, sizeof sql, "ALTER TABLE %s ALTER position SET DEFAULT nextval('%s_seq')", table,
             table);
    if (!rc) rc = tl_db_exec(d->db, NULL, sql, TL_NOARGS);
  } else {
    snprintf(sql, sizeof sql, "CREATE TABLE %s LIKE trellis_es_events", table);
    rc = tl_db_exec(d->db, NULL, sql, TL_NOARGS);
    snprintf(sql, sizeof sql, "ALTER TABLE %s MODIFY position BIGINT NOT NULL AUTO_INCREMENT", table);
    if (!rc) rc = tl_db_exec(d->db, NULL, sql, TL_NOARGS);
  }
  if (rc) fprintf(stderr, "bench_es: %s: table %s: %s\n", d->name, table, tl_error_last());
  return rc ? -1 : 0;
}

/* ---- appends ------------------------------------------------------------ */

typedef struct bcase {
  bes_db *d;
  int writers, per_call, streams;
  bool batch;        /* ours: per_call new streams of one event each, one
                        tl_es_append_batch_tx in a transaction */
  long events;       /* per round, all writers */
  char plain_sql[MAX_PER_CALL * 64 + 256];
} bcase;

typedef struct wctx {
  bcase *c;
  int id;
  bool baseline;
  int rc;
  char error[256]; /* the writer thread's message when rc is set */
} wctx;

static _Atomic long bench_seq, plain_version;

typedef struct batch_call {
  tl_es *es;
  tl_es_append_req *reqs;
  size_t n;
} batch_call;

/* Runs again after a deadlock or serialization failure, as group commit
 * does. */
static int batch_fn(tl_tx *tx, void *ctx)
{
  batch_call *b = ctx;
  int rc = tl_es_append_batch_tx(b->es, tx, b->reqs, b->n);
  for (size_t k = 0; k < b->n && rc == 0; k++)
    if (b->reqs[k].rc) rc = tl_error_set(b->reqs[k].rc, "%s", b->reqs[k].error);
  return rc;
}

/* One call of a batch case: per_call new streams, one event each, in one
 * transaction (a group commit's batch). */
static int append_batch(bcase *c, int id)
{
  tl_event ev[MAX_PER_CALL];
  tl_es_append_req reqs[MAX_PER_CALL];
  char streams[MAX_PER_CALL][64];
  for (int k = 0; k < c->per_call; k++) {
    snprintf(streams[k], sizeof streams[k], "b%dn-%d-%ld", (int)getpid(), id,
             atomic_fetch_add(&bench_seq, 1));
    ev[k] = (tl_event){ .aggregate_id = streams[k], .event_type = "BenchHappened",
                        .data = BES_DATA };
    reqs[k] = (tl_es_append_req){ .stream = streams[k], .expected = TL_ES_NO_STREAM,
                                  .events = &ev[k], .n = 1 };
  }
  batch_call b = { c->d->es, reqs, (size_t)c->per_call };
  return tl_db_transact(c->d->db, batch_fn, &b, NULL);
}

static void *writer(void *arg)
{
  wctx *w = arg;
  bcase *c = w->c;
  long calls = c->events / c->per_call / c->writers;
  tl_event ev[MAX_PER_CALL];
  tl_value args[9 * MAX_PER_CALL];
  char ids[MAX_PER_CALL][TL_UUID_STRLEN], stream[64], category[16];
  snprintf(category, sizeof category, "b%db", (int)getpid());
  for (long i = 0; i < calls && !w->rc; i++) {
    long s = atomic_fetch_add(&bench_seq, 1) % c->streams;
    snprintf(stream, sizeof stream, "b%d%s-%d-%ld", (int)getpid(), w->baseline ? "b" : "o",
             w->id, s);
    if (!w->baseline && c->batch) {
      w->rc = append_batch(c, w->id);
      continue;
    }
    if (!w->baseline) {
      for (int k = 0; k < c->per_call; k++)
        ev[k] = (tl_event){ .aggregate_id = stream, .event_type = "BenchHappened", .data = BES_DATA };
      w->rc = tl_es_append_to(c->d->es, stream, TL_ES_ANY, ev, (size_t)c->per_call);
      continue;
    }
    /* The same rows with plain SQL: ids made here too, versions unique. */
    long v0 = atomic_fetch_add(&plain_version, c->per_call);
    int64_t now = tl_time_now_us();
    size_t a = 0;
    for (int k = 0; k < c->per_call; k++) {
      tl_uuid7(ids[k]);
      args[a++] = tl_text(ids[k]);
      args[a++] = tl_text(stream);
      args[a++] = tl_text(category);
      args[a++] = tl_text("BenchHappened");
      args[a++] = tl_int(v0 + k + 1);
      args[a++] = tl_json(BES_DATA);
      args[a++] = tl_json("{}");
      args[a++] = tl_int(1);
      args[a++] = tl_int(now);
    }
    w->rc = tl_db_exec(c->d->db, NULL, c->plain_sql, args, a);
  }
  if (w->rc) snprintf(w->error, sizeof w->error, "%s", tl_error_last());
  return NULL;
}

static double run_side(bcase *c, bool baseline)
{
  pthread_t th[8];
  wctx w[8];
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < c->writers; i++) {
    w[i] = (wctx){ c, i, baseline, 0, "" };
    pthread_create(&th[i], NULL, writer, &w[i]);
  }
  const wctx *failed = NULL;
  for (int i = 0; i < c->writers; i++) {
    pthread_join(th[i], NULL);
    if (w[i].rc && !failed) failed = &w[i];
  }
  double s = (double)(bench_now_ns() - t0) / 1e9;
  if (failed) {
    fprintf(stderr, "bench_es: %s: %s\n", tl_status_name(failed->rc), failed->error);
    return -1;
  }
  return (double)(c->events / c->per_call / c->writers * c->per_call * c->writers) / s;
}

static double ours(void *ctx) { return run_side(ctx, false); }
static double base(void *ctx) { return run_side(ctx, true); }

static int run_appends(bes_db *d)
{
  if (bes_plain_table(d, "bench_es_plain")) return -1;
  /* Events per round: a round takes about a second. */
  const struct { int writers, per_call, streams; bool batch; long sqlite, server, quick; } cases[] = {
    { 1, 1, 1, false, 20000, 4000, 100 },       { 8, 1, 1000, false, 20000, 16000, 400 },
    { 1, 100, 1, false, 200000, 60000, 1000 },  { 8, 100, 1000, false, 200000, 80000, 1600 },
    { 1, 1, 1000, false, 20000, 4000, 100 },
    { 1, 64, 64, true, 100000, 40000, 640 },    { 8, 64, 64, true, 100000, 60000, 1024 },
  };
  int rc = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bcase c = { d, cases[i].writers, cases[i].per_call, cases[i].streams, cases[i].batch,
                bench_size(d->dialect == TL_DB_SQLITE ? cases[i].sqlite : cases[i].server,
                           cases[i].quick), "" };
    char cname[96], cond[500];
    if (c.batch)
      snprintf(cname, sizeof cname, "%s_append_batch_%dstreams_%dw", d->name, c.per_call,
               c.writers);
    else
      snprintf(cname, sizeof cname, "%s_append_%dper_%dw_%ds", d->name, c.per_call, c.writers,
               c.streams);
    if (!bes_selected(cname)) continue;
    size_t len = (size_t)snprintf(c.plain_sql, sizeof c.plain_sql,
                                  "INSERT INTO bench_es_plain (" BES_PLAIN_COLS ") VALUES ");
    for (int k = 0; k < c.per_call; k++) {
      len += (size_t)snprintf(c.plain_sql + len, sizeof c.plain_sql - len, "%s(", k ? "," : "");
      for (int col = 0; col < 9; col++)
        len += (size_t)snprintf(c.plain_sql + len, sizeof c.plain_sql - len, "%s$%d",
                                col ? "," : "", k * 9 + col + 1);
      len += (size_t)snprintf(c.plain_sql + len, sizeof c.plain_sql - len, ")");
    }
    if (c.batch)
      snprintf(cond, sizeof cond, "%s; %d writer(s); a call: tl_es_append_batch_tx of %d new "
               "streams (expected no stream) with one event each, in BEGIN ... COMMIT; baseline: "
               "one autocommit multi-row INSERT of the same %d rows into a copy of the events "
               "table (same columns and indexes, no stream rows)",
               d->durability, c.writers, c.per_call, c.per_call);
    else
      snprintf(cond, sizeof cond, "%s; %d writer(s), %d event(s) per call, %d stream(s), "
               "expected version any; baseline: one autocommit INSERT of the same rows per call "
               "into a copy of the events table (same columns and indexes, no stream row)",
               d->durability, c.writers, c.per_call, c.streams);
    if (bench_compare1("es", cname, "events/s", false, "plain INSERT", cond, ours, &c, base, &c))
      rc = -1;
  }
  return rc;
}

/* ---- replay ------------------------------------------------------------- */

static double replay_ours(void *ctx)
{
  bes_db *d = ctx;
  tl_es_checkpoint cp = { 0, 0 };
  long n = 0;
  uint64_t t0 = bench_now_ns();
  for (;;) {
    tl_event_list *l;
    if (tl_es_read_all(d->es, &cp, NULL, 5000, &l)) return -1;
    if (!l->count) {
      tl_event_list_free(l);
      break;
    }
    n += (long)l->count;
    cp = (tl_es_checkpoint){ l->events[l->count - 1].tx, l->events[l->count - 1].position };
    tl_event_list_free(l);
  }
  return (double)n / ((double)(bench_now_ns() - t0) / 1e9);
}

static double replay_base(void *ctx)
{
  bes_db *d = ctx;
  tl_rows *rows;
  long n = 0;
  uint64_t t0 = bench_now_ns();
  if (tl_db_query(d->db, &rows, "SELECT position, tx, id, stream, category, type, version, data, "
                  "metadata, schema_version, created_us FROM trellis_es_events ORDER BY position",
                  TL_NOARGS))
    return -1;
  while (tl_rows_next(rows) == 1) {
    const char *s;
    size_t len;
    tl_rows_text(rows, 7, &s, &len);
    n++;
  }
  tl_rows_free(rows);
  return (double)n / ((double)(bench_now_ns() - t0) / 1e9);
}

static int run_replay(bes_db *d)
{
  char cname[64];
  snprintf(cname, sizeof cname, "%s_replay", d->name);
  if (!bes_selected(cname)) return 0;
  return bench_compare1("es", cname, "events/s", false, "SELECT of the same rows",
                        "the whole log: $all in batches of 5000 into event lists vs one SELECT "
                        "streamed", replay_ours, d, replay_base, d);
}

/* ---- databases ---------------------------------------------------------- */

static int run_db(const char *url, const char *name, const char *durability)
{
  bes_db d = { .name = name, .durability = durability };
  if (tl_db_connect(&d.db, &(tl_db_config){ .url = url, .max_connections = 10 }) ||
      tl_es_open(&d.es, &(tl_es_config){ .db = d.db })) {
    fprintf(stderr, "bench_es: %s: %s\n", name, tl_error_last());
    tl_db_close(d.db);
    return -1;
  }
  d.dialect = tl_db_dialect_of(d.db);
  int rc = run_appends(&d);
  if (run_replay(&d)) rc = -1;
  if (d.dialect != TL_DB_MYSQL && bes_lag(&d)) rc = -1;
  tl_es_close(d.es);
  tl_db_close(d.db);
  return rc;
}

/* A server from scripts/services, in a database of its own. */
static int run_server(const char *key, const char *name, const char *durability)
{
  char base[512], url[600], dbname[64];
  if (!bench_service_url(key, base, sizeof base)) {
    fprintf(stderr, "bench_es: no %s (scripts/services start): %s cases skipped\n", key, name);
    return 0;
  }
  snprintf(dbname, sizeof dbname, "trellis_bench_es_%d", (int)getpid());
  if (bench_db_create(base, dbname, url, sizeof url)) return -1;
  int rc = run_db(url, name, durability);
  bench_db_drop(base, dbname);
  return rc;
}

int main(int argc, char **argv)
{
  tl_log_set_level(TL_LOG_ERROR);
  only = argc > 1 ? argv[1] : NULL;
  char path[128], url[160];
  snprintf(path, sizeof path, "/tmp/trellis-bench-es-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  int rc = 0;
  if (db_selected("sqlite_")) rc |= run_db(url, "sqlite", "SQLite WAL, synchronous=NORMAL");
  const char *ext[] = { "", "-wal", "-shm" };
  for (int i = 0; i < 3; i++) {
    char p[200];
    snprintf(p, sizeof p, "%s%s", path, ext[i]);
    unlink(p);
  }
  if (db_selected("pg_"))
    rc |= run_server("TRELLIS_TEST_POSTGRES_URL", "pg", "PostgreSQL 15, fsync and synchronous_commit on");
  if (db_selected("mysql_"))
    rc |= run_server("TRELLIS_TEST_MYSQL_URL", "mysql",
                     "MariaDB 10.11 InnoDB, innodb_flush_log_at_trx_commit=1");
  return rc ? 1 : 0;
}
