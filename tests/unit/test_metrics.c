/* Unit tests for the metrics registry: exposition text, registration and
 * validation rules, and exact totals under concurrent updates. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trellis/trellis.h"

/* Render `reg` and check the length the call reported. Caller frees. */
static char *render(tl_metrics *reg)
{
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(tl_metrics_render(reg, &text, &len), 0);
  assert_non_null(text);
  assert_int_equal(len, strlen(text));
  return text;
}

/* The golden file, found through TRELLIS_SOURCE_DIR (set by ctest) or,
 * when the binary runs by hand, next to this source file. */
static char *read_golden(const char *name)
{
  char path[4096];
  const char *src = getenv("TRELLIS_SOURCE_DIR");
  if (src && *src) {
    snprintf(path, sizeof path, "%s/tests/unit/%s", src, name);
  } else {
    const char *slash = strrchr(__FILE__, '/');
    int dir = slash ? (int)(slash - __FILE__) : 1;
    snprintf(path, sizeof path, "%.*s/%s", dir, slash ? __FILE__ : ".", name);
  }
  FILE *f = fopen(path, "rb");
  if (!f)
    fail_msg("cannot open golden file %s", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)size + 1);
  assert_non_null(text);
  assert_int_equal(fread(text, 1, (size_t)size, f), (size_t)size);
  text[size] = '\0';
  fclose(f);
  return text;
}

static void test_golden_exposition(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);

  /* registered out of order: the output is sorted by name */
  tl_metric *temp, *ratio, *reqs, *jobs, *hits;
  assert_int_equal(tl_metrics_gauge(reg, "temperature_celsius",
                                    "Temperature of the machine room.", NULL,
                                    &temp), 0);
  assert_int_equal(tl_metrics_counter(reg, "http_requests_total",
                                      "Requests served, by method and path "
                                      "(C:\\tmp).\nSecond line.",
                                      "method,path", &reqs), 0);
  static const double bounds[] = { 0.005, 0.5, 1, 2.5 };
  assert_int_equal(tl_metrics_histogram(reg, "job_duration_seconds",
                                        "Time to run a job.", "queue", bounds,
                                        4, &jobs), 0);
  assert_int_equal(tl_metrics_gauge(reg, "queue_fill_ratio",
                                    "Fraction of the queue in use.", NULL,
                                    &ratio), 0);
  assert_int_equal(tl_metrics_counter(reg, "cache_hits_total",
                                      "Cache hits, by cache.", "cache", &hits),
                   0);

  tl_series *get = tl_metric_series(reqs, TL_LABELS("GET", "/a\"b\\c\nd"));
  assert_non_null(get);
  tl_series_inc(get);
  tl_series_inc(get);
  tl_series_add(get, 1);
  tl_series *post = tl_metric_series(reqs, TL_LABELS("POST", NULL));
  assert_non_null(post);
  tl_series_add(post, 2.5);
  tl_series_add(post, -1); /* ignored: counters only go up */

  tl_series *t = tl_metric_default(temp);
  tl_series_set(t, 21.5);
  tl_series_add(t, -33.25);
  tl_series_set(tl_metric_default(ratio), 1.0 / 3);

  tl_series *mail = tl_metric_series(jobs, TL_LABELS("mail"));
  tl_series_observe(mail, 0.25);
  tl_series_observe(mail, 1); /* exactly on a bound: le is inclusive */
  tl_series_observe(mail, 2);
  tl_series_observe(mail, 7); /* above the last bound: only +Inf */
  tl_series_observe(tl_metric_series(jobs, TL_LABELS("sms")), 0.001);

  assert_true(tl_series_value(get) == 3);
  assert_true(tl_series_value(post) == 2.5);
  assert_true(tl_series_value(t) == -11.75);
  assert_true(tl_series_value(mail) == 4);

  char *text = render(reg);
  char *golden = read_golden("metrics_golden.txt");
  assert_string_equal(text, golden);
  free(golden);
  tl_free(text);
  tl_metrics_free(reg);
}

