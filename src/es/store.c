/* The event store: opening, appending with an expected version, and the
 * idempotent re-append of events whose ids are already stored. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "es/es_int.h"

#define ROWS_PER_INSERT 100

void tl__es_category(const char *stream, char *buf, size_t size)
{
  size_t n = strcspn(stream, "-");
  if (n >= size) n = size - 1;
  memcpy(buf, stream, n);
  buf[n] = '\0';
}

int tl_es_checkpoint_cmp(const tl_es_checkpoint *a, const tl_es_checkpoint *b)
{
  if (a->tx != b->tx) return a->tx < b->tx ? -1 : 1;
  if (a->position != b->position) return a->position < b->position ? -1 : 1;
  return 0;
}

int tl_es_open(tl_es **out, const tl_es_config *cfg)
{
  if (!out || !cfg || !cfg->db)
    return tl_error_set(TL_EINVAL, "event store: a database is required");
  *out = NULL;
  tl_db_dialect d = tl_db_dialect_of(cfg->db);
  if (d == TL_DB_MONGO)
    return tl_error_set(TL_EUNSUPP, "event store: MongoDB is not supported, use a SQL database");
  int rc = tl__es_schema_register();
  if (rc) return rc;
  if (!cfg->no_migrate && (rc = tl_db_migrate(cfg->db, "trellis_es", NULL)) != 0)
    return tl_error_wrap(rc, "event store: schema");
  tl_es *es = calloc(1, sizeof *es);
  if (!es) return tl_error_set(TL_ENOMEM, "event store: out of memory");
  es->db = cfg->db;
  es->dialect = d;
  es->metrics = cfg->metrics ? cfg->metrics : tl_metrics_default();
  tl_metric *m;
  if (tl_metrics_counter(es->metrics, "trellis_es_appended_events_total",
                         "Events appended to the event store.", NULL, &m) == 0)
    es->m_appended = tl_metric_default(m);
  if (tl_metrics_counter(es->metrics, "trellis_es_append_conflicts_total",
                         "Appends refused because the stream was at another version.", NULL, &m) == 0)
    es->m_conflicts = tl_metric_default(m);
  if (tl_metrics_histogram(es->metrics, "trellis_es_append_duration_seconds",
                           "Time to append one batch of events.", NULL, NULL, 0, &m) == 0)
    es->m_append_s = tl_metric_default(m);
  if (tl_metrics_counter(es->metrics, "trellis_es_read_events_total",
                         "Events read from the event store.", NULL, &m) == 0)
    es->m_read = tl_metric_default(m);
  if (tl_metrics_gauge(es->metrics, "trellis_es_subscription_lag_events",
                       "Events a subscription can see but has not handled yet.", "subscription",
                       &m) == 0)
    es->m_lag_events = m;
  if (tl_metrics_gauge(es->metrics, "trellis_es_subscription_lag_seconds",
                       "Age of the oldest event a subscription has not handled (0: caught up).",
                       "subscription", &m) == 0)
    es->m_lag_seconds = m;
  tl_error_clear();
  pthread_mutex_init(&es->mu, NULL);
  pthread_cond_init(&es->appended, NULL);
  pthread_cond_init(&es->notify_cv, NULL);
  *out = es;
  return 0;
}

void tl_es_close(tl_es *es)
{
  if (!es) return;
  tl__es_wake_close(es);
  for (size_t i = 0; i < es->nup; i++) free(es->up[i].type);
  free(es->up);
  pthread_cond_destroy(&es->notify_cv);
  pthread_cond_destroy(&es->appended);
  pthread_mutex_destroy(&es->mu);
  free(es);
}

tl_db *tl_es_db(tl_es *es) { return es ? es->db : NULL; }

/* ---- append ------------------------------------------------------------ */

static const char *expected_text(int64_t expected, char *buf, size_t size)
{
  switch (expected) {
  case TL_ES_ANY: return "any";
  case TL_ES_NO_STREAM: return "no stream";
  case TL_ES_EXISTS: return "an existing stream";
  default: snprintf(buf, size, "%lld", (long long)expected); return buf;
  }
}

