/* trellis: a metrics registry (counters, gauges, histograms with labels)
 * rendered in the Prometheus text exposition format 0.0.4. */
#ifndef TRELLIS_METRICS_H
#define TRELLIS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_metrics tl_metrics; /* a registry */
typedef struct tl_metric tl_metric;   /* a family: one name, one type */
typedef struct tl_series tl_series;   /* one set of label values */

/* A new, empty registry. Returns 0 or TL_ENOMEM. */
int tl_metrics_new(tl_metrics **out);
/* NULL-safe; does nothing for tl_metrics_default(). */
void tl_metrics_free(tl_metrics *reg);

/* The process-wide registry that modules register into by default and
 * that GET /metrics renders. Never NULL; lives until exit. */
tl_metrics *tl_metrics_default(void);

/* Register (or find) a family. `labels` is a comma-separated list of
 * label names ("method,route,status") or NULL for none. Registering the
 * same name again with the same type and labels returns the same family;
 * with another type or labels it is TL_EINVAL. Names and labels must match
 * the Prometheus grammar ([a-zA-Z_:][a-zA-Z0-9_:]*, labels without ':' and
 * not starting with "__"). The first help text is kept. Returns 0,
 * TL_EINVAL or TL_ENOMEM. `*out` lives as long as the registry. */
int tl_metrics_counter(tl_metrics *reg, const char *name, const char *help,
                       const char *labels, tl_metric **out);
int tl_metrics_gauge(tl_metrics *reg, const char *name, const char *help,
                     const char *labels, tl_metric **out);
/* `bounds` are the upper bounds, strictly increasing, without +Inf (added
 * for you); copied. NULL/0 gives the default latency buckets in seconds
 * (0.0005 ... 10). */
int tl_metrics_histogram(tl_metrics *reg, const char *name, const char *help,
                         const char *labels, const double *bounds,
                         size_t nbounds, tl_metric **out);

/* The series for these label values (one per label of the family, in
 * order; created on first use; values copied and escaped when rendered).
 * NULL only when the count is wrong or memory runs out. Lookups of an
 * existing series take a shared lock; updates are lock-free. Cache the
 * pointer on hot paths: it lives as long as the registry. */
tl_series *tl_metric_series(tl_metric *m, const char *const *values,
                            size_t nvalues);
#define TL_LABELS(...) \
  (const char *const[]){ __VA_ARGS__ }, \
  (sizeof((const char *const[]){ __VA_ARGS__ }) / sizeof(const char *))
/* The single series of a family without labels (NULL, with the error
 * set, for a family that has labels). */
tl_series *tl_metric_default(tl_metric *m);

/* Counter: add a non-negative amount (negative amounts are ignored), or
 * set a total kept elsewhere (>= 0, for collect hooks). Gauge: add any
 * amount, or set. Calls that do not fit the type (observe on a counter,
 * inc on a histogram) and calls on a NULL series do nothing. */
void tl_series_inc(tl_series *s);
void tl_series_add(tl_series *s, double v);
void tl_series_set(tl_series *s, double v);
/* Histogram: count one observation. */
void tl_series_observe(tl_series *s, double v);
/* Current value (counter, gauge) or observation count (histogram). */
double tl_series_value(const tl_series *s);

/* A hook run before each render (on the rendering thread, in
 * registration order, with no registry lock held), for gauges that are
 * read rather than pushed (pool sizes, queue depths, RSS). Returns 0 or
 * TL_ENOMEM. */
int tl_metrics_on_collect(tl_metrics *reg, void (*fn)(void *ctx), void *ctx);

/* Register the standard process metrics into `reg`, read from /proc/self
 * before each render: process_resident_memory_bytes, _virtual_memory_bytes,
 * _open_fds, _max_fds, _threads, _start_time_seconds, _cpu_seconds_total,
 * and trellis_build_info{version,commit} 1. Call once per registry (again
 * does nothing). Returns 0, TL_EINVAL (NULL registry, a name already taken
 * with another type) or TL_ENOMEM. Any thread. */
int tl_metrics_register_process(tl_metrics *reg);

/* Render every family, sorted by name, series in creation order, as
 * Prometheus text 0.0.4. `*out` is NUL-terminated; free with tl_free().
 * Returns 0 or TL_ENOMEM. Any thread. */
int tl_metrics_render(tl_metrics *reg, char **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
