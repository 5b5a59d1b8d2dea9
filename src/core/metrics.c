/* trellis: the metrics registry and its Prometheus text rendering.
 *
 * Updates never take a lock: values are C11 atomics (doubles kept as their
 * bit patterns, added with a CAS loop). Finding a series by its label values
 * takes the family's read lock; only creating one takes the write lock.
 * Registering a family or a hook, and rendering, take the registry mutex. */
#include "trellis/metrics.h"

#include "trellis/error.h"

#include "core_int.h"

#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

static const char *const kind_names[] = { "counter", "gauge", "histogram" };

static const double default_bounds[] = {
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
  0.1,    0.25,  0.5,    1,     2.5,  5,     10,
};

/* Series are padded to a cache line so that two hot series updated from
 * different threads do not bounce the same line between cores. */
#define SERIES_ALIGN 64

struct tl_series {
  /* Counter and gauge: the value's double bits. Histogram: the sum's. */
  _Atomic uint64_t bits;
  /* Counter: whole increments kept apart, so that tl_series_inc is one
   * fetch-add instead of a CAS loop; the value is bits + n.
   * Histogram: the observation count. */
  _Atomic uint64_t n;
  const tl_metric *family;
  tl_series *hnext;  /* hash chain */
  tl_series *next;   /* creation order, for rendering */
  uint64_t hash;
  char **values;     /* nlabels strings in one allocation */
  _Atomic uint64_t buckets[]; /* histogram: nbounds + 1, not cumulative */
};

struct tl_metric {
  char *name;
  char *help;
  enum metric_kind kind;
  size_t nlabels;
  char **labels;     /* nlabels names in one allocation */
  double *bounds;    /* histogram only */
  size_t nbounds;
  tl_series *dflt;   /* the series of a family without labels */

  pthread_rwlock_t lock; /* guards everything below */
  tl_series **table;
  size_t table_size; /* a power of two, or 0 before the first series */
  size_t nseries;
  tl_series *first, *last;
};

struct hook {
  void (*fn)(void *ctx);
  void *ctx;
  struct hook *next;
};

struct tl_metrics {
  pthread_mutex_t mu; /* guards everything below */
  tl_metric **families; /* sorted by name */
  size_t nfamilies, cap;
  struct hook *hooks, *hooks_tail;
  size_t nhooks;
};

/* ---- doubles in atomics ---- */

static uint64_t d2u(double d)
{
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double u2d(uint64_t u)
{
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
  uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      p, &old, d2u(u2d(old) + v), memory_order_relaxed, memory_order_relaxed)) {
  }
}

/* ---- validation ---- */

static bool is_name_start(char c, bool colon)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         (colon && c == ':');
}

static bool is_name_char(char c, bool colon)
{
  return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Metric names allow ':' (reserved for recording rules), label names not. */
static bool valid_name(const char *s, bool colon)
{
  if (!is_name_start(s[0], colon))
    return false;
  for (const char *p = s + 1; *p; p++)
    if (!is_name_char(*p, colon))
      return false;
  return true;
}

/* Split "a, b,c" into a fresh array of validated names; *out is NULL when
 * there are none. The array and its strings are one allocation. */
static int parse_labels(const char *name, const char *labels,
                        enum metric_kind kind, char ***out, size_t *count)
{
  *out = NULL;
  *count = 0;
  if (!labels || !*labels)
    return 0;

  size_t n = 1, len = strlen(labels);
  for (const char *p = labels; *p; p++)
    n += *p == ',';
  char **arr = malloc(n * sizeof *arr + len + 1);
  if (!arr)
    return tl_error_set(TL_ENOMEM, "metric '%s': out of memory", name);
  char *text = (char *)(arr + n);
  memcpy(text, labels, len + 1);

  char *p = text;
  for (size_t i = 0; i < n; i++) {
    char *end = strchr(p, ',');
    char *next = end ? end + 1 : p + strlen(p);
    if (!end)
      end = p + strlen(p);
    while (p < end && *p == ' ')
      p++;
    while (end > p && end[-1] == ' ')
      end--;
    *end = '\0';
    arr[i] = p;
    p = next;

    int rc = 0;
    if (!valid_name(arr[i], false))
      rc = tl_error_set(TL_EINVAL,
                        "metric '%s': invalid label name '%s' "
                        "(expected [a-zA-Z_][a-zA-Z0-9_]*)", name, arr[i]);
    else if (arr[i][0] == '_' && arr[i][1] == '_')
      rc = tl_error_set(TL_EINVAL,
                        "metric '%s': label name '%s' is reserved "
                        "(starts with \"__\")", name, arr[i]);
    else if (kind == KIND_HISTOGRAM && strcmp(arr[i], "le") == 0)
      rc = tl_error_set(TL_EINVAL,
                        "metric '%s': label name 'le' is reserved for "
                        "histogram buckets", name);
    for (size_t j = 0; j < i && rc == 0; j++)
      if (strcmp(arr[j], arr[i]) == 0)
        rc = tl_error_set(TL_EINVAL, "metric '%s': duplicate label name '%s'",
                          name, arr[i]);
    if (rc) {
      free(arr);
      return rc;
    }
  }
  *out = arr;
  *count = n;
  return 0;
}

static int check_bounds(const char *name, const double *b, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(b[i]))
      return tl_error_set(TL_EINVAL,
                          "metric '%s': bucket bound %zu is not finite (%g)",
                          name, i, b[i]);
    if (i > 0 && !(b[i] > b[i - 1]))
      return tl_error_set(TL_EINVAL,
                          "metric '%s': bucket bounds must be strictly "
                          "increasing (bound %zu is %g after %g)",
                          name, i, b[i], b[i - 1]);
  }
  return 0;
}

