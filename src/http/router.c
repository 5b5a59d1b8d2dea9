/* The router: patterns parsed into a segment trie, matched segment by
 * segment without allocating. Pure: no MHD, no I/O. */
#include <stdlib.h>
#include <string.h>

#include "http_int.h"
#include "trellis/error.h"

typedef struct tl__node tl__node;

typedef struct tl__end {
  unsigned method_id;
  tl__route *route;
} tl__end;

/* Each node sits at a fixed depth (its number of segments from the
 * root), so a depth-first walk visits a node at most once per lookup:
 * the cost is bounded by the trie size, never exponential. */
struct tl__node {
  char *lit;               /* literal segment text (literal children) */
  size_t lit_len;
  tl__node **lits;         /* literal children */
  size_t nlits, lits_cap;
  tl__node *param;         /* {name} child */
  tl__node *rest;          /* {name...} child, always a leaf */
  tl__end *ends;           /* routes ending here, one per method */
  size_t nends;
  uint64_t ends_mask;
};

struct tl__router {
  tl__node root;
  tl__route *routes, *routes_tail;
  char *methods[TL__HTTP_MAX_METHODS];
  unsigned nmethods;
};

int tl__router_new(tl__router **out)
{
  tl__router *r = calloc(1, sizeof *r);
  if (!r)
    return tl_error_set(TL_ENOMEM, "http: out of memory for the router");
  *out = r;
  return 0;
}

static void node_free(tl__node *n, bool self)
{
  if (!n)
    return;
  for (size_t i = 0; i < n->nlits; i++)
    node_free(n->lits[i], true);
  free(n->lits);
  node_free(n->param, true);
  node_free(n->rest, true);
  free(n->ends);
  free(n->lit);
  if (self)
    free(n);
}

static void route_free(tl__route *rt)
{
  free(rt->method);
  free(rt->pattern);
  for (unsigned i = 0; i < rt->nparams; i++)
    free(rt->param_names[i]);
  free(rt);
}

void tl__router_free(tl__router *r)
{
  if (!r)
    return;
  node_free(&r->root, false);
  for (tl__route *rt = r->routes, *next; rt; rt = next) {
    next = rt->next;
    route_free(rt);
  }
  for (unsigned i = 0; i < r->nmethods; i++)
    free(r->methods[i]);
  free(r);
}

tl__route *tl__router_routes(const tl__router *r) { return r->routes; }

/* ---- pattern parsing ---- */

enum seg_kind { SEG_LIT, SEG_PARAM, SEG_REST };

typedef struct seg {
  enum seg_kind kind;
  const char *p; /* literal text or parameter name */
  size_t n;
} seg;

/* Literal characters: what may appear unencoded in a path segment
 * (RFC 3986 pchar without '%'), since literals are compared with the
 * raw request path. */
static bool lit_char(unsigned char c)
{
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return true;
  return strchr("-._~!$&'()*+,;=:@", c) != NULL && c != '\0';
}

static bool name_ok(const char *p, size_t n)
{
  if (n == 0 || n > TL__HTTP_MAX_NAME)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
      return false;
  }
  return true;
}

static bool method_ok(const char *m)
{
  size_t n = strlen(m);
  if (n == 0 || n > TL__HTTP_MAX_METHOD_LEN)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = m[i];
    if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_'))
      return false;
  }
  return true;
}

#define ROUTE_ERR(method, pattern, fmt, ...) \
  tl_error_set(TL_EINVAL, "route '%s %s': " fmt, (method), (pattern), __VA_ARGS__)

