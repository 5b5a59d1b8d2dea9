/* trellis: one API over PostgreSQL, MySQL/MariaDB and SQLite (SQL) and
 * MongoDB (documents), with transactions, a connection pool, read replicas
 * and migrations.
 *
 * Threads: a tl_db and its tl_pool are safe to share between threads. A
 * tl_tx, a tl_rows, a tl_conn and a tl_doc_cursor belong to one thread at
 * a time (hand them over, don't share them). */
#ifndef TRELLIS_DB_H
#define TRELLIS_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "resilience.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_db tl_db;       /* a database: primary pool + replicas */
typedef struct tl_pool tl_pool;   /* a pool of connections to one server */
typedef struct tl_conn tl_conn;   /* one connection taken from a pool */
typedef struct tl_tx tl_tx;       /* an open transaction */
typedef struct tl_rows tl_rows;   /* a streaming result cursor */

/* ---- values ---------------------------------------------------------- */

typedef enum tl_type {
  TL_TYPE_NULL = 0,
  TL_TYPE_BOOL,
  TL_TYPE_INT,       /* int64 */
  TL_TYPE_DOUBLE,
  TL_TYPE_TEXT,      /* UTF-8; NUL-terminated when read from a row */
  TL_TYPE_BLOB,      /* bytes, may contain NUL */
  TL_TYPE_TIMESTAMP, /* UTC, µs since 1970-01-01 (negative before) */
  TL_TYPE_JSON       /* JSON text */
} tl_type;

/* A typed value, for parameters and results. Text, JSON and blob point
 * at memory the value does not own: parameters borrow the caller's
 * memory for the duration of the call; results borrow the cursor's until
 * the next tl_rows_next() or tl_rows_free(). */
typedef struct tl_value {
  tl_type type;
  size_t len; /* bytes of text, JSON or blob */
  union {
    bool b;
    int64_t i; /* TL_TYPE_INT, and TL_TYPE_TIMESTAMP in µs */
    double d;
    const char *s;
    const void *p;
  };
} tl_value;

/* Value constructors, for TL_ARGS(). Strings are borrowed, not copied. */
static inline tl_value tl_null(void) { return (tl_value){ .type = TL_TYPE_NULL }; }
static inline tl_value tl_bool(bool b) { return (tl_value){ .type = TL_TYPE_BOOL, .b = b }; }
static inline tl_value tl_int(int64_t i) { return (tl_value){ .type = TL_TYPE_INT, .i = i }; }
static inline tl_value tl_double(double d) { return (tl_value){ .type = TL_TYPE_DOUBLE, .d = d }; }
/* NULL `s` gives a SQL NULL. */
static inline tl_value tl_text(const char *s)
{
  return s ? (tl_value){ .type = TL_TYPE_TEXT, .len = strlen(s), .s = s } : tl_null();
}
static inline tl_value tl_textn(const char *s, size_t n)
{
  return (tl_value){ .type = TL_TYPE_TEXT, .len = n, .s = s };
}
static inline tl_value tl_blob(const void *p, size_t n)
{
  return (tl_value){ .type = TL_TYPE_BLOB, .len = n, .p = p };
}
static inline tl_value tl_timestamp(int64_t us) { return (tl_value){ .type = TL_TYPE_TIMESTAMP, .i = us }; }
static inline tl_value tl_json(const char *json)
{
  return json ? (tl_value){ .type = TL_TYPE_JSON, .len = strlen(json), .s = json } : tl_null();
}

/* Positional arguments $1..$n: expands to "array, count".
 *   tl_db_query(db, &rows, "SELECT * FROM t WHERE a = $1", TL_ARGS(tl_int(7)));
 * TL_NOARGS passes none. */
#define TL_ARGS(...)                                   \
  (const tl_value[]){ __VA_ARGS__ },                   \
  (sizeof((const tl_value[]){ __VA_ARGS__ }) / sizeof(tl_value))
