/* The HTTP API: /api/v1 over the command and query buses, the job queue
 * and the projection, plus GET /openapi.json. Errors are RFC 9457
 * problem documents whose detail names the field, the value and what was
 * expected. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "openapi_json.h"

static app *A;

/* ---- answers --------------------------------------------------------------- */

/* Map a failed command or query to its HTTP status; internal failures are
 * logged with the request id and answered without detail. */
static int answer_error(tl_http_res *res, int rc)
{
  int status;
  switch (rc) {
  case TL_EINVAL: status = 422; break;
  case TL_ENOTFOUND: status = 404; break;
  case TL_ECONFLICT:
  case TL_ECONSTRAINT:
  case TL_ESTATE:
  case TL_EBUSY: status = 409; break;
  case TL_EPRECOND: status = 412; break;
  case TL_ETOOBIG: status = 413; break;
  case TL_ETIMEOUT:
    tl_http_res_header(res, "Retry-After", "1");
    status = 503;
    break;
  case TL_ECONNECT:
  case TL_ECLOSED:
    tl_log(TL_LOG_ERROR, "dependency unavailable", TL_F_STR("error", tl_error_last()));
    tl_http_res_header(res, "Retry-After", "1");
    return tl_http_res_problem(res, 503, "a dependency of the service is unavailable; retry");
  default: return rc < 0 ? rc : TL_EINTERNAL; /* 500, the detail goes to the log */
  }
  return tl_http_res_problem(res, status, "%s", tl_error_last());
}

/* Set `etag` and say whether the client's If-None-Match already names it
 * (then the answer is 304 without a body). */
static bool not_modified(tl_http_req *req, tl_http_res *res, const char *etag)
{
  tl_http_res_header(res, "ETag", etag);
  const char *inm = tl_http_req_header(req, "if-none-match");
  if (!inm || !(strstr(inm, etag) || !strcmp(inm, "*"))) return false;
  tl_http_res_status(res, 304);
  return true;
}

/* Authenticated data: caches may keep it per client only, and must ask
 * again (ETag) before reuse. */
static void private_cache(tl_http_res *res)
{
  tl_http_res_header(res, "Cache-Control", "private, no-cache");
  tl_http_res_header(res, "Vary", "Authorization, X-API-Key");
}

/* 200 (or `status`) with a user document (stolen) and its version as
 * the ETag; 304 when the client's If-None-Match already names that
 * version. */
static int answer_user(tl_http_req *req, tl_http_res *res, int status, json_t *u)
{
  char etag[32], loc[96];
  snprintf(etag, sizeof etag, "\"%lld\"", (long long)json_integer_value(json_object_get(u, "version")));
  private_cache(res);
  if (status == 201) {
    snprintf(loc, sizeof loc, "/api/v1/users/%s", json_string_value(json_object_get(u, "id")));
    tl_http_res_header(res, "Location", loc);
  }
  if (status == 200 && not_modified(req, res, etag)) {
    json_decref(u);
    return 0;
  }
  if (status != 200) tl_http_res_header(res, "ETag", etag);
  return tl_http_res_json_t(res, status, u);
}

/* ---- request parsing ------------------------------------------------------------ */

/* Ids are UUIDs in their 36-character form. */
static bool is_uuid(const char *s)
{
  uint8_t b[16];
  return s && strlen(s) == 36 && tl_uuid_parse(s, b) == 0;
}

/* A path {id} that is a UUID, else a 404 naming it (0 when answered). */
static const char *user_id(tl_http_req *req, tl_http_res *res)
{
  const char *id = tl_http_req_param(req, "id");
  if (!is_uuid(id)) {
    tl_http_res_problem(res, 404, "user '%.64s' not found (ids are UUIDs)", id ? id : "");
    return NULL;
  }
  return id;
}

/* An integer query argument in [min, max]; `*out` keeps its default when
 * absent. Returns 0, or answers 400 and returns -1. */
static int query_int(tl_http_req *req, tl_http_res *res, const char *name, int64_t min, int64_t max,
                     int64_t *out)
{
  const char *v = tl_http_req_query(req, name);
  if (!v) return 0;
  char *end = NULL;
  long long n = strtoll(v, &end, 10);
  if (!*v || *end || n < min || n > max) {
    tl_http_res_problem(res, 400, "query '%s': expected an integer in [%lld, %lld], got '%.40s'",
                        name, (long long)min, (long long)max, v);
    return -1;
  }
  *out = n;
  return 0;
}

/* If-Match: "3", W/"3" or 3 sets expected_version; "*" or absent sets
 * nothing. Returns 0, or answers 400 and returns -1. */
