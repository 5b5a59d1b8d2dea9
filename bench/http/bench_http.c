/* bench_http: api-management's HTTP server against nginx answering the same
 * bytes, under the same load and the same CPU budget.
 *
 *   bench_http [PATH/TO/api-management]
 *
 * Without an argument the service is $TRELLIS_BIN_DIR/api-management, or
 * api-management next to this program. Both servers get one thread (nginx
 * worker_processes 1, api-management HTTP_THREADS=1) and the same load:
 * wrk -t1 -c32 with keep-alive, run A B A B. Cases: GET /health/live and,
 * when the service serves it, GET /version (a small JSON document); nginx
 * returns the very body the service returned, with `return 200`.
 *
 * Environment: BENCH_QUICK=1 (1 s runs, 2 rounds), BENCH_ROUNDS=N,
 * BENCH_HTTP_SECONDS=N (length of one wrk run, default 2),
 * BENCH_KEEP_TMP=1 (keep the temporary folder with the logs and config). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "httpload.h"

#define WRK_THREADS 1
#define WRK_CONNECTIONS 32

static hl_server api = {.name = "api-management"};
static hl_server nginx = {.name = "nginx"};

static int compare(const char *case_name, const char *path, int seconds, size_t body_len)
{
  char conditions[512];
  snprintf(conditions, sizeof conditions,
           "GET %s, same %zu-byte JSON body; one server thread each (nginx worker_processes 1, "
           "api-management HTTP_THREADS=1); wrk -t%d -c%d keep-alive, %d s runs; loopback; "
           "no access logs; nothing pinned",
           path, body_len, WRK_THREADS, WRK_CONNECTIONS, seconds);
  hl_load ours = {.srv = &api, .path = path, .threads = WRK_THREADS,
                  .connections = WRK_CONNECTIONS, .seconds = seconds};
  hl_load base = ours;
  base.srv = &nginx;
  return hl_compare("http", case_name, "nginx", conditions, hl_wrk, &ours, hl_wrk, &base,
                    NULL);
}

int main(int argc, char **argv)
{
  static char bodies[2][HL_MAX_BODY];
  char service[PATH_MAX];
  hl_route routes[2] = {{"/health/live", bodies[0]}, {"/version", bodies[1]}};
  int nroutes = 1, rc = 1;

  if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))) {
    fprintf(argc > 2 ? stderr : stdout, "usage: bench_http [PATH/TO/api-management]\n");
    return argc > 2 ? 2 : 0;
  }
  if (hl_init("bench_http") != 0 || hl_find_service(argc, argv, service, sizeof service) != 0)
    return 1;
  int seconds = (int)bench_size(2, 1);
  const char *secs = getenv("BENCH_HTTP_SECONDS");
  if (secs != NULL && atoi(secs) > 0)
    seconds = atoi(secs);

  fprintf(stderr, "bench_http: %s against nginx, wrk %d s runs\n", service, seconds);
  /* Its own environment, so a developer's .env or shell cannot change what
   * is measured; the temporary folder is its working directory. */
  const char *env[] = {"HTTP_THREADS=1", "LOG_LEVEL=warn", NULL};
  if (hl_start_service(&api, service, NULL, env) != 0)
    goto out;

  /* nginx returns exactly what the service returned. */
  if (hl_http(api.port, "GET", routes[0].path, NULL, NULL, bodies[0], HL_MAX_BODY) != 200) {
    fprintf(stderr, "bench_http: api-management stopped answering GET /health/live\n");
    goto out;
  }
  if (hl_http(api.port, "GET", routes[1].path, NULL, NULL, bodies[1], HL_MAX_BODY) == 200)
    nroutes = 2;
  else
    fprintf(stderr, "bench_http: api-management does not serve GET /version: that case is "
                    "skipped\n");

  if (hl_start_nginx(&nginx, 1, routes, nroutes) != 0)
    goto out;
  if (compare("health_live", "/health/live", seconds, strlen(bodies[0])) != 0)
    goto out;
  if (nroutes > 1 && compare("version_json", "/version", seconds, strlen(bodies[1])) != 0)
    goto out;
  rc = 0;
out:
  hl_cleanup();
  return hl_exit_code(rc);
}