/* Split `pattern` into segments; `segs` has TL__HTTP_MAX_SEGMENTS room. */
static int parse_pattern(const char *method, const char *pattern, seg *segs,
                         size_t *nsegs, unsigned *nparams)
{
  size_t len = strlen(pattern);
  if (pattern[0] != '/')
    return ROUTE_ERR(method, pattern, "%s", "a pattern must start with '/'");
  if (len > TL__HTTP_MAX_PATH)
    return ROUTE_ERR(method, "...", "pattern longer than %d bytes", TL__HTTP_MAX_PATH);
  const char *cur = pattern + 1, *end = pattern + len;
  size_t ns = 0;
  unsigned np = 0;
  for (;;) {
    const char *slash = memchr(cur, '/', (size_t)(end - cur));
    const char *se = slash ? slash : end;
    size_t sl = (size_t)(se - cur);
    if (ns == TL__HTTP_MAX_SEGMENTS)
      return ROUTE_ERR(method, pattern, "more than %d segments", TL__HTTP_MAX_SEGMENTS);
    seg *s = &segs[ns];
    if (sl == 0) {
      if (slash)
        return ROUTE_ERR(method, pattern, "%s", "empty segment ('//')");
      *s = (seg){ SEG_LIT, cur, 0 };
    } else if (cur[0] == '{') {
      const char *close = memchr(cur, '}', sl);
      if (!close)
        return ROUTE_ERR(method, pattern, "unclosed '{' in segment '%.*s'", (int)sl, cur);
      if (close != se - 1)
        return ROUTE_ERR(method, pattern,
                         "a parameter must be a whole segment, not '%.*s'", (int)sl, cur);
      const char *name = cur + 1;
      size_t nl = sl - 2;
      enum seg_kind kind = SEG_PARAM;
      if (nl >= 3 && memcmp(name + nl - 3, "...", 3) == 0) {
        kind = SEG_REST;
        nl -= 3;
        if (slash)
          return ROUTE_ERR(method, pattern,
                           "catch-all '%.*s' must be the last segment", (int)sl, cur);
      }
      if (nl == 0)
        return ROUTE_ERR(method, pattern, "empty parameter name '%.*s'", (int)sl, cur);
      if (memchr(name, '{', nl))
        return ROUTE_ERR(method, pattern, "unexpected '{' in segment '%.*s'", (int)sl, cur);
      if (!name_ok(name, nl))
        return ROUTE_ERR(method, pattern,
                         "invalid parameter name '%.*s' (expected [A-Za-z_][A-Za-z0-9_]*)",
                         (int)nl, name);
      for (size_t i = 0; i < ns; i++) {
        if (segs[i].kind != SEG_LIT && segs[i].n == nl && memcmp(segs[i].p, name, nl) == 0)
          return ROUTE_ERR(method, pattern, "duplicate parameter name '%.*s'", (int)nl, name);
      }
      if (np == TL__HTTP_MAX_PARAMS)
        return ROUTE_ERR(method, pattern, "more than %d parameters", TL__HTTP_MAX_PARAMS);
      np++;
      *s = (seg){ kind, name, nl };
    } else {
      for (size_t i = 0; i < sl; i++) {
        unsigned char c = (unsigned char)cur[i];
        if (c == '{' || c == '}')
          return ROUTE_ERR(method, pattern,
                           "a parameter must be a whole segment, not '%.*s'", (int)sl, cur);
        if (!lit_char(c))
          return ROUTE_ERR(method, pattern,
                           "character 0x%02x is not allowed in literal segment '%.*s'",
                           c, (int)sl, cur);
      }
      *s = (seg){ SEG_LIT, cur, sl };
    }
    ns++;
    if (!slash)
      break;
    cur = slash + 1;
  }
  *nsegs = ns;
  *nparams = np;
  return 0;
}

/* ---- trie ---- */

static tl__node *lit_child(const tl__node *n, const char *p, size_t len)
{
  for (size_t i = 0; i < n->nlits; i++) {
    tl__node *c = n->lits[i];
    if (c->lit_len == len && memcmp(c->lit, p, len) == 0)
      return c;
  }
  return NULL;
}

static tl__node *step(const tl__node *n, const seg *s)
{
  switch (s->kind) {
  case SEG_LIT: return lit_child(n, s->p, s->n);
  case SEG_PARAM: return n->param;
  case SEG_REST: return n->rest;
  }
  return NULL;
}

static tl__node *add_child(tl__node *n, const seg *s)
{
  tl__node *c = step(n, s);
  if (c)
    return c;
  c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  switch (s->kind) {
  case SEG_LIT:
    if (n->nlits == n->lits_cap) {
      size_t cap = n->lits_cap ? n->lits_cap * 2 : 4;
      tl__node **v = realloc(n->lits, cap * sizeof *v);
      if (!v) {
        free(c);
        return NULL;
      }
      n->lits = v;
      n->lits_cap = cap;
    }
    c->lit = malloc(s->n + 1);
    if (!c->lit) {
      free(c);
      return NULL;
    }
    memcpy(c->lit, s->p, s->n);
    c->lit[s->n] = '\0';
    c->lit_len = s->n;
    n->lits[n->nlits++] = c;
    break;
  case SEG_PARAM: n->param = c; break;
  case SEG_REST: n->rest = c; break;
  }
  return c;
}

static tl__route *end_find(const tl__node *n, unsigned method_id)
{
  if (!(n->ends_mask & ((uint64_t)1 << method_id)))
    return NULL;
  for (size_t i = 0; i < n->nends; i++) {
    if (n->ends[i].method_id == method_id)
      return n->ends[i].route;
  }
  return NULL;
}