#define TL_NOARGS NULL, 0

/* "null", "bool", "int", "double", "text", "blob", "timestamp", "json". */
const char *tl_type_name(tl_type t);

/* ---- configuration and connection ----------------------------------- */

typedef enum tl_db_dialect {
  TL_DB_SQLITE = 1,
  TL_DB_POSTGRES,
  TL_DB_MYSQL, /* MySQL and MariaDB */
  TL_DB_MONGO
} tl_db_dialect;

/* Zero fields take the defaults shown. Durations are µs; a negative
 * duration means "never" (no timeout, no limit). Strings are copied by
 * tl_db_connect(). */
typedef struct tl_db_config {
  const char *url;              /* sqlite:///abs/path, sqlite://rel/path,
                                   sqlite::memory:, postgres[ql]://...,
                                   mysql://..., mariadb://..., mongodb://... */
  const char *read_urls;        /* replicas, comma-separated; NULL: none */
  const char *name;             /* label in metrics and logs; "default" */
  int max_connections;          /* per server; 10 (1 for sqlite::memory:) */
  int min_idle;                 /* kept open when idle; 0 */
  int64_t acquire_timeout_us;   /* wait for a free connection; 5 s;
                                   negative: fail at once with TL_EBUSY */
  int64_t idle_timeout_us;      /* close idle connections after; 10 min */
  int64_t max_lifetime_us;      /* close connections after, minus up to
                                   10% jitter; 30 min */
  int64_t statement_timeout_us; /* per statement; none */
  int64_t connect_timeout_us;   /* 10 s */
  int64_t validate_after_us;    /* ping a connection idle longer; 5 s */
  int64_t leak_threshold_us;    /* warn when one is held longer; 60 s */
  int64_t slow_query_us;        /* log statements slower than this; 1 s */
} tl_db_config;

/* Fill `out` from DATABASE_URL (required), DATABASE_READ_URLS,
 * DATABASE_MAX_CONNECTIONS, DATABASE_MIN_IDLE, DATABASE_ACQUIRE_TIMEOUT,
 * DATABASE_IDLE_TIMEOUT, DATABASE_MAX_LIFETIME and
 * DATABASE_STATEMENT_TIMEOUT. Strings are borrowed from `cfg`. Returns 0
 * or TL_EINVAL naming the key and the bad value (passwords masked). */
int tl_db_config_from(const tl_config *cfg, tl_db_config *out);

/* Open a database: parses the URL, creates the pools and opens one
 * connection to the primary to prove it is reachable. `cfg` is copied.
 * Returns 0, TL_EINVAL (bad URL or setting), TL_EUNSUPP (unknown scheme)
 * or TL_ECONNECT; the message names the URL with its password masked. */
int tl_db_connect(tl_db **out, const tl_db_config *cfg);

/* Close the pools and free the database. Every tl_rows, tl_tx, tl_conn
 * and tl_doc_cursor taken from it must be released first. NULL-safe. */
void tl_db_close(tl_db *db);

/* Which kind of server this is. */
tl_db_dialect tl_db_dialect_of(const tl_db *db);

/* Round trip to the primary. Returns 0, TL_ECONNECT or TL_ETIMEOUT. */
int tl_db_ping(tl_db *db);

/* ---- statements ------------------------------------------------------ */

/* Run a statement on the primary; `*affected` (may be NULL) gets the rows
 * changed. Parameters are $1..$n on every SQL backend; `args` borrowed for
 * the call. Returns 0 or a TL_E* code (see tl_db_error_last_class()). */
int tl_db_exec(tl_db *db, int64_t *affected, const char *sql,
               const tl_value *args, size_t nargs);

/* Run a query on the primary. `*out` is a cursor that holds a pooled
 * connection until tl_rows_free(); rows are streamed, not loaded at once.
 * Errors of the statement itself are returned here. */
