/* The command bus and the query bus: one handler per name, JSON in and
 * out, and a middleware chain (validation, logging, metrics, timing,
 * idempotency keys stored in the database). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/cqrs.h>
#include <trellis/error.h>
#include <trellis/log.h>
#include <trellis/trellis.h>

typedef struct route {
  char *name;
  tl_cqrs_handler fn;
  void *ctx;
  tl_cqrs_validator validate;
  void *vctx;
} route;

typedef struct mw {
  tl_cqrs_middleware fn;
  void *ctx;
} mw;

typedef struct tl__bus {
  const char *kind;
  tl_db *db;
  tl_metrics *metrics;
  tl_metric *m_calls, *m_seconds;
  route *routes;
  size_t nroutes, caproutes;
  mw *mws;
  size_t nmws, capmws;
} tl__bus;

struct tl_command_bus { tl__bus b; };
struct tl_query_bus { tl__bus b; };

struct tl_cqrs_next {
  tl__bus *bus;
  const route *route;
  size_t at;
};

static const tl_migration cqrs_migrations[] = {
  { .version = 1, .name = "idempotency keys",
    .sql_sqlite = "CREATE TABLE trellis_cqrs_idempotency (name TEXT NOT NULL, ikey TEXT NOT NULL, "
                  "payload_hash TEXT NOT NULL, result TEXT, created_us INTEGER NOT NULL, "
                  "PRIMARY KEY (name, ikey))",
    .sql_postgres = "CREATE TABLE trellis_cqrs_idempotency (name VARCHAR(200) NOT NULL, "
                    "ikey VARCHAR(200) NOT NULL, payload_hash VARCHAR(32) NOT NULL, result TEXT, "
                    "created_us BIGINT NOT NULL, PRIMARY KEY (name, ikey))",
    .sql_mysql = "CREATE TABLE trellis_cqrs_idempotency (name VARCHAR(200) NOT NULL, "
                 "ikey VARCHAR(200) NOT NULL, payload_hash VARCHAR(32) NOT NULL, result LONGTEXT, "
                 "created_us BIGINT NOT NULL, PRIMARY KEY (name, ikey)) ENGINE=InnoDB "
                 "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" },
};

static int bus_init(tl__bus *b, const char *kind, const tl_cqrs_config *cfg)
{
  b->kind = kind;
  b->db = cfg ? cfg->db : NULL;
  b->metrics = cfg && cfg->metrics ? cfg->metrics : tl_metrics_default();
  int rc = tl_metrics_counter(b->metrics, "trellis_cqrs_calls_total",
                              "Commands and queries executed, by outcome.", "bus,name,outcome",
                              &b->m_calls);
  if (rc == 0)
    rc = tl_metrics_histogram(b->metrics, "trellis_cqrs_call_duration_seconds",
                              "Time to execute a command or query.", "bus,name", NULL, 0,
                              &b->m_seconds);
  if (rc) return rc;
  if (b->db) {
    rc = tl_db_migrations_register("trellis_cqrs", cqrs_migrations, 1);
    if (rc == 0) rc = tl_db_migrate(b->db, "trellis_cqrs", NULL);
    if (rc) return tl_error_wrap(rc, "%s bus: schema", kind);
  }
  return 0;
}

static void bus_fini(tl__bus *b)
{
  for (size_t i = 0; i < b->nroutes; i++) free(b->routes[i].name);
  free(b->routes);
  free(b->mws);
}

static route *find_route(tl__bus *b, const char *name)
{
  for (size_t i = 0; i < b->nroutes; i++)
    if (strcmp(b->routes[i].name, name) == 0) return &b->routes[i];
  return NULL;
}

static route *add_route(tl__bus *b, const char *name)
{
  route *r = find_route(b, name);
  if (r) return r;
  if (b->nroutes == b->caproutes) {
    size_t cap = b->caproutes ? b->caproutes * 2 : 16;
    route *n = realloc(b->routes, cap * sizeof *n);
    if (!n) return NULL;
    b->routes = n;
    b->caproutes = cap;
  }
  r = &b->routes[b->nroutes];
  memset(r, 0, sizeof *r);
  if (!(r->name = strdup(name))) return NULL;
  b->nroutes++;
  return r;
}

static int bus_register(tl__bus *b, const char *name, tl_cqrs_handler fn, void *ctx)
{
  if (!b || !name || !*name || !fn) return tl_error_set(TL_EINVAL, "%s bus: a name and a handler are required",
                                                        b ? b->kind : "cqrs");
  route *r = find_route(b, name);
  if (r && r->fn) return tl_error_set(TL_ECONFLICT, "%s '%s' already has a handler", b->kind, name);
  if (!(r = add_route(b, name))) return tl_error_set(TL_ENOMEM, "%s bus: out of memory", b->kind);
  r->fn = fn;
  r->ctx = ctx;
  return 0;
}

static int bus_validator(tl__bus *b, const char *name, tl_cqrs_validator fn, void *ctx)
{
  if (!b || !name || !*name || !fn) return tl_error_set(TL_EINVAL, "validator: missing argument");
  route *r = add_route(b, name);
  if (!r) return tl_error_set(TL_ENOMEM, "%s bus: out of memory", b->kind);
  r->validate = fn;
  r->vctx = ctx;
  return 0;
}

static int bus_use(tl__bus *b, tl_cqrs_middleware fn, void *ctx)
{
  if (!b || !fn) return tl_error_set(TL_EINVAL, "middleware: missing argument");
  if (b->nmws == b->capmws) {
    size_t cap = b->capmws ? b->capmws * 2 : 8;
    mw *n = realloc(b->mws, cap * sizeof *n);
    if (!n) return tl_error_set(TL_ENOMEM, "%s bus: out of memory", b->kind);
    b->mws = n;
    b->capmws = cap;
  }
  b->mws[b->nmws++] = (mw){ fn, ctx };
  return 0;
}

static int bus_use_defaults(tl__bus *b)
{
  int rc = bus_use(b, tl_cqrs_mw_validate, NULL);
  if (!rc) rc = bus_use(b, tl_cqrs_mw_logging, NULL);
  if (!rc) rc = bus_use(b, tl_cqrs_mw_metrics, NULL);
  if (!rc) rc = bus_use(b, tl_cqrs_mw_timing, NULL);
  if (!rc) rc = bus_use(b, tl_cqrs_mw_idempotency, NULL);
  return rc;
}

int tl_cqrs_next_run(tl_cqrs_next *next, tl_cqrs_call *call)
{
  if (!next || !call) return tl_error_set(TL_EINVAL, "cqrs: next without a call");
  if (next->at < next->bus->nmws) {
    mw *m = &next->bus->mws[next->at++];
    return m->fn(call, next, m->ctx);
  }
  next->at++;
  json_t *result = NULL;
  int rc = next->route->fn(call->payload, &result, next->route->ctx);
  json_decref(call->result);
  call->result = result;
  return rc;
}

/* Run `payload` (borrowed) through the chain; `*result` gets the result
 * (a new reference; JSON null when the handler set none). */