static void test_sorted_by_name(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  const char *names[] = { "zeta", "alpha_total", "m:sub", "Beta", "alpha",
                          "_under", "m" };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    tl_metric *m;
    assert_int_equal(tl_metrics_gauge(reg, names[i], "h", NULL, &m), 0);
    tl_series_set(tl_metric_default(m), (double)i);
  }
  char *text = render(reg);
  /* byte order: uppercase before '_' before lowercase; ':' before letters */
  assert_string_equal(text,
                      "# HELP Beta h\n# TYPE Beta gauge\nBeta 3\n"
                      "# HELP _under h\n# TYPE _under gauge\n_under 5\n"
                      "# HELP alpha h\n# TYPE alpha gauge\nalpha 4\n"
                      "# HELP alpha_total h\n# TYPE alpha_total gauge\n"
                      "alpha_total 1\n"
                      "# HELP m h\n# TYPE m gauge\nm 6\n"
                      "# HELP m:sub h\n# TYPE m:sub gauge\nm:sub 2\n"
                      "# HELP zeta h\n# TYPE zeta gauge\nzeta 0\n");
  tl_free(text);
  tl_metrics_free(reg);
}

static void test_empty_registry_renders_empty_string(void **state)
{
  (void)state;
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  char *text = render(reg);
  assert_string_equal(text, "");
  tl_free(text);
  tl_metrics_free(reg);
  tl_metrics_free(NULL);
}

/* The text one gauge renders with value `v`. */
static void check_format(tl_metrics *reg, tl_series *s, double v,
                         const char *want)
{
  tl_series_set(s, v);
  char *text = render(reg);
  char line[128];
  snprintf(line, sizeof line, "# HELP g \n# TYPE g gauge\ng %s\n", want);
  assert_string_equal(text, line);
  tl_free(text);
}

static void test_value_format(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *g;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_gauge(reg, "g", NULL, NULL, &g), 0);
  tl_series *s = tl_metric_default(g);
  check_format(reg, s, 0, "0");
  check_format(reg, s, 3, "3");
  check_format(reg, s, -42, "-42");
  check_format(reg, s, 9007199254740993.0, "9007199254740992");
  check_format(reg, s, 0.1, "0.1");
  check_format(reg, s, -0.5, "-0.5");
  check_format(reg, s, 2.0 / 3, "0.6666666666666666");
  check_format(reg, s, 123456.789, "123456.789");
  check_format(reg, s, 1e-7, "1e-07");
  check_format(reg, s, 1e20, "1e+20");
  check_format(reg, s, 0.1 + 0.2, "0.30000000000000004");
  check_format(reg, s, INFINITY, "+Inf");
  check_format(reg, s, -INFINITY, "-Inf");
  check_format(reg, s, NAN, "NaN");
  tl_metrics_free(reg);
}

static void test_histogram_default_bounds(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *h;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_histogram(reg, "lat_seconds", "Latency.", NULL,
                                        NULL, 0, &h), 0);
  tl_series *s = tl_metric_default(h);
  assert_non_null(s);
  tl_series_observe(s, 0.001);  /* on the second bound */
  tl_series_observe(s, 0.3);
  tl_series_observe(s, 10);     /* on the last bound */
  tl_series_observe(s, 11);
  tl_series_inc(s);             /* not for histograms: ignored */
  tl_series_add(s, 5);
  tl_series_set(s, 5);
  assert_true(tl_series_value(s) == 4);
  char *text = render(reg);
  assert_string_equal(text,
                      "# HELP lat_seconds Latency.\n"
                      "# TYPE lat_seconds histogram\n"
                      "lat_seconds_bucket{le=\"0.0005\"} 0\n"
                      "lat_seconds_bucket{le=\"0.001\"} 1\n"
                      "lat_seconds_bucket{le=\"0.0025\"} 1\n"
                      "lat_seconds_bucket{le=\"0.005\"} 1\n"
                      "lat_seconds_bucket{le=\"0.01\"} 1\n"
                      "lat_seconds_bucket{le=\"0.025\"} 1\n"
                      "lat_seconds_bucket{le=\"0.05\"} 1\n"
                      "lat_seconds_bucket{le=\"0.1\"} 1\n"
                      "lat_seconds_bucket{le=\"0.25\"} 1\n"
                      "lat_seconds_bucket{le=\"0.5\"} 2\n"
                      "lat_seconds_bucket{le=\"1\"} 2\n"
                      "lat_seconds_bucket{le=\"2.5\"} 2\n"
                      "lat_seconds_bucket{le=\"5\"} 2\n"
                      "lat_seconds_bucket{le=\"10\"} 3\n"
                      "lat_seconds_bucket{le=\"+Inf\"} 4\n"
                      "lat_seconds_sum 21.301000000000002\n"
                      "lat_seconds_count 4\n");
  tl_free(text);
  tl_metrics_free(reg);
}