int tl_db_query(tl_db *db, tl_rows **out, const char *sql,
                const tl_value *args, size_t nargs);

/* Same, for a read the caller marks read-only: round-robin over healthy
 * replicas (DATABASE_READ_URLS), the primary when none is healthy or none
 * is configured. A replica that fails to connect is skipped for a while. */
int tl_db_query_ro(tl_db *db, tl_rows **out, const char *sql,
                   const tl_value *args, size_t nargs);

/* Run one statement for each of `nrows` rows of `ncols` arguments
 * (`args` is row-major: nrows * ncols values), in one transaction, as fast
 * as the backend allows (PostgreSQL pipeline, MariaDB array binding,
 * SQLite prepared loop). All rows or none. `*affected` may be NULL. */
int tl_db_exec_many(tl_db *db, int64_t *affected, const char *sql,
                    const tl_value *args, size_t ncols, size_t nrows);

/* ---- result cursor (one thread at a time) ---------------------------- */

/* Advance to the next row: 1 when there is one, 0 at the end, or a
 * negative TL_E* code. Values read before are invalidated. */
int tl_rows_next(tl_rows *rows);

/* Number of columns, their names (borrowed until tl_rows_free()), and
 * their declared types. Where the server declares none (an SQLite
 * expression), the type is that of the current row's value. */
int tl_rows_column_count(const tl_rows *rows);
const char *tl_rows_column_name(const tl_rows *rows, int col);
tl_type tl_rows_column_type(const tl_rows *rows, int col);

/* Index of the column named `name` (exact match first, then ignoring
 * ASCII case), or TL_ENOTFOUND. */
int tl_rows_column_index(const tl_rows *rows, const char *name);

/* Is the column NULL in the current row? (false when out of range) */
bool tl_rows_is_null(tl_rows *rows, int col);

/* The current row's value in its natural type. Text, JSON and blobs are
 * borrowed until the next tl_rows_next() or tl_rows_free(). Returns 0,
 * TL_EINVAL (no current row or bad index). */
int tl_rows_get(tl_rows *rows, int col, tl_value *out);
/* By column name; TL_ENOTFOUND when there is no such column. */
int tl_rows_get_named(tl_rows *rows, const char *name, tl_value *out);

/* Typed getters: convert where lossless (an integral double or numeric
 * text to int, "t"/"true"/1 to bool, text to JSON, ISO text to a
 * timestamp). Return 0, TL_ENOTFOUND if the value is NULL, TL_EPROTO if it
 * does not convert, TL_EINVAL for a bad index. Text is borrowed as above. */
int tl_rows_int(tl_rows *rows, int col, int64_t *out);
int tl_rows_double(tl_rows *rows, int col, double *out);
int tl_rows_bool(tl_rows *rows, int col, bool *out);
int tl_rows_text(tl_rows *rows, int col, const char **out, size_t *len);
int tl_rows_blob(tl_rows *rows, int col, const void **out, size_t *len);
int tl_rows_timestamp(tl_rows *rows, int col, int64_t *out_us);

/* Close the cursor (unread rows are discarded) and give its connection
 * back. NULL-safe. */
void tl_rows_free(tl_rows *rows);

/* ---- transactions ---------------------------------------------------- */

typedef enum tl_isolation {
  TL_ISO_DEFAULT = 0, /* the server's default */
  TL_ISO_READ_COMMITTED,
  TL_ISO_REPEATABLE_READ,
  TL_ISO_SERIALIZABLE
} tl_isolation;

/* Options for a transaction; zero fields take defaults. */
typedef struct tl_tx_opts {
  tl_isolation isolation; /* SQLite is always serializable */
  bool read_only;         /* SQLite: a deferred BEGIN instead of IMMEDIATE */
  unsigned max_attempts;  /* tl_db_transact only: 5 */
  tl_backoff backoff;     /* tl_db_transact only: 5 ms base, 1 s cap */
} tl_tx_opts;