static int if_match(tl_http_req *req, tl_http_res *res, json_t *payload)
{
  const char *h = tl_http_req_header(req, "if-match");
  if (!h || !strcmp(h, "*")) return 0;
  const char *p = h;
  if (!strncmp(p, "W/", 2)) p += 2;
  bool quoted = *p == '"';
  p += quoted;
  char *end = NULL;
  long long v = strtoll(p, &end, 10);
  if (end == p || v < 0 || (quoted && *end++ != '"') || *end) {
    tl_http_res_problem(res, 400, "header 'If-Match': expected a version from an ETag such as "
                                  "\"3\", got '%.40s'", h);
    return -1;
  }
  json_object_set_new(payload, "expected_version", json_integer(v));
  return 0;
}

/* Run a command; `payload` is stolen. Answers the error or returns 0
 * with *result set (a new reference). */
static int command(tl_http_req *req, tl_http_res *res, const char *name, json_t *payload,
                   json_t **result)
{
  const char *key = tl_http_req_header(req, "idempotency-key");
  int rc = tl_command_bus_execute_json(A->commands, name, payload,
                                       &(tl_cqrs_exec_opts){ .idempotency_key = key }, result);
  json_decref(payload);
  if (rc == TL_ECONFLICT && key && strstr(tl_error_last(), "idempotency key"))
    return tl_http_res_problem(res, 422, "header 'Idempotency-Key': '%.64s' was used with another "
                                         "request body", key);
  return rc ? answer_error(res, rc) : 0;
}

/* Run a query; `payload` is stolen. */
static int query(tl_http_res *res, const char *name, json_t *payload, json_t **result)
{
  int rc = tl_query_bus_execute_json(A->queries, name, payload, NULL, result);
  json_decref(payload);
  return rc ? answer_error(res, rc) : 0;
}

/* The body as a JSON object without the fields the path and headers set. */
static json_t *body_object(tl_http_req *req, tl_http_res *res)
{
  json_t *b = NULL;
  if (tl_http_req_json(req, res, &b) != 0) return NULL;
  if (!json_is_object(b)) {
    tl_http_res_problem(res, 422, "body: expected a JSON object");
    json_decref(b);
    return NULL;
  }
  static const char *const reserved[] = { "id", "expected_version" };
  for (size_t i = 0; i < 2; i++)
    if (json_object_get(b, reserved[i])) {
      tl_http_res_problem(res, 422, "unknown field '%s' (expected 'name', 'email')", reserved[i]);
      json_decref(b);
      return NULL;
    }
  return b;
}

/* ---- users ------------------------------------------------------------------------ */

static int create_user(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  json_t *b = body_object(req, res), *out = NULL;
  if (!b) return 0;
  int rc = command(req, res, "CreateUser", b, &out);
  return rc == 0 && out ? answer_user(req, res, 201, out) : rc;
}

static int get_user(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  const char *id = user_id(req, res), *at = tl_http_req_query(req, "at");
  int64_t min = 0, at_us = 0;
  json_t *out = NULL;
  if (!id || query_int(req, res, "min_version", 0, INT64_MAX, &min)) return 0;
  if (at && tl_time_parse(at, &at_us) != 0)
    return tl_http_res_problem(res, 400, "query 'at': expected an RFC 3339 time such as "
                                         "2026-01-01T12:00:00Z, got '%.40s'", at);
  int rc = at ? query(res, "GetUserAt", json_pack("{s:s, s:I}", "id", id, "at", (json_int_t)at_us), &out)
              : query(res, "GetUser", json_pack("{s:s, s:I}", "id", id, "min_version", (json_int_t)min),
                      &out);
  if (rc || !out) return rc;
  return at ? tl_http_res_json_t(res, 200, out) : answer_user(req, res, 200, out);
}

static int list_users(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  int64_t limit = 20;
  const char *active = tl_http_req_query(req, "active"), *cursor = tl_http_req_query(req, "cursor");
  if (query_int(req, res, "limit", 1, USERS_LIST_MAX, &limit)) return 0;
  if (active && strcmp(active, "true") && strcmp(active, "false"))
    return tl_http_res_problem(res, 400, "query 'active': expected true or false, got '%.40s'",
                               active);
  if (cursor && !is_uuid(cursor))
    return tl_http_res_problem(res, 400, "query 'cursor': expected the next_cursor of a previous "
                                         "page, got '%.40s'", cursor);
  json_t *p = json_pack("{s:I}", "limit", (json_int_t)limit);
  if (active) json_object_set_new(p, "active", json_boolean(!strcmp(active, "true")));
  if (cursor) json_object_set_new(p, "cursor", json_string(cursor));
  json_t *out = NULL;
  int rc = query(res, "ListUsers", p, &out);
  if (rc || !out) return rc;
  private_cache(res);
  return tl_http_res_json_t(res, 200, out);
}

