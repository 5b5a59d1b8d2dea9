/* The front end: configuration, connecting, statement calls on the primary,
 * read-only routing to replicas. Validation, error counting and logging
 * happen here once for every backend. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

/* Adding a backend is adding its file and one line here. */
static const tl__backend *const backends[] = {
  &tl__sqlite_backend,
  &tl__postgres_backend,
  &tl__mysql_backend,
  &tl__mongo_backend,
};

static const tl__backend *backend_for(tl_db_dialect d)
{
  for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
    if (backends[i]->dialect == d) return backends[i];
  return NULL;
}

/* ---- configuration ----------------------------------------------------- */

static int64_t pick(int64_t v, int64_t def, int64_t never)
{
  return v == 0 ? def : v < 0 ? never : v;
}

static int resolve(const tl_db_config *cfg, const tl__url *u, tl__db_opts *o)
{
  memset(o, 0, sizeof *o);
  snprintf(o->name, sizeof o->name, "%s", cfg->name && *cfg->name ? cfg->name : "default");
  if (cfg->max_connections < 0 || cfg->min_idle < 0)
    return tl_error_set(TL_EINVAL, "database '%s': max_connections and min_idle "
                        "must not be negative", u->masked);
  o->max_connections = cfg->max_connections ? cfg->max_connections : 10;
  o->min_idle = cfg->min_idle;
  if (o->min_idle > o->max_connections)
    return tl_error_set(TL_EINVAL, "database '%s': min_idle %d is more than "
                        "max_connections %d", u->masked, o->min_idle, o->max_connections);
  o->acquire_timeout_us = pick(cfg->acquire_timeout_us, 5000000, -1);
  o->idle_timeout_us = pick(cfg->idle_timeout_us, 600000000, 0);
  o->max_lifetime_us = pick(cfg->max_lifetime_us, 1800000000, 0);
  o->statement_timeout_us = pick(cfg->statement_timeout_us, 0, 0);
  o->connect_timeout_us = pick(cfg->connect_timeout_us, 10000000, 0);
  o->validate_after_us = pick(cfg->validate_after_us, 5000000, -1);
  o->leak_threshold_us = pick(cfg->leak_threshold_us, 60000000, 0);
  o->slow_query_us = pick(cfg->slow_query_us, 1000000, 0);
  if (u->memory) { /* one private database per connection: keep exactly one */
    o->max_connections = 1;
    o->min_idle = 0;
    o->idle_timeout_us = 0;
    o->max_lifetime_us = 0;
    o->validate_after_us = -1;
  }
  return 0;
}

/* Call fn for each item of a comma-separated URL list, trimmed. */
static int each_url(const char *list, int (*fn)(const char *url, int idx, void *ctx),
                    void *ctx)
{
  int idx = 0;
  const char *p = list;
  while (p && *p) {
    size_t n = strcspn(p, ",");
    const char *s = p, *e = p + n;
    while (s < e && (*s == ' ' || *s == '\t')) s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if (e > s) {
      char *item = strndup(s, (size_t)(e - s));
      if (!item) return tl_error_set(TL_ENOMEM, "out of memory");
      int rc = fn(item, idx++, ctx);
      free(item);
      if (rc) return rc;
    }
    p += n;
    if (*p == ',') p++;
  }
  return 0;
}

static int check_read_url(const char *url, int idx, void *ctx)
{
  tl_db_dialect want = *(tl_db_dialect *)ctx;
  tl__url u;
  int rc = tl__url_parse(url, &u);
  if (rc) return tl_error_wrap(rc, "DATABASE_READ_URLS item %d", idx + 1);
  if (u.dialect != want)
    rc = tl_error_set(TL_EINVAL, "DATABASE_READ_URLS item %d: '%s' is not the "
                      "same kind of database as DATABASE_URL", idx + 1, u.masked);
  tl__url_free(&u);
  return rc;
}