/* Begin a transaction on a primary connection. `*out` holds the
 * connection until tl_tx_commit() or tl_tx_rollback(). After a failed
 * statement the transaction accepts only rollback (or a rollback to a
 * savepoint), on every backend. Returns 0 or a TL_E* code. */
int tl_db_begin(tl_db *db, tl_tx **out);
/* Same, with options (may be NULL). */
int tl_db_begin_opts(tl_db *db, tl_tx **out, const tl_tx_opts *opts);

/* Statements inside the transaction; as tl_db_exec/query/exec_many. One
 * cursor at a time: free it (or read it to the end) before the next
 * statement, else TL_ESTATE. */
int tl_tx_exec(tl_tx *tx, int64_t *affected, const char *sql,
               const tl_value *args, size_t nargs);
int tl_tx_query(tl_tx *tx, tl_rows **out, const char *sql,
                const tl_value *args, size_t nargs);
int tl_tx_exec_many(tl_tx *tx, int64_t *affected, const char *sql,
                    const tl_value *args, size_t ncols, size_t nrows);

/* Commit and release the transaction (the handle is gone either way).
 * Returns 0, TL_ERETRY (serialization failure at commit), TL_ESTATE (an
 * earlier statement failed: rolled back instead) or TL_ECONNECT (outcome
 * unknown: the connection was lost during COMMIT). */
int tl_tx_commit(tl_tx *tx);
/* Roll back and release. NULL-safe; returns 0 or the rollback's error. */
int tl_tx_rollback(tl_tx *tx);

/* Call fn(ctx) once after the transaction commits (on the committing
 * thread, the connection already given back); a rollback forgets it. The
 * same fn and ctx registered again count once; up to 8 distinct hooks.
 * For work that must not run unless the writes are durable, such as
 * waking the readers of what was written. */
int tl_tx_on_commit(tl_tx *tx, void (*fn)(void *ctx), void *ctx);

/* Savepoints nest; `name` is an SQL identifier ([A-Za-z_][A-Za-z0-9_]*).
 * Rolling back to one clears an earlier failed statement. */
int tl_tx_savepoint(tl_tx *tx, const char *name);
int tl_tx_release(tl_tx *tx, const char *name);
int tl_tx_rollback_to(tl_tx *tx, const char *name);

/* Runs in a transaction; return 0 to commit, a negative code to roll back
 * (returned by tl_db_transact). Return TL_ERETRY, or pass on an error of a
 * tl_tx_* call, to have it retried. Runs on the caller's thread, maybe
 * several times: keep side effects outside the database idempotent. */
typedef int (*tl_tx_fn)(tl_tx *tx, void *ctx);

/* Run `fn` in a transaction and commit; on a serialization failure,
 * deadlock, busy database or a connection lost before COMMIT, roll back,
 * wait (backoff with jitter) and run it again, up to max_attempts. `opts`
 * may be NULL. Returns 0, fn's error, or the last retryable error. */
int tl_db_transact(tl_db *db, tl_tx_fn fn, void *ctx, const tl_tx_opts *opts);

/* ---- errors ---------------------------------------------------------- */

/* The finer class of this thread's last database error, mapped from
 * SQLSTATE, MySQL errno or SQLite extended codes. The status codes are:
 * unique → TL_ECONFLICT; foreign key, not null, check → TL_ECONSTRAINT;
 * serialization, deadlock, busy → TL_ERETRY; connection lost →
 * TL_ECONNECT; timeout → TL_ETIMEOUT; syntax → TL_EINVAL. */
typedef enum tl_db_error_class {
  TL_DB_ERR_NONE = 0,
  TL_DB_ERR_UNIQUE,
  TL_DB_ERR_FOREIGN_KEY,
  TL_DB_ERR_NOT_NULL,
  TL_DB_ERR_CHECK,
  TL_DB_ERR_SERIALIZATION,
  TL_DB_ERR_DEADLOCK,
  TL_DB_ERR_BUSY,
  TL_DB_ERR_CONNECTION_LOST,
  TL_DB_ERR_TIMEOUT,
  TL_DB_ERR_SYNTAX,    /* bad SQL, unknown table or column */
  TL_DB_ERR_OTHER
} tl_db_error_class;

