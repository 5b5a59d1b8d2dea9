/* The server: configuration, the libmicrohttpd daemon and its callbacks,
 * request dispatch, the body limit, metrics, access logs and shutdown. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "http_int.h"
#include "trellis/clock.h"
#include "trellis/error.h"
#include "trellis/log.h"

#define DEFAULT_PORT 8080
#define DEFAULT_MAX_BODY ((size_t)1 << 20)
#define MAX_MAX_BODY ((size_t)1 << 30)
#define DEFAULT_SHUTDOWN_TIMEOUT_US (25 * 1000000LL)
#define DEFAULT_CONNECTION_TIMEOUT_S 30
#define MAX_THREADS 1024
#define MAX_WORKERS 4096
#define DEFAULT_WORKERS 64

static char *dup_or_null(const char *s)
{
  if (!s)
    return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

/* Probes are logged at debug so they do not flood the logs. */
static bool route_is_probe(const char *pattern)
{
  return strncmp(pattern, "/health/", 8) == 0 || strcmp(pattern, "/metrics") == 0;
}

/* ---- metrics ---- */

static int register_metrics(tl_http_server *srv)
{
  tl_metrics *reg = srv->metrics;
  int rc = tl_metrics_counter(reg, "http_requests_total",
                              "HTTP requests answered, by method, route and status.",
                              "method,route,status", &srv->m_total);
  if (rc == 0)
    rc = tl_metrics_histogram(reg, "http_request_duration_seconds",
                              "Time from the request line to the last byte of the response.",
                              "method,route", NULL, 0, &srv->m_duration);
  if (rc == 0)
    rc = tl_metrics_gauge(reg, "http_requests_in_flight",
                          "HTTP requests being processed (idle connections excluded).",
                          NULL, &srv->m_inflight);
  if (rc == 0)
    rc = tl_metrics_counter(reg, "http_request_body_too_large_total",
                            "HTTP requests refused with 413 for a body over the limit.",
                            NULL, &srv->m_too_big);
  if (rc < 0)
    return tl_error_wrap(rc, "http: metrics");
  srv->s_inflight = tl_metric_default(srv->m_inflight);
  srv->s_too_big = tl_metric_default(srv->m_too_big);
  if (!srv->s_inflight || !srv->s_too_big)
    return tl_error_set(TL_ENOMEM, "http: metrics: out of memory");
  return 0;
}

/* The series for `key` in `c`, created through the registry on a miss. */
static tl_series *series_cached(tl__series_cache *c, uint32_t key, tl_metric *m,
                                const char *const *values, size_t n)
{
  for (int i = 0; i < TL__SERIES_SLOTS; i++) {
    uint32_t k = atomic_load_explicit(&c->key[i], memory_order_acquire);
    if (k == key) {
      tl_series *s = atomic_load_explicit(&c->val[i], memory_order_acquire);
      return s ? s : tl_metric_series(m, values, n);
    }
    if (k == 0) {
      uint32_t expected = 0;
      if (atomic_compare_exchange_strong(&c->key[i], &expected, key)) {
        tl_series *s = tl_metric_series(m, values, n);
        atomic_store_explicit(&c->val[i], s, memory_order_release);
        return s;
      }
      if (expected == key)
        return tl_metric_series(m, values, n);
    }
  }
  return tl_metric_series(m, values, n);
}

static void record(tl_http_server *srv, tl_http_req *req, int status, double seconds)
{
  const tl__route *rt = req->match.route ? req->match.route : &srv->unmatched;
  const char *method = req->method_label == TL__METHOD_ROUTE
                           ? rt->method
                           : tl__method_label_name(req->method_label);
  char code[12];
  snprintf(code, sizeof code, "%d", status);
  uint32_t mkey = (req->method_label + 1) << 16;
  tl_series *total = series_cached((tl__series_cache *)&rt->totals,
                                   mkey | (uint32_t)(status & 0xffff), srv->m_total,
                                   TL_LABELS(method, rt->pattern, code));
  tl_series *dur = series_cached((tl__series_cache *)&rt->durations, mkey, srv->m_duration,
                                 TL_LABELS(method, rt->pattern));
  if (total)
    tl_series_inc(total);
  if (dur)
    tl_series_observe(dur, seconds);
}