static int validate(const char *stream, int64_t expected, tl_event *ev, size_t n)
{
  if (!stream || !*stream)
    return tl_error_set(TL_EINVAL, "append: the stream name is empty");
  if (strlen(stream) > TL_ES_NAME_MAX)
    return tl_error_set(TL_EINVAL, "append: stream name '%.40s...' is longer than %d bytes",
                        stream, TL_ES_NAME_MAX);
  if (!ev || n == 0) return tl_error_set(TL_EINVAL, "append '%s': no events", stream);
  if (expected < TL_ES_EXISTS)
    return tl_error_set(TL_EINVAL, "append '%s': bad expected version %lld", stream,
                        (long long)expected);
  for (size_t i = 0; i < n; i++) {
    if (ev[i].aggregate_id && strcmp(ev[i].aggregate_id, stream) != 0)
      return tl_error_set(TL_EINVAL, "append '%s': event %zu names stream '%s'", stream, i,
                          ev[i].aggregate_id);
    if (!ev[i].event_type || !*ev[i].event_type || strlen(ev[i].event_type) > TL_ES_NAME_MAX)
      return tl_error_set(TL_EINVAL, "append '%s': event %zu has no type (or one over %d bytes)",
                          stream, i, TL_ES_NAME_MAX);
    const char *docs[2] = { ev[i].data, ev[i].metadata };
    for (int k = 0; k < 2; k++) {
      if (!docs[k]) {
        if (k == 0) return tl_error_set(TL_EINVAL, "append '%s': event %zu has no data", stream, i);
        continue;
      }
      json_error_t jerr;
      json_t *j = json_loads(docs[k], JSON_DECODE_ANY, &jerr);
      if (!j)
        return tl_error_set(TL_EINVAL, "append '%s': event %zu %s is not JSON: %s", stream, i,
                            k ? "metadata" : "data", jerr.text);
      json_decref(j);
    }
    ev[i].id[TL_UUID_STRLEN - 1] = '\0';
    if (!ev[i].id[0]) tl_uuid7(ev[i].id);
    /* The id travels as the message id of the relay: no control bytes. */
    for (const unsigned char *c = (const unsigned char *)ev[i].id; *c; c++)
      if (*c < 0x20 || *c == 0x7f)
        return tl_error_set(TL_EINVAL, "append '%s': event %zu id '%s' has a control character",
                            stream, i, ev[i].id);
  }
  return 0;
}

typedef struct append_job {
  tl_es *es;
  const char *stream;
  int64_t expected;
  tl_event *ev;
  size_t n;
  bool own_tx;       /* the store's transaction, not the caller's */
  int64_t found;     /* the stream's version when the check failed */
  bool mismatch;     /* the check failed (not some other conflict) */
  char msg[512];
} append_job;

/* Run a query in `tx`, or on its own (autocommit) when `tx` is NULL. */
static int query(tl_es *es, tl_tx *tx, tl_rows **out, const char *sql, const tl_value *args,
                 size_t nargs)
{
  return tx ? tl_tx_query(tx, out, sql, args, nargs) : tl_db_query(es->db, out, sql, args, nargs);
}

/* Look at the stream row after the claim found it at another version (or
 * deleted). `tx` may be NULL. */
static int why_not(tl_tx *tx, append_job *j)
{
  tl_rows *r;
  int rc = query(j->es, tx, &r, "SELECT version, deleted FROM trellis_es_streams WHERE stream = $1",
                 TL_ARGS(tl_text(j->stream)));
  if (rc) return rc;
  int64_t version = 0, deleted = 0;
  rc = tl_rows_next(r);
  if (rc == 1) {
    tl_rows_int(r, 0, &version);
    tl_rows_int(r, 1, &deleted);
    rc = 0;
  }
  tl_rows_free(r);
  if (rc) return rc;
  if (deleted) return tl_error_set(TL_ESTATE, "append: stream '%s' is deleted", j->stream);
  j->found = version;
  j->mismatch = true;
  return TL_ECONFLICT;
}

/* SQLite and PostgreSQL: claim versions old+1 .. old+$2 of stream $1 if it
 * is at the expected version $3 (TL_ES_* or exact) and not deleted, and
 * return the new version; no row returned means the check failed. The
 * row is inserted only where the stream may be new. */
static const char *claim_sql(int64_t expected)
{
  if (expected == TL_ES_ANY || expected == TL_ES_NO_STREAM || expected == 0)
    return "INSERT INTO trellis_es_streams AS t (stream, version) VALUES ($1, $2) "
           "ON CONFLICT (stream) DO UPDATE SET version = t.version + $2 "
           "WHERE t.deleted = 0 AND ($3 = -1 OR t.version = 0) RETURNING version";
  return "UPDATE trellis_es_streams SET version = version + $2 WHERE stream = $1 AND deleted = 0 "
         "AND (($3 = -3 AND version > 0) OR version = $3) RETURNING version";
}

/* MySQL/MariaDB: lock the stream row (an absent one: the insert decides).
 * The position counter is locked later, by insert_events(). (One joined
 * SELECT ... FOR UPDATE and one multi-table UPDATE instead measured
 * slower on MariaDB 10.11 than these single-table statements.) Where the
 * stream should be new, the insert comes first: a SELECT ... FOR UPDATE of
 * an absent row locks the gap around it under REPEATABLE READ, and
 * transactions that each create several streams (a group commit's
 * batches) then deadlocked on each other's gaps at every try. */
