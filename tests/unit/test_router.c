/* The HTTP router: patterns, precedence, parameters, 404 vs 405, HEAD,
 * trailing slashes, invalid patterns and percent-decoding. No server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core_int.h"
#include "http/http_int.h"
#include "trellis/error.h"

static int h_a(tl_http_req *req, tl_http_res *res, void *ctx) { return 0; }

/* Handlers are never called here; routes are told apart by ctx. */
#define CTX(n) ((void *)(uintptr_t)(n))

static tl__router *router(void)
{
  tl__router *r = NULL;
  assert_int_equal(tl__router_new(&r), 0);
  return r;
}

static void add(tl__router *r, const char *method, const char *pattern, int id)
{
  int rc = tl__router_add(r, method, pattern, h_a, CTX(id), NULL);
  if (rc != 0)
    fail_msg("adding %s %s: %s", method, pattern, tl_error_last());
}

static tl__match match(const tl__router *r, const char *method, const char *path)
{
  tl__match m;
  memset(&m, 0xAB, sizeof m);
  tl__router_match(r, method, path, strlen(path), &m);
  return m;
}

/* The route id a path resolves to, or -404 / -405 / -400 / -414. */
static int resolve(const tl__router *r, const char *method, const char *path)
{
  tl__match m = match(r, method, path);
  switch (m.kind) {
  case TL__MATCH_FOUND: return (int)(uintptr_t)m.route->ctx;
  case TL__MATCH_NONE: return -404;
  case TL__MATCH_METHOD: return -405;
  case TL__MATCH_BADPATH: return -400;
  case TL__MATCH_TOOLONG: return -414;
  }
  return -1;
}

static char *param(const tl__match *m, const char *name, char *buf)
{
  for (unsigned i = 0; i < m->route->nparams; i++) {
    if (strcmp(m->route->param_names[i], name) == 0) {
      long n = tl__pct_decode(m->params[i].p, m->params[i].n, buf);
      return n < 0 ? NULL : buf;
    }
  }
  return NULL;
}

static void test_literal_beats_parameter(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/users/{id}", 1);
  add(r, "GET", "/users/me", 2);
  add(r, "GET", "/users/{id}/posts", 3);
  add(r, "GET", "/users/me/settings", 4);
  add(r, "GET", "/{any...}", 5);
  assert_int_equal(resolve(r, "GET", "/users/me"), 2);
  assert_int_equal(resolve(r, "GET", "/users/42"), 1);
  /* the literal branch dead-ends, the parameter branch matches */
  assert_int_equal(resolve(r, "GET", "/users/me/posts"), 3);
  assert_int_equal(resolve(r, "GET", "/users/me/settings"), 4);
  assert_int_equal(resolve(r, "GET", "/users/42/settings"), 5);
  assert_int_equal(resolve(r, "GET", "/other"), 5);
  tl__router_free(r);
}

static void test_parameters_extracted_and_decoded(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/orgs/{org}/repos/{repo}", 1);
  char buf[64];
  tl__match m = match(r, "GET", "/orgs/acme%20inc/repos/tl%2Fcore");
  assert_int_equal(m.kind, TL__MATCH_FOUND);
  assert_int_equal(m.nparams, 2);
  assert_string_equal(param(&m, "org", buf), "acme inc");
  assert_string_equal(param(&m, "repo", buf), "tl/core");
  assert_null(param(&m, "nope", buf));
  /* '+' is a literal plus in a path */
  m = match(r, "GET", "/orgs/a+b/repos/x");
  assert_string_equal(param(&m, "org", buf), "a+b");
  /* parameters never match an empty segment */
  assert_int_equal(resolve(r, "GET", "/orgs//repos/x"), -404);
  tl__router_free(r);
}

