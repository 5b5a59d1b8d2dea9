/* The event store contract suite: the same tests on SQLite, PostgreSQL
 * and MariaDB. A program includes this header and calls esc_run(url,
 * "name"). Streams and categories carry the process id ("c<pid>-...") so
 * runs against a shared server don't see each other's events. */
#ifndef TRELLIS_TESTS_ES_CONTRACT_H
#define TRELLIS_TESTS_ES_CONTRACT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <cmocka.h>
#include <jansson.h>

#include <trellis/clock.h>
#include <trellis/cqrs.h>
#include <trellis/db.h>
#include <trellis/error.h>
#include <trellis/eventstore.h>
#include <trellis/log.h>
#include <trellis/metrics.h>

#pragma GCC diagnostic ignored "-Wunused-function"

static const char *esc_url;
static tl_db *esc_db;
static tl_es *esc_es;

/* "c<pid>" and "c<pid>-<name>": this run's category and its streams. */
static const char *esc_cat(void)
{
  static char buf[32];
  snprintf(buf, sizeof buf, "c%d", (int)getpid());
  return buf;
}

static const char *esc_s(const char *name)
{
  static _Thread_local char buf[8][128];
  static _Thread_local int k;
  char *b = buf[k++ % 8];
  snprintf(b, 128, "%s-%s", esc_cat(), name);
  return b;
}

static tl_db *esc_connect(int max)
{
  tl_db *db;
  tl_db_config cfg = { .url = esc_url, .max_connections = max, .name = "es",
                       .acquire_timeout_us = 30000000 };
  int rc = tl_db_connect(&db, &cfg);
  if (rc) fail_msg("connect %s: %s", esc_url, tl_error_last());
  return db;
}

static int esc_setup(void **state)
{
  (void)state;
  tl_log_set_level(TL_LOG_ERROR);
  esc_db = esc_connect(24);
  int rc = tl_es_open(&esc_es, &(tl_es_config){ .db = esc_db });
  if (rc) {
    fprintf(stderr, "open: %s\n", tl_error_last());
    return -1;
  }
  /* The seed's example uses the literal stream "user-123". */
  tl_db_exec(esc_db, NULL, "DELETE FROM trellis_es_events WHERE stream = 'user-123'", TL_NOARGS);
  tl_db_exec(esc_db, NULL, "DELETE FROM trellis_es_streams WHERE stream = 'user-123'", TL_NOARGS);
  tl_db_exec(esc_db, NULL, "DELETE FROM trellis_es_snapshots WHERE stream = 'user-123'", TL_NOARGS);
  return 0;
}

static int esc_teardown(void **state)
{
  (void)state;
  tl_es_close(esc_es);
  tl_db_close(esc_db);
  return 0;
}

static tl_event esc_ev(const char *stream, const char *type, const char *data)
{
  return (tl_event){ .aggregate_id = stream, .event_type = type, .data = data };
}

static void esc_ok(int rc, const char *what)
{
  if (rc) fail_msg("%s: %s (%s)", what, tl_status_name(rc), tl_error_last());
}

/* ---- the seed's example ------------------------------------------------ */

typedef struct esc_user {
  char name[64], email[64];
  int64_t version;
} esc_user;

static void esc_user_apply(esc_user *u, const tl_event *e)
{
  json_t *d = json_loads(e->data, 0, NULL);
  assert_non_null(d);
  if (strcmp(e->event_type, "UserCreated") == 0) {
    snprintf(u->name, sizeof u->name, "%s", json_string_value(json_object_get(d, "name")));
    snprintf(u->email, sizeof u->email, "%s", json_string_value(json_object_get(d, "email")));
  } else if (strcmp(e->event_type, "EmailChanged") == 0) {
    snprintf(u->email, sizeof u->email, "%s", json_string_value(json_object_get(d, "email")));
  }
  u->version = e->version;
  json_decref(d);
}

static void esc_seed_example(void **state)
{
  (void)state;
  tl_event e = { .aggregate_id = "user-123", .event_type = "UserCreated",
                 .data = "{\"name\":\"John\",\"email\":\"john@example.com\"}", .version = 1 };
  esc_ok(tl_es_append(esc_es, &e, 1), "append");
  assert_int_equal(e.version, 1);
  assert_true(e.position > 0);
  assert_int_equal(strlen(e.id), 36);
  tl_event_list *evs;
  esc_ok(tl_es_get_events(esc_es, "user-123", &evs), "get");
  assert_int_equal(evs->count, 1);
  assert_string_equal(evs->events[0].event_type, "UserCreated");
  assert_string_equal(evs->events[0].category, "user");
  assert_string_equal(evs->events[0].id, e.id);
  esc_user u = { 0 };
  for (size_t i = 0; i < evs->count; i++) esc_user_apply(&u, &evs->events[i]);
  assert_string_equal(u.name, "John");
  assert_string_equal(u.email, "john@example.com");
  assert_int_equal(u.version, 1);
  tl_event_list_free(evs);
  /* A second UserCreated at version 1 conflicts and writes nothing. */
  tl_event again = { .aggregate_id = "user-123", .event_type = "UserCreated",
                     .data = "{\"name\":\"Jane\",\"email\":\"jane@example.com\"}", .version = 1 };
  assert_int_equal(tl_es_append(esc_es, &again, 1), TL_ECONFLICT);
  assert_non_null(strstr(tl_error_last(), "expected version 0, found 1"));
  esc_ok(tl_es_get_events(esc_es, "user-123", &evs), "get");
  assert_int_equal(evs->count, 1);
  tl_event_list_free(evs);
}

/* ---- expected versions -------------------------------------------------- */

static void esc_expected_versions(void **state)
{
  (void)state;
  const char *s = esc_s("expect");
  tl_event e = esc_ev(s, "A", "{}");
  assert_int_equal(tl_es_append_to(esc_es, s, TL_ES_EXISTS, &e, 1), TL_ECONFLICT);
  assert_non_null(strstr(tl_error_last(), "found 0"));
  assert_int_equal(tl_es_append_to(esc_es, s, 3, &e, 1), TL_ECONFLICT);
  e = esc_ev(s, "A", "{}");
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_NO_STREAM, &e, 1), "no stream");
  assert_int_equal(e.version, 1);
  tl_event b[3] = { esc_ev(s, "B", "{\"i\":1}"), esc_ev(s, "B", "{\"i\":2}"), esc_ev(s, "B", "{\"i\":3}") };
  assert_int_equal(tl_es_append_to(esc_es, s, TL_ES_NO_STREAM, b, 3), TL_ECONFLICT);
  assert_non_null(strstr(tl_error_last(), "expected version no stream, found 1"));
  memset(b[0].id, 0, sizeof b[0].id);
  memset(b[1].id, 0, sizeof b[1].id);
  memset(b[2].id, 0, sizeof b[2].id);
  esc_ok(tl_es_append_to(esc_es, s, 1, b, 3), "exact");
  assert_int_equal(b[2].version, 4);
  assert_true(b[0].position < b[1].position && b[1].position < b[2].position);
  tl_event c = esc_ev(s, "C", "{}");
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_EXISTS, &c, 1), "exists");
  tl_event d = esc_ev(s, "D", "{}");
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_ANY, &d, 1), "any");
  assert_int_equal(d.version, 6);
  tl_event bad = esc_ev(s, "E", "{not json");
  assert_int_equal(tl_es_append_to(esc_es, s, TL_ES_ANY, &bad, 1), TL_EINVAL);
  tl_event other = esc_ev("elsewhere", "E", "{}");
  assert_int_equal(tl_es_append_to(esc_es, s, TL_ES_ANY, &other, 1), TL_EINVAL);
  int64_t v = 0;
  esc_ok(tl_es_stream_version(esc_es, s, &v), "version");
  assert_int_equal(v, 6);
}

/* ---- 8 writers, one stream, exact expected versions --------------------- */

typedef struct esc_race {
  const char *stream;
  int wins, losses, other;
} esc_race;

static void *esc_race_main(void *arg)
{
  esc_race *r = arg;
  for (int i = 0; i < 25; i++) {
    int64_t v = 0;
    if (tl_es_stream_version(esc_es, r->stream, &v) != 0) {
      r->other++;
      continue;
    }
    tl_event e = esc_ev(r->stream, "Raced", "{}");
    int rc = tl_es_append_to(esc_es, r->stream, v, &e, 1);
    if (rc == 0) r->wins++;
    else if (rc == TL_ECONFLICT) r->losses++;
    else {
      fprintf(stderr, "race: %s %s\n", tl_status_name(rc), tl_error_last());
      r->other++;
    }
  }
  return NULL;
}

static void esc_concurrent_exact(void **state)
{
  (void)state;
  const char *s = esc_s("race");
  char stream[128];
  snprintf(stream, sizeof stream, "%s", s);
  pthread_t th[8];
  esc_race r[8];
  for (int i = 0; i < 8; i++) {
    r[i] = (esc_race){ .stream = stream };
    pthread_create(&th[i], NULL, esc_race_main, &r[i]);
  }
  int wins = 0, losses = 0, other = 0;
  for (int i = 0; i < 8; i++) {
    pthread_join(th[i], NULL);
    wins += r[i].wins;
    losses += r[i].losses;
    other += r[i].other;
  }
  assert_int_equal(other, 0);
  assert_int_equal(wins + losses, 8 * 25);
  assert_true(wins > 0);
  tl_event_list *l;
  esc_ok(tl_es_get_events(esc_es, stream, &l), "read");
  assert_int_equal((int)l->count, wins);
  for (size_t i = 0; i < l->count; i++) assert_int_equal(l->events[i].version, (int64_t)i + 1);
  tl_event_list_free(l);
}

/* ---- idempotent re-append ----------------------------------------------- */

static void esc_idempotent(void **state)
{
  (void)state;
  const char *s = esc_s("idem");
  tl_event e[2] = { esc_ev(s, "A", "{}"), esc_ev(s, "B", "{}") };
  tl_uuid7(e[0].id);
  tl_uuid7(e[1].id);
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_NO_STREAM, e, 2), "first");
  int64_t p0 = e[0].position, p1 = e[1].position;
  tl_event again[2] = { esc_ev(s, "A", "{}"), esc_ev(s, "B", "{}") };
  memcpy(again[0].id, e[0].id, sizeof e[0].id);
  memcpy(again[1].id, e[1].id, sizeof e[1].id);
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_NO_STREAM, again, 2), "same expected");
  assert_int_equal(again[0].position, p0);
  assert_int_equal(again[1].position, p1);
  assert_int_equal(again[1].version, 2);
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_ANY, again, 2), "any");
  assert_int_equal(again[1].position, p1);
  int64_t v;
  esc_ok(tl_es_stream_version(esc_es, s, &v), "version");
  assert_int_equal(v, 2);
  /* The same id with another type is a conflict, not a re-append. */
  tl_event clash = esc_ev(s, "Other", "{}");
  memcpy(clash.id, e[0].id, sizeof e[0].id);
  assert_int_equal(tl_es_append_to(esc_es, s, TL_ES_ANY, &clash, 1), TL_ECONFLICT);
  esc_ok(tl_es_stream_version(esc_es, s, &v), "version");
  assert_int_equal(v, 2);
}

/* ---- reads -------------------------------------------------------------- */

static void esc_fill(const char *s, int n, const char *type)
{
  for (int i = 0; i < n; i++) {
    char data[64];
    snprintf(data, sizeof data, "{\"i\":%d}", i + 1);
    tl_event e = esc_ev(s, type, data);
    esc_ok(tl_es_append_to(esc_es, s, TL_ES_ANY, &e, 1), "fill");
  }
}

static void esc_reads(void **state)
{
  (void)state;
  const char *s = esc_s("reads");
  esc_fill(s, 10, "Step");
  tl_event_list *l;
  esc_ok(tl_es_read_stream(esc_es, s, &(tl_es_read_opts){ .from_version = 4, .max_count = 3 }, &l), "fwd");
  assert_int_equal(l->count, 3);
  assert_int_equal(l->events[0].version, 4);
  assert_int_equal(l->events[2].version, 6);
  tl_event_list_free(l);
  esc_ok(tl_es_read_stream(esc_es, s, &(tl_es_read_opts){ .backward = true, .max_count = 2 }, &l), "back");
  assert_int_equal(l->count, 2);
  assert_int_equal(l->events[0].version, 10);
  assert_int_equal(l->events[1].version, 9);
  tl_event_list_free(l);
  esc_ok(tl_es_read_stream(esc_es, s, &(tl_es_read_opts){ .backward = true, .from_version = 5 }, &l), "back5");
  assert_int_equal(l->count, 5);
  assert_int_equal(l->events[0].version, 5);
  tl_event_list_free(l);
  esc_ok(tl_es_read_stream(esc_es, s, &(tl_es_read_opts){ .to_version = 7 }, &l), "upto");
  assert_int_equal(l->count, 7);
  assert_string_equal(l->events[6].data, "{\"i\":7}");
  tl_event_list_free(l);
  esc_ok(tl_es_get_events(esc_es, esc_s("never"), &l), "empty");
  assert_int_equal(l->count, 0);
  tl_event_list_free(l);
}

static void esc_temporal(void **state)
{
  (void)state;
  const char *s = esc_s("temporal");
  tl_event a = esc_ev(s, "UserCreated", "{\"name\":\"John\",\"email\":\"john@example.com\"}");
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_NO_STREAM, &a, 1), "a");
  tl_sleep_us(3000);
  int64_t between = tl_time_now_us();
  tl_sleep_us(3000);
  tl_event b = esc_ev(s, "EmailChanged", "{\"email\":\"j@example.org\"}");
  esc_ok(tl_es_append_to(esc_es, s, 1, &b, 1), "b");
  tl_event_list *l;
  esc_ok(tl_es_get_events_until(esc_es, s, between, &l), "until");
  assert_int_equal(l->count, 1);
  esc_user u = { 0 };
  esc_user_apply(&u, &l->events[0]);
  assert_string_equal(u.email, "john@example.com");
  tl_event_list_free(l);
  esc_ok(tl_es_get_events_until(esc_es, s, tl_time_now_us(), &l), "now");
  assert_int_equal(l->count, 2);
  tl_event_list_free(l);
  esc_ok(tl_es_get_events_until(esc_es, s, a.timestamp_us - 1, &l), "before");
  assert_int_equal(l->count, 0);
  tl_event_list_free(l);
}

/* Wait until the last event of `stream` is readable in $all. On
 * PostgreSQL a committed event stays below the horizon while an older
 * transaction anywhere on the server runs (other tests share it). */
static void esc_wait_visible(const char *stream)
{
  tl_event_list *l;
  esc_ok(tl_es_read_stream(esc_es, stream, &(tl_es_read_opts){ .backward = true, .max_count = 1 },
                           &l), "last");
  assert_int_equal(l->count, 1);
  tl_es_checkpoint cp;
  esc_ok(tl_es_checkpoint_at(esc_es, l->events[0].position, &cp), "checkpoint");
  tl_event_list_free(l);
  int64_t end = tl_time_mono_us() + 30000000;
  size_t n = 0;
  while (n == 0 && tl_time_mono_us() < end) {
    esc_ok(tl_es_read_all(esc_es, &cp, NULL, 1, &l), "visible");
    n = l->count;
    tl_event_list_free(l);
    if (n == 0) tl_sleep_us(5000);
  }
  assert_int_equal(n, 1);
}

static void esc_all_and_category(void **state)
{
  (void)state;
  char cat[64];
  snprintf(cat, sizeof cat, "all%d", (int)getpid());
  char s1[96], s2[96];
  snprintf(s1, sizeof s1, "%s-1", cat);
  snprintf(s2, sizeof s2, "%s-2", cat);
  for (int i = 0; i < 25; i++) {
    tl_event e = esc_ev(i % 2 ? s1 : s2, i % 3 ? "Tick" : "Tock", "{}");
    esc_ok(tl_es_append_to(esc_es, e.aggregate_id, TL_ES_ANY, &e, 1), "append");
  }
  esc_wait_visible(s2); /* the last one went to s2 */
  tl_es_checkpoint cp = { 0, 0 };
  tl_es_filter f = { .category = cat };
  int total = 0;
  int64_t last = 0;
  for (;;) {
    tl_event_list *l;
    esc_ok(tl_es_read_all(esc_es, &cp, &f, 7, &l), "all");
    if (l->count == 0) {
      tl_event_list_free(l);
      break;
    }
    assert_true(l->count <= 7);
    for (size_t i = 0; i < l->count; i++) {
      assert_string_equal(l->events[i].category, cat);
      assert_true(l->events[i].position > last);
      last = l->events[i].position;
      total++;
    }
    cp = (tl_es_checkpoint){ l->events[l->count - 1].tx, l->events[l->count - 1].position };
    tl_event_list_free(l);
  }
  assert_int_equal(total, 25);
  const char *types[] = { "Tock" };
  f.types = types;
  f.ntypes = 1;
  tl_event_list *l;
  esc_ok(tl_es_read_all(esc_es, NULL, &f, 100, &l), "types");
  assert_int_equal(l->count, 9);
  tl_es_checkpoint at;
  esc_ok(tl_es_checkpoint_at(esc_es, l->events[3].position, &at), "at");
  tl_event_list *l2;
  esc_ok(tl_es_read_all(esc_es, &at, &f, 100, &l2), "from");
  assert_int_equal(l2->count, 6);
  assert_int_equal(l2->events[0].position, l->events[3].position);
  tl_event_list_free(l2);
  tl_event_list_free(l);
}

/* ---- snapshots ---------------------------------------------------------- */

static json_t *esc_fold(json_t *state, const tl_event *e)
{
  json_t *d = json_loads(e->data, 0, NULL);
  json_object_set_new(state, "sum", json_integer(json_integer_value(json_object_get(state, "sum")) +
                                                 json_integer_value(json_object_get(d, "i"))));
  json_object_set_new(state, "n", json_integer(json_integer_value(json_object_get(state, "n")) + 1));
  json_decref(d);
  return state;
}