static void test_reregistration(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *a, *b;
  assert_int_equal(tl_metrics_new(&reg), 0);

  assert_int_equal(tl_metrics_counter(reg, "x_total", "X.", "a,b", &a), 0);
  assert_int_equal(tl_metrics_counter(reg, "x_total", "Other help.", "a, b",
                                      &b), 0);
  assert_ptr_equal(a, b);

  b = a;
  assert_int_equal(tl_metrics_gauge(reg, "x_total", "X.", "a,b", &b),
                   TL_EINVAL);
  assert_null(b);
  assert_string_equal(tl_error_last(),
                      "metric 'x_total': already registered as a counter, "
                      "not a gauge");
  assert_int_equal(tl_metrics_histogram(reg, "x_total", "X.", "a,b", NULL, 0,
                                        &b), TL_EINVAL);
  assert_int_equal(tl_metrics_counter(reg, "x_total", "X.", "a", &b),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "metric 'x_total': already registered with labels "
                      "'a,b', not 'a'");
  assert_int_equal(tl_metrics_counter(reg, "x_total", "X.", "b,a", &b),
                   TL_EINVAL);
  assert_int_equal(tl_metrics_counter(reg, "x_total", "X.", NULL, &b),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "metric 'x_total': already registered with labels "
                      "'a,b', not ''");

  /* no labels: NULL and "" are the same */
  assert_int_equal(tl_metrics_gauge(reg, "g", "G.", NULL, &a), 0);
  assert_int_equal(tl_metrics_gauge(reg, "g", "G.", "", &b), 0);
  assert_ptr_equal(a, b);

  static const double b12[] = { 1, 2 }, b13[] = { 1, 3 }, b123[] = { 1, 2, 3 };
  assert_int_equal(tl_metrics_histogram(reg, "h", "H.", "q", b12, 2, &a), 0);
  assert_int_equal(tl_metrics_histogram(reg, "h", "H.", "q", b12, 2, &b), 0);
  assert_ptr_equal(a, b);
  assert_int_equal(tl_metrics_histogram(reg, "h", "H.", "q", b13, 2, &b),
                   TL_EINVAL);
  assert_string_equal(tl_error_last(),
                      "metric 'h': already registered with other bucket "
                      "bounds");
  assert_int_equal(tl_metrics_histogram(reg, "h", "H.", "q", b123, 3, &b),
                   TL_EINVAL);
  assert_int_equal(tl_metrics_histogram(reg, "h", "H.", "q", NULL, 0, &b),
                   TL_EINVAL);

  /* the default bounds, given or not, are the same bounds */
  static const double dflt[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                 0.025,  0.05,  0.1,    0.25,  0.5,
                                 1,      2.5,   5,      10 };
  assert_int_equal(tl_metrics_histogram(reg, "d", "D.", NULL, NULL, 0, &a), 0);
  assert_int_equal(tl_metrics_histogram(reg, "d", "D.", NULL, dflt, 14, &b),
                   0);
  assert_ptr_equal(a, b);

  /* the first help text stays */
  char *text = render(reg);
  assert_non_null(strstr(text, "# HELP x_total X.\n"));
  assert_null(strstr(text, "Other help."));
  tl_free(text);
  tl_metrics_free(reg);
}

