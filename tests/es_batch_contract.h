/* The event store's appends inside the caller's transaction, on every
 * backend: batches (tl_es_append_batch_tx) and the waking of subscribers
 * when, and only when, the caller commits. Include after es_contract.h
 * (its store, helpers and sink) and call esb_run(url, "name"). */
#ifndef TRELLIS_TESTS_ES_BATCH_CONTRACT_H
#define TRELLIS_TESTS_ES_BATCH_CONTRACT_H

#include "es_contract.h"

/* A subscriber polling only every 10 s: one that gets events sooner was
 * woken by the commit. */
#define ESB_SLOW_POLL_US 10000000
#define ESB_PROMPT_US 2000000

static tl_es_append_req esb_req(const char *stream, int64_t expected, tl_event *ev, size_t n)
{
  return (tl_es_append_req){ .stream = stream, .expected = expected, .events = ev, .n = n };
}

/* Run the batch in a transaction of its own and commit it. */
static void esb_commit_batch(tl_es *es, tl_es_append_req *reqs, size_t n)
{
  tl_tx *tx;
  esc_ok(tl_db_begin(esc_db, &tx), "begin");
  esc_ok(tl_es_append_batch_tx(es, tx, reqs, n), "batch");
  esc_ok(tl_tx_commit(tx), "commit");
}

static void esb_placed(const tl_es_append_req *q)
{
  if (q->rc) fail_msg("'%s' not placed: %s (%s)", q->stream, tl_status_name(q->rc), q->error);
  assert_string_equal(q->error, "");
}

static void esb_refused(const tl_es_append_req *q, int rc, const char *text)
{
  if (q->rc != rc)
    fail_msg("'%s': %s instead of %s (%s)", q->stream ? q->stream : "(null)",
             tl_status_name(q->rc), tl_status_name(rc), q->error);
  if (!strstr(q->error, text)) fail_msg("'%s' is not in '%s'", text, q->error);
}

/* The stream reads back as exactly these events (the versions, positions,
 * tx and time the append filled in, the types and data given). */
static void esb_stream_is(const char *stream, const tl_event *want, size_t n)
{
  tl_event_list *l;
  esc_ok(tl_es_get_events(esc_es, stream, &l), stream);
  if (l->count != n) fail_msg("'%s': %zu events, expected %zu", stream, l->count, n);
  for (size_t i = 0; i < n; i++) {
    const tl_event *got = &l->events[i], *w = &want[i];
    assert_string_equal(got->id, w->id);
    assert_string_equal(got->event_type, w->event_type);
    json_t *a = json_loads(got->data, 0, NULL), *b = json_loads(w->data, 0, NULL);
    assert_true(a && b && json_equal(a, b));
    json_decref(a);
    json_decref(b);
    assert_int_equal(w->version, (int64_t)i + 1);
    assert_int_equal(got->version, w->version);
    assert_int_equal(got->position, w->position);
    /* Within a stream the global order follows the versions. */
    if (i) assert_true(got->position > l->events[i - 1].position);
    assert_int_equal(got->tx, w->tx);
    assert_int_equal(got->timestamp_us, w->timestamp_us);
  }
  tl_event_list_free(l);
  int64_t v = -1;
  esc_ok(tl_es_stream_version(esc_es, stream, &v), "version");
  assert_int_equal(v, (int64_t)n);
}

static int64_t esb_version(const char *stream)
{
  int64_t v = -1;
  esc_ok(tl_es_stream_version(esc_es, stream, &v), "version");
  return v;
}

static double esb_counter(tl_metrics *reg, const char *name)
{
  tl_metric *m;
  esc_ok(tl_metrics_counter(reg, name, "x", NULL, &m), name);
  return tl_series_value(tl_metric_default(m));
}

/* ---- (a) many new streams ----------------------------------------------- */

enum { ESB_STREAMS = 20 };

