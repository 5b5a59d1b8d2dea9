/* MongoDB backend (libmongoc): a document API next to SQL, on a
 * mongoc_client_pool_t (maxPoolSize from max_connections). Documents are
 * JSON text in and relaxed Extended JSON out; transactions are a client
 * session's transaction, held by a tl_tx. Errors map to the same taxonomy:
 * duplicate key → unique, WriteConflict and TransientTransactionError →
 * serialization (retried by tl_db_transact), unreachable → connection lost. */
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

typedef struct mg_db {
  mongoc_client_pool_t *pool;
  mongoc_uri_t *uri;
  char name[128]; /* the database */
} mg_db;

typedef struct mg_tx {
  struct tl_tx tx;
  mongoc_client_t *client;
  mongoc_client_session_t *session;
} mg_tx;

struct tl_doc_cursor {
  tl_db *db;
  mongoc_client_t *client; /* given back on free; NULL inside a transaction */
  mongoc_collection_t *coll;
  mongoc_cursor_t *cur;
  char *json;
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void mg_init(void) { mongoc_init(); }

/* ---- JSON <-> BSON --------------------------------------------------------- */

int tl__doc_from_json(const char *json, const char *what, void **out)
{
  bson_error_t err;
  bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &err);
  if (!b) return tl_error_set(TL_EPROTO, "mongodb: %s is not a JSON document: %s", what, err.message);
  *out = b;
  return 0;
}

char *tl__doc_to_json(const void *bson)
{
  char *s = bson_as_relaxed_extended_json(bson, NULL);
  char *copy = s ? strdup(s) : NULL;
  bson_free(s);
  return copy;
}

void tl__doc_bson_free(void *bson) { bson_destroy(bson); }

/* ---- errors ------------------------------------------------------------------ */

static int mg_fail(const bson_error_t *err, const bson_t *reply, const char *what)
{
  tl_db_error_class cls;
  if (reply && mongoc_error_has_label(reply, "TransientTransactionError"))
    cls = TL_DB_ERR_SERIALIZATION;
  else if (err->domain == MONGOC_ERROR_STREAM || err->domain == MONGOC_ERROR_SERVER_SELECTION)
    cls = TL_DB_ERR_CONNECTION_LOST;
  else
    cls = tl__class_from_mongo(err->code);
  return tl__db_fail(cls, "mongodb: %s: %s (code %u)", what, err->message, err->code);
}

/* ---- connection ---------------------------------------------------------------- */

static mg_db *MG(tl_db *db) { return db->doc; }

static int mg_db_ping(tl_db *db)
{
  mongoc_client_t *c = mongoc_client_pool_pop(MG(db)->pool);
  bson_t *cmd = BCON_NEW("ping", BCON_INT32(1));
  bson_t reply;
  bson_error_t err;
  bool ok = mongoc_client_command_simple(c, "admin", cmd, NULL, &reply, &err);
  int rc = ok ? 0 : mg_fail(&err, &reply, "ping");
  bson_destroy(&reply);
  bson_destroy(cmd);
  mongoc_client_pool_push(MG(db)->pool, c);
  return rc;
}

static void mg_db_close(tl_db *db)
{
  mg_db *m = MG(db);
  if (!m) return;
  if (m->pool) mongoc_client_pool_destroy(m->pool);
  if (m->uri) mongoc_uri_destroy(m->uri);
  free(m);
  db->doc = NULL;
}

