/* Migrations: named, ordered sets registered by the modules that own them,
 * applied one per transaction and recorded in trellis_schema_migrations.
 * Concurrent runners (replicas starting together) serialize on a lock:
 * a session advisory lock on PostgreSQL, GET_LOCK on MariaDB/MySQL; on
 * SQLite each migration checks and applies inside one BEGIN IMMEDIATE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

typedef struct mig_set {
  char *name;
  const tl_migration *list;
  size_t count;
} mig_set;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static mig_set *sets; /* locks: reg_mu */
static size_t nsets, capsets;

int tl_db_migrations_register(const char *set, const tl_migration *list, size_t count)
{
  if (!set || !*set || (count && !list))
    return tl_error_set(TL_EINVAL, "migrations: a set needs a name and a list");
  for (size_t i = 0; i < count; i++) {
    if (list[i].version <= 0 || (i && list[i].version <= list[i - 1].version))
      return tl_error_set(TL_EINVAL, "migrations '%s': version %lld at index %zu is not "
                          "positive and increasing", set, (long long)list[i].version, i);
    if (!list[i].name)
      return tl_error_set(TL_EINVAL, "migrations '%s': version %lld has no name", set,
                          (long long)list[i].version);
  }
  pthread_mutex_lock(&reg_mu);
  int rc = 0;
  size_t i = 0;
  while (i < nsets && strcmp(sets[i].name, set) != 0) i++;
  if (i == nsets) {
    if (nsets == capsets) {
      size_t cap = capsets ? capsets * 2 : 8;
      mig_set *n = realloc(sets, cap * sizeof *n);
      if (!n) {
        pthread_mutex_unlock(&reg_mu);
        return tl_error_set(TL_ENOMEM, "out of memory");
      }
      sets = n;
      capsets = cap;
    }
    if (!(sets[i].name = strdup(set))) rc = tl_error_set(TL_ENOMEM, "out of memory");
    else nsets++;
  }
  if (rc == 0) {
    sets[i].list = list;
    sets[i].count = count;
  }
  pthread_mutex_unlock(&reg_mu);
  return rc;
}

/* The version table, in each dialect. */
static const char *version_table_sql(tl_db_dialect d)
{
  switch (d) {
  case TL_DB_POSTGRES:
    return "CREATE TABLE IF NOT EXISTS trellis_schema_migrations ("
           "set_name TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, "
           "applied_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (set_name, version))";
  case TL_DB_MYSQL:
    return "CREATE TABLE IF NOT EXISTS trellis_schema_migrations ("
           "set_name VARCHAR(191) NOT NULL, version BIGINT NOT NULL, "
           "name VARCHAR(255) NOT NULL, applied_at DATETIME(6) NOT NULL, "
           "PRIMARY KEY (set_name, version)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";
  default:
    return "CREATE TABLE IF NOT EXISTS trellis_schema_migrations ("
           "set_name TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, "
           "applied_at TIMESTAMP NOT NULL, PRIMARY KEY (set_name, version))";
  }
}

static const char *sql_for(const tl_migration *m, tl_db_dialect d)
{
  const char *s = d == TL_DB_POSTGRES ? m->sql_postgres
                  : d == TL_DB_MYSQL  ? m->sql_mysql
                  : d == TL_DB_SQLITE ? m->sql_sqlite : NULL;
  return s ? s : m->sql;
}

static int run_stmt(const char *stmt, size_t len, void *ctx)
{
  tl_conn *c = ctx;
  char *one = strndup(stmt, len);
  if (!one) return tl_error_set(TL_ENOMEM, "out of memory");
  int rc = c->be->exec_simple(c, one);
  free(one);
  return rc;
}

static int lock_runners(tl_conn *c, bool lock)
{
  tl_rows *r;
  const char *sql = NULL;
  if (c->be->dialect == TL_DB_POSTGRES)
    sql = lock ? "SELECT pg_advisory_lock(7598807758576447075)"
               : "SELECT pg_advisory_unlock(7598807758576447075)";
  else if (c->be->dialect == TL_DB_MYSQL)
    sql = lock ? "SELECT GET_LOCK('trellis_schema_migrations', 600)"
               : "SELECT RELEASE_LOCK('trellis_schema_migrations')";
  if (!sql) return 0;
  int rc = tl__conn_query(c, &r, sql, NULL, 0);
  if (rc) return rc;
  int64_t got = 1;
  if (tl_rows_next(r) == 1 && c->be->dialect == TL_DB_MYSQL) tl_rows_int(r, 0, &got);
  tl_rows_free(r);
  if (lock && got != 1)
    return tl_error_set(TL_ETIMEOUT, "migrations: another runner held the lock for 600 s");
  return 0;
}

static int applied_already(tl_conn *c, const char *set, int64_t version, bool *yes)
{
  tl_rows *r;
  int rc = tl__conn_query(c, &r, "SELECT 1 FROM trellis_schema_migrations "
                          "WHERE set_name = $1 AND version = $2",
                          TL_ARGS(tl_text(set), tl_int(version)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  tl_rows_free(r);
  if (rc < 0) return rc;
  *yes = rc == 1;
  return 0;
}

/* Apply one migration in its own transaction unless it is recorded. */
static int apply_one(tl_conn *c, const char *set, const tl_migration *m, bool *did)
{
  tl_db_dialect d = c->be->dialect;
  const char *sql = sql_for(m, d);
  *did = false;
  if (!sql)
    return tl_error_set(TL_EINVAL, "migration '%s' %lld '%s': no SQL for this database",
                        set, (long long)m->version, m->name);
  tl_tx_opts o = { 0 };
  bool yes = false;
  int rc = c->be->begin(c, &o);
  if (rc == 0) rc = applied_already(c, set, m->version, &yes);
  if (rc == 0 && !yes) {
    rc = tl__sql_split(d, sql, run_stmt, c);
    if (rc == 0)
      rc = tl__conn_exec(c, NULL, "INSERT INTO trellis_schema_migrations "
                         "(set_name, version, name, applied_at) VALUES ($1, $2, $3, $4)",
                         TL_ARGS(tl_text(set), tl_int(m->version), tl_text(m->name),
                                 tl_timestamp(tl_time_now_us())));
  }
  if (rc == 0) rc = c->be->exec_simple(c, "COMMIT");
  if (rc != 0) {
    tl_db_error_class cls = tl_db_error_last_class();
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    if (!c->broken && c->be->in_tx(c)) c->be->exec_simple(c, "ROLLBACK");
    tl__db_class_set(cls);
    return tl_error_set(rc, "migration '%s' %lld '%s': %s", set, (long long)m->version,
                        m->name, msg);
  }
  *did = !yes;
  if (*did)
    tl_log(TL_LOG_INFO, "migration applied", TL_F_STR("set", set),
           TL_F_INT("version", m->version), TL_F_STR("name", m->name));
  return 0;
}

int tl_db_migrate(tl_db *db, const char *set, int *applied)
{
  tl__db_class_clear();
  if (applied) *applied = 0;
  if (!db) return tl_error_set(TL_EINVAL, "tl_db_migrate: NULL database");
  if (!db->primary)
    return tl_error_set(TL_EUNSUPP, "migrations: '%s' is a document database", db->url.masked);
  /* Snapshot the registry so the lock isn't held while migrating. */
  pthread_mutex_lock(&reg_mu);
  size_t n = 0;
  mig_set *todo = calloc(nsets ? nsets : 1, sizeof *todo);
  for (size_t i = 0; todo && i < nsets; i++)
    if (!set || strcmp(sets[i].name, set) == 0) todo[n++] = sets[i];
  pthread_mutex_unlock(&reg_mu);
  if (!todo) return tl_error_set(TL_ENOMEM, "out of memory");
  if (set && n == 0) {
    free(todo);
    return tl_error_set(TL_ENOTFOUND, "migrations: no set named '%s' is registered", set);
  }
  tl_conn *c;
  int rc = tl_pool_get(db->primary, &c);
  if (rc) {
    free(todo);
    return rc;
  }
  bool locked = false;
  rc = lock_runners(c, true);
  if (rc == 0) {
    locked = true;
    rc = c->be->exec_simple(c, version_table_sql(c->be->dialect));
  }
  int count = 0;
  for (size_t s = 0; rc == 0 && s < n; s++) {
    for (size_t i = 0; rc == 0 && i < todo[s].count; i++) {
      bool did;
      rc = apply_one(c, todo[s].name, &todo[s].list[i], &did);
      count += did;
    }
  }
  if (rc) tl__conn_failed(c, rc);
  if (locked && !c->broken) {
    tl_db_error_class cls = tl_db_error_last_class();
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    lock_runners(c, false);
    if (rc) {
      tl_error_set(rc, "%s", msg);
      tl__db_class_set(cls);
    }
  }
  tl_pool_put(db->primary, c);
  free(todo);
  if (applied) *applied = count;
  return rc;
}
