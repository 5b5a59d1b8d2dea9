/* Shared benchmark helpers: clock, A/B alternation, table and BENCH lines. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_MAX_METRICS 16
#define BENCH_MAX_ROUNDS 1000

uint64_t bench_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool bench_quick(void)
{
  const char *q = getenv("BENCH_QUICK");
  return q != NULL && q[0] != '\0' && strcmp(q, "0") != 0;
}

long bench_size(long normal, long quick)
{
  return bench_quick() ? quick : normal;
}

int bench_rounds(int default_rounds)
{
  const char *r = getenv("BENCH_ROUNDS");
  if (r != NULL && r[0] != '\0') {
    char *end = NULL;
    errno = 0;
    long n = strtol(r, &end, 10);
    if (errno == 0 && end != r && *end == '\0' && n >= 1 && n <= BENCH_MAX_ROUNDS)
      return (int)n;
    fprintf(stderr, "bench: BENCH_ROUNDS: '%s' is not an integer in [1, %d]; ignored\n", r,
            BENCH_MAX_ROUNDS);
  }
  if (bench_quick())
    return 2;
  return default_rounds > 0 ? default_rounds : BENCH_DEFAULT_ROUNDS;
}

int bench_warmups(void)
{
  return 1;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(const double *v, int n)
{
  double *tmp = malloc((size_t)n * sizeof *tmp);
  double m;
  if (tmp == NULL)
    return v[0];
  memcpy(tmp, v, (size_t)n * sizeof *tmp);
  qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
  m = n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
  free(tmp);
  return m;
}

static void min_max(const double *v, int n, double *lo, double *hi)
{
  *lo = *hi = v[0];
  for (int i = 1; i < n; i++) {
    if (v[i] < *lo)
      *lo = v[i];
    if (v[i] > *hi)
      *hi = v[i];
  }
}

/* "ours over baseline" in the direction where > 1 means we did better. */
static double better_ratio(double ours, double baseline, bool lower_is_better)
{
  return lower_is_better ? baseline / ours : ours / baseline;
}

/* A figure for JSON and the table: whole numbers when large, four
 * significant digits otherwise. */
static void fmt_figure(char *buf, size_t n, double v)
{
  if (!isfinite(v))
    snprintf(buf, n, "null");
  else if (fabs(v) >= 1000)
    snprintf(buf, n, "%.0f", v);
  else
    snprintf(buf, n, "%.4g", v);
}

static void fmt_ratio(char *buf, size_t n, double v)
{
  if (!isfinite(v))
    snprintf(buf, n, "null");
  else
    snprintf(buf, n, "%.3g", v);
}

static void json_string(FILE *f, const char *s)
{
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    switch (*p) {
    case '"':
      fputs("\\\"", f);
      break;
    case '\\':
      fputs("\\\\", f);
      break;
    case '\n':
      fputs("\\n", f);
      break;
    case '\t':
      fputs("\\t", f);
      break;
    default:
      if (*p < 0x20)
        fprintf(f, "\\u%04x", *p);
      else
        fputc(*p, f);
    }
  }
  fputc('"', f);
}

static void print_header_once(void)
{
  static bool done;
  if (done)
    return;
  done = true;
  printf("%-6s %-24s %-26s %12s %12s %-10s %7s %15s %6s\n", "bench", "case", "unit", "ours",
         "baseline", "vs", "ratio", "round ratios", "rounds");
}

static void report(const bench_spec *spec, const bench_metric *m, const double *ours,
                   const double *base, int rounds, bench_result *result)
{
  double ratios[BENCH_MAX_ROUNDS] = {0};
  double om = bench_median(ours, rounds), bm = bench_median(base, rounds);
  double rlo, rhi, ratio = better_ratio(om, bm, m->lower_is_better);
  char unit[128], o[32], b[32], r[32], lo[32], hi[32], range[80];

  for (int i = 0; i < rounds; i++)
    ratios[i] = better_ratio(ours[i], base[i], m->lower_is_better);
  min_max(ratios, rounds, &rlo, &rhi);

  if (result != NULL)
    *result = (bench_result){om, bm, ratio};
  snprintf(unit, sizeof unit, "%s%s", m->unit, m->lower_is_better ? " (lower is better)" : "");
  fmt_figure(o, sizeof o, om);
  fmt_figure(b, sizeof b, bm);
  fmt_ratio(r, sizeof r, ratio);
  fmt_ratio(lo, sizeof lo, rlo);
  fmt_ratio(hi, sizeof hi, rhi);
  snprintf(range, sizeof range, "%s-%s", lo, hi);

  print_header_once();
  printf("%-6s %-24s %-26s %12s %12s %-10s %7s %15s %6d\n", spec->bench, m->name, unit, o, b,
         spec->baseline_name, r, range, rounds);

  fputs("BENCH {\"bench\":", stdout);
  json_string(stdout, spec->bench);
  fputs(",\"case\":", stdout);
  json_string(stdout, m->name);
  fputs(",\"unit\":", stdout);
  json_string(stdout, unit);
  printf(",\"ours\":%s,\"baseline\":%s,\"baseline_name\":", o, b);
  json_string(stdout, spec->baseline_name);
  printf(",\"ratio\":%s,\"rounds\":%d,\"min_ratio\":%s,\"max_ratio\":%s,\"conditions\":", r,
         rounds, lo, hi);
  json_string(stdout, spec->conditions);
  fputs("}\n", stdout);
  fflush(stdout);
}