static void esc_snapshots(void **state)
{
  (void)state;
  const char *s = esc_s("snap");
  esc_fill(s, 30, "Add");
  tl_event_list *l;
  esc_ok(tl_es_read_stream(esc_es, s, &(tl_es_read_opts){ .to_version = 20 }, &l), "first20");
  json_t *st = json_object();
  for (size_t i = 0; i < l->count; i++) esc_fold(st, &l->events[i]);
  tl_event_list_free(l);
  char *js = json_dumps(st, JSON_COMPACT | JSON_SORT_KEYS);
  esc_ok(tl_es_snapshot_save(esc_es, s, 20, 2, js), "save");
  free(js);
  json_decref(st);
  tl_es_snapshot snap;
  esc_ok(tl_es_snapshot_load(esc_es, s, &snap), "load");
  assert_int_equal(snap.version, 20);
  assert_int_equal(snap.schema_version, 2);
  json_t *from_snap = json_loads(snap.state, 0, NULL);
  esc_ok(tl_es_read_stream(esc_es, s, &(tl_es_read_opts){ .from_version = snap.version + 1 }, &l), "tail");
  assert_int_equal(l->count, 10);
  for (size_t i = 0; i < l->count; i++) esc_fold(from_snap, &l->events[i]);
  tl_event_list_free(l);
  tl_es_snapshot_free(&snap);
  json_t *full = json_object();
  esc_ok(tl_es_get_events(esc_es, s, &l), "all");
  for (size_t i = 0; i < l->count; i++) esc_fold(full, &l->events[i]);
  tl_event_list_free(l);
  assert_true(json_equal(full, from_snap));
  assert_int_equal(json_integer_value(json_object_get(full, "sum")), 30 * 31 / 2);
  json_decref(full);
  json_decref(from_snap);
  assert_int_equal(tl_es_snapshot_load(esc_es, esc_s("nosnap"), &snap), TL_ENOTFOUND);
}

/* ---- metadata, soft delete, truncate ------------------------------------ */

static void esc_metadata_delete_truncate(void **state)
{
  (void)state;
  const char *s = esc_s("meta");
  char *m;
  esc_ok(tl_es_stream_metadata_get(esc_es, s, &m), "get none");
  assert_string_equal(m, "{}");
  free(m);
  esc_ok(tl_es_stream_metadata_set(esc_es, s, "{\"owner\":\"ops\"}"), "set");
  esc_ok(tl_es_stream_metadata_get(esc_es, s, &m), "get");
  json_t *j = json_loads(m, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(j, "owner")), "ops");
  json_decref(j);
  free(m);
  assert_int_equal(tl_es_stream_metadata_set(esc_es, s, "[1]"), TL_EINVAL);
  /* Metadata before any event: the stream still counts as new. */
  tl_event e = esc_ev(s, "A", "{}");
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_NO_STREAM, &e, 1), "first");
  esc_fill(s, 5, "B");
  esc_wait_visible(s);
  esc_ok(tl_es_stream_truncate_before(esc_es, s, 4), "truncate");
  tl_event_list *l;
  esc_ok(tl_es_get_events(esc_es, s, &l), "read");
  assert_int_equal(l->count, 3);
  assert_int_equal(l->events[0].version, 4);
  tl_event_list_free(l);
  esc_ok(tl_es_stream_delete(esc_es, s), "delete");
  assert_int_equal(tl_es_get_events(esc_es, s, &l), TL_ENOTFOUND);
  tl_event again = esc_ev(s, "C", "{}");
  assert_int_equal(tl_es_append_to(esc_es, s, TL_ES_ANY, &again, 1), TL_ESTATE);
  assert_int_equal(tl_es_stream_delete(esc_es, esc_s("nothing")), TL_ENOTFOUND);
  /* Deleted streams' events stay in $all. */
  tl_es_filter f = { .category = esc_cat() };
  esc_ok(tl_es_read_all(esc_es, NULL, &f, 100000, &l), "all");
  int seen = 0;
  for (size_t i = 0; i < l->count; i++) seen += strcmp(l->events[i].aggregate_id, s) == 0;
  assert_int_equal(seen, 6);
  tl_event_list_free(l);
}

/* ---- upcasting ---------------------------------------------------------- */

static int esc_up_v1(const char *type, const char *data, char **out, void *ctx)
{
  (void)type;
  (void)ctx;
  /* v1 had "name"; v2 splits it into "first" and "last". */
  json_t *d = json_loads(data, 0, NULL);
  const char *name = json_string_value(json_object_get(d, "name"));
  const char *sp = name ? strchr(name, ' ') : NULL;
  json_t *n = json_pack("{s:s%, s:s}", "first", name ? name : "", sp ? (int)(sp - name) : (int)strlen(name ? name : ""),
                        "last", sp ? sp + 1 : "");
  *out = json_dumps(n, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(n);
  json_decref(d);
  return 0;
}

static int esc_up_v2(const char *type, const char *data, char **out, void *ctx)
{
  (void)type;
  (*(int *)ctx)++;
  json_t *d = json_loads(data, 0, NULL);
  json_object_set_new(d, "upcast", json_true());
  *out = json_dumps(d, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(d);
  return 0;
}

static void esc_upcasting(void **state)
{
  (void)state;
  const char *s = esc_s("upcast");
  tl_event old = esc_ev(s, "Named", "{\"name\":\"John Smith\"}");
  old.schema_version = 1;
  tl_event cur = esc_ev(s, "Named", "{\"first\":\"Ann\",\"last\":\"Lee\"}");
  cur.schema_version = 3;
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_ANY, &old, 1), "old");
  esc_ok(tl_es_append_to(esc_es, s, TL_ES_ANY, &cur, 1), "cur");
  int calls = 0;
  esc_ok(tl_es_upcaster_register(esc_es, "Named", 1, esc_up_v1, NULL), "reg1");
  esc_ok(tl_es_upcaster_register(esc_es, "Named", 2, esc_up_v2, &calls), "reg2");
  tl_event_list *l;
  esc_ok(tl_es_get_events(esc_es, s, &l), "read");
  assert_int_equal(l->count, 2);
  assert_int_equal(l->events[0].schema_version, 3);
  assert_string_equal(l->events[0].data, "{\"first\":\"John\",\"last\":\"Smith\",\"upcast\":true}");
  assert_int_equal(l->events[1].schema_version, 3);
  assert_string_equal(l->events[1].data, "{\"first\":\"Ann\",\"last\":\"Lee\"}");
  assert_int_equal(calls, 1);
  tl_event_list_free(l);
}