static void esb_many_new_streams(void **state)
{
  (void)state;
  static const char *const types[] = { "Opened", "Noted", "Closed" };
  char names[ESB_STREAMS][64], data[ESB_STREAMS][3][64];
  tl_event ev[ESB_STREAMS][3];
  tl_es_append_req reqs[ESB_STREAMS];
  size_t total = 0;
  for (int s = 0; s < ESB_STREAMS; s++) {
    snprintf(names[s], sizeof names[s], "%s", esc_s("many"));
    snprintf(names[s] + strlen(names[s]), 16, "%d", s);
    size_t n = 1 + (size_t)s % 3;
    for (size_t e = 0; e < n; e++) {
      snprintf(data[s][e], sizeof data[s][e], "{\"stream\":%d,\"n\":%zu,\"q\":\"a\\\"b\"}", s, e);
      ev[s][e] = esc_ev(names[s], types[e], data[s][e]);
    }
    reqs[s] = esb_req(names[s], TL_ES_NO_STREAM, ev[s], n);
    total += n;
  }
  /* A store of its own, so its counters are this batch's alone. */
  tl_metrics *reg;
  esc_ok(tl_metrics_new(&reg), "registry");
  tl_es *es;
  esc_ok(tl_es_open(&es, &(tl_es_config){ .db = esc_db, .metrics = reg }), "open");
  esb_commit_batch(es, reqs, ESB_STREAMS);
  assert_int_equal((int)esb_counter(reg, "trellis_es_appended_events_total"), (int)total);
  assert_int_equal((int)esb_counter(reg, "trellis_es_append_conflicts_total"), 0);
  tl_es_close(es);
  tl_metrics_free(reg);

  int64_t *pos = calloc(total, sizeof *pos);
  size_t k = 0;
  for (int s = 0; s < ESB_STREAMS; s++) {
    esb_placed(&reqs[s]);
    for (size_t e = 0; e < reqs[s].n; e++) {
      tl_event *x = &ev[s][e];
      assert_int_equal(x->version, (int64_t)e + 1);
      assert_true(x->position > 0);
      assert_true(x->timestamp_us > 0);
      /* One transaction: one ordering group. */
      assert_int_equal(x->tx, ev[0][0].tx);
      if (e) assert_true(x->position > ev[s][e - 1].position);
      pos[k++] = x->position;
    }
    esb_stream_is(names[s], ev[s], reqs[s].n);
  }
  qsort(pos, total, sizeof *pos, esc_cmp64);
  for (size_t i = 1; i < total; i++) assert_true(pos[i] > pos[i - 1]);
  free(pos);
}

/* ---- (b) right and wrong versions in one transaction ---------------------- */

static void esb_mixed_versions(void **state)
{
  (void)state;
  char good[96], wrong[96], taken[96], fresh[96];
  snprintf(good, sizeof good, "%s", esc_s("mix-good"));
  snprintf(wrong, sizeof wrong, "%s", esc_s("mix-wrong"));
  snprintf(taken, sizeof taken, "%s", esc_s("mix-taken"));
  snprintf(fresh, sizeof fresh, "%s", esc_s("mix-fresh"));
  tl_event pre[3] = { esc_ev(good, "A", "{}"), esc_ev(good, "A", "{}"), esc_ev(wrong, "A", "{}") };
  esc_ok(tl_es_append_to(esc_es, good, TL_ES_NO_STREAM, pre, 2), "good");
  esc_ok(tl_es_append_to(esc_es, wrong, TL_ES_NO_STREAM, &pre[2], 1), "wrong");
  tl_event taken0 = esc_ev(taken, "A", "{}");
  esc_ok(tl_es_append_to(esc_es, taken, TL_ES_NO_STREAM, &taken0, 1), "taken");

  tl_metrics *reg;
  esc_ok(tl_metrics_new(&reg), "registry");
  tl_es *es;
  esc_ok(tl_es_open(&es, &(tl_es_config){ .db = esc_db, .metrics = reg }), "open");
  tl_event g = esc_ev(good, "B", "{\"g\":1}"), w[2] = { esc_ev(wrong, "B", "{\"w\":1}"),
                                                        esc_ev(wrong, "B", "{\"w\":2}") };
  tl_event t = esc_ev(taken, "B", "{}"), f = esc_ev(fresh, "B", "{\"f\":1}");
  tl_es_append_req reqs[4] = { esb_req(good, 2, &g, 1), esb_req(wrong, 5, w, 2),
                               esb_req(taken, TL_ES_NO_STREAM, &t, 1),
                               esb_req(fresh, TL_ES_NO_STREAM, &f, 1) };
  tl_tx *tx;
  esc_ok(tl_db_begin(esc_db, &tx), "begin");
  esc_ok(tl_es_append_batch_tx(es, tx, reqs, 4), "batch");
  esb_placed(&reqs[0]);
  esb_refused(&reqs[1], TL_ECONFLICT, "expected version 5, found 1");
  assert_non_null(strstr(reqs[1].error, wrong));
  esb_refused(&reqs[2], TL_ECONFLICT, "expected version no stream, found 1");
  esb_placed(&reqs[3]);
  assert_int_equal(g.version, 3);
  assert_int_equal(f.version, 1);
  /* The transaction is still usable: the caller retries the refused
   * request at the version it was told, in the same transaction. */
  tl_es_append_req again = esb_req(wrong, 1, w, 2);
  esc_ok(tl_es_append_batch_tx(es, tx, &again, 1), "again");
  esb_placed(&again);
  esc_ok(tl_tx_commit(tx), "commit");
  assert_int_equal((int)esb_counter(reg, "trellis_es_appended_events_total"), 4);
  assert_int_equal((int)esb_counter(reg, "trellis_es_append_conflicts_total"), 2);
  tl_es_close(es);
  tl_metrics_free(reg);

  tl_event good_all[3] = { pre[0], pre[1], g };
  esb_stream_is(good, good_all, 3);
  tl_event wrong_all[3] = { pre[2], w[0], w[1] };
  esb_stream_is(wrong, wrong_all, 3);
  /* The refused request wrote nothing. */
  esb_stream_is(taken, &taken0, 1);
  esb_stream_is(fresh, &f, 1);
}