int tl_db_config_from(const tl_config *cfg, tl_db_config *out)
{
  memset(out, 0, sizeof *out);
  if (!cfg) return tl_error_set(TL_EINVAL, "tl_db_config_from: NULL config");
  const char *url = NULL, *reads = NULL;
  int rc = tl_config_string(cfg, "DATABASE_URL", NULL, &url);
  if (rc) return rc;
  if (!url || !*url)
    return tl_error_set(TL_EINVAL, "DATABASE_URL: not set (expected sqlite:///path, "
                        "postgres://..., mysql://... or mongodb://...)");
  tl__url u;
  if ((rc = tl__url_parse(url, &u)) != 0) return tl_error_wrap(rc, "DATABASE_URL");
  tl_db_dialect d = u.dialect;
  tl__url_free(&u);
  if ((rc = tl_config_string(cfg, "DATABASE_READ_URLS", NULL, &reads)) != 0) return rc;
  if (reads && *reads && (rc = each_url(reads, check_read_url, &d)) != 0) return rc;

  int64_t max, min_idle, acq, idle, life, stmt;
  if ((rc = tl_config_int(cfg, "DATABASE_MAX_CONNECTIONS", 10, 1, 10000, &max)) ||
      (rc = tl_config_int(cfg, "DATABASE_MIN_IDLE", 0, 0, 10000, &min_idle)) ||
      (rc = tl_config_duration(cfg, "DATABASE_ACQUIRE_TIMEOUT", 5000000, &acq)) ||
      (rc = tl_config_duration(cfg, "DATABASE_IDLE_TIMEOUT", 600000000, &idle)) ||
      (rc = tl_config_duration(cfg, "DATABASE_MAX_LIFETIME", 1800000000, &life)) ||
      (rc = tl_config_duration(cfg, "DATABASE_STATEMENT_TIMEOUT", 0, &stmt)))
    return rc;
  if (min_idle > max)
    return tl_error_set(TL_EINVAL, "DATABASE_MIN_IDLE: %lld is more than "
                        "DATABASE_MAX_CONNECTIONS (%lld)", (long long)min_idle, (long long)max);
  out->url = url;
  out->read_urls = reads && *reads ? reads : NULL;
  out->max_connections = (int)max;
  out->min_idle = (int)min_idle;
  /* In the environment "0" means "none": no wait, no limit. */
  out->acquire_timeout_us = acq ? acq : -1;
  out->idle_timeout_us = idle ? idle : -1;
  out->max_lifetime_us = life ? life : -1;
  out->statement_timeout_us = stmt ? stmt : -1;
  return 0;
}

/* ---- connect and close ------------------------------------------------- */

typedef struct {
  tl_db *db;
  const tl_db_config *cfg;
} replica_ctx;

static int add_replica(const char *url, int idx, void *ctx)
{
  replica_ctx *rc_ = ctx;
  tl_db *db = rc_->db;
  tl__url *u = &db->replica_urls[idx];
  int rc = tl__url_parse(url, u);
  if (rc) return tl_error_wrap(rc, "read url %d", idx + 1);
  db->nreplicas = (size_t)idx + 1;
  if (u->dialect != db->url.dialect)
    return tl_error_set(TL_EINVAL, "read url %d '%s': not the same kind of database "
                        "as '%s'", idx + 1, u->masked, db->url.masked);
  char role[24];
  snprintf(role, sizeof role, "replica%d", idx);
  tl__db_opts o;
  if ((rc = resolve(rc_->cfg, u, &o)) != 0) return rc;
  tl_breaker_config bc = { .failure_threshold = 1, .open_us = 5000000, .half_open_max = 1 };
  if ((rc = tl_breaker_new(&db->breakers[idx], &bc)) != 0) return rc;
  return tl__pool_new(&db->replicas[idx], db->be, u, role, &o);
}

static int count_url(const char *url, int idx, void *ctx)
{
  (void)url;
  (void)idx;
  (*(size_t *)ctx)++;
  return 0;
}

