/* api-management: the reference service built on trellis. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/trellis.h>

#include "settings.h"

static void usage(FILE *out)
{
  fprintf(out,
          "usage: api-management [--check-config] [--env-file PATH] [--version] [--help]\n"
          "\n"
          "Serves the API, /health/live, /health/ready, /metrics and /version.\n"
          "Configuration comes from .env (or --env-file) and the environment;\n"
          "the environment wins. See .env.example for every key.\n"
          "\n"
          "  --check-config   validate the configuration, print what is wrong,\n"
          "                   exit 0 when valid, 2 when not\n"
          "  --env-file PATH  read PATH instead of ./.env\n"
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
  settings s = { 0 };
  int problems = settings_read(&s, cfg);
  if (check_only || problems) {
    if (!problems)
      printf("configuration ok\n");
    tl_config_free(cfg);
    return problems ? 2 : 0;
  }
  tl_log_set_level(s.log_level);

  tl_http_config hc = {
    .bind = s.http_bind,
    .port = (uint16_t)s.http_port,
    .threads = (unsigned)s.http_threads,
    .max_body = (size_t)s.http_max_body,
    .shutdown_timeout_us = s.shutdown_timeout_us,
    .version = tl_version(),
    .commit = tl_build_commit(),
    .variant = s.app_variant,
  };
  tl_http_server *srv = NULL;
  int rc = tl_http_server_new(&srv, &hc);
  if (rc == 0)
    rc = tl_metrics_register_process(tl_metrics_default());
  if (rc == 0 && s.debug_routes)
    rc = tl_http_route(srv, "GET", "/debug/sleep", debug_sleep, NULL);
  if (rc == 0)
    rc = tl_http_server_start(srv);
  if (rc != 0) {
    tl_log(TL_LOG_ERROR, "start-up failed", TL_F_STR("error", tl_error_last()));
    tl_http_server_free(srv);
    tl_config_free(cfg);
    return 1;
  }
  tl_log(TL_LOG_INFO, "api-management listening", TL_F_STR("bind", s.http_bind),
         TL_F_INT("port", tl_http_server_port(srv)), TL_F_STR("version", tl_version()),
         TL_F_STR("variant", s.app_variant));

  int sig = tl_signals_wait(-1);
  /* Readiness fails first so load balancers stop sending; requests keep
   * being served for SHUTDOWN_DELAY while they notice, then the server
   * drains what is in flight within SHUTDOWN_TIMEOUT. */
  tl_log(TL_LOG_INFO, "shutting down", TL_F_STR("signal", sig == 2 ? "SIGINT" : "SIGTERM"),
         TL_F_INT("delay_ms", s.shutdown_delay_us / 1000),
         TL_F_INT("timeout_ms", s.shutdown_timeout_us / 1000));
  tl_http_server_drain(srv);
  tl_sleep_us(s.shutdown_delay_us);
  rc = tl_http_server_stop(srv);
  if (rc != 0)
    tl_log(TL_LOG_WARN, "shutdown deadline passed; requests were cut",
           TL_F_STR("error", tl_error_last()));
  tl_http_server_free(srv);
  tl_config_free(cfg);
  tl_log(TL_LOG_INFO, "stopped");
  return 0;
}