/* Class of the last failing database call on this thread; TL_DB_ERR_NONE
 * after a success. Like tl_error_last(), valid until the next call. */
tl_db_error_class tl_db_error_last_class(void);

/* "unique", "foreign_key", "not_null", "check", "serialization",
 * "deadlock", "busy", "connection_lost", "timeout", "syntax", "other",
 * "none". */
const char *tl_db_error_class_name(tl_db_error_class c);

/* ---- pool ------------------------------------------------------------ */

/* The primary's pool. Borrowed; lives as long as `db`. */
tl_pool *tl_db_pool(tl_db *db);

/* Take a connection, waiting up to the acquire timeout, oldest waiter
 * first. Returns 0, TL_ETIMEOUT (none came free), TL_EBUSY (none free and
 * the timeout is negative), TL_ECONNECT or TL_ECLOSED. The connection is
 * the caller's until tl_pool_put(). Any thread. */
int tl_pool_get(tl_pool *pool, tl_conn **out);

/* Give a connection back: an open transaction is rolled back, a broken
 * connection is closed and replaced later. NULL-safe. Any thread. */
void tl_pool_put(tl_pool *pool, tl_conn *conn);

/* Statements on a connection taken with tl_pool_get(); as tl_db_exec and
 * tl_db_query. The cursor does not own the connection: free it before
 * tl_pool_put(). */
int tl_conn_exec(tl_conn *conn, int64_t *affected, const char *sql,
                 const tl_value *args, size_t nargs);
int tl_conn_query(tl_conn *conn, tl_rows **out, const char *sql,
                  const tl_value *args, size_t nargs);

/* A snapshot of a pool's counters. */
typedef struct tl_pool_stats {
  unsigned total;    /* open connections, including those being opened */
  unsigned in_use;
  unsigned idle;
  unsigned pending;  /* callers waiting in tl_pool_get() */
  uint64_t acquired; /* successful gets */
  uint64_t timeouts; /* gets that timed out */
  uint64_t created;  /* connections opened */
  uint64_t closed;   /* connections closed (idle, expired, broken) */
  uint64_t broken;   /* of those, found broken */
} tl_pool_stats;

/* Fill `out`. Any thread. */
void tl_pool_stats_get(tl_pool *pool, tl_pool_stats *out);

/* ---- migrations ------------------------------------------------------ */

/* One schema change. `sql` is used on every dialect whose own text is
 * NULL; a text may hold several statements separated by ';'. */
typedef struct tl_migration {
  int64_t version; /* > 0, increasing within a set */
  const char *name;
  const char *sql;
  const char *sql_postgres;
  const char *sql_mysql;
  const char *sql_sqlite;
} tl_migration;

/* Register a named, ordered set of migrations (the array and its strings
 * are borrowed for the life of the process: use static tables).
 * Registering the same name again replaces it. Returns 0, TL_EINVAL
 * (versions not increasing) or TL_ENOMEM. Any thread. */
int tl_db_migrations_register(const char *set, const tl_migration *list,
                              size_t count);

/* Apply the pending migrations of `set` (NULL: every registered set, in
 * registration order), each in its own transaction, recorded in the table
 * trellis_schema_migrations. Safe when several processes run it at once:
 * one applies, the others wait (PostgreSQL advisory lock, MariaDB
 * GET_LOCK, SQLite BEGIN IMMEDIATE). On MySQL, DDL commits implicitly.
 * `*applied` (may be NULL) gets the count applied by this call. */
int tl_db_migrate(tl_db *db, const char *set, int *applied);