/* Registering `name` with `labels` fails with TL_EINVAL and `message`. */
static void expect_invalid(tl_metrics *reg, int kind, const char *name,
                           const char *labels, const double *bounds,
                           size_t nbounds, const char *message)
{
  tl_metric *m = (tl_metric *)(uintptr_t)1; /* must come back NULL */
  int rc;
  if (kind == 0)
    rc = tl_metrics_counter(reg, name, "help", labels, &m);
  else if (kind == 1)
    rc = tl_metrics_gauge(reg, name, "help", labels, &m);
  else
    rc = tl_metrics_histogram(reg, name, "help", labels, bounds, nbounds, &m);
  assert_int_equal(rc, TL_EINVAL);
  assert_null(m);
  assert_string_equal(tl_error_last(), message);
}

static void test_validation(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *m;
  assert_int_equal(tl_metrics_new(&reg), 0);

  expect_invalid(reg, 0, "1abc", NULL, NULL, 0,
                 "metric '1abc': invalid name "
                 "(expected [a-zA-Z_:][a-zA-Z0-9_:]*)");
  expect_invalid(reg, 1, "", NULL, NULL, 0,
                 "metric '': invalid name (expected [a-zA-Z_:][a-zA-Z0-9_:]*)");
  expect_invalid(reg, 1, "http-requests", NULL, NULL, 0,
                 "metric 'http-requests': invalid name "
                 "(expected [a-zA-Z_:][a-zA-Z0-9_:]*)");
  expect_invalid(reg, 0, "ok_total", "a:b", NULL, 0,
                 "metric 'ok_total': invalid label name 'a:b' "
                 "(expected [a-zA-Z_][a-zA-Z0-9_]*)");
  expect_invalid(reg, 0, "ok_total", "9a", NULL, 0,
                 "metric 'ok_total': invalid label name '9a' "
                 "(expected [a-zA-Z_][a-zA-Z0-9_]*)");
  expect_invalid(reg, 0, "ok_total", "a,,b", NULL, 0,
                 "metric 'ok_total': invalid label name '' "
                 "(expected [a-zA-Z_][a-zA-Z0-9_]*)");
  expect_invalid(reg, 0, "ok_total", "a,__name", NULL, 0,
                 "metric 'ok_total': label name '__name' is reserved "
                 "(starts with \"__\")");
  expect_invalid(reg, 1, "ok", "a,b,a", NULL, 0,
                 "metric 'ok': duplicate label name 'a'");
  expect_invalid(reg, 2, "h", "route,le", NULL, 0,
                 "metric 'h': label name 'le' is reserved for histogram "
                 "buckets");
  static const double same[] = { 1, 1 }, down[] = { 2, 1 },
                      inf[] = { 1, INFINITY }, nan[] = { NAN };
  expect_invalid(reg, 2, "h", NULL, same, 2,
                 "metric 'h': bucket bounds must be strictly increasing "
                 "(bound 1 is 1 after 1)");
  expect_invalid(reg, 2, "h", NULL, down, 2,
                 "metric 'h': bucket bounds must be strictly increasing "
                 "(bound 1 is 1 after 2)");
  expect_invalid(reg, 2, "h", NULL, inf, 2,
                 "metric 'h': bucket bound 1 is not finite (inf)");
  m = NULL;
  assert_int_equal(tl_metrics_histogram(reg, "h", "h", NULL, nan, 1, &m),
                   TL_EINVAL);
  assert_null(m);

  assert_int_equal(tl_metrics_counter(NULL, "x", "h", NULL, &m), TL_EINVAL);
  assert_int_equal(tl_metrics_counter(reg, "x", "h", NULL, NULL), TL_EINVAL);
  assert_int_equal(tl_metrics_counter(reg, NULL, "h", NULL, &m), TL_EINVAL);
  assert_int_equal(tl_metrics_on_collect(reg, NULL, NULL), TL_EINVAL);
  assert_int_equal(tl_metrics_render(reg, NULL, NULL), TL_EINVAL);

  /* nothing above was registered */
  char *text = render(reg);
  assert_string_equal(text, "");
  tl_free(text);

  /* what is allowed: ':' in names, a single leading '_' in labels, 'le'
   * outside histograms, spaces around label names */
  assert_int_equal(tl_metrics_counter(reg, "ns:sub_total", "h",
                                      " _a , le,b9 ", &m), 0);
  tl_series_inc(tl_metric_series(m, TL_LABELS("1", "2", "3")));
  assert_int_equal(tl_metrics_histogram(reg, "_h:x", NULL, "lf", NULL, 0, &m),
                   0);
  text = render(reg);
  assert_non_null(strstr(text, "ns:sub_total{_a=\"1\",le=\"2\",b9=\"3\"} 1\n"));
  assert_non_null(strstr(text, "# HELP _h:x \n# TYPE _h:x histogram\n"));
  tl_free(text);
  tl_metrics_free(reg);
}

