/* Internal interfaces of the database module: the backend table, the
 * connection and cursor structs, URL parsing, the $n scanner, the
 * statement cache and the error taxonomy. */
#ifndef TRELLIS_DB_INT_H
#define TRELLIS_DB_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "core/core_int.h"
#include "trellis/clock.h"
#include "trellis/config.h"
#include "trellis/db.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/resilience.h"

typedef struct tl__backend tl__backend;

/* ---- URL ------------------------------------------------------------- */

typedef struct tl__url {
  tl_db_dialect dialect;
  char *raw;      /* as given */
  char *masked;   /* password replaced by *** (for messages and logs) */
  char *user;     /* decoded; NULL when absent */
  char *password; /* decoded; NULL when absent */
  char *host;     /* NULL when absent */
  int port;       /* 0 when absent */
  char *path;     /* database name, or the SQLite file path */
  char *query;    /* text after '?', undecoded; NULL when absent */
  bool memory;    /* sqlite::memory: */
} tl__url;

/* Parse `text`. Errors name the masked URL: "database url
 * 'postgres://u:***@h': ...". Returns 0, TL_EINVAL, TL_EUNSUPP, TL_ENOMEM. */
int tl__url_parse(const char *text, tl__url *out);
void tl__url_free(tl__url *u);
/* The decoded value of query parameter `key`, into `buf`; NULL if absent. */
const char *tl__url_param(const tl__url *u, const char *key, char *buf,
                          size_t size);

/* ---- the $n scanner -------------------------------------------------- */

enum { TL__SQL_END = 0, TL__SQL_PARAM, TL__SQL_SEMI, TL__SQL_QMARK };

/* Move from *pos to the next placeholder $n, top-level ';' or bare '?',
 * skipping string literals, quoted identifiers, comments and (PostgreSQL)
 * dollar-quoted bodies, by the rules of `dialect`. Sets *start and *pos around the
 * token and *num to n for a placeholder. Returns the token kind. */
int tl__sql_next(tl_db_dialect dialect, const char *sql, size_t len,
                 size_t *pos, size_t *start, long *num);

/* Translate $n for `dialect`: PostgreSQL keeps them, SQLite gets ?n,
 * MySQL gets ? with map[k] = the argument index of the k-th '?'.
 * `*out` is malloc'd (caller frees); `*map` too (MySQL only, else NULL).
 * Returns 0, TL_EINVAL ($0, a bare '?', over 65535) or TL_ENOMEM. */
int tl__sql_translate(tl_db_dialect dialect, const char *sql, size_t len,
                      char **out, int *nparams, uint16_t **map, int *nrefs);

/* Call fn for each statement of a script (split at top-level ';',
 * blank statements skipped); stops at fn's first non-zero return. */
int tl__sql_split(tl_db_dialect dialect, const char *sql,
                  int (*fn)(const char *stmt, size_t len, void *ctx),
                  void *ctx);

/* ---- values ---------------------------------------------------------- */

/* Convert `in` to type `want` where lossless (see the tl_rows_* getters).
 * Returns 0, TL_ENOTFOUND (NULL) or TL_EPROTO. */
int tl__value_convert(const tl_value *in, tl_type want, tl_value *out);

/* Parse "YYYY-MM-DD[ T]HH:MM:SS[.f...][Z|+HH[:MM]|-HH[:MM]]" (a date
 * alone is midnight; no offset means UTC; a trailing " BC" is honoured).
 * Returns 0 or TL_EPROTO. */
int tl__ts_parse(const char *s, size_t len, int64_t *out_us);
/* "YYYY-MM-DD HH:MM:SS.ffffff" (UTC, no zone); `buf` needs 32 bytes. */
size_t tl__ts_format(int64_t us, char *buf, size_t size);
/* Civil UTC fields of `us`, and back. */
void tl__ts_to_civil(int64_t us, int *y, int *mo, int *d, int *h, int *mi,
                     int *s, int *usec);
int64_t tl__ts_from_civil(int y, int mo, int d, int h, int mi, int s,
                          int usec);

/* Parse a whole decimal int64 (optional sign); 0 or TL_EPROTO. */
int tl__parse_i64(const char *s, size_t len, int64_t *out);

/* ---- errors ---------------------------------------------------------- */