static int claim_mysql(tl_tx *tx, append_job *j, int64_t *old)
{
  int64_t n = (int64_t)j->n, e = j->expected;
  int rc;
  if (e == TL_ES_NO_STREAM || e == 0) {
    int64_t added = 0;
    rc = tl_tx_exec(tx, &added, "INSERT IGNORE INTO trellis_es_streams (stream, version) "
                    "VALUES ($1, $2)", TL_ARGS(tl_text(j->stream), tl_int(n)));
    if (rc || added == 1) {
      *old = 0;
      return rc;
    }
  }
  tl_rows *r;
  rc = tl_tx_query(tx, &r, "SELECT version, deleted FROM trellis_es_streams WHERE stream = $1 FOR UPDATE",
                       TL_ARGS(tl_text(j->stream)));
  if (rc) return rc;
  int64_t version = 0, deleted = 0;
  int has = tl_rows_next(r);
  if (has == 1) {
    tl_rows_int(r, 0, &version);
    tl_rows_int(r, 1, &deleted);
  }
  tl_rows_free(r);
  if (has < 0) return has;
  if (deleted) return tl_error_set(TL_ESTATE, "append: stream '%s' is deleted", j->stream);
  bool ok = e == TL_ES_ANY || (e == TL_ES_EXISTS && version > 0) ||
            (e == TL_ES_NO_STREAM && version == 0) || version == e;
  if (!ok) {
    j->found = version;
    j->mismatch = true;
    return TL_ECONFLICT;
  }
  *old = version;
  if (has == 1)
    return tl_tx_exec(tx, NULL, "UPDATE trellis_es_streams SET version = $1 WHERE stream = $2",
                      TL_ARGS(tl_int(version + n), tl_text(j->stream)));
  rc = tl_tx_exec(tx, NULL, "INSERT INTO trellis_es_streams (stream, version) VALUES ($1, $2)",
                  TL_ARGS(tl_text(j->stream), tl_int(n)));
  /* Another writer created it first: run again and see its version. */
  return rc == TL_ECONFLICT ? TL_ERETRY : rc;
}

/* Claim versions old+1..old+n of the stream; `*old` gets old. */
static int claim_versions(tl_tx *tx, append_job *j, int64_t *old)
{
  if (j->es->dialect == TL_DB_MYSQL) return claim_mysql(tx, j, old);
  int64_t n = (int64_t)j->n;
  tl_rows *r;
  int rc = tl_tx_query(tx, &r, claim_sql(j->expected),
                       TL_ARGS(tl_text(j->stream), tl_int(n), tl_int(j->expected)));
  if (rc) return rc;
  int64_t now = 0;
  int has = tl_rows_next(r);
  if (has == 1) tl_rows_int(r, 0, &now);
  tl_rows_free(r);
  if (has < 0) return has;
  if (has == 0) return why_not(tx, j);
  *old = now - n;
  return 0;
}

static size_t put_uint(char *out, size_t v)
{
  char tmp[24];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  return n;
}

/* Append to `out` at `len` the tuple "($first<cast>,$first+1<cast>,...)"
 * of `ncols` placeholders (casts may be NULL), with `k` as a last literal
 * when k > 0, and a comma before it unless it is the first row. Returns
 * the new length. The statements are built per append, so no printf. */
static size_t put_tuple(char *out, size_t len, bool first_row, size_t first, size_t ncols,
                        const char *const *casts, size_t k)
{
  if (!first_row) out[len++] = ',';
  out[len++] = '(';
  for (size_t c = 0; c < ncols; c++) {
    if (c) out[len++] = ',';
    out[len++] = '$';
    len += put_uint(out + len, first + c);
    for (const char *t = casts ? casts[c] : ""; *t; t++) out[len++] = *t;
  }
  if (k) {
    out[len++] = ',';
    len += put_uint(out + len, k);
  }
  out[len++] = ')';
  out[len] = '\0';
  return len;
}

/* What the store fills in event `i` (version old+i+1) besides the
 * position and tx the database returns. */
static void fill(append_job *j, size_t i, int64_t old, int64_t now)
{
  tl_event *e = &j->ev[i];
  e->version = old + (int64_t)i + 1;
  e->timestamp_us = now;
  e->tx = 0;
  if (e->schema_version <= 0) e->schema_version = 1;
}

/* Read (version, position, tx) rows into the events they belong to. */
static int read_placed(tl_rows *r, append_job *j, int64_t old)
{
  int got;
  while ((got = tl_rows_next(r)) == 1) {
    int64_t v = 0, pos = 0, txid = 0;
    tl_rows_int(r, 0, &v);
    tl_rows_int(r, 1, &pos);
    tl_rows_int(r, 2, &txid);
    int64_t idx = v - old - 1;
    if (idx >= 0 && (size_t)idx < j->n) {
      j->ev[idx].position = pos;
      j->ev[idx].tx = txid;
    }
  }
  tl_rows_free(r);
  return got < 0 ? got : 0;
}