/* ---- configuration ---- */

int tl_http_server_new(tl_http_server **out, const tl_http_config *cfg)
{
  if (!out)
    return tl_error_set(TL_EINVAL, "http: NULL out parameter");
  *out = NULL;
  tl_http_config c = cfg ? *cfg : (tl_http_config){ 0 };
  const char *bind = c.bind && *c.bind ? c.bind : "0.0.0.0";
  uint8_t addr[16];
  bool ipv6 = false;
  if (inet_pton(AF_INET, bind, addr) != 1) {
    if (inet_pton(AF_INET6, bind, addr) != 1)
      return tl_error_set(TL_EINVAL, "HTTP_BIND: '%s' is not an IPv4 or IPv6 address", bind);
    ipv6 = true;
  }
  if (c.threads > MAX_THREADS)
    return tl_error_set(TL_EINVAL, "HTTP_THREADS: %u is out of range [1, %d]", c.threads,
                        MAX_THREADS);
  if (c.workers > MAX_WORKERS)
    return tl_error_set(TL_EINVAL, "HTTP_WORKERS: %u is out of range [1, %d]", c.workers,
                        MAX_WORKERS);
  if (c.max_body > MAX_MAX_BODY)
    return tl_error_set(TL_EINVAL, "HTTP_MAX_BODY: %zu is out of range [1, %zu]", c.max_body,
                        MAX_MAX_BODY);
  if (c.shutdown_timeout_us < 0)
    return tl_error_set(TL_EINVAL, "SHUTDOWN_TIMEOUT: %lld us is negative",
                        (long long)c.shutdown_timeout_us);
  if (c.connection_timeout_s > 86400)
    return tl_error_set(TL_EINVAL, "http: connection_timeout_s %u is out of range [1, 86400]",
                        c.connection_timeout_s);

  tl_http_server *srv = calloc(1, sizeof *srv);
  if (!srv)
    return tl_error_set(TL_ENOMEM, "http: out of memory");
  pthread_mutex_init(&srv->stop_mu, NULL);
  pthread_mutex_init(&srv->checks_mu, NULL);
  pthread_mutex_init(&srv->jobs_mu, NULL);
  pthread_cond_init(&srv->jobs_cv, NULL);
  srv->nworkers = c.workers ? c.workers : DEFAULT_WORKERS;
  memcpy(srv->addr, addr, sizeof addr);
  srv->ipv6 = ipv6;
  /* With a config, port 0 means any free port; without one, 8080. */
  srv->port_cfg = cfg ? c.port : DEFAULT_PORT;
  if (!c.threads) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
      cores = 1;
    c.threads = cores * 2 > MAX_THREADS ? MAX_THREADS : (unsigned)(cores * 2);
  }
  srv->threads = c.threads;
  srv->max_body = c.max_body ? c.max_body : DEFAULT_MAX_BODY;
  srv->shutdown_timeout_us = c.shutdown_timeout_us ? c.shutdown_timeout_us
                                                   : DEFAULT_SHUTDOWN_TIMEOUT_US;
  srv->connection_timeout_s = c.connection_timeout_s ? c.connection_timeout_s
                                                     : DEFAULT_CONNECTION_TIMEOUT_S;
  srv->metrics = c.metrics ? c.metrics : tl_metrics_default();
  srv->unmatched.method = (char *)"OTHER";
  srv->unmatched.pattern = (char *)"unmatched";
  srv->bind = dup_or_null(bind);
  srv->version = dup_or_null(c.version);
  srv->commit = dup_or_null(c.commit);
  srv->variant = dup_or_null(c.variant ? c.variant : "");
  int rc = 0;
  if (!srv->bind || !srv->variant || (c.version && !srv->version) ||
      (c.commit && !srv->commit))
    rc = tl_error_set(TL_ENOMEM, "http: out of memory");
  if (rc == 0)
    rc = tl__router_new(&srv->router);
  if (rc == 0)
    rc = register_metrics(srv);
  if (rc == 0)
    rc = tl__health_routes(srv);
  if (rc < 0) {
    tl_http_server_free(srv);
    return rc;
  }
  *out = srv;
  return 0;
}

static int add_route(tl_http_server *srv, const char *method, const char *pattern,
                     tl_http_handler handler, void *ctx, bool blocking)
{
  if (!srv)
    return tl_error_set(TL_EINVAL, "http: NULL server");
  if (atomic_load(&srv->state) != TL__SRV_NEW)
    return tl_error_set(TL_EINVAL, "route '%s %s': routes must be added before the server starts",
                        method ? method : "", pattern ? pattern : "");
  tl__route *rt = NULL;
  int rc = tl__router_add(srv->router, method, pattern, handler, ctx, &rt);
  if (rc == 0) {
    rt->quiet = route_is_probe(pattern);
    rt->blocking = blocking;
    srv->any_blocking |= blocking;
  }
  return rc;
}

int tl_http_route(tl_http_server *srv, const char *method, const char *pattern,
                  tl_http_handler handler, void *ctx)
{
  return add_route(srv, method, pattern, handler, ctx, false);
}

int tl_http_route_blocking(tl_http_server *srv, const char *method, const char *pattern,
                           tl_http_handler handler, void *ctx)
{
  return add_route(srv, method, pattern, handler, ctx, true);
}

/* ---- the request's life in MHD ---- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    buf[--n] = '\0';
  tl_log(TL_LOG_WARN, "libmicrohttpd", TL_F_STR("detail", buf));
}

/* Called once per request with the raw request target, before MHD
 * splits off the query and percent-decodes the path: matching and
 * decoding parameters after matching need the raw form. */
static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *conn)
{
  tl_http_server *srv = cls;
  tl_http_req *req = malloc(sizeof *req);
  if (!req)
    return NULL;
  memset(req, 0, offsetof(tl_http_req, arena) + offsetof(tl__arena, inline_buf));
  req->srv = srv;
  req->conn = conn;
  req->res.req = req;
  req->t0_us = tl_time_mono_us();

  const char *p = uri ? uri : "";
  /* absolute-form ("http://host/path") carries the path after the host */
  if (p[0] != '/' && (strncasecmp(p, "http://", 7) == 0 || strncasecmp(p, "https://", 8) == 0)) {
    const char *host = strstr(p, "://") + 3;
    const char *slash = strpbrk(host, "/?");
    p = slash && *slash == '/' ? slash : "/";
  }
  size_t plen = strcspn(p, "?#");
  if (plen > TL__HTTP_MAX_PATH) {
    /* Answered 414: keep a prefix for the problem document and the log. */
    req->path_too_long = true;
    req->path = tl__arena_alloc(&req->arena, 260);
    if (req->path)
      snprintf(req->path, 260, "%.256s...", p);
    req->path_len = req->path ? strlen(req->path) : 0;
  } else {
    req->path = tl__arena_strndup(&req->arena, p, plen);
    req->path_len = plen;
  }
  if (p[plen] == '?') {
    const char *q = p + plen + 1;
    req->query = tl__arena_strndup(&req->arena, q, strcspn(q, "#"));
  }
  if (!req->path) {
    tl__arena_free(&req->arena);
    free(req);
    return NULL;
  }
  return req;
}

typedef struct seen_headers {
  const char *request_id, *traceparent, *content_length;
} seen_headers;

static enum MHD_Result header_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
  seen_headers *h = cls;
  switch (strlen(key)) {
  case 11:
    if (strcasecmp(key, "traceparent") == 0 && !h->traceparent)
      h->traceparent = value;
    break;
  case 12:
    if (strcasecmp(key, "x-request-id") == 0 && !h->request_id)
      h->request_id = value;
    break;
  case 14:
    if (strcasecmp(key, "content-length") == 0)
      h->content_length = value;
    break;
  }
  return MHD_YES;
}

static void decode_error(tl_http_res *res, const tl__route *rt, unsigned i, long why)
{
  tl_http_res_problem(res, 400, "path parameter '%s': %s", rt->param_names[i],
                      why == -2 ? "'%00' is not allowed" : "invalid percent-encoding");
}

/* Decode the path parameters and run the route's handler into req->res. */
static void run_handler(tl_http_req *req)
{
  tl_http_res *res = &req->res;
  const tl__match *m = &req->match;
  const tl__route *rt = m->route;
  bool ok = true;
  for (unsigned i = 0; i < m->nparams && ok; i++) {
    char *v = tl__arena_alloc(&req->arena, m->params[i].n + 1);
    long n = v ? tl__pct_decode(m->params[i].p, m->params[i].n, v) : -1;
    if (!v) {
      tl_http_res_problem(res, 500, "internal error; see logs with request_id %s", req->id);
      ok = false;
    } else if (n < 0) {
      decode_error(res, rt, i, n);
      ok = false;
    }
    req->params[i] = v;
  }
  if (!ok)
    return;
  tl_error_clear();
  int rc = rt->handler(req, res, rt->ctx);
  if (rc < 0 && !res->is_problem) {
    tl_log(TL_LOG_ERROR, "http handler failed", TL_F_STR("route", rt->pattern),
           TL_F_STR("method", req->method), TL_F_STR("status", tl_status_name(rc)),
           TL_F_STR("error", tl_error_last()));
    tl__res_reset(res);
    tl_http_res_problem(res, 500, "internal error; see logs with request_id %s", req->id);
  }
}

/* Queue the response a handler (or the server) filled in. */
static enum MHD_Result queue(tl_http_req *req)
{
  tl_log_context_set(req->id, req->trace_id);
  enum MHD_Result ret = tl__res_queue(req) == MHD_YES ? MHD_YES : MHD_NO;
  tl_log_context_set(NULL, NULL);
  return ret;
}

/* A blocking route's request: set the connection aside and give it to
 * the workers. False when there are none running (then it runs here). */
static bool hand_to_worker(tl_http_req *req)
{
  tl_http_server *srv = req->srv;
  pthread_mutex_lock(&srv->jobs_mu);
  bool ok = srv->workers_started > 0 && !srv->jobs_closing;
  if (ok) {
    MHD_suspend_connection(req->conn);
    req->suspended = true;
    req->next_job = NULL;
    if (srv->jobs_tail)
      srv->jobs_tail->next_job = req;
    else
      srv->jobs_head = req;
    srv->jobs_tail = req;
    pthread_cond_signal(&srv->jobs_cv);
  }
  pthread_mutex_unlock(&srv->jobs_mu);
  return ok;
}

/* A worker: run handlers of blocking routes until the server stops and
 * the queue is empty, and give each connection back to MHD. */
static void *worker_main(void *arg)
{
  tl_http_server *srv = arg;
  pthread_mutex_lock(&srv->jobs_mu);
  for (;;) {
    while (!srv->jobs_head && !srv->jobs_closing)
      pthread_cond_wait(&srv->jobs_cv, &srv->jobs_mu);
    tl_http_req *req = srv->jobs_head;
    if (!req)
      break;
    srv->jobs_head = req->next_job;
    if (!srv->jobs_head)
      srv->jobs_tail = NULL;
    pthread_mutex_unlock(&srv->jobs_mu);
    tl_log_context_set(req->id, req->trace_id);
    run_handler(req);
    tl_log_context_set(NULL, NULL);
    atomic_store(&req->handled, true);
    MHD_resume_connection(req->conn); /* MHD calls access_cb again: queue() */
    pthread_mutex_lock(&srv->jobs_mu);
  }
  pthread_mutex_unlock(&srv->jobs_mu);
  return NULL;
}

static void workers_start(tl_http_server *srv)
{
  if (!srv->any_blocking)
    return;
  srv->workers = calloc(srv->nworkers, sizeof *srv->workers);
  for (unsigned i = 0; srv->workers && i < srv->nworkers; i++) {
    if (pthread_create(&srv->workers[i], NULL, worker_main, srv) != 0)
      break;
    pthread_mutex_lock(&srv->jobs_mu);
    srv->workers_started++;
    pthread_mutex_unlock(&srv->jobs_mu);
  }
  if (srv->workers_started < srv->nworkers)
    tl_log(TL_LOG_WARN, "http: fewer workers for blocking routes than configured",
           TL_F_INT("started", srv->workers_started), TL_F_INT("configured", srv->nworkers));
}

/* Let the workers finish what is queued, then join them. */
static void workers_stop(tl_http_server *srv)
{
  pthread_mutex_lock(&srv->jobs_mu);
  srv->jobs_closing = true;
  pthread_cond_broadcast(&srv->jobs_cv);
  unsigned n = srv->workers_started;
  pthread_mutex_unlock(&srv->jobs_mu);
  for (unsigned i = 0; i < n; i++)
    pthread_join(srv->workers[i], NULL);
  free(srv->workers);
  srv->workers = NULL;
  srv->workers_started = 0;
}

/* Answer what the match decided: run the handler here, or hand a
 * blocking one to a worker (the response is queued when it comes back). */
static enum MHD_Result dispatch(tl_http_req *req)
{
  tl_http_server *srv = req->srv;
  tl_http_res *res = &req->res;
  tl__match *m = &req->match;
  tl_log_context_set(req->id, req->trace_id);
  switch (m->kind) {
  case TL__MATCH_FOUND:
    if (m->route->blocking && hand_to_worker(req)) {
      tl_log_context_set(NULL, NULL);
      return MHD_YES;
    }
    run_handler(req);
    break;
  case TL__MATCH_METHOD: {
    char allow[TL__HTTP_ALLOW_MAX];
    tl__router_allow(srv->router, m->allow, allow, sizeof allow);
    if (strcmp(req->method, "OPTIONS") == 0) {
      tl_http_res_status(res, 204);
    } else {
      tl_http_res_problem(res, 405, "method %s is not allowed here; allowed: %s", req->method,
                          allow);
    }
    tl_http_res_header(res, "Allow", allow);
    break;
  }
  case TL__MATCH_NONE:
    tl_http_res_problem(res, 404, "no route matches %s %s", req->method, req->path);
    break;
  case TL__MATCH_BADPATH:
    tl_http_res_problem(res, 400, "the request target must be an absolute path");
    break;
  case TL__MATCH_TOOLONG:
    tl_http_res_problem(res, 414, "the path is longer than %d bytes", TL__HTTP_MAX_PATH);
    break;
  }
  return queue(req);
}

static enum MHD_Result reply_too_big(tl_http_req *req)
{
  tl_http_server *srv = req->srv;
  tl_series_inc(srv->s_too_big);
  tl__res_reset(&req->res);
  tl_http_res_problem(&req->res, 413, "the request body is larger than %zu bytes",
                      srv->max_body);
  tl_log_context_set(req->id, req->trace_id);
  enum MHD_Result ret = tl__res_queue(req) == MHD_YES ? MHD_YES : MHD_NO;
  tl_log_context_set(NULL, NULL);
  return ret;
}

/* First call: headers are in. Count the request and find its route.
 * Answering now would make MHD close the connection (it cannot know the
 * body is empty yet), so only an oversized Content-Length is answered
 * here, where closing is what we want. */
static enum MHD_Result start(tl_http_req *req, const char *method)
{
  tl_http_server *srv = req->srv;
  req->started = true;
  atomic_fetch_add(&srv->in_flight, 1);
  tl_series_add(srv->s_inflight, 1);

  req->method = tl__arena_strndup(&req->arena, method, strlen(method));
  if (!req->method)
    return MHD_NO;
  req->is_head = strcmp(method, "HEAD") == 0;
  seen_headers h = { 0 };
  MHD_get_connection_values(req->conn, MHD_HEADER_KIND, header_cb, &h);
  tl__req_ids(req, h.request_id, h.traceparent);
  if (req->path_too_long)
    req->match = (tl__match){ .kind = TL__MATCH_TOOLONG };
  else
    tl__router_match(srv->router, method, req->path, req->path_len, &req->match);
  const tl__route *rt = req->match.route;
  req->method_label = rt && strcmp(method, rt->method) == 0 ? TL__METHOD_ROUTE
                                                            : tl__method_label(method);

  if (h.content_length) {
    char *end = NULL;
    errno = 0;
    unsigned long long cl = strtoull(h.content_length, &end, 10);
    if (errno == 0 && end != h.content_length && cl > srv->max_body) {
      req->too_big = true;
      return reply_too_big(req);
    }
  }
  return MHD_YES;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
  tl_http_req *req = *con_cls;
  if (!req)
    return MHD_NO; /* out of memory in uri_cb */
  if (!req->started)
    return start(req, method);
  if (req->responded)
    return MHD_YES;
  if (req->suspended) /* back from a worker, or woken early: wait for it */
    return atomic_load(&req->handled) ? queue(req) : MHD_YES;
  tl_http_server *srv = req->srv;
  size_t n = *upload_data_size;
  if (n) {
    *upload_data_size = 0;
    if (req->too_big) {
      /* Dropped, not stored. A client that keeps sending far past the
       * limit loses the connection instead of its 413. */
      req->discarded += n;
      if (req->discarded > srv->max_body) {
        req->status = 413;
        return MHD_NO;
      }
      return MHD_YES;
    }
    if (n > srv->max_body - req->body_len) {
      req->too_big = true;
      req->discarded = n;
      free(req->body);
      req->body = NULL;
      req->body_len = req->body_cap = 0;
      return MHD_YES;
    }
    size_t need = req->body_len + n + 1;
    if (need > req->body_cap) {
      size_t cap = req->body_cap ? req->body_cap * 2 : 4096;
      while (cap < need)
        cap *= 2;
      if (cap > srv->max_body + 1)
        cap = srv->max_body + 1;
      char *b = realloc(req->body, cap);
      if (!b)
        return MHD_NO;
      req->body = b;
      req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, upload_data, n);
    req->body_len += n;
    req->body[req->body_len] = '\0';
    return MHD_YES;
  }
  if (req->too_big)
    return reply_too_big(req);
  return dispatch(req);
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
  tl_http_server *srv = cls;
  tl_http_req *req = *con_cls;
  if (!req)
    return;
  *con_cls = NULL;
  if (req->started) {
    /* nginx's 499: the client went away before an answer was queued */
    int status = req->status ? req->status : 499;
    int64_t us = tl_time_mono_us() - req->t0_us;
    record(srv, req, status, (double)us / 1e6);
    const tl__route *rt = req->match.route;
    tl_log_level level = rt && rt->quiet ? TL_LOG_DEBUG : TL_LOG_INFO;
    if (tl_log_enabled(level)) {
      tl_log_context_set(req->id, req->trace_id);
      tl_log(level, "http request", TL_F_STR("method", req->method),
             TL_F_STR("route", rt ? rt->pattern : "unmatched"), TL_F_STR("path", req->path),
             TL_F_INT("status", status), TL_F_INT("bytes", req->bytes),
             TL_F_DBL("duration_ms", (double)us / 1000.0),
             TL_F_BOOL("complete", toe == MHD_REQUEST_TERMINATED_COMPLETED_OK));
      tl_log_context_set(NULL, NULL);
    }
    tl_series_add(srv->s_inflight, -1);
    atomic_fetch_sub(&srv->in_flight, 1);
  }
  tl__res_reset(&req->res);
  free(req->body);
  tl__arena_free(&req->arena);
  free(req);
}

/* ---- lifecycle ---- */

static size_t fill_sockaddr(const tl_http_server *srv, uint16_t port,
                            struct sockaddr_storage *ss)
{
  memset(ss, 0, sizeof *ss);
  if (srv->ipv6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    memcpy(&a->sin6_addr, srv->addr, 16);
    return sizeof *a;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)ss;
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  memcpy(&a->sin_addr, srv->addr, 4);
  return sizeof *a;
}

/* MHD reports a failed bind only to its log; bind once more ourselves to
 * name the reason. */
static int listen_errno(const tl_http_server *srv)
{
  struct sockaddr_storage ss;
  socklen_t len = (socklen_t)fill_sockaddr(srv, srv->port_cfg, &ss);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return errno;
  int one = 1, err = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1) != 0)
    err = errno;
  close(fd);
  return err;
}