static void test_series_lookup(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *m, *plain;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_counter(reg, "req_total", "h", "method,code",
                                      &m), 0);

  assert_null(tl_metric_series(m, TL_LABELS("GET")));
  assert_string_equal(tl_error_last(),
                      "metric 'req_total': expected 2 label values, got 1");
  assert_null(tl_metric_series(m, TL_LABELS("GET", "200", "x")));
  assert_string_equal(tl_error_last(),
                      "metric 'req_total': expected 2 label values, got 3");
  assert_null(tl_metric_series(m, NULL, 0));
  assert_null(tl_metric_default(m));
  assert_null(tl_metric_series(NULL, NULL, 0));

  tl_series *a = tl_metric_series(m, TL_LABELS("GET", "200"));
  assert_non_null(a);
  assert_ptr_equal(tl_metric_series(m, TL_LABELS("GET", "200")), a);
  /* a different split of the same characters is another series */
  tl_series *b = tl_metric_series(m, TL_LABELS("GET2", "00"));
  assert_non_null(b);
  assert_ptr_not_equal(a, b);
  /* NULL is "" */
  tl_series *c = tl_metric_series(m, TL_LABELS(NULL, "500"));
  assert_ptr_equal(tl_metric_series(m, TL_LABELS("", "500")), c);
  /* values are copied */
  char buf[8] = "PUT";
  tl_series *d = tl_metric_series(m, TL_LABELS(buf, "201"));
  strcpy(buf, "XXX");
  assert_ptr_equal(tl_metric_series(m, TL_LABELS("PUT", "201")), d);

  /* enough series to grow the lookup table several times */
  for (int i = 0; i < 1000; i++) {
    char code[16];
    snprintf(code, sizeof code, "%d", i);
    tl_series_inc(tl_metric_series(m, TL_LABELS("LOOP", code)));
  }
  for (int i = 0; i < 1000; i += 37) {
    char code[16];
    snprintf(code, sizeof code, "%d", i);
    assert_true(tl_series_value(tl_metric_series(m, TL_LABELS("LOOP", code)))
                == 1);
  }
  assert_ptr_equal(tl_metric_series(m, TL_LABELS("GET", "200")), a);

  assert_int_equal(tl_metrics_gauge(reg, "plain", "h", NULL, &plain), 0);
  assert_non_null(tl_metric_default(plain));
  assert_ptr_equal(tl_metric_series(plain, NULL, 0), tl_metric_default(plain));
  assert_null(tl_metric_series(plain, TL_LABELS("x")));

  /* NULL series are ignored by the updates */
  tl_series_inc(NULL);
  tl_series_add(NULL, 1);
  tl_series_set(NULL, 1);
  tl_series_observe(NULL, 1);
  assert_true(tl_series_value(NULL) == 0);

  /* creation order, not value order */
  char *text = render(reg);
  const char *p1 = strstr(text, "req_total{method=\"GET\",code=\"200\"} 0\n");
  const char *p2 = strstr(text, "req_total{method=\"GET2\",code=\"00\"} 0\n");
  const char *p3 = strstr(text, "req_total{method=\"\",code=\"500\"} 0\n");
  const char *p4 = strstr(text, "req_total{method=\"PUT\",code=\"201\"} 0\n");
  const char *p5 = strstr(text, "req_total{method=\"LOOP\",code=\"0\"} 1\n");
  const char *p6 = strstr(text, "req_total{method=\"LOOP\",code=\"999\"} 1\n");
  assert_true(p1 && p2 && p3 && p4 && p5 && p6);
  assert_true(p1 < p2 && p2 < p3 && p3 < p4 && p4 < p5 && p5 < p6);
  tl_free(text);
  tl_metrics_free(reg);
}

