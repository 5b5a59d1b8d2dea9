/* MySQL/MariaDB backend (libmariadb), on server-side prepared statements
 * with the binary protocol; results are fetched unbuffered (streamed).
 * Sessions run with time_zone '+00:00', ANSI_QUOTES (so "name" is an
 * identifier as on the other backends) and CLIENT_FOUND_ROWS (rows matched,
 * as elsewhere). exec_many uses MariaDB's array binding (one round trip per
 * batch) and falls back to a loop where the server lacks it. */
#include <errmsg.h>
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

#define SMALL 256      /* inline result buffer per column */
#define BULK_BATCH 1000

typedef struct my_col {
  unsigned long len;
  my_bool is_null, error;
  enum enum_field_types ftype; /* what the server sent */
  unsigned flags;
  tl_type type;                /* declared */
  union {
    int64_t i;
    double d;
    MYSQL_TIME t;
    char small[SMALL];
  } u;
  tl__buf big;                 /* when the value outgrew `small` */
  bool in_big;
} my_col;

typedef struct my_stmt {
  MYSQL_STMT *st;
  unsigned nparams;
  MYSQL_BIND *pbind;
  MYSQL_TIME *ptime;
  char *pbool;
  unsigned ncols; /* bound result columns */
  MYSQL_BIND *rbind;
  my_col *cols;
} my_stmt;

typedef struct my_conn {
  struct tl_conn base;
  MYSQL *my;
  my_stmt *cur;
  int first;
} my_conn;

#define MY(c) ((my_conn *)(c))

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static void lib_init(void) { mysql_library_init(0, NULL, NULL); }

/* ---- errors ---------------------------------------------------------------- */

static int fail_with(my_conn *m, unsigned err, const char *msg, const char *state)
{
  tl_db_error_class cls = tl__class_from_mysql(err);
  if (cls == TL_DB_ERR_CONNECTION_LOST) m->base.broken = true;
  return tl__db_fail(cls, "mysql: %s (errno %u, SQLSTATE %s)", msg, err, state);
}

static int my_fail(my_conn *m)
{
  return fail_with(m, mysql_errno(m->my), mysql_error(m->my), mysql_sqlstate(m->my));
}

static int stmt_fail(my_conn *m, MYSQL_STMT *st)
{
  return fail_with(m, mysql_stmt_errno(st), mysql_stmt_error(st), mysql_stmt_sqlstate(st));
}

/* ---- connection ------------------------------------------------------------ */

static int my_exec_simple(tl_conn *c, const char *sql)
{
  my_conn *m = MY(c);
  if (mysql_real_query(m->my, sql, strlen(sql)) != 0) return my_fail(m);
  do {
    MYSQL_RES *res = mysql_store_result(m->my);
    if (!res && mysql_field_count(m->my) != 0) return my_fail(m);
    mysql_free_result(res);
  } while (mysql_next_result(m->my) == 0);
  return 0;
}

