/* trellis: an HTTP server on libmicrohttpd with a router, JSON helpers,
 * problem+json errors, health, metrics and graceful shutdown. */
#ifndef TRELLIS_HTTP_H
#define TRELLIS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_http_server tl_http_server;
typedef struct tl_http_req tl_http_req; /* lives for one handler call */
typedef struct tl_http_res tl_http_res; /* lives for one handler call */

/* Zero fields take the defaults shown. */
typedef struct tl_http_config {
  const char *bind;             /* "127.0.0.1", "0.0.0.0" (default), "::" */
  uint16_t port;                /* 8080; 0 picks a free port */
  unsigned threads;             /* threads that parse requests and run the
                                   handlers of tl_http_route; default 2 x cores */
  unsigned workers;             /* threads that run the handlers of
                                   tl_http_route_blocking; default 64 */
  size_t max_body;              /* 1 MiB; larger bodies get 413 */
  int64_t shutdown_timeout_us;  /* in-flight drain deadline, 25 s */
  unsigned connection_timeout_s;/* idle keep-alive connections, 30 s */
  tl_metrics *metrics;          /* default tl_metrics_default() */
  const char *version;          /* for GET /version; copied */
  const char *commit;           /* for GET /version; copied */
  const char *variant;          /* APP_VARIANT for GET /version; copied */
} tl_http_config;

/* A handler fills `res`. It runs on a server worker thread; `req`, `res`
 * and every string they return are valid until it returns. A handler that
 * sets nothing answers 204. Return 0; a negative status answers 500 with a
 * problem document (the detail is logged, not sent). */
typedef int (*tl_http_handler)(tl_http_req *req, tl_http_res *res, void *ctx);

/* Create a server with the built-in routes GET /health/live,
 * GET /health/ready, GET /metrics and GET /version. Config copied.
 * Returns 0, TL_EINVAL (naming the field) or TL_ENOMEM. */
int tl_http_server_new(tl_http_server **out, const tl_http_config *cfg);

/* Add a route before start. `pattern` is a path whose segments may be
 * `{name}` parameters ("/api/v1/users/{id}"); a final `{name...}` takes
 * the rest of the path. A path that matches no route answers 404, one
 * that matches with another method 405 with an Allow header (HEAD is
 * served by GET routes). Returns 0 or TL_EINVAL (bad pattern, duplicate). */
int tl_http_route(tl_http_server *srv, const char *method, const char *pattern,
                  tl_http_handler handler, void *ctx);

/* The same for a handler that waits most of its time (a database commit,
 * a call to another service): it runs on one of the `workers` threads
 * while its connection is set aside, so the `threads` keep parsing and
 * serving the quick routes, and up to `workers` such requests wait at
 * once (many concurrent writes are what lets them share commits). Costs
 * two thread switches per request: keep quick handlers on
 * tl_http_route. */
int tl_http_route_blocking(tl_http_server *srv, const char *method, const char *pattern,
                           tl_http_handler handler, void *ctx);

/* A readiness check: return 0 when ready, else a negative status, and
 * optionally write a short reason into `detail` (size `n`); a ready check
 * may leave a note there too ("degraded: ..."), shown as its "detail".
 * It runs on a
 * worker thread for each GET /health/ready, and its result counts as a
 * failure ("timeout") when it takes longer than `timeout_us` (default
 * 2 s). The name and ctx must outlive the server. */
typedef int (*tl_http_check)(void *ctx, char *detail, size_t n);
int tl_http_ready_check(tl_http_server *srv, const char *name,
                        tl_http_check check, void *ctx, int64_t timeout_us);

/* Start listening. Returns 0, TL_EIO (port in use, naming it) or
 * TL_EINVAL. */
int tl_http_server_start(tl_http_server *srv);

/* The port listened on (useful with port 0). */
uint16_t tl_http_server_port(const tl_http_server *srv);

/* Shutdown, step 1: /health/ready answers 503 from now on; everything
 * else is still served. Any thread; idempotent. */
void tl_http_server_drain(tl_http_server *srv);
bool tl_http_server_draining(const tl_http_server *srv);

/* Shutdown, step 2: stop accepting connections, let in-flight requests
 * finish within the shutdown timeout, then stop. Returns 0, or
 * TL_ETIMEOUT when requests were still running at the deadline (they are
 * cut). Any thread but a handler's. */
int tl_http_server_stop(tl_http_server *srv);

/* Stops if needed and frees. NULL-safe. */
void tl_http_server_free(tl_http_server *srv);

/* ---- request ---- */
const char *tl_http_req_method(const tl_http_req *req);
const char *tl_http_req_path(const tl_http_req *req);
/* The route pattern that matched ("/api/v1/users/{id}"); used as the
 * metrics label so raw paths never become label values. */
const char *tl_http_req_route(const tl_http_req *req);
/* A path parameter, percent-decoded; NULL if the route has none so named. */
const char *tl_http_req_param(const tl_http_req *req, const char *name);
/* A query argument, decoded; NULL if absent. */
const char *tl_http_req_query(const tl_http_req *req, const char *name);
/* A request header (name in any case); NULL if absent. */
const char *tl_http_req_header(const tl_http_req *req, const char *name);
/* The body (NUL-terminated for convenience) and its length. */
const char *tl_http_req_body(const tl_http_req *req, size_t *len);
/* The request id: the client's x-request-id if it is sane, else a UUIDv7. */
const char *tl_http_req_id(const tl_http_req *req);
/* The trace id from a valid W3C traceparent header, or "". */
const char *tl_http_req_trace_id(const tl_http_req *req);
/* The incoming traceparent header if valid, else NULL. */
const char *tl_http_req_traceparent(const tl_http_req *req);

/* Parse the body as JSON into `*out` (caller json_decref()s it). On
 * malformed JSON it answers 400 with a problem naming the line, column and
 * error, and returns TL_EINVAL; the handler then just returns 0. A key
 * given twice in one object is malformed too. */
int tl_http_req_json(tl_http_req *req, tl_http_res *res, json_t **out);

/* ---- response ---- */
void tl_http_res_status(tl_http_res *res, int status);
/* Add a header (copied). Returns 0, TL_EINVAL (CR/LF in it) or TL_ENOMEM. */
int tl_http_res_header(tl_http_res *res, const char *name, const char *value);
/* Set the body (copied) and its Content-Type. */
int tl_http_res_body(tl_http_res *res, const char *data, size_t len,
                     const char *content_type);
/* Set the status and a JSON body (`json` is UTF-8 JSON text, copied). */
int tl_http_res_json(tl_http_res *res, int status, const char *json, size_t len);
/* Same, from a jansson value (reference stolen, even on error). */
int tl_http_res_json_t(tl_http_res *res, int status, json_t *json);
/* An RFC 9457 application/problem+json response: {"type":"about:blank",
 * "title":<reason phrase>,"status":..,"detail":..,"instance":<path>,
 * "request_id":..}. `detail` is a printf format. */
int tl_http_res_problem(tl_http_res *res, int status, const char *detail_fmt,
                        ...) __attribute__((format(printf, 3, 4)));

/* The reason phrase for a status code ("Not Found"), "Unknown" otherwise. */
const char *tl_http_reason(int status);

#ifdef __cplusplus
}
#endif
#endif