/* ---- (c) two requests for one stream ------------------------------------ */

static void esb_same_stream_twice(void **state)
{
  (void)state;
  char s[96], u[96];
  snprintf(s, sizeof s, "%s", esc_s("twice"));
  snprintf(u, sizeof u, "%s", esc_s("twice-stale"));
  tl_event a = esc_ev(s, "First", "{\"i\":1}");
  tl_event b[2] = { esc_ev(s, "Second", "{\"i\":2}"), esc_ev(s, "Second", "{\"i\":3}") };
  tl_event c = esc_ev(u, "First", "{}"), d = esc_ev(u, "Stale", "{}");
  tl_es_append_req reqs[4] = { esb_req(s, 0, &a, 1), esb_req(u, 0, &c, 1), esb_req(s, 1, b, 2),
                               esb_req(u, 0, &d, 1) };
  esb_commit_batch(esc_es, reqs, 4);
  esb_placed(&reqs[0]);
  esb_placed(&reqs[1]);
  esb_placed(&reqs[2]);
  /* The second saw the first: stream u was no longer at version 0. */
  esb_refused(&reqs[3], TL_ECONFLICT, "expected version 0, found 1");
  assert_true(a.position < b[0].position && b[0].position < b[1].position);
  tl_event all[3] = { a, b[0], b[1] };
  esb_stream_is(s, all, 3);
  esb_stream_is(u, &c, 1);
}

/* ---- (d) deleted streams ------------------------------------------------ */

static void esb_deleted_stream(void **state)
{
  (void)state;
  char gone[96], alive[96];
  snprintf(gone, sizeof gone, "%s", esc_s("gone"));
  snprintf(alive, sizeof alive, "%s", esc_s("alive"));
  tl_event pre[2] = { esc_ev(gone, "A", "{}"), esc_ev(gone, "A", "{}") };
  esc_ok(tl_es_append_to(esc_es, gone, TL_ES_NO_STREAM, pre, 2), "pre");
  esc_ok(tl_es_stream_delete(esc_es, gone), "delete");
  tl_event x = esc_ev(gone, "B", "{}"), y = esc_ev(gone, "B", "{}"), z = esc_ev(alive, "B", "{}");
  tl_es_append_req reqs[3] = { esb_req(gone, TL_ES_ANY, &x, 1), esb_req(gone, 2, &y, 1),
                               esb_req(alive, TL_ES_NO_STREAM, &z, 1) };
  esb_commit_batch(esc_es, reqs, 3);
  esb_refused(&reqs[0], TL_ESTATE, "deleted");
  assert_non_null(strstr(reqs[0].error, gone));
  esb_refused(&reqs[1], TL_ESTATE, "deleted");
  esb_placed(&reqs[2]);
  tl_event_list *l;
  assert_int_equal(tl_es_get_events(esc_es, gone, &l), TL_ENOTFOUND);
  esb_stream_is(alive, &z, 1);
}