static int change_user(tl_http_req *req, tl_http_res *res, const char *name, json_t *payload)
{
  json_t *out = NULL;
  json_object_set_new(payload, "id", json_string(tl_http_req_param(req, "id")));
  if (if_match(req, res, payload)) {
    json_decref(payload);
    return 0;
  }
  int rc = command(req, res, name, payload, &out);
  return rc == 0 && out ? answer_user(req, res, 200, out) : rc;
}

static int patch_user(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  if (!user_id(req, res)) return 0;
  json_t *b = body_object(req, res);
  return b ? change_user(req, res, "UpdateUser", b) : 0;
}

static int delete_user(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  if (!user_id(req, res)) return 0;
  return change_user(req, res, "DeactivateUser", json_object());
}

static int user_events(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  const char *id = user_id(req, res);
  json_t *out = NULL;
  int64_t from = 1, limit = 100;
  if (!id || query_int(req, res, "from_version", 1, INT64_MAX, &from) ||
      query_int(req, res, "limit", 1, USERS_EVENTS_MAX, &limit))
    return 0;
  int rc = query(res, "GetUserEvents", json_pack("{s:s, s:I, s:I}", "id", id, "from_version",
                                                 (json_int_t)from, "limit", (json_int_t)limit),
                 &out);
  if (rc || !out) return rc;
  /* A page only grows until it is full: its last version is its ETag. */
  json_t *evs = json_object_get(out, "events");
  char etag[32];
  snprintf(etag, sizeof etag, "\"%lld\"", (long long)json_integer_value(
           json_object_get(json_array_get(evs, json_array_size(evs) - 1), "version")));
  private_cache(res);
  if (not_modified(req, res, etag)) {
    json_decref(out);
    return 0;
  }
  return tl_http_res_json_t(res, 200, out);
}

/* ---- jobs and admin ---------------------------------------------------------------------- */

static json_t *time_or_null(int64_t us)
{
  if (us <= 0) return json_null();
  char buf[40];
  tl_time_format(us, 6, buf, sizeof buf);
  return json_string(buf);
}

static json_t *job_json(const tl_job_info *j)
{
  json_t *o = json_object();
  json_object_set_new(o, "id", json_integer(j->id));
  json_object_set_new(o, "kind", json_string(j->kind));
  json_object_set_new(o, "queue", json_string(j->queue));
  json_object_set_new(o, "state", json_string(tl_job_state_name(j->state)));
  json_object_set_new(o, "priority", json_integer(j->priority));
  json_object_set_new(o, "attempt", json_integer(j->attempt));
  json_object_set_new(o, "max_retries", json_integer(j->max_retries));
  json_object_set_new(o, "last_error", j->last_error ? json_string(j->last_error) : json_null());
  json_object_set_new(o, "created_at", time_or_null(j->created_us));
  json_object_set_new(o, "run_at", time_or_null(j->run_at_us));
  json_object_set_new(o, "finished_at", time_or_null(j->finished_us));
  json_t *args = j->args ? json_loads(j->args, JSON_DECODE_ANY, NULL) : NULL;
  json_object_set_new(o, "args", args ? args : json_null());
  return o;
}

static int list_jobs(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  static const char *const states[] = { "pending", "running", "completed", "discarded",
                                        "cancelled" };
  tl_job_filter f = { .kind = tl_http_req_query(req, "kind") };
  int64_t limit = 50, after = 0;
  const char *state = tl_http_req_query(req, "state");
  if (state) {
    for (int i = 0; i < 5 && !f.state; i++)
      if (!strcmp(state, states[i])) f.state = (tl_job_state)(i + 1);
    if (!f.state)
      return tl_http_res_problem(res, 400, "query 'state': expected pending, running, completed, "
                                           "discarded or cancelled, got '%.40s'", state);
  }
  if (query_int(req, res, "limit", 1, 500, &limit) ||
      query_int(req, res, "after", 0, INT64_MAX, &after))
    return 0;
  f.limit = (size_t)limit;
  f.after_id = after;
  tl_job_list *l = NULL;
  int rc = tl_jobs_list(A->jobs, &f, &l);
  if (rc) return answer_error(res, rc);
  json_t *items = json_array();
  for (size_t i = 0; i < l->count; i++) json_array_append_new(items, job_json(&l->items[i]));
  json_t *next = l->count == (size_t)limit ? json_integer(l->items[l->count - 1].id) : json_null();
  tl_job_list_free(l);
  tl_http_res_header(res, "Cache-Control", "private, no-store");
  return tl_http_res_json_t(res, 200, json_pack("{s:o, s:o}", "items", items, "next_after", next));
}