/* PostgreSQL: the claim and the first ROWS_PER_INSERT events in one
 * statement, so an append of up to that many events is one round trip
 * (without BEGIN and COMMIT when `tx` is NULL). `*old` gets the version
 * before the events. */
static int claim_and_insert(tl_tx *tx, append_job *j, int64_t *old)
{
  size_t k = j->n < ROWS_PER_INSERT ? j->n : ROWS_PER_INSERT;
  char *sql = malloc(1024 + k * 80);
  tl_value *args = malloc(sizeof(tl_value) * (5 + 5 * k));
  if (!sql || !args) {
    free(sql);
    free(args);
    return tl_error_set(TL_ENOMEM, "append: out of memory");
  }
  char category[TL_ES_NAME_MAX + 1];
  tl__es_category(j->stream, category, sizeof category);
  int64_t now = tl_time_now_us();
  size_t len = (size_t)sprintf(sql, "WITH s AS (%s), e AS (INSERT INTO trellis_es_events "
                               "(id, stream, category, type, version, data, metadata, schema_version, "
                               "created_us) SELECT v.id, $1, $4, v.type, s.version - $2 + v.k, v.data, "
                               "v.metadata, v.sv, $5 FROM s, (VALUES ", claim_sql(j->expected));
  size_t a = 0;
  args[a++] = tl_text(j->stream);
  args[a++] = tl_int((int64_t)j->n);
  args[a++] = tl_int(j->expected);
  args[a++] = tl_text(category);
  args[a++] = tl_int(now);
  static const char *const casts[] = { "::text", "::text", "::json", "::json", "::int" };
  for (size_t i = 0; i < k; i++) {
    tl_event *e = &j->ev[i];
    len = put_tuple(sql, len, i == 0, a + 1, 5, casts, i + 1);
    args[a++] = tl_text(e->id);
    args[a++] = tl_text(e->event_type);
    args[a++] = tl_json(e->data);
    args[a++] = tl_json(e->metadata ? e->metadata : "{}");
    args[a++] = tl_int(e->schema_version > 0 ? e->schema_version : 1);
  }
  strcpy(sql + len, ") AS v (id, type, data, metadata, sv, k) RETURNING version, position, tx) "
                    "SELECT version, position, tx FROM e ORDER BY version");
  tl_rows *r;
  int rc = query(j->es, tx, &r, sql, args, a);
  free(sql);
  free(args);
  if (rc) return rc;
  /* The first row is version old+1; none means the claim found the
   * stream at another version, or deleted. */
  int got = tl_rows_next(r);
  if (got != 1) {
    tl_rows_free(r);
    return got < 0 ? got : why_not(tx, j);
  }
  int64_t v = 0;
  tl_rows_int(r, 0, &v);
  *old = v - 1;
  for (size_t i = 0; i < k; i++) fill(j, i, *old, now);
  tl_rows_int(r, 1, &j->ev[0].position);
  tl_rows_int(r, 2, &j->ev[0].tx);
  return read_placed(r, j, *old);
}

/* Insert events from..n-1 at versions after `old`, ROWS_PER_INSERT rows
 * per statement. */
