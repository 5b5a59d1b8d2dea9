/* PostgreSQL backend (libpq). Statements are prepared once per connection
 * with the argument types (int8, float8, bool, bytea, timestamptz sent in
 * binary; text, JSON and NULL as "unknown" text so the server infers the
 * column's type). Results come back in text, streamed in single-row mode;
 * exec_many pipelines its rows (libpq pipeline mode) in batches. Sessions
 * run with TimeZone UTC. */
#include <endian.h>
#include <libpq-fe.h>
#include <poll.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

enum {
  OID_BOOL = 16, OID_BYTEA = 17, OID_NAME = 19, OID_INT8 = 20, OID_INT2 = 21,
  OID_INT4 = 23, OID_TEXT = 25, OID_OID = 26, OID_JSON = 114, OID_FLOAT4 = 700,
  OID_FLOAT8 = 701, OID_BPCHAR = 1042, OID_VARCHAR = 1043, OID_TIMESTAMP = 1114,
  OID_TIMESTAMPTZ = 1184, OID_JSONB = 3802
};

#define PG_EPOCH_US 946684800000000LL /* 2000-01-01 in Unix µs */
#define PIPE_BATCH 512
#define DRAIN_BEFORE_CANCEL 1000

typedef struct pg_conn {
  struct tl_conn base;
  PGconn *pg;
  PGresult *cur;   /* the current row (single-row mode) */
  bool busy;       /* results still to read */
  int first;       /* the first fetch's answer, while rows.pending */
  unsigned seq;    /* statement names */
  tl__buf scratch; /* parameter text and binary */
  tl__buf *colbuf; /* decoded bytea, per column, for the current row */
  int ncolbuf;
} pg_conn;

#define PG(c) ((pg_conn *)(c))

/* ---- errors ---------------------------------------------------------------- */

static int pg_fail(pg_conn *p, const PGresult *res)
{
  const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  tl_db_error_class cls = state ? tl__class_from_sqlstate(state) : TL_DB_ERR_OTHER;
  if (PQstatus(p->pg) == CONNECTION_BAD || cls == TL_DB_ERR_CONNECTION_LOST) {
    cls = TL_DB_ERR_CONNECTION_LOST;
    p->base.broken = true;
  }
  const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
  char conn_msg[256];
  if (!msg) {
    snprintf(conn_msg, sizeof conn_msg, "%s", PQerrorMessage(p->pg));
    conn_msg[strcspn(conn_msg, "\n")] = '\0';
    msg = conn_msg[0] ? conn_msg : "connection lost";
  }
  return tl__db_fail(cls, "postgres: %s%s%s%s%s%s", msg, detail ? ": " : "", detail ? detail : "",
                     state ? " (SQLSTATE " : "", state ? state : "", state ? ")" : "");
}

/* A result that is not an error: COMMAND_OK, TUPLES_OK, EMPTY_QUERY... */
static bool res_ok(const PGresult *res)
{
  ExecStatusType s = PQresultStatus(res);
  return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_EMPTY_QUERY ||
         s == PGRES_SINGLE_TUPLE;
}

/* Read and drop results until the query is finished. */
static void drain(pg_conn *p)
{
  PGresult *res;
  while ((res = PQgetResult(p->pg)) != NULL) PQclear(res);
  p->busy = false;
}

/* ---- connection ------------------------------------------------------------ */

/* Server notices ("relation ... already exists, skipping") go to the log at
 * debug level instead of libpq's stderr. */
static void on_notice(void *arg, const char *msg)
{
  (void)arg;
  char line[512];
  snprintf(line, sizeof line, "%s", msg);
  line[strcspn(line, "\n")] = '\0';
  tl_log(TL_LOG_DEBUG, "postgres notice", TL_F_STR("message", line));
}