/* "a,b" for messages about a family's labels. */
static void join_labels(char *buf, size_t size, char *const *labels, size_t n)
{
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n && off < size; i++) {
    int w = snprintf(buf + off, size - off, "%s%s", i ? "," : "", labels[i]);
    if (w < 0)
      break;
    off += (size_t)w;
  }
}

/* ---- series ---- */

static uint64_t hash_values(const char *const *values, size_t n)
{
  uint64_t h = 1469598103934665603u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    const char *v = values && values[i] ? values[i] : "";
    for (; *v; v++)
      h = (h ^ (unsigned char)*v) * 1099511628211u;
    /* a separator, so ("ab","") and ("a","b") differ */
    h = (h ^ 0xffu) * 1099511628211u;
  }
  return h;
}

static bool same_values(const tl_series *s, const char *const *values,
                        size_t n)
{
  for (size_t i = 0; i < n; i++) {
    const char *v = values && values[i] ? values[i] : "";
    if (strcmp(s->values[i], v) != 0)
      return false;
  }
  return true;
}

static tl_series *series_alloc(const tl_metric *m, const char *const *values,
                               uint64_t hash)
{
  size_t nb = m->kind == KIND_HISTOGRAM ? m->nbounds + 1 : 0;
  size_t size = sizeof(tl_series) + nb * sizeof(_Atomic uint64_t);
  size = (size + SERIES_ALIGN - 1) / SERIES_ALIGN * SERIES_ALIGN;
  tl_series *s = aligned_alloc(SERIES_ALIGN, size);
  if (!s)
    return NULL;
  memset(s, 0, size);
  atomic_init(&s->bits, d2u(0.0));
  atomic_init(&s->n, 0);
  for (size_t i = 0; i < nb; i++)
    atomic_init(&s->buckets[i], 0);
  s->family = m;
  s->hash = hash;

  if (m->nlabels > 0) {
    size_t text = 0;
    for (size_t i = 0; i < m->nlabels; i++)
      text += strlen(values && values[i] ? values[i] : "") + 1;
    s->values = malloc(m->nlabels * sizeof(char *) + text);
    if (!s->values) {
      free(s);
      return NULL;
    }
    char *p = (char *)(s->values + m->nlabels);
    for (size_t i = 0; i < m->nlabels; i++) {
      const char *v = values && values[i] ? values[i] : "";
      size_t len = strlen(v) + 1;
      memcpy(p, v, len);
      s->values[i] = p;
      p += len;
    }
  }
  return s;
}

static void series_free(tl_series *s)
{
  if (s) {
    free(s->values);
    free(s);
  }
}

/* locks: m->lock held (read or write) */
static tl_series *series_find(const tl_metric *m, const char *const *values,
                              uint64_t hash)
{
  if (m->table_size == 0)
    return NULL;
  for (tl_series *s = m->table[hash & (m->table_size - 1)]; s; s = s->hnext)
    if (s->hash == hash && same_values(s, values, m->nlabels))
      return s;
  return NULL;
}