static int mg_db_open(tl_db *db, const tl_db_config *cfg)
{
  (void)cfg;
  pthread_once(&init_once, mg_init);
  mg_db *m = calloc(1, sizeof *m);
  if (!m) return tl_error_set(TL_ENOMEM, "out of memory");
  db->doc = m;
  bson_error_t err;
  if (!(m->uri = mongoc_uri_new_with_error(db->url.raw, &err))) {
    mg_db_close(db);
    return tl_error_set(TL_EINVAL, "mongodb '%s': %s", db->url.masked, err.message);
  }
  const bson_t *opts = mongoc_uri_get_options(m->uri);
  bson_iter_t it;
  if (!bson_iter_init_find_case(&it, opts, MONGOC_URI_MAXPOOLSIZE))
    mongoc_uri_set_option_as_int32(m->uri, MONGOC_URI_MAXPOOLSIZE, db->opts.max_connections);
  if (!bson_iter_init_find_case(&it, opts, MONGOC_URI_SERVERSELECTIONTIMEOUTMS) &&
      db->opts.connect_timeout_us > 0)
    mongoc_uri_set_option_as_int32(m->uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                   (int32_t)(db->opts.connect_timeout_us / 1000));
  const char *name = mongoc_uri_get_database(m->uri);
  snprintf(m->name, sizeof m->name, "%s", name && *name ? name : "trellis");
  if (!(m->pool = mongoc_client_pool_new(m->uri))) {
    mg_db_close(db);
    return tl_error_set(TL_EINVAL, "mongodb '%s': cannot create a client pool", db->url.masked);
  }
  mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
  mongoc_client_pool_set_appname(m->pool, "trellis");
  int rc = mg_db_ping(db);
  if (rc) {
    tl_error_wrap(TL_ECONNECT, "mongodb '%s'", db->url.masked);
    mg_db_close(db);
    return TL_ECONNECT;
  }
  return 0;
}

/* ---- transactions ------------------------------------------------------------ */

static int mg_tx_begin(tl_db *db, tl_tx **out, const tl_tx_opts *o)
{
  (void)o;
  mg_tx *t = calloc(1, sizeof *t);
  if (!t) return tl_error_set(TL_ENOMEM, "out of memory");
  bson_error_t err;
  t->client = mongoc_client_pool_pop(MG(db)->pool);
  t->session = mongoc_client_start_session(t->client, NULL, &err);
  if (!t->session || !mongoc_client_session_start_transaction(t->session, NULL, &err)) {
    int rc = mg_fail(&err, NULL, "start transaction");
    if (t->session) mongoc_client_session_destroy(t->session);
    mongoc_client_pool_push(MG(db)->pool, t->client);
    free(t);
    return rc;
  }
  t->tx = (struct tl_tx){ .db = db, .doc = t, .active = true };
  *out = &t->tx;
  return 0;
}

static int mg_tx_end(tl_tx *tx, bool commit)
{
  mg_tx *t = tx->doc;
  bson_error_t err;
  bson_t reply;
  bool ok = commit ? mongoc_client_session_commit_transaction(t->session, &reply, &err)
                   : mongoc_client_session_abort_transaction(t->session, &err);
  int rc = 0;
  if (!ok) {
    rc = mg_fail(&err, commit ? &reply : NULL, commit ? "commit" : "abort");
    if (commit && mongoc_error_has_label(&reply, "UnknownTransactionCommitResult"))
      rc = tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "mongodb: commit outcome unknown: %s",
                       err.message);
  }
  if (commit) bson_destroy(&reply);
  mongoc_client_session_destroy(t->session);
  mongoc_client_pool_push(MG(tx->db)->pool, t->client);
  tx->active = false;
  free(t);
  return rc;
}

/* ---- operations ------------------------------------------------------------- */

/* A collection, on the transaction's client or one taken from the pool. */
typedef struct op {
  tl_db *db;
  mongoc_client_t *client; /* popped here, pushed back by op_end */
  mongoc_collection_t *coll;
  bson_t opts;
} op;

static int op_begin(op *o, tl_db *db, tl_tx *tx, const char *collection, const char *fn)
{
  tl__db_class_clear();
  memset(o, 0, sizeof *o);
  bson_init(&o->opts);
  if (!db || !collection || !*collection)
    return tl_error_set(TL_EINVAL, "%s: NULL database or collection", fn);
  if (!db->doc)
    return tl_error_set(TL_EUNSUPP, "%s: '%s' is an SQL database: use tl_db_*", fn, db->url.masked);
  if (tx && (!tx->active || !tx->doc))
    return tl_error_set(TL_EINVAL, "%s: not an open document transaction", fn);
  o->db = db;
  mongoc_client_t *c = tx ? ((mg_tx *)tx->doc)->client
                          : (o->client = mongoc_client_pool_pop(MG(db)->pool));
  o->coll = mongoc_client_get_collection(c, MG(db)->name, collection);
  bson_error_t err;
  if (tx && !mongoc_client_session_append(((mg_tx *)tx->doc)->session, &o->opts, &err))
    return mg_fail(&err, NULL, fn);
  return 0;
}