static void test_catch_all(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/files/{path...}", 1);
  add(r, "GET", "/files/special", 2);
  char buf[64];
  tl__match m = match(r, "GET", "/files/a/b/c.txt");
  assert_int_equal(m.kind, TL__MATCH_FOUND);
  assert_string_equal(param(&m, "path", buf), "a/b/c.txt");
  m = match(r, "GET", "/files/");
  assert_int_equal(m.kind, TL__MATCH_FOUND);
  assert_string_equal(param(&m, "path", buf), "");
  assert_int_equal(resolve(r, "GET", "/files/special"), 2);
  assert_int_equal(resolve(r, "GET", "/files/special/x"), 1);
  assert_int_equal(resolve(r, "GET", "/files"), -404);
  tl__router_free(r);
}

static void test_not_found_vs_method_not_allowed(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/items/{id}", 1);
  add(r, "PUT", "/items/{id}", 2);
  add(r, "DELETE", "/items/{id}", 3);
  add(r, "POST", "/items", 4);
  add(r, "PATCH", "/other", 5);
  assert_int_equal(resolve(r, "GET", "/nothing"), -404);
  tl__match m = match(r, "POST", "/items/7");
  assert_int_equal(m.kind, TL__MATCH_METHOD);
  char allow[TL__HTTP_ALLOW_MAX];
  tl__router_allow(r, m.allow, allow, sizeof allow);
  assert_string_equal(allow, "DELETE, GET, HEAD, PUT");
  m = match(r, "GET", "/items");
  assert_int_equal(m.kind, TL__MATCH_METHOD);
  tl__router_allow(r, m.allow, allow, sizeof allow);
  assert_string_equal(allow, "POST");
  /* a method no route uses at all */
  m = match(r, "BREW", "/items");
  assert_int_equal(m.kind, TL__MATCH_METHOD);
  tl__router_allow(r, m.allow, allow, sizeof allow);
  assert_string_equal(allow, "POST");
  /* an explicit HEAD route is listed once */
  add(r, "HEAD", "/other", 6);
  add(r, "GET", "/other", 7);
  m = match(r, "PUT", "/other");
  tl__router_allow(r, m.allow, allow, sizeof allow);
  assert_string_equal(allow, "GET, HEAD, PATCH");
  /* a tiny buffer truncates at a method boundary */
  char small[10];
  tl__router_allow(r, m.allow, small, sizeof small);
  assert_string_equal(small, "GET, HEAD");
  tl__router_free(r);
}

static void test_method_wins_over_precedence(void **state)
{
  /* The more specific pattern lacks the method; the other one has it. */
  tl__router *r = router();
  add(r, "POST", "/users/me", 1);
  add(r, "GET", "/users/{id}", 2);
  assert_int_equal(resolve(r, "GET", "/users/me"), 2);
  assert_int_equal(resolve(r, "POST", "/users/me"), 1);
  tl__match m = match(r, "DELETE", "/users/me");
  assert_int_equal(m.kind, TL__MATCH_METHOD);
  char allow[TL__HTTP_ALLOW_MAX];
  tl__router_allow(r, m.allow, allow, sizeof allow);
  assert_string_equal(allow, "GET, HEAD, POST");
  tl__router_free(r);
}

static void test_head_served_by_get(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/a", 1);
  add(r, "GET", "/b", 2);
  add(r, "HEAD", "/b", 3);
  add(r, "POST", "/c", 4);
  assert_int_equal(resolve(r, "HEAD", "/a"), 1);
  assert_int_equal(resolve(r, "HEAD", "/b"), 3);
  assert_int_equal(resolve(r, "HEAD", "/c"), -405);
  tl__router_free(r);
}

static void test_trailing_slash_is_strict(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/a", 1);
  add(r, "GET", "/b/", 2);
  add(r, "GET", "/", 3);
  assert_int_equal(resolve(r, "GET", "/a"), 1);
  assert_int_equal(resolve(r, "GET", "/a/"), -404);
  assert_int_equal(resolve(r, "GET", "/b/"), 2);
  assert_int_equal(resolve(r, "GET", "/b"), -404);
  assert_int_equal(resolve(r, "GET", "/"), 3);
  assert_int_equal(resolve(r, "GET", "//"), -404);
  tl__router_free(r);
}