static int pg_connect(const tl__target *t, tl_conn **out)
{
  char app[64], timeout[32];
  snprintf(app, sizeof app, "trellis-%s-%s", t->name, t->role);
  snprintf(timeout, sizeof timeout, "%lld",
           (long long)(t->connect_timeout_us > 0 ? (t->connect_timeout_us + 999999) / 1000000 : 0));
  /* Defaults first: whatever the URL says comes later and wins. */
  const char *kw[] = { "application_name", "connect_timeout", "dbname", NULL };
  const char *val[] = { app, timeout, t->url->raw, NULL };
  PGconn *pg = PQconnectdbParams(kw, val, 1);
  if (!pg) return tl_error_set(TL_ENOMEM, "out of memory");
  if (PQstatus(pg) != CONNECTION_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(pg));
    msg[strcspn(msg, "\n")] = '\0';
    PQfinish(pg);
    return tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "postgres '%s': cannot connect: %s",
                       t->url->masked, msg);
  }
  char setup[128];
  snprintf(setup, sizeof setup, "SET TimeZone = 'UTC'; SET statement_timeout = %lld",
           (long long)(t->statement_timeout_us > 0 ? (t->statement_timeout_us + 999) / 1000 : 0));
  PGresult *res = PQexec(pg, setup);
  if (!res_ok(res)) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
    msg[strcspn(msg, "\n")] = '\0';
    PQclear(res);
    PQfinish(pg);
    return tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "postgres '%s': session setup: %s",
                       t->url->masked, msg);
  }
  PQclear(res);
  PQsetNoticeProcessor(pg, on_notice, NULL);
  pg_conn *p = calloc(1, sizeof *p);
  if (!p) {
    PQfinish(pg);
    return tl_error_set(TL_ENOMEM, "out of memory");
  }
  p->pg = pg;
  *out = &p->base;
  return 0;
}

static void pg_disconnect(tl_conn *c)
{
  pg_conn *p = PG(c);
  PQclear(p->cur);
  PQfinish(p->pg);
  tl__buf_free(&p->scratch);
  for (int i = 0; i < p->ncolbuf; i++) tl__buf_free(&p->colbuf[i]);
  free(p->colbuf);
  free(p);
}

static int pg_exec_simple(tl_conn *c, const char *sql)
{
  pg_conn *p = PG(c);
  PGresult *res = PQexec(p->pg, sql);
  int rc = res && res_ok(res) ? 0 : pg_fail(p, res);
  PQclear(res);
  return rc;
}

static int pg_ping(tl_conn *c)
{
  int rc = pg_exec_simple(c, "");
  if (rc) c->broken = true;
  return rc;
}

static bool pg_in_tx(tl_conn *c)
{
  PGTransactionStatusType s = PQtransactionStatus(PG(c)->pg);
  if (s == PQTRANS_UNKNOWN) c->broken = true;
  return s != PQTRANS_IDLE;
}

static int pg_begin(tl_conn *c, const tl_tx_opts *o)
{
  static const char *const iso[] = { "", " ISOLATION LEVEL READ COMMITTED",
                                     " ISOLATION LEVEL REPEATABLE READ",
                                     " ISOLATION LEVEL SERIALIZABLE" };
  char sql[96];
  snprintf(sql, sizeof sql, "BEGIN%s%s", (unsigned)o->isolation < 4 ? iso[o->isolation] : "",
           o->read_only ? " READ ONLY" : "");
  return pg_exec_simple(c, sql);
}

/* ---- statements ------------------------------------------------------------ */

static Oid oid_for(tl_type t)
{
  switch (t) {
  case TL_TYPE_BOOL: return OID_BOOL;
  case TL_TYPE_INT: return OID_INT8;
  case TL_TYPE_DOUBLE: return OID_FLOAT8;
  case TL_TYPE_BLOB: return OID_BYTEA;
  case TL_TYPE_TIMESTAMP: return OID_TIMESTAMPTZ;
  default: return 0; /* text, JSON, NULL: the server infers from context */
  }
}