static void op_end(op *o)
{
  bson_destroy(&o->opts);
  if (o->coll) mongoc_collection_destroy(o->coll);
  if (o->client) mongoc_client_pool_push(MG(o->db)->pool, o->client);
}

static int parse(const char *json, const char *what, bson_t **out)
{
  if (!json) {
    *out = bson_new();
    return 0;
  }
  return tl__doc_from_json(json, what, (void **)out);
}

static int64_t reply_count(const bson_t *reply, const char *a, const char *b)
{
  bson_iter_t it;
  int64_t n = 0;
  if (a && bson_iter_init_find(&it, reply, a)) n += bson_iter_as_int64(&it);
  if (b && bson_iter_init_find(&it, reply, b)) n += bson_iter_as_int64(&it);
  return n;
}

/* The JSON text of one value: {"v": value} rendered, then unwrapped. */
static char *value_json(const bson_iter_t *it)
{
  bson_t tmp = BSON_INITIALIZER;
  bson_append_value(&tmp, "v", 1, bson_iter_value((bson_iter_t *)it));
  char *s = bson_as_relaxed_extended_json(&tmp, NULL);
  bson_destroy(&tmp);
  static const char pre[] = "{ \"v\" : ";
  size_t n = s ? strlen(s) : 0, k = sizeof pre - 1;
  char *out = n > k + 2 && strncmp(s, pre, k) == 0 ? strndup(s + k, n - k - 2) : NULL;
  bson_free(s);
  return out;
}

int tl_doc_insert(tl_db *db, tl_tx *tx, const char *collection, const char *json, char **id_json)
{
  if (id_json) *id_json = NULL;
  op o;
  bson_t *doc = NULL;
  int rc = op_begin(&o, db, tx, collection, "tl_doc_insert");
  if (rc == 0) rc = parse(json ? json : "", "the document", &doc);
  bson_iter_t it;
  if (rc == 0 && !bson_iter_init_find(&it, doc, "_id")) { /* _id first, as the server would */
    bson_t *with = bson_new();
    bson_oid_t oid;
    bson_oid_init(&oid, NULL);
    BSON_APPEND_OID(with, "_id", &oid);
    bson_concat(with, doc);
    bson_destroy(doc);
    doc = with;
  }
  if (rc == 0) {
    bson_error_t err;
    bson_t reply;
    if (!mongoc_collection_insert_one(o.coll, doc, &o.opts, &reply, &err))
      rc = mg_fail(&err, &reply, "insert");
    bson_destroy(&reply);
  }
  if (rc == 0 && id_json && bson_iter_init_find(&it, doc, "_id")) *id_json = value_json(&it);
  if (doc) bson_destroy(doc);
  op_end(&o);
  return rc;
}

int tl_doc_find(tl_db *db, tl_tx *tx, const char *collection, const char *filter,
                const tl_doc_find_opts *fo, tl_doc_cursor **out)
{
  op o;
  bson_t *f = NULL, *proj = NULL, *sort = NULL;
  if (out) *out = NULL;
  int rc = op_begin(&o, db, tx, collection, "tl_doc_find");
  if (rc == 0 && !out) rc = tl_error_set(TL_EINVAL, "tl_doc_find: NULL out");
  if (rc == 0) rc = parse(filter, "the filter", &f);
  if (rc == 0 && fo && fo->projection) rc = parse(fo->projection, "the projection", &proj);
  if (rc == 0 && fo && fo->sort) rc = parse(fo->sort, "the sort", &sort);
  if (rc == 0) {
    if (proj) BSON_APPEND_DOCUMENT(&o.opts, "projection", proj);
    if (sort) BSON_APPEND_DOCUMENT(&o.opts, "sort", sort);
    if (fo && fo->limit > 0) BSON_APPEND_INT64(&o.opts, "limit", fo->limit);
    if (fo && fo->skip > 0) BSON_APPEND_INT64(&o.opts, "skip", fo->skip);
    tl_doc_cursor *c = calloc(1, sizeof *c);
    if (!c) {
      rc = tl_error_set(TL_ENOMEM, "out of memory");
    } else {
      c->db = db;
      c->cur = mongoc_collection_find_with_opts(o.coll, f, &o.opts, NULL);
      c->coll = o.coll;
      c->client = o.client;
      o.coll = NULL; /* the cursor owns them now */
      o.client = NULL;
      *out = c;
    }
  }
  if (f) bson_destroy(f);
  if (proj) bson_destroy(proj);
  if (sort) bson_destroy(sort);
  op_end(&o);
  return rc;
}

