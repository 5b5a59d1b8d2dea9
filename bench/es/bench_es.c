/* Event store throughput against plain INSERTs of the same rows at the
 * same durability, on SQLite (WAL, synchronous=NORMAL) and PostgreSQL
 * (when TRELLIS_TEST_POSTGRES_URL or the services file names one):
 * appends of 1 and 100 events per call, 1 and 8 writers, 1 and 1,000
 * streams; replay (read $all) events/s. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <trellis/trellis.h>
#include <trellis/eventstore.h>

#include "bench.h"

typedef struct bcase {
  tl_db *db;
  tl_es *es;
  int writers, per_call, streams;
  long events; /* per round, all writers */
  const char *tag;
} bcase;

typedef struct wctx {
  bcase *c;
  int id;
  bool baseline;
  int rc;
} wctx;

static _Atomic long bench_seq;

static void *writer(void *arg)
{
  wctx *w = arg;
  bcase *c = w->c;
  long calls = c->events / c->per_call / c->writers;
  tl_event ev[100];
  char stream[64];
  for (long i = 0; i < calls && !w->rc; i++) {
    long s = (bench_seq++) % c->streams;
    snprintf(stream, sizeof stream, "%s%s-%d-%ld", c->tag, w->baseline ? "b" : "o", w->id, s);
    if (!w->baseline) {
      for (int k = 0; k < c->per_call; k++)
        ev[k] = (tl_event){ .aggregate_id = stream, .event_type = "BenchHappened",
                            .data = "{\"n\":1,\"payload\":\"0123456789abcdef\"}" };
      w->rc = tl_es_append_to(c->es, stream, TL_ES_ANY, ev, (size_t)c->per_call);
      continue;
    }
    /* The baseline: the same rows, one transaction, plain INSERTs. */
    tl_tx *tx;
    if ((w->rc = tl_db_begin(c->db, &tx)) != 0) break;
    for (int k = 0; k < c->per_call && !w->rc; k++) {
      char id[TL_UUID_STRLEN];
      tl_uuid7(id);
      w->rc = tl_tx_exec(tx, NULL, "INSERT INTO bench_es_plain (id, stream, category, type, version, "
                         "data, metadata, schema_version, created_us) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                         TL_ARGS(tl_text(id), tl_text(stream), tl_text(c->tag), tl_text("BenchHappened"),
                                 tl_int(i * 100 + k), tl_json("{\"n\":1,\"payload\":\"0123456789abcdef\"}"),
                                 tl_json("{}"), tl_int(1), tl_int(tl_time_now_us())));
    }
    if (w->rc) tl_tx_rollback(tx);
    else w->rc = tl_tx_commit(tx);
  }
  return NULL;
}

static double run_side(bcase *c, bool baseline)
{
  pthread_t th[8];
  wctx w[8];
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < c->writers; i++) {
    w[i] = (wctx){ c, i, baseline, 0 };
    pthread_create(&th[i], NULL, writer, &w[i]);
  }
  int rc = 0;
  for (int i = 0; i < c->writers; i++) {
    pthread_join(th[i], NULL);
    if (w[i].rc) rc = w[i].rc;
  }
  double s = (double)(bench_now_ns() - t0) / 1e9;
  if (rc) {
    fprintf(stderr, "bench_es: %s\n", tl_error_last());
    return -1;
  }
  return (double)(c->events / c->per_call / c->writers * c->per_call * c->writers) / s;
}

static double ours(void *ctx) { return run_side(ctx, false); }
static double base(void *ctx) { return run_side(ctx, true); }

typedef struct rctx {
  tl_es *es;
  tl_db *db;
} rctx;