static void test_duplicate_route(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/users/{id}", 1);
  assert_int_equal(tl__router_add(r, "GET", "/users/{uid}", h_a, NULL, NULL), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "duplicates route 'GET /users/{id}'"));
  assert_int_equal(tl__router_add(r, "GET", "/users/{id}", h_a, NULL, NULL), TL_EINVAL);
  /* same shape, other method: fine; other shape: fine */
  add(r, "DELETE", "/users/{uid}", 2);
  add(r, "GET", "/users/{id}/x", 3);
  /* the duplicate left no trace: routes still resolve */
  assert_int_equal(resolve(r, "GET", "/users/5"), 1);
  assert_int_equal(resolve(r, "DELETE", "/users/5"), 2);
  tl__router_free(r);
}

static void expect_invalid(const char *method, const char *pattern, const char *msg)
{
  tl__router *r = router();
  assert_int_equal(tl__router_add(r, method, pattern, h_a, NULL, NULL), TL_EINVAL);
  if (!strstr(tl_error_last(), msg))
    fail_msg("pattern '%s': got '%s', expected it to contain '%s'", pattern, tl_error_last(),
             msg);
  tl__router_free(r);
}

static void test_invalid_patterns(void **state)
{
  expect_invalid("GET", "/users/{}", "route 'GET /users/{}': empty parameter name '{}'");
  expect_invalid("GET", "/users/{...}", "empty parameter name '{...}'");
  expect_invalid("GET", "/users/{id", "unclosed '{' in segment '{id'");
  expect_invalid("GET", "/files/{rest...}/x", "catch-all '{rest...}' must be the last segment");
  expect_invalid("GET", "users", "a pattern must start with '/'");
  expect_invalid("GET", "", "a pattern must start with '/'");
  expect_invalid("GET", "/a/{id}x", "a parameter must be a whole segment");
  expect_invalid("GET", "/a/x{id}", "a parameter must be a whole segment");
  expect_invalid("GET", "/a/id}", "a parameter must be a whole segment");
  expect_invalid("GET", "/a/{b}/{b}", "duplicate parameter name 'b'");
  expect_invalid("GET", "/a/{1x}", "invalid parameter name '1x'");
  expect_invalid("GET", "/a//b", "empty segment ('//')");
  expect_invalid("GET", "/a b", "character 0x20 is not allowed");
  expect_invalid("GET", "/a%20b", "character 0x25 is not allowed");
  expect_invalid("get", "/a", "method must be an uppercase token");
  expect_invalid("", "/a", "method must be an uppercase token");
  char many[256] = "";
  for (int i = 0; i <= TL__HTTP_MAX_PARAMS; i++)
    snprintf(many + strlen(many), sizeof many - strlen(many), "/{p%d}", i);
  expect_invalid("GET", many, "more than 16 parameters");
  tl__router *r = router();
  assert_int_equal(tl__router_add(r, "GET", NULL, h_a, NULL, NULL), TL_EINVAL);
  assert_int_equal(tl__router_add(r, "GET", "/x", NULL, NULL, NULL), TL_EINVAL);
  tl__router_free(r);
}

static void test_percent_decoding_errors(void **state)
{
  char out[32];
  assert_int_equal(tl__pct_decode("a%41b", 5, out), 3);
  assert_string_equal(out, "aAb");
  assert_int_equal(tl__pct_decode("%e2%82%AC", 9, out), 3);
  assert_string_equal(out, "\xe2\x82\xac");
  assert_int_equal(tl__pct_decode("%00", 3, out), -2);
  assert_int_equal(tl__pct_decode("a%0", 3, out), -1);
  assert_int_equal(tl__pct_decode("a%", 2, out), -1);
  assert_int_equal(tl__pct_decode("%zz", 3, out), -1);
  assert_int_equal(tl__pct_decode("%4", 2, out), -1);
  /* only the first n bytes count */
  assert_int_equal(tl__pct_decode("ab%41", 3, out), -1);
  assert_int_equal(tl__pct_decode("", 0, out), 0);
  assert_string_equal(out, "");
}