int tl_doc_cursor_next(tl_doc_cursor *c, const char **json)
{
  tl__db_class_clear();
  if (!c || !json) return tl_error_set(TL_EINVAL, "tl_doc_cursor_next: NULL argument");
  bson_free(c->json);
  c->json = NULL;
  const bson_t *doc;
  if (mongoc_cursor_next(c->cur, &doc)) {
    c->json = bson_as_relaxed_extended_json(doc, NULL);
    *json = c->json;
    return 1;
  }
  bson_error_t err;
  const bson_t *reply;
  if (mongoc_cursor_error_document(c->cur, &err, &reply)) return mg_fail(&err, reply, "find");
  return 0;
}

void tl_doc_cursor_free(tl_doc_cursor *c)
{
  if (!c) return;
  bson_free(c->json);
  mongoc_cursor_destroy(c->cur);
  mongoc_collection_destroy(c->coll);
  if (c->client) mongoc_client_pool_push(MG(c->db)->pool, c->client);
  free(c);
}

int tl_doc_update(tl_db *db, tl_tx *tx, const char *collection, const char *filter,
                  const char *update, bool many, bool upsert, int64_t *modified)
{
  if (modified) *modified = 0;
  op o;
  bson_t *f = NULL, *u = NULL;
  int rc = op_begin(&o, db, tx, collection, "tl_doc_update");
  if (rc == 0) rc = parse(filter, "the filter", &f);
  if (rc == 0) rc = parse(update ? update : "", "the update", &u);
  if (rc == 0) {
    if (upsert) BSON_APPEND_BOOL(&o.opts, "upsert", true);
    bson_error_t err;
    bson_t reply;
    bool ok = many ? mongoc_collection_update_many(o.coll, f, u, &o.opts, &reply, &err)
                   : mongoc_collection_update_one(o.coll, f, u, &o.opts, &reply, &err);
    if (!ok) rc = mg_fail(&err, &reply, "update");
    else if (modified) *modified = reply_count(&reply, "modifiedCount", "upsertedCount");
    bson_destroy(&reply);
  }
  if (f) bson_destroy(f);
  if (u) bson_destroy(u);
  op_end(&o);
  return rc;
}

int tl_doc_delete(tl_db *db, tl_tx *tx, const char *collection, const char *filter, bool many,
                  int64_t *deleted)
{
  if (deleted) *deleted = 0;
  op o;
  bson_t *f = NULL;
  int rc = op_begin(&o, db, tx, collection, "tl_doc_delete");
  if (rc == 0) rc = parse(filter, "the filter", &f);
  if (rc == 0) {
    bson_error_t err;
    bson_t reply;
    bool ok = many ? mongoc_collection_delete_many(o.coll, f, &o.opts, &reply, &err)
                   : mongoc_collection_delete_one(o.coll, f, &o.opts, &reply, &err);
    if (!ok) rc = mg_fail(&err, &reply, "delete");
    else if (deleted) *deleted = reply_count(&reply, "deletedCount", NULL);
    bson_destroy(&reply);
  }
  if (f) bson_destroy(f);
  op_end(&o);
  return rc;
}

int tl_doc_count(tl_db *db, tl_tx *tx, const char *collection, const char *filter, int64_t *count)
{
  if (count) *count = 0;
  op o;
  bson_t *f = NULL;
  int rc = op_begin(&o, db, tx, collection, "tl_doc_count");
  if (rc == 0) rc = parse(filter, "the filter", &f);
  if (rc == 0) {
    bson_error_t err;
    bson_t reply;
    int64_t n = mongoc_collection_count_documents(o.coll, f, &o.opts, NULL, &reply, &err);
    if (n < 0) rc = mg_fail(&err, &reply, "count");
    else if (count) *count = n;
    bson_destroy(&reply);
  }
  if (f) bson_destroy(f);
  op_end(&o);
  return rc;
}

const tl__backend tl__mongo_backend = {
  .name = "mongodb",
  .dialect = TL_DB_MONGO,
  .db_open = mg_db_open,
  .db_close = mg_db_close,
  .db_ping = mg_db_ping,
  .tx_begin = mg_tx_begin,
  .tx_end = mg_tx_end,
};
