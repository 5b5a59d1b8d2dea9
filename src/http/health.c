/* The built-in routes: GET /health/live, /health/ready, /metrics and
 * /version, and the readiness checks behind /health/ready. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core_int.h"
#include "http_int.h"
#include "trellis/clock.h"
#include "trellis/error.h"
#include "trellis/trellis.h"

#define DEFAULT_CHECK_TIMEOUT_US (2 * 1000000LL)
/* Runs of one check allowed at once: a check that hangs cannot make
 * every probe start one more thread. */
#define MAX_RUNS_PER_CHECK 4
#define DETAIL_MAX 256

static const char ready_draining[] = "{\"status\":\"draining\"}";
static const char live_ok[] = "{\"status\":\"ok\"}";

/* ---- checks ---- */

void tl__check_release(tl__check *c)
{
  if (c && atomic_fetch_sub(&c->refs, 1) == 1) {
    free(c->name);
    free(c);
  }
}

int tl_http_ready_check(tl_http_server *srv, const char *name, tl_http_check check,
                        void *ctx, int64_t timeout_us)
{
  if (!srv || !name || !*name || !check)
    return tl_error_set(TL_EINVAL, "http: a readiness check needs a name and a function");
  if (timeout_us < 0)
    return tl_error_set(TL_EINVAL, "readiness check '%s': negative timeout", name);
  tl__check *c = calloc(1, sizeof *c);
  size_t n = strlen(name) + 1;
  char *copy = malloc(n);
  if (!c || !copy) {
    free(c);
    free(copy);
    return tl_error_set(TL_ENOMEM, "http: out of memory");
  }
  memcpy(copy, name, n);
  atomic_init(&c->refs, 1);
  atomic_init(&c->running, 0);
  c->name = copy;
  c->fn = check;
  c->ctx = ctx;
  c->timeout_us = timeout_us ? timeout_us : DEFAULT_CHECK_TIMEOUT_US;

  int rc = 0;
  pthread_mutex_lock(&srv->checks_mu);
  for (size_t i = 0; i < srv->nchecks; i++) {
    if (strcmp(srv->checks[i]->name, name) == 0) {
      rc = tl_error_set(TL_EINVAL, "readiness check '%s' is already registered", name);
      break;
    }
  }
  if (rc == 0 && srv->nchecks == srv->checks_cap) {
    size_t cap = srv->checks_cap ? srv->checks_cap * 2 : 4;
    tl__check **v = realloc(srv->checks, cap * sizeof *v);
    if (v) {
      srv->checks = v;
      srv->checks_cap = cap;
    } else {
      rc = tl_error_set(TL_ENOMEM, "http: out of memory");
    }
  }
  if (rc == 0)
    srv->checks[srv->nchecks++] = c;
  pthread_mutex_unlock(&srv->checks_mu);
  if (rc < 0)
    tl__check_release(c);
  return rc;
}

void tl__health_wait_checks(tl_http_server *srv)
{
  int64_t longest = 0;
  for (size_t i = 0; i < srv->nchecks; i++) {
    if (srv->checks[i]->timeout_us > longest)
      longest = srv->checks[i]->timeout_us;
  }
  if (longest > 5000000)
    longest = 5000000;
  int64_t deadline = tl_time_mono_us() + longest;
  for (;;) {
    bool busy = false;
    for (size_t i = 0; i < srv->nchecks && !busy; i++)
      busy = atomic_load(&srv->checks[i]->running) > 0;
    if (!busy || tl_time_mono_us() >= deadline)
      return;
    tl_sleep_us(5000);
  }
}

/* One GET /health/ready: shared by the request and the check threads,
 * freed by whichever lets go last, so a check that overruns its deadline
 * writes into memory that is still there. */
typedef struct run_item {
  struct run *run;
  tl__check *check;
  bool started, done;
  int rc;
  int64_t duration_us;
  char detail[DETAIL_MAX];
} run_item;

typedef struct run {
  _Atomic int refs;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int64_t t0_us;
  size_t n;
  run_item items[];
} run;

static void run_release(run *r)
{
  if (atomic_fetch_sub(&r->refs, 1) == 1) {
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
  }
}

static void *check_main(void *arg)
{
  run_item *it = arg;
  run *r = it->run;
  tl__check *c = it->check;
  char detail[DETAIL_MAX];
  detail[0] = '\0';
  int64_t t0 = tl_time_mono_us();
  int rc = c->fn(c->ctx, detail, sizeof detail);
  int64_t dur = tl_time_mono_us() - t0;
  detail[sizeof detail - 1] = '\0';
  pthread_mutex_lock(&r->mu);
  it->done = true;
  it->rc = rc;
  it->duration_us = dur;
  memcpy(it->detail, detail, sizeof detail);
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  atomic_fetch_sub(&c->running, 1);
  run_release(r);
  tl__check_release(c);
  return NULL;
}

static void start_check(run *r, run_item *it)
{
  tl__check *c = it->check;
  if (atomic_fetch_add(&c->running, 1) >= MAX_RUNS_PER_CHECK) {
    atomic_fetch_sub(&c->running, 1);
    snprintf(it->detail, sizeof it->detail, "timeout (earlier runs still in progress)");
    it->rc = TL_ETIMEOUT;
    it->done = true;
    it->duration_us = 0;
    return;
  }
  atomic_fetch_add(&r->refs, 1);
  atomic_fetch_add(&c->refs, 1);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t th;
  it->started = true;
  if (pthread_create(&th, &attr, check_main, it) != 0) {
    it->started = false;
    atomic_fetch_sub(&r->refs, 1);
    atomic_fetch_sub(&c->refs, 1);
    atomic_fetch_sub(&c->running, 1);
    snprintf(it->detail, sizeof it->detail, "cannot start a thread for the check");
    it->rc = TL_ENOMEM;
    it->done = true;
  }
  pthread_attr_destroy(&attr);
}

static void add_check_json(tl__buf *b, const run_item *it, bool timed_out, bool first)
{
  const tl__check *c = it->check;
  if (!first)
    tl__buf_puts(b, ",");
  tl__buf_json_str(b, c->name, strlen(c->name));
  if (!timed_out && it->rc == 0) {
    /* Ready, with a note when the check left one ("degraded: ..."). */
    tl__buf_puts(b, ":{\"status\":\"up\",");
    if (it->detail[0]) {
      tl__buf_puts(b, "\"detail\":");
      tl__buf_json_str(b, it->detail, strlen(it->detail));
      tl__buf_puts(b, ",");
    }
    tl__buf_printf(b, "\"duration_ms\":%.3f}", (double)it->duration_us / 1000.0);
    return;
  }
  const char *err = timed_out ? "timeout" : it->detail[0] ? it->detail : tl_strerror(it->rc);
  tl__buf_puts(b, ":{\"status\":\"down\",\"error\":");
  tl__buf_json_str(b, err, strlen(err));
  double ms = (double)(timed_out ? c->timeout_us : it->duration_us) / 1000.0;
  tl__buf_printf(b, ",\"duration_ms\":%.3f}", ms);
}

static int ready_handler(tl_http_req *req, tl_http_res *res, void *ctx)
{
  tl_http_server *srv = ctx;
  if (tl_http_server_draining(srv)) {
    tl__res_body_static(res, ready_draining, sizeof ready_draining - 1, "application/json");
    tl_http_res_status(res, 503);
    return 0;
  }
  pthread_mutex_lock(&srv->checks_mu);
  size_t n = srv->nchecks;
  run *r = calloc(1, sizeof *r + n * sizeof r->items[0]);
  if (r) {
    for (size_t i = 0; i < n; i++) {
      r->items[i].run = r;
      r->items[i].check = srv->checks[i];
      atomic_fetch_add(&srv->checks[i]->refs, 1);
    }
  }
  pthread_mutex_unlock(&srv->checks_mu);
  if (!r)
    return tl_error_set(TL_ENOMEM, "http: out of memory for readiness checks");
  atomic_init(&r->refs, 1);
  r->n = n;
  pthread_mutex_init(&r->mu, NULL);
  tl__cond_init_mono(&r->cv);
  r->t0_us = tl_time_mono_us();

  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < n; i++)
    start_check(r, &r->items[i]);
  /* Wait until every check is done or past its own deadline. */
  for (;;) {
    int64_t now = tl_time_mono_us(), next = INT64_MAX;
    for (size_t i = 0; i < n; i++) {
      const run_item *it = &r->items[i];
      int64_t dl = r->t0_us + it->check->timeout_us;
      if (!it->done && dl > now && dl < next)
        next = dl;
    }
    if (next == INT64_MAX)
      break;
    struct timespec ts = { (time_t)(next / 1000000), (long)(next % 1000000) * 1000 };
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }

  bool ready = true;
  tl__buf b = TL__BUF_INIT;
  tl__buf_puts(&b, "{\"status\":\"");
  size_t status_at = b.len;
  tl__buf_puts(&b, "ready\",\"checks\":{");
  for (size_t i = 0; i < n; i++) {
    const run_item *it = &r->items[i];
    bool timed_out = !it->done || it->duration_us > it->check->timeout_us;
    ready &= !timed_out && it->rc == 0;
    add_check_json(&b, it, timed_out, i == 0);
  }
  tl__buf_puts(&b, "}}");
  pthread_mutex_unlock(&r->mu);
  for (size_t i = 0; i < n; i++)
    tl__check_release(r->items[i].check);
  run_release(r);

  if (b.failed) {
    tl__buf_free(&b);
    return tl_error_set(TL_ENOMEM, "http: out of memory for the readiness answer");
  }
  size_t len = 0;
  char *text = tl__buf_steal(&b, &len);
  if (!ready && text) {
    /* "ready" becomes "not ready": rebuild the head of the document. */
    tl__buf nb = TL__BUF_INIT;
    tl__buf_add(&nb, text, status_at);
    tl__buf_puts(&nb, "not ready");
    tl__buf_add(&nb, text + status_at + 5, len - status_at - 5);
    free(text);
    text = tl__buf_steal(&nb, &len);
  }
  if (!text)
    return tl_error_set(TL_ENOMEM, "http: out of memory for the readiness answer");
  tl__res_body_take(res, text, len, "application/json", free);
  tl_http_res_status(res, ready ? 200 : 503);
  return 0;
}

/* ---- the other built-ins ---- */

static int live_handler(tl_http_req *req, tl_http_res *res, void *ctx)
{
  tl__res_body_static(res, live_ok, sizeof live_ok - 1, "application/json");
  tl_http_res_status(res, 200);
  return 0;
}

static int metrics_handler(tl_http_req *req, tl_http_res *res, void *ctx)
{
  tl_http_server *srv = ctx;
  char *text = NULL;
  size_t len = 0;
  int rc = tl_metrics_render(srv->metrics, &text, &len);
  if (rc < 0)
    return rc;
  tl__res_body_take(res, text, len, "text/plain; version=0.0.4; charset=utf-8", tl_free);
  tl_http_res_status(res, 200);
  return 0;
}

static int version_handler(tl_http_req *req, tl_http_res *res, void *ctx)
{
  tl_http_server *srv = ctx;
  tl__res_body_static(res, srv->version_body, srv->version_len, "application/json");
  tl_http_res_status(res, 200);
  return 0;
}

int tl__health_routes(tl_http_server *srv)
{
  const char *version = srv->version ? srv->version : tl_version();
  const char *commit = srv->commit ? srv->commit : tl_build_commit();
  tl__buf b = TL__BUF_INIT;
  tl__buf_puts(&b, "{\"version\":");
  tl__buf_json_str(&b, version, strlen(version));
  tl__buf_puts(&b, ",\"commit\":");
  tl__buf_json_str(&b, commit, strlen(commit));
  tl__buf_puts(&b, ",\"variant\":");
  tl__buf_json_str(&b, srv->variant, strlen(srv->variant));
  tl__buf_puts(&b, "}");
  srv->version_body = tl__buf_steal(&b, &srv->version_len);
  if (!srv->version_body)
    return tl_error_set(TL_ENOMEM, "http: out of memory");

  int rc = tl_http_route(srv, "GET", "/health/live", live_handler, srv);
  if (rc == 0)
    rc = tl_http_route(srv, "GET", "/health/ready", ready_handler, srv);
  if (rc == 0)
    rc = tl_http_route(srv, "GET", "/metrics", metrics_handler, srv);
  if (rc == 0)
    rc = tl_http_route(srv, "GET", "/version", version_handler, srv);
  return rc;
}