static void test_counter_rules(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *m;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_counter(reg, "c_total", "h", NULL, &m), 0);
  tl_series *s = tl_metric_default(m);

  tl_series_add(s, 5);
  tl_series_add(s, -3);
  tl_series_add(s, NAN);
  tl_series_add(s, -INFINITY);
  tl_series_add(s, -0.0);
  assert_true(tl_series_value(s) == 5);
  tl_series_inc(s);
  tl_series_add(s, 0.25);
  assert_true(tl_series_value(s) == 6.25);
  tl_series_add(s, 1e10); /* past the whole-number fast path */
  assert_true(tl_series_value(s) == 10000000006.25);
  tl_series_observe(s, 1); /* not a histogram: ignored */
  assert_true(tl_series_value(s) == 10000000006.25);

  /* set mirrors a total kept elsewhere; later increments add to it */
  tl_series_set(s, 10);
  tl_series_inc(s);
  assert_true(tl_series_value(s) == 11);
  tl_series_set(s, -1);
  tl_series_set(s, NAN);
  assert_true(tl_series_value(s) == 11);

  char *text = render(reg);
  assert_string_equal(text, "# HELP c_total h\n# TYPE c_total counter\n"
                            "c_total 11\n");
  tl_free(text);

  /* gauges go both ways */
  tl_metric *g;
  assert_int_equal(tl_metrics_gauge(reg, "g", "h", NULL, &g), 0);
  s = tl_metric_default(g);
  tl_series_inc(s);
  tl_series_add(s, -3.5);
  assert_true(tl_series_value(s) == -2.5);
  tl_metrics_free(reg);
}

struct hook_log {
  int calls[8];
  int n;
  tl_metrics *reg;
  tl_metric *gauge;
};

static void hook_one(void *ctx)
{
  struct hook_log *log = ctx;
  if (log->n < 8)
    log->calls[log->n++] = 1;
  tl_series_set(tl_metric_default(log->gauge), 42);
}

/* Registers a family from inside the hook: hooks run without the lock. */
static void hook_two(void *ctx)
{
  struct hook_log *log = ctx;
  if (log->n < 8)
    log->calls[log->n++] = 2;
  tl_metric *m;
  assert_int_equal(tl_metrics_counter(log->reg, "from_hook_total", "h", NULL,
                                      &m), 0);
}

