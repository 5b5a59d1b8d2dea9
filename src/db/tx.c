/* Transactions, savepoints and tl_db_transact's retry loop. A transaction
 * is embedded in the connection it runs on, so beginning one allocates
 * nothing. After a failed statement only a rollback (or a rollback to a
 * savepoint) is accepted, on every backend, as PostgreSQL does. */
#include <stdio.h>
#include <string.h>

#include "db/db_int.h"

static bool is_doc(const tl_tx *tx) { return tx->doc != NULL; }

int tl_db_begin_opts(tl_db *db, tl_tx **out, const tl_tx_opts *opts)
{
  tl__db_class_clear();
  if (!db || !out) return tl_error_set(TL_EINVAL, "tl_db_begin: NULL argument");
  *out = NULL;
  tl_tx_opts none = { 0 };
  if (!opts) opts = &none;
  if (db->be->tx_begin) return db->be->tx_begin(db, out, opts);
  tl_conn *c;
  int rc = tl_pool_get(db->primary, &c);
  if (rc) return rc;
  if ((rc = c->be->begin(c, opts)) != 0) {
    tl__conn_failed(c, rc);
    tl_pool_put(db->primary, c);
    return rc;
  }
  c->tx = (tl_tx){ .db = db, .conn = c, .pool = db->primary, .active = true };
  *out = &c->tx;
  return 0;
}

int tl_db_begin(tl_db *db, tl_tx **out) { return tl_db_begin_opts(db, out, NULL); }

/* Entry checks for a statement in `tx`. */
static int tx_entry(tl_tx *tx, const char *sql, const char *fn)
{
  tl__db_class_clear();
  if (!tx || !tx->active || !sql)
    return tl_error_set(TL_EINVAL, "%s: %s", fn, !tx || !tx->active ? "no open transaction"
                                                                   : "NULL sql");
  if (is_doc(tx))
    return tl_error_set(TL_EUNSUPP, "%s: a document transaction has no SQL", fn);
  if (tx->failed)
    return tl_error_set(TL_ESTATE, "%s: the transaction is aborted by an earlier "
                        "error: roll it back (or back to a savepoint)", fn);
  return 0;
}

/* A statement failed: the server's errors abort the transaction. */
static int tx_failed(tl_tx *tx, int rc)
{
  if (rc && tl_db_error_last_class() != TL_DB_ERR_NONE) tx->failed = true;
  return rc;
}

int tl_tx_exec(tl_tx *tx, int64_t *affected, const char *sql,
               const tl_value *args, size_t nargs)
{
  int rc = tx_entry(tx, sql, "tl_tx_exec");
  return rc ? rc : tx_failed(tx, tl__conn_exec(tx->conn, affected, sql, args, nargs));
}

int tl_tx_query(tl_tx *tx, tl_rows **out, const char *sql,
                const tl_value *args, size_t nargs)
{
  int rc = tx_entry(tx, sql, "tl_tx_query");
  if (rc) return rc;
  if (!out) return tl_error_set(TL_EINVAL, "tl_tx_query: NULL out");
  if ((rc = tl__conn_query(tx->conn, out, sql, args, nargs)) != 0) return tx_failed(tx, rc);
  (*out)->tx = tx;
  return 0;
}

int tl_tx_exec_many(tl_tx *tx, int64_t *affected, const char *sql,
                    const tl_value *args, size_t ncols, size_t nrows)
{
  int rc = tx_entry(tx, sql, "tl_tx_exec_many");
  return rc ? rc
            : tx_failed(tx, tl__conn_exec_many(tx->conn, affected, sql, args, ncols, nrows));
}

/* Give the connection back and forget the transaction. */
static void tx_release(tl_tx *tx)
{
  tl_conn *c = tx->conn;
  tl_pool *p = tx->pool;
  if (c->rows.open) {
    c->rows.release_to = NULL;
    tl_rows_free(&c->rows);
  }
  tx->active = false;
  tl_pool_put(p, c);
}

/* Roll back without touching this thread's error state unless it fails. */
static int tx_abort(tl_tx *tx)
{
  tl_conn *c = tx->conn;
  int rc = 0;
  if (c->rows.open) {
    c->rows.release_to = NULL;
    tl_rows_free(&c->rows);
  }
  if (!c->broken && c->be->in_tx(c) && (rc = c->be->exec_simple(c, "ROLLBACK")) != 0) {
    c->broken = true;
    tl__conn_failed(c, rc);
  }
  tx_release(tx);
  return rc;
}

int tl_tx_on_commit(tl_tx *tx, void (*fn)(void *ctx), void *ctx)
{
  if (!tx || !tx->active || !fn)
    return tl_error_set(TL_EINVAL, "tl_tx_on_commit: %s", !fn ? "NULL function"
                                                              : "no open transaction");
  for (unsigned i = 0; i < tx->n_on_commit; i++)
    if (tx->on_commit[i].fn == fn && tx->on_commit[i].ctx == ctx) return 0;
  if (tx->n_on_commit == TL__TX_HOOKS)
    return tl_error_set(TL_ETOOBIG, "tl_tx_on_commit: more than %d distinct hooks", TL__TX_HOOKS);
  tx->on_commit[tx->n_on_commit++] = (tl__tx_hook){ fn, ctx };
  return 0;
}