static void test_long_and_odd_paths(void **state)
{
  tl__router *r = router();
  add(r, "GET", "/{a...}", 1);
  size_t n = TL__HTTP_MAX_PATH + 100;
  char *path = malloc(n + 1);
  path[0] = '/';
  memset(path + 1, 'x', n - 1);
  path[n] = '\0';
  assert_int_equal(resolve(r, "GET", path), -414);
  path[TL__HTTP_MAX_PATH] = '\0';
  assert_int_equal(resolve(r, "GET", path), 1);
  /* many segments, deeper than any pattern */
  for (size_t i = 1; i < TL__HTTP_MAX_PATH; i += 2)
    path[i] = '/';
  assert_int_equal(resolve(r, "GET", path), 1);
  free(path);
  assert_int_equal(resolve(r, "GET", "relative"), -400);
  assert_int_equal(resolve(r, "GET", ""), -400);
  assert_int_equal(resolve(r, "GET", "*"), -400);
  tl__router_free(r);

  /* a deep pattern and a path that shares only its prefix */
  r = router();
  char pat[2048] = "";
  for (int i = 0; i < TL__HTTP_MAX_SEGMENTS; i++) {
    if (i % 8 == 7)
      snprintf(pat + strlen(pat), sizeof pat - strlen(pat), "/{p%d}", i);
    else
      strcat(pat, "/a");
  }
  add(r, "GET", pat, 1);
  char deeper[sizeof pat + 8];
  snprintf(deeper, sizeof deeper, "%s/a", pat);
  assert_int_equal(tl__router_add(r, "GET", deeper, h_a, NULL, NULL), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "more than 128 segments"));
  tl__router_free(r);
}

static void test_query_and_ids(void **state)
{
  char trace[33];
  assert_true(tl__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", trace));
  assert_string_equal(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
  assert_false(tl__traceparent_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", trace));
  assert_false(tl__traceparent_parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", trace));
  assert_false(tl__traceparent_parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", trace));
  assert_false(tl__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", trace));
  assert_false(tl__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", trace));
  assert_false(tl__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", trace));
  assert_false(tl__traceparent_parse(NULL, trace));
  assert_true(tl__request_id_ok("abc-123_x.y:z"));
  assert_false(tl__request_id_ok(""));
  assert_false(tl__request_id_ok("has space"));
  assert_false(tl__request_id_ok("semi;colon"));
  char id[130];
  memset(id, 'a', 128);
  id[128] = '\0';
  assert_true(tl__request_id_ok(id));
  id[128] = 'a';
  id[129] = '\0';
  assert_false(tl__request_id_ok(id));

  assert_true(tl__accepts_gzip("gzip"));
  assert_true(tl__accepts_gzip("deflate, gzip;q=0.5, br"));
  assert_true(tl__accepts_gzip("*"));
  assert_true(tl__accepts_gzip("GZIP ; q=1"));
  assert_false(tl__accepts_gzip("gzip;q=0"));
  assert_false(tl__accepts_gzip("gzip; q=0.000, br"));
  assert_false(tl__accepts_gzip("*;q=0"));
  assert_false(tl__accepts_gzip("br, *;q=0.1, gzip;q=0"));
  assert_false(tl__accepts_gzip("identity"));
  assert_false(tl__accepts_gzip("gzipx"));
  assert_false(tl__accepts_gzip(""));
  assert_false(tl__accepts_gzip(NULL));
  assert_string_equal(tl_http_reason(404), "Not Found");
  assert_string_equal(tl_http_reason(413), "Content Too Large");
  assert_string_equal(tl_http_reason(799), "Unknown");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_literal_beats_parameter),
    cmocka_unit_test(test_parameters_extracted_and_decoded),
    cmocka_unit_test(test_catch_all),
    cmocka_unit_test(test_not_found_vs_method_not_allowed),
    cmocka_unit_test(test_method_wins_over_precedence),
    cmocka_unit_test(test_head_served_by_get),
    cmocka_unit_test(test_trailing_slash_is_strict),
    cmocka_unit_test(test_duplicate_route),
    cmocka_unit_test(test_invalid_patterns),
    cmocka_unit_test(test_percent_decoding_errors),
    cmocka_unit_test(test_long_and_odd_paths),
    cmocka_unit_test(test_query_and_ids),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