/* ---- subscriptions ------------------------------------------------------ */

typedef struct esc_sink {
  pthread_mutex_t mu;
  int64_t *pos;
  size_t n, cap;
  int fail_once_at; /* fail the first time this count is reached */
  bool failed;
  const char *table; /* transactional: insert each event's position here */
} esc_sink;

static int esc_sink_handler(const tl_event *ev, tl_tx *tx, void *ctx)
{
  esc_sink *k = ctx;
  pthread_mutex_lock(&k->mu);
  if (k->fail_once_at && !k->failed && (int)k->n == k->fail_once_at) {
    k->failed = true;
    pthread_mutex_unlock(&k->mu);
    return TL_EIO;
  }
  pthread_mutex_unlock(&k->mu);
  if (tx && k->table) {
    char sql[160];
    snprintf(sql, sizeof sql, "INSERT INTO %s (position) VALUES ($1)", k->table);
    int rc = tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_int(ev->position)));
    if (rc) return rc;
  }
  pthread_mutex_lock(&k->mu);
  if (k->n == k->cap) {
    k->cap = k->cap ? k->cap * 2 : 256;
    k->pos = realloc(k->pos, k->cap * sizeof *k->pos);
  }
  k->pos[k->n++] = ev->position;
  pthread_mutex_unlock(&k->mu);
  return 0;
}

static size_t esc_sink_count(esc_sink *k)
{
  pthread_mutex_lock(&k->mu);
  size_t n = k->n;
  pthread_mutex_unlock(&k->mu);
  return n;
}

static bool esc_wait_count(esc_sink *k, size_t want, int64_t timeout_us)
{
  int64_t end = tl_time_mono_us() + timeout_us;
  while (esc_sink_count(k) < want && tl_time_mono_us() < end) tl_sleep_us(2000);
  return esc_sink_count(k) >= want;
}

static void esc_subscription_catchup_live(void **state)
{
  (void)state;
  char cat[64], name[96], stream[96];
  snprintf(cat, sizeof cat, "sub%d", (int)getpid());
  snprintf(name, sizeof name, "%s-sub", cat);
  snprintf(stream, sizeof stream, "%s-1", cat);
  for (int i = 0; i < 20; i++) {
    tl_event e = esc_ev(stream, i % 2 ? "Odd" : "Even", "{}");
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "pre");
  }
  esc_sink k = { .mu = PTHREAD_MUTEX_INITIALIZER, .fail_once_at = 5 };
  const char *types[] = { "Even" };
  tl_es_sub_opts o = { .name = name, .filter = { .category = cat, .types = types, .ntypes = 1 },
                       .batch = 4, .poll_max_us = 50000, .retry_us = 10000 };
  tl_es_sub *sub;
  esc_ok(tl_es_subscribe(esc_es, &o, esc_sink_handler, &k, &sub), "subscribe");
  assert_true(esc_wait_count(&k, 10, 10000000));
  for (int i = 0; i < 10; i++) {
    tl_event e = esc_ev(stream, "Even", "{}");
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "live");
  }
  assert_true(esc_wait_count(&k, 20, 10000000));
  assert_true(k.failed);
  assert_true(tl_es_sub_is_leader(sub));
  tl_es_sub_stop(sub);
  /* Every Even event once, in order (the failure retried, not skipped). */
  assert_int_equal(k.n, 20);
  for (size_t i = 1; i < k.n; i++) assert_true(k.pos[i] > k.pos[i - 1]);
  tl_es_checkpoint cp;
  esc_ok(tl_es_checkpoint_load(esc_es, name, &cp), "cp");
  assert_int_equal(cp.position, k.pos[19]);
  /* A restart resumes after the checkpoint. */
  esc_sink k2 = { .mu = PTHREAD_MUTEX_INITIALIZER };
  esc_ok(tl_es_subscribe(esc_es, &o, esc_sink_handler, &k2, &sub), "again");
  tl_event e = esc_ev(stream, "Even", "{}");
  esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "one more");
  assert_true(esc_wait_count(&k2, 1, 10000000));
  tl_sleep_us(100000);
  tl_es_sub_stop(sub);
  assert_int_equal(k2.n, 1);
  assert_int_equal(k2.pos[0], e.position);
  free(k.pos);
  free(k2.pos);
}

