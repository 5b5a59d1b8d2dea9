/* The aggregate helper: state = latest snapshot + the events after it,
 * folded with apply; a decision appends its events expecting the version
 * it saw, and runs again from a fresh load when another writer won. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/error.h>
#include <trellis/log.h>

#include "cqrs/cqrs_int.h"

struct tl_aggregate_emit {
  tl_event *ev;
  json_t **data;
  char **types;
  char **texts;
  size_t n, cap;
};

int tl_aggregate_emit_event(tl_aggregate_emit *em, const char *type, json_t *data)
{
  if (!em || !type || !*type || !data) {
    json_decref(data);
    return tl_error_set(TL_EINVAL, "emit: a type and data are required");
  }
  if (em->n == em->cap) {
    size_t cap = em->cap ? em->cap * 2 : 4;
    json_t **d = realloc(em->data, cap * sizeof *d);
    if (d) em->data = d;
    char **t = realloc(em->types, cap * sizeof *t);
    if (t) em->types = t;
    char **x = realloc(em->texts, cap * sizeof *x);
    if (x) em->texts = x;
    if (!d || !t || !x) {
      json_decref(data);
      return tl_error_set(TL_ENOMEM, "emit: out of memory");
    }
    em->cap = cap;
  }
  em->types[em->n] = strdup(type);
  em->texts[em->n] = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
  em->data[em->n] = data;
  em->n++;
  if (!em->types[em->n - 1] || !em->texts[em->n - 1])
    return tl_error_set(TL_ENOMEM, "emit: out of memory");
  return 0;
}

static void emit_clear(tl_aggregate_emit *em)
{
  for (size_t i = 0; i < em->n; i++) {
    json_decref(em->data[i]);
    free(em->types[i]);
    free(em->texts[i]);
  }
  em->n = 0;
}

static void emit_free(tl_aggregate_emit *em)
{
  emit_clear(em);
  free(em->data);
  free(em->types);
  free(em->texts);
  free(em->ev);
}

int tl_aggregate_load(tl_es *es, const tl_aggregate_def *def, const char *stream, json_t **state,
                      int64_t *version)
{
  if (!es || !def || !def->apply || !stream || !state || !version)
    return tl_error_set(TL_EINVAL, "aggregate load: missing argument");
  json_t *st = NULL;
  int64_t v = 0;
  int schema = def->state_schema > 0 ? def->state_schema : 1;
  tl_es_snapshot snap;
  if (def->snapshot_every > 0 && tl_es_snapshot_load(es, stream, &snap) == 0) {
    if (snap.schema_version == schema) {
      st = json_loads(snap.state, 0, NULL);
      if (st && json_is_object(st)) v = snap.version;
      else {
        json_decref(st);
        st = NULL;
      }
    }
    tl_es_snapshot_free(&snap);
  }
  tl_error_clear();
  if (!st) st = json_object();
  if (!st) return tl_error_set(TL_ENOMEM, "aggregate load: out of memory");
  tl_event_list *l;
  int rc = tl_es_read_stream(es, stream, &(tl_es_read_opts){ .from_version = v + 1 }, &l);
  if (rc) {
    json_decref(st);
    return rc;
  }
  for (size_t i = 0; i < l->count && rc == 0; i++) {
    rc = def->apply(st, &l->events[i], def->ctx);
    v = l->events[i].version;
  }
  tl_event_list_free(l);
  if (rc) {
    json_decref(st);
    return rc;
  }
  *state = st;
  *version = v;
  return 0;
}

typedef struct append_job {
  tl_es *es;
  const char *stream;
  int64_t expected;
  tl_aggregate_emit *em;
  const json_t *state;
  const tl_aggregate_exec_opts *opts;
  bool in_tx_failed;
} append_job;

static int append_fn(tl_tx *tx, void *ctx)
{
  append_job *j = ctx;
  int rc = tl_es_append_tx(j->es, tx, j->stream, j->expected, j->em->ev, j->em->n);
  if (rc == 0) {
    rc = j->opts->in_tx(tx, j->state, j->em->ev, j->em->n, j->opts->in_tx_ctx);
    j->in_tx_failed = rc != 0;
  }
  return rc;
}

/* Append the decision's events expecting `v`: in the group's shared
 * transaction, else alone or with in_tx in one of its own. */