static double replay_ours(void *ctx)
{
  rctx *r = ctx;
  tl_es_checkpoint cp = { 0, 0 };
  long n = 0;
  uint64_t t0 = bench_now_ns();
  for (;;) {
    tl_event_list *l;
    if (tl_es_read_all(r->es, &cp, NULL, 5000, &l)) return -1;
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
  rctx *r = ctx;
  tl_rows *rows;
  long n = 0;
  uint64_t t0 = bench_now_ns();
  if (tl_db_query(r->db, &rows, "SELECT position, tx, id, stream, category, type, version, data, "
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

static int run_db(const char *url, const char *name)
{
  tl_db *db;
  if (tl_db_connect(&db, &(tl_db_config){ .url = url, .max_connections = 10 })) {
    fprintf(stderr, "bench_es: %s: %s\n", name, tl_error_last());
    return -1;
  }
  tl_es *es;
  if (tl_es_open(&es, &(tl_es_config){ .db = db })) {
    fprintf(stderr, "bench_es: %s\n", tl_error_last());
    return -1;
  }
  bool pg = tl_db_dialect_of(db) == TL_DB_POSTGRES;
  tl_db_exec(db, NULL, "DROP TABLE IF EXISTS bench_es_plain", TL_NOARGS);
  tl_db_exec(db, NULL, pg ? "CREATE TABLE bench_es_plain (position BIGSERIAL PRIMARY KEY, id VARCHAR(64) UNIQUE, "
                            "stream VARCHAR(200), category VARCHAR(200), type VARCHAR(200), version BIGINT, "
                            "data JSON, metadata JSON, schema_version INT, created_us BIGINT)"
                          : "CREATE TABLE bench_es_plain (position INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, "
                            "stream TEXT, category TEXT, type TEXT, version INTEGER, data TEXT, metadata TEXT, "
                            "schema_version INTEGER, created_us INTEGER)",
             TL_NOARGS);
  char tag[32];
  snprintf(tag, sizeof tag, "b%d", (int)getpid());
  const struct { int writers, per_call, streams; long normal, quick; } cases[] = {
    { 1, 1, 1, 2000, 100 },     { 8, 1, 1000, 8000, 400 },  { 1, 100, 1, 50000, 1000 },
    { 8, 100, 1000, 80000, 1600 }, { 1, 1, 1000, 2000, 100 },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bcase c = { db, es, cases[i].writers, cases[i].per_call, cases[i].streams,
                bench_size(cases[i].normal, cases[i].quick), tag };
    char cname[96], cond[200];
    snprintf(cname, sizeof cname, "%s_append_%dper_%dw_%ds", name, c.per_call, c.writers, c.streams);
    snprintf(cond, sizeof cond, "%s, %d writer(s), %d event(s)/call, %d stream(s), one tx per call, "
             "expected version any vs plain INSERT", pg ? "PostgreSQL fsync on" : "SQLite WAL synchronous=NORMAL",
             c.writers, c.per_call, c.streams);
    bench_compare1("es", cname, "events/s", false, "plain INSERT", cond, ours, &c, base, &c);
  }
  rctx r = { es, db };
  char cname[64];
  snprintf(cname, sizeof cname, "%s_replay", name);
  bench_compare1("es", cname, "events/s", false, "SELECT of the same rows",
                 "read $all in batches of 5000 into event lists vs one SELECT streamed", replay_ours, &r,
                 replay_base, &r);
  tl_db_exec(db, NULL, "DROP TABLE IF EXISTS bench_es_plain", TL_NOARGS);
  tl_es_close(es);
  tl_db_close(db);
  return 0;
}

static const char *pg_url(char *buf, size_t size)
{
  const char *e = getenv("TRELLIS_TEST_POSTGRES_URL");
  if (e && *e) return e;
  FILE *f = fopen("/tmp/trellis-services/services.env", "r");
  if (!f) return NULL;
  char line[512];
  const char *out = NULL;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "TRELLIS_TEST_POSTGRES_URL=", 26)) {
      line[strcspn(line, "\r\n")] = 0;
      snprintf(buf, size, "%s", line + 26);
      out = buf;
    }
  fclose(f);
  return out;
}

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  char path[128], url[160], pbuf[512];
  snprintf(path, sizeof path, "/tmp/trellis-bench-es-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  int rc = run_db(url, "sqlite");
  char p[200];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
  const char *pu = pg_url(pbuf, sizeof pbuf);
  if (pu) rc |= run_db(pu, "pg");
  else fprintf(stderr, "bench_es: no PostgreSQL (scripts/services start postgres): skipped\n");
  return rc ? 1 : 0;
}