static int bus_run(tl__bus *b, const char *name, json_t *payload, const tl_cqrs_exec_opts *opts,
                   json_t **result)
{
  if (result) *result = NULL;
  if (!b || !name || !payload) return tl_error_set(TL_EINVAL, "execute: missing argument");
  route *r = find_route(b, name);
  if (!r || !r->fn) return tl_error_set(TL_ENOTFOUND, "%s '%s' has no handler", b->kind, name);
  tl_cqrs_call call = { .kind = b->kind, .name = r->name, .payload = payload,
                        .idempotency_key = opts ? opts->idempotency_key : NULL };
  tl_cqrs_next next = { b, r, 0 };
  int rc = tl_cqrs_next_run(&next, &call);
  if (rc == 0 && result) {
    *result = call.result ? call.result : json_null();
    call.result = NULL;
  }
  json_decref(call.result);
  return rc;
}

static int bus_execute(tl__bus *b, const char *name, const char *json,
                       const tl_cqrs_exec_opts *opts, char **result)
{
  if (result) *result = NULL;
  json_error_t jerr;
  json_t *payload = json_loads(json ? json : "{}", JSON_DECODE_ANY, &jerr), *res = NULL;
  if (!payload)
    return tl_error_set(TL_EINVAL, "%s '%s': payload is not JSON: %s", b ? b->kind : "bus",
                        name ? name : "", jerr.text);
  int rc = bus_run(b, name, payload, opts, result ? &res : NULL);
  if (rc == 0 && result) {
    *result = json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!*result) rc = tl_error_set(TL_ENOMEM, "%s '%s': out of memory", b->kind, name);
  }
  json_decref(res);
  json_decref(payload);
  return rc;
}

/* ---- built-in middleware -------------------------------------------------- */