static int run_side(const bench_spec *spec, bool ours, double *figures)
{
  int rc = ours ? spec->ours(spec->ours_ctx, figures) : spec->baseline(spec->baseline_ctx, figures);
  if (rc != 0) {
    fprintf(stderr, "bench %s: the %s run failed\n", spec->bench,
            ours ? "trellis" : spec->baseline_name);
    return -1;
  }
  for (int k = 0; k < spec->nmetrics; k++) {
    if (!isfinite(figures[k]) || figures[k] <= 0) {
      fprintf(stderr, "bench %s: %s: the %s run gave %g %s, not a positive figure\n",
              spec->bench, spec->metrics[k].name, ours ? "trellis" : spec->baseline_name,
              figures[k], spec->metrics[k].unit);
      return -1;
    }
  }
  return 0;
}

int bench_compare(const bench_spec *spec)
{
  int rounds = spec->rounds > 0 ? spec->rounds : bench_rounds(0);
  int warmups = spec->warmups > 0 ? spec->warmups : spec->warmups < 0 ? 0 : bench_warmups();
  int nm = spec->nmetrics;
  double *ours, *base, fo[BENCH_MAX_METRICS], fb[BENCH_MAX_METRICS];
  int rc = -1;

  if (nm < 1 || nm > BENCH_MAX_METRICS || spec->ours == NULL || spec->baseline == NULL) {
    fprintf(stderr, "bench %s: invalid spec (1 to %d metrics and two run functions)\n",
            spec->bench, BENCH_MAX_METRICS);
    return -1;
  }
  if (rounds > BENCH_MAX_ROUNDS)
    rounds = BENCH_MAX_ROUNDS;
  /* Column-major per metric: figures of metric k in round i at [k * rounds + i]. */
  ours = calloc((size_t)nm * (size_t)rounds, sizeof *ours);
  base = calloc((size_t)nm * (size_t)rounds, sizeof *base);
  if (ours == NULL || base == NULL) {
    fprintf(stderr, "bench %s: out of memory\n", spec->bench);
    goto out;
  }

  for (int i = 0; i < warmups; i++) {
    fprintf(stderr, "bench %s %s: warm-up %d/%d\n", spec->bench, spec->metrics[0].name, i + 1,
            warmups);
    if (run_side(spec, true, fo) != 0 || run_side(spec, false, fb) != 0)
      goto out;
  }
  for (int i = 0; i < rounds; i++) {
    if (run_side(spec, true, fo) != 0 || run_side(spec, false, fb) != 0)
      goto out;
    for (int k = 0; k < nm; k++) {
      ours[k * rounds + i] = fo[k];
      base[k * rounds + i] = fb[k];
    }
    fprintf(stderr, "bench %s %s: round %d/%d: %s %.4g, %s %.4g %s\n", spec->bench,
            spec->metrics[0].name, i + 1, rounds, "trellis", fo[0], spec->baseline_name, fb[0],
            spec->metrics[0].unit);
  }
  for (int k = 0; k < nm; k++)
    report(spec, &spec->metrics[k], &ours[k * rounds], &base[k * rounds], rounds,
           spec->results != NULL ? &spec->results[k] : NULL);
  rc = 0;
out:
  free(ours);
  free(base);
  return rc;
}

typedef struct figure_side {
  bench_figure_fn fn;
  void *ctx;
} figure_side;

static int run_figure(void *ctx, double *figures)
{
  const figure_side *side = ctx;
  figures[0] = side->fn(side->ctx);
  return figures[0] < 0 ? -1 : 0;
}

int bench_compare1(const char *bench, const char *case_name, const char *unit,
                   bool lower_is_better, const char *baseline_name, const char *conditions,
                   bench_figure_fn ours, void *ours_ctx, bench_figure_fn baseline,
                   void *baseline_ctx)
{
  figure_side o = {ours, ours_ctx}, b = {baseline, baseline_ctx};
  bench_metric m = {case_name, unit, lower_is_better};
  bench_spec spec = {
      .bench = bench,
      .baseline_name = baseline_name,
      .conditions = conditions,
      .metrics = &m,
      .nmetrics = 1,
      .ours = run_figure,
      .ours_ctx = &o,
      .baseline = run_figure,
      .baseline_ctx = &b,
  };
  if (ours == NULL || baseline == NULL) {
    fprintf(stderr, "bench %s: %s: two figure functions are needed\n", bench, case_name);
    return -1;
  }
  return bench_compare(&spec);
}

const char *bench_service_url(const char *key, char *buf, size_t size)
{
  const char *env = getenv(key);
  if (env && *env) {
    snprintf(buf, size, "%s", env);
    return buf;
  }
  const char *path = getenv("TRELLIS_SERVICES_ENV");
  FILE *f = fopen(path && *path ? path : "/tmp/trellis-services/services.env", "r");
  if (!f) return NULL;
  char line[1024];
  const char *found = NULL;
  size_t k = strlen(key);
  while (!found && fgets(line, sizeof line, f)) {
    if (strncmp(line, key, k) == 0 && line[k] == '=') {
      line[strcspn(line, "\r\n")] = '\0';
      snprintf(buf, size, "%s", line + k + 1);
      found = buf;
    }
  }
  fclose(f);
  return found;
}