static int append(tl_es *es, const char *stream, int64_t v, tl_aggregate_emit *em,
                  const json_t *state, const tl_aggregate_exec_opts *o)
{
  free(em->ev);
  em->ev = calloc(em->n, sizeof *em->ev);
  if (!em->ev) return tl_error_set(TL_ENOMEM, "aggregate: out of memory");
  for (size_t i = 0; i < em->n; i++)
    em->ev[i] = (tl_event){ .aggregate_id = stream, .event_type = em->types[i],
                            .data = em->texts[i], .metadata = o->metadata };
  int rc;
  bool in_tx_failed = false;
  tl__group_item it = { .req = { .stream = stream, .expected = v, .events = em->ev, .n = em->n },
                        .state = state, .o = o };
  if (o->group && ((rc = tl__group_append(o->group, &it)) == 0 || !it.alone)) {
    in_tx_failed = it.in_tx_failed;
  } else if (!o->in_tx) {
    return tl_es_append_to(es, stream, v, em->ev, em->n);
  } else {
    append_job j = { es, stream, v, em, state, o, false };
    /* A version conflict goes back to the decide loop, and in_tx's own
     * errors are the caller's; a deadlock or serialization failure (on
     * MariaDB, appends that meet on the position counter) rolled it all
     * back and runs again. */
    rc = tl_db_transact(tl_es_db(es), append_fn, &j, NULL);
    in_tx_failed = j.in_tx_failed;
  }
  if (rc == TL_ECONFLICT && in_tx_failed) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    rc = tl_error_set(TL_ECONSTRAINT, "%s", msg);
  }
  return rc;
}

/* Fold the new events into `st` and, when a multiple of snapshot_every
 * was crossed, store it. */
static void after_append(tl_es *es, const tl_aggregate_def *def, const char *stream, json_t *st,
                         int64_t from, const tl_aggregate_emit *em, bool keep_state)
{
  int64_t nv = em->ev[em->n - 1].version;
  bool snap = def->snapshot_every > 0 && nv / def->snapshot_every != from / def->snapshot_every;
  if (!snap && !keep_state) return;
  int frc = 0;
  for (size_t i = 0; i < em->n && frc == 0; i++) frc = def->apply(st, &em->ev[i], def->ctx);
  if (!snap || frc) return;
  char *text = json_dumps(st, JSON_COMPACT);
  if (text && tl_es_snapshot_save(es, stream, nv, def->state_schema > 0 ? def->state_schema : 1,
                                  text) != 0)
    tl_log(TL_LOG_WARN, "snapshot not saved", TL_F_STR("stream", stream),
           TL_F_STR("error", tl_error_last()));
  free(text);
  tl_error_clear();
}

int tl_aggregate_execute_opts(tl_es *es, const tl_aggregate_def *def, const char *stream,
                              const json_t *command, tl_aggregate_decide decide, void *ctx,
                              const tl_aggregate_exec_opts *opts, int64_t *version)
{
  if (!es || !def || !stream || !decide)
    return tl_error_set(TL_EINVAL, "aggregate execute: missing argument");
  static const tl_aggregate_exec_opts none = { 0 };
  const tl_aggregate_exec_opts *o = opts ? opts : &none;
  if (o->in_tx_batch && !o->in_tx)
    return tl_error_set(TL_EINVAL, "aggregate execute: in_tx_batch needs in_tx too (a decision "
                        "that cannot share a batch runs alone with it)");
  if (o->state_out) *o->state_out = NULL;
  unsigned attempts = o->has_expected || o->new_stream ? 1
                      : def->max_attempts ? def->max_attempts : 3;
  tl_aggregate_emit em = { 0 };
  int rc = TL_ECONFLICT;
  for (unsigned a = 0; a < attempts && rc == TL_ECONFLICT; a++) {
    json_t *st;
    int64_t v;
    emit_clear(&em);
    if (o->new_stream) {
      st = json_object();
      v = 0;
      rc = st ? 0 : tl_error_set(TL_ENOMEM, "aggregate: out of memory");
    } else {
      rc = tl_aggregate_load(es, def, stream, &st, &v);
    }
    if (rc) break;
    if (o->has_expected && v != o->expected_version) {
      json_decref(st);
      rc = tl_error_set(TL_EPRECOND, "stream '%s': expected version %lld, found %lld", stream,
                        (long long)o->expected_version, (long long)v);
      break;
    }
    rc = decide(st, v, command, &em, ctx);
    if (rc == 0 && em.n > 0) {
      rc = append(es, stream, v, &em, st, o);
      if (rc == TL_ECONFLICT)
        tl_log(TL_LOG_DEBUG, "aggregate conflict", TL_F_STR("stream", stream),
               TL_F_INT("attempt", a + 1));
    }
    if (rc == 0) {
      if (em.n > 0) after_append(es, def, stream, st, v, &em, o->state_out != NULL);
      if (version) *version = em.n > 0 ? em.ev[em.n - 1].version : v;
      if (o->state_out) {
        *o->state_out = st;
        st = NULL;
      }
    }
    json_decref(st);
  }
  emit_free(&em);
  return rc;
}

int tl_aggregate_execute(tl_es *es, const tl_aggregate_def *def, const char *stream,
                         const json_t *command, tl_aggregate_decide decide, void *ctx,
                         int64_t *version)
{
  return tl_aggregate_execute_opts(es, def, stream, command, decide, ctx, NULL, version);
}