int tl_cqrs_mw_validate(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  (void)ctx;
  const route *r = next->route;
  if (r->validate) {
    int rc = r->validate(call->payload, r->vctx);
    if (rc) return rc;
  }
  return tl_cqrs_next_run(next, call);
}

/* The caller's mistakes, answered as such: not the service's failures. */
static bool client_error(int rc)
{
  return rc == TL_EINVAL || rc == TL_ENOTFOUND || rc == TL_ECONFLICT || rc == TL_ECONSTRAINT ||
         rc == TL_EPRECOND || rc == TL_ESTATE || rc == TL_EPERM;
}

int tl_cqrs_mw_logging(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  (void)ctx;
  int64_t t0 = tl_time_mono_us();
  int rc = tl_cqrs_next_run(next, call);
  int64_t us = tl_time_mono_us() - t0;
  if (rc)
    tl_log(client_error(rc) ? TL_LOG_INFO : TL_LOG_WARN, "cqrs call failed",
           TL_F_STR("kind", call->kind), TL_F_STR("name", call->name),
           TL_F_STR("status", tl_status_name(rc)), TL_F_STR("error", tl_error_last()),
           TL_F_INT("duration_us", us));
  else
    tl_log(call->kind[0] == 'q' ? TL_LOG_DEBUG : TL_LOG_INFO, "cqrs call",
           TL_F_STR("kind", call->kind), TL_F_STR("name", call->name), TL_F_INT("duration_us", us));
  return rc;
}

int tl_cqrs_mw_metrics(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  (void)ctx;
  int64_t t0 = tl_time_mono_us();
  int rc = tl_cqrs_next_run(next, call);
  double s = (double)(tl_time_mono_us() - t0) / 1e6;
  tl__bus *b = next->bus;
  tl_series_inc(tl_metric_series(b->m_calls, TL_LABELS(call->kind, call->name,
                                                       rc ? tl_status_name(rc) : "ok")));
  tl_series_observe(tl_metric_series(b->m_seconds, TL_LABELS(call->kind, call->name)), s);
  return rc;
}

int tl_cqrs_mw_timing(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  (void)ctx;
  int64_t t0 = tl_time_mono_us();
  int rc = tl_cqrs_next_run(next, call);
  call->elapsed_us = tl_time_mono_us() - t0;
  if (call->elapsed_us > 1000000)
    tl_log(TL_LOG_WARN, "slow cqrs call", TL_F_STR("kind", call->kind), TL_F_STR("name", call->name),
           TL_F_INT("duration_us", call->elapsed_us));
  return rc;
}

