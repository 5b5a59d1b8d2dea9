/* The response object: the tl_http_res_* setters, gzip, and turning
 * the result into an MHD response. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <microhttpd.h>
#include <zlib.h>

#include "http_int.h"
#include "trellis/error.h"
#include "trellis/log.h"

static void body_drop(tl_http_res *res)
{
  if (res->body_free && res->body)
    res->body_free((void *)res->body);
  res->body = NULL;
  res->body_len = 0;
  res->body_free = NULL;
}

void tl__res_reset(tl_http_res *res)
{
  body_drop(res);
  res->status = 0;
  res->content_type = NULL;
  res->headers = res->headers_tail = NULL; /* arena memory, freed with it */
  res->has_encoding = false;
  res->is_problem = false;
}

void tl__res_body_static(tl_http_res *res, const char *data, size_t len,
                         const char *content_type)
{
  body_drop(res);
  res->body = data;
  res->body_len = len;
  res->content_type = content_type;
  res->is_problem = false;
}

void tl__res_body_take(tl_http_res *res, char *data, size_t len,
                       const char *content_type, void (*free_fn)(void *))
{
  if (!data)
    return;
  body_drop(res);
  res->body = data;
  res->body_len = len;
  res->body_free = free_fn;
  res->content_type = content_type;
  res->is_problem = false;
}

void tl_http_res_status(tl_http_res *res, int status) { res->status = status; }

static bool token_char(unsigned char c)
{
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return true;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

int tl_http_res_header(tl_http_res *res, const char *name, const char *value)
{
  if (!name || !*name || !value)
    return tl_error_set(TL_EINVAL, "http: header needs a name and a value");
  for (const char *p = name; *p; p++) {
    if (!token_char((unsigned char)*p))
      return tl_error_set(TL_EINVAL, "http: header name '%s' is not a token", name);
  }
  for (const char *p = value; *p; p++) {
    if (*p == '\r' || *p == '\n')
      return tl_error_set(TL_EINVAL, "http: header '%s': CR or LF in the value", name);
  }
  tl__arena *a = &res->req->arena;
  char *v = tl__arena_strndup(a, value, strlen(value));
  if (!v)
    return tl_error_set(TL_ENOMEM, "http: out of memory for header '%s'", name);
  /* One Content-Type, whichever way the handler sets it. */
  if (strcasecmp(name, "Content-Type") == 0) {
    res->content_type = v;
    return 0;
  }
  tl__header *h = tl__arena_alloc(a, sizeof *h);
  char *n = tl__arena_strndup(a, name, strlen(name));
  if (!h || !n)
    return tl_error_set(TL_ENOMEM, "http: out of memory for header '%s'", name);
  *h = (tl__header){ n, v, NULL };
  if (res->headers_tail)
    res->headers_tail->next = h;
  else
    res->headers = h;
  res->headers_tail = h;
  if (strcasecmp(name, "Content-Encoding") == 0)
    res->has_encoding = true;
  return 0;
}

int tl_http_res_body(tl_http_res *res, const char *data, size_t len,
                     const char *content_type)
{
  if (!data && len)
    return tl_error_set(TL_EINVAL, "http: NULL body with length %zu", len);
  const char *ct = content_type;
  if (ct) {
    ct = tl__arena_strndup(&res->req->arena, ct, strlen(ct));
    if (!ct)
      return tl_error_set(TL_ENOMEM, "http: out of memory");
  } else {
    ct = res->content_type ? res->content_type : "application/octet-stream";
  }
  char *copy = malloc(len + 1);
  if (!copy)
    return tl_error_set(TL_ENOMEM, "http: out of memory for a %zu-byte body", len);
  if (len)
    memcpy(copy, data, len);
  copy[len] = '\0';
  tl__res_body_take(res, copy, len, ct, free);
  return 0;
}

int tl_http_res_json(tl_http_res *res, int status, const char *json, size_t len)
{
  int rc = tl_http_res_body(res, json, len, NULL);
  if (rc == 0) {
    res->content_type = "application/json";
    res->status = status;
  }
  return rc;
}

int tl_http_res_json_t(tl_http_res *res, int status, json_t *json)
{
  if (!json)
    return tl_error_set(TL_EINVAL, "http: NULL JSON value");
  char *text = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(json);
  if (!text)
    return tl_error_set(TL_ENOMEM, "http: cannot encode the JSON response");
  /* jansson allocated it: jansson frees it, whatever allocator it uses. */
  json_malloc_t jmalloc;
  json_free_t jfree;
  json_get_alloc_funcs(&jmalloc, &jfree);
  tl__res_body_take(res, text, strlen(text), "application/json", jfree);
  res->status = status;
  return 0;
}

/* ---- gzip ---- */

/* Whether `p` (a token's parameters, after ';') gives q=0. */
static bool q_zero(const char *p, const char *end)
{
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == ';'))
      p++;
    if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
      p += 2;
      if (p < end && *p == '0') {
        p++;
        if (p < end && *p == '.') {
          p++;
          while (p < end && *p == '0')
            p++;
        }
        while (p < end && (*p == ' ' || *p == '\t'))
          p++;
        return p == end || *p == ';';
      }
      return false;
    }
    while (p < end && *p != ';')
      p++;
  }
  return false;
}

bool tl__accepts_gzip(const char *ae)
{
  if (!ae)
    return false;
  int gzip = -1, star = -1; /* -1 absent, 0 refused, 1 accepted */
  const char *p = ae;
  while (*p) {
    const char *comma = strchr(p, ',');
    const char *end = comma ? comma : p + strlen(p);
    while (p < end && (*p == ' ' || *p == '\t'))
      p++;
    const char *te = p;
    while (te < end && *te != ';' && *te != ' ' && *te != '\t')
      te++;
    size_t tl = (size_t)(te - p);
    int ok = q_zero(te, end) ? 0 : 1;
    if ((tl == 4 && strncasecmp(p, "gzip", 4) == 0) ||
        (tl == 6 && strncasecmp(p, "x-gzip", 6) == 0))
      gzip = ok;
    else if (tl == 1 && *p == '*')
      star = ok;
    if (!comma)
      break;
    p = comma + 1;
  }
  return gzip == 1 || (gzip == -1 && star == 1);
}

/* One deflate state per worker thread, reset between responses: a gzip
 * stream costs ~256 KiB to set up, too much to pay per request. */
static pthread_key_t z_key;
static pthread_once_t z_once = PTHREAD_ONCE_INIT;
static bool z_key_ok;

static void z_destroy(void *p)
{
  deflateEnd(p);
  free(p);
}

static void z_init(void) { z_key_ok = pthread_key_create(&z_key, z_destroy) == 0; }

static z_stream *z_get(void)
{
  pthread_once(&z_once, z_init);
  if (!z_key_ok)
    return NULL;
  z_stream *z = pthread_getspecific(z_key);
  if (z)
    return deflateReset(z) == Z_OK ? z : NULL;
  z = calloc(1, sizeof *z);
  if (!z)
    return NULL;
  /* 15 + 16: a 32 KiB window with the gzip wrapper. */
  if (deflateInit2(z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    free(z);
    return NULL;
  }
  if (pthread_setspecific(z_key, z) != 0) {
    z_destroy(z);
    return NULL;
  }
  return z;
}

char *tl__gzip(const char *data, size_t len, size_t *out_len)
{
  if (len > UINT32_MAX / 2)
    return NULL;
  z_stream *z = z_get();
  if (!z)
    return NULL;
  uLong bound = deflateBound(z, (uLong)len);
  char *out = malloc(bound);
  if (!out)
    return NULL;
  z->next_in = (Bytef *)(uintptr_t)data;
  z->avail_in = (uInt)len;
  z->next_out = (Bytef *)out;
  z->avail_out = (uInt)bound;
  int rc = deflate(z, Z_FINISH);
  size_t n = (size_t)z->total_out;
  if (rc != Z_STREAM_END || n >= len) {
    free(out);
    return NULL;
  }
  *out_len = n;
  return out;
}

/* ---- to MHD ---- */

static void free_body(void *p) { free(p); }

int tl__res_queue(tl_http_req *req)
{
  tl_http_res *res = &req->res;
  tl_http_server *srv = req->srv;
  int status = res->status;
  if (status == 0)
    status = res->body ? 200 : 204;
  if (status < 100 || status > 999) {
    tl_log(TL_LOG_ERROR, "http: handler set an invalid status", TL_F_INT("status", status));
    tl__res_reset(res);
    status = 500;
  }
  bool no_body = status < 200 || status == 204 || status == 304;
  if (no_body)
    body_drop(res);

  const char *body = res->body ? res->body : "";
  size_t len = res->body_len;
  void (*body_free)(void *) = res->body_free;
  bool gzipped = false, vary = false;
  if (len > TL__HTTP_GZIP_MIN && !res->has_encoding) {
    vary = true;
    if (tl__accepts_gzip(tl_http_req_header(req, "Accept-Encoding"))) {
      size_t zlen = 0;
      char *z = tl__gzip(body, len, &zlen);
      if (z) {
        body_drop(res);
        body = z;
        len = zlen;
        body_free = free_body;
        gzipped = true;
      }
    }
  }
  /* From here the MHD response owns the body. */
  res->body = NULL;
  res->body_free = NULL;

  struct MHD_Response *r;
  if (body_free) {
    r = MHD_create_response_from_buffer_with_free_callback(len, (void *)body, body_free);
    if (!r)
      body_free((void *)body);
  } else {
    r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_PERSISTENT);
  }
  if (!r)
    return MHD_NO;
  bool ok = true;
  if (!no_body && (len || res->content_type))
    ok &= MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                  res->content_type ? res->content_type
                                                    : "application/octet-stream") == MHD_YES;
  ok &= MHD_add_response_header(r, "x-request-id", req->id) == MHD_YES;
  for (const tl__header *h = res->headers; h; h = h->next)
    ok &= MHD_add_response_header(r, h->name, h->value) == MHD_YES;
  if (gzipped)
    ok &= MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip") == MHD_YES;
  if (vary)
    ok &= MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Accept-Encoding") == MHD_YES;
  /* While stopping, clients are told to reconnect (elsewhere). */
  if (atomic_load_explicit(&srv->stopping, memory_order_relaxed))
    ok &= MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES;
  if (!ok)
    tl_log(TL_LOG_WARN, "http: a response header was rejected", TL_F_INT("status", status));
  int ret = MHD_queue_response(req->conn, (unsigned)status, r);
  MHD_destroy_response(r);
  req->status = status;
  req->bytes = req->is_head ? 0 : len;
  req->responded = ret == MHD_YES;
  return ret;
}