static void test_collect_hooks(void **state)
{
  (void)state;
  struct hook_log log = { .n = 0 };
  assert_int_equal(tl_metrics_new(&log.reg), 0);
  assert_int_equal(tl_metrics_gauge(log.reg, "pool_size", "h", NULL,
                                    &log.gauge), 0);
  assert_int_equal(tl_metrics_on_collect(log.reg, hook_one, &log), 0);
  assert_int_equal(tl_metrics_on_collect(log.reg, hook_two, &log), 0);
  assert_int_equal(log.n, 0);

  char *text = render(log.reg);
  assert_string_equal(text,
                      "# HELP from_hook_total h\n"
                      "# TYPE from_hook_total counter\n"
                      "from_hook_total 0\n"
                      "# HELP pool_size h\n# TYPE pool_size gauge\n"
                      "pool_size 42\n");
  tl_free(text);
  text = render(log.reg);
  tl_free(text);
  assert_int_equal(log.n, 4);
  assert_int_equal(log.calls[0], 1);
  assert_int_equal(log.calls[1], 2);
  assert_int_equal(log.calls[2], 1);
  assert_int_equal(log.calls[3], 2);
  tl_metrics_free(log.reg);
}

static void test_default_registry(void **state)
{
  (void)state;
  tl_metrics *reg = tl_metrics_default();
  assert_non_null(reg);
  assert_ptr_equal(tl_metrics_default(), reg);
  tl_metric *m;
  assert_int_equal(tl_metrics_counter(reg, "test_default_total", "h", NULL,
                                      &m), 0);
  tl_series_inc(tl_metric_default(m));
  tl_metrics_free(reg); /* the process-wide registry is never freed */
  assert_ptr_equal(tl_metrics_default(), reg);
  tl_series_inc(tl_metric_default(m));
  char *text = render(tl_metrics_default());
  assert_non_null(strstr(text, "\ntest_default_total 2\n"));
  tl_free(text);
}

/* ---- concurrency ---- */

#define THREADS 8
#define ITERS 100000
#define SHARED_KEYS 100
#define OWN_KEYS 50

struct worker {
  int id;
  tl_metric *counter, *gauge, *hist;
};

static void *count_worker(void *arg)
{
  struct worker *w = arg;
  tl_series *shared = tl_metric_series(w->counter, TL_LABELS("shared"));
  tl_series *g = tl_metric_default(w->gauge);
  for (int i = 0; i < ITERS; i++) {
    /* half through the cached pointer, half through a fresh lookup; half
     * with inc, half with add(1), which take different paths */
    if (i % 2)
      tl_series_inc(shared);
    else
      tl_series_add(tl_metric_series(w->counter, TL_LABELS("shared")), 1);
    /* the same new series from every thread at once */
    char key[32];
    snprintf(key, sizeof key, "k%d", i % SHARED_KEYS);
    tl_series_inc(tl_metric_series(w->counter, TL_LABELS(key)));
    /* series only this thread creates */
    snprintf(key, sizeof key, "own-%d-%d", w->id, i % OWN_KEYS);
    tl_series_add(tl_metric_series(w->counter, TL_LABELS(key)), 0.5);
    tl_series_inc(g);
    if (i % 2)
      tl_series_add(g, -1.5);
  }
  return NULL;
}

static void *observe_worker(void *arg)
{
  struct worker *w = arg;
  tl_series *s = tl_metric_default(w->hist);
  for (int i = 0; i < ITERS; i++)
    tl_series_observe(s, (double)(i % 5));
  return NULL;
}

struct renderer {
  tl_metrics *reg;
  atomic_int stop;
  int renders;
};

static void *render_loop(void *arg)
{
  struct renderer *r = arg;
  while (!r->stop) {
    char *text = NULL;
    if (tl_metrics_render(r->reg, &text, NULL) != 0 || !text)
      return (void *)1;
    size_t len = strlen(text);
    if (len && text[len - 1] != '\n') {
      tl_free(text);
      return (void *)1;
    }
    tl_free(text);
    r->renders++;
  }
  return NULL;
}

