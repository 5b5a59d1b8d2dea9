/* trellis events: the event store from the command line.
 *   trellis events append STREAM TYPE JSON [--expected-version N|any|no-stream|exists]
 *                         [--metadata JSON]
 *   trellis events read STREAM [--until ISO8601] [--from-version N] [--backward] [--max N]
 *   trellis events tail [--from POSITION] [--category C] [--no-follow]
 * --url defaults to DATABASE_URL. Events are printed as JSON lines. A
 * version conflict exits 1 saying which version was expected and found. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <trellis/eventstore.h>

#include "cli.h"

static volatile sig_atomic_t ev_stop;

static void ev_on_signal(int sig)
{
  (void)sig;
  ev_stop = 1;
}

static int ev_usage(void)
{
  fprintf(stderr,
          "usage: trellis events append STREAM TYPE JSON [--expected-version N|any|no-stream|exists]\n"
          "                             [--metadata JSON] [--url URL]\n"
          "       trellis events read STREAM [--until ISO8601] [--from-version N] [--backward]\n"
          "                             [--max N] [--url URL]\n"
          "       trellis events tail [--from POSITION] [--category C] [--no-follow] [--url URL]\n"
          "URL defaults to DATABASE_URL. Output: one JSON object per event.\n");
  return CLI_USAGE;
}

static void ev_print(const tl_event *e)
{
  char ts[40];
  tl_time_format(e->timestamp_us, 6, ts, sizeof ts);
  json_t *o = json_object();
  json_object_set_new(o, "position", json_integer(e->position));
  json_object_set_new(o, "id", json_string(e->id));
  json_object_set_new(o, "stream", json_string(e->aggregate_id));
  json_object_set_new(o, "category", json_string(e->category ? e->category : ""));
  json_object_set_new(o, "type", json_string(e->event_type));
  json_object_set_new(o, "version", json_integer(e->version));
  json_object_set_new(o, "timestamp", json_string(ts));
  json_object_set_new(o, "schema_version", json_integer(e->schema_version));
  json_t *d = json_loads(e->data ? e->data : "null", JSON_DECODE_ANY, NULL);
  json_object_set_new(o, "data", d ? d : json_string(e->data));
  json_t *m = json_loads(e->metadata ? e->metadata : "{}", JSON_DECODE_ANY, NULL);
  json_object_set_new(o, "metadata", m ? m : json_object());
  char *s = json_dumps(o, JSON_COMPACT);
  if (s) printf("%s\n", s);
  free(s);
  json_decref(o);
}

static bool ev_int(const char *s, int64_t *out)
{
  char *end;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || v < 0) return false;
  *out = v;
  return true;
}

static int ev_append(tl_es *es, int argc, char **argv, const char *expected_text,
                     const char *metadata)
{
  if (argc != 3) return ev_usage();
  int64_t expected = TL_ES_ANY;
  if (expected_text) {
    if (!strcmp(expected_text, "any")) expected = TL_ES_ANY;
    else if (!strcmp(expected_text, "no-stream")) expected = TL_ES_NO_STREAM;
    else if (!strcmp(expected_text, "exists")) expected = TL_ES_EXISTS;
    else if (!ev_int(expected_text, &expected)) {
      fprintf(stderr, "trellis events: --expected-version: '%s' is not a version, any, "
                      "no-stream or exists\n", expected_text);
      return CLI_USAGE;
    }
  }
  tl_event e = { .aggregate_id = argv[0], .event_type = argv[1], .data = argv[2],
                 .metadata = metadata };
  int rc = tl_es_append_to(es, argv[0], expected, &e, 1);
  if (rc) {
    cli_fail("events", "append");
    return CLI_FAIL;
  }
  char cat[TL_ES_NAME_MAX + 1];
  size_t n = strcspn(argv[0], "-");
  snprintf(cat, sizeof cat, "%.*s", (int)n, argv[0]);
  e.category = cat;
  ev_print(&e);
  return CLI_OK;
}

static int ev_read(tl_es *es, int argc, char **argv, const char *until, const char *from,
                   bool backward, const char *max)
{
  if (argc != 1) return ev_usage();
  tl_es_read_opts o = { .backward = backward };
  if (until && tl_time_parse(until, &o.until_us) != 0) {
    fprintf(stderr, "trellis events: --until: '%s' is not an ISO 8601 time\n", until);
    return CLI_USAGE;
  }
  int64_t v;
  if (from) {
    if (!ev_int(from, &v)) {
      fprintf(stderr, "trellis events: --from-version: '%s' is not a version\n", from);
      return CLI_USAGE;
    }
    o.from_version = v;
  }
  if (max) {
    if (!ev_int(max, &v)) {
      fprintf(stderr, "trellis events: --max: '%s' is not a count\n", max);
      return CLI_USAGE;
    }
    o.max_count = (size_t)v;
  }
  tl_event_list *l;
  if (tl_es_read_stream(es, argv[0], &o, &l) != 0) {
    cli_fail("events", "read");
    return CLI_FAIL;
  }
  for (size_t i = 0; i < l->count; i++) ev_print(&l->events[i]);
  tl_event_list_free(l);
  return CLI_OK;
}

static int ev_tail(tl_es *es, int argc, const char *from, const char *category, bool follow)
{
  if (argc != 0) return ev_usage();
  tl_es_checkpoint cp = { 0, 0 };
  if (from) {
    int64_t pos;
    if (!ev_int(from, &pos)) {
      fprintf(stderr, "trellis events: --from: '%s' is not a position\n", from);
      return CLI_USAGE;
    }
    int rc = tl_es_checkpoint_at(es, pos, &cp);
    if (rc == TL_ENOTFOUND) cp = (tl_es_checkpoint){ 0, pos - 1 };
    else if (rc) {
      cli_fail("events", "tail");
      return CLI_FAIL;
    }
  }
  tl_es_filter f = { .category = category };
  signal(SIGINT, ev_on_signal);
  signal(SIGTERM, ev_on_signal);
  int64_t idle = 10000;
  while (!ev_stop) {
    tl_event_list *l;
    if (tl_es_read_all(es, &cp, &f, 500, &l) != 0) {
      cli_fail("events", "tail");
      return CLI_FAIL;
    }
    for (size_t i = 0; i < l->count; i++) ev_print(&l->events[i]);
    size_t n = l->count;
    if (n) cp = (tl_es_checkpoint){ l->events[n - 1].tx, l->events[n - 1].position };
    tl_event_list_free(l);
    fflush(stdout);
    if (n) {
      idle = 10000;
      continue;
    }
    if (!follow) break;
    tl_sleep_us(idle);
    idle = idle * 2 > 500000 ? 500000 : idle * 2;
  }
  return CLI_OK;
}

int cli_cmd_events(int argc, char **argv, const tl_config *cfg)
{
  if (argc < 2) return ev_usage();
  const char *sub = argv[1], *url = NULL, *expected = NULL, *metadata = NULL, *until = NULL,
             *from_version = NULL, *from = NULL, *category = NULL, *max = NULL;
  bool backward = false, follow = true;
  char *pos[8];
  int npos = 0;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **slot = !strcmp(a, "--url") ? &url
                        : !strcmp(a, "--expected-version") ? &expected
                        : !strcmp(a, "--metadata") ? &metadata
                        : !strcmp(a, "--until") ? &until
                        : !strcmp(a, "--from-version") ? &from_version
                        : !strcmp(a, "--from") ? &from
                        : !strcmp(a, "--category") ? &category
                        : !strcmp(a, "--max") ? &max : NULL;
    if (slot) {
      if (i + 1 >= argc) {
        fprintf(stderr, "trellis events: %s needs a value\n", a);
        return CLI_USAGE;
      }
      *slot = argv[++i];
    } else if (!strcmp(a, "--backward")) {
      backward = true;
    } else if (!strcmp(a, "--no-follow")) {
      follow = false;
    } else if (a[0] == '-' && a[1] == '-') {
      fprintf(stderr, "trellis events: unknown option '%s'\n", a);
      return CLI_USAGE;
    } else if (npos < 8) {
      pos[npos++] = argv[i];
    } else {
      return ev_usage();
    }
  }
  if (strcmp(sub, "append") && strcmp(sub, "read") && strcmp(sub, "tail")) return ev_usage();
  if (!tl_config_get(cfg, "LOG_LEVEL")) tl_log_set_level(TL_LOG_ERROR);
  tl_db_config dc = { 0 };
  if (url) {
    dc.url = url;
  } else if (tl_db_config_from(cfg, &dc) != 0) {
    cli_fail("events", "no database (pass --url or set DATABASE_URL)");
    return CLI_USAGE;
  }
  dc.read_urls = NULL;
  dc.max_connections = 2;
  tl_db *db;
  if (tl_db_connect(&db, &dc) != 0) {
    cli_fail("events", "connect");
    return CLI_FAIL;
  }
  tl_es *es;
  if (tl_es_open(&es, &(tl_es_config){ .db = db }) != 0) {
    cli_fail("events", "open the event store");
    tl_db_close(db);
    return CLI_FAIL;
  }
  int rc;
  if (!strcmp(sub, "append")) rc = ev_append(es, npos, pos, expected, metadata);
  else if (!strcmp(sub, "read")) rc = ev_read(es, npos, pos, until, from_version, backward, max);
  else rc = ev_tail(es, npos, from, category, follow);
  tl_es_close(es);
  tl_db_close(db);
  return rc;
}
