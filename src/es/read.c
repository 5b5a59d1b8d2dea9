/* Reading: event lists, stream reads (forward, backward, as of a time, up
 * to a version), $all in global order, upcasting, stream metadata, soft
 * delete and truncate-before. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/trellis.h>

#include "es/es_int.h"

/* ---- lists ------------------------------------------------------------- */

int tl__list_new(tl__list **out)
{
  tl__list *l = calloc(1, sizeof *l);
  if (!l) return tl_error_set(TL_ENOMEM, "event list: out of memory");
  *out = l;
  return 0;
}

void tl_event_list_free(tl_event_list *list)
{
  if (!list) return;
  tl__list *l = (tl__list *)list;
  for (size_t i = 0; i < l->pub.count; i++) {
    free(l->blocks[i]);
    free(l->upcast[i]);
  }
  free(l->blocks);
  free(l->upcast);
  free(l->pub.events);
  free(l);
}

static int upcast(tl_es *es, tl_event *e, char **owned)
{
  pthread_mutex_lock(&es->mu);
  size_t nup = es->nup;
  pthread_mutex_unlock(&es->mu);
  if (nup == 0) return 0;
  for (int guard = 0; guard < 1000; guard++) {
    tl__upcaster u = { 0 };
    pthread_mutex_lock(&es->mu);
    for (size_t i = 0; i < es->nup; i++)
      if (es->up[i].from == e->schema_version && strcmp(es->up[i].type, e->event_type) == 0) {
        u = es->up[i];
        break;
      }
    pthread_mutex_unlock(&es->mu);
    if (!u.fn) return 0;
    char *next = NULL;
    int rc = u.fn(e->event_type, e->data, &next, u.ctx);
    if (rc || !next) {
      free(next);
      return tl_error_set(rc ? rc : TL_EINTERNAL, "upcasting '%s' from schema %d failed",
                          e->event_type, e->schema_version);
    }
    free(*owned);
    *owned = next;
    e->data = next;
    e->schema_version++;
  }
  return 0;
}

static const char *col_text(tl_rows *rows, int col, size_t *len)
{
  tl_value v;
  if (tl_rows_get(rows, col, &v) != 0 || v.type == TL_TYPE_NULL) {
    *len = 0;
    return "";
  }
  if (v.type == TL_TYPE_TEXT || v.type == TL_TYPE_JSON || v.type == TL_TYPE_BLOB) {
    *len = v.len;
    return v.s;
  }
  const char *s = "";
  tl_rows_text(rows, col, &s, len);
  return s;
}

int tl__list_add_row(tl_es *es, tl__list *l, tl_rows *rows)
{
  if (l->pub.count == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    tl_event *ev = realloc(l->pub.events, cap * sizeof *ev);
    if (ev) l->pub.events = ev;
    char **b = realloc(l->blocks, cap * sizeof *b);
    if (b) l->blocks = b;
    char **u = realloc(l->upcast, cap * sizeof *u);
    if (u) l->upcast = u;
    if (!ev || !b || !u) return tl_error_set(TL_ENOMEM, "event list: out of memory");
    l->cap = cap;
  }
  tl_event *e = &l->pub.events[l->pub.count];
  memset(e, 0, sizeof *e);
  int64_t sv = 1;
  tl_rows_int(rows, 0, &e->position);
  tl_rows_int(rows, 1, &e->tx);
  tl_rows_int(rows, 6, &e->version);
  tl_rows_int(rows, 9, &sv);
  tl_rows_int(rows, 10, &e->timestamp_us);
  e->schema_version = (int)sv;
  size_t len[6];
  const char *s[6];
  s[0] = col_text(rows, 2, &len[0]); /* id */
  s[1] = col_text(rows, 3, &len[1]); /* stream */
  s[2] = col_text(rows, 4, &len[2]); /* category */
  s[3] = col_text(rows, 5, &len[3]); /* type */
  s[4] = col_text(rows, 7, &len[4]); /* data */
  s[5] = col_text(rows, 8, &len[5]); /* metadata */
  size_t total = 0;
  for (int i = 1; i < 6; i++) total += len[i] + 1;
  char *block = malloc(total);
  if (!block) return tl_error_set(TL_ENOMEM, "event list: out of memory");
  snprintf(e->id, sizeof e->id, "%.*s", (int)len[0], s[0]);
  char *w = block;
  const char **dst[6] = { NULL, &e->aggregate_id, &e->category, &e->event_type, &e->data,
                          &e->metadata };
  for (int i = 1; i < 6; i++) {
    memcpy(w, s[i], len[i]);
    w[len[i]] = '\0';
    *dst[i] = w;
    w += len[i] + 1;
  }
  l->blocks[l->pub.count] = block;
  l->upcast[l->pub.count] = NULL;
  l->pub.count++;
  return upcast(es, e, &l->upcast[l->pub.count - 1]);
}