static int method_find(const tl__router *r, const char *method, size_t len)
{
  for (unsigned i = 0; i < r->nmethods; i++) {
    if (strncmp(r->methods[i], method, len) == 0 && r->methods[i][len] == '\0')
      return (int)i;
  }
  return -1;
}

static char *dup_str(const char *s)
{
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

int tl__router_add(tl__router *r, const char *method, const char *pattern,
                   tl_http_handler handler, void *ctx, tl__route **out)
{
  if (!r || !method || !pattern || !handler)
    return tl_error_set(TL_EINVAL, "http: route needs a method, a pattern and a handler");
  if (!method_ok(method))
    return tl_error_set(TL_EINVAL,
                        "route '%s %s': method must be an uppercase token of up to %d characters",
                        method, pattern, TL__HTTP_MAX_METHOD_LEN);
  seg *segs = malloc(TL__HTTP_MAX_SEGMENTS * sizeof *segs);
  if (!segs)
    return tl_error_set(TL_ENOMEM, "http: out of memory");
  size_t ns = 0;
  unsigned np = 0;
  int rc = parse_pattern(method, pattern, segs, &ns, &np);
  if (rc < 0)
    goto done;

  int mid = method_find(r, method, strlen(method));
  /* Same shape and method already registered? Walk without creating. */
  if (mid >= 0) {
    const tl__node *n = &r->root;
    for (size_t i = 0; n && i < ns; i++)
      n = step(n, &segs[i]);
    const tl__route *old = n ? end_find(n, (unsigned)mid) : NULL;
    if (old) {
      rc = ROUTE_ERR(method, pattern, "duplicates route '%s %s'", old->method, old->pattern);
      goto done;
    }
  } else {
    if (r->nmethods == TL__HTTP_MAX_METHODS) {
      rc = ROUTE_ERR(method, pattern, "more than %d distinct methods", TL__HTTP_MAX_METHODS);
      goto done;
    }
    char *m = dup_str(method);
    if (!m) {
      rc = tl_error_set(TL_ENOMEM, "http: out of memory");
      goto done;
    }
    mid = (int)r->nmethods;
    r->methods[r->nmethods++] = m;
  }

  tl__route *rt = calloc(1, sizeof *rt);
  if (!rt) {
    rc = tl_error_set(TL_ENOMEM, "http: out of memory");
    goto done;
  }
  rt->method = dup_str(method);
  rt->pattern = dup_str(pattern);
  rt->handler = handler;
  rt->ctx = ctx;
  rt->method_id = (unsigned)mid;
  bool oom = !rt->method || !rt->pattern;
  for (size_t i = 0; i < ns && !oom; i++) {
    if (segs[i].kind == SEG_LIT)
      continue;
    char *name = malloc(segs[i].n + 1);
    if (!name) {
      oom = true;
      break;
    }
    memcpy(name, segs[i].p, segs[i].n);
    name[segs[i].n] = '\0';
    rt->param_names[rt->nparams++] = name;
  }
  /* Nodes created before a failure stay: without ends they match nothing. */
  tl__node *n = &r->root;
  for (size_t i = 0; i < ns && n && !oom; i++)
    n = add_child(n, &segs[i]);
  if (!oom && n) {
    tl__end *e = realloc(n->ends, (n->nends + 1) * sizeof *e);
    if (e) {
      n->ends = e;
      e[n->nends++] = (tl__end){ (unsigned)mid, rt };
      n->ends_mask |= (uint64_t)1 << mid;
    } else {
      oom = true;
    }
  } else {
    oom = true;
  }
  if (oom) {
    route_free(rt);
    rc = tl_error_set(TL_ENOMEM, "http: out of memory adding route '%s %s'", method, pattern);
    goto done;
  }
  if (r->routes_tail)
    r->routes_tail->next = rt;
  else
    r->routes = rt;
  r->routes_tail = rt;
  if (out)
    *out = rt;
done:
  free(segs);
  return rc;
}

/* ---- matching ---- */

typedef struct walk {
  const char *end;
  int mid;        /* request method id, or -1 */
  int get_mid;    /* GET's id for a HEAD request, or -1 */
  tl__match *m;
  tl__slice caps[TL__HTTP_MAX_PARAMS];
  unsigned ncaps;
  uint64_t allow;
  bool path_hit;
} walk;

/* The path ended at `n`: is there a route here for the method? */
static bool visit_end(walk *w, const tl__node *n)
{
  if (!n->nends)
    return false;
  w->path_hit = true;
  w->allow |= n->ends_mask;
  const tl__route *rt = w->mid >= 0 ? end_find(n, (unsigned)w->mid) : NULL;
  if (!rt && w->get_mid >= 0)
    rt = end_find(n, (unsigned)w->get_mid);
  if (!rt)
    return false;
  tl__match *m = w->m;
  m->route = rt;
  m->nparams = w->ncaps;
  memcpy(m->params, w->caps, w->ncaps * sizeof w->caps[0]);
  return true;
}

/* `n`'s children take the segment starting at `cur`. Tries literal,
 * then {name}, then {name...}, and backtracks when a branch dead-ends. */
static bool walk_node(walk *w, const tl__node *n, const char *cur)
{
  size_t left = (size_t)(w->end - cur);
  const char *slash = memchr(cur, '/', left);
  size_t sl = slash ? (size_t)(slash - cur) : left;

  const tl__node *c = lit_child(n, cur, sl);
  if (c && (slash ? walk_node(w, c, slash + 1) : visit_end(w, c)))
    return true;
  if (n->param && sl > 0 && w->ncaps < TL__HTTP_MAX_PARAMS) {
    w->caps[w->ncaps++] = (tl__slice){ cur, sl };
    bool hit = slash ? walk_node(w, n->param, slash + 1) : visit_end(w, n->param);
    w->ncaps--;
    if (hit)
      return true;
  }
  if (n->rest && w->ncaps < TL__HTTP_MAX_PARAMS) {
    w->caps[w->ncaps++] = (tl__slice){ cur, left };
    bool hit = visit_end(w, n->rest);
    w->ncaps--;
    if (hit)
      return true;
  }
  return false;
}

void tl__router_match(const tl__router *r, const char *method,
                      const char *path, size_t len, tl__match *m)
{
  m->route = NULL;
  m->nparams = 0;
  m->allow = 0;
  if (len > TL__HTTP_MAX_PATH) {
    m->kind = TL__MATCH_TOOLONG;
    return;
  }
  if (len == 0 || path[0] != '/') {
    m->kind = TL__MATCH_BADPATH;
    return;
  }
  walk w = { .end = path + len, .mid = -1, .get_mid = -1, .m = m };
  size_t ml = method ? strlen(method) : 0;
  w.mid = method_find(r, method ? method : "", ml);
  if (ml == 4 && memcmp(method, "HEAD", 4) == 0)
    w.get_mid = method_find(r, "GET", 3);
  if (walk_node(&w, &r->root, path + 1)) {
    m->kind = TL__MATCH_FOUND;
    return;
  }
  m->kind = w.path_hit ? TL__MATCH_METHOD : TL__MATCH_NONE;
  m->allow = w.allow;
}

static int cmp_str(const void *a, const void *b)
{
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t tl__router_allow(const tl__router *r, uint64_t allow, char *buf,
                        size_t size)
{
  const char *names[TL__HTTP_MAX_METHODS + 1];
  size_t n = 0;
  bool get = false, head = false;
  for (unsigned i = 0; i < r->nmethods; i++) {
    if (!(allow & ((uint64_t)1 << i)))
      continue;
    names[n++] = r->methods[i];
    get |= strcmp(r->methods[i], "GET") == 0;
    head |= strcmp(r->methods[i], "HEAD") == 0;
  }
  if (get && !head)
    names[n++] = "HEAD";
  qsort(names, n, sizeof names[0], cmp_str);
  size_t len = 0;
  if (size)
    buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    size_t nl = strlen(names[i]);
    size_t need = nl + (i ? 2 : 0);
    if (len + need + 1 > size)
      break;
    if (i) {
      memcpy(buf + len, ", ", 2);
      len += 2;
    }
    memcpy(buf + len, names[i], nl);
    len += nl;
    buf[len] = '\0';
  }
  return len;
}

/* ---- percent-decoding ---- */

static int hexval(unsigned char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

long tl__pct_decode(const char *in, size_t n, char *out)
{
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (in[i] != '%') {
      out[o++] = in[i];
      continue;
    }
    if (i + 2 >= n)
      return -1;
    int hi = hexval((unsigned char)in[i + 1]), lo = hexval((unsigned char)in[i + 2]);
    if (hi < 0 || lo < 0)
      return -1;
    int v = hi << 4 | lo;
    if (v == 0)
      return -2;
    out[o++] = (char)v;
    i += 2;
  }
  out[o] = '\0';
  return (long)o;
}