/* ---- (e) invalid requests ----------------------------------------------- */

static void esb_invalid_requests(void **state)
{
  (void)state;
  char ok1[96], ok2[96], bad[96];
  snprintf(ok1, sizeof ok1, "%s", esc_s("valid1"));
  snprintf(ok2, sizeof ok2, "%s", esc_s("valid2"));
  snprintf(bad, sizeof bad, "%s", esc_s("invalid"));
  tl_event a = esc_ev(NULL, "A", "{}"), b = esc_ev(NULL, "A", "{}"), e1 = esc_ev(NULL, "A", "{}");
  tl_event e2 = esc_ev(NULL, "A", "{}"), nojson = esc_ev(bad, "A", "{not json");
  tl_event other = esc_ev(ok2, "A", "{}");
  tl_es_append_req reqs[7] = {
    esb_req(ok1, TL_ES_NO_STREAM, &a, 1), esb_req("", TL_ES_ANY, &e1, 1),
    esb_req(NULL, TL_ES_ANY, &e2, 1),     esb_req(bad, TL_ES_ANY, NULL, 0),
    esb_req(bad, TL_ES_ANY, &nojson, 1),  esb_req(bad, TL_ES_ANY, &other, 1),
    esb_req(ok2, TL_ES_NO_STREAM, &b, 1),
  };
  esb_commit_batch(esc_es, reqs, 7);
  esb_placed(&reqs[0]);
  esb_refused(&reqs[1], TL_EINVAL, "stream name is empty");
  esb_refused(&reqs[2], TL_EINVAL, "stream name is empty");
  esb_refused(&reqs[3], TL_EINVAL, "no events");
  esb_refused(&reqs[4], TL_EINVAL, "not JSON");
  esb_refused(&reqs[5], TL_EINVAL, ok2);
  esb_placed(&reqs[6]);
  esb_stream_is(ok1, &a, 1);
  esb_stream_is(ok2, &b, 1);
  assert_int_equal(esb_version(bad), 0);
}

/* ---- (f) the caller rolls back ------------------------------------------ */

static void esb_rollback(void **state)
{
  (void)state;
  char old[96], n1[96], n2[96];
  snprintf(old, sizeof old, "%s", esc_s("rb-old"));
  snprintf(n1, sizeof n1, "%s", esc_s("rb-new1"));
  snprintf(n2, sizeof n2, "%s", esc_s("rb-new2"));
  tl_event pre = esc_ev(old, "A", "{}");
  esc_ok(tl_es_append_to(esc_es, old, TL_ES_NO_STREAM, &pre, 1), "pre");
  tl_event x = esc_ev(old, "B", "{}"), y[2] = { esc_ev(n1, "B", "{}"), esc_ev(n1, "B", "{}") };
  tl_event z = esc_ev(n2, "B", "{}");
  tl_es_append_req reqs[3] = { esb_req(old, 1, &x, 1), esb_req(n1, TL_ES_NO_STREAM, y, 2),
                               esb_req(n2, TL_ES_NO_STREAM, &z, 1) };
  tl_tx *tx;
  esc_ok(tl_db_begin(esc_db, &tx), "begin");
  esc_ok(tl_es_append_batch_tx(esc_es, tx, reqs, 3), "batch");
  for (int i = 0; i < 3; i++) esb_placed(&reqs[i]);
  esc_ok(tl_tx_rollback(tx), "rollback");
  esb_stream_is(old, &pre, 1);
  esb_stream_is(n1, NULL, 0);
  esb_stream_is(n2, NULL, 0);
  /* Nothing was left claimed: the same requests (same event ids) go in
   * afterwards at the versions they asked for. */
  esb_commit_batch(esc_es, reqs, 3);
  for (int i = 0; i < 3; i++) esb_placed(&reqs[i]);
  tl_event old_all[2] = { pre, x };
  esb_stream_is(old, old_all, 2);
  esb_stream_is(n1, y, 2);
  esb_stream_is(n2, &z, 1);
}

/* ---- (g) more than one statement takes ---------------------------------- */

