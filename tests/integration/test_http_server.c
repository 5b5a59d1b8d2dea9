/* The HTTP server end to end: a tl_http_server on a free loopback port,
 * spoken to over raw TCP by a tiny HTTP/1.1 client in this file. Needs no
 * external server. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "trellis/trellis.h"

/* ---- a tiny HTTP/1.1 client ---- */

typedef struct resp {
  int status;
  size_t nheaders;
  char *names[64], *values[64];
  char *body;
  size_t body_len;
} resp;

static int tcp_connect(uint16_t port)
{
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  struct timeval tv = { .tv_sec = 20 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Writes all of it; false when the peer closed or reset. */
static bool send_all(int fd, const void *p, size_t n)
{
  const char *c = p;
  while (n) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    c += w;
    n -= (size_t)w;
  }
  return true;
}

static void resp_free(resp *r)
{
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->names[i]);
    free(r->values[i]);
  }
  free(r->body);
  memset(r, 0, sizeof *r);
}

static const char *hdr(const resp *r, const char *name)
{
  for (size_t i = 0; i < r->nheaders; i++) {
    if (strcasecmp(r->names[i], name) == 0)
      return r->values[i];
  }
  return NULL;
}

/* Read one response. `pending` holds bytes read past the previous one. */
typedef struct conn_buf {
  char data[1 << 16];
  size_t len;
} conn_buf;

static bool fill(int fd, conn_buf *b)
{
  if (b->len == sizeof b->data)
    return false;
  ssize_t n;
  do {
    n = recv(fd, b->data + b->len, sizeof b->data - b->len, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0)
    return false;
  b->len += (size_t)n;
  return true;
}

static bool read_response(int fd, conn_buf *b, bool head, resp *r)
{
  memset(r, 0, sizeof *r);
  char *end;
  while (!(end = memmem(b->data, b->len, "\r\n\r\n", 4))) {
    if (!fill(fd, b))
      return false;
  }
  size_t hlen = (size_t)(end - b->data) + 4;
  char *head_text = strndup(b->data, hlen - 4);
  memmove(b->data, b->data + hlen, b->len - hlen);
  b->len -= hlen;
  char *save = NULL;
  char *line = strtok_r(head_text, "\r\n", &save);
  if (!line || sscanf(line, "HTTP/1.%*d %d", &r->status) != 1) {
    free(head_text);
    return false;
  }
  while ((line = strtok_r(NULL, "\r\n", &save)) && r->nheaders < 64) {
    char *colon = strchr(line, ':');
    if (!colon)
      continue;
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ')
      v++;
    r->names[r->nheaders] = strdup(line);
    r->values[r->nheaders++] = strdup(v);
  }
  free(head_text);
  const char *cl = hdr(r, "Content-Length");
  size_t want = 0;
  bool to_eof = false;
  if (head || r->status == 204 || r->status == 304)
    want = 0;
  else if (cl)
    want = strtoull(cl, NULL, 10);
  else
    to_eof = true;
  size_t cap = want + 1, got = 0;
  r->body = malloc(cap);
  for (;;) {
    size_t take = b->len;
    if (!to_eof && take > want - got)
      take = want - got;
    if (got + take + 1 > cap) {
      cap = (got + take + 1) * 2;
      r->body = realloc(r->body, cap);
    }
    memcpy(r->body + got, b->data, take);
    memmove(b->data, b->data + take, b->len - take);
    b->len -= take;
    got += take;
    if (!to_eof && got == want)
      break;
    if (!fill(fd, b)) {
      if (to_eof)
        break;
      r->body[got] = '\0';
      r->body_len = got;
      return false;
    }
  }
  r->body[got] = '\0';
  r->body_len = got;
  return true;
}

/* One request on a fresh connection ("Connection: close"). */
static resp request(uint16_t port, const char *method, const char *path,
                    const char *headers, const char *body, size_t body_len)
{
  int fd = tcp_connect(port);
  char head[16384];
  int n = snprintf(head, sizeof head,
                   "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s"
                   "Content-Length: %zu\r\n\r\n",
                   method, path, headers ? headers : "", body_len);
  if (!body && strcmp(method, "POST") != 0 && strcmp(method, "PUT") != 0)
    n = snprintf(head, sizeof head,
                 "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n", method,
                 path, headers ? headers : "");
  assert_true(send_all(fd, head, (size_t)n));
  if (body_len)
    assert_true(send_all(fd, body, body_len));
  conn_buf *b = calloc(1, sizeof *b);
  resp r;
  if (!read_response(fd, b, strcmp(method, "HEAD") == 0, &r))
    fail_msg("%s %s: no complete response", method, path);
  free(b);
  close(fd);
  return r;
}

static resp get(uint16_t port, const char *path, const char *headers)
{
  return request(port, "GET", path, headers, NULL, 0);
}

static json_t *body_json(const resp *r)
{
  json_error_t err;
  json_t *j = json_loadb(r->body, r->body_len, 0, &err);
  if (!j)
    fail_msg("body is not JSON (%s): %.*s", err.text, (int)r->body_len, r->body);
  return j;
}

static const char *jstr(json_t *j, const char *key)
{
  json_t *v = json_object_get(j, key);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Checks a problem document and returns it (caller decrefs). */
static json_t *expect_problem(const resp *r, int status)
{
  assert_int_equal(r->status, status);
  assert_non_null(hdr(r, "Content-Type"));
  assert_string_equal(hdr(r, "Content-Type"), "application/problem+json");
  json_t *j = body_json(r);
  assert_string_equal(jstr(j, "type"), "about:blank");
  assert_string_equal(jstr(j, "title"), tl_http_reason(status));
  assert_int_equal(json_integer_value(json_object_get(j, "status")), status);
  assert_non_null(jstr(j, "detail"));
  assert_non_null(jstr(j, "instance"));
  assert_non_null(jstr(j, "request_id"));
  assert_string_equal(jstr(j, "request_id"), hdr(r, "x-request-id"));
  return j;
}

/* ---- the routes under test ---- */

static char big_body[64 * 1024];

static int h_echo(tl_http_req *req, tl_http_res *res, void *ctx)
{
  const char *q = tl_http_req_query(req, "q");
  return tl_http_res_json_t(res, 200,
                            json_pack("{s:s, s:s*, s:s}", "name", tl_http_req_param(req, "name"),
                                      "q", q, "route", tl_http_req_route(req)));
}

static int h_json(tl_http_req *req, tl_http_res *res, void *ctx)
{
  json_t *j = NULL;
  if (tl_http_req_json(req, res, &j) < 0)
    return 0;
  return tl_http_res_json_t(res, 201, j);
}

static int h_big(tl_http_req *req, tl_http_res *res, void *ctx)
{
  return tl_http_res_body(res, big_body, sizeof big_body, "text/plain");
}

static int h_small(tl_http_req *req, tl_http_res *res, void *ctx)
{
  return tl_http_res_body(res, "hello", 5, "text/plain");
}

static int h_fail(tl_http_req *req, tl_http_res *res, void *ctx)
{
  return tl_error_set(TL_EIO, "secret database detail");
}

static int h_ids(tl_http_req *req, tl_http_res *res, void *ctx)
{
  const char *tp = tl_http_req_traceparent(req);
  return tl_http_res_json_t(res, 200,
                            json_pack("{s:s, s:s, s:s*, s:s}", "id", tl_http_req_id(req),
                                      "trace_id", tl_http_req_trace_id(req), "traceparent", tp,
                                      "log_request_id", tl_log_context_request_id()));
}

static int h_item(tl_http_req *req, tl_http_res *res, void *ctx)
{
  int rc = tl_http_res_header(res, "X-Item", tl_http_req_param(req, "id"));
  if (rc == 0 && tl_http_res_header(res, "X-Bad", "a\r\nInjected: yes") != TL_EINVAL)
    rc = TL_EINTERNAL;
  return rc;
}

static int h_sleep(tl_http_req *req, tl_http_res *res, void *ctx)
{
  tl_sleep_us(1000000);
  return tl_http_res_json(res, 200, "{\"slept\":true}", 14);
}

/* ---- fixture ---- */

static tl_http_server *g_srv;
static tl_metrics *g_metrics;
static uint16_t g_port;
static char g_log_path[64];
static int g_log_fd = -1;

static tl_http_server *start_server_with(tl_metrics *reg, int64_t shutdown_timeout_us,
                                         unsigned threads, unsigned workers)
{
  tl_http_config cfg = {
    .bind = "127.0.0.1",
    .port = 0,
    .threads = threads,
    .workers = workers,
    .metrics = reg,
    .version = "1.2.3",
    .commit = "abc123",
    .variant = "blue",
    .shutdown_timeout_us = shutdown_timeout_us,
  };
  tl_http_server *srv = NULL;
  if (tl_http_server_new(&srv, &cfg) != 0)
    fail_msg("new: %s", tl_error_last());
  return srv;
}

static tl_http_server *start_server(tl_metrics *reg, int64_t shutdown_timeout_us)
{
  return start_server_with(reg, shutdown_timeout_us, 4, 0);
}

static void must(int rc)
{
  if (rc != 0)
    fail_msg("%s: %s", tl_status_name(rc), tl_error_last());
}

static int setup(void **state)
{
  for (size_t i = 0; i < sizeof big_body; i++)
    big_body[i] = "trellis http gzip test line\n"[i % 28];
  snprintf(g_log_path, sizeof g_log_path, "/tmp/tl-http-test-%d.log", (int)getpid());
  g_log_fd = open(g_log_path, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
  assert_true(g_log_fd >= 0);
  tl_log_set_fd(g_log_fd);
  tl_log_set_level(TL_LOG_INFO);
  assert_int_equal(tl_metrics_new(&g_metrics), 0);
  g_srv = start_server(g_metrics, 0);
  must(tl_http_route(g_srv, "GET", "/echo/{name}", h_echo, NULL));
  must(tl_http_route(g_srv, "POST", "/json", h_json, NULL));
  must(tl_http_route(g_srv, "GET", "/big", h_big, NULL));
  must(tl_http_route(g_srv, "GET", "/small", h_small, NULL));
  must(tl_http_route(g_srv, "GET", "/fail", h_fail, NULL));
  must(tl_http_route(g_srv, "GET", "/ids", h_ids, NULL));
  must(tl_http_route(g_srv, "POST", "/items", h_item, NULL));
  must(tl_http_route(g_srv, "GET", "/items/{id}", h_item, NULL));
  must(tl_http_route(g_srv, "DELETE", "/items/{id}", h_item, NULL));
  must(tl_http_server_start(g_srv));
  g_port = tl_http_server_port(g_srv);
  assert_true(g_port > 0);
  return 0;
}

static int teardown(void **state)
{
  tl_http_server_free(g_srv);
  tl_metrics_free(g_metrics);
  tl_log_set_fd(2);
  close(g_log_fd);
  unlink(g_log_path);
  return 0;
}

/* ---- tests ---- */

static void test_live(void **state)
{
  resp r = get(g_port, "/health/live", NULL);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"status\":\"ok\"}");
  assert_string_equal(hdr(&r, "Content-Type"), "application/json");
  assert_int_equal(strlen(hdr(&r, "x-request-id")), 36);
  assert_non_null(hdr(&r, "Date"));
  resp_free(&r);
}

static void test_version(void **state)
{
  resp r = get(g_port, "/version", NULL);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(jstr(j, "version"), "1.2.3");
  assert_string_equal(jstr(j, "commit"), "abc123");
  assert_string_equal(jstr(j, "variant"), "blue");
  json_decref(j);
  resp_free(&r);
}

static void test_json_route_with_param_and_query(void **state)
{
  resp r = get(g_port, "/echo/hello%20world?x=1&q=a+b%21", NULL);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(jstr(j, "name"), "hello world");
  assert_string_equal(jstr(j, "q"), "a b!");
  assert_string_equal(jstr(j, "route"), "/echo/{name}");
  json_decref(j);
  resp_free(&r);

  r = get(g_port, "/echo/x", NULL);
  j = body_json(&r);
  assert_null(json_object_get(j, "q"));
  json_decref(j);
  resp_free(&r);

  /* an undecodable parameter is the client's mistake */
  r = get(g_port, "/echo/a%zz", NULL);
  json_t *p = expect_problem(&r, 400);
  assert_non_null(strstr(jstr(p, "detail"), "path parameter 'name'"));
  json_decref(p);
  resp_free(&r);
  r = get(g_port, "/echo/a%00b", NULL);
  json_decref(expect_problem(&r, 400));
  resp_free(&r);
}

static void test_keep_alive_reuses_connection(void **state)
{
  int fd = tcp_connect(g_port);
  conn_buf *b = calloc(1, sizeof *b);
  for (int i = 0; i < 3; i++) {
    char req[256];
    int n = snprintf(req, sizeof req, "GET /echo/n%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    assert_true(send_all(fd, req, (size_t)n));
    resp r;
    assert_true(read_response(fd, b, false, &r));
    assert_int_equal(r.status, 200);
    char want[32];
    snprintf(want, sizeof want, "\"n%d\"", i);
    assert_non_null(strstr(r.body, want));
    resp_free(&r);
  }
  free(b);
  close(fd);
}

static void test_not_found_and_method_not_allowed(void **state)
{
  resp r = get(g_port, "/nope/x", NULL);
  json_t *j = expect_problem(&r, 404);
  assert_string_equal(jstr(j, "instance"), "/nope/x");
  json_decref(j);
  resp_free(&r);

  /* strict trailing slash */
  r = get(g_port, "/small/", NULL);
  json_decref(expect_problem(&r, 404));
  resp_free(&r);

  r = request(g_port, "POST", "/items/5", NULL, "", 0);
  j = expect_problem(&r, 405);
  assert_string_equal(hdr(&r, "Allow"), "DELETE, GET, HEAD");
  assert_string_equal(jstr(j, "instance"), "/items/5");
  json_decref(j);
  resp_free(&r);

  r = request(g_port, "OPTIONS", "/items/5", NULL, NULL, 0);
  assert_int_equal(r.status, 204);
  assert_string_equal(hdr(&r, "Allow"), "DELETE, GET, HEAD");
  resp_free(&r);

  /* over the 8 KiB path limit: 414, and only a prefix is echoed back */
  char *long_path = malloc(9001);
  long_path[0] = '/';
  memset(long_path + 1, 'p', 8999);
  long_path[9000] = '\0';
  r = get(g_port, long_path, NULL);
  j = expect_problem(&r, 414);
  assert_int_equal(strlen(jstr(j, "instance")), 260 - 1);
  json_decref(j);
  resp_free(&r);
  free(long_path);

  r = request(g_port, "DELETE", "/items/9", NULL, NULL, 0);
  assert_int_equal(r.status, 204);
  assert_string_equal(hdr(&r, "X-Item"), "9");
  assert_null(hdr(&r, "X-Bad"));
  assert_null(hdr(&r, "Injected"));
  resp_free(&r);
}

static void test_head_has_headers_without_body(void **state)
{
  resp r = request(g_port, "HEAD", "/small", NULL, NULL, 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(hdr(&r, "Content-Length"), "5");
  assert_string_equal(hdr(&r, "Content-Type"), "text/plain");
  assert_int_equal(r.body_len, 0);
  resp_free(&r);
  /* a raw read: nothing follows the headers */
  int fd = tcp_connect(g_port);
  const char *req = "HEAD /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  assert_true(send_all(fd, req, strlen(req)));
  char buf[2048];
  size_t got = 0;
  ssize_t n;
  while ((n = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
    got += (size_t)n;
  buf[got] = '\0';
  close(fd);
  char *end = strstr(buf, "\r\n\r\n");
  assert_non_null(end);
  assert_int_equal(end + 4 - buf, (long)got);
}

static void test_body_too_large(void **state)
{
  /* Content-Length over the limit: refused before the body is read. */
  int fd = tcp_connect(g_port);
  const char *head = "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 2097152\r\n\r\n";
  assert_true(send_all(fd, head, strlen(head)));
  conn_buf *b = calloc(1, sizeof *b);
  resp r;
  assert_true(read_response(fd, b, false, &r));
  json_t *j = expect_problem(&r, 413);
  assert_non_null(strstr(jstr(j, "detail"), "larger than 1048576 bytes"));
  json_decref(j);
  resp_free(&r);
  close(fd);

  /* The same with the body sent right away: the server answers without
   * reading it and closes; writing may then fail, reading still works. */
  fd = tcp_connect(g_port);
  size_t big = 2u << 20;
  char *body = malloc(big);
  memset(body, ' ', big);
  assert_true(send_all(fd, head, strlen(head)));
  fcntl(fd, F_SETFL, O_NONBLOCK);
  size_t sent = 0;
  b->len = 0;
  bool have_head = false;
  int64_t until = tl_time_mono_us() + 10000000;
  while (!have_head && tl_time_mono_us() < until) {
    struct pollfd p = { fd, POLLIN | (sent < big ? POLLOUT : 0), 0 };
    poll(&p, 1, 100);
    if (p.revents & POLLIN) {
      ssize_t n = recv(fd, b->data + b->len, sizeof b->data - b->len, 0);
      if (n > 0)
        b->len += (size_t)n;
      have_head = memmem(b->data, b->len, "\r\n\r\n", 4) != NULL;
      if (n == 0)
        break;
    }
    if ((p.revents & POLLOUT) && sent < big) {
      ssize_t n = send(fd, body + sent, big - sent, MSG_NOSIGNAL);
      if (n > 0)
        sent += (size_t)n;
      else if (errno != EAGAIN)
        sent = big;
    }
  }
  assert_true(have_head);
  assert_memory_equal(b->data, "HTTP/1.1 413", 12);
  close(fd);
  free(body);

  /* Chunked, no length given: cut off at the limit, answered at the end. */
  fd = tcp_connect(g_port);
  const char *chead = "POST /json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      "Connection: close\r\n\r\n";
  assert_true(send_all(fd, chead, strlen(chead)));
  char chunk[64 * 1024 + 32];
  int hn = snprintf(chunk, sizeof chunk, "%x\r\n", 64 * 1024);
  memset(chunk + hn, 'x', 64 * 1024);
  memcpy(chunk + hn + 64 * 1024, "\r\n", 2);
  bool ok = true;
  for (int i = 0; i < 24 && ok; i++) /* 1.5 MiB */
    ok = send_all(fd, chunk, (size_t)hn + 64 * 1024 + 2);
  assert_true(ok);
  assert_true(send_all(fd, "0\r\n\r\n", 5));
  b->len = 0;
  assert_true(read_response(fd, b, false, &r));
  json_decref(expect_problem(&r, 413));
  resp_free(&r);
  close(fd);
  free(b);

  /* just under the limit is fine */
  size_t ok_len = 1 << 20;
  body = malloc(ok_len);
  memset(body, ' ', ok_len);
  body[0] = '[';
  body[ok_len - 1] = ']';
  r = request(g_port, "POST", "/json", NULL, body, ok_len);
  assert_int_equal(r.status, 201);
  assert_string_equal(r.body, "[]");
  resp_free(&r);
  free(body);
}

static void test_malformed_json(void **state)
{
  const char *bad = "{\"a\": 1,\n \"b\": }";
  resp r = request(g_port, "POST", "/json", "Content-Type: application/json\r\n", bad,
                   strlen(bad));
  json_t *j = expect_problem(&r, 400);
  const char *detail = jstr(j, "detail");
  assert_non_null(strstr(detail, "line 2"));
  assert_non_null(strstr(detail, "column"));
  assert_non_null(strstr(detail, "unexpected token"));
  json_decref(j);
  resp_free(&r);

  const char *good = "{\"a\":[1,2]}";
  r = request(g_port, "POST", "/json", NULL, good, strlen(good));
  assert_int_equal(r.status, 201);
  assert_string_equal(r.body, good);
  resp_free(&r);
}

static void test_handler_error_is_500(void **state)
{
  resp r = get(g_port, "/fail", "x-request-id: fail-42\r\n");
  json_t *j = expect_problem(&r, 500);
  assert_string_equal(jstr(j, "detail"), "internal error; see logs with request_id fail-42");
  assert_null(strstr(r.body, "secret"));
  json_decref(j);
  resp_free(&r);
}

static char *inflate_gzip(const char *in, size_t n, size_t *out_len)
{
  size_t cap = 1 << 20;
  char *out = malloc(cap);
  z_stream z = { 0 };
  assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
  z.next_in = (Bytef *)(uintptr_t)in;
  z.avail_in = (uInt)n;
  z.next_out = (Bytef *)out;
  z.avail_out = (uInt)cap;
  assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
  *out_len = z.total_out;
  inflateEnd(&z);
  return out;
}

static void test_gzip(void **state)
{
  resp r = get(g_port, "/big", "Accept-Encoding: br, gzip\r\n");
  assert_int_equal(r.status, 200);
  assert_string_equal(hdr(&r, "Content-Encoding"), "gzip");
  assert_string_equal(hdr(&r, "Vary"), "Accept-Encoding");
  assert_true(r.body_len < sizeof big_body / 4);
  size_t n = 0;
  char *plain = inflate_gzip(r.body, r.body_len, &n);
  assert_int_equal(n, sizeof big_body);
  assert_memory_equal(plain, big_body, n);
  free(plain);
  resp_free(&r);

  r = get(g_port, "/big", NULL);
  assert_null(hdr(&r, "Content-Encoding"));
  assert_string_equal(hdr(&r, "Vary"), "Accept-Encoding");
  assert_int_equal(r.body_len, sizeof big_body);
  resp_free(&r);

  r = get(g_port, "/big", "Accept-Encoding: gzip;q=0, identity\r\n");
  assert_null(hdr(&r, "Content-Encoding"));
  assert_int_equal(r.body_len, sizeof big_body);
  resp_free(&r);

  r = get(g_port, "/small", "Accept-Encoding: gzip\r\n");
  assert_null(hdr(&r, "Content-Encoding"));
  assert_string_equal(r.body, "hello");
  resp_free(&r);

  /* HEAD gets the same headers as GET */
  r = request(g_port, "HEAD", "/big", "Accept-Encoding: gzip\r\n", NULL, 0);
  assert_string_equal(hdr(&r, "Content-Encoding"), "gzip");
  assert_int_equal(r.body_len, 0);
  resp_free(&r);

  /* many gzip responses in a row reuse the worker's stream cleanly */
  for (int i = 0; i < 20; i++) {
    r = get(g_port, "/metrics", "Accept-Encoding: gzip\r\n");
    assert_int_equal(r.status, 200);
    if (hdr(&r, "Content-Encoding")) {
      plain = inflate_gzip(r.body, r.body_len, &n);
      assert_true(n > 0);
      free(plain);
    }
    resp_free(&r);
  }
}

static void test_request_id_and_traceparent(void **state)
{
  resp r = get(g_port, "/ids",
               "x-request-id: client.id-1:2\r\n"
               "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n");
  assert_string_equal(hdr(&r, "x-request-id"), "client.id-1:2");
  json_t *j = body_json(&r);
  assert_string_equal(jstr(j, "id"), "client.id-1:2");
  assert_string_equal(jstr(j, "log_request_id"), "client.id-1:2");
  assert_string_equal(jstr(j, "trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
  assert_string_equal(jstr(j, "traceparent"),
                      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  json_decref(j);
  resp_free(&r);

  r = get(g_port, "/ids", "x-request-id: not/sane id\r\n"
                          "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n");
  const char *id = hdr(&r, "x-request-id");
  assert_int_equal(strlen(id), 36);
  assert_int_equal(id[14], '7'); /* UUIDv7 */
  j = body_json(&r);
  assert_string_equal(jstr(j, "id"), id);
  assert_string_equal(jstr(j, "trace_id"), "");
  assert_null(json_object_get(j, "traceparent"));
  json_decref(j);
  resp_free(&r);

  char long_id[200];
  memset(long_id, 'a', 129);
  long_id[129] = '\0';
  char h[256];
  snprintf(h, sizeof h, "x-request-id: %s\r\n", long_id);
  r = get(g_port, "/health/live", h);
  assert_int_equal(strlen(hdr(&r, "x-request-id")), 36);
  resp_free(&r);
}

static void test_metrics(void **state)
{
  resp r = get(g_port, "/echo/metrics-probe", NULL);
  resp_free(&r);
  r = get(g_port, "/no/such/route", NULL);
  resp_free(&r);
  /* Requests are counted when their response is done, which may be just
   * after the client has read it: poll briefly. */
  const char *want_route =
      "http_requests_total{method=\"GET\",route=\"/echo/{name}\",status=\"200\"}";
  const char *want_unmatched =
      "http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}";
  for (int i = 0; i < 100; i++) {
    r = get(g_port, "/metrics", NULL);
    if (strstr(r.body, want_route) && strstr(r.body, want_unmatched))
      break;
    resp_free(&r);
    tl_sleep_us(20000);
  }
  assert_int_equal(r.status, 200);
  assert_string_equal(hdr(&r, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  assert_non_null(strstr(r.body, "# TYPE http_requests_total counter"));
  assert_non_null(strstr(r.body, want_route));
  assert_non_null(strstr(r.body, want_unmatched));
  assert_non_null(strstr(r.body, "http_request_duration_seconds_bucket{method=\"GET\",route=\"/echo/{name}\""));
  const char *inflight = strstr(r.body, "\nhttp_requests_in_flight ");
  assert_non_null(inflight);
  assert_true(atoi(inflight + strlen("\nhttp_requests_in_flight ")) >= 1); /* this request */
  assert_null(strstr(r.body, "metrics-probe"));
  assert_null(strstr(r.body, "/no/such/route"));
  resp_free(&r);
}

typedef struct log_scan {
  bool access, probe, error;
} log_scan;

static log_scan scan_log(void)
{
  log_scan sc = { 0 };
  FILE *f = fopen(g_log_path, "r");
  assert_non_null(f);
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "\"request_id\":\"log-check-1\"") &&
        strstr(line, "\"msg\":\"http request\"")) {
      sc.access = true;
      assert_non_null(strstr(line, "\"level\":\"info\""));
      assert_non_null(strstr(line, "\"method\":\"GET\""));
      assert_non_null(strstr(line, "\"route\":\"/echo/{name}\""));
      assert_non_null(strstr(line, "\"path\":\"/echo/logged\""));
      assert_non_null(strstr(line, "\"status\":200"));
      assert_non_null(strstr(line, "\"bytes\":"));
      assert_non_null(strstr(line, "\"duration_ms\":"));
      assert_null(strstr(line, "secret"));
    }
    if (strstr(line, "probe-check-1"))
      sc.probe = true;
    if (strstr(line, "fail-log-1") && strstr(line, "\"level\":\"error\"") &&
        strstr(line, "secret database detail"))
      sc.error = true;
  }
  fclose(f);
  return sc;
}

static void test_access_log(void **state)
{
  resp r = get(g_port, "/health/live", "x-request-id: probe-check-1\r\n");
  resp_free(&r);
  r = get(g_port, "/fail", "x-request-id: fail-log-1\r\n");
  resp_free(&r);
  r = get(g_port, "/echo/logged?secret=1", "x-request-id: log-check-1\r\n");
  resp_free(&r);
  /* The access line is written when the response is done, which may be
   * just after the client has read it: poll briefly. */
  log_scan sc = scan_log();
  for (int i = 0; i < 100 && !sc.access; i++) {
    tl_sleep_us(20000);
    sc = scan_log();
  }
  assert_true(sc.access);
  assert_false(sc.probe); /* probes are logged at debug only */
  assert_true(sc.error);  /* the handler's real error, at error level */
}

/* ---- readiness ---- */

static int check_ok(void *ctx, char *detail, size_t n) { return 0; }

static int check_fail(void *ctx, char *detail, size_t n)
{
  snprintf(detail, n, "connection refused");
  return TL_ECONNECT;
}

static int check_slow(void *ctx, char *detail, size_t n)
{
  tl_sleep_us(1500000);
  return 0;
}

static void test_readiness(void **state)
{
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_http_server *srv = start_server(reg, 0);
  must(tl_http_ready_check(srv, "cache", check_ok, NULL, 0));
  must(tl_http_server_start(srv));
  uint16_t port = tl_http_server_port(srv);

  resp r = get(port, "/health/ready", NULL);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(jstr(j, "status"), "ready");
  json_t *c = json_object_get(json_object_get(j, "checks"), "cache");
  assert_string_equal(jstr(c, "status"), "up");
  assert_true(json_is_number(json_object_get(c, "duration_ms")));
  json_decref(j);
  resp_free(&r);

  /* checks may be added while serving */
  must(tl_http_ready_check(srv, "db", check_fail, NULL, 0));
  assert_int_equal(tl_http_ready_check(srv, "db", check_ok, NULL, 0), TL_EINVAL);
  r = get(port, "/health/ready", NULL);
  assert_int_equal(r.status, 503);
  j = body_json(&r);
  assert_string_equal(jstr(j, "status"), "not ready");
  c = json_object_get(json_object_get(j, "checks"), "db");
  assert_string_equal(jstr(c, "status"), "down");
  assert_string_equal(jstr(c, "error"), "connection refused");
  assert_string_equal(jstr(json_object_get(json_object_get(j, "checks"), "cache"), "status"), "up");
  json_decref(j);
  resp_free(&r);
  tl_http_server_free(srv);

  /* a check past its deadline fails with "timeout", and the probe does
   * not wait for it */
  srv = start_server(reg, 0);
  must(tl_http_ready_check(srv, "cache", check_ok, NULL, 0));
  must(tl_http_ready_check(srv, "slow", check_slow, NULL, 300000));
  must(tl_http_server_start(srv));
  port = tl_http_server_port(srv);
  int64_t t0 = tl_time_mono_us();
  r = get(port, "/health/ready", NULL);
  int64_t took = tl_time_mono_us() - t0;
  assert_int_equal(r.status, 503);
  assert_true(took >= 290000);
  assert_true(took < 1000000);
  j = body_json(&r);
  c = json_object_get(json_object_get(j, "checks"), "slow");
  assert_string_equal(jstr(c, "status"), "down");
  assert_string_equal(jstr(c, "error"), "timeout");
  json_decref(j);
  resp_free(&r);

  /* draining: readiness fails at once, liveness holds */
  assert_false(tl_http_server_draining(srv));
  tl_http_server_drain(srv);
  tl_http_server_drain(srv);
  assert_true(tl_http_server_draining(srv));
  t0 = tl_time_mono_us();
  r = get(port, "/health/ready", NULL);
  assert_int_equal(r.status, 503);
  assert_true(tl_time_mono_us() - t0 < 250000);
  assert_string_equal(r.body, "{\"status\":\"draining\"}");
  resp_free(&r);
  r = get(port, "/health/live", NULL);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  /* the slow check is still running: freeing must stay safe */
  tl_http_server_free(srv);
  tl_metrics_free(reg);
}

/* ---- shutdown ---- */

typedef struct slow_call {
  uint16_t port;
  const char *path; /* [/sleep] */
  resp r;
} slow_call;

static void *do_slow(void *arg)
{
  slow_call *s = arg;
  int fd = tcp_connect(s->port);
  char req[128];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", s->path ? s->path : "/sleep");
  send_all(fd, req, strlen(req));
  conn_buf *b = calloc(1, sizeof *b);
  if (!read_response(fd, b, false, &s->r))
    s->r.status = -1;
  free(b);
  close(fd);
  return NULL;
}

static void test_graceful_stop(void **state)
{
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_http_server *srv = start_server(reg, 5000000);
  must(tl_http_route(srv, "GET", "/sleep", h_sleep, NULL));
  must(tl_http_server_start(srv));
  uint16_t port = tl_http_server_port(srv);

  /* an idle keep-alive connection must not hold the shutdown */
  int idle = tcp_connect(port);
  const char *req = "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_true(send_all(idle, req, strlen(req)));
  conn_buf *b = calloc(1, sizeof *b);
  resp r;
  assert_true(read_response(idle, b, false, &r));
  resp_free(&r);

  slow_call s = { .port = port };
  pthread_t th;
  pthread_create(&th, NULL, do_slow, &s);
  tl_sleep_us(200000);
  int64_t t0 = tl_time_mono_us();
  tl_http_server_drain(srv);
  int rc = tl_http_server_stop(srv);
  int64_t took = tl_time_mono_us() - t0;
  pthread_join(th, NULL);
  if (rc != 0)
    fail_msg("stop: %s", tl_error_last());
  assert_int_equal(s.r.status, 200);
  assert_string_equal(s.r.body, "{\"slept\":true}");
  assert_string_equal(hdr(&s.r, "Connection"), "close");
  assert_true(took < 2000000);
  resp_free(&s.r);

  /* nothing listens any more; the idle connection was closed */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_not_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  close(fd);
  char c;
  assert_true(recv(idle, &c, 1, 0) <= 0);
  close(idle);
  free(b);
  assert_int_equal(tl_http_server_stop(srv), 0); /* idempotent */
  tl_http_server_free(srv);
  tl_metrics_free(reg);
}

static void test_stop_timeout(void **state)
{
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_http_server *srv = start_server(reg, 200000);
  must(tl_http_route(srv, "GET", "/sleep", h_sleep, NULL));
  must(tl_http_server_start(srv));
  slow_call s = { .port = tl_http_server_port(srv) };
  pthread_t th;
  pthread_create(&th, NULL, do_slow, &s);
  tl_sleep_us(200000);
  int rc = tl_http_server_stop(srv);
  assert_int_equal(rc, TL_ETIMEOUT);
  assert_non_null(strstr(tl_error_last(), "1 request was still running after the 200 ms"));
  pthread_join(th, NULL);
  resp_free(&s.r);
  tl_http_server_free(srv);
  tl_metrics_free(reg);
}

/* ---- blocking routes ---- */

/* Everything a blocking handler sees, sent back in headers, and the body
 * as it came. */
static int h_blocking_echo(tl_http_req *req, tl_http_res *res, void *ctx)
{
  size_t len;
  const char *body = tl_http_req_body(req, &len);
  const char *q = tl_http_req_query(req, "q"), *custom = tl_http_req_header(req, "x-custom");
  const char *log_id = tl_log_context_request_id();
  tl_http_res_status(res, 201);
  int rc = tl_http_res_header(res, "X-Id", tl_http_req_param(req, "id"));
  if (rc == 0)
    rc = tl_http_res_header(res, "X-Q", q ? q : "(none)");
  if (rc == 0)
    rc = tl_http_res_header(res, "X-Custom-Seen", custom ? custom : "(none)");
  if (rc == 0)
    rc = tl_http_res_header(res, "X-Route", tl_http_req_route(req));
  if (rc == 0)
    rc = tl_http_res_header(res, "X-Method", tl_http_req_method(req));
  if (rc == 0)
    rc = tl_http_res_header(res, "X-Log-Request-Id", log_id && *log_id ? log_id : "(none)");
  if (rc == 0)
    rc = tl_http_res_body(res, body, len, "application/octet-stream");
  return rc;
}

static int h_blocking_fail(tl_http_req *req, tl_http_res *res, void *ctx)
{
  return tl_error_set(TL_EIO, "secret worker detail");
}

static int h_blocking_problem(tl_http_req *req, tl_http_res *res, void *ctx)
{
  tl_http_res_problem(res, 409, "stream '%s' is taken", tl_http_req_param(req, "id"));
  return TL_ECONFLICT;
}

static int h_blocking_nothing(tl_http_req *req, tl_http_res *res, void *ctx) { return 0; }

/* A blocking handler that waits at a gate the test opens (20 s at most,
 * so that a failed test does not hang). */
typedef struct gate {
  atomic_int started, finished;
  atomic_bool open;
} gate;

static int h_gated(tl_http_req *req, tl_http_res *res, void *ctx)
{
  gate *g = ctx;
  atomic_fetch_add(&g->started, 1);
  for (int i = 0; i < 20000 && !atomic_load(&g->open); i++)
    tl_sleep_us(1000);
  atomic_fetch_add(&g->finished, 1);
  return tl_http_res_json(res, 200, "{\"slow\":true}", 13);
}

static int h_gate_state(tl_http_req *req, tl_http_res *res, void *ctx)
{
  gate *g = ctx;
  return tl_http_res_json_t(res, 200,
                            json_pack("{s:i, s:i}", "started", atomic_load(&g->started),
                                      "finished", atomic_load(&g->finished)));
}

/* Up to 10 s for `n` handlers to be waiting at the gate. */
static bool gate_reached(gate *g, int n)
{
  for (int i = 0; i < 10000 && atomic_load(&g->started) < n; i++)
    tl_sleep_us(1000);
  return atomic_load(&g->started) >= n;
}

/* Whether a line of the test's log holds all of `needles`. */
static bool log_has(const char *a, const char *b, const char *c)
{
  FILE *f = fopen(g_log_path, "r");
  assert_non_null(f);
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f))
    found = strstr(line, a) && strstr(line, b) && strstr(line, c);
  fclose(f);
  return found;
}

/* A server with the blocking routes above, /slow at a gate of its own,
 * and the inline routes /quick and /gate. On the heap: when a test fails
 * the clients still write into it. */
typedef struct blocking_fixture {
  tl_metrics *reg;
  tl_http_server *srv;
  uint16_t port;
  gate g;
  slow_call slow[8];
  pthread_t th[8];
} blocking_fixture;

static blocking_fixture *blocking_server(unsigned threads, unsigned workers,
                                         int64_t shutdown_timeout_us)
{
  blocking_fixture *f = calloc(1, sizeof *f);
  assert_int_equal(tl_metrics_new(&f->reg), 0);
  f->srv = start_server_with(f->reg, shutdown_timeout_us, threads, workers);
  must(tl_http_route_blocking(f->srv, "POST", "/blocking/{id}", h_blocking_echo, NULL));
  must(tl_http_route_blocking(f->srv, "GET", "/blocking/{id}", h_blocking_echo, NULL));
  must(tl_http_route_blocking(f->srv, "GET", "/blocking-fail", h_blocking_fail, NULL));
  must(tl_http_route_blocking(f->srv, "GET", "/blocking-problem/{id}", h_blocking_problem, NULL));
  must(tl_http_route_blocking(f->srv, "GET", "/blocking-nothing", h_blocking_nothing, NULL));
  must(tl_http_route_blocking(f->srv, "GET", "/slow", h_gated, &f->g));
  must(tl_http_route(f->srv, "GET", "/quick", h_small, NULL));
  must(tl_http_route(f->srv, "GET", "/gate", h_gate_state, &f->g));
  must(tl_http_server_start(f->srv));
  f->port = tl_http_server_port(f->srv);
  return f;
}

static void blocking_server_free(blocking_fixture *f)
{
  tl_http_server_free(f->srv);
  tl_metrics_free(f->reg);
  free(f);
}

/* `n` concurrent GET /slow, each on a connection of its own; returns when
 * all of their handlers wait at the gate. */
static void start_slow(blocking_fixture *f, int n)
{
  for (int i = 0; i < n; i++) {
    f->slow[i] = (slow_call){ .port = f->port, .path = "/slow" };
    pthread_create(&f->th[i], NULL, do_slow, &f->slow[i]);
  }
  bool all_waiting = gate_reached(&f->g, n);
  if (!all_waiting)
    atomic_store(&f->g.open, true);
  assert_true(all_waiting);
}

/* Every /slow request was answered whole (with "Connection: close" when
 * the server was stopping). */
static void join_slow(blocking_fixture *f, int n, bool stopping)
{
  for (int i = 0; i < n; i++)
    pthread_join(f->th[i], NULL);
  for (int i = 0; i < n; i++) {
    assert_int_equal(f->slow[i].r.status, 200);
    assert_string_equal(f->slow[i].r.body, "{\"slow\":true}");
    const char *c = hdr(&f->slow[i].r, "Connection");
    assert_true(stopping ? c && strcasecmp(c, "close") == 0 : !c);
    resp_free(&f->slow[i].r);
  }
  assert_int_equal(atomic_load(&f->g.finished), n);
}

static void test_blocking_route_request_and_response(void **state)
{
  blocking_fixture *f = blocking_server(2, 4, 0);
  /* A body of every byte value, larger than one read. */
  size_t len = 200 * 1024;
  char *body = malloc(len);
  for (size_t i = 0; i < len; i++)
    body[i] = (char)(i * 7 % 256);
  resp r = request(f->port, "POST", "/blocking/a%20b?x=1&q=x%26y",
                   "X-Custom: hello\r\nx-request-id: blk-echo-1\r\n", body, len);
  assert_int_equal(r.status, 201);
  assert_string_equal(hdr(&r, "X-Id"), "a b");
  assert_string_equal(hdr(&r, "X-Q"), "x&y");
  assert_string_equal(hdr(&r, "X-Custom-Seen"), "hello");
  assert_string_equal(hdr(&r, "X-Route"), "/blocking/{id}");
  assert_string_equal(hdr(&r, "X-Method"), "POST");
  assert_string_equal(hdr(&r, "X-Log-Request-Id"), "blk-echo-1"); /* the worker logs for it */
  assert_string_equal(hdr(&r, "x-request-id"), "blk-echo-1");
  assert_string_equal(hdr(&r, "Content-Type"), "application/octet-stream");
  assert_int_equal(r.body_len, len);
  assert_memory_equal(r.body, body, len);
  resp_free(&r);
  free(body);

  /* A connection set aside for a worker is given back whole: keep-alive
   * goes on with blocking and inline routes in turn. */
  int fd = tcp_connect(f->port);
  conn_buf *b = calloc(1, sizeof *b);
  const char *paths[] = { "/blocking/k1", "/quick", "/blocking/k2", "/blocking/k3" };
  for (size_t i = 0; i < 4; i++) {
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i]);
    assert_true(send_all(fd, req, (size_t)n));
    assert_true(read_response(fd, b, false, &r));
    if (strcmp(paths[i], "/quick") == 0) {
      assert_int_equal(r.status, 200);
      assert_string_equal(r.body, "hello");
    } else {
      assert_int_equal(r.status, 201);
      assert_string_equal(hdr(&r, "X-Id"), paths[i] + strlen("/blocking/"));
      assert_string_equal(hdr(&r, "X-Q"), "(none)");
      assert_int_equal(r.body_len, 0);
    }
    resp_free(&r);
  }
  free(b);
  close(fd);
  blocking_server_free(f);
}

static void test_blocking_handler_errors(void **state)
{
  blocking_fixture *f = blocking_server(2, 4, 0);
  /* A negative status: 500 as for inline routes, the detail in the log
   * (with the request's id), not in the answer. */
  resp r = get(f->port, "/blocking-fail", "x-request-id: blk-fail-1\r\n");
  json_t *j = expect_problem(&r, 500);
  assert_string_equal(jstr(j, "detail"), "internal error; see logs with request_id blk-fail-1");
  assert_null(strstr(r.body, "secret"));
  json_decref(j);
  resp_free(&r);
  assert_true(log_has("\"request_id\":\"blk-fail-1\"", "\"level\":\"error\"",
                      "secret worker detail"));

  /* A problem the handler set itself stays, whatever it returns. */
  r = get(f->port, "/blocking-problem/s-9", NULL);
  j = expect_problem(&r, 409);
  assert_string_equal(jstr(j, "detail"), "stream 's-9' is taken");
  assert_string_equal(jstr(j, "instance"), "/blocking-problem/s-9");
  json_decref(j);
  resp_free(&r);

  /* Nothing set: 204. */
  r = get(f->port, "/blocking-nothing", NULL);
  assert_int_equal(r.status, 204);
  assert_int_equal(r.body_len, 0);
  resp_free(&r);
  blocking_server_free(f);
}

/* One thread serves connections while eight workers wait in blocking
 * handlers: the quick route answers while all eight wait (they wait
 * until it has answered), and then the eight complete. */
static void test_blocking_leaves_quick_routes_free(void **state)
{
  blocking_fixture *f = blocking_server(1, 8, 0);
  start_slow(f, 8);
  resp r = get(f->port, "/gate", NULL);
  atomic_store(&f->g.open, true);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_int_equal(json_integer_value(json_object_get(j, "started")), 8);
  assert_int_equal(json_integer_value(json_object_get(j, "finished")), 0);
  json_decref(j);
  resp_free(&r);
  join_slow(f, 8, false);
  blocking_server_free(f);
}

/* Opens the gate once the server is stopping: a keep-alive connection
 * made before the stop is answered "Connection: close" from then on. */
typedef struct gate_opener {
  int fd;
  conn_buf *b;
  gate *g;
  bool saw_close;
} gate_opener;

static void *open_gate_when_stopping(void *arg)
{
  gate_opener *o = arg;
  const char *req = "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 2000 && !o->saw_close; i++) {
    resp r;
    if (!send_all(o->fd, req, strlen(req)) || !read_response(o->fd, o->b, false, &r))
      break;
    const char *c = hdr(&r, "Connection");
    o->saw_close = c && strcasecmp(c, "close") == 0;
    resp_free(&r);
    if (!o->saw_close)
      tl_sleep_us(5000);
  }
  atomic_store(&o->g->open, true);
  return NULL;
}

/* A stop while blocking handlers run lets them finish and answer. */
static void test_stop_lets_blocking_requests_finish(void **state)
{
  blocking_fixture *f = blocking_server(2, 4, 20000000);
  gate_opener o = { .fd = tcp_connect(f->port), .b = calloc(1, sizeof(conn_buf)), .g = &f->g };
  const char *req = "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_true(send_all(o.fd, req, strlen(req)));
  resp r;
  assert_true(read_response(o.fd, o.b, false, &r));
  assert_null(hdr(&r, "Connection"));
  resp_free(&r);
  start_slow(f, 4);
  /* The handlers still wait when the stop begins: the gate opens only
   * once the server says it is stopping. */
  pthread_t opener;
  pthread_create(&opener, NULL, open_gate_when_stopping, &o);
  int rc = tl_http_server_stop(f->srv);
  pthread_join(opener, NULL);
  if (rc != 0) /* TL_ETIMEOUT after the 20 s shutdown timeout */
    fail_msg("stop: %s", tl_error_last());
  assert_true(o.saw_close);
  join_slow(f, 4, true);
  close(o.fd);
  free(o.b);
  blocking_server_free(f);
}

/* ---- configuration and start-up errors ---- */

static void test_config_and_bind_errors(void **state)
{
  tl_http_server *srv = NULL;
  tl_http_config cfg = { .bind = "nowhere" };
  assert_int_equal(tl_http_server_new(&srv, &cfg), TL_EINVAL);
  assert_string_equal(tl_error_last(), "HTTP_BIND: 'nowhere' is not an IPv4 or IPv6 address");
  assert_null(srv);
  cfg = (tl_http_config){ .threads = 2000 };
  assert_int_equal(tl_http_server_new(&srv, &cfg), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "HTTP_THREADS"));
  cfg = (tl_http_config){ .workers = 5000 };
  assert_int_equal(tl_http_server_new(&srv, &cfg), TL_EINVAL);
  assert_string_equal(tl_error_last(), "HTTP_WORKERS: 5000 is out of range [1, 4096]");
  cfg = (tl_http_config){ .shutdown_timeout_us = -1 };
  assert_int_equal(tl_http_server_new(&srv, &cfg), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "SHUTDOWN_TIMEOUT"));

  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_http_server *a = start_server(reg, 0);
  assert_int_equal(tl_http_route(a, "GET", "/health/live", h_small, NULL), TL_EINVAL);
  assert_int_equal(tl_http_route(a, "GET", "/x/{}", h_small, NULL), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "empty parameter name"));
  must(tl_http_server_start(a));
  assert_int_equal(tl_http_route(a, "GET", "/late", h_small, NULL), TL_EINVAL);
  assert_int_equal(tl_http_route_blocking(a, "GET", "/late", h_small, NULL), TL_EINVAL);
  assert_int_equal(tl_http_server_start(a), TL_EINVAL);

  tl_http_config busy = { .bind = "127.0.0.1", .port = tl_http_server_port(a), .metrics = reg };
  tl_http_server *b = NULL;
  must(tl_http_server_new(&b, &busy));
  assert_int_equal(tl_http_server_start(b), TL_EIO);
  char want[128];
  snprintf(want, sizeof want, "http: cannot listen on 127.0.0.1:%u: Address already in use",
           (unsigned)busy.port);
  assert_string_equal(tl_error_last(), want);
  tl_http_server_free(b);
  tl_http_server_free(a);
  tl_http_server_free(NULL);
  tl_metrics_free(reg);
}

static void test_ipv6_loopback(void **state)
{
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_http_config cfg = { .bind = "::1", .port = 0, .threads = 1, .metrics = reg };
  tl_http_server *srv = NULL;
  must(tl_http_server_new(&srv, &cfg));
  if (tl_http_server_start(srv) != 0) {
    /* no IPv6 in this sandbox: the message still names the address */
    assert_non_null(strstr(tl_error_last(), "cannot listen on [::1]:0"));
  } else {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(tl_http_server_port(srv)) };
    a.sin6_addr = in6addr_loopback;
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    const char *req = "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_true(send_all(fd, req, strlen(req)));
    conn_buf *b = calloc(1, sizeof *b);
    resp r;
    assert_true(read_response(fd, b, false, &r));
    assert_int_equal(r.status, 200);
    resp_free(&r);
    free(b);
    close(fd);
  }
  tl_http_server_free(srv);
  tl_metrics_free(reg);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_live),
    cmocka_unit_test(test_version),
    cmocka_unit_test(test_json_route_with_param_and_query),
    cmocka_unit_test(test_keep_alive_reuses_connection),
    cmocka_unit_test(test_not_found_and_method_not_allowed),
    cmocka_unit_test(test_head_has_headers_without_body),
    cmocka_unit_test(test_body_too_large),
    cmocka_unit_test(test_malformed_json),
    cmocka_unit_test(test_handler_error_is_500),
    cmocka_unit_test(test_gzip),
    cmocka_unit_test(test_request_id_and_traceparent),
    cmocka_unit_test(test_metrics),
    cmocka_unit_test(test_access_log),
    cmocka_unit_test(test_readiness),
    cmocka_unit_test(test_graceful_stop),
    cmocka_unit_test(test_stop_timeout),
    cmocka_unit_test(test_blocking_route_request_and_response),
    cmocka_unit_test(test_blocking_handler_errors),
    cmocka_unit_test(test_blocking_leaves_quick_routes_free),
    cmocka_unit_test(test_stop_lets_blocking_requests_finish),
    cmocka_unit_test(test_config_and_bind_errors),
    cmocka_unit_test(test_ipv6_loopback),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
