/* libFuzzer target for the HTTP router. The first half of the input is
 * a list of routes ("[METHOD ]pattern" per line), the second a list of
 * request paths ("[METHOD ]path" per line). Every route is added (errors
 * are fine, but must come with a message), every path is matched, and
 * the invariants below must hold. The small header parsers get the path
 * lines too. Nothing may crash or leak. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core_int.h"
#include "http/http_int.h"
#include "trellis/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LINES 64

static void check(bool ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

static int handler(tl_http_req *req, tl_http_res *res, void *ctx) { return 0; }

/* Split "[METHOD ]text" into a NUL-terminated method and text. */
static void split_line(char *line, const char **method, const char **text)
{
  char *sp = strchr(line, ' ');
  if (sp && sp != line && sp - line <= 10) {
    bool upper = true;
    for (char *p = line; p < sp; p++)
      upper &= *p >= 'A' && *p <= 'Z';
    if (upper) {
      *sp = '\0';
      *method = line;
      *text = sp + 1;
      return;
    }
  }
  *method = "GET";
  *text = line;
}

static size_t lines(char *buf, char **out)
{
  size_t n = 0;
  char *p = buf;
  while (n < MAX_LINES) {
    out[n++] = p;
    char *nl = strchr(p, '\n');
    if (!nl)
      break;
    *nl = '\0';
    p = nl + 1;
  }
  return n;
}

static bool method_ok_for(const tl__route *rt, const char *method)
{
  return strcmp(rt->method, method) == 0 ||
         (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0);
}

static void check_match(const tl__router *r, const char *method, const char *path, size_t len)
{
  tl__match m, again;
  tl__router_match(r, method, path, len, &m);
  tl__router_match(r, method, path, len, &again);
  check(m.kind == again.kind && m.route == again.route, "matching is not deterministic");
  char allow[TL__HTTP_ALLOW_MAX];
  switch (m.kind) {
  case TL__MATCH_FOUND: {
    const tl__route *rt = m.route;
    check(rt != NULL, "found without a route");
    check(method_ok_for(rt, method), "found a route for another method");
    check(m.nparams == rt->nparams, "parameter count differs from the route's");
    for (unsigned i = 0; i < m.nparams; i++) {
      const tl__slice *s = &m.params[i];
      check(s->p >= path && s->p + s->n <= path + len, "parameter outside the path");
      if (i + 1 < m.nparams)
        check(s->n > 0 && !memchr(s->p, '/', s->n), "inner parameter is empty or has '/'");
      char *out = malloc(s->n + 1);
      long dn = tl__pct_decode(s->p, s->n, out);
      check(dn == -1 || dn == -2 || (dn >= 0 && (size_t)dn <= s->n && strlen(out) == (size_t)dn),
            "decoded length is wrong");
      free(out);
      check(rt->param_names[i] && rt->param_names[i][0], "parameter without a name");
    }
    break;
  }
  case TL__MATCH_METHOD:
    check(m.allow != 0, "405 without allowed methods");
    check(tl__router_allow(r, m.allow, allow, sizeof allow) > 0, "empty Allow");
    break;
  case TL__MATCH_NONE:
    check(m.allow == 0, "404 with allowed methods");
    break;
  case TL__MATCH_BADPATH:
    check(len == 0 || path[0] != '/', "bad path that starts with '/'");
    break;
  case TL__MATCH_TOOLONG:
    check(len > TL__HTTP_MAX_PATH, "too long but short");
    break;
  }
}

/* A path the route's own pattern matches: parameters become "v", a
 * catch-all "r/s". Some route of the same method must take it. */
static void check_own_path(const tl__router *r, const tl__route *rt)
{
  size_t n = strlen(rt->pattern);
  char *path = malloc(n + 4);
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    if (rt->pattern[i] == '{') {
      const char *close = strchr(rt->pattern + i, '}');
      bool rest = close - rt->pattern >= 3 && memcmp(close - 3, "...", 3) == 0;
      memcpy(path + o, rest ? "r/s" : "v", rest ? 3 : 1);
      o += rest ? 3 : 1;
      i = (size_t)(close - rt->pattern) + 1;
    } else {
      path[o++] = rt->pattern[i++];
    }
  }
  path[o] = '\0';
  tl__match m;
  tl__router_match(r, rt->method, path, o, &m);
  check(m.kind == TL__MATCH_FOUND, "a route does not match its own path");
  check(strcmp(m.route->method, rt->method) == 0, "own path matched another method");
  free(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  size_t half = size / 2;
  char *routes = malloc(half + 1), *paths = malloc(size - half + 1);
  memcpy(routes, data, half);
  routes[half] = '\0';
  memcpy(paths, data + half, size - half);
  paths[size - half] = '\0';

  tl__router *r = NULL;
  check(tl__router_new(&r) == 0, "router_new failed");
  char *rl[MAX_LINES];
  size_t nr = lines(routes, rl);
  for (size_t i = 0; i < nr; i++) {
    const char *method, *pattern;
    split_line(rl[i], &method, &pattern);
    tl__route *rt = NULL;
    int rc = tl__router_add(r, method, pattern, handler, NULL, &rt);
    if (rc == 0) {
      check(rt && strcmp(rt->pattern, pattern) == 0, "added route differs");
    } else {
      check(rc == TL_EINVAL || rc == TL_ENOMEM, "unexpected status");
      check(tl_error_last()[0] != '\0', "failure without a message");
    }
  }
  for (const tl__route *rt = tl__router_routes(r); rt; rt = rt->next)
    check_own_path(r, rt);

  char *pl[MAX_LINES];
  size_t np = lines(paths, pl);
  for (size_t i = 0; i < np; i++) {
    const char *method, *path;
    split_line(pl[i], &method, &path);
    size_t len = strlen(path);
    check_match(r, method, path, len);
    check_match(r, "HEAD", path, len);
    char trace[33];
    if (tl__traceparent_parse(path, trace))
      check(strlen(trace) == 32, "trace id length");
    (void)tl__accepts_gzip(path);
    (void)tl__request_id_ok(path);
  }
  tl__router_free(r);
  free(routes);
  free(paths);
  return 0;
}