/* On PostgreSQL one statement takes up to 1,000 events, 100 per request;
 * the others go one by one. Each stream here gets a second request after
 * a first that the statement cannot take: "edge" because the statement
 * is full by then (995 + 6 events), "long" because it has 150 events.
 * The second must still follow the first. 1,253 events in all. */
typedef struct esb_plan {
  const char *tag;
  size_t n;
  int64_t expected;
} esb_plan;

static const esb_plan esb_large[] = {
  { "big0", 100, TL_ES_NO_STREAM }, { "big1", 100, TL_ES_NO_STREAM },
  { "big2", 100, TL_ES_NO_STREAM }, { "big3", 100, TL_ES_NO_STREAM },
  { "big4", 100, TL_ES_NO_STREAM }, { "big5", 100, TL_ES_NO_STREAM },
  { "big6", 100, TL_ES_NO_STREAM }, { "big7", 100, TL_ES_NO_STREAM },
  { "big8", 100, TL_ES_NO_STREAM }, { "fill", 95, TL_ES_NO_STREAM },
  { "edge", 6, TL_ES_NO_STREAM },   { "edge", 1, TL_ES_ANY },
  { "long", 150, TL_ES_NO_STREAM }, { "long", 1, TL_ES_ANY },
  { "big9", 100, TL_ES_NO_STREAM },
};

static void esb_large_batch(void **state)
{
  (void)state;
  enum { N = sizeof esb_large / sizeof esb_large[0] };
  char names[N][96];
  tl_event *ev[N];
  tl_es_append_req reqs[N];
  for (size_t i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "%s", esc_s(esb_large[i].tag));
    ev[i] = calloc(esb_large[i].n, sizeof(tl_event));
    for (size_t e = 0; e < esb_large[i].n; e++) ev[i][e] = esc_ev(names[i], "Bulk", "{\"x\":1}");
    reqs[i] = esb_req(names[i], esb_large[i].expected, ev[i], esb_large[i].n);
  }
  esb_commit_batch(esc_es, reqs, N);
  /* Each stream is its requests' events, in request order. */
  tl_event *all = calloc(2000, sizeof *all);
  for (size_t i = 0; i < N;) {
    esb_placed(&reqs[i]);
    size_t count = 0, j = i;
    for (; j < N && strcmp(esb_large[j].tag, esb_large[i].tag) == 0; j++) {
      memcpy(all + count, ev[j], esb_large[j].n * sizeof *all);
      count += esb_large[j].n;
    }
    esb_stream_is(names[i], all, count);
    for (; i < j; i++) esb_placed(&reqs[i]);
  }
  free(all);
  for (size_t i = 0; i < N; i++) free(ev[i]);
}

/* ---- (h) subscribers woken by the caller's commit ----------------------- */

typedef struct esb_watch {
  char cat[32], name[64];
  esc_sink sink;
  tl_es_sub *sub;
} esb_watch;

/* A slow-polling subscription to a category of its own, caught up with
 * one first event and idle in its long wait. */
static void esb_watch_start(esb_watch *w, const char *tag)
{
  snprintf(w->cat, sizeof w->cat, "%s%d", tag, (int)getpid());
  snprintf(w->name, sizeof w->name, "%s-sub", w->cat);
  w->sink = (esc_sink){ .mu = PTHREAD_MUTEX_INITIALIZER };
  char stream[64];
  snprintf(stream, sizeof stream, "%s-first", w->cat);
  tl_event first = esc_ev(stream, "First", "{}");
  esc_ok(tl_es_append_to(esc_es, stream, TL_ES_NO_STREAM, &first, 1), "first");
  tl_es_sub_opts o = { .name = w->name, .filter = { .category = w->cat },
                       .poll_min_us = ESB_SLOW_POLL_US, .poll_max_us = ESB_SLOW_POLL_US };
  esc_ok(tl_es_subscribe(esc_es, &o, esc_sink_handler, &w->sink, &w->sub), "subscribe");
  assert_true(esc_wait_count(&w->sink, 1, 10000000));
  tl_sleep_us(300000); /* past its next (empty) read, into the wait */
}

/* Commit `tx` and check the subscriber gets `n` more events, promptly:
 * their positions, in order. */