static int insert_events(tl_tx *tx, append_job *j, int64_t old, size_t from)
{
  tl_es *es = j->es;
  bool my = es->dialect == TL_DB_MYSQL;
  int64_t first_pos = 0;
  int rc;
  if (my) {
    /* Positions come from the counter row, locked until this commits:
     * appends therefore commit in position order. */
    tl_rows *r;
    rc = tl_tx_query(tx, &r, "SELECT position FROM trellis_es_counter WHERE id = 1 FOR UPDATE",
                     TL_NOARGS);
    if (rc) return rc;
    int has = tl_rows_next(r);
    if (has == 1) tl_rows_int(r, 0, &first_pos);
    tl_rows_free(r);
    if (has != 1) return has < 0 ? has : tl_error_set(TL_EINTERNAL, "event store: counter row missing");
    first_pos++;
    rc = tl_tx_exec(tx, NULL, "UPDATE trellis_es_counter SET position = $1 WHERE id = 1",
                    TL_ARGS(tl_int(first_pos + (int64_t)(j->n - from) - 1)));
    if (rc) return rc;
  }
  char category[TL_ES_NAME_MAX + 1];
  tl__es_category(j->stream, category, sizeof category);
  int64_t now = tl_time_now_us();
  const size_t ncols = my ? 10 : 9;
  char *sql = malloc(256 + ROWS_PER_INSERT * 96);
  tl_value *args = malloc(sizeof(tl_value) * ncols * ROWS_PER_INSERT);
  if (!sql || !args) {
    free(sql);
    free(args);
    return tl_error_set(TL_ENOMEM, "append: out of memory");
  }
  rc = 0;
  for (size_t at = from; at < j->n && rc == 0; at += ROWS_PER_INSERT) {
    size_t k = j->n - at < ROWS_PER_INSERT ? j->n - at : ROWS_PER_INSERT;
    /* On SQLite, OR ROLLBACK spares the statement journal (a temporary
     * file per multi-row INSERT) that ABORT needs; a violation fails the
     * whole append anyway. Not in the caller's transaction. */
    size_t len = (size_t)sprintf(sql, "INSERT %sINTO trellis_es_events (id, stream, category, type, "
                                 "version, data, metadata, schema_version, created_us%s) VALUES ",
                                 j->own_tx && es->dialect == TL_DB_SQLITE ? "OR ROLLBACK " : "",
                                 my ? ", position" : "");
    size_t a = 0;
    for (size_t i = 0; i < k; i++) {
      tl_event *e = &j->ev[at + i];
      len = put_tuple(sql, len, i == 0, a + 1, ncols, NULL, 0);
      fill(j, at + i, old, now);
      args[a++] = tl_text(e->id);
      args[a++] = tl_text(j->stream);
      args[a++] = tl_text(category);
      args[a++] = tl_text(e->event_type);
      args[a++] = tl_int(e->version);
      args[a++] = tl_json(e->data);
      args[a++] = tl_json(e->metadata ? e->metadata : "{}");
      args[a++] = tl_int(e->schema_version);
      args[a++] = tl_int(now);
      if (my) args[a++] = tl_int(e->position = first_pos + (int64_t)(at - from + i));
    }
    if (my) {
      rc = tl_tx_exec(tx, NULL, sql, args, a);
      continue;
    }
    strcpy(sql + len, " RETURNING version, position, tx");
    tl_rows *r;
    rc = tl_tx_query(tx, &r, sql, args, a);
    if (rc == 0) rc = read_placed(r, j, old);
  }
  free(sql);
  free(args);
  return rc;
}

/* The append in `tx`; on PostgreSQL `tx` may be NULL for up to
 * ROWS_PER_INSERT events. */
static int append_in(tl_tx *tx, append_job *j)
{
  int64_t old = 0;
  size_t done = 0;
  j->mismatch = false;
  int rc;
  if (j->es->dialect == TL_DB_POSTGRES) {
    rc = claim_and_insert(tx, j, &old);
    done = j->n < ROWS_PER_INSERT ? j->n : ROWS_PER_INSERT;
  } else {
    rc = claim_versions(tx, j, &old);
  }
  if (rc == TL_ECONFLICT && j->mismatch) {
    char b[32];
    return tl_error_set(TL_ECONFLICT, "append '%s': expected version %s, found %lld", j->stream,
                        expected_text(j->expected, b, sizeof b), (long long)j->found);
  }
  if (rc || done == j->n) return rc;
  return insert_events(tx, j, old, done);
}

static int append_fn(tl_tx *tx, void *ctx)
{
  append_job *j = ctx;
  int rc = append_in(tx, j);
  if (rc) snprintf(j->msg, sizeof j->msg, "%s", tl_error_last());
  return rc;
}

/* PostgreSQL, up to ROWS_PER_INSERT events: one statement, no explicit
 * transaction. A lost connection leaves the outcome unknown; running it
 * again is safe, as a re-append of stored ids succeeds. */
static int append_single_statement(append_job *j)
{
  tl_backoff bo = { .base_us = 5000, .cap_us = 1000000 };
  for (unsigned a = 0;; a++) {
    int rc = append_fn(NULL, j);
    bool retry = rc == TL_ERETRY || rc == TL_ECONNECT ||
                 tl_db_error_last_class() == TL_DB_ERR_CONNECTION_LOST;
    if (!retry || a + 1 >= 5) return rc;
    tl_sleep_us(tl_backoff_delay(&bo, a));
  }
}

/* After a conflict: are these exact events already stored? Then this is
 * a re-append of something that succeeded before. */
static int find_original(append_job *j)
{
  tl_rows *r;
  for (size_t i = 0; i < j->n; i++) {
    int rc = tl_db_query(j->es->db, &r, "SELECT stream, type, version, position, tx, created_us "
                         "FROM trellis_es_events WHERE id = $1", TL_ARGS(tl_text(j->ev[i].id)));
    if (rc) return rc;
    rc = tl_rows_next(r);
    if (rc != 1) {
      tl_rows_free(r);
      return rc < 0 ? rc : TL_ENOTFOUND;
    }
    const char *stream = NULL, *type = NULL;
    size_t sl, tl;
    tl_rows_text(r, 0, &stream, &sl);
    tl_rows_text(r, 1, &type, &tl);
    bool same = stream && type && strcmp(stream, j->stream) == 0 &&
                strcmp(type, j->ev[i].event_type) == 0;
    if (same) {
      tl_rows_int(r, 2, &j->ev[i].version);
      tl_rows_int(r, 3, &j->ev[i].position);
      tl_rows_int(r, 4, &j->ev[i].tx);
      tl_rows_int(r, 5, &j->ev[i].timestamp_us);
    }
    tl_rows_free(r);
    if (!same) return TL_ENOTFOUND;
  }
  return 0;
}