int tl_db_connect(tl_db **out, const tl_db_config *cfg)
{
  tl__db_class_clear();
  if (!out || !cfg) return tl_error_set(TL_EINVAL, "tl_db_connect: NULL argument");
  *out = NULL;
  tl_db *db = calloc(1, sizeof *db);
  if (!db) return tl_error_set(TL_ENOMEM, "out of memory");
  int rc = tl__url_parse(cfg->url, &db->url);
  if (rc) {
    free(db);
    return rc;
  }
  db->be = backend_for(db->url.dialect);
  if ((rc = resolve(cfg, &db->url, &db->opts)) != 0) goto fail;
  if (db->be->db_open) {
    if ((rc = db->be->db_open(db, cfg)) != 0) goto fail;
    *out = db;
    return 0;
  }
  if ((rc = tl__pool_new(&db->primary, db->be, &db->url, "primary", &db->opts)) != 0)
    goto fail;
  size_t n = 0;
  each_url(cfg->read_urls, count_url, &n);
  if (n) {
    db->replicas = calloc(n, sizeof *db->replicas);
    db->replica_urls = calloc(n, sizeof *db->replica_urls);
    db->breakers = calloc(n, sizeof *db->breakers);
    if (!db->replicas || !db->replica_urls || !db->breakers) {
      rc = tl_error_set(TL_ENOMEM, "out of memory");
      goto fail;
    }
    replica_ctx rctx = { db, cfg };
    if ((rc = each_url(cfg->read_urls, add_replica, &rctx)) != 0) goto fail;
  }
  /* Prove the primary is reachable now rather than at the first query. */
  tl_conn *c;
  if ((rc = tl_pool_get(db->primary, &c)) != 0) goto fail;
  tl_pool_put(db->primary, c);
  tl_log(TL_LOG_INFO, "database connected", TL_F_STR("name", db->opts.name),
         TL_F_STR("url", db->url.masked), TL_F_INT("replicas", (int64_t)db->nreplicas),
         TL_F_INT("max_connections", db->opts.max_connections));
  *out = db;
  return 0;
fail:
  tl_db_close(db);
  return rc;
}

void tl_db_close(tl_db *db)
{
  if (!db) return;
  if (db->be && db->be->db_close) db->be->db_close(db);
  for (size_t i = 0; i < db->nreplicas; i++) {
    tl__pool_free(db->replicas[i]);
    tl_breaker_free(db->breakers[i]);
    tl__url_free(&db->replica_urls[i]);
  }
  free(db->replicas);
  free(db->breakers);
  free(db->replica_urls);
  tl__pool_free(db->primary);
  tl__url_free(&db->url);
  free(db);
}

tl_db_dialect tl_db_dialect_of(const tl_db *db) { return db ? db->url.dialect : 0; }

tl_pool *tl_db_pool(tl_db *db) { return db ? db->primary : NULL; }

/* ---- statements ---------------------------------------------------------- */

/* Common entry checks; the MongoDB database has no SQL. */
static int sql_entry(tl_db *db, const char *sql, const char *fn)
{
  tl__db_class_clear();
  if (!db || !sql) return tl_error_set(TL_EINVAL, "%s: NULL argument", fn);
  if (!db->primary)
    return tl_error_set(TL_EUNSUPP, "%s: '%s' is a document database: use tl_doc_*",
                        fn, db->url.masked);
  return 0;
}

int tl_db_ping(tl_db *db)
{
  tl__db_class_clear();
  if (!db) return tl_error_set(TL_EINVAL, "tl_db_ping: NULL database");
  if (db->be->db_ping) return db->be->db_ping(db);
  tl_conn *c;
  int rc = tl_pool_get(db->primary, &c);
  if (rc) return rc;
  if ((rc = c->be->ping(c)) != 0) rc = tl__conn_failed(c, rc);
  tl_pool_put(db->primary, c);
  return rc;
}

