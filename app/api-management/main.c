/* api-management: the reference service built on trellis. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <trellis/trellis.h>

#include "app.h"

static void usage(FILE *out)
{
  fprintf(out,
          "usage: api-management [--check-config] [--env-file PATH] [--print-routes]\n"
          "                      [--version] [--help]\n"
          "\n"
          "Serves the users API (/api/v1, described at /openapi.json), /health/live,\n"
          "/health/ready, /metrics and /version.\n"
          "Configuration comes from .env (or --env-file) and the environment;\n"
          "the environment wins. See .env.example for every key.\n"
          "\n"
          "  --check-config   validate the configuration, print what is wrong,\n"
          "                   exit 0 when valid, 2 when not\n"
          "  --env-file PATH  read PATH instead of ./.env\n"
          "  --print-routes   print the API's routes (METHOD PATTERN) and exit\n"
          "  --version        print the version and exit\n");
}

/* GET /debug/sleep?ms=N answers after N ms: a slow request for shutdown
 * tests, only served when DEBUG_ROUTES=true. */
static int debug_sleep(tl_http_req *req, tl_http_res *res, void *ctx)
{
  (void)ctx;
  const char *ms = tl_http_req_query(req, "ms");
  char *end = NULL;
  long v = ms ? strtol(ms, &end, 10) : -1;
  if (!ms || *end || v < 0 || v > 60000)
    return tl_http_res_problem(res, 400, "query 'ms': expected an integer in [0, 60000], got '%s'",
                               ms ? ms : "");
  tl_sleep_us((int64_t)v * 1000);
  char body[64];
  int n = snprintf(body, sizeof body, "{\"slept_ms\":%ld}", v);
  return tl_http_res_json(res, 200, body, (size_t)n);
}

/* The embedded default keeps its SQLite file under ./data: create the
 * folder of a sqlite:// file when it is missing. */
static int sqlite_folder(const char *url)
{
  const char *path = NULL;
  if (!strncmp(url, "sqlite://", 9)) path = url + 9;
  else if (!strncmp(url, "sqlite:", 7) && strcmp(url, "sqlite::memory:")) path = url + 7;
  const char *slash = path ? strrchr(path, '/') : NULL;
  if (!slash || slash == path) return 0;
  char dir[1024];
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  for (char *p = dir + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    mkdir(dir, 0755);
    *p = '/';
  }
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    return tl_error_set(TL_EIO, "DATABASE_URL: cannot create the folder '%s': %s", dir,
                        strerror(errno));
  return 0;
}

static int check_database(void *ctx, char *detail, size_t n)
{
  int rc = tl_db_ping(ctx);
  if (rc) snprintf(detail, n, "%s", tl_error_last());
  return rc;
}

static int check_mq(void *ctx, char *detail, size_t n)
{
  int rc = tl_mq_ready(ctx);
  if (rc) snprintf(detail, n, "%s", tl_error_last());
  return rc;
}

/* Open every module, in dependency order. On failure the caller stops
 * what was started (stop() copes with a half-started app). */
static int start(app *a)
{
  const settings *s = &a->s;
  int rc = sqlite_folder(s->db.url);
  if (rc == 0) rc = tl_db_connect(&a->db, &s->db);
  if (rc == 0) rc = users_migrate(a->db);
  if (rc == 0) rc = tl_es_open(&a->es, &(tl_es_config){ .db = a->db });
  if (rc == 0 && s->group_commit)
    rc = tl_aggregate_group_new(a->es, &(tl_aggregate_group_config){
                                    .max_batch = (size_t)s->group_commit_max_batch }, &a->group);
  if (rc == 0) rc = tl_command_bus_new(&a->commands, &(tl_cqrs_config){ .db = a->db });
  if (rc == 0) rc = tl_command_bus_use_defaults(a->commands);
  if (rc == 0) rc = tl_query_bus_new(&a->queries, NULL);
  if (rc == 0) rc = tl_query_bus_use_defaults(a->queries);
  if (rc == 0) rc = users_register(a);
  if (rc == 0) rc = tl_mq_open(&a->mq, &s->mq);
  if (rc == 0) {
    tl_jobs_config jc = s->jobs;
    jc.db = a->db;
    rc = tl_jobs_open(&a->jobs, &jc);
  }
  if (rc == 0) rc = mailer_new(&a->mail, s);
  if (rc == 0) rc = background_register(a);
  char dev_key[65];
  if (rc == 0) rc = auth_new(&a->keys, a->s.api_keys, dev_key);
  if (rc == 0 && dev_key[0])
    tl_log(TL_LOG_WARN, "API_KEYS is empty: using a development key made for this run",
           TL_F_STR("api_key", dev_key),
           TL_F_STR("usage", "curl -H 'Authorization: Bearer <api_key>' ..."));
  if (rc == 0 && s->users_cache) rc = tl_cache_open(&a->cache, &s->cache);
  if (rc == 0) rc = users_projection_start(a);
  /* Consumers first: a new group or queue only gets what is published
   * after it exists. */
  if (rc == 0) rc = users_cache_follow(a);
  if (rc == 0) rc = background_subscribe(a);
  if (rc == 0 && s->relay) rc = tl_relay_start(a->es, a->mq, NULL, &a->relay);

  tl_http_config hc = {
    .bind = s->http_bind,
    .port = (uint16_t)s->http_port,
    .threads = (unsigned)s->http_threads,
    .workers = (unsigned)s->http_workers,
    .max_body = (size_t)s->http_max_body,
    .shutdown_timeout_us = s->shutdown_timeout_us,
    .version = tl_version(),
    .commit = tl_build_commit(),
    .variant = s->app_variant,
  };
  if (rc == 0) rc = tl_http_server_new(&a->http, &hc);
  if (rc == 0) rc = tl_metrics_register_process(tl_metrics_default());
  if (rc == 0) rc = api_routes(a);
  if (rc == 0 && s->debug_routes) rc = tl_http_route(a->http, "GET", "/debug/sleep", debug_sleep, NULL);
  if (rc == 0) rc = tl_http_ready_check(a->http, "database", check_database, a->db, 0);
  if (rc == 0) rc = tl_http_ready_check(a->http, "message_queue", check_mq, a->mq, 0);
  if (rc == 0) rc = tl_http_ready_check(a->http, "jobs", tl_jobs_ready_check, a->jobs, 0);
  if (rc == 0 && a->cache) rc = tl_http_ready_check(a->http, "cache", tl_cache_ready_check, a->cache, 0);
  if (rc == 0) rc = tl_http_server_start(a->http);
  return rc;
}