/* Keep chains short: double the table when it holds as many series as
 * slots. Only the first table is a must; failing to grow it later just
 * makes chains longer.
 * locks: m->lock held for writing */
static bool series_insert(tl_metric *m, tl_series *s)
{
  if (m->nseries >= m->table_size) {
    size_t size = m->table_size ? m->table_size * 2 : 8;
    tl_series **t = calloc(size, sizeof *t);
    if (!t && m->table_size == 0)
      return false;
    if (t) {
      for (size_t i = 0; i < m->table_size; i++) {
        tl_series *c = m->table[i];
        while (c) {
          tl_series *next = c->hnext;
          c->hnext = t[c->hash & (size - 1)];
          t[c->hash & (size - 1)] = c;
          c = next;
        }
      }
      free(m->table);
      m->table = t;
      m->table_size = size;
    }
  }
  size_t slot = s->hash & (m->table_size - 1);
  s->hnext = m->table[slot];
  m->table[slot] = s;
  if (m->last)
    m->last->next = s;
  else
    m->first = s;
  m->last = s;
  m->nseries++;
  return true;
}

tl_series *tl_metric_series(tl_metric *m, const char *const *values,
                            size_t nvalues)
{
  if (!m) {
    tl_error_set(TL_EINVAL, "metric: NULL family");
    return NULL;
  }
  if (nvalues != m->nlabels) {
    tl_error_set(TL_EINVAL, "metric '%s': expected %zu label value%s, got %zu",
                 m->name, m->nlabels, m->nlabels == 1 ? "" : "s", nvalues);
    return NULL;
  }
  if (m->nlabels == 0)
    return m->dflt;

  uint64_t hash = hash_values(values, nvalues);
  pthread_rwlock_rdlock(&m->lock);
  tl_series *s = series_find(m, values, hash);
  pthread_rwlock_unlock(&m->lock);
  if (s)
    return s;

  pthread_rwlock_wrlock(&m->lock);
  /* another thread may have created it between the two locks */
  s = series_find(m, values, hash);
  if (!s) {
    s = series_alloc(m, values, hash);
    if (s && !series_insert(m, s)) {
      series_free(s);
      s = NULL;
    }
  }
  pthread_rwlock_unlock(&m->lock);
  if (!s)
    tl_error_set(TL_ENOMEM, "metric '%s': out of memory for a new series",
                 m->name);
  return s;
}

tl_series *tl_metric_default(tl_metric *m)
{
  if (!m) {
    tl_error_set(TL_EINVAL, "metric: NULL family");
    return NULL;
  }
  if (!m->dflt) {
    tl_error_set(TL_EINVAL,
                 "metric '%s': has %zu label%s, use tl_metric_series()",
                 m->name, m->nlabels, m->nlabels == 1 ? "" : "s");
    return NULL;
  }
  return m->dflt;
}

/* ---- updates: lock-free ---- */

/* Whole amounts up to 2^32 go to the integer part, which is exact and
 * cheaper; the limit keeps the integer part far from 2^53. */
static bool small_whole(double v)
{
  return v >= 0 && v <= 4294967296.0 && v == (double)(uint64_t)v;
}

void tl_series_inc(tl_series *s)
{
  if (!s)
    return;
  switch (s->family->kind) {
  case KIND_COUNTER:
    atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed);
    break;
  case KIND_GAUGE:
    atomic_add_double(&s->bits, 1.0);
    break;
  case KIND_HISTOGRAM:
    break;
  }
}

void tl_series_add(tl_series *s, double v)
{
  if (!s)
    return;
  switch (s->family->kind) {
  case KIND_COUNTER:
    /* a counter only goes up; "!(v >= 0)" also drops NaN */
    if (!(v >= 0))
      return;
    if (small_whole(v))
      atomic_fetch_add_explicit(&s->n, (uint64_t)v, memory_order_relaxed);
    else
      atomic_add_double(&s->bits, v);
    break;
  case KIND_GAUGE:
    atomic_add_double(&s->bits, v);
    break;
  case KIND_HISTOGRAM:
    break;
  }
}