static void test_concurrent_counters(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *c, *g;
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_counter(reg, "ops_total", "h", "key", &c), 0);
  assert_int_equal(tl_metrics_gauge(reg, "level", "h", NULL, &g), 0);

  struct renderer r = { .reg = reg };
  pthread_t rt, th[THREADS];
  struct worker w[THREADS];
  assert_int_equal(pthread_create(&rt, NULL, render_loop, &r), 0);
  for (int i = 0; i < THREADS; i++) {
    w[i] = (struct worker){ .id = i, .counter = c, .gauge = g };
    assert_int_equal(pthread_create(&th[i], NULL, count_worker, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  r.stop = 1;
  void *rrc;
  assert_int_equal(pthread_join(rt, &rrc), 0);
  assert_null(rrc);

  assert_true(tl_series_value(tl_metric_series(c, TL_LABELS("shared"))) ==
              THREADS * ITERS);
  for (int k = 0; k < SHARED_KEYS; k++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", k);
    assert_true(tl_series_value(tl_metric_series(c, TL_LABELS(key))) ==
                THREADS * ITERS / SHARED_KEYS);
  }
  for (int t = 0; t < THREADS; t++)
    for (int k = 0; k < OWN_KEYS; k++) {
      char key[32];
      snprintf(key, sizeof key, "own-%d-%d", t, k);
      assert_true(tl_series_value(tl_metric_series(c, TL_LABELS(key))) ==
                  0.5 * ITERS / OWN_KEYS);
    }
  /* +1 per iteration, -1.5 every other one */
  assert_true(tl_series_value(tl_metric_default(g)) ==
              THREADS * (ITERS - 1.5 * (ITERS / 2)));

  /* every series exists exactly once in the output */
  char *text = render(reg);
  size_t lines = 0;
  for (const char *p = text; (p = strstr(p, "\nops_total{")); p++)
    lines++;
  assert_int_equal(lines, 1 + SHARED_KEYS + THREADS * OWN_KEYS);
  assert_non_null(strstr(text, "\nops_total{key=\"shared\"} 800000\n"));
  assert_non_null(strstr(text, "\nops_total{key=\"k99\"} 8000\n"));
  assert_non_null(strstr(text, "\nops_total{key=\"own-7-49\"} 1000\n"));
  assert_non_null(strstr(text, "\nlevel 200000\n"));
  tl_free(text);
  tl_metrics_free(reg);
}

static void test_concurrent_histogram(void **state)
{
  (void)state;
  tl_metrics *reg;
  tl_metric *h;
  static const double bounds[] = { 1, 2, 3 };
  assert_int_equal(tl_metrics_new(&reg), 0);
  assert_int_equal(tl_metrics_histogram(reg, "size", "h", NULL, bounds, 3, &h),
                   0);
  pthread_t th[THREADS];
  struct worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (struct worker){ .id = i, .hist = h };
    assert_int_equal(pthread_create(&th[i], NULL, observe_worker, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);

  assert_true(tl_series_value(tl_metric_default(h)) == THREADS * ITERS);
  /* per thread: 0 and 1 land in le=1, 2 in le=2, 3 in le=3, 4 in +Inf, each
   * value 20000 times; the sum is 8 * 20000 * (0+1+2+3+4) */
  char *text = render(reg);
  assert_string_equal(text,
                      "# HELP size h\n# TYPE size histogram\n"
                      "size_bucket{le=\"1\"} 320000\n"
                      "size_bucket{le=\"2\"} 480000\n"
                      "size_bucket{le=\"3\"} 640000\n"
                      "size_bucket{le=\"+Inf\"} 800000\n"
                      "size_sum 1600000\n"
                      "size_count 800000\n");
  tl_free(text);
  tl_metrics_free(reg);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_golden_exposition),
    cmocka_unit_test(test_sorted_by_name),
    cmocka_unit_test(test_empty_registry_renders_empty_string),
    cmocka_unit_test(test_value_format),
    cmocka_unit_test(test_histogram_default_bounds),
    cmocka_unit_test(test_reregistration),
    cmocka_unit_test(test_validation),
    cmocka_unit_test(test_series_lookup),
    cmocka_unit_test(test_counter_rules),
    cmocka_unit_test(test_collect_hooks),
    cmocka_unit_test(test_default_registry),
    cmocka_unit_test(test_concurrent_counters),
    cmocka_unit_test(test_concurrent_histogram),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