static void esb_commit_and_see(esb_watch *w, tl_tx *tx, const int64_t *positions, size_t n)
{
  size_t before = esc_sink_count(&w->sink);
  tl_sleep_us(200000); /* uncommitted for a while: a wake now would be wasted */
  assert_int_equal(esc_sink_count(&w->sink), before);
  int64_t t0 = tl_time_mono_us();
  esc_ok(tl_tx_commit(tx), "commit");
  assert_true(esc_wait_count(&w->sink, before + n, 8000000));
  int64_t took = tl_time_mono_us() - t0;
  if (took >= ESB_PROMPT_US) fail_msg("woken after %lld ms", (long long)(took / 1000));
  tl_sleep_us(100000);
  pthread_mutex_lock(&w->sink.mu);
  assert_int_equal(w->sink.n, before + n);
  for (size_t i = 0; i < n; i++) assert_int_equal(w->sink.pos[before + i], positions[i]);
  pthread_mutex_unlock(&w->sink.mu);
}

static void esb_watch_stop(esb_watch *w)
{
  tl_es_sub_stop(w->sub);
  free(w->sink.pos);
}

static int esb_cmp_event(const void *a, const void *b)
{
  return esc_cmp64(&((const tl_event *)a)->position, &((const tl_event *)b)->position);
}

static void esb_batch_wakes_subscriber(void **state)
{
  (void)state;
  esb_watch w;
  esb_watch_start(&w, "bw");
  char s1[64], s2[64];
  snprintf(s1, sizeof s1, "%s-1", w.cat);
  snprintf(s2, sizeof s2, "%s-2", w.cat);
  tl_event a[2] = { esc_ev(s1, "A", "{}"), esc_ev(s1, "A", "{}") }, b = esc_ev(s2, "B", "{}");
  tl_es_append_req reqs[2] = { esb_req(s1, TL_ES_NO_STREAM, a, 2), esb_req(s2, TL_ES_ANY, &b, 1) };
  tl_tx *tx;
  esc_ok(tl_db_begin(esc_db, &tx), "begin");
  esc_ok(tl_es_append_batch_tx(esc_es, tx, reqs, 2), "batch");
  esb_placed(&reqs[0]);
  esb_placed(&reqs[1]);
  tl_event all[3] = { a[0], a[1], b };
  qsort(all, 3, sizeof *all, esb_cmp_event);
  int64_t pos[3] = { all[0].position, all[1].position, all[2].position };
  esb_commit_and_see(&w, tx, pos, 3);
  esb_watch_stop(&w);
}

/* tl_es_append_tx: a rolled-back append is never delivered; a committed
 * one wakes the subscriber at once. */
static void esb_append_tx_wakes_on_commit_only(void **state)
{
  (void)state;
  esb_watch w;
  esb_watch_start(&w, "tw");
  char s[64];
  snprintf(s, sizeof s, "%s-1", w.cat);
  tl_event gone[2] = { esc_ev(s, "RolledBack", "{}"), esc_ev(s, "RolledBack", "{}") };
  tl_tx *tx;
  esc_ok(tl_db_begin(esc_db, &tx), "begin");
  esc_ok(tl_es_append_tx(esc_es, tx, s, TL_ES_NO_STREAM, gone, 2), "append rolled back");
  esc_ok(tl_tx_rollback(tx), "rollback");
  tl_event kept = esc_ev(s, "Kept", "{}");
  esc_ok(tl_db_begin(esc_db, &tx), "begin");
  esc_ok(tl_es_append_tx(esc_es, tx, s, TL_ES_NO_STREAM, &kept, 1), "append kept");
  esb_commit_and_see(&w, tx, &kept.position, 1);
  assert_int_equal(kept.version, 1);
  esb_stream_is(s, &kept, 1);
  esb_watch_stop(&w);
}

static int esb_run(const char *url, const char *name)
{
  esc_url = url;
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(esb_many_new_streams),
    cmocka_unit_test(esb_mixed_versions),
    cmocka_unit_test(esb_same_stream_twice),
    cmocka_unit_test(esb_deleted_stream),
    cmocka_unit_test(esb_invalid_requests),
    cmocka_unit_test(esb_rollback),
    cmocka_unit_test(esb_large_batch),
    cmocka_unit_test(esb_batch_wakes_subscriber),
    cmocka_unit_test(esb_append_tx_wakes_on_commit_only),
  };
  return _cmocka_run_group_tests(name, tests, sizeof tests / sizeof tests[0], esc_setup,
                                 esc_teardown);
}

#endif
