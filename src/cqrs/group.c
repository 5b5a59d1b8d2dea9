/* Group commit of aggregate decisions. Callers queue their appends; a
 * caller that finds fewer than max_inflight batches running becomes a
 * leader: it takes up to max_batch queued appends (its own or not), runs
 * them in one transaction, hands every caller its outcome, and wakes the
 * next caller in the queue to lead if batches are free. No thread of its
 * own and no timer: under load the appends that arrive while a batch
 * commits make the next batch, and a lone caller runs at once. */
#include <stdlib.h>
#include <string.h>

#include <trellis/error.h>
#include <trellis/log.h>

#include "cqrs/cqrs_int.h"

#define DEFAULT_MAX_BATCH 64
#define MAX_BATCH 1024 /* a leader's list of items lives on its stack */
#define MAX_INFLIGHT 64
#define DEFAULT_MAX_INFLIGHT 4

struct tl_aggregate_group {
  tl_es *es;
  size_t max_batch;
  unsigned max_inflight;
  tl_series *m_size;
  pthread_mutex_t mu;
  tl__group_item *head, *tail; /* locks: mu */
  unsigned leaders;            /* locks: mu */
};

int tl_aggregate_group_new(tl_es *es, const tl_aggregate_group_config *cfg,
                           tl_aggregate_group **out)
{
  if (!es || !out) return tl_error_set(TL_EINVAL, "aggregate group: no event store");
  static const tl_aggregate_group_config none = { 0 };
  const tl_aggregate_group_config *c = cfg ? cfg : &none;
  if (c->max_batch > MAX_BATCH)
    return tl_error_set(TL_EINVAL, "aggregate group: max_batch %zu is out of range [1, %d]",
                        c->max_batch, MAX_BATCH);
  if (c->max_inflight > MAX_INFLIGHT)
    return tl_error_set(TL_EINVAL, "aggregate group: max_inflight %u is out of range [1, %d]",
                        c->max_inflight, MAX_INFLIGHT);
  tl_aggregate_group *g = calloc(1, sizeof *g);
  if (!g) return tl_error_set(TL_ENOMEM, "aggregate group: out of memory");
  g->es = es;
  g->max_batch = c->max_batch ? c->max_batch : DEFAULT_MAX_BATCH;
  g->max_inflight = c->max_inflight ? c->max_inflight : DEFAULT_MAX_INFLIGHT;
  static const double bounds[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256 };
  tl_metric *m;
  if (tl_metrics_histogram(c->metrics ? c->metrics : tl_metrics_default(),
                           "trellis_cqrs_group_commit_batch_size",
                           "Aggregate decisions committed together by one transaction.", NULL,
                           bounds, sizeof bounds / sizeof *bounds, &m) == 0)
    g->m_size = tl_metric_default(m);
  pthread_mutex_init(&g->mu, NULL);
  *out = g;
  return 0;
}

void tl_aggregate_group_free(tl_aggregate_group *g)
{
  if (!g) return;
  pthread_mutex_destroy(&g->mu);
  free(g);
}

/* One batch in its transaction. */
typedef struct batch {
  tl_aggregate_group *g;
  tl__group_item **items;
  size_t n;
  bool refused; /* an in_tx took its decision out: run again without */
  bool in_fn;   /* the failure came from inside batch_fn */
} batch;

/* An in_tx refused item `it` with `rc`: it leaves the batch. */
static void refuse(batch *b, tl__group_item *it, int rc, const char *msg)
{
  it->rc = rc;
  it->in_tx_failed = true;
  snprintf(it->req.error, sizeof it->req.error, "%s", msg);
  b->refused = true;
}

/* The in_tx_batch call for the placed items from `first` on that share
 * its function and context. */
static int run_in_tx_batch(tl_tx *tx, batch *b, size_t first, bool *called)
{
  const tl_aggregate_exec_opts *o = b->items[first]->o;
  tl_aggregate_tx_item *ti = calloc(b->n, sizeof *ti);
  tl__group_item **of = calloc(b->n, sizeof *of);
  if (!ti || !of) {
    free(ti);
    free(of);
    return tl_error_set(TL_ENOMEM, "group commit: out of memory");
  }
  size_t k = 0;
  for (size_t i = first; i < b->n; i++) {
    tl__group_item *it = b->items[i];
    if (it->req.rc || called[i] || it->o->in_tx_batch != o->in_tx_batch ||
        it->o->in_tx_ctx != o->in_tx_ctx)
      continue;
    called[i] = true;
    of[k] = it;
    ti[k++] = (tl_aggregate_tx_item){ .stream = it->req.stream, .state = it->state,
                                      .events = it->req.events, .n = it->req.n };
  }
  int rc = o->in_tx_batch(tx, ti, k, o->in_tx_ctx);
  for (size_t i = 0; i < k && rc == 0; i++)
    if (ti[i].rc) refuse(b, of[i], ti[i].rc, ti[i].error);
  free(ti);
  free(of);
  return rc;
}

