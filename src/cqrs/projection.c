/* Projections: a transactional subscription applying events to read-model
 * tables, and the rebuild that replays the log into fresh tables and swaps
 * them in while the live subscription is paused. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/cqrs.h>
#include <trellis/error.h>
#include <trellis/log.h>

struct tl_projection_tables {
  size_t n;
  const char *const *logical;
  char **physical;
};

struct tl_projection {
  tl_es *es;
  tl_projection_def def;
  tl_projection_tables live;
  tl_es_sub *sub;
  pthread_mutex_t rebuild_mu; /* one rebuild at a time */
};

const char *tl_projection_table(const tl_projection_tables *t, const char *logical)
{
  for (size_t i = 0; t && logical && i < t->n; i++)
    if (strcmp(t->logical[i], logical) == 0) return t->physical[i];
  return "unknown_projection_table";
}

static void tables_free(tl_projection_tables *t)
{
  for (size_t i = 0; t->physical && i < t->n; i++) free(t->physical[i]);
  free(t->physical);
  t->physical = NULL;
}

static int tables_make(const tl_projection_def *d, const char *suffix, tl_projection_tables *t)
{
  t->n = d->ntables;
  t->logical = d->tables;
  t->physical = calloc(d->ntables ? d->ntables : 1, sizeof *t->physical);
  if (!t->physical) return tl_error_set(TL_ENOMEM, "projection: out of memory");
  const char *prefix = d->table_prefix ? d->table_prefix : d->name;
  for (size_t i = 0; i < d->ntables; i++) {
    size_t len = strlen(prefix) + strlen(d->tables[i]) + strlen(suffix) + 2;
    t->physical[i] = malloc(len);
    if (!t->physical[i]) {
      tables_free(t);
      return tl_error_set(TL_ENOMEM, "projection: out of memory");
    }
    snprintf(t->physical[i], len, "%s_%s%s", prefix, d->tables[i], suffix);
  }
  return 0;
}

static int on_event(const tl_event *ev, tl_tx *tx, void *ctx)
{
  tl_projection *p = ctx;
  return p->def.handle(ev, tx, &p->live, p->def.ctx);
}

typedef struct create_job {
  tl_projection *p;
  tl_projection_tables *t;
} create_job;

static int create_fn(tl_tx *tx, void *ctx)
{
  create_job *j = ctx;
  return j->p->def.create(tx, j->t, j->p->def.ctx);
}

/* Ask the catalog rather than probe with a query, so that a missing
 * table is not counted as a database error. */
static bool table_exists(tl_db *db, const char *name)
{
  const char *sql;
  switch (tl_db_dialect_of(db)) {
  case TL_DB_SQLITE: sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1"; break;
  case TL_DB_POSTGRES: sql = "SELECT 1 WHERE to_regclass($1) IS NOT NULL"; break;
  default:
    sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
          "AND table_name = $1";
  }
  tl_rows *r;
  if (tl_db_query(db, &r, sql, TL_ARGS(tl_text(name))) != 0) {
    tl_error_clear();
    return false;
  }
  bool found = tl_rows_next(r) == 1;
  tl_rows_free(r);
  return found;
}

int tl_projection_start(tl_es *es, const tl_projection_def *def, tl_projection **out)
{
  if (!es || !def || !out || !def->name || !def->handle || !def->create ||
      (def->ntables && !def->tables))
    return tl_error_set(TL_EINVAL, "projection: a name, tables, create and handle are required");
  *out = NULL;
  tl_projection *p = calloc(1, sizeof *p);
  if (!p) return tl_error_set(TL_ENOMEM, "projection: out of memory");
  p->es = es;
  p->def = *def;
  pthread_mutex_init(&p->rebuild_mu, NULL);
  int rc = tables_make(def, "", &p->live);
  if (rc == 0 && def->ntables && !table_exists(tl_es_db(es), p->live.physical[0])) {
    create_job j = { p, &p->live };
    rc = tl_db_transact(tl_es_db(es), create_fn, &j, NULL);
  }
  if (rc == 0) {
    tl_es_sub_opts o = { .name = def->name, .filter = def->filter, .transactional = true,
                         .batch = def->batch, .lease_us = def->lease_us,
                         .poll_max_us = def->poll_max_us };
    rc = tl_es_subscribe(es, &o, on_event, p, &p->sub);
  }
  if (rc) {
    tables_free(&p->live);
    pthread_mutex_destroy(&p->rebuild_mu);
    free(p);
    return rc;
  }
  *out = p;
  return 0;
}

void tl_projection_stop(tl_projection *p)
{
  if (!p) return;
  tl_es_sub_stop(p->sub);
  tables_free(&p->live);
  pthread_mutex_destroy(&p->rebuild_mu);
  free(p);
}

int tl_projection_wait(tl_projection *p, int64_t timeout_us)
{
  if (!p) return tl_error_set(TL_EINVAL, "projection: NULL");
  int64_t end = tl_time_mono_us() + timeout_us;
  for (;;) {
    tl_es_checkpoint cp;
    tl_es_sub_checkpoint(p->sub, &cp);
    tl_event_list *l;
    int rc = tl_es_read_all(p->es, &cp, &p->def.filter, 1, &l);
    if (rc) return rc;
    size_t n = l->count;
    tl_event_list_free(l);
    if (n == 0 && tl_es_sub_is_leader(p->sub)) return 0;
    if (tl_time_mono_us() >= end)
      return tl_es_sub_is_leader(p->sub)
        ? tl_error_set(TL_ETIMEOUT, "projection '%s': not caught up in time", p->def.name)
        : tl_error_set(TL_EBUSY, "projection '%s': another replica holds the lease", p->def.name);
    tl_sleep_us(2000);
  }
}