int tl_http_server_start(tl_http_server *srv)
{
  if (!srv)
    return tl_error_set(TL_EINVAL, "http: NULL server");
  pthread_mutex_lock(&srv->stop_mu);
  if (atomic_load(&srv->state) != TL__SRV_NEW) {
    pthread_mutex_unlock(&srv->stop_mu);
    return tl_error_set(TL_EINVAL, "http: the server was already started");
  }
  struct sockaddr_storage ss;
  fill_sockaddr(srv, srv->port_cfg, &ss);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
  if (srv->any_blocking)
    flags |= MHD_ALLOW_SUSPEND_RESUME;
  flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL : MHD_USE_AUTO;
  if (srv->ipv6) {
    static const uint8_t any6[16] = { 0 };
    flags |= memcmp(srv->addr, any6, 16) == 0 ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
  }
  /* One thread is MHD's own polling thread; a pool only from two on. */
  struct MHD_OptionItem pool[] = {
    { srv->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, srv->threads, NULL },
    { MHD_OPTION_END, 0, NULL },
  };
  srv->daemon = MHD_start_daemon(
      flags, srv->port_cfg, NULL, NULL, access_cb, srv,
      MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_URI_LOG_CALLBACK, uri_cb, srv,
      MHD_OPTION_NOTIFY_COMPLETED, completed_cb, srv,
      MHD_OPTION_CONNECTION_TIMEOUT, srv->connection_timeout_s,
      MHD_OPTION_ARRAY, pool,
      MHD_OPTION_END);
  if (!srv->daemon) {
    pthread_mutex_unlock(&srv->stop_mu);
    int err = listen_errno(srv);
    const char *fmt = srv->ipv6 ? "http: cannot listen on [%s]:%u: %s"
                                : "http: cannot listen on %s:%u: %s";
    return tl_error_set(TL_EIO, fmt, srv->bind, (unsigned)srv->port_cfg,
                        err ? strerror(err) : "the server failed to start (see its log)");
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
  srv->port = info && info->port ? info->port : srv->port_cfg;
  workers_start(srv);
  atomic_store(&srv->state, TL__SRV_RUNNING);
  pthread_mutex_unlock(&srv->stop_mu);
  return 0;
}

uint16_t tl_http_server_port(const tl_http_server *srv) { return srv ? srv->port : 0; }

void tl_http_server_drain(tl_http_server *srv)
{
  if (srv && !atomic_exchange(&srv->draining, true))
    tl_log(TL_LOG_INFO, "http: draining; /health/ready now answers 503");
}

bool tl_http_server_draining(const tl_http_server *srv)
{
  return srv && atomic_load(&((tl_http_server *)srv)->draining);
}

int tl_http_server_stop(tl_http_server *srv)
{
  if (!srv)
    return 0;
  pthread_mutex_lock(&srv->stop_mu);
  if (atomic_load(&srv->state) != TL__SRV_RUNNING) {
    pthread_mutex_unlock(&srv->stop_mu);
    return 0;
  }
  atomic_store(&srv->stopping, true);
  /* No new connections from here; keep-alive ones still finish. */
  MHD_socket lfd = MHD_quiesce_daemon(srv->daemon);
  int64_t deadline = tl_time_mono_us() + srv->shutdown_timeout_us;
  while (atomic_load(&srv->in_flight) > 0 && tl_time_mono_us() < deadline)
    tl_sleep_us(5000);
  long cut = atomic_load(&srv->in_flight);
  /* Handlers still running on workers finish and give their connections
   * back: MHD cannot stop with connections set aside. */
  workers_stop(srv);
  /* Closes every connection, idle keep-alive ones included, and waits for
   * handlers still running. */
  MHD_stop_daemon(srv->daemon);
  srv->daemon = NULL;
  if (lfd != MHD_INVALID_SOCKET)
    close(lfd);
  atomic_store(&srv->state, TL__SRV_STOPPED);
  pthread_mutex_unlock(&srv->stop_mu);
  if (cut > 0) {
    return tl_error_set(TL_ETIMEOUT,
                        "http: %ld request%s still running after the %lld ms shutdown timeout",
                        cut, cut == 1 ? " was" : "s were",
                        (long long)(srv->shutdown_timeout_us / 1000));
  }
  return 0;
}

void tl_http_server_free(tl_http_server *srv)
{
  if (!srv)
    return;
  if (srv->daemon)
    tl_http_server_stop(srv);
  tl__health_wait_checks(srv);
  for (size_t i = 0; i < srv->nchecks; i++)
    tl__check_release(srv->checks[i]);
  free(srv->checks);
  tl__router_free(srv->router);
  free(srv->bind);
  free(srv->version);
  free(srv->commit);
  free(srv->variant);
  free(srv->version_body);
  pthread_mutex_destroy(&srv->stop_mu);
  pthread_mutex_destroy(&srv->checks_mu);
  pthread_mutex_destroy(&srv->jobs_mu);
  pthread_cond_destroy(&srv->jobs_cv);
  free(srv);
}