static int pg_prepare(tl_conn *c, tl__stmt *st, const char *sql,
                      const tl_value *args, size_t nargs)
{
  pg_conn *p = PG(c);
  Oid stack[32], *types = nargs <= 32 ? stack : malloc(nargs * sizeof *types);
  char *name = malloc(16);
  if (!types || !name) {
    if (types != stack) free(types);
    free(name);
    return tl_error_set(TL_ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < nargs; i++) types[i] = oid_for(args[i].type);
  snprintf(name, 16, "tl%u", ++p->seq);
  PGresult *res = PQprepare(p->pg, name, sql, (int)nargs, types);
  if (types != stack) free(types);
  int rc = res && PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : pg_fail(p, res);
  PQclear(res);
  if (rc) {
    free(name);
    return rc;
  }
  st->b = name;
  return 0;
}

static void pg_finalize(tl_conn *c, tl__stmt *st)
{
  pg_conn *p = PG(c);
  if (!c->broken && !p->busy && PQstatus(p->pg) == CONNECTION_OK &&
      PQtransactionStatus(p->pg) != PQTRANS_INERROR) {
    char sql[40];
    snprintf(sql, sizeof sql, "DEALLOCATE %s", (char *)st->b);
    PQclear(PQexec(p->pg, sql));
  }
  free(st->b);
}

/* Parameters in libpq's arrays: binary where the statement was prepared
 * for the argument's type, text otherwise. Text is copied to add its NUL. */
typedef struct pg_params {
  const char *stack_v[32];
  int stack_l[32], stack_f[32];
  const char **v;
  int *l, *f;
} pg_params;

static size_t text_size(const tl_value *a, bool binary)
{
  if (binary) return a->type == TL_TYPE_BLOB ? 0 : 8;
  switch (a->type) {
  case TL_TYPE_TEXT:
  case TL_TYPE_JSON: return a->len + 1;
  case TL_TYPE_BLOB: return a->len * 2 + 3;
  case TL_TYPE_NULL: return 0;
  default: return 48;
  }
}

static int build_params(pg_conn *p, const tl__stmt *st, const tl_value *a, size_t n,
                        pg_params *pp)
{
  if (n <= 32) {
    pp->v = pp->stack_v;
    pp->l = pp->stack_l;
    pp->f = pp->stack_f;
  } else {
    pp->v = malloc(n * sizeof *pp->v);
    pp->l = malloc(n * sizeof *pp->l);
    pp->f = malloc(n * sizeof *pp->f);
    if (!pp->v || !pp->l || !pp->f) return tl_error_set(TL_ENOMEM, "out of memory");
  }
  size_t need = 0;
  for (size_t i = 0; i < n; i++)
    need += text_size(&a[i], st->types[i] == (uint8_t)a[i].type && oid_for(a[i].type)) + 8;
  p->scratch.len = 0;
  if (!tl__buf_reserve(&p->scratch, need)) return tl_error_set(TL_ENOMEM, "out of memory");
  char *w = p->scratch.data;
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    const tl_value *v = &a[i];
    bool binary = st->types[i] == (uint8_t)v->type && oid_for(v->type);
    pp->f[i] = binary;
    pp->l[i] = 0;
    w = (char *)(((uintptr_t)w + 7) & ~(uintptr_t)7);
    if (v->type == TL_TYPE_NULL) {
      pp->v[i] = NULL;
      continue;
    }
    if (binary) {
      uint64_t be;
      switch (v->type) {
      case TL_TYPE_BOOL: *w = v->b; pp->v[i] = w; pp->l[i] = 1; w += 1; continue;
      case TL_TYPE_BLOB: pp->v[i] = v->len ? v->p : ""; pp->l[i] = (int)v->len; continue;
      case TL_TYPE_DOUBLE: memcpy(&be, &v->d, 8); be = htobe64(be); break;
      case TL_TYPE_TIMESTAMP: be = htobe64((uint64_t)(v->i - PG_EPOCH_US)); break;
      default: be = htobe64((uint64_t)v->i); break;
      }
      memcpy(w, &be, 8);
      pp->v[i] = w;
      pp->l[i] = 8;
      w += 8;
      continue;
    }
    pp->v[i] = w;
    switch (v->type) {
    case TL_TYPE_TEXT:
    case TL_TYPE_JSON:
      if (v->len) memcpy(w, v->s, v->len);
      w[v->len] = '\0';
      w += v->len + 1;
      break;
    case TL_TYPE_BLOB: {
      *w++ = '\\';
      *w++ = 'x';
      const unsigned char *b = v->p;
      for (size_t k = 0; k < v->len; k++) {
        *w++ = hex[b[k] >> 4];
        *w++ = hex[b[k] & 15];
      }
      *w++ = '\0';
      break;
    }
    case TL_TYPE_BOOL: w += snprintf(w, 48, "%s", v->b ? "t" : "f") + 1; break;
    case TL_TYPE_INT: w += snprintf(w, 48, "%lld", (long long)v->i) + 1; break;
    case TL_TYPE_DOUBLE: w += snprintf(w, 48, "%.17g", v->d) + 1; break;
    case TL_TYPE_TIMESTAMP: {
      size_t k = tl__ts_format(v->i, w, 40);
      memcpy(w + k, "+00", 4);
      w += k + 4;
      break;
    }
    default:
      return tl_error_set(TL_EINVAL, "sql argument $%zu: unknown type %d", i + 1, (int)v->type);
    }
  }
  return 0;
}