static void esc_subscription_transactional(void **state)
{
  (void)state;
  char cat[64], name[96], stream[96], table[64];
  snprintf(cat, sizeof cat, "txs%d", (int)getpid());
  snprintf(name, sizeof name, "%s-sub", cat);
  snprintf(stream, sizeof stream, "%s-1", cat);
  snprintf(table, sizeof table, "esc%d_seen", (int)getpid());
  char sql[200];
  snprintf(sql, sizeof sql, "CREATE TABLE %s (position BIGINT PRIMARY KEY)", table);
  esc_ok(tl_db_exec(esc_db, NULL, sql, TL_NOARGS), "create");
  for (int i = 0; i < 12; i++) {
    tl_event e = esc_ev(stream, "T", "{}");
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "append");
  }
  esc_sink k = { .mu = PTHREAD_MUTEX_INITIALIZER, .fail_once_at = 6, .table = table };
  tl_es_sub_opts o = { .name = name, .filter = { .category = cat }, .transactional = true,
                       .batch = 5, .retry_us = 10000 };
  tl_es_sub *sub;
  esc_ok(tl_es_subscribe(esc_es, &o, esc_sink_handler, &k, &sub), "subscribe");
  int64_t end = tl_time_mono_us() + 10000000, rows = 0;
  tl_es_checkpoint cp = { 0, 0 };
  while (tl_time_mono_us() < end) {
    tl_es_checkpoint_load(esc_es, name, &cp);
    if (cp.position) {
      tl_rows *r;
      snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM %s", table);
      esc_ok(tl_db_query(esc_db, &r, sql, TL_NOARGS), "count");
      tl_rows_next(r);
      tl_rows_int(r, 0, &rows);
      tl_rows_free(r);
      if (rows == 12) break;
    }
    tl_sleep_us(5000);
  }
  tl_es_sub_stop(sub);
  assert_int_equal(rows, 12);
  /* The failing batch was rolled back whole: its rows are not doubled,
   * and the checkpoint matches the last row written. */
  snprintf(sql, sizeof sql, "SELECT MAX(position) FROM %s", table);
  tl_rows *r;
  esc_ok(tl_db_query(esc_db, &r, sql, TL_NOARGS), "max");
  tl_rows_next(r);
  int64_t maxpos = 0;
  tl_rows_int(r, 0, &maxpos);
  tl_rows_free(r);
  esc_ok(tl_es_checkpoint_load(esc_es, name, &cp), "cp");
  assert_int_equal(cp.position, maxpos);
  snprintf(sql, sizeof sql, "DROP TABLE %s", table);
  tl_db_exec(esc_db, NULL, sql, TL_NOARGS);
  free(k.pos);
}

static void esc_subscription_lease(void **state)
{
  (void)state;
  char cat[64], name[96], stream[96];
  snprintf(cat, sizeof cat, "lease%d", (int)getpid());
  snprintf(name, sizeof name, "%s-sub", cat);
  snprintf(stream, sizeof stream, "%s-1", cat);
  /* Two replicas: separate stores on separate connections. */
  tl_db *db2 = esc_connect(4);
  tl_es *es2;
  esc_ok(tl_es_open(&es2, &(tl_es_config){ .db = db2 }), "open2");
  esc_sink a = { .mu = PTHREAD_MUTEX_INITIALIZER }, b = { .mu = PTHREAD_MUTEX_INITIALIZER };
  tl_es_sub_opts o = { .name = name, .filter = { .category = cat }, .lease_us = 400000,
                       .poll_max_us = 20000 };
  tl_es_sub *sa, *sb;
  esc_ok(tl_es_subscribe(esc_es, &o, esc_sink_handler, &a, &sa), "a");
  tl_sleep_us(100000);
  esc_ok(tl_es_subscribe(es2, &o, esc_sink_handler, &b, &sb), "b");
  for (int i = 0; i < 10; i++) {
    tl_event e = esc_ev(stream, "L", "{}");
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "append");
  }
  assert_true(esc_wait_count(&a, 10, 10000000));
  tl_sleep_us(200000);
  assert_true(tl_es_sub_is_leader(sa));
  assert_false(tl_es_sub_is_leader(sb));
  assert_int_equal(esc_sink_count(&b), 0);
  /* The leader goes away: the other takes over from its checkpoint. */
  tl_es_sub_stop(sa);
  for (int i = 0; i < 5; i++) {
    tl_event e = esc_ev(stream, "L", "{}");
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "append");
  }
  assert_true(esc_wait_count(&b, 5, 10000000));
  tl_sleep_us(100000);
  assert_int_equal(esc_sink_count(&b), 5);
  assert_true(tl_es_sub_is_leader(sb));
  tl_es_sub_stop(sb);
  tl_es_close(es2);
  tl_db_close(db2);
  free(a.pos);
  free(b.pos);
}

/* ---- subscription lag gauges --------------------------------------------- */

typedef struct esc_gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool entered, open;
  size_t handled;
} esc_gate;

/* Holds the first event until the test opens the gate. */
static int esc_gate_handler(const tl_event *ev, tl_tx *tx, void *ctx)
{
  (void)ev, (void)tx;
  esc_gate *g = ctx;
  pthread_mutex_lock(&g->mu);
  g->entered = true;
  pthread_cond_broadcast(&g->cv);
  while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
  g->handled++;
  pthread_mutex_unlock(&g->mu);
  return 0;
}

static double esc_gauge(tl_metrics *reg, const char *name, const char *sub)
{
  tl_metric *m;
  esc_ok(tl_metrics_gauge(reg, name, "x", "subscription", &m), name);
  return tl_series_value(tl_metric_series(m, TL_LABELS(sub)));
}

/* trellis_es_subscription_lag_events counts what is visible and not yet
 * handled (past the batch too), _lag_seconds is the age of the oldest of
 * them; both are 0 once caught up. */
static void esc_subscription_lag_metrics(void **state)
{
  (void)state;
  char cat[64], name[96], stream[96];
  snprintf(cat, sizeof cat, "lag%d", (int)getpid());
  snprintf(name, sizeof name, "%s-sub", cat);
  snprintf(stream, sizeof stream, "%s-1", cat);
  tl_metrics *reg;
  esc_ok(tl_metrics_new(&reg), "registry");
  tl_es *es;
  esc_ok(tl_es_open(&es, &(tl_es_config){ .db = esc_db, .metrics = reg }), "open");
  for (int i = 0; i < 30; i++) {
    tl_event e = esc_ev(stream, "Lagged", "{}");
    esc_ok(tl_es_append_to(es, stream, TL_ES_ANY, &e, 1), "append");
  }
  tl_sleep_us(300000); /* the oldest is at least this old */
  esc_gate g = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
  tl_es_sub_opts o = { .name = name, .filter = { .category = cat }, .batch = 5,
                       .poll_max_us = 20000 };
  tl_es_sub *sub;
  esc_ok(tl_es_subscribe(es, &o, esc_gate_handler, &g, &sub), "subscribe");
  pthread_mutex_lock(&g.mu);
  while (!g.entered) pthread_cond_wait(&g.cv, &g.mu);
  pthread_mutex_unlock(&g.mu);
  assert_int_equal((int)esc_gauge(reg, "trellis_es_subscription_lag_events", name), 30);
  double age = esc_gauge(reg, "trellis_es_subscription_lag_seconds", name);
  assert_true(age >= 0.3 && age < 60);
  pthread_mutex_lock(&g.mu);
  g.open = true;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  int64_t end = tl_time_mono_us() + 10000000;
  while (tl_time_mono_us() < end &&
         (esc_gauge(reg, "trellis_es_subscription_lag_events", name) != 0 || g.handled < 30))
    tl_sleep_us(5000);
  assert_int_equal(g.handled, 30);
  assert_true(esc_gauge(reg, "trellis_es_subscription_lag_events", name) == 0);
  assert_true(esc_gauge(reg, "trellis_es_subscription_lag_seconds", name) == 0);
  tl_es_sub_stop(sub);
  tl_es_close(es);
  tl_metrics_free(reg);
}