/* Stop in the reverse order: no new requests, then no new messages, then
 * the workers (unfinished jobs go back to the queue), then the broker
 * (unconfirmed publishes drain) and the database. */
static void stop(app *a)
{
  if (a->http) {
    int rc = tl_http_server_stop(a->http);
    if (rc != 0)
      tl_log(TL_LOG_WARN, "shutdown deadline passed; requests were cut",
             TL_F_STR("error", tl_error_last()));
  }
  if (a->welcome_sub) tl_mq_unsubscribe(a->welcome_sub);
  if (a->cache_sub) tl_mq_unsubscribe(a->cache_sub);
  tl_es_sub_stop(a->welcome_es);
  tl_relay_stop(a->relay);
  tl_projection_stop(a->users_projection);
  if (a->jobs && tl_jobs_close(a->jobs) == TL_ETIMEOUT)
    tl_log(TL_LOG_WARN, "jobs still running at the deadline were returned to the queue");
  if (a->mq) tl_mq_close(a->mq);
  tl_http_server_free(a->http);
  tl_command_bus_free(a->commands);
  tl_query_bus_free(a->queries);
  tl_aggregate_group_free(a->group);
  tl_es_close(a->es);
  tl_cache_close(a->cache);
  tl_db_close(a->db);
  mailer_free(a->mail);
  auth_free(a->keys);
}

int main(int argc, char **argv)
{
  const char *env_file = NULL;
  int check_only = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--version")) {
      printf("api-management %s (commit %s)\n", tl_version(), tl_build_commit());
      return 0;
    } else if (!strcmp(argv[i], "--print-routes")) {
      api_print_routes(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--check-config")) {
      check_only = 1;
    } else if (!strcmp(argv[i], "--env-file") && i + 1 < argc) {
      env_file = argv[++i];
    } else {
      fprintf(stderr, "api-management: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }

  /* Before any thread exists, so every thread inherits the mask and the
   * main thread alone takes SIGTERM/SIGINT. */
  tl_signals_block();

  tl_config *cfg = NULL;
  if (tl_config_load(&cfg, env_file) != 0) {
    fprintf(stderr, "config: %s\n", tl_error_last());
    return 2;
  }
  app a = { 0 };
  int problems = settings_read(&a.s, cfg);
  if (check_only || problems) {
    if (!problems)
      printf("configuration ok\n");
    settings_free(&a.s);
    tl_config_free(cfg);
    return problems ? 2 : 0;
  }
  tl_log_set_level(a.s.log_level);

  if (start(&a) != 0) {
    tl_log(TL_LOG_ERROR, "start-up failed", TL_F_STR("error", tl_error_last()));
    stop(&a);
    settings_free(&a.s);
    tl_config_free(cfg);
    return 1;
  }
  char db_url[512];
  tl_url_mask(a.s.db.url, db_url, sizeof db_url);
  tl_log(TL_LOG_INFO, "api-management listening", TL_F_STR("bind", a.s.http_bind),
         TL_F_INT("port", tl_http_server_port(a.http)), TL_F_STR("version", tl_version()),
         TL_F_STR("variant", a.s.app_variant), TL_F_STR("database", db_url),
         TL_F_STR("message_queue", tl_mq_type_name(a.s.mq.type)));

  int sig = tl_signals_wait(-1);
  /* Readiness fails first so load balancers stop sending; requests keep
   * being served for SHUTDOWN_DELAY while they notice, then the server
   * drains what is in flight within SHUTDOWN_TIMEOUT. */
  tl_log(TL_LOG_INFO, "shutting down", TL_F_STR("signal", sig == 2 ? "SIGINT" : "SIGTERM"),
         TL_F_INT("delay_ms", a.s.shutdown_delay_us / 1000),
         TL_F_INT("timeout_ms", a.s.shutdown_timeout_us / 1000));
  tl_http_server_drain(a.http);
  tl_sleep_us(a.s.shutdown_delay_us);
  stop(&a);
  settings_free(&a.s);
  tl_config_free(cfg);
  tl_log(TL_LOG_INFO, "stopped");
  return 0;
}