int tl_db_exec(tl_db *db, int64_t *affected, const char *sql,
               const tl_value *args, size_t nargs)
{
  int rc = sql_entry(db, sql, "tl_db_exec");
  if (rc) return rc;
  tl_conn *c;
  if ((rc = tl_pool_get(db->primary, &c)) != 0) return rc;
  rc = tl__conn_exec(c, affected, sql, args, nargs);
  tl_pool_put(db->primary, c);
  return rc;
}

static int query_on(tl_pool *p, tl_rows **out, const char *sql,
                    const tl_value *args, size_t nargs)
{
  tl_conn *c;
  int rc = tl_pool_get(p, &c);
  if (rc) return rc;
  if ((rc = tl__conn_query(c, out, sql, args, nargs)) != 0) {
    tl_pool_put(p, c);
    return rc;
  }
  (*out)->release_to = p;
  return 0;
}

int tl_db_query(tl_db *db, tl_rows **out, const char *sql,
                const tl_value *args, size_t nargs)
{
  int rc = sql_entry(db, sql, "tl_db_query");
  if (rc) return rc;
  if (!out) return tl_error_set(TL_EINVAL, "tl_db_query: NULL out");
  *out = NULL;
  return query_on(db->primary, out, sql, args, nargs);
}

int tl_db_query_ro(tl_db *db, tl_rows **out, const char *sql,
                   const tl_value *args, size_t nargs)
{
  int rc = sql_entry(db, sql, "tl_db_query_ro");
  if (rc) return rc;
  if (!out) return tl_error_set(TL_EINVAL, "tl_db_query_ro: NULL out");
  *out = NULL;
  size_t n = db->nreplicas;
  unsigned start = n ? atomic_fetch_add_explicit(&db->rr, 1, memory_order_relaxed) : 0;
  for (size_t k = 0; k < n; k++) {
    size_t i = (start + k) % n;
    if (!tl_breaker_allow(db->breakers[i])) continue;
    rc = query_on(db->replicas[i], out, sql, args, nargs);
    /* Only an unreachable replica counts against it; SQL errors are ours. */
    if (rc == TL_ECONNECT || (rc == TL_ETIMEOUT && tl_db_error_last_class() == TL_DB_ERR_NONE)) {
      tl_breaker_failure(db->breakers[i]);
      tl_log(TL_LOG_WARN, "database replica skipped", TL_F_STR("name", db->opts.name),
             TL_F_STR("url", db->replica_urls[i].masked), TL_F_STR("error", tl_error_last()));
      continue;
    }
    tl_breaker_success(db->breakers[i]);
    return rc;
  }
  tl__db_class_clear();
  return query_on(db->primary, out, sql, args, nargs);
}

int tl_db_exec_many(tl_db *db, int64_t *affected, const char *sql,
                    const tl_value *args, size_t ncols, size_t nrows)
{
  int rc = sql_entry(db, sql, "tl_db_exec_many");
  if (rc) return rc;
  tl_tx *tx;
  if ((rc = tl_db_begin(db, &tx)) != 0) return rc;
  if ((rc = tl_tx_exec_many(tx, affected, sql, args, ncols, nrows)) != 0) {
    tl_db_error_class cls = tl_db_error_last_class();
    tl_tx_rollback(tx);
    tl__db_class_set(cls);
    return rc;
  }
  return tl_tx_commit(tx);
}

/* ---- statements on a connection of the caller's ------------------------ */

int tl_conn_exec(tl_conn *c, int64_t *affected, const char *sql,
                 const tl_value *args, size_t nargs)
{
  tl__db_class_clear();
  if (!c || !sql) return tl_error_set(TL_EINVAL, "tl_conn_exec: NULL argument");
  return tl__conn_exec(c, affected, sql, args, nargs);
}

int tl_conn_query(tl_conn *c, tl_rows **out, const char *sql,
                  const tl_value *args, size_t nargs)
{
  tl__db_class_clear();
  if (!c || !sql || !out) return tl_error_set(TL_EINVAL, "tl_conn_query: NULL argument");
  return tl__conn_query(c, out, sql, args, nargs);
}