/* ---- no skipped events -------------------------------------------------- */

/* Writers hold their transaction open a random while after inserting and
 * roll back some; one subscriber must see every committed event exactly
 * once, in global order. */
typedef struct esc_writer {
  int id, committed;
  int64_t *positions; /* committed */
} esc_writer;

static int esc_nowriters;

static void *esc_writer_main(void *arg)
{
  esc_writer *w = arg;
  char stream[96];
  snprintf(stream, sizeof stream, "ns%d-w%d", (int)getpid(), w->id);
  w->positions = calloc(1000, sizeof(int64_t));
  for (int i = 0; i < 40; i++) {
    tl_tx *tx;
    if (tl_db_begin(esc_db, &tx) != 0) {
      tl_sleep_us(1000);
      continue;
    }
    tl_event e[2] = { esc_ev(stream, "N", "{}"), esc_ev(stream, "N", "{}") };
    size_t n = 1 + (size_t)(tl_rand64() % 2);
    int rc = tl_es_append_tx(esc_es, tx, stream, TL_ES_ANY, e, n);
    tl_sleep_us((int64_t)(tl_rand64() % (unsigned)esc_nowriters));
    bool rollback = rc != 0 || tl_rand64() % 5 == 0;
    if (rollback) {
      tl_tx_rollback(tx);
      continue;
    }
    if (tl_tx_commit(tx) == 0)
      for (size_t k = 0; k < n; k++) w->positions[w->committed++] = e[k].position;
  }
  return NULL;
}

static int esc_cmp64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static void esc_no_skip(void **state)
{
  (void)state;
  char cat[64], name[96];
  snprintf(cat, sizeof cat, "ns%d", (int)getpid());
  snprintf(name, sizeof name, "%s-sub", cat);
  /* SQLite serialises writers, so it gets shorter holds. */
  bool sqlite = tl_db_dialect_of(esc_db) == TL_DB_SQLITE;
  esc_nowriters = sqlite ? 300 : 20000;
  esc_sink k = { .mu = PTHREAD_MUTEX_INITIALIZER };
  tl_es_sub_opts o = { .name = name, .filter = { .category = cat }, .batch = 16, .poll_max_us = 5000 };
  tl_es_sub *sub;
  esc_ok(tl_es_subscribe(esc_es, &o, esc_sink_handler, &k, &sub), "subscribe");
  enum { W = 16 };
  pthread_t th[W];
  esc_writer w[W];
  for (int i = 0; i < W; i++) {
    w[i] = (esc_writer){ .id = i };
    pthread_create(&th[i], NULL, esc_writer_main, &w[i]);
  }
  size_t total = 0;
  for (int i = 0; i < W; i++) {
    pthread_join(th[i], NULL);
    total += (size_t)w[i].committed;
  }
  assert_true(total > 100);
  assert_true(esc_wait_count(&k, total, 30000000));
  tl_sleep_us(200000);
  tl_es_sub_stop(sub);
  assert_int_equal(k.n, total);
  int64_t *all = calloc(total, sizeof *all);
  size_t at = 0;
  for (int i = 0; i < W; i++) {
    memcpy(all + at, w[i].positions, (size_t)w[i].committed * sizeof(int64_t));
    at += (size_t)w[i].committed;
    free(w[i].positions);
  }
  qsort(all, total, sizeof *all, esc_cmp64);
  int64_t *got = calloc(total, sizeof *got);
  memcpy(got, k.pos, total * sizeof *got);
  qsort(got, total, sizeof *got, esc_cmp64);
  for (size_t i = 0; i < total; i++) assert_int_equal(got[i], all[i]);
  /* Delivered in the store's global order: the order $all reads give. */
  tl_es_filter f = { .category = cat };
  tl_es_checkpoint cp = { 0, 0 };
  size_t idx = 0;
  for (;;) {
    tl_event_list *l;
    esc_ok(tl_es_read_all(esc_es, &cp, &f, 500, &l), "all");
    if (!l->count) {
      tl_event_list_free(l);
      break;
    }
    for (size_t i = 0; i < l->count; i++) {
      assert_true(idx < total);
      assert_int_equal(k.pos[idx], l->events[i].position);
      idx++;
    }
    cp = (tl_es_checkpoint){ l->events[l->count - 1].tx, l->events[l->count - 1].position };
    tl_event_list_free(l);
  }
  assert_int_equal(idx, total);
  free(all);
  free(got);
  free(k.pos);
}

/* ---- projections: rebuild equals live ----------------------------------- */

typedef struct esc_proj {
  char cat[64];
} esc_proj;

static int esc_proj_create(tl_tx *tx, const tl_projection_tables *t, void *ctx)
{
  (void)ctx;
  char sql[256];
  snprintf(sql, sizeof sql, "CREATE TABLE %s (stream VARCHAR(200) PRIMARY KEY, total BIGINT NOT NULL, "
           "n BIGINT NOT NULL)", tl_projection_table(t, "totals"));
  return tl_tx_exec(tx, NULL, sql, TL_NOARGS);
}