static void free_params(pg_params *pp)
{
  if (pp->v != pp->stack_v) {
    free(pp->v);
    free(pp->l);
    free(pp->f);
  }
}

static int64_t tuples(const PGresult *res)
{
  const char *s = PQcmdTuples((PGresult *)res);
  int64_t n = 0;
  if (s && *s) tl__parse_i64(s, strlen(s), &n);
  return n;
}

static int check_conn(pg_conn *p)
{
  if (PQstatus(p->pg) == CONNECTION_BAD) return pg_fail(p, NULL);
  return 0;
}

static int pg_exec(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs,
                   int64_t *affected)
{
  pg_conn *p = PG(c);
  pg_params pp;
  int rc = check_conn(p);
  if (rc == 0) rc = build_params(p, st, args, nargs, &pp);
  if (rc) return rc;
  PGresult *res = PQexecPrepared(p->pg, st->b, (int)nargs, pp.v, pp.l, pp.f, 0);
  free_params(&pp);
  if (res && res_ok(res)) *affected = tuples(res);
  else rc = pg_fail(p, res);
  PQclear(res);
  return rc;
}

static int pg_exec_many(tl_conn *c, tl__stmt *st, const tl_value *args,
                        size_t ncols, size_t nrows, int64_t *affected)
{
  pg_conn *p = PG(c);
  int rc = check_conn(p);
  if (rc) return rc;
  if (PQenterPipelineMode(p->pg) != 1) return pg_fail(p, NULL);
  for (size_t r0 = 0; r0 < nrows && rc == 0; r0 += PIPE_BATCH) {
    size_t end = r0 + PIPE_BATCH < nrows ? r0 + PIPE_BATCH : nrows;
    for (size_t r = r0; r < end && rc == 0; r++) {
      pg_params pp;
      if ((rc = build_params(p, st, args + r * ncols, ncols, &pp)) != 0) break;
      if (PQsendQueryPrepared(p->pg, st->b, (int)ncols, pp.v, pp.l, pp.f, 0) != 1)
        rc = pg_fail(p, NULL);
      free_params(&pp);
    }
    if (PQpipelineSync(p->pg) != 1) {
      if (!rc) rc = pg_fail(p, NULL);
      break;
    }
    /* Each query yields its result then NULL; the sync yields PIPELINE_SYNC. */
    int nulls = 0;
    for (;;) {
      PGresult *res = PQgetResult(p->pg);
      if (!res) {
        if (++nulls > 1 && PQstatus(p->pg) == CONNECTION_BAD) {
          if (!rc) rc = pg_fail(p, NULL);
          break;
        }
        continue;
      }
      nulls = 0;
      ExecStatusType s = PQresultStatus(res);
      if (s == PGRES_PIPELINE_SYNC) {
        PQclear(res);
        break;
      }
      if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) *affected += tuples(res);
      else if (s != PGRES_PIPELINE_ABORTED && !rc) rc = pg_fail(p, res);
      PQclear(res);
    }
  }
  if (PQexitPipelineMode(p->pg) != 1 && !rc) rc = pg_fail(p, NULL);
  return rc;
}

static tl_type type_of(Oid oid)
{
  switch (oid) {
  case OID_BOOL: return TL_TYPE_BOOL;
  case OID_INT2: case OID_INT4: case OID_INT8: case OID_OID: return TL_TYPE_INT;
  case OID_FLOAT4: case OID_FLOAT8: return TL_TYPE_DOUBLE;
  case OID_BYTEA: return TL_TYPE_BLOB;
  case OID_TIMESTAMP: case OID_TIMESTAMPTZ: return TL_TYPE_TIMESTAMP;
  case OID_JSON: case OID_JSONB: return TL_TYPE_JSON;
  default: return TL_TYPE_TEXT; /* numeric, date, uuid...: their text form */
  }
}

static const char *col_name(void *ctx, int i) { return PQfname(ctx, i); }
static tl_type col_type(void *ctx, int i) { return type_of(PQftype(ctx, i)); }

static int pg_query(tl_conn *c, tl__stmt *st, const tl_value *args, size_t nargs)
{
  pg_conn *p = PG(c);
  pg_params pp;
  int rc = check_conn(p);
  if (rc == 0) rc = build_params(p, st, args, nargs, &pp);
  if (rc) return rc;
  int sent = PQsendQueryPrepared(p->pg, st->b, (int)nargs, pp.v, pp.l, pp.f, 0);
  free_params(&pp);
  if (sent != 1) return pg_fail(p, NULL);
  PQsetSingleRowMode(p->pg);
  p->busy = true;
  PGresult *res = PQgetResult(p->pg);
  ExecStatusType s = PQresultStatus(res);
  if (!res || !res_ok(res)) {
    rc = pg_fail(p, res);
    PQclear(res);
    drain(p);
    return rc;
  }
  if (st->ncols != PQnfields(res)) {
    if ((rc = tl__stmt_describe(st, PQnfields(res), col_name, col_type, res)) != 0) {
      PQclear(res);
      drain(p);
      return rc;
    }
  }
  p->cur = res;
  p->first = s == PGRES_SINGLE_TUPLE;
  if (!p->first) drain(p);
  c->rows.pending = true;
  return 0;
}

static int pg_next(tl_rows *r)
{
  pg_conn *p = PG(r->conn);
  if (r->pending) {
    r->pending = false;
    return p->first;
  }
  PQclear(p->cur);
  p->cur = NULL;
  if (!p->busy) return 0;
  PGresult *res = PQgetResult(p->pg);
  if (!res) {
    p->busy = false;
    return 0;
  }
  ExecStatusType s = PQresultStatus(res);
  if (s == PGRES_SINGLE_TUPLE) {
    p->cur = res;
    return 1;
  }
  int rc = s == PGRES_TUPLES_OK ? 0 : pg_fail(p, res);
  PQclear(res);
  drain(p);
  return rc;
}

static int pg_get(tl_rows *r, int col, tl_value *out)
{
  pg_conn *p = PG(r->conn);
  if (!p->cur || col >= PQnfields(p->cur)) return tl_error_set(TL_EINVAL, "no current row");
  if (PQgetisnull(p->cur, 0, col)) {
    *out = tl_null();
    return 0;
  }
  const char *v = PQgetvalue(p->cur, 0, col);
  size_t n = (size_t)PQgetlength(p->cur, 0, col);
  tl_type t = r->st->coltypes[col];
  switch (t) {
  case TL_TYPE_BOOL: *out = tl_bool(v[0] == 't'); return 0;
  case TL_TYPE_INT:
  case TL_TYPE_DOUBLE:
  case TL_TYPE_TIMESTAMP: {
    tl_value text = tl_textn(v, n);
    if (tl__value_convert(&text, t, out) == 0) return 0;
    *out = text; /* infinity as a double is fine; anything odd stays text */
    return 0;
  }
  case TL_TYPE_BLOB: {
    if (n < 2 || v[0] != '\\' || v[1] != 'x') {
      *out = tl_blob(v, n);
      return 0;
    }
    if (col >= p->ncolbuf) {
      int nb = PQnfields(p->cur);
      tl__buf *b = realloc(p->colbuf, (size_t)nb * sizeof *b);
      if (!b) return tl_error_set(TL_ENOMEM, "out of memory");
      for (int i = p->ncolbuf; i < nb; i++) b[i] = TL__BUF_INIT;
      p->colbuf = b;
      p->ncolbuf = nb;
    }
    tl__buf *b = &p->colbuf[col];
    size_t bytes = (n - 2) / 2;
    b->len = 0;
    if (!tl__buf_reserve(b, bytes)) return tl_error_set(TL_ENOMEM, "out of memory");
    for (size_t i = 0; i < bytes; i++) {
      int hi = v[2 + 2 * i], lo = v[3 + 2 * i];
      hi = hi <= '9' ? hi - '0' : (hi | 32) - 'a' + 10;
      lo = lo <= '9' ? lo - '0' : (lo | 32) - 'a' + 10;
      b->data[i] = (char)(hi << 4 | lo);
    }
    *out = tl_blob(b->data, bytes);
    return 0;
  }
  case TL_TYPE_JSON: *out = (tl_value){ .type = TL_TYPE_JSON, .len = n, .s = v }; return 0;
  default: *out = tl_textn(v, n); return 0;
  }
}