int tl_es_append_to(tl_es *es, const char *stream, int64_t expected, tl_event *events, size_t n)
{
  if (!es) return tl_error_set(TL_EINVAL, "append: no event store");
  int rc = validate(stream, expected, events, n);
  if (rc) return rc;
  int64_t t0 = tl_time_mono_us();
  append_job j = { .es = es, .stream = stream, .expected = expected, .ev = events, .n = n,
                   .own_tx = true };
  if (es->dialect == TL_DB_POSTGRES && n <= ROWS_PER_INSERT)
    rc = append_single_statement(&j);
  else
    rc = tl_db_transact(es->db, append_fn, &j, NULL);
  if (rc == TL_ECONFLICT) {
    if (find_original(&j) == 0) {
      tl_error_clear();
      return 0;
    }
    tl_series_inc(es->m_conflicts);
    if (!j.mismatch)
      return tl_error_set(TL_ECONFLICT, "append '%s': an event id is already stored (%s)",
                          stream, j.msg);
    return tl_error_set(TL_ECONFLICT, "%s", j.msg);
  }
  if (rc) {
    if (j.msg[0] && strcmp(j.msg, tl_error_last()) != 0 && !tl_error_last()[0])
      tl_error_set(rc, "%s", j.msg);
    return rc;
  }
  tl_series_add(es->m_appended, (double)n);
  tl_series_observe(es->m_append_s, (double)(tl_time_mono_us() - t0) / 1e6);
  tl__es_notify(es);
  return 0;
}

int tl_es_append(tl_es *es, tl_event *events, size_t n)
{
  if (!events || n == 0) return tl_error_set(TL_EINVAL, "append: no events");
  const char *stream = events[0].aggregate_id;
  if (!stream) return tl_error_set(TL_EINVAL, "append: event 0 has no aggregate_id");
  int64_t expected = events[0].version > 0 ? events[0].version - 1 : TL_ES_ANY;
  for (size_t i = 1; i < n && expected >= 0; i++)
    if (events[i].version && events[i].version != events[0].version + (int64_t)i)
      return tl_error_set(TL_EINVAL, "append '%s': event %zu has version %lld, expected %lld",
                          stream, i, (long long)events[i].version,
                          (long long)(events[0].version + (int64_t)i));
  return tl_es_append_to(es, stream, expected, events, n);
}

/* ---- batches ------------------------------------------------------------ */

/* The PostgreSQL statement of a batch: every stream claimed and every
 * event inserted at once, from arrays, so its text (and prepared plan)
 * is the same for any batch. It takes requests that create a stream
 * (expected TL_ES_NO_STREAM or 0: i) or expect nothing (TL_ES_ANY: a),
 * and reads the streams table only through INSERT ... ON CONFLICT, an
 * index probe by construction: a plan that joins the table (as an
 * UPDATE ... FROM for exact versions would) is cached while the table is
 * young and small and turns into a scan of every stream per batch as it
 * grows. A stream that exists (i), or is deleted (a), is simply not in
 * s: it gets no events, fails nothing, and goes one by one after. The
 * events are inserted in the order of the arrays, as positions are taken
 * in the order rows are inserted: a join's order would put a stream's
 * version 2 before its version 1 in the global order. */
static const char batch_sql[] =
    "WITH v AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) "
    "AS v (stream, n, expected)), "
    "i AS (INSERT INTO trellis_es_streams (stream, version) SELECT v.stream, v.n FROM v "
    "WHERE v.expected IN (-2, 0) ON CONFLICT (stream) DO NOTHING RETURNING stream, version), "
    "a AS (INSERT INTO trellis_es_streams AS t (stream, version) SELECT v.stream, v.n FROM v "
    "WHERE v.expected = -1 ON CONFLICT (stream) DO UPDATE SET version = t.version + "
    "excluded.version WHERE t.deleted = 0 RETURNING stream, version), "
    "s AS (SELECT stream, version FROM i UNION ALL SELECT stream, version FROM a), "
    "e AS (INSERT INTO trellis_es_events (id, stream, category, type, version, data, metadata, "
    "schema_version, created_us) SELECT x.id, x.stream, x.category, x.type, "
    "s.version - v.n + x.k, x.data, x.metadata, x.sv, $4 FROM s JOIN v ON v.stream = s.stream "
    "JOIN unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::json[], $10::json[], "
    "$11::int[], $12::bigint[]) WITH ORDINALITY AS x (id, stream, category, type, data, metadata, "
    "sv, k, ord) ON x.stream = s.stream ORDER BY x.ord RETURNING stream, version, position, tx) "
    "SELECT stream, version, position, tx FROM e ORDER BY stream, version";