void tl_series_set(tl_series *s, double v)
{
  if (!s)
    return;
  switch (s->family->kind) {
  case KIND_COUNTER:
    /* Mirrors a total kept elsewhere (read by a collect hook); a negative
     * total is not one. An increment racing with the set lands after it. */
    if (!(v >= 0))
      return;
    atomic_store_explicit(&s->n, 0, memory_order_relaxed);
    atomic_store_explicit(&s->bits, d2u(v), memory_order_relaxed);
    break;
  case KIND_GAUGE:
    atomic_store_explicit(&s->bits, d2u(v), memory_order_relaxed);
    break;
  case KIND_HISTOGRAM:
    break;
  }
}

void tl_series_observe(tl_series *s, double v)
{
  if (!s || s->family->kind != KIND_HISTOGRAM)
    return;
  const tl_metric *m = s->family;
  /* The first bound >= v (le is inclusive); NaN compares false with all
   * of them and so lands in +Inf, as it does in Prometheus clients. */
  size_t lo = 0, hi = m->nbounds;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (m->bounds[mid] >= v)
      hi = mid;
    else
      lo = mid + 1;
  }
  atomic_fetch_add_explicit(&s->buckets[lo], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed);
  atomic_add_double(&s->bits, v);
}

static double counter_value(const tl_series *s)
{
  return u2d(atomic_load_explicit(&s->bits, memory_order_relaxed)) +
         (double)atomic_load_explicit(&s->n, memory_order_relaxed);
}

double tl_series_value(const tl_series *s)
{
  if (!s)
    return 0;
  switch (s->family->kind) {
  case KIND_COUNTER:
    return counter_value(s);
  case KIND_GAUGE:
    return u2d(atomic_load_explicit(&s->bits, memory_order_relaxed));
  case KIND_HISTOGRAM:
    return (double)atomic_load_explicit(&s->n, memory_order_relaxed);
  }
  return 0;
}

/* ---- registry ---- */

static void registry_init(tl_metrics *reg)
{
  memset(reg, 0, sizeof *reg);
  pthread_mutex_init(&reg->mu, NULL);
}

int tl_metrics_new(tl_metrics **out)
{
  if (!out)
    return tl_error_set(TL_EINVAL, "metrics: NULL out pointer");
  *out = NULL;
  tl_metrics *reg = malloc(sizeof *reg);
  if (!reg)
    return tl_error_set(TL_ENOMEM, "metrics: out of memory for a registry");
  registry_init(reg);
  *out = reg;
  return 0;
}

/* The default registry is static storage, so getting it can never fail. */
static tl_metrics default_registry;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_init(void)
{
  registry_init(&default_registry);
}

tl_metrics *tl_metrics_default(void)
{
  pthread_once(&default_once, default_init);
  return &default_registry;
}

static void family_free(tl_metric *m)
{
  if (!m)
    return;
  tl_series *s = m->first;
  while (s) {
    tl_series *next = s->next;
    series_free(s);
    s = next;
  }
  pthread_rwlock_destroy(&m->lock);
  free(m->table);
  free(m->labels);
  free(m->bounds);
  free(m->name);
  free(m->help);
  free(m);
}

void tl_metrics_free(tl_metrics *reg)
{
  /* the process-wide registry lives until exit, whatever callers do */
  if (!reg || reg == &default_registry)
    return;
  for (size_t i = 0; i < reg->nfamilies; i++)
    family_free(reg->families[i]);
  free(reg->families);
  struct hook *h = reg->hooks;
  while (h) {
    struct hook *next = h->next;
    free(h);
    h = next;
  }
  pthread_mutex_destroy(&reg->mu);
  free(reg);
}

/* Index of `name` in the sorted families, or where it would go.
 * locks: reg->mu held */