static void pg_rows_close(tl_rows *r)
{
  pg_conn *p = PG(r->conn);
  PQclear(p->cur);
  p->cur = NULL;
  if (!p->busy) return;
  /* Unread rows: read a few; if the result is long, cancel it. */
  PGresult *res;
  for (int i = 0; i < DRAIN_BEFORE_CANCEL && (res = PQgetResult(p->pg)) != NULL; i++) {
    PQclear(res);
    if (i + 1 == DRAIN_BEFORE_CANCEL) {
      char err[256];
      PGcancel *cn = PQgetCancel(p->pg);
      bool cancelled = cn && PQcancel(cn, err, sizeof err);
      PQfreeCancel(cn);
      bool saw_cancel = false;
      while ((res = PQgetResult(p->pg)) != NULL) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (st && strcmp(st, "57014") == 0) saw_cancel = true;
        PQclear(res);
      }
      /* A cancel that arrived after the query ended could hit the next one. */
      if (!cancelled || !saw_cancel) r->conn->broken = true;
      p->busy = false;
      return;
    }
  }
  p->busy = false;
}

/* ---- LISTEN/NOTIFY ------------------------------------------------------ */

static int pg_listen(tl_conn *c, const char *channel)
{
  char sql[128];
  /* The front end checked that the channel is a plain identifier. */
  snprintf(sql, sizeof sql, "LISTEN \"%s\"", channel);
  return pg_exec_simple(c, sql);
}

static int pg_wait_notify(tl_conn *c, int64_t timeout_us, char *payload, size_t size)
{
  pg_conn *p = PG(c);
  int64_t deadline = tl_time_mono_us() + (timeout_us > 0 ? timeout_us : 0);
  for (;;) {
    if (!PQconsumeInput(p->pg)) {
      c->broken = true;
      return tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "postgres listener: %s",
                         PQerrorMessage(p->pg));
    }
    PGnotify *n = PQnotifies(p->pg);
    if (n) {
      if (size) snprintf(payload, size, "%s", n->extra ? n->extra : "");
      PQfreemem(n);
      return 1;
    }
    int64_t left = deadline - tl_time_mono_us();
    if (left <= 0) return 0;
    struct pollfd pfd = { .fd = PQsocket(p->pg), .events = POLLIN };
    if (pfd.fd < 0) {
      c->broken = true;
      return tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "postgres listener: no socket");
    }
    int r = poll(&pfd, 1, (int)((left + 999) / 1000));
    if (r < 0 && errno != EINTR) {
      c->broken = true;
      return tl__db_fail(TL_DB_ERR_CONNECTION_LOST, "postgres listener: poll: %s",
                         strerror(errno));
    }
  }
}

const tl__backend tl__postgres_backend = {
  .name = "postgres",
  .dialect = TL_DB_POSTGRES,
  .key_types = true,
  .connect = pg_connect,
  .disconnect = pg_disconnect,
  .ping = pg_ping,
  .in_tx = pg_in_tx,
  .exec_simple = pg_exec_simple,
  .begin = pg_begin,
  .prepare = pg_prepare,
  .finalize = pg_finalize,
  .exec = pg_exec,
  .exec_many = pg_exec_many,
  .query = pg_query,
  .next = pg_next,
  .get = pg_get,
  .rows_close = pg_rows_close,
  .listen = pg_listen,
  .wait_notify = pg_wait_notify,
};