/* FNV-1a of the canonical payload: same command, same key, same payload. */
static void payload_hash(const json_t *payload, char out[17])
{
  char *s = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
  uint64_t h = 1469598103934665603ULL;
  for (const char *p = s ? s : ""; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  free(s);
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* A key's row: FOUND with call->result set, PENDING (claimed by a call
 * still running; `*claimed_us` its claim time), ABSENT, or <0. */
enum { ABSENT = 0, FOUND = 1, PENDING = 2 };

/* A claim older than this belongs to a call that died: take it over. */
#define CLAIM_STALE_US (30 * 1000000LL)
/* How long a repeat waits for the first call to finish. */
#define CLAIM_WAIT_US (10 * 1000000LL)

static int stored_result(tl__bus *b, tl_cqrs_call *call, const char *hash, int64_t *claimed_us)
{
  tl_rows *r;
  int rc = tl_db_query(b->db, &r, "SELECT payload_hash, result, created_us FROM "
                       "trellis_cqrs_idempotency WHERE name = $1 AND ikey = $2",
                       TL_ARGS(tl_text(call->name), tl_text(call->idempotency_key)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  if (rc == 1) {
    const char *h = "", *res = NULL;
    size_t hl = 0, rl = 0;
    tl_rows_text(r, 0, &h, &hl);
    if (hl != 16 || memcmp(h, hash, 16) != 0) {
      tl_rows_free(r);
      return tl_error_set(TL_ECONFLICT, "%s '%s': idempotency key '%s' was used with another payload",
                          call->kind, call->name, call->idempotency_key);
    }
    if (tl_rows_is_null(r, 1)) {
      tl_rows_int(r, 2, claimed_us);
      rc = PENDING;
    } else {
      json_decref(call->result);
      call->result = NULL;
      if (tl_rows_text(r, 1, &res, &rl) == 0)
        call->result = json_loadb(res, rl, JSON_DECODE_ANY, NULL);
      if (json_is_null(call->result)) { /* stored for a call without a result */
        json_decref(call->result);
        call->result = NULL;
      }
    }
  }
  tl_rows_free(r);
  return rc;
}

/* Claim the key for this call: insert a row without a result, or take
 * over a stale claim. 1 claimed, 0 someone else holds it, <0 error. */
static int claim(tl__bus *b, tl_cqrs_call *call, const char *hash, int64_t stale_claim,
                 int64_t *mine)
{
  int64_t affected = 0;
  *mine = tl_time_now_us();
  int rc;
  if (stale_claim)
    rc = tl_db_exec(b->db, &affected, "UPDATE trellis_cqrs_idempotency SET created_us = $1 "
                    "WHERE name = $2 AND ikey = $3 AND result IS NULL AND created_us = $4",
                    TL_ARGS(tl_int(*mine), tl_text(call->name), tl_text(call->idempotency_key),
                            tl_int(stale_claim)));
  else
    rc = tl_db_exec(b->db, &affected, "INSERT INTO trellis_cqrs_idempotency (name, ikey, "
                    "payload_hash, result, created_us) VALUES ($1, $2, $3, NULL, $4)",
                    TL_ARGS(tl_text(call->name), tl_text(call->idempotency_key), tl_text(hash),
                            tl_int(*mine)));
  if (rc == TL_ECONFLICT) return 0;
  return rc ? rc : affected == 1;
}

int tl_cqrs_mw_idempotency(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx)
{
  (void)ctx;
  if (!call->idempotency_key || !*call->idempotency_key) return tl_cqrs_next_run(next, call);
  tl__bus *b = next->bus;
  if (!b->db)
    return tl_error_set(TL_ESTATE, "%s '%s': idempotency keys need a database (tl_cqrs_config.db)",
                        call->kind, call->name);
  if (strlen(call->idempotency_key) > 200)
    return tl_error_set(TL_EINVAL, "idempotency key longer than 200 bytes");
  char hash[17];
  payload_hash(call->payload, hash);
  /* Find the first call's result, or claim the key, or wait while the
   * first call runs (a client retrying before its first try answered). */
  int64_t deadline = tl_time_mono_us() + CLAIM_WAIT_US, mine = 0, wait = 2000;
  for (;;) {
    int64_t claimed_us = 0;
    int rc = stored_result(b, call, hash, &claimed_us);
    if (rc < 0) return rc;
    if (rc == FOUND) return 0;
    int64_t stale = rc == PENDING && tl_time_now_us() - claimed_us > CLAIM_STALE_US ? claimed_us : 0;
    if (rc == ABSENT || stale) {
      rc = claim(b, call, hash, stale, &mine);
      if (rc < 0) return rc;
      if (rc == 1) break;
      continue; /* another call claimed it first: look again */
    }
    if (tl_time_mono_us() >= deadline)
      return tl_error_set(TL_EBUSY, "%s '%s': a call with idempotency key '%s' is still running",
                          call->kind, call->name, call->idempotency_key);
    tl_sleep_us(wait);
    wait = wait * 2 > 100000 ? 100000 : wait * 2;
  }
  int rc = tl_cqrs_next_run(next, call);
  if (rc) {
    /* Failures are not remembered: a retry may succeed. */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tl_error_last());
    if (tl_db_exec(b->db, NULL, "DELETE FROM trellis_cqrs_idempotency WHERE name = $1 AND "
                   "ikey = $2 AND result IS NULL AND created_us = $3",
                   TL_ARGS(tl_text(call->name), tl_text(call->idempotency_key), tl_int(mine))) != 0)
      tl_log(TL_LOG_WARN, "idempotency key claim not released; it expires",
             TL_F_STR("name", call->name), TL_F_STR("error", tl_error_last()));
    return tl_error_set(rc, "%s", msg);
  }
  char *res = call->result ? json_dumps(call->result, JSON_COMPACT | JSON_ENCODE_ANY)
                           : strdup("null");
  int src = tl_db_exec(b->db, NULL, "UPDATE trellis_cqrs_idempotency SET result = $1 WHERE "
                       "name = $2 AND ikey = $3 AND created_us = $4",
                       TL_ARGS(tl_text(res), tl_text(call->name), tl_text(call->idempotency_key),
                               tl_int(mine)));
  free(res);
  if (src)
    tl_log(TL_LOG_WARN, "idempotency key result not stored", TL_F_STR("name", call->name),
           TL_F_STR("error", tl_error_last()));
  return 0;
}

/* ---- public wrappers ------------------------------------------------------- */

int tl_command_bus_new(tl_command_bus **out, const tl_cqrs_config *cfg)
{
  if (!out) return tl_error_set(TL_EINVAL, "command bus: out is NULL");
  tl_command_bus *cb = calloc(1, sizeof *cb);
  if (!cb) return tl_error_set(TL_ENOMEM, "command bus: out of memory");
  int rc = bus_init(&cb->b, "command", cfg);
  if (rc) {
    bus_fini(&cb->b);
    free(cb);
    return rc;
  }
  *out = cb;
  return 0;
}

void tl_command_bus_free(tl_command_bus *cb)
{
  if (!cb) return;
  bus_fini(&cb->b);
  free(cb);
}

int tl_command_bus_register(tl_command_bus *cb, const char *name, tl_cqrs_handler fn, void *ctx)
{
  return bus_register(cb ? &cb->b : NULL, name, fn, ctx);
}

int tl_command_bus_validator(tl_command_bus *cb, const char *name, tl_cqrs_validator fn, void *ctx)
{
  return bus_validator(cb ? &cb->b : NULL, name, fn, ctx);
}

int tl_command_bus_use(tl_command_bus *cb, tl_cqrs_middleware mw_fn, void *ctx)
{
  return bus_use(cb ? &cb->b : NULL, mw_fn, ctx);
}

int tl_command_bus_use_defaults(tl_command_bus *cb)
{
  return cb ? bus_use_defaults(&cb->b) : tl_error_set(TL_EINVAL, "command bus: NULL");
}

int tl_command_bus_execute(tl_command_bus *cb, const char *name, const char *json, char **result)
{
  return bus_execute(cb ? &cb->b : NULL, name, json, NULL, result);
}

int tl_command_bus_execute_opts(tl_command_bus *cb, const char *name, const char *json,
                                const tl_cqrs_exec_opts *opts, char **result)
{
  return bus_execute(cb ? &cb->b : NULL, name, json, opts, result);
}

int tl_command_bus_execute_json(tl_command_bus *cb, const char *name, json_t *payload,
                                const tl_cqrs_exec_opts *opts, json_t **result)
{
  return bus_run(cb ? &cb->b : NULL, name, payload, opts, result);
}

int tl_query_bus_new(tl_query_bus **out, const tl_cqrs_config *cfg)
{
  if (!out) return tl_error_set(TL_EINVAL, "query bus: out is NULL");
  tl_query_bus *qb = calloc(1, sizeof *qb);
  if (!qb) return tl_error_set(TL_ENOMEM, "query bus: out of memory");
  int rc = bus_init(&qb->b, "query", cfg);
  if (rc) {
    bus_fini(&qb->b);
    free(qb);
    return rc;
  }
  *out = qb;
  return 0;
}

void tl_query_bus_free(tl_query_bus *qb)
{
  if (!qb) return;
  bus_fini(&qb->b);
  free(qb);
}

int tl_query_bus_register(tl_query_bus *qb, const char *name, tl_cqrs_handler fn, void *ctx)
{
  return bus_register(qb ? &qb->b : NULL, name, fn, ctx);
}

int tl_query_bus_validator(tl_query_bus *qb, const char *name, tl_cqrs_validator fn, void *ctx)
{
  return bus_validator(qb ? &qb->b : NULL, name, fn, ctx);
}

int tl_query_bus_use(tl_query_bus *qb, tl_cqrs_middleware mw_fn, void *ctx)
{
  return bus_use(qb ? &qb->b : NULL, mw_fn, ctx);
}

int tl_query_bus_use_defaults(tl_query_bus *qb)
{
  return qb ? bus_use_defaults(&qb->b) : tl_error_set(TL_EINVAL, "query bus: NULL");
}

int tl_query_bus_execute(tl_query_bus *qb, const char *name, const char *json, char **result)
{
  return bus_execute(qb ? &qb->b : NULL, name, json, NULL, result);
}

int tl_query_bus_execute_opts(tl_query_bus *qb, const char *name, const char *json,
                              const tl_cqrs_exec_opts *opts, char **result)
{
  return bus_execute(qb ? &qb->b : NULL, name, json, opts, result);
}

int tl_query_bus_execute_json(tl_query_bus *qb, const char *name, json_t *payload,
                              const tl_cqrs_exec_opts *opts, json_t **result)
{
  return bus_run(qb ? &qb->b : NULL, name, payload, opts, result);
}
