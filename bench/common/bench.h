/* Shared helpers for the benchmark programs in bench/<module>/.
 *
 * A benchmark does the same work two ways, through trellis ("ours") and with
 * a baseline measured in the same run ("baseline": the raw client library,
 * plain SQL, nginx), alternating them A B A B for a number of rounds after a
 * warm-up, and reports the median of each, the ratio of the medians and the
 * spread of the per-round ratios.
 *
 * Ratio convention: a ratio above 1 always means trellis did better.
 *  - higher is better (ops/s, req/s, MB/s): ratio = ours / baseline;
 *  - lower is better (ns/op, latency):       ratio = baseline / ours, and the
 *    printed unit says so: "us p99 (lower is better)".
 * The reported "ratio" is the ratio of the two medians; "min_ratio" and
 * "max_ratio" are the extremes of the per-round ratios, so noise shows.
 *
 * Output, on stdout: one human table row per figure, and one machine line
 *   BENCH {"bench":..,"case":..,"unit":..,"ours":..,"baseline":..,
 *          "baseline_name":..,"ratio":..,"rounds":..,"min_ratio":..,
 *          "max_ratio":..,"conditions":..}
 * that bench/run collects into bench/results/latest.jsonl. Progress goes
 * to stderr.
 *
 * Environment: BENCH_QUICK=1 makes a smoke run (1 warm-up, 2 rounds; the
 * program should also shrink its sizes, see bench_quick()); BENCH_ROUNDS=N
 * sets the number of measured rounds.
 *
 * Not thread-safe: call from the benchmark's main thread. */
#ifndef TRELLIS_BENCH_H
#define TRELLIS_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The default number of measured rounds (BENCHMARKS asks for at least 5). */
#define BENCH_DEFAULT_ROUNDS 5

/* Monotonic clock (CLOCK_MONOTONIC) in nanoseconds. */
uint64_t bench_now_ns(void);

/* True when BENCH_QUICK is set to something other than "" or "0". */
bool bench_quick(void);

/* Pick a size: `normal`, or `quick` under BENCH_QUICK=1. */
long bench_size(long normal, long quick);

/* Measured rounds: BENCH_ROUNDS if set (>= 1), else 2 under BENCH_QUICK,
 * else `default_rounds` (BENCH_DEFAULT_ROUNDS when 0). */
int bench_rounds(int default_rounds);

/* Warm-up rounds (both sides run once, results dropped): 1. */
int bench_warmups(void);

/* One figure measured per run. */
typedef struct bench_metric {
  const char *name;     /* the case, e.g. "pg_select1", "health_live_p99" */
  const char *unit;     /* e.g. "ops/s", "req/s", "us p99" */
  bool lower_is_better; /* latency, ns/op: ratio = baseline / ours */
} bench_metric;

/* Run one side once and write one figure per metric into `figures`
 * (in the order of bench_spec.metrics). Return 0, or -1 on failure after
 * printing why on stderr: the comparison then stops. */
typedef int (*bench_run_fn)(void *ctx, double *figures);

/* The figures of one metric as reported: the two medians and their ratio
 * (> 1: trellis did better). */
typedef struct bench_result {
  double ours;
  double baseline;
  double ratio;
} bench_result;

/* A comparison: the same metrics measured by two functions. Strings are
 * borrowed for the duration of bench_compare(). */
typedef struct bench_spec {
  const char *bench;         /* module: "http", "db", "mq", ... */
  const char *baseline_name; /* "nginx", "libpq", ... */
  const char *conditions;    /* same guarantees on both sides, in words */
  const bench_metric *metrics;
  int nmetrics;              /* 1 to 16 */
  bench_run_fn ours;
  void *ours_ctx;
  bench_run_fn baseline;
  void *baseline_ctx;
  int rounds;                /* 0: bench_rounds(0) */
  int warmups;               /* 0: bench_warmups(); < 0: none */
  bench_result *results;     /* NULL, or nmetrics results, written on success */
} bench_spec;

/* Alternate ours and baseline (A B A B ...) for the warm-up and the
 * measured rounds, then print one table row and one BENCH line per metric.
 * Returns 0, or -1 when a run failed or a figure was not a positive
 * finite number (nothing is printed for that comparison then). */
int bench_compare(const bench_spec *spec);

/* The single-figure form: each function returns the figure of one run
 * (e.g. ops/s), or a negative number on failure. */
typedef double (*bench_figure_fn)(void *ctx);
int bench_compare1(const char *bench, const char *case_name, const char *unit,
                   bool lower_is_better, const char *baseline_name,
                   const char *conditions, bench_figure_fn ours, void *ours_ctx,
                   bench_figure_fn baseline, void *baseline_ctx);

/* Median of `n` values (n >= 1); `v` is not modified. */
double bench_median(const double *v, int n);

/* The URL scripts/services wrote for `key` ("TRELLIS_TEST_REDIS_URL"):
 * from the environment, else from $TRELLIS_SERVICES_ENV (default
 * /tmp/trellis-services/services.env), copied into `buf`. NULL when
 * neither has it (the caller skips its cases, saying so on stderr). */
const char *bench_service_url(const char *key, char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif
