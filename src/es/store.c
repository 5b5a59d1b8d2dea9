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
  tl_error_clear();
  pthread_mutex_init(&es->mu, NULL);
  pthread_cond_init(&es->appended, NULL);
  *out = es;
  return 0;
}

void tl_es_close(tl_es *es)
{
  if (!es) return;
  for (size_t i = 0; i < es->nup; i++) free(es->up[i].type);
  free(es->up);
  pthread_cond_destroy(&es->appended);
  pthread_mutex_destroy(&es->mu);
  free(es);
}

tl_db *tl_es_db(tl_es *es) { return es ? es->db : NULL; }

void tl__es_notify(tl_es *es)
{
  pthread_mutex_lock(&es->mu);
  es->append_seq++;
  pthread_cond_broadcast(&es->appended);
  pthread_mutex_unlock(&es->mu);
}

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
  }
  return 0;
}

typedef struct append_job {
  tl_es *es;
  const char *stream;
  int64_t expected;
  tl_event *ev;
  size_t n;
  int64_t found;     /* the stream's version when the check failed */
  bool mismatch;     /* the check failed (not some other conflict) */
  char msg[512];
} append_job;

/* Look at the stream row after a failed conditional update. */
static int why_not(tl_tx *tx, append_job *j)
{
  tl_rows *r;
  int rc = tl_tx_query(tx, &r, "SELECT version, deleted FROM trellis_es_streams WHERE stream = $1",
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

static bool expected_ok(int64_t expected, int64_t current)
{
  switch (expected) {
  case TL_ES_ANY: return true;
  case TL_ES_NO_STREAM: return current == 0;
  case TL_ES_EXISTS: return current > 0;
  default: return current == expected;
  }
}

/* Claim versions old+1..old+n of the stream; `*old` gets old. */
static int claim_versions(tl_tx *tx, append_job *j, int64_t *old)
{
  int64_t n = (int64_t)j->n;
  int rc;
  if (j->es->dialect == TL_DB_MYSQL) {
    /* Lock the stream row (an absent one: the insert below decides). */
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
    if (!expected_ok(j->expected, version)) {
      j->found = version;
      j->mismatch = true;
      return TL_ECONFLICT;
    }
    if (has == 1)
      rc = tl_tx_exec(tx, NULL, "UPDATE trellis_es_streams SET version = $1 WHERE stream = $2",
                      TL_ARGS(tl_int(version + n), tl_text(j->stream)));
    else {
      rc = tl_tx_exec(tx, NULL, "INSERT INTO trellis_es_streams (stream, version) VALUES ($1, $2)",
                      TL_ARGS(tl_text(j->stream), tl_int(n)));
      /* Another writer created it first: run again and see its version. */
      if (rc == TL_ECONFLICT) rc = TL_ERETRY;
    }
    *old = version;
    return rc;
  }
  const char *sql;
  int64_t exp = j->expected;
  if (exp == TL_ES_ANY)
    sql = "INSERT INTO trellis_es_streams (stream, version) VALUES ($1, $2) "
          "ON CONFLICT (stream) DO UPDATE SET version = trellis_es_streams.version + $2 "
          "WHERE trellis_es_streams.deleted = 0 RETURNING version";
  else if (exp == TL_ES_NO_STREAM || exp == 0)
    sql = "INSERT INTO trellis_es_streams (stream, version) VALUES ($1, $2) "
          "ON CONFLICT (stream) DO UPDATE SET version = trellis_es_streams.version + $2 "
          "WHERE trellis_es_streams.deleted = 0 AND trellis_es_streams.version = 0 RETURNING version";
  else if (exp == TL_ES_EXISTS)
    sql = "UPDATE trellis_es_streams SET version = version + $2 "
          "WHERE stream = $1 AND deleted = 0 AND version > 0 RETURNING version";
  else
    sql = "UPDATE trellis_es_streams SET version = version + $2 "
          "WHERE stream = $1 AND deleted = 0 AND version = $3 RETURNING version";
  tl_rows *r;
  if (exp > 0)
    rc = tl_tx_query(tx, &r, sql, TL_ARGS(tl_text(j->stream), tl_int(n), tl_int(exp)));
  else
    rc = tl_tx_query(tx, &r, sql, TL_ARGS(tl_text(j->stream), tl_int(n)));
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

static int insert_events(tl_tx *tx, append_job *j, int64_t old)
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
                    TL_ARGS(tl_int(first_pos + (int64_t)j->n - 1)));
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
  for (size_t at = 0; at < j->n && rc == 0; at += ROWS_PER_INSERT) {
    size_t k = j->n - at < ROWS_PER_INSERT ? j->n - at : ROWS_PER_INSERT;
    size_t len = (size_t)sprintf(sql, "INSERT INTO trellis_es_events (id, stream, category, type, "
                                 "version, data, metadata, schema_version, created_us%s) VALUES ",
                                 my ? ", position" : "");
    size_t a = 0;
    for (size_t i = 0; i < k; i++) {
      tl_event *e = &j->ev[at + i];
      len += (size_t)sprintf(sql + len, "%s(", i ? "," : "");
      for (size_t c = 0; c < ncols; c++)
        len += (size_t)sprintf(sql + len, "%s$%zu", c ? "," : "", a + c + 1);
      sql[len++] = ')';
      sql[len] = '\0';
      args[a++] = tl_text(e->id);
      args[a++] = tl_text(j->stream);
      args[a++] = tl_text(category);
      args[a++] = tl_text(e->event_type);
      args[a++] = tl_int(old + (int64_t)(at + i) + 1);
      args[a++] = tl_json(e->data);
      args[a++] = tl_json(e->metadata ? e->metadata : "{}");
      args[a++] = tl_int(e->schema_version > 0 ? e->schema_version : 1);
      args[a++] = tl_int(now);
      if (my) args[a++] = tl_int(first_pos + (int64_t)(at + i));
    }
    for (size_t i = 0; i < k; i++) {
      tl_event *e = &j->ev[at + i];
      e->version = old + (int64_t)(at + i) + 1;
      e->timestamp_us = now;
      e->tx = 0;
      if (e->schema_version <= 0) e->schema_version = 1;
      if (my) e->position = first_pos + (int64_t)(at + i);
    }
    if (my) {
      rc = tl_tx_exec(tx, NULL, sql, args, a);
      continue;
    }
    strcpy(sql + len, " RETURNING version, position, tx");
    tl_rows *r;
    rc = tl_tx_query(tx, &r, sql, args, a);
    if (rc) break;
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
    if (got < 0) rc = got;
  }
  free(sql);
  free(args);
  return rc;
}

static int append_in(tl_tx *tx, append_job *j)
{
  int64_t old = 0;
  j->mismatch = false;
  int rc = claim_versions(tx, j, &old);
  if (rc == TL_ECONFLICT && j->mismatch) {
    char b[32];
    return tl_error_set(TL_ECONFLICT, "append '%s': expected version %s, found %lld", j->stream,
                        expected_text(j->expected, b, sizeof b), (long long)j->found);
  }
  if (rc) return rc;
  return insert_events(tx, j, old);
}

static int append_fn(tl_tx *tx, void *ctx)
{
  append_job *j = ctx;
  int rc = append_in(tx, j);
  if (rc) snprintf(j->msg, sizeof j->msg, "%s", tl_error_last());
  return rc;
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
  append_job j = { .es = es, .stream = stream, .expected = expected, .ev = events, .n = n };
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

int tl_es_append_tx(tl_es *es, tl_tx *tx, const char *stream, int64_t expected,
                    tl_event *events, size_t n)
{
  if (!es || !tx) return tl_error_set(TL_EINVAL, "append: no event store or transaction");
  int rc = validate(stream, expected, events, n);
  if (rc) return rc;
  append_job j = { .es = es, .stream = stream, .expected = expected, .ev = events, .n = n };
  rc = append_in(tx, &j);
  if (rc == 0) {
    tl_series_add(es->m_appended, (double)n);
    tl__es_notify(es); /* early: a subscriber polls again and finds it on commit */
  } else if (rc == TL_ECONFLICT) {
    tl_series_inc(es->m_conflicts);
  }
  return rc;
}
