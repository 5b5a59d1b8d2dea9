/* Internal to the HTTP module: the router, the request and response
 * objects, and the pieces the server, health and problem files share.
 * Not installed. */
#ifndef TRELLIS_HTTP_INT_H
#define TRELLIS_HTTP_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trellis/http.h"
#include "trellis/metrics.h"

struct MHD_Connection;
struct MHD_Daemon;

/* ---- limits ---- */

#define TL__HTTP_MAX_PATH 8192      /* longer request paths get 414 */
#define TL__HTTP_MAX_PARAMS 16      /* parameters in one pattern */
#define TL__HTTP_MAX_SEGMENTS 128   /* segments in one pattern */
#define TL__HTTP_MAX_METHODS 32     /* distinct methods in one router */
#define TL__HTTP_MAX_METHOD_LEN 24
#define TL__HTTP_MAX_NAME 64        /* parameter name length */
#define TL__HTTP_ALLOW_MAX 1024     /* buffer for an Allow header value */
#define TL__HTTP_REQ_ID_MAX 128
#define TL__HTTP_GZIP_MIN 1024      /* bodies up to this size go as they are */

/* ---- a lock-free cache of metric series, per route ----
 * Keys are small integers (method label and status); a slot is claimed
 * once with a CAS and never changes, so readers need no lock. When every
 * slot is taken the caller falls back to tl_metric_series(). */
#define TL__SERIES_SLOTS 8
typedef struct tl__series_cache {
  _Atomic uint32_t key[TL__SERIES_SLOTS];
  _Atomic(tl_series *) val[TL__SERIES_SLOTS];
} tl__series_cache;

/* ---- router (pure: no MHD, no I/O) ---- */

typedef struct tl__router tl__router;

/* One registered route. Owned by the router; lives as long as it. */
typedef struct tl__route {
  char *method;       /* "GET" */
  char *pattern;      /* as registered, the metrics label */
  tl_http_handler handler;
  void *ctx;
  unsigned method_id; /* index into the router's method table */
  unsigned nparams;
  char *param_names[TL__HTTP_MAX_PARAMS]; /* in path order */
  bool quiet;         /* probe route: access log at debug level */
  bool blocking;      /* runs on a worker thread (tl_http_route_blocking) */
  tl__series_cache totals;    /* http_requests_total by method+status */
  tl__series_cache durations; /* http_request_duration_seconds by method */
  struct tl__route *next;     /* registration order */
} tl__route;

/* A slice of the request path (not NUL-terminated). */
typedef struct tl__slice {
  const char *p;
  size_t n;
} tl__slice;

typedef enum tl__match_kind {
  TL__MATCH_FOUND = 0,
  TL__MATCH_NONE,     /* 404: no pattern matches the path */
  TL__MATCH_METHOD,   /* 405: patterns match, none for this method */
  TL__MATCH_BADPATH,  /* 400: not an origin-form path */
  TL__MATCH_TOOLONG   /* 414: longer than TL__HTTP_MAX_PATH */
} tl__match_kind;

/* The result of one lookup. `params` are raw (still percent-encoded)
 * slices of the path, in the route's parameter order. */
typedef struct tl__match {
  tl__match_kind kind;
  const tl__route *route;
  unsigned nparams;
  tl__slice params[TL__HTTP_MAX_PARAMS];
  uint64_t allow; /* method ids of the patterns that matched the path */
} tl__match;

/* Returns 0 or TL_ENOMEM. */
int tl__router_new(tl__router **out);
/* NULL-safe. Frees every route. */
void tl__router_free(tl__router *r);
/* Add a route. `method` and `pattern` are copied. Returns 0 or TL_EINVAL
 * with a message naming the route ("route 'GET /a/{}': empty parameter
 * name '{}'"); `*out` (optional) gets the route. Not thread-safe: add
 * every route before matching starts. */
int tl__router_add(tl__router *r, const char *method, const char *pattern,
                   tl_http_handler handler, void *ctx, tl__route **out);
/* Look up `path` (`len` bytes, no query string) for `method`. Literal
 * segments win over {name}, which wins over {name...}; HEAD falls back to
 * GET. Allocation-free; any thread once the routes are added. */
void tl__router_match(const tl__router *r, const char *method,
                      const char *path, size_t len, tl__match *m);
/* The Allow value for a set of method ids: sorted, ", "-separated, HEAD
 * added when GET is there. Returns the length written (truncated to fit
 * `size`, always NUL-terminated). */
size_t tl__router_allow(const tl__router *r, uint64_t allow, char *buf,
                        size_t size);
/* Registered routes in registration order. */
tl__route *tl__router_routes(const tl__router *r);

/* Percent-decode `n` bytes of `in` into `out` (room for n + 1 bytes, NUL
 * added). '+' stays '+'. Returns the decoded length, or -1 for an invalid
 * escape and -2 for "%00". */
long tl__pct_decode(const char *in, size_t n, char *out);

/* ---- per-request memory ----
 * A bump allocator that starts in the request object itself, so short
 * requests need no allocation beyond the object. Freed all at once. */
typedef struct tl__arena_block {
  struct tl__arena_block *next;
  size_t cap, used;
  char data[];
} tl__arena_block;

#define TL__ARENA_INLINE 768
typedef struct tl__arena {
  size_t used;
  tl__arena_block *blocks;
  _Alignas(16) char inline_buf[TL__ARENA_INLINE];
} tl__arena;

void *tl__arena_alloc(tl__arena *a, size_t n);
char *tl__arena_strndup(tl__arena *a, const char *s, size_t n);
void tl__arena_free(tl__arena *a);

/* ---- request and response ---- */

typedef struct tl__header {
  const char *name, *value; /* arena copies */
  struct tl__header *next;
} tl__header;

struct tl_http_res {
  tl_http_req *req;
  int status;              /* 0: 200 with a body, 204 without */
  const char *body;
  size_t body_len;
  void (*body_free)(void *); /* NULL when the body is static */
  const char *content_type; /* static or arena */
  tl__header *headers, *headers_tail;
  bool has_encoding;       /* the handler set Content-Encoding */
  bool is_problem;         /* the body is a problem document */
};

struct tl_http_req {
  tl_http_server *srv;
  struct MHD_Connection *conn;
  const char *method;      /* MHD's, valid for the request */
  char *path;              /* raw (still encoded), no query; arena */
  size_t path_len;
  const char *query;       /* raw text after '?', or NULL; arena */
  tl__match match;
  const char *params[TL__HTTP_MAX_PARAMS]; /* decoded; arena */
  char *body;              /* malloc'd, NUL-terminated */
  size_t body_len, body_cap;
  size_t discarded;        /* bytes dropped after the limit */
  int64_t t0_us;           /* monotonic, request line received */
  int status;              /* as queued */
  size_t bytes;            /* body bytes sent */
  unsigned method_label;   /* TL__METHOD_* for metrics */
  bool started;            /* the access handler saw it: counted in flight */
  bool responded;
  bool too_big;
  bool is_head;
  bool path_too_long;      /* `path` holds only a prefix; answered 414 */
  bool suspended;          /* handed to a worker; MHD's threads leave it */
  _Atomic bool handled;    /* the worker filled `res`: queue it */
  struct tl_http_req *next_job; /* the workers' queue */
  char id[TL__HTTP_REQ_ID_MAX + 1];
  char trace_id[33];
  char traceparent[56];
  tl_http_res res;
  tl__arena arena;         /* last: has the inline buffer */
};

/* Method labels for metrics: known methods by name, others "OTHER", and
 * a matched route's own method by TL__METHOD_ROUTE. */
enum {
  TL__METHOD_GET, TL__METHOD_HEAD, TL__METHOD_POST, TL__METHOD_PUT,
  TL__METHOD_DELETE, TL__METHOD_PATCH, TL__METHOD_OPTIONS,
  TL__METHOD_CONNECT, TL__METHOD_TRACE, TL__METHOD_OTHER,
  TL__METHOD_ROUTE
};
unsigned tl__method_label(const char *method);
const char *tl__method_label_name(unsigned label);

/* Fill id, trace_id and traceparent from the request headers. */
void tl__req_ids(tl_http_req *req, const char *x_request_id,
                 const char *traceparent);
/* true when `s` is a usable x-request-id: 1..128 of [A-Za-z0-9._:-]. */
bool tl__request_id_ok(const char *s);
/* Set a body the response does not own (static or arena memory). */
void tl__res_body_static(tl_http_res *res, const char *data, size_t len,
                         const char *content_type);
/* Take ownership of `data`, freed with `free_fn`. On failure (NULL data)
 * nothing is set. */
void tl__res_body_take(tl_http_res *res, char *data, size_t len,
                       const char *content_type, void (*free_fn)(void *));
/* Drop any body and headers the handler set (before an error answer). */
void tl__res_reset(tl_http_res *res);
int tl__res_problemv(tl_http_res *res, int status, const char *fmt,
                     va_list ap) __attribute__((format(printf, 3, 0)));
/* Build the MHD response for `req->res` and queue it. Returns the MHD
 * result (1 queued, 0 failed). */
int tl__res_queue(tl_http_req *req);
/* true when the Accept-Encoding value accepts gzip (q > 0). */
bool tl__accepts_gzip(const char *accept_encoding);
/* Gzip `len` bytes into a malloc'd buffer; NULL when it fails or does not
 * shrink the data. */
char *tl__gzip(const char *data, size_t len, size_t *out_len);

/* ---- server ---- */

/* A readiness check. Refcounted: the server holds one reference and
 * every running check thread one more, so a check that outlives its
 * deadline (or the server) frees nothing in use. */
typedef struct tl__check {
  _Atomic int refs;
  _Atomic int running;  /* threads currently running it */
  char *name;
  tl_http_check fn;
  void *ctx;
  int64_t timeout_us;
} tl__check;
void tl__check_release(tl__check *c);

struct tl_http_server {
  char *bind, *version, *commit, *variant;
  uint16_t port_cfg;
  unsigned threads;
  size_t max_body;
  int64_t shutdown_timeout_us;
  unsigned connection_timeout_s;
  bool ipv6;
  uint8_t addr[16];         /* network order: 4 bytes for IPv4, 16 for IPv6 */

  tl__router *router;
  tl__route unmatched;      /* metrics for requests no route took */

  tl_metrics *metrics;
  tl_metric *m_total, *m_duration, *m_inflight, *m_too_big;
  tl_series *s_inflight, *s_too_big;

  struct MHD_Daemon *daemon;
  uint16_t port;
  _Atomic int state;        /* TL__SRV_* */
  _Atomic bool draining;
  _Atomic bool stopping;    /* responses carry Connection: close */
  _Atomic long in_flight;
  pthread_mutex_t stop_mu;

  pthread_mutex_t checks_mu;
  tl__check **checks;
  size_t nchecks, checks_cap;

  /* Workers for blocking routes: started with the server when any
   * route is blocking. */
  unsigned nworkers;
  pthread_t *workers;
  unsigned workers_started;
  pthread_mutex_t jobs_mu;
  pthread_cond_t jobs_cv;
  struct tl_http_req *jobs_head, *jobs_tail; /* locks: jobs_mu */
  bool jobs_closing;                         /* locks: jobs_mu */
  bool any_blocking;

  char *version_body;       /* GET /version, built once */
  size_t version_len;
};

enum { TL__SRV_NEW, TL__SRV_RUNNING, TL__SRV_STOPPED };

/* Register the built-in routes (health, metrics, version). */
int tl__health_routes(tl_http_server *srv);
/* Wait, up to the longest check timeout, for check threads still running. */
void tl__health_wait_checks(tl_http_server *srv);

#endif