static int esc_proj_handle(const tl_event *ev, tl_tx *tx, const tl_projection_tables *t, void *ctx)
{
  (void)ctx;
  json_t *d = json_loads(ev->data, 0, NULL);
  int64_t i = json_integer_value(json_object_get(d, "i"));
  json_decref(d);
  char sql[256];
  snprintf(sql, sizeof sql, "UPDATE %s SET total = total + $1, n = n + 1 WHERE stream = $2",
           tl_projection_table(t, "totals"));
  int64_t n = 0;
  int rc = tl_tx_exec(tx, &n, sql, TL_ARGS(tl_int(i), tl_text(ev->aggregate_id)));
  if (rc || n) return rc;
  snprintf(sql, sizeof sql, "INSERT INTO %s (stream, total, n) VALUES ($1, $2, 1)",
           tl_projection_table(t, "totals"));
  return tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_text(ev->aggregate_id), tl_int(i)));
}

static char *esc_dump_totals(const char *table)
{
  char sql[200];
  snprintf(sql, sizeof sql, "SELECT stream, total, n FROM %s ORDER BY stream", table);
  tl_rows *r;
  esc_ok(tl_db_query(esc_db, &r, sql, TL_NOARGS), "dump");
  size_t cap = 1 << 16, len = 0;
  char *out = calloc(1, cap);
  while (tl_rows_next(r) == 1) {
    const char *s;
    size_t sl;
    int64_t total, n;
    tl_rows_text(r, 0, &s, &sl);
    tl_rows_int(r, 1, &total);
    tl_rows_int(r, 2, &n);
    if (len + sl + 64 < cap) len += (size_t)snprintf(out + len, cap - len, "%.*s=%lld/%lld\n", (int)sl, s,
                                                     (long long)total, (long long)n);
  }
  tl_rows_free(r);
  return out;
}

static void esc_projection_rebuild(void **state)
{
  (void)state;
  esc_proj pc;
  snprintf(pc.cat, sizeof pc.cat, "prj%d", (int)getpid());
  char name[96], table[96];
  snprintf(name, sizeof name, "%s_totals", pc.cat);
  snprintf(table, sizeof table, "%s_totals", pc.cat);
  const char *tables[] = { "totals" };
  tl_projection_def def = { .name = name, .table_prefix = pc.cat, .tables = tables, .ntables = 1,
                            .filter = { .category = pc.cat }, .create = esc_proj_create,
                            .handle = esc_proj_handle, .ctx = &pc, .poll_max_us = 20000 };
  tl_projection *p;
  esc_ok(tl_projection_start(esc_es, &def, &p), "start");
  for (int i = 0; i < 60; i++) {
    char stream[96], data[32];
    snprintf(stream, sizeof stream, "%s-%d", pc.cat, i % 7);
    snprintf(data, sizeof data, "{\"i\":%d}", i);
    tl_event e = esc_ev(stream, "Add", data);
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "append");
  }
  esc_ok(tl_projection_wait(p, 10000000), "caught up");
  char *live = esc_dump_totals(table);
  assert_true(live[0] != '\0');
  /* Appends keep coming while the rebuild runs. */
  for (int i = 60; i < 70; i++) {
    char stream[96], data[32];
    snprintf(stream, sizeof stream, "%s-%d", pc.cat, i % 7);
    snprintf(data, sizeof data, "{\"i\":%d}", i);
    tl_event e = esc_ev(stream, "Add", data);
    esc_ok(tl_es_append_to(esc_es, stream, TL_ES_ANY, &e, 1), "append");
  }
  esc_ok(tl_projection_rebuild(p), "rebuild");
  esc_ok(tl_projection_wait(p, 10000000), "caught up again");
  char *rebuilt = esc_dump_totals(table);
  /* The live projection fed from scratch by hand gives the same. */
  int64_t sum = 0, n = 0;
  for (const char *l = rebuilt; *l; l = strchr(l, '\n') + 1) {
    long long t, c;
    const char *eq = strchr(l, '=');
    sscanf(eq + 1, "%lld/%lld", &t, &c);
    sum += t;
    n += c;
  }
  assert_int_equal(sum, 69 * 70 / 2);
  assert_int_equal(n, 70);
  tl_projection_stop(p);
  /* A second run of the projection agrees with the rebuilt tables. */
  char sql[200];
  snprintf(sql, sizeof sql, "DROP TABLE %s", table);
  esc_ok(tl_db_exec(esc_db, NULL, sql, TL_NOARGS), "drop");
  tl_es_checkpoint zero = { 0, 0 };
  esc_ok(tl_es_checkpoint_store(esc_es, name, &zero), "reset");
  esc_ok(tl_projection_start(esc_es, &def, &p), "start again");
  esc_ok(tl_projection_wait(p, 10000000), "replayed");
  char *replayed = esc_dump_totals(table);
  assert_string_equal(replayed, rebuilt);
  tl_projection_stop(p);
  esc_ok(tl_db_exec(esc_db, NULL, sql, TL_NOARGS), "drop");
  free(live);
  free(rebuilt);
  free(replayed);
}

#define ESC_TEST(f) cmocka_unit_test(f)

static int esc_run(const char *url, const char *name)
{
  esc_url = url;
  const struct CMUnitTest tests[] = {
    ESC_TEST(esc_seed_example),
    ESC_TEST(esc_expected_versions),
    ESC_TEST(esc_concurrent_exact),
    ESC_TEST(esc_idempotent),
    ESC_TEST(esc_reads),
    ESC_TEST(esc_temporal),
    ESC_TEST(esc_all_and_category),
    ESC_TEST(esc_snapshots),
    ESC_TEST(esc_metadata_delete_truncate),
    ESC_TEST(esc_upcasting),
    ESC_TEST(esc_subscription_catchup_live),
    ESC_TEST(esc_subscription_transactional),
    ESC_TEST(esc_subscription_lease),
    ESC_TEST(esc_subscription_lag_metrics),
    ESC_TEST(esc_no_skip),
    ESC_TEST(esc_projection_rebuild),
  };
  return _cmocka_run_group_tests(name, tests, sizeof tests / sizeof tests[0], esc_setup,
                                 esc_teardown);
}

#endif