/* ---- notifications (PostgreSQL LISTEN/NOTIFY) ------------------------ */

/* A connection of its own, subscribed to one channel. One thread uses a
 * listener at a time. */
typedef struct tl_db_listener tl_db_listener;

/* LISTEN on `channel` (an identifier: letters, digits, '_'). Returns 0,
 * TL_EUNSUPP on databases without LISTEN/NOTIFY (poll there instead),
 * TL_EINVAL, or a connection error. Close with tl_db_listener_close(). */
int tl_db_listen(tl_db *db, const char *channel, tl_db_listener **out);

/* Wait up to `timeout_us` for a notification: 1 with its payload copied
 * (truncated to `size`), 0 on timeout, TL_ECONNECT when the connection
 * was lost (the next call reconnects; notifications sent meanwhile are
 * gone, so re-read the state you were waiting on). */
int tl_db_listener_wait(tl_db_listener *l, int64_t timeout_us, char *payload,
                        size_t size);
void tl_db_listener_close(tl_db_listener *l);

/* NOTIFY `channel` with `payload` (delivered when the statement commits;
 * inside a transaction use "SELECT pg_notify($1, $2)" on it). Elsewhere
 * it does nothing and returns 0. */
int tl_db_notify(tl_db *db, const char *channel, const char *payload);

/* ---- MongoDB documents ----------------------------------------------- */

/* Documents are JSON text in and out (MongoDB Extended JSON, relaxed:
 * {"$oid": ...}, {"$date": ...}, {"$numberLong": ...}). Pass a `tx` from
 * tl_db_begin() on a MongoDB database to run inside its session's
 * transaction, or NULL. SQL calls on a MongoDB database return
 * TL_EUNSUPP, and these on a SQL database too. */
typedef struct tl_doc_cursor tl_doc_cursor;

/* Insert one document. `*id_json` (may be NULL) gets its _id as JSON,
 * freed with tl_free(); an _id is generated when the document has none.
 * Returns 0, TL_EPROTO (bad JSON), TL_ECONFLICT (duplicate key), or
 * another TL_E* code with its class in tl_db_error_last_class(). */
int tl_doc_insert(tl_db *db, tl_tx *tx, const char *collection,
                  const char *json, char **id_json);

typedef struct tl_doc_find_opts {
  const char *projection; /* JSON, or NULL */
  const char *sort;       /* JSON such as {"age":-1}, or NULL */
  int64_t limit;          /* 0: no limit */
  int64_t skip;
} tl_doc_find_opts;

/* Find documents matching `filter` (JSON; NULL or "{}" for all). `opts`
 * may be NULL. `*out` is freed with tl_doc_cursor_free(). */
int tl_doc_find(tl_db *db, tl_tx *tx, const char *collection,
                const char *filter, const tl_doc_find_opts *opts,
                tl_doc_cursor **out);

/* Next document as JSON, borrowed until the next call: 1, 0 at the end,
 * or a negative code. */
int tl_doc_cursor_next(tl_doc_cursor *cur, const char **json);
/* NULL-safe; gives the client back to the pool. */
void tl_doc_cursor_free(tl_doc_cursor *cur);

/* Apply `update` (an update document such as {"$set":{...}}) to the first
 * match, or every match when `many`; upsert inserts when none matches.
 * `*modified` (may be NULL) gets the count modified (or upserted). */
int tl_doc_update(tl_db *db, tl_tx *tx, const char *collection,
                  const char *filter, const char *update, bool many,
                  bool upsert, int64_t *modified);

/* Delete the first match, or every match when `many`. */
int tl_doc_delete(tl_db *db, tl_tx *tx, const char *collection,
                  const char *filter, bool many, int64_t *deleted);

/* Count the documents matching `filter` (NULL: all). */
int tl_doc_count(tl_db *db, tl_tx *tx, const char *collection,
                 const char *filter, int64_t *count);

#ifdef __cplusplus
}
#endif
#endif