static int batch_fn(tl_tx *tx, void *ctx)
{
  batch *b = ctx;
  b->refused = false;
  b->in_fn = true;
  tl_es_append_req *reqs = malloc(b->n * sizeof *reqs);
  bool *called = calloc(b->n, sizeof *called);
  if (!reqs || !called) {
    free(reqs);
    free(called);
    return tl_error_set(TL_ENOMEM, "group commit: out of memory");
  }
  for (size_t i = 0; i < b->n; i++) reqs[i] = b->items[i]->req;
  int rc = tl_es_append_batch_tx(b->g->es, tx, reqs, b->n);
  for (size_t i = 0; i < b->n && rc == 0; i++) b->items[i]->req = reqs[i];
  for (size_t i = 0; i < b->n && rc == 0; i++) {
    tl__group_item *it = b->items[i];
    if (it->req.rc || called[i]) continue;
    if (it->o->in_tx_batch) {
      rc = run_in_tx_batch(tx, b, i, called);
    } else if (it->o->in_tx) {
      int r = it->o->in_tx(tx, it->state, it->req.events, it->req.n, it->o->in_tx_ctx);
      if (r) refuse(b, it, r, tl_error_last());
      /* A failed statement leaves tx only for rollback: stop here. */
      if (r) break;
    }
  }
  free(reqs);
  free(called);
  if (rc == 0 && b->refused)
    rc = tl_error_set(TL_ECONSTRAINT, "group commit: a decision was taken out of the batch");
  if (rc == 0) b->in_fn = false; /* from here on: the commit */
  return rc;
}

/* Run the batch; decisions an in_tx refuses drop out and the rest run
 * again. Sets every item's outcome. */
static void run_batch(tl_aggregate_group *g, tl__group_item **items, size_t n)
{
  batch b = { .g = g, .items = items, .n = n };
  for (;;) {
    for (size_t i = 0; i < b.n; i++) {
      b.items[i]->rc = 0;
      b.items[i]->in_tx_failed = false;
    }
    int rc = tl_db_transact(tl_es_db(g->es), batch_fn, &b, NULL);
    if (rc == 0) {
      size_t placed = 0;
      for (size_t i = 0; i < b.n; i++) {
        b.items[i]->rc = b.items[i]->req.rc;
        placed += b.items[i]->rc == 0;
      }
      if (placed) tl_series_observe(g->m_size, (double)placed);
      return;
    }
    if (!b.refused) {
      /* The statement or the commit failed for all. Before the commit,
       * each append on its own finds whose fault it was; a failed commit
       * may have committed, so its error is everyone's answer. */
      const char *msg = tl_error_last();
      for (size_t i = 0; i < b.n; i++) {
        b.items[i]->alone = b.in_fn;
        b.items[i]->rc = rc;
        snprintf(b.items[i]->req.error, sizeof b.items[i]->req.error, "%s", msg);
      }
      return;
    }
    /* Take the refused ones out (their outcome is set) and run the rest,
     * in their order. Swapped behind them, not overwritten: the caller
     * still has to wake every item of the batch. */
    size_t k = 0;
    for (size_t i = 0; i < b.n; i++) {
      if (b.items[i]->in_tx_failed) continue;
      tl__group_item *kept = b.items[i];
      b.items[i] = b.items[k];
      b.items[k++] = kept;
    }
    tl_log(TL_LOG_DEBUG, "group commit: decisions refused by in_tx; the batch runs again",
           TL_F_INT("refused", (int64_t)(b.n - k)), TL_F_INT("remaining", (int64_t)k));
    b.n = k;
    if (k == 0) return;
  }
}

int tl__group_append(tl_aggregate_group *g, tl__group_item *it)
{
  it->done = false;
  it->alone = false;
  it->next = NULL;
  pthread_cond_init(&it->cv, NULL);
  pthread_mutex_lock(&g->mu);
  if (g->tail) g->tail->next = it;
  else g->head = it;
  g->tail = it;
  tl__group_item *items[MAX_BATCH];
  while (!it->done) {
    if (g->leaders >= g->max_inflight || !g->head) {
      pthread_cond_wait(&it->cv, &g->mu);
      continue;
    }
    /* Lead: take the oldest appends. */
    size_t n = 0;
    while (g->head && n < g->max_batch) {
      items[n++] = g->head;
      g->head = g->head->next;
    }
    if (!g->head) g->tail = NULL;
    g->leaders++;
    pthread_mutex_unlock(&g->mu);
    run_batch(g, items, n);
    pthread_mutex_lock(&g->mu);
    g->leaders--;
    for (size_t i = 0; i < n; i++) {
      items[i]->done = true;
      pthread_cond_signal(&items[i]->cv);
    }
    if (g->head) pthread_cond_signal(&g->head->cv); /* the next leader */
  }
  pthread_mutex_unlock(&g->mu);
  pthread_cond_destroy(&it->cv);
  if (it->rc && !it->alone) tl_error_set(it->rc, "%s", it->req.error);
  return it->rc;
}