typedef struct replay_job {
  tl_projection *p;
  tl_projection_tables *t;
  tl_event_list *l;
} replay_job;

static int replay_fn(tl_tx *tx, void *ctx)
{
  replay_job *j = ctx;
  for (size_t i = 0; i < j->l->count; i++) {
    int rc = j->p->def.handle(&j->l->events[i], tx, j->t, j->p->def.ctx);
    if (rc) return rc;
  }
  return 0;
}

/* Apply everything after `cp` to tables `t`, advancing `cp`. */
static int replay(tl_projection *p, tl_projection_tables *t, tl_es_checkpoint *cp)
{
  for (;;) {
    tl_event_list *l;
    int rc = tl_es_read_all(p->es, cp, &p->def.filter, p->def.batch ? p->def.batch : 512, &l);
    if (rc) return rc;
    if (l->count == 0) {
      tl_event_list_free(l);
      return 0;
    }
    replay_job j = { p, t, l };
    rc = tl_db_transact(tl_es_db(p->es), replay_fn, &j, NULL);
    if (rc == 0) *cp = (tl_es_checkpoint){ l->events[l->count - 1].tx, l->events[l->count - 1].position };
    tl_event_list_free(l);
    if (rc) return rc;
  }
}

static void drop_tables(tl_db *db, tl_projection_tables *t)
{
  for (size_t i = 0; i < t->n; i++) {
    char sql[300];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", t->physical[i]);
    tl_db_exec(db, NULL, sql, TL_NOARGS);
  }
}

typedef struct swap_job {
  tl_projection *p;
  tl_projection_tables *fresh;
  const tl_es_checkpoint *cp;
} swap_job;

static int swap_fn(tl_tx *tx, void *ctx)
{
  swap_job *j = ctx;
  char sql[700];
  for (size_t i = 0; i < j->fresh->n; i++) {
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", j->p->live.physical[i]);
    int rc = tl_tx_exec(tx, NULL, sql, TL_NOARGS);
    if (rc) return rc;
    snprintf(sql, sizeof sql, "ALTER TABLE %s RENAME TO %s", j->fresh->physical[i],
             j->p->live.physical[i]);
    if ((rc = tl_tx_exec(tx, NULL, sql, TL_NOARGS)) != 0) return rc;
  }
  return tl_tx_exec(tx, NULL, "UPDATE trellis_es_subscriptions SET tx = $1, position = $2 WHERE name = $3",
                    TL_ARGS(tl_int(j->cp->tx), tl_int(j->cp->position), tl_text(j->p->def.name)));
}

int tl_projection_rebuild(tl_projection *p)
{
  if (!p) return tl_error_set(TL_EINVAL, "projection: NULL");
  if (!tl_es_sub_is_leader(p->sub))
    return tl_error_set(TL_EBUSY, "projection '%s': rebuild needs the lease, another replica holds it",
                        p->def.name);
  pthread_mutex_lock(&p->rebuild_mu);
  tl_db *db = tl_es_db(p->es);
  /* A fresh suffix each time: PostgreSQL keeps index names across a
   * rename, so reusing one would collide with the last rebuild's. */
  char suffix[32];
  snprintf(suffix, sizeof suffix, "_rb%llx", (unsigned long long)(tl_time_now_us() % 0xffffffffffULL));
  tl_projection_tables fresh;
  int rc = tables_make(&p->def, suffix, &fresh);
  if (rc) {
    pthread_mutex_unlock(&p->rebuild_mu);
    return rc;
  }
  drop_tables(db, &fresh);
  create_job cj = { p, &fresh };
  tl_es_checkpoint cp = { 0, 0 };
  rc = tl_db_transact(db, create_fn, &cj, NULL);
  if (rc == 0) rc = replay(p, &fresh, &cp);
  bool paused = false;
  if (rc == 0) {
    tl_es_sub_pause(p->sub, true);
    paused = true;
    if (!tl_es_sub_is_leader(p->sub))
      rc = tl_error_set(TL_EBUSY, "projection '%s': lease lost during the rebuild", p->def.name);
  }
  if (rc == 0) rc = replay(p, &fresh, &cp);
  if (rc == 0) {
    swap_job sj = { p, &fresh, &cp };
    if (tl_db_dialect_of(db) == TL_DB_MYSQL) {
      /* DDL commits on its own there: swap the tables, then the checkpoint,
       * with the live subscription paused in between. */
      for (size_t i = 0; i < fresh.n && rc == 0; i++) {
        char sql[700];
        snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", p->live.physical[i]);
        rc = tl_db_exec(db, NULL, sql, TL_NOARGS);
        snprintf(sql, sizeof sql, "RENAME TABLE %s TO %s", fresh.physical[i], p->live.physical[i]);
        if (rc == 0) rc = tl_db_exec(db, NULL, sql, TL_NOARGS);
      }
      if (rc == 0)
        rc = tl_es_checkpoint_store(p->es, p->def.name, &cp);
    } else {
      rc = tl_db_transact(db, swap_fn, &sj, NULL);
    }
  }
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    drop_tables(db, &fresh);
    tl_error_set(rc, "projection '%s': rebuild: %s", p->def.name, msg);
  } else {
    tl_log(TL_LOG_INFO, "projection rebuilt", TL_F_STR("projection", p->def.name),
           TL_F_INT("position", cp.position));
  }
  if (paused) tl_es_sub_pause(p->sub, false);
  tables_free(&fresh);
  pthread_mutex_unlock(&p->rebuild_mu);
  return rc;
}