/* Set the message and class for this thread; returns the class's status. */
int tl__db_fail(tl_db_error_class cls, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Set only the class (the message already set). Returns status. */
int tl__db_class_set(tl_db_error_class cls);
void tl__db_class_clear(void);
int tl__db_class_status(tl_db_error_class cls);
tl_db_error_class tl__class_from_sqlstate(const char *state);
tl_db_error_class tl__class_from_mysql(unsigned err);
tl_db_error_class tl__class_from_sqlite(int extended);
/* A MongoDB server error code (network errors are classed by the caller). */
tl_db_error_class tl__class_from_mongo(unsigned code);

/* ---- statement cache ------------------------------------------------- */

typedef struct tl__stmt {
  struct tl__stmt *next; /* hash chain */
  uint64_t hash;
  uint64_t last_use;
  size_t len;
  char *sql;            /* the caller's text (the key) */
  uint8_t *types;       /* argument types, for backends that key by them */
  void *b;              /* the backend's prepared statement */
  uint16_t *map;        /* MySQL: argument index of each '?' */
  int nparams;          /* highest $n */
  int nrefs;            /* entries in map */
  int ncols;            /* -1 until described */
  char **colnames;      /* one allocation holding names too */
  tl_type *coltypes;    /* declared types; TL_TYPE_NULL: per value */
} tl__stmt;

#define TL__STMT_BUCKETS 128
#define TL__STMT_MAX 64

typedef struct tl__stmt_cache {
  tl__stmt *bucket[TL__STMT_BUCKETS];
  uint64_t tick;
  int count;
} tl__stmt_cache;

/* Set the column names and declared types of `st` (copied). */
int tl__stmt_describe(tl__stmt *st, int ncols,
                      const char *(*name)(void *ctx, int i),
                      tl_type (*type)(void *ctx, int i), void *ctx);

/* ---- connections, cursors, transactions ------------------------------ */

struct tl_rows {
  tl_conn *conn;
  tl__stmt *st;
  tl_pool *release_to; /* give the connection back on free, or NULL */
  tl_tx *tx;           /* the transaction it runs in, or NULL */
  int state;           /* 0 before the first row, 1 on a row, 2 done */
  bool open;
  bool pending;        /* the backend fetched the first row already */
  int64_t started_us;
};

#define TL__TX_HOOKS 8
typedef struct tl__tx_hook {
  void (*fn)(void *ctx);
  void *ctx;
} tl__tx_hook;

struct tl_tx {
  tl_db *db;
  tl_conn *conn;       /* SQL: the connection it runs on */
  tl_pool *pool;
  void *doc;           /* MongoDB: the session state */
  bool failed;         /* a statement failed; only rollback is allowed */
  bool active;
  tl__tx_hook on_commit[TL__TX_HOOKS]; /* run after a successful commit */
  unsigned n_on_commit;
};

struct tl_conn {
  const tl__backend *be;
  tl_pool *pool;
  tl__stmt_cache cache;
  struct tl_rows rows;   /* the one cursor a connection can have open */
  struct tl_tx tx;       /* the one transaction it can have open */
  tl_conn *next;         /* idle stack link */
  int64_t created_us;
  int64_t expires_us;    /* 0: never */
  int64_t idle_since_us;
  int64_t acquired_us;
  int64_t stmt_timeout_us;
  int slot;              /* index in the pool's table */
  bool broken;           /* lost or unusable: close, don't reuse */
  bool in_use;
  bool leak_warned;
};

/* What a backend gets to open a connection. */
typedef struct tl__target {
  const tl__url *url;
  const char *name;            /* the database's name in logs and metrics */
  const char *role;            /* "primary", "replica0", ... */
  int64_t connect_timeout_us;
  int64_t statement_timeout_us;
} tl__target;

/* A backend: one file fills one of these. Connections are the backend's
 * own structs with a struct tl_conn as first member. Statement functions
 * get a described or undescribed cached statement; args are checked
 * against st->nparams by the front end. Failures call tl__db_fail() and
 * set conn->broken when the connection is unusable. */
struct tl__backend {
  const char *name;
  tl_db_dialect dialect;
  bool key_types;  /* prepared statements depend on argument types */
  int (*connect)(const tl__target *t, tl_conn **out);
  void (*disconnect)(tl_conn *c);
  int (*ping)(tl_conn *c);
  bool (*in_tx)(tl_conn *c);
  /* Run SQL without parameters or results (BEGIN, DDL, one-offs). */
  int (*exec_simple)(tl_conn *c, const char *sql);
  /* Start a transaction with these options (never NULL). */
  int (*begin)(tl_conn *c, const tl_tx_opts *o);
  int (*prepare)(tl_conn *c, tl__stmt *st, const char *sql,
                 const tl_value *args, size_t nargs);
  void (*finalize)(tl_conn *c, tl__stmt *st);
  int (*exec)(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs,
              int64_t *affected);
  /* Inside a transaction the front end opened. */
  int (*exec_many)(tl_conn *c, tl__stmt *st, const tl_value *args,
                   size_t ncols, size_t nrows, int64_t *affected);
  /* Start the cursor c->rows; fetch up to the first row (rows->pending). */
  int (*query)(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs);
  int (*next)(tl_rows *r);            /* 1 row, 0 end, <0 error */
  int (*get)(tl_rows *r, int col, tl_value *out);
  void (*rows_close)(tl_rows *r);     /* discard the rest */
  /* LISTEN/NOTIFY (PostgreSQL only; NULL elsewhere). listen subscribes
   * the connection to a channel (a checked identifier); wait_notify waits
   * up to timeout_us: 1 with the payload copied, 0 on timeout, <0 when
   * the connection broke. */
  int (*listen)(tl_conn *c, const char *channel);
  int (*wait_notify)(tl_conn *c, int64_t timeout_us, char *payload, size_t size);
  /* Documents (MongoDB only; NULL elsewhere). */
  int (*db_open)(tl_db *db, const tl_db_config *cfg);
  void (*db_close)(tl_db *db);
  int (*db_ping)(tl_db *db);
  int (*tx_begin)(tl_db *db, tl_tx **out, const tl_tx_opts *o);
  int (*tx_end)(tl_tx *tx, bool commit);
};

extern const tl__backend tl__sqlite_backend;
extern const tl__backend tl__postgres_backend;
extern const tl__backend tl__mysql_backend;
extern const tl__backend tl__mongo_backend;

/* Settings with defaults resolved. */
typedef struct tl__db_opts {
  char name[64];
  int max_connections;
  int min_idle;
  int64_t acquire_timeout_us;
  int64_t idle_timeout_us;     /* <= 0: never */
  int64_t max_lifetime_us;     /* <= 0: never */
  int64_t statement_timeout_us;
  int64_t connect_timeout_us;
  int64_t validate_after_us;
  int64_t leak_threshold_us;   /* <= 0: off */
  int64_t slow_query_us;       /* <= 0: off */
} tl__db_opts;

struct tl_db {
  const tl__backend *be;
  tl__url url;
  tl__db_opts opts;
  tl_pool *primary;
  tl_pool **replicas;
  tl__url *replica_urls;
  tl_breaker **breakers;
  size_t nreplicas;
  atomic_uint rr;
  void *doc; /* MongoDB: the client pool and database name */
};

/* ---- pool (pool.c) ---------------------------------------------------- */

int tl__pool_new(tl_pool **out, const tl__backend *be, const tl__url *url,
                 const char *role, const tl__db_opts *o);
void tl__pool_free(tl_pool *p);
/* Count an error of class `cls` against the pool's metrics. */
void tl__pool_count_error(tl_pool *p, tl_db_error_class cls);
const tl__db_opts *tl__pool_opts(const tl_pool *p);
const char *tl__pool_role(const tl_pool *p);

/* ---- the shared statement path (db.c) -------------------------------- */

/* Check out of the cache (preparing on a miss) the statement for `sql`. */
int tl__conn_stmt(tl_conn *c, const char *sql, const tl_value *args,
                  size_t nargs, tl__stmt **out);
/* Finalize every cached statement (before closing a connection). */
void tl__conn_cache_clear(tl_conn *c);
/* Roll back whatever transaction is open; marks it broken on failure. */
int tl__conn_reset(tl_conn *c);
/* The statement paths shared by tl_db_*, tl_tx_* and tl_conn_*. They
 * count errors, mark lost connections broken and log slow statements. */
int tl__conn_exec(tl_conn *c, int64_t *affected, const char *sql,
                  const tl_value *args, size_t nargs);
int tl__conn_query(tl_conn *c, tl_rows **out, const char *sql,
                   const tl_value *args, size_t nargs);
int tl__conn_exec_many(tl_conn *c, int64_t *affected, const char *sql,
                       const tl_value *args, size_t ncols, size_t nrows);
/* After a failure on `c`: count it, mark the connection broken when lost.
 * Returns rc. */
int tl__conn_failed(tl_conn *c, int rc);
/* Free one cached statement (finalizing it on `c`). */
void tl__stmt_free(tl_conn *c, tl__stmt *st);

/* A coarse monotonic clock (a few ms resolution, a few ns per call) for
 * pool bookkeeping; precise clocks are for measured durations. */
static inline int64_t tl__mono_coarse_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Is `name` a plain SQL identifier (savepoints, lock names)? */
bool tl__sql_ident_ok(const char *name);


/* ---- MongoDB JSON <-> BSON (mongo.c) --------------------------------- */

/* JSON text to a BSON document (a `bson_t *` as void*, free with
 * tl__doc_bson_free). Returns 0 or TL_EPROTO naming `what`. */
int tl__doc_from_json(const char *json, const char *what, void **out);
/* BSON document to relaxed Extended JSON, malloc'd (tl_free). */
char *tl__doc_to_json(const void *bson);
void tl__doc_bson_free(void *bson);

#endif