static int retry_job(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  const char *id = tl_http_req_param(req, "id");
  char *end = NULL;
  long long n = id ? strtoll(id, &end, 10) : 0;
  if (!id || !*id || *end || n <= 0)
    return tl_http_res_problem(res, 404, "job '%.40s' not found (ids are positive integers)",
                               id ? id : "");
  int rc = tl_jobs_retry(A->jobs, n);
  if (rc) return answer_error(res, rc);
  tl_job_info *j = NULL;
  if (tl_jobs_get(A->jobs, n, &j) != 0)
    return tl_http_res_json_t(res, 202, json_pack("{s:I}", "id", (json_int_t)n));
  json_t *o = job_json(j);
  tl_job_info_free(j);
  return tl_http_res_json_t(res, 202, o);
}

static int rebuild_users(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)req;
  (void)ctx;
  int64_t t0 = tl_time_mono_us();
  int rc = tl_projection_rebuild(A->users_projection);
  if (rc == TL_EBUSY)
    return tl_http_res_problem(res, 409, "another replica runs the users projection now; send the "
                                         "rebuild to it or retry later");
  if (rc) return answer_error(res, rc);
  return tl_http_res_json_t(res, 200, json_pack("{s:s, s:I}", "projection", "users", "elapsed_ms",
                                                (json_int_t)((tl_time_mono_us() - t0) / 1000)));
}

/* The document is part of the binary: a hash of it is a stable ETag. */
static char openapi_etag[24];

static void hash_openapi(void)
{
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i + 1 < sizeof openapi_json; i++) h = (h ^ openapi_json[i]) * 1099511628211ULL;
  snprintf(openapi_etag, sizeof openapi_etag, "\"%016llx\"", (unsigned long long)h);
}

static int openapi(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, hash_openapi);
  tl_http_res_header(res, "Cache-Control", "public, max-age=3600");
  if (not_modified(req, res, openapi_etag)) return 0;
  tl_http_res_status(res, 200);
  return tl_http_res_body(res, (const char *)openapi_json, sizeof openapi_json - 1,
                          "application/json");
}

/* ---- the route table -------------------------------------------------------------------- */

typedef enum access { OPEN, READ, WRITE } access;

/* Handlers that wait on the database run on the server's workers
 * (HTTP_WORKERS): many writes wait together and share commits. A GET of
 * one user is served by the HTTP threads, usually from the cache. */
typedef enum runs { INLINE, BLOCKING } runs;

typedef struct route {
  const char *method, *pattern;
  tl_http_handler fn;
  access access;
  runs runs;
} route;

static const route routes[] = {
  { "POST", "/api/v1/users", create_user, WRITE, BLOCKING },
  { "GET", "/api/v1/users", list_users, READ, BLOCKING },
  { "GET", "/api/v1/users/{id}", get_user, READ, INLINE },
  { "PATCH", "/api/v1/users/{id}", patch_user, WRITE, BLOCKING },
  { "DELETE", "/api/v1/users/{id}", delete_user, WRITE, BLOCKING },
  { "GET", "/api/v1/users/{id}/events", user_events, READ, BLOCKING },
  { "GET", "/api/v1/jobs", list_jobs, WRITE, BLOCKING },
  { "POST", "/api/v1/jobs/{id}/retry", retry_job, WRITE, BLOCKING },
  { "POST", "/api/v1/admin/projections/users/rebuild", rebuild_users, WRITE, BLOCKING },
  { "GET", "/openapi.json", openapi, OPEN, INLINE },
};

/* Credentials first: writes and admin routes always, reads unless
 * API_PUBLIC_READS. A refusal says nothing about why. */
static int guarded(tl_http_req *req, tl_http_res *res, void *ctx)
{
  const route *r = ctx;
  if (r->access == WRITE || (r->access == READ && !A->s.public_reads)) {
    if (!auth_check(A->keys, req)) {
      static const char body[] = "{\"type\":\"about:blank\",\"title\":\"Unauthorized\",\"status\":401}";
      tl_http_res_header(res, "WWW-Authenticate", "Bearer");
      tl_http_res_status(res, 401);
      return tl_http_res_body(res, body, sizeof body - 1, "application/problem+json");
    }
  }
  return r->fn(req, res, NULL);
}

int api_routes(app *a)
{
  A = a;
  int rc = 0;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0] && rc == 0; i++)
    rc = (routes[i].runs == BLOCKING ? tl_http_route_blocking : tl_http_route)(
        a->http, routes[i].method, routes[i].pattern, guarded, (void *)&routes[i]);
  return rc;
}

void api_print_routes(FILE *out)
{
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    fprintf(out, "%s %s\n", routes[i].method, routes[i].pattern);
}