int tl__es_query_events(tl_es *es, tl_tx *tx, const char *sql, const tl_value *args,
                        size_t nargs, tl_event_list **out)
{
  tl__list *l;
  int rc = tl__list_new(&l);
  if (rc) return rc;
  tl_rows *rows;
  rc = tx ? tl_tx_query(tx, &rows, sql, args, nargs) : tl_db_query(es->db, &rows, sql, args, nargs);
  if (rc) {
    tl_event_list_free(&l->pub);
    return rc;
  }
  while ((rc = tl_rows_next(rows)) == 1)
    if ((rc = tl__list_add_row(es, l, rows)) != 0) break;
  tl_rows_free(rows);
  if (rc < 0) {
    tl_event_list_free(&l->pub);
    return rc;
  }
  tl_series_add(es->m_read, (double)l->pub.count);
  *out = &l->pub;
  return 0;
}

/* ---- stream reads ------------------------------------------------------ */

typedef struct stream_row {
  bool exists;
  int64_t version, deleted, truncate_before;
} stream_row;

static int load_stream(tl_es *es, const char *stream, stream_row *out)
{
  memset(out, 0, sizeof *out);
  tl_rows *r;
  int rc = tl_db_query(es->db, &r, "SELECT version, deleted, truncate_before FROM trellis_es_streams "
                       "WHERE stream = $1", TL_ARGS(tl_text(stream)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  if (rc == 1) {
    out->exists = true;
    tl_rows_int(r, 0, &out->version);
    tl_rows_int(r, 1, &out->deleted);
    tl_rows_int(r, 2, &out->truncate_before);
    rc = 0;
  }
  tl_rows_free(r);
  return rc;
}

int tl_es_read_stream(tl_es *es, const char *stream, const tl_es_read_opts *opts,
                      tl_event_list **out)
{
  if (!es || !stream || !out) return tl_error_set(TL_EINVAL, "read: missing argument");
  tl_es_read_opts o = opts ? *opts : (tl_es_read_opts){ 0 };
  stream_row sr;
  int rc = load_stream(es, stream, &sr);
  if (rc) return rc;
  if (sr.deleted) return tl_error_set(TL_ENOTFOUND, "read: stream '%s' is deleted", stream);
  int64_t lo = sr.truncate_before > 1 ? sr.truncate_before : 1;
  int64_t hi = INT64_MAX;
  if (o.to_version > 0) hi = o.to_version;
  if (!o.backward && o.from_version > lo) lo = o.from_version;
  if (o.backward && o.from_version > 0 && o.from_version < hi) hi = o.from_version;
  int64_t until = o.until_us > 0 ? o.until_us : INT64_MAX;
  int64_t limit = o.max_count > 0 ? (int64_t)o.max_count : INT64_MAX;
  char sql[512];
  snprintf(sql, sizeof sql, "SELECT " TL__EV_COLS " FROM trellis_es_events WHERE stream = $1 "
           "AND version >= $2 AND version <= $3 AND created_us <= $4 ORDER BY version %s LIMIT $5",
           o.backward ? "DESC" : "ASC");
  return tl__es_query_events(es, NULL, sql,
                             TL_ARGS(tl_text(stream), tl_int(lo), tl_int(hi), tl_int(until),
                                     tl_int(limit)), out);
}

int tl_es_get_events(tl_es *es, const char *stream, tl_event_list **out)
{
  return tl_es_read_stream(es, stream, NULL, out);
}

int tl_es_get_events_until(tl_es *es, const char *stream, int64_t as_of_us, tl_event_list **out)
{
  if (as_of_us <= 0) return tl_error_set(TL_EINVAL, "read '%s': as-of time must be positive", stream);
  return tl_es_read_stream(es, stream, &(tl_es_read_opts){ .until_us = as_of_us }, out);
}

int tl_es_stream_version(tl_es *es, const char *stream, int64_t *version)
{
  if (!es || !stream || !version) return tl_error_set(TL_EINVAL, "stream version: missing argument");
  stream_row sr;
  int rc = load_stream(es, stream, &sr);
  if (rc) return rc;
  if (sr.deleted) return tl_error_set(TL_ENOTFOUND, "stream '%s' is deleted", stream);
  *version = sr.version;
  return 0;
}

/* ---- $all -------------------------------------------------------------- */

int tl__es_all_sql(tl_es *es, const char *cols, const tl_es_filter *f, char *buf, size_t size,
                   tl_value *args, size_t *nargs, size_t maxargs)
{
  size_t n = 3, len;
  if (es->dialect == TL_DB_POSTGRES)
    /* Only transactions that finished: below the oldest one still running,
     * nothing can commit any more. The row comparison lets the (tx,
     * position) index start at the checkpoint. */
    len = (size_t)snprintf(buf, size, "SELECT %s FROM trellis_es_events WHERE "
                           "(tx, position) > ($1, $2) AND "
                           "tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint", cols);
  else
    len = (size_t)snprintf(buf, size, "SELECT %s FROM trellis_es_events WHERE "
                           "position > $2 AND tx >= $1", cols);
  if (f && f->category && *f->category) {
    if (n >= maxargs) return tl_error_set(TL_EINVAL, "filter: too many terms");
    args[n++] = tl_text(f->category);
    len += (size_t)snprintf(buf + len, size - len, " AND category = $%zu", n);
  }
  if (f && f->ntypes) {
    len += (size_t)snprintf(buf + len, size - len, " AND type IN (");
    for (size_t i = 0; i < f->ntypes; i++) {
      if (n >= maxargs || len + 16 >= size) return tl_error_set(TL_EINVAL, "filter: too many types");
      args[n++] = tl_text(f->types[i]);
      len += (size_t)snprintf(buf + len, size - len, "%s$%zu", i ? "," : "", n);
    }
    len += (size_t)snprintf(buf + len, size - len, ")");
  }
  if (len + 48 >= size) return tl_error_set(TL_EINVAL, "filter: too long");
  snprintf(buf + len, size - len, " ORDER BY %s LIMIT $3",
           es->dialect == TL_DB_POSTGRES ? "tx, position" : "position");
  *nargs = n;
  return 0;
}

int tl_es_read_all(tl_es *es, const tl_es_checkpoint *after, const tl_es_filter *filter,
                   size_t max, tl_event_list **out)
{
  if (!es || !out) return tl_error_set(TL_EINVAL, "read $all: missing argument");
  tl_es_checkpoint from = after ? *after : (tl_es_checkpoint){ 0, 0 };
  tl_value args[72];
  size_t nargs;
  char sql[4096];
  int rc = tl__es_all_sql(es, TL__EV_COLS, filter, sql, sizeof sql, args, &nargs, 72);
  if (rc) return rc;
  args[0] = tl_int(from.tx);
  args[1] = tl_int(from.position);
  args[2] = tl_int(max ? (int64_t)max : 1000);
  return tl__es_query_events(es, NULL, sql, args, nargs, out);
}

int tl_es_checkpoint_at(tl_es *es, int64_t position, tl_es_checkpoint *out)
{
  if (!es || !out) return tl_error_set(TL_EINVAL, "checkpoint: missing argument");
  tl_rows *r;
  int rc = tl_db_query(es->db, &r, "SELECT tx FROM trellis_es_events WHERE position >= $1 "
                       "ORDER BY position LIMIT 1", TL_ARGS(tl_int(position)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  int64_t tx = 0;
  if (rc == 1) tl_rows_int(r, 0, &tx);
  tl_rows_free(r);
  if (rc < 0) return rc;
  if (rc == 0) return tl_error_set(TL_ENOTFOUND, "no event at or after position %lld",
                                   (long long)position);
  *out = (tl_es_checkpoint){ tx, position - 1 };
  return 0;
}

/* ---- stream metadata, delete, truncate --------------------------------- */

static const char *upsert_prefix(tl_es *es)
{
  return es->dialect == TL_DB_MYSQL ? "INSERT IGNORE INTO" : "INSERT INTO";
}

static int ensure_stream(tl_es *es, tl_tx *tx, const char *stream)
{
  char sql[256];
  snprintf(sql, sizeof sql, "%s trellis_es_streams (stream, version) VALUES ($1, 0)%s",
           upsert_prefix(es), es->dialect == TL_DB_MYSQL ? "" : " ON CONFLICT (stream) DO NOTHING");
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_text(stream)));
}

typedef struct meta_job {
  tl_es *es;
  const char *stream;
  const char *json;
} meta_job;

static int meta_fn(tl_tx *tx, void *ctx)
{
  meta_job *j = ctx;
  int rc = ensure_stream(j->es, tx, j->stream);
  if (rc) return rc;
  return tl_tx_exec(tx, NULL, "UPDATE trellis_es_streams SET metadata = $1 WHERE stream = $2",
                    TL_ARGS(tl_json(j->json), tl_text(j->stream)));
}

int tl_es_stream_metadata_set(tl_es *es, const char *stream, const char *json)
{
  if (!es || !stream || !*stream || !json)
    return tl_error_set(TL_EINVAL, "stream metadata: missing argument");
  json_t *j = json_loads(json, 0, NULL);
  bool ok = j && json_is_object(j);
  json_decref(j);
  if (!ok) return tl_error_set(TL_EINVAL, "stream '%s': metadata is not a JSON object", stream);
  meta_job mj = { es, stream, json };
  return tl_db_transact(es->db, meta_fn, &mj, NULL);
}

int tl_es_stream_metadata_get(tl_es *es, const char *stream, char **json)
{
  if (!es || !stream || !json) return tl_error_set(TL_EINVAL, "stream metadata: missing argument");
  tl_rows *r;
  int rc = tl_db_query(es->db, &r, "SELECT metadata FROM trellis_es_streams WHERE stream = $1",
                       TL_ARGS(tl_text(stream)));
  if (rc) return rc;
  const char *s = NULL;
  size_t len = 0;
  rc = tl_rows_next(r);
  if (rc == 1 && !tl_rows_is_null(r, 0)) s = col_text(r, 0, &len);
  char *copy = s ? strndup(s, len) : strdup("{}");
  tl_rows_free(r);
  if (rc < 0) {
    free(copy);
    return rc;
  }
  if (!copy) return tl_error_set(TL_ENOMEM, "stream metadata: out of memory");
  *json = copy;
  return 0;
}

static int stream_update(tl_es *es, const char *stream, const char *sql, int64_t arg)
{
  if (!es || !stream) return tl_error_set(TL_EINVAL, "stream: missing argument");
  int64_t n = 0;
  int rc = tl_db_exec(es->db, &n, sql, TL_ARGS(tl_text(stream), tl_int(arg)));
  if (rc) return rc;
  if (n == 0) return tl_error_set(TL_ENOTFOUND, "stream '%s' not found", stream);
  return 0;
}

int tl_es_stream_delete(tl_es *es, const char *stream)
{
  return stream_update(es, stream, "UPDATE trellis_es_streams SET deleted = $2 "
                       "WHERE stream = $1 AND version > 0", 1);
}

int tl_es_stream_truncate_before(tl_es *es, const char *stream, int64_t version)
{
  if (version < 0) return tl_error_set(TL_EINVAL, "truncate '%s': negative version", stream);
  return stream_update(es, stream, "UPDATE trellis_es_streams SET truncate_before = $2 "
                       "WHERE stream = $1 AND deleted = 0", version);
}

/* ---- upcasters ---------------------------------------------------------- */

int tl_es_upcaster_register(tl_es *es, const char *type, int from_schema_version,
                            tl_es_upcaster fn, void *ctx)
{
  if (!es || !type || !*type || !fn || from_schema_version < 1)
    return tl_error_set(TL_EINVAL, "upcaster: needs a type, a schema version >= 1 and a function");
  char *t = strdup(type);
  if (!t) return tl_error_set(TL_ENOMEM, "upcaster: out of memory");
  pthread_mutex_lock(&es->mu);
  int rc = 0;
  if (es->nup == es->capup) {
    size_t cap = es->capup ? es->capup * 2 : 8;
    tl__upcaster *u = realloc(es->up, cap * sizeof *u);
    if (!u) rc = TL_ENOMEM;
    else {
      es->up = u;
      es->capup = cap;
    }
  }
  if (rc == 0) es->up[es->nup++] = (tl__upcaster){ t, from_schema_version, fn, ctx };
  pthread_mutex_unlock(&es->mu);
  if (rc) {
    free(t);
    return tl_error_set(rc, "upcaster: out of memory");
  }
  return 0;
}

/* ---- subjects ----------------------------------------------------------- */

size_t tl_es_subject(const char *category, const char *type, char *buf, size_t size)
{
  char tmp[2 * TL_ES_NAME_MAX + 8];
  size_t n = 0;
  for (const char *c = category ? category : ""; *c && n < TL_ES_NAME_MAX; c++)
    tmp[n++] = (char)tolower((unsigned char)*c);
  tmp[n++] = '.';
  size_t word0 = n;
  const char *t = type ? type : "";
  for (size_t i = 0; t[i] && n < sizeof tmp - 3; i++) {
    unsigned char ch = (unsigned char)t[i];
    if (ch == '_' || ch == '-' || ch == '.' || ch == ' ') {
      if (n > word0 && tmp[n - 1] != '_') tmp[n++] = '_';
      continue;
    }
    bool boundary = isupper(ch) && i > 0 &&
                    (islower((unsigned char)t[i - 1]) || isdigit((unsigned char)t[i - 1]) ||
                     (isupper((unsigned char)t[i - 1]) && t[i + 1] && islower((unsigned char)t[i + 1])));
    if (boundary && n > word0 && tmp[n - 1] != '_') tmp[n++] = '_';
    tmp[n++] = (char)tolower(ch);
  }
  while (n > word0 && tmp[n - 1] == '_') n--;
  tmp[n] = '\0';
  /* Leave out a first word that repeats the category. */
  size_t clen = word0 - 1;
  if (clen && strncmp(tmp + word0, tmp, clen) == 0 && tmp[word0 + clen] == '_')
    memmove(tmp + word0, tmp + word0 + clen + 1, n - (word0 + clen + 1) + 1);
  size_t len = strlen(tmp);
  if (size) snprintf(buf, size, "%s", tmp);
  return len;
}