enum { BATCH_ARRAYS = 11, BATCH_MAX_EVENTS = 1000 };

/* A PostgreSQL array literal under construction: {"a","b",...}. */
typedef struct pg_array {
  char *buf;
  size_t len, cap;
} pg_array;

static bool arr_reserve(pg_array *a, size_t more)
{
  if (a->len + more + 2 <= a->cap) return true;
  size_t cap = a->cap ? a->cap : 256;
  while (cap < a->len + more + 2) cap *= 2;
  char *b = realloc(a->buf, cap);
  if (!b) return false;
  a->buf = b;
  a->cap = cap;
  return true;
}

/* Add an element: quoted text with " and \ escaped. */
static bool arr_text(pg_array *a, const char *s)
{
  size_t n = strlen(s);
  if (!arr_reserve(a, 2 * n + 4)) return false;
  char sep = a->len == 0 ? '{' : ',';
  a->buf[a->len++] = sep;
  a->buf[a->len++] = '"';
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') a->buf[a->len++] = '\\';
    a->buf[a->len++] = *s;
  }
  a->buf[a->len++] = '"';
  a->buf[a->len] = '\0';
  return true;
}

static bool arr_int(pg_array *a, int64_t v)
{
  char num[24];
  snprintf(num, sizeof num, "%lld", (long long)v);
  return arr_text(a, num);
}

/* Close the literal ("{}" when empty). */
static const char *arr_end(pg_array *a)
{
  if (!arr_reserve(a, 2)) return NULL;
  if (a->len == 0) a->buf[a->len++] = '{';
  a->buf[a->len++] = '}';
  a->buf[a->len] = '\0';
  return a->buf;
}

/* The request of stream `stream` among the statement's `k` requests. */
static tl_es_append_req *req_of(tl_es_append_req **in, size_t k, const char *stream)
{
  for (size_t i = 0; i < k; i++)
    if (strcmp(in[i]->stream, stream) == 0) return in[i];
  return NULL;
}

/* Read the placed events of the batch statement (ordered by stream and
 * version) into their requests; a placed request gets rc 0. */
static int read_batch(tl_rows *r, tl_es_append_req **in, size_t k, int64_t now)
{
  tl_es_append_req *q = NULL;
  int64_t old = 0;
  int got;
  while ((got = tl_rows_next(r)) == 1) {
    const char *stream;
    size_t sl;
    int64_t v = 0;
    tl_rows_text(r, 0, &stream, &sl);
    tl_rows_int(r, 1, &v);
    if (!q || strcmp(q->stream, stream) != 0) {
      q = req_of(in, k, stream);
      if (!q) continue;
      q->rc = 0;
      old = v - 1;
    }
    int64_t idx = v - old - 1;
    if (idx < 0 || (size_t)idx >= q->n) continue;
    append_job j = { .ev = q->events, .n = q->n };
    fill(&j, (size_t)idx, old, now);
    tl_rows_int(r, 2, &q->events[idx].position);
    tl_rows_int(r, 3, &q->events[idx].tx);
  }
  tl_rows_free(r);
  return got < 0 ? got : 0;
}

/* PostgreSQL: place the `k` requests `in` (distinct streams, up to
 * ROWS_PER_INSERT events each) with one statement. Those it could not
 * place keep rc TL_ECONFLICT. */
static int batch_statement(tl_es *es, tl_tx *tx, tl_es_append_req **in, size_t k)
{
  pg_array a[BATCH_ARRAYS] = { 0 };
  bool ok = true;
  int64_t now = tl_time_now_us();
  for (size_t i = 0; i < k && ok; i++) {
    tl_es_append_req *q = in[i];
    char category[TL_ES_NAME_MAX + 1];
    tl__es_category(q->stream, category, sizeof category);
    ok = arr_text(&a[0], q->stream) && arr_int(&a[1], (int64_t)q->n) &&
         arr_int(&a[2], q->expected);
    for (size_t e = 0; e < q->n && ok; e++) {
      tl_event *ev = &q->events[e];
      ok = arr_text(&a[3], ev->id) && arr_text(&a[4], q->stream) && arr_text(&a[5], category) &&
           arr_text(&a[6], ev->event_type) && arr_text(&a[7], ev->data) &&
           arr_text(&a[8], ev->metadata ? ev->metadata : "{}") &&
           arr_int(&a[9], ev->schema_version > 0 ? ev->schema_version : 1) &&
           arr_int(&a[10], (int64_t)e + 1);
    }
  }
  const char *lit[BATCH_ARRAYS];
  for (int i = 0; i < BATCH_ARRAYS && ok; i++) ok = (lit[i] = arr_end(&a[i])) != NULL;
  int rc = ok ? 0 : tl_error_set(TL_ENOMEM, "append batch: out of memory");
  if (rc == 0) {
    tl_rows *r;
    rc = tl_tx_query(tx, &r, batch_sql,
                     TL_ARGS(tl_text(lit[0]), tl_text(lit[1]), tl_text(lit[2]), tl_int(now),
                             tl_text(lit[3]), tl_text(lit[4]), tl_text(lit[5]), tl_text(lit[6]),
                             tl_text(lit[7]), tl_text(lit[8]), tl_text(lit[9]), tl_text(lit[10])));
    if (rc == 0) rc = read_batch(r, in, k, now);
  }
  for (int i = 0; i < BATCH_ARRAYS; i++) free(a[i].buf);
  return rc;
}