static size_t family_index(const tl_metrics *reg, const char *name,
                           bool *found)
{
  size_t lo = 0, hi = reg->nfamilies;
  *found = false;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(reg->families[mid]->name, name);
    if (c == 0) {
      *found = true;
      return mid;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* An existing family matches when its type, labels and bounds are the
 * same; the help text of the first registration stays. */
static int family_match(const tl_metric *m, enum metric_kind kind,
                        char *const *labels, size_t nlabels,
                        const double *bounds, size_t nbounds)
{
  if (m->kind != kind)
    return tl_error_set(TL_EINVAL,
                        "metric '%s': already registered as a %s, not a %s",
                        m->name, kind_names[m->kind], kind_names[kind]);
  bool same = m->nlabels == nlabels;
  for (size_t i = 0; same && i < nlabels; i++)
    same = strcmp(m->labels[i], labels[i]) == 0;
  if (!same) {
    char had[256], got[256];
    join_labels(had, sizeof had, m->labels, m->nlabels);
    join_labels(got, sizeof got, labels, nlabels);
    return tl_error_set(TL_EINVAL,
                        "metric '%s': already registered with labels '%s', "
                        "not '%s'", m->name, had, got);
  }
  if (kind == KIND_HISTOGRAM &&
      (m->nbounds != nbounds ||
       memcmp(m->bounds, bounds, nbounds * sizeof *bounds) != 0))
    return tl_error_set(TL_EINVAL,
                        "metric '%s': already registered with other bucket "
                        "bounds", m->name);
  return 0;
}

static tl_metric *family_alloc(enum metric_kind kind, const char *name,
                               const char *help, char **labels,
                               size_t nlabels, const double *bounds,
                               size_t nbounds)
{
  tl_metric *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  m->kind = kind;
  m->name = strdup(name);
  m->help = strdup(help ? help : "");
  if (pthread_rwlock_init(&m->lock, NULL) != 0) {
    free(m->name);
    free(m->help);
    free(m);
    return NULL;
  }
  m->labels = labels;
  m->nlabels = nlabels;
  if (kind == KIND_HISTOGRAM) {
    m->bounds = malloc(nbounds * sizeof *bounds);
    if (m->bounds)
      memcpy(m->bounds, bounds, nbounds * sizeof *bounds);
    m->nbounds = nbounds;
  }
  if (nlabels == 0) {
    /* A family without labels has exactly one series, shown from the
     * start (at zero), so a scrape sees it before the first update. */
    m->dflt = series_alloc(m, NULL, hash_values(NULL, 0));
    if (m->dflt && !series_insert(m, m->dflt)) {
      series_free(m->dflt);
      m->dflt = NULL;
    }
  }
  if (!m->name || !m->help || (kind == KIND_HISTOGRAM && !m->bounds) ||
      (nlabels == 0 && !m->dflt)) {
    m->labels = NULL; /* still the caller's on failure */
    family_free(m);
    return NULL;
  }
  return m;
}

static int family_register(tl_metrics *reg, enum metric_kind kind,
                           const char *name, const char *help,
                           const char *labels, const double *bounds,
                           size_t nbounds, tl_metric **out)
{
  if (out)
    *out = NULL;
  if (!reg || !out)
    return tl_error_set(TL_EINVAL, "metric '%s': NULL %s", name ? name : "",
                        reg ? "out pointer" : "registry");
  if (!name)
    return tl_error_set(TL_EINVAL, "metric: NULL name");
  if (!valid_name(name, true))
    return tl_error_set(TL_EINVAL,
                        "metric '%s': invalid name "
                        "(expected [a-zA-Z_:][a-zA-Z0-9_:]*)", name);
  if (kind == KIND_HISTOGRAM) {
    if (!bounds || nbounds == 0) {
      bounds = default_bounds;
      nbounds = sizeof default_bounds / sizeof default_bounds[0];
    }
    int rc = check_bounds(name, bounds, nbounds);
    if (rc)
      return rc;
  }
  char **names;
  size_t nnames;
  int rc = parse_labels(name, labels, kind, &names, &nnames);
  if (rc)
    return rc;

  pthread_mutex_lock(&reg->mu);
  bool found;
  size_t at = family_index(reg, name, &found);
  if (found) {
    tl_metric *m = reg->families[at];
    rc = family_match(m, kind, names, nnames, bounds, nbounds);
    pthread_mutex_unlock(&reg->mu);
    free(names);
    if (rc == 0)
      *out = m;
    return rc;
  }
  if (reg->nfamilies == reg->cap) {
    size_t cap = reg->cap ? reg->cap * 2 : 16;
    tl_metric **f = realloc(reg->families, cap * sizeof *f);
    if (!f) {
      pthread_mutex_unlock(&reg->mu);
      free(names);
      return tl_error_set(TL_ENOMEM, "metric '%s': out of memory", name);
    }
    reg->families = f;
    reg->cap = cap;
  }
  tl_metric *m = family_alloc(kind, name, help, names, nnames, bounds, nbounds);
  if (!m) {
    pthread_mutex_unlock(&reg->mu);
    free(names);
    return tl_error_set(TL_ENOMEM, "metric '%s': out of memory", name);
  }
  memmove(reg->families + at + 1, reg->families + at,
          (reg->nfamilies - at) * sizeof *reg->families);
  reg->families[at] = m;
  reg->nfamilies++;
  pthread_mutex_unlock(&reg->mu);
  *out = m;
  return 0;
}

int tl_metrics_counter(tl_metrics *reg, const char *name, const char *help,
                       const char *labels, tl_metric **out)
{
  return family_register(reg, KIND_COUNTER, name, help, labels, NULL, 0, out);
}

int tl_metrics_gauge(tl_metrics *reg, const char *name, const char *help,
                     const char *labels, tl_metric **out)
{
  return family_register(reg, KIND_GAUGE, name, help, labels, NULL, 0, out);
}

int tl_metrics_histogram(tl_metrics *reg, const char *name, const char *help,
                         const char *labels, const double *bounds,
                         size_t nbounds, tl_metric **out)
{
  return family_register(reg, KIND_HISTOGRAM, name, help, labels, bounds,
                         nbounds, out);
}

int tl_metrics_on_collect(tl_metrics *reg, void (*fn)(void *ctx), void *ctx)
{
  if (!reg || !fn)
    return tl_error_set(TL_EINVAL, "metrics: NULL %s",
                        reg ? "collect hook" : "registry");
  struct hook *h = malloc(sizeof *h);
  if (!h)
    return tl_error_set(TL_ENOMEM, "metrics: out of memory for a hook");
  h->fn = fn;
  h->ctx = ctx;
  h->next = NULL;
  pthread_mutex_lock(&reg->mu);
  if (reg->hooks_tail)
    reg->hooks_tail->next = h;
  else
    reg->hooks = h;
  reg->hooks_tail = h;
  reg->nhooks++;
  pthread_mutex_unlock(&reg->mu);
  return 0;
}

/* ---- rendering ---- */

/* Help text escapes backslash and newline; label values also '"'. */
static void buf_escaped(tl__buf *b, const char *s, bool quote)
{
  const char *run = s;
  for (; *s; s++) {
    const char *esc = NULL;
    if (*s == '\\')
      esc = "\\\\";
    else if (*s == '\n')
      esc = "\\n";
    else if (quote && *s == '"')
      esc = "\\\"";
    if (esc) {
      tl__buf_add(b, run, (size_t)(s - run));
      tl__buf_add(b, esc, 2);
      run = s + 1;
    }
  }
  tl__buf_add(b, run, (size_t)(s - run));
}

/* Whole numbers as integers ("3"), others in the fewest digits that read
 * back as the same double ("0.1", not "0.10000000000000001"). */
static void format_double(char out[40], double v)
{
  if (isnan(v)) {
    strcpy(out, "NaN");
  } else if (isinf(v)) {
    strcpy(out, v > 0 ? "+Inf" : "-Inf");
  } else if (v == trunc(v) && fabs(v) < 9223372036854775808.0) {
    snprintf(out, 40, "%" PRId64, (int64_t)v);
  } else {
    for (int prec = 1; prec <= 17; prec++) {
      snprintf(out, 40, "%.*g", prec, v);
      if (strtod(out, NULL) == v)
        break;
    }
  }
}

static void buf_double(tl__buf *b, double v)
{
  char tmp[40];
  format_double(tmp, v);
  tl__buf_puts(b, tmp);
}

static void buf_u64(tl__buf *b, uint64_t v)
{
  char tmp[24];
  snprintf(tmp, sizeof tmp, "%" PRIu64, v);
  tl__buf_puts(b, tmp);
}

/* {a="x",b="y",le="0.5"}, or nothing without labels and `le`. */
static void buf_labels(tl__buf *b, const tl_metric *m, const tl_series *s,
                       const char *le)
{
  if (m->nlabels == 0 && !le)
    return;
  tl__buf_add(b, "{", 1);
  for (size_t i = 0; i < m->nlabels; i++) {
    if (i)
      tl__buf_add(b, ",", 1);
    tl__buf_puts(b, m->labels[i]);
    tl__buf_add(b, "=\"", 2);
    buf_escaped(b, s->values[i], true);
    tl__buf_add(b, "\"", 1);
  }
  if (le) {
    if (m->nlabels)
      tl__buf_add(b, ",", 1);
    tl__buf_add(b, "le=\"", 4);
    tl__buf_puts(b, le);
    tl__buf_add(b, "\"", 1);
  }
  tl__buf_add(b, "}", 1);
}

static void render_histogram(tl__buf *b, const tl_metric *m,
                             const tl_series *s)
{
  /* The count is the buckets' total, read in the same pass, so that
   * _count always equals the +Inf bucket even while observations land. */
  uint64_t cum = 0;
  char le[40];
  for (size_t i = 0; i <= m->nbounds; i++) {
    cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    if (i < m->nbounds)
      format_double(le, m->bounds[i]);
    else
      strcpy(le, "+Inf");
    tl__buf_puts(b, m->name);
    tl__buf_add(b, "_bucket", 7);
    buf_labels(b, m, s, le);
    tl__buf_add(b, " ", 1);
    buf_u64(b, cum);
    tl__buf_add(b, "\n", 1);
  }
  tl__buf_puts(b, m->name);
  tl__buf_add(b, "_sum", 4);
  buf_labels(b, m, s, NULL);
  tl__buf_add(b, " ", 1);
  buf_double(b, u2d(atomic_load_explicit(&s->bits, memory_order_relaxed)));
  tl__buf_add(b, "\n", 1);
  tl__buf_puts(b, m->name);
  tl__buf_add(b, "_count", 6);
  buf_labels(b, m, s, NULL);
  tl__buf_add(b, " ", 1);
  buf_u64(b, cum);
  tl__buf_add(b, "\n", 1);
}

/* locks: the registry mutex held; takes m->lock for reading */
static void render_family(tl__buf *b, tl_metric *m)
{
  tl__buf_add(b, "# HELP ", 7);
  tl__buf_puts(b, m->name);
  tl__buf_add(b, " ", 1);
  buf_escaped(b, m->help, false);
  tl__buf_add(b, "\n# TYPE ", 8);
  tl__buf_puts(b, m->name);
  tl__buf_add(b, " ", 1);
  tl__buf_puts(b, kind_names[m->kind]);
  tl__buf_add(b, "\n", 1);

  pthread_rwlock_rdlock(&m->lock);
  for (const tl_series *s = m->first; s && !b->failed; s = s->next) {
    if (m->kind == KIND_HISTOGRAM) {
      render_histogram(b, m, s);
      continue;
    }
    tl__buf_puts(b, m->name);
    buf_labels(b, m, s, NULL);
    tl__buf_add(b, " ", 1);
    buf_double(b, tl_series_value(s));
    tl__buf_add(b, "\n", 1);
  }
  pthread_rwlock_unlock(&m->lock);
}

/* Numbers must read "0.5" whatever LC_NUMERIC the program chose. */
static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void)
{
  c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

int tl_metrics_render(tl_metrics *reg, char **out, size_t *len)
{
  if (out)
    *out = NULL;
  if (len)
    *len = 0;
  if (!reg || !out)
    return tl_error_set(TL_EINVAL, "metrics: NULL %s",
                        reg ? "out pointer" : "registry");

  /* Hooks run without the mutex, so they may register families. Only the
   * first nhooks nodes are visited: their links no longer change. */
  pthread_mutex_lock(&reg->mu);
  struct hook *h = reg->hooks;
  size_t nhooks = reg->nhooks;
  pthread_mutex_unlock(&reg->mu);
  for (size_t i = 0; i < nhooks; i++) {
    struct hook *next = i + 1 < nhooks ? h->next : NULL;
    h->fn(h->ctx);
    h = next;
  }

  pthread_once(&c_locale_once, c_locale_init);
  locale_t old = c_locale ? uselocale(c_locale) : (locale_t)0;

  tl__buf b = TL__BUF_INIT;
  pthread_mutex_lock(&reg->mu);
  for (size_t i = 0; i < reg->nfamilies && !b.failed; i++)
    render_family(&b, reg->families[i]);
  pthread_mutex_unlock(&reg->mu);

  if (c_locale)
    uselocale(old);
  /* an empty registry still gives "", allocated like any other output */
  *out = tl__buf_steal(&b, len);
  if (!*out)
    return tl_error_set(TL_ENOMEM, "metrics: out of memory while rendering");
  return 0;
}
