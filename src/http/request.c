/* The request object: its arena, request and trace ids, and the
 * tl_http_req_* accessors handlers use. */
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "core/core_int.h"
#include "http_int.h"
#include "trellis/clock.h"
#include "trellis/error.h"

/* ---- arena ---- */

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

void *tl__arena_alloc(tl__arena *a, size_t n)
{
  n = align16(n ? n : 1);
  if (!a->blocks && a->used + n <= TL__ARENA_INLINE) {
    void *p = a->inline_buf + a->used;
    a->used += n;
    return p;
  }
  tl__arena_block *b = a->blocks;
  if (!b || b->used + n > b->cap) {
    size_t cap = n > 4096 ? n : 4096;
    b = malloc(sizeof *b + cap);
    if (!b)
      return NULL;
    b->cap = cap;
    b->used = 0;
    b->next = a->blocks;
    a->blocks = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  return p;
}

char *tl__arena_strndup(tl__arena *a, const char *s, size_t n)
{
  char *d = tl__arena_alloc(a, n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

void tl__arena_free(tl__arena *a)
{
  for (tl__arena_block *b = a->blocks, *next; b; b = next) {
    next = b->next;
    free(b);
  }
  a->blocks = NULL;
  a->used = 0;
}

/* ---- method labels ---- */

static const char *const method_names[] = {
  [TL__METHOD_GET] = "GET",       [TL__METHOD_HEAD] = "HEAD",
  [TL__METHOD_POST] = "POST",     [TL__METHOD_PUT] = "PUT",
  [TL__METHOD_DELETE] = "DELETE", [TL__METHOD_PATCH] = "PATCH",
  [TL__METHOD_OPTIONS] = "OPTIONS", [TL__METHOD_CONNECT] = "CONNECT",
  [TL__METHOD_TRACE] = "TRACE",   [TL__METHOD_OTHER] = "OTHER",
};

unsigned tl__method_label(const char *method)
{
  for (unsigned i = 0; i < TL__METHOD_OTHER; i++) {
    if (strcmp(method, method_names[i]) == 0)
      return i;
  }
  return TL__METHOD_OTHER;
}

const char *tl__method_label_name(unsigned label)
{
  return label <= TL__METHOD_OTHER ? method_names[label] : "OTHER";
}

/* ---- ids ---- */

bool tl__request_id_ok(const char *s)
{
  size_t i = 0;
  for (; s[i]; i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok || i >= TL__HTTP_REQ_ID_MAX)
      return false;
  }
  return i > 0;
}

void tl__req_ids(tl_http_req *req, const char *x_request_id,
                 const char *traceparent)
{
  if (x_request_id && tl__request_id_ok(x_request_id))
    memcpy(req->id, x_request_id, strlen(x_request_id) + 1);
  else
    tl_uuid7(req->id);
  if (tl__traceparent_parse(traceparent, req->trace_id)) {
    memcpy(req->traceparent, traceparent, 56);
  } else {
    req->trace_id[0] = '\0';
    req->traceparent[0] = '\0';
  }
}

/* ---- accessors ---- */

const char *tl_http_req_method(const tl_http_req *req) { return req->method; }
const char *tl_http_req_path(const tl_http_req *req) { return req->path; }
const char *tl_http_req_id(const tl_http_req *req) { return req->id; }
const char *tl_http_req_trace_id(const tl_http_req *req) { return req->trace_id; }

const char *tl_http_req_traceparent(const tl_http_req *req)
{
  return req->traceparent[0] ? req->traceparent : NULL;
}

const char *tl_http_req_route(const tl_http_req *req)
{
  return req->match.route ? req->match.route->pattern : "unmatched";
}

const char *tl_http_req_param(const tl_http_req *req, const char *name)
{
  const tl__route *rt = req->match.route;
  if (!rt || !name)
    return NULL;
  for (unsigned i = 0; i < rt->nparams; i++) {
    if (strcmp(rt->param_names[i], name) == 0)
      return req->params[i];
  }
  return NULL;
}

const char *tl_http_req_header(const tl_http_req *req, const char *name)
{
  if (!name || !req->conn)
    return NULL;
  return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *tl_http_req_body(const tl_http_req *req, size_t *len)
{
  if (len)
    *len = req->body_len;
  return req->body ? req->body : "";
}

static int hexval(unsigned char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Form-style decoding of one query component: '+' is a space, %XX a
 * byte, a malformed escape stays as it is. Returns the length written to
 * `out` (room for n + 1), or -1 when it would contain a NUL byte. */
static long query_decode(const char *in, size_t n, char *out)
{
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = in[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%' && i + 2 < n) {
      int hi = hexval((unsigned char)in[i + 1]), lo = hexval((unsigned char)in[i + 2]);
      if (hi >= 0 && lo >= 0) {
        c = (char)(hi << 4 | lo);
        if (c == '\0')
          return -1;
        i += 2;
      }
    }
    if (out)
      out[o] = c;
    o++;
  }
  if (out)
    out[o] = '\0';
  return (long)o;
}

const char *tl_http_req_query(const tl_http_req *req, const char *name)
{
  if (!req->query || !name)
    return NULL;
  tl_http_req *mreq = (tl_http_req *)req; /* the arena is scratch space */
  size_t name_len = strlen(name);
  const char *p = req->query;
  while (*p) {
    const char *amp = strchr(p, '&');
    const char *pe = amp ? amp : p + strlen(p);
    const char *eq = memchr(p, '=', (size_t)(pe - p));
    const char *ke = eq ? eq : pe;
    size_t kl = (size_t)(ke - p);
    if (kl >= name_len && kl <= 3 * name_len) {
      char stack[256];
      char *key = kl < sizeof stack ? stack : tl__arena_alloc(&mreq->arena, kl + 1);
      if (key && query_decode(p, kl, key) == (long)name_len && memcmp(key, name, name_len) == 0) {
        const char *v = eq ? eq + 1 : pe;
        size_t vl = (size_t)(pe - v);
        char *val = tl__arena_alloc(&mreq->arena, vl + 1);
        if (val && query_decode(v, vl, val) >= 0)
          return val;
        return NULL;
      }
    }
    if (!amp)
      break;
    p = amp + 1;
  }
  return NULL;
}