/* One request on its own in `tx`: its rc when the store refused it (a
 * version mismatch, a deleted stream: `tx` stays usable), else the
 * error that fails the batch. */
static int append_one(tl_es *es, tl_tx *tx, tl_es_append_req *q)
{
  append_job j = { .es = es, .stream = q->stream, .expected = q->expected, .ev = q->events,
                   .n = q->n };
  int rc = append_in(tx, &j);
  q->rc = rc;
  if (rc == 0) return 0;
  snprintf(q->error, sizeof q->error, "%s", tl_error_last());
  bool refused = (rc == TL_ECONFLICT && j.mismatch) ||
                 (rc == TL_ESTATE && tl_db_error_last_class() == TL_DB_ERR_NONE);
  return refused ? 0 : rc;
}

int tl_es_append_batch_tx(tl_es *es, tl_tx *tx, tl_es_append_req *reqs, size_t n)
{
  if (!es || !tx || (!reqs && n))
    return tl_error_set(TL_EINVAL, "append batch: no event store, transaction or requests");
  tl_es_append_req **in = malloc((n ? n : 1) * sizeof *in);
  if (!in) return tl_error_set(TL_ENOMEM, "append batch: out of memory");
  /* Valid requests the statement can take: new streams or any version,
   * distinct streams, bounded, and none after a request for its stream
   * that is left to go one by one (that one must stay first). Those left
   * are kept at the end of `in`. */
  size_t k = 0, left = 0, events = 0;
  for (size_t i = 0; i < n; i++) {
    tl_es_append_req *q = &reqs[i];
    q->error[0] = '\0';
    if ((q->rc = validate(q->stream, q->expected, q->events, q->n)) != 0) {
      snprintf(q->error, sizeof q->error, "%s", tl_error_last());
      continue;
    }
    q->rc = TL_ECONFLICT; /* until placed */
    if (es->dialect != TL_DB_POSTGRES) continue;
    bool claimable = q->expected == TL_ES_NO_STREAM || q->expected == 0 ||
                     q->expected == TL_ES_ANY;
    if (claimable && q->n <= ROWS_PER_INSERT && events + q->n <= BATCH_MAX_EVENTS &&
        !req_of(in, k, q->stream) && !req_of(in + n - left, left, q->stream)) {
      in[k++] = q;
      events += q->n;
    } else {
      in[n - ++left] = q;
    }
  }
  int rc = k > 1 ? batch_statement(es, tx, in, k) : 0;
  /* The rest, and what the statement did not place, one by one (in
   * order, so a second append to a stream follows the first). */
  for (size_t i = 0; i < n && rc == 0; i++) {
    tl_es_append_req *q = &reqs[i];
    if (q->rc == TL_ECONFLICT && !q->error[0]) rc = append_one(es, tx, q);
  }
  free(in);
  if (rc) return rc;
  size_t placed = 0, refused = 0;
  for (size_t i = 0; i < n; i++) {
    if (reqs[i].rc == 0) placed += reqs[i].n;
    else if (reqs[i].rc == TL_ECONFLICT) refused++;
  }
  if (placed) rc = tl__es_notify_tx(es, tx);
  if (placed) tl_series_add(es->m_appended, (double)placed);
  if (refused) tl_series_add(es->m_conflicts, (double)refused);
  return rc;
}

int tl_es_append_tx(tl_es *es, tl_tx *tx, const char *stream, int64_t expected,
                    tl_event *events, size_t n)
{
  if (!es || !tx) return tl_error_set(TL_EINVAL, "append: no event store or transaction");
  int rc = validate(stream, expected, events, n);
  if (rc) return rc;
  append_job j = { .es = es, .stream = stream, .expected = expected, .ev = events, .n = n };
  rc = append_in(tx, &j);
  if (rc == 0) rc = tl__es_notify_tx(es, tx);
  if (rc == 0) {
    tl_series_add(es->m_appended, (double)n);
  } else if (rc == TL_ECONFLICT) {
    tl_series_inc(es->m_conflicts);
  }
  return rc;
}