static int my_connect(const tl__target *t, tl_conn **out)
{
  pthread_once(&lib_once, lib_init);
  const tl__url *u = t->url;
  MYSQL *my = mysql_init(NULL);
  if (!my) return tl_error_set(TL_ENOMEM, "out of memory");
  unsigned timeout = (unsigned)(t->connect_timeout_us > 0 ? (t->connect_timeout_us + 999999) / 1000000 : 0);
  my_bool no = 0;
  if (timeout) mysql_optionsv(my, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
  mysql_optionsv(my, MYSQL_OPT_RECONNECT, &no);
  mysql_optionsv(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  if (!mysql_real_connect(my, u->host ? u->host : "localhost", u->user, u->password, u->path,
                          (unsigned)u->port, NULL, CLIENT_FOUND_ROWS)) {
    tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "mysql '%s': cannot connect: %s", u->masked,
                mysql_error(my));
    mysql_close(my);
    return TL_ECONNECT;
  }
  my_conn *m = calloc(1, sizeof *m);
  if (!m) {
    mysql_close(my);
    return tl_error_set(TL_ENOMEM, "out of memory");
  }
  m->my = my;
  char setup[256];
  int n = snprintf(setup, sizeof setup, "SET time_zone = '+00:00', sql_mode = "
                   "CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'ANSI_QUOTES')");
  if (t->statement_timeout_us > 0) /* MariaDB's name; MySQL's is max_execution_time */
    snprintf(setup + n, sizeof setup - (size_t)n, ", max_statement_time = %.6f",
             (double)t->statement_timeout_us / 1e6);
  int rc = my_exec_simple(&m->base, setup);
  if (rc && t->statement_timeout_us > 0 && mysql_errno(my) == 1193) {
    snprintf(setup + n, sizeof setup - (size_t)n, ", max_execution_time = %lld",
             (long long)(t->statement_timeout_us / 1000));
    rc = my_exec_simple(&m->base, setup);
  }
  if (rc) {
    tl_error_wrap(TL_ECONNECT, "mysql '%s': session setup", u->masked);
    tl__db_class_set(TL_DB_ERR_CONNECTION_LOST);
    mysql_close(my);
    free(m);
    return TL_ECONNECT;
  }
  *out = &m->base;
  return 0;
}

static void my_disconnect(tl_conn *c)
{
  mysql_close(MY(c)->my);
  free(c);
}

static int my_ping(tl_conn *c)
{
  if (mysql_ping(MY(c)->my) == 0) return 0;
  c->broken = true;
  return my_fail(MY(c));
}

static bool my_in_tx(tl_conn *c)
{
  unsigned status = 0;
  mariadb_get_infov(MY(c)->my, MARIADB_CONNECTION_SERVER_STATUS, &status);
  return status & SERVER_STATUS_IN_TRANS;
}

static int my_begin(tl_conn *c, const tl_tx_opts *o)
{
  static const char *const iso[] = { NULL, "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE" };
  if ((unsigned)o->isolation < 4 && iso[o->isolation]) {
    char sql[80];
    snprintf(sql, sizeof sql, "SET TRANSACTION ISOLATION LEVEL %s", iso[o->isolation]);
    int rc = my_exec_simple(c, sql);
    if (rc) return rc;
  }
  return my_exec_simple(c, o->read_only ? "START TRANSACTION READ ONLY" : "START TRANSACTION");
}

/* ---- statements ------------------------------------------------------------ */

static void stmt_destroy(my_stmt *s)
{
  if (!s) return;
  if (s->st) mysql_stmt_close(s->st);
  for (unsigned i = 0; i < s->ncols; i++) tl__buf_free(&s->cols[i].big);
  free(s->pbind);
  free(s->ptime);
  free(s->pbool);
  free(s->rbind);
  free(s->cols);
  free(s);
}

static int my_prepare(tl_conn *c, tl__stmt *st, const char *sql,
                      const tl_value *args, size_t nargs)
{
  (void)args;
  (void)nargs;
  my_conn *m = MY(c);
  my_stmt *s = calloc(1, sizeof *s);
  if (!s || !(s->st = mysql_stmt_init(m->my))) {
    free(s);
    return tl_error_set(TL_ENOMEM, "out of memory");
  }
  if (mysql_stmt_prepare(s->st, sql, strlen(sql)) != 0) {
    int rc = stmt_fail(m, s->st);
    stmt_destroy(s);
    return rc;
  }
  s->nparams = (unsigned)mysql_stmt_param_count(s->st);
  if (s->nparams != (unsigned)st->nrefs) {
    stmt_destroy(s);
    return tl_error_set(TL_EINVAL, "mysql: the server counts %u parameters, the text has %d",
                        s->nparams, st->nrefs);
  }
  if (s->nparams) {
    s->pbind = calloc(s->nparams, sizeof *s->pbind);
    s->ptime = calloc(s->nparams, sizeof *s->ptime);
    s->pbool = calloc(s->nparams, 1);
    if (!s->pbind || !s->ptime || !s->pbool) {
      stmt_destroy(s);
      return tl_error_set(TL_ENOMEM, "out of memory");
    }
  }
  st->b = s;
  return 0;
}

static void my_finalize(tl_conn *c, tl__stmt *st)
{
  (void)c;
  stmt_destroy(st->b);
}

static void to_mysql_time(int64_t us, MYSQL_TIME *t)
{
  int y, mo, d, h, mi, s, usec;
  tl__ts_to_civil(us, &y, &mo, &d, &h, &mi, &s, &usec);
  *t = (MYSQL_TIME){ .year = (unsigned)y, .month = (unsigned)mo, .day = (unsigned)d,
                     .hour = (unsigned)h, .minute = (unsigned)mi, .second = (unsigned)s,
                     .second_part = (unsigned long)usec, .time_type = MYSQL_TIMESTAMP_DATETIME };
}

/* One MYSQL_BIND for one value; `k` indexes the statement's scratch. */
static int bind_one(my_stmt *s, unsigned k, const tl_value *a, MYSQL_BIND *b)
{
  memset(b, 0, sizeof *b);
  switch (a->type) {
  case TL_TYPE_NULL: b->buffer_type = MYSQL_TYPE_NULL; return 0;
  case TL_TYPE_BOOL:
    s->pbool[k] = a->b;
    b->buffer_type = MYSQL_TYPE_TINY;
    b->buffer = &s->pbool[k];
    return 0;
  case TL_TYPE_INT: b->buffer_type = MYSQL_TYPE_LONGLONG; b->buffer = (void *)&a->i; return 0;
  case TL_TYPE_DOUBLE: b->buffer_type = MYSQL_TYPE_DOUBLE; b->buffer = (void *)&a->d; return 0;
  case TL_TYPE_TEXT:
  case TL_TYPE_JSON:
  case TL_TYPE_BLOB:
    b->buffer_type = a->type == TL_TYPE_BLOB ? MYSQL_TYPE_BLOB : MYSQL_TYPE_STRING;
    b->buffer = (void *)(a->len ? a->p : "");
    b->buffer_length = (unsigned long)a->len;
    return 0;
  case TL_TYPE_TIMESTAMP:
    to_mysql_time(a->i, &s->ptime[k]);
    b->buffer_type = MYSQL_TYPE_DATETIME;
    b->buffer = &s->ptime[k];
    return 0;
  default:
    return tl_error_set(TL_EINVAL, "sql argument: unknown type %d", (int)a->type);
  }
}

static int bind_params(my_conn *m, tl__stmt *st, const tl_value *args)
{
  my_stmt *s = st->b;
  if (!s->nparams) return 0;
  for (unsigned k = 0; k < s->nparams; k++) {
    int rc = bind_one(s, k, &args[st->map[k]], &s->pbind[k]);
    if (rc) return rc;
  }
  return mysql_stmt_bind_param(s->st, s->pbind) ? stmt_fail(m, s->st) : 0;
}

static int my_exec(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs,
                   int64_t *affected)
{
  (void)nargs;
  my_conn *m = MY(c);
  my_stmt *s = st->b;
  int rc = bind_params(m, st, args);
  if (rc) return rc;
  if (mysql_stmt_execute(s->st) != 0) return stmt_fail(m, s->st);
  if (mysql_stmt_field_count(s->st) > 0) { /* rows nobody asked for: read, keep errors */
    rc = mysql_stmt_store_result(s->st) ? stmt_fail(m, s->st) : 0;
    mysql_stmt_free_result(s->st);
    if (rc) return rc;
  }
  unsigned long long n = mysql_stmt_affected_rows(s->st);
  *affected += n == (unsigned long long)-1 ? 0 : (int64_t)n;
  return 0;
}

/* Column-wise array binding of up to BULK_BATCH rows; TL_EUNSUPP when the
 * rows don't fit it (mixed types in a column), to fall back to a loop. */
static int bulk(my_conn *m, tl__stmt *st, const tl_value *args, size_t ncols,
                size_t nrows, int64_t *affected)
{
  my_stmt *s = st->b;
  unsigned np = s->nparams;
  MYSQL_BIND *b = calloc(np, sizeof *b);
  char *ind = calloc((size_t)np * nrows, 1);
  unsigned long *len = calloc((size_t)np * nrows, sizeof *len);
  /* Per column: an array of int64 or double values, or of pointers. */
  union slot { const void *p; int64_t i; double d; } *vals = calloc((size_t)np * nrows, sizeof *vals);
  int rc = 0;
  if (!b || !ind || !len || !vals) rc = tl_error_set(TL_ENOMEM, "out of memory");
  for (unsigned k = 0; rc == 0 && k < np; k++) {
    tl_type t = TL_TYPE_NULL;
    for (size_t r = 0; r < nrows; r++) {
      tl_type rt = args[r * ncols + st->map[k]].type;
      if (rt == TL_TYPE_NULL) continue;
      if (t != TL_TYPE_NULL && rt != t) rc = TL_EUNSUPP;
      t = rt;
    }
    if (t == TL_TYPE_TIMESTAMP || t == TL_TYPE_BOOL) rc = TL_EUNSUPP; /* rare: loop */
    if (rc) break;
    char *kind = ind + (size_t)k * nrows;
    unsigned long *klen = len + (size_t)k * nrows;
    union slot *kval = vals + (size_t)k * nrows;
    for (size_t r = 0; r < nrows; r++) {
      const tl_value *a = &args[r * ncols + st->map[k]];
      kind[r] = a->type == TL_TYPE_NULL ? STMT_INDICATOR_NULL : STMT_INDICATOR_NONE;
      if (a->type == TL_TYPE_INT) kval[r].i = a->i;
      else if (a->type == TL_TYPE_DOUBLE) kval[r].d = a->d;
      else if (a->type != TL_TYPE_NULL) {
        kval[r].p = a->len ? a->p : "";
        klen[r] = (unsigned long)a->len;
      }
    }
    b[k].buffer_type = t == TL_TYPE_INT ? MYSQL_TYPE_LONGLONG
                       : t == TL_TYPE_DOUBLE ? MYSQL_TYPE_DOUBLE
                       : t == TL_TYPE_BLOB ? MYSQL_TYPE_BLOB
                       : t == TL_TYPE_NULL ? MYSQL_TYPE_NULL : MYSQL_TYPE_STRING;
    b[k].buffer = kval;
    b[k].length = klen;
    b[k].u.indicator = kind;
  }
  if (rc == 0) {
    unsigned size = (unsigned)nrows;
    if (mysql_stmt_attr_set(s->st, STMT_ATTR_ARRAY_SIZE, &size) ||
        mysql_stmt_bind_param(s->st, b))
      rc = stmt_fail(m, s->st);
    else if (mysql_stmt_execute(s->st) != 0)
      rc = mysql_stmt_errno(s->st) == CR_NOT_IMPLEMENTED ? TL_EUNSUPP : stmt_fail(m, s->st);
    else
      *affected += (int64_t)mysql_stmt_affected_rows(s->st);
    unsigned one = 0;
    mysql_stmt_attr_set(s->st, STMT_ATTR_ARRAY_SIZE, &one);
  }
  free(b);
  free(ind);
  free(len);
  free(vals);
  return rc;
}

static int my_exec_many(tl_conn *c, tl__stmt *st, const tl_value *args,
                        size_t ncols, size_t nrows, int64_t *affected)
{
  my_conn *m = MY(c);
  my_stmt *s = st->b;
  size_t r = 0;
  if (s->nparams) {
    for (; r < nrows; r += BULK_BATCH) {
      size_t n = nrows - r < BULK_BATCH ? nrows - r : BULK_BATCH;
      int rc = bulk(m, st, args + r * ncols, ncols, n, affected);
      if (rc == TL_EUNSUPP) break;
      if (rc) return rc;
    }
  }
  for (; r < nrows; r++) {
    int rc = my_exec(c, st, args + r * ncols, ncols, affected);
    if (rc) return rc;
  }
  return 0;
}

static tl_type type_of(const MYSQL_FIELD *f)
{
  switch (f->type) {
  case MYSQL_TYPE_TINY:
    if (f->length == 1) return TL_TYPE_BOOL; /* BOOLEAN is TINYINT(1) */
    return TL_TYPE_INT;
  case MYSQL_TYPE_SHORT: case MYSQL_TYPE_INT24: case MYSQL_TYPE_LONG:
  case MYSQL_TYPE_LONGLONG: case MYSQL_TYPE_YEAR:
    return TL_TYPE_INT;
  case MYSQL_TYPE_FLOAT: case MYSQL_TYPE_DOUBLE: return TL_TYPE_DOUBLE;
  case MYSQL_TYPE_DATETIME: case MYSQL_TYPE_TIMESTAMP: return TL_TYPE_TIMESTAMP;
  case MYSQL_TYPE_JSON: return TL_TYPE_JSON;
  case MYSQL_TYPE_NULL: return TL_TYPE_NULL;
  case MYSQL_TYPE_TINY_BLOB: case MYSQL_TYPE_MEDIUM_BLOB: case MYSQL_TYPE_LONG_BLOB:
  case MYSQL_TYPE_BLOB: case MYSQL_TYPE_VAR_STRING: case MYSQL_TYPE_STRING:
  case MYSQL_TYPE_VARCHAR: case MYSQL_TYPE_GEOMETRY: {
    MARIADB_CONST_STRING fmt = { 0 };
    if (mariadb_field_attr(&fmt, f, MARIADB_FIELD_ATTR_FORMAT_NAME) == 0 && fmt.length == 4 &&
        strncmp(fmt.str, "json", 4) == 0)
      return TL_TYPE_JSON;
    return f->charsetnr == 63 ? TL_TYPE_BLOB : TL_TYPE_TEXT;
  }
  default: return TL_TYPE_TEXT; /* DECIMAL, DATE, TIME, BIT, ENUM, SET: text */
  }
}

static const char *col_name(void *ctx, int i) { return ((MYSQL_FIELD *)ctx)[i].name; }
static tl_type col_type(void *ctx, int i) { return type_of(&((MYSQL_FIELD *)ctx)[i]); }

/* Bind result buffers for what the server sent; again when it changes. */
static int bind_results(my_conn *m, tl__stmt *st)
{
  my_stmt *s = st->b;
  unsigned n = mysql_stmt_field_count(s->st);
  MYSQL_FIELD *f = mariadb_stmt_fetch_fields(s->st);
  bool same = n == s->ncols && st->ncols == (int)n;
  for (unsigned i = 0; same && i < n; i++)
    same = s->cols[i].ftype == f[i].type && s->cols[i].flags == f[i].flags;
  if (same) return 0;
  for (unsigned i = 0; i < s->ncols; i++) tl__buf_free(&s->cols[i].big);
  free(s->rbind);
  free(s->cols);
  s->ncols = 0;
  s->rbind = calloc(n ? n : 1, sizeof *s->rbind);
  s->cols = calloc(n ? n : 1, sizeof *s->cols);
  if (!s->rbind || !s->cols) return tl_error_set(TL_ENOMEM, "out of memory");
  s->ncols = n;
  int rc = tl__stmt_describe(st, (int)n, col_name, col_type, f);
  if (rc) return rc;
  for (unsigned i = 0; i < n; i++) {
    my_col *c = &s->cols[i];
    MYSQL_BIND *b = &s->rbind[i];
    c->ftype = f[i].type;
    c->flags = f[i].flags;
    c->type = st->coltypes[i];
    b->is_null = &c->is_null;
    b->error = &c->error;
    b->length = &c->len;
    switch (c->type) {
    case TL_TYPE_BOOL:
    case TL_TYPE_INT:
      b->buffer_type = MYSQL_TYPE_LONGLONG;
      b->buffer = &c->u.i;
      b->is_unsigned = (f[i].flags & UNSIGNED_FLAG) != 0;
      break;
    case TL_TYPE_DOUBLE: b->buffer_type = MYSQL_TYPE_DOUBLE; b->buffer = &c->u.d; break;
    case TL_TYPE_TIMESTAMP: b->buffer_type = MYSQL_TYPE_DATETIME; b->buffer = &c->u.t; break;
    default:
      b->buffer_type = c->type == TL_TYPE_BLOB ? MYSQL_TYPE_BLOB : MYSQL_TYPE_STRING;
      b->buffer = c->u.small;
      b->buffer_length = SMALL - 1; /* room for a NUL */
      break;
    }
  }
  /* A statement without a result set (DDL, an UPDATE run as a query)
   * has nothing to bind: it reads as zero rows. */
  if (n == 0) return 0;
  return mysql_stmt_bind_result(s->st, s->rbind) ? stmt_fail(m, s->st) : 0;
}

/* Fetch one row: 1, 0 at the end, or an error. Long values are fetched
 * again into a buffer of their size. */
static int fetch(my_conn *m, my_stmt *s)
{
  int r = mysql_stmt_fetch(s->st);
  if (r == MYSQL_NO_DATA) return 0;
  if (r == 1) return stmt_fail(m, s->st);
  for (unsigned i = 0; i < s->ncols; i++) {
    my_col *c = &s->cols[i];
    c->in_big = false;
    if (c->is_null || s->rbind[i].buffer != c->u.small) continue;
    if (c->len < SMALL) {
      c->u.small[c->len] = '\0';
      continue;
    }
    c->big.len = 0;
    if (!tl__buf_reserve(&c->big, c->len)) return tl_error_set(TL_ENOMEM, "out of memory");
    MYSQL_BIND b = { .buffer_type = s->rbind[i].buffer_type, .buffer = c->big.data,
                     .buffer_length = c->len };
    unsigned long got = 0;
    b.length = &got;
    if (mysql_stmt_fetch_column(s->st, &b, i, 0) != 0) return stmt_fail(m, s->st);
    c->big.data[c->len] = '\0';
    c->in_big = true;
  }
  return 1;
}

static int my_query(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs)
{
  (void)nargs;
  my_conn *m = MY(c);
  my_stmt *s = st->b;
  int rc = bind_params(m, st, args);
  if (rc) return rc;
  if (mysql_stmt_execute(s->st) != 0) return stmt_fail(m, s->st);
  if ((rc = bind_results(m, st)) != 0 || (rc = s->ncols ? fetch(m, s) : 0) < 0) {
    mysql_stmt_free_result(s->st);
    return rc;
  }
  m->cur = s;
  m->first = rc;
  c->rows.pending = true;
  return 0;
}

static int my_next(tl_rows *r)
{
  my_conn *m = MY(r->conn);
  if (r->pending) {
    r->pending = false;
    return m->first;
  }
  if (!m->cur->ncols) return 0;
  return fetch(m, m->cur);
}

static int my_get(tl_rows *r, int col, tl_value *out)
{
  my_col *c = &MY(r->conn)->cur->cols[col];
  if (c->is_null) {
    *out = tl_null();
    return 0;
  }
  switch (c->type) {
  case TL_TYPE_BOOL: *out = tl_bool(c->u.i != 0); return 0;
  case TL_TYPE_INT: *out = tl_int(c->u.i); return 0;
  case TL_TYPE_DOUBLE: *out = tl_double(c->u.d); return 0;
  case TL_TYPE_TIMESTAMP: {
    const MYSQL_TIME *t = &c->u.t;
    *out = tl_timestamp(tl__ts_from_civil((int)t->year, t->month ? (int)t->month : 1,
                                          t->day ? (int)t->day : 1, (int)t->hour, (int)t->minute,
                                          (int)t->second, (int)t->second_part));
    return 0;
  }
  default: {
    const char *p = c->in_big ? c->big.data : c->u.small;
    *out = (tl_value){ .type = c->type == TL_TYPE_NULL ? TL_TYPE_TEXT : c->type,
                       .len = c->len, .s = p };
    return 0;
  }
  }
}

static void my_rows_close(tl_rows *r)
{
  my_conn *m = MY(r->conn);
  if (m->cur && !r->conn->broken) mysql_stmt_free_result(m->cur->st);
  m->cur = NULL;
}

const tl__backend tl__mysql_backend = {
  .name = "mysql",
  .dialect = TL_DB_MYSQL,
  .connect = my_connect,
  .disconnect = my_disconnect,
  .ping = my_ping,
  .in_tx = my_in_tx,
  .exec_simple = my_exec_simple,
  .begin = my_begin,
  .prepare = my_prepare,
  .finalize = my_finalize,
  .exec = my_exec,
  .exec_many = my_exec_many,
  .query = my_query,
  .next = my_next,
  .get = my_get,
  .rows_close = my_rows_close,
};