/* Run the hooks saved before the handle went away. */
static void run_hooks(const tl__tx_hook *h, unsigned n)
{
  for (unsigned i = 0; i < n; i++) h[i].fn(h[i].ctx);
}

int tl_tx_commit(tl_tx *tx)
{
  tl__db_class_clear();
  if (!tx || !tx->active) return tl_error_set(TL_EINVAL, "tl_tx_commit: no open transaction");
  tl__tx_hook hooks[TL__TX_HOOKS];
  unsigned nhooks = tx->n_on_commit;
  memcpy(hooks, tx->on_commit, nhooks * sizeof *hooks);
  if (is_doc(tx)) {
    int rc = tx->db->be->tx_end(tx, true);
    if (rc == 0) run_hooks(hooks, nhooks);
    return rc;
  }
  if (tx->failed) {
    tx_abort(tx);
    return tl_error_set(TL_ESTATE, "commit: the transaction was rolled back because "
                        "a statement in it failed");
  }
  tl_conn *c = tx->conn;
  if (c->rows.open) {
    c->rows.release_to = NULL;
    tl_rows_free(&c->rows);
  }
  int rc = c->be->exec_simple(c, "COMMIT");
  if (rc != 0) {
    tl__conn_failed(c, rc);
    tl_db_error_class cls = tl_db_error_last_class();
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    if (!c->broken && c->be->in_tx(c)) tx_abort(tx);
    else tx_release(tx);
    tl__db_class_set(cls);
    return tl_error_set(rc, "commit: %s", msg);
  }
  tx_release(tx);
  run_hooks(hooks, nhooks);
  return 0;
}

int tl_tx_rollback(tl_tx *tx)
{
  tl__db_class_clear();
  if (!tx || !tx->active) return 0;
  if (is_doc(tx)) return tx->db->be->tx_end(tx, false);
  return tx_abort(tx);
}

static int savepoint_op(tl_tx *tx, const char *name, const char *verb, bool restores)
{
  tl__db_class_clear();
  if (!tx || !tx->active) return tl_error_set(TL_EINVAL, "%s: no open transaction", verb);
  if (is_doc(tx)) return tl_error_set(TL_EUNSUPP, "%s: no savepoints in documents", verb);
  if (!tl__sql_ident_ok(name))
    return tl_error_set(TL_EINVAL, "%s: '%s' is not a plain identifier", verb,
                        name ? name : "(null)");
  if (tx->failed && !restores)
    return tl_error_set(TL_ESTATE, "%s: the transaction is aborted by an earlier error", verb);
  tl_conn *c = tx->conn;
  if (c->rows.open) {
    c->rows.release_to = NULL;
    tl_rows_free(&c->rows);
  }
  char sql[96];
  snprintf(sql, sizeof sql, "%s %s", verb, name);
  int rc = c->be->exec_simple(c, sql);
  if (rc != 0) return tx_failed(tx, tl__conn_failed(c, rc));
  if (restores) tx->failed = false;
  return 0;
}

int tl_tx_savepoint(tl_tx *tx, const char *name)
{
  return savepoint_op(tx, name, "SAVEPOINT", false);
}

int tl_tx_release(tl_tx *tx, const char *name)
{
  return savepoint_op(tx, name, "RELEASE SAVEPOINT", false);
}

int tl_tx_rollback_to(tl_tx *tx, const char *name)
{
  return savepoint_op(tx, name, "ROLLBACK TO SAVEPOINT", true);
}

/* ---- retries ------------------------------------------------------------- */

int tl_db_transact(tl_db *db, tl_tx_fn fn, void *ctx, const tl_tx_opts *opts)
{
  if (!db || !fn) return tl_error_set(TL_EINVAL, "tl_db_transact: NULL argument");
  tl_tx_opts o = opts ? *opts : (tl_tx_opts){ 0 };
  unsigned attempts = o.max_attempts ? o.max_attempts : 5;
  tl_backoff bo = o.backoff;
  if (!bo.base_us) bo.base_us = 5000;
  if (!bo.cap_us) bo.cap_us = 1000000;
  for (unsigned a = 0;; a++) {
    tl_tx *tx;
    bool at_commit = false;
    int rc = tl_db_begin_opts(db, &tx, &o);
    if (rc == 0) {
      rc = fn(tx, ctx);
      if (rc == 0) {
        at_commit = true;
        rc = tl_tx_commit(tx);
      } else if (tx->active) {
        tl_db_error_class cls = tl_db_error_last_class();
        if (is_doc(tx)) tx->db->be->tx_end(tx, false);
        else tx_abort(tx);
        tl__db_class_set(cls);
      }
    }
    if (rc == 0) return 0;
    tl_db_error_class cls = tl_db_error_last_class();
    /* A lost connection before COMMIT means nothing was applied; during
     * COMMIT the outcome is unknown, so that is not retried. */
    bool retry = rc == TL_ERETRY ||
                 (!at_commit && (cls == TL_DB_ERR_CONNECTION_LOST || rc == TL_ECONNECT));
    if (!retry || a + 1 >= attempts) return rc;
    int64_t wait = tl_backoff_delay(&bo, a);
    tl_log(TL_LOG_DEBUG, "database transaction retried", TL_F_INT("attempt", a + 1),
           TL_F_STR("class", tl_db_error_class_name(cls)), TL_F_INT("wait_us", wait));
    tl_sleep_us(wait);
  }
}
