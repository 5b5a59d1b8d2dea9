/* bench_service: the users API of api-management against nginx's
 * `return 200` ceiling, on the embedded default (SQLite) and on PostgreSQL.
 *
 *   bench_service [PATH/TO/api-management]
 *
 * Without an argument the service is $TRELLIS_BIN_DIR/api-management, or
 * api-management next to this program. For each database the service runs
 * alone (every setting that matters given, so a .env or the shell cannot
 * change what is measured), a first user is created, and nginx answers the
 * same paths with the bytes the service answered. Cases, each run A B A B
 * against nginx:
 *  - get_user_nocache_<db>: GET /api/v1/users/{id} of that user with
 *                           USERS_CACHE=false: every GET reads the database;
 *  - get_user_<db>:         the same with the users cache on (the default);
 *  - create_user_<db>:      POST /api/v1/users, a new email every request (a
 *                           Lua script: run tag, wrk thread, counter);
 *  - create_user_nogroup_<db>: the same with GROUP_COMMIT=false, so the
 *                           run shows what group commit brings.
 * Each gives req/s, p50 and p99. After each service run the program waits
 * until the service is idle (a POST leaves work behind: the projection, the
 * relay, the welcome-email job), so that work does not eat into the next
 * nginx run. A summary prints the figures next to the targets, which are
 * reported, not asserted.
 *
 * PostgreSQL: BENCH_POSTGRES_URL, else the server of scripts/services, in
 * a database of its own (trellis_bench_service_<pid>, dropped at the end).
 *
 * Environment: BENCH_QUICK=1 (1 s runs, 2 rounds), BENCH_ROUNDS=N,
 * BENCH_SERVICE_SECONDS=N (length of one wrk run, default 2),
 * BENCH_KEEP_TMP=1 (keep the temporary folder with the logs and config). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <trellis/trellis.h>

#include "bench.h"
#include "benchdb.h"
#include "httpload.h"

#define WRK_THREADS 2
#define WRK_CONNECTIONS 64
#define IDLE_TIMEOUT_MS 120000
#define READY_TIMEOUT_US 10000000
#define GET_TARGET_RATIO 0.5
#define POST_TARGET_PG 5000.0
#define NCASES 8
#define CACHE_URL "memory://?max_bytes=64MiB"

/* wrk's Lua: POST the path of the URL with a new email every request.
 * Arguments: the run's tag (from hl_wrk), then the API key. */
static const char create_user_lua[] =
    "local threads = 0\n"
    "function setup(thread)\n"
    "  threads = threads + 1\n"
    "  thread:set(\"thread_no\", threads)\n"
    "end\n"
    "function init(args)\n"
    "  tag = args[1]\n"
    "  headers = { [\"Content-Type\"] = \"application/json\",\n"
    "              [\"Authorization\"] = \"Bearer \" .. args[2] }\n"
    "  n = 0\n"
    "end\n"
    "function request()\n"
    "  n = n + 1\n"
    "  return wrk.format(\"POST\", nil, headers, string.format(\n"
    "    '{\"name\":\"Bench User\",\"email\":\"u%s-%d-%d@bench.example\"}', tag, thread_no, n))\n"
    "end\n";

/* One database the service runs on. */
typedef struct target {
  const char *db;         /* "sqlite", "pg": the cases' suffix */
  const char *name;       /* the service's names: as configured by default, */
  const char *name_nocache; /* without the users cache, */
  const char *name_nogroup; /* without group commit */
  const char *url;        /* DATABASE_URL */
  char durability[256];   /* in words, for the conditions */
  hl_server api;
  char user_path[96];     /* GET /api/v1/users/{id} of the first user */
  char user[HL_MAX_BODY]; /* its body */
  char created[HL_MAX_BODY]; /* the body of its creation (201) */
} target;

/* A service side: wrk, then wait until the service is idle again. */
typedef struct service_side {
  hl_load load;
  target *t;
  long max_drain_ms;
} service_side;

/* The figures of one case, for the summary. */
typedef struct outcome {
  char name[64];
  bool post;
  bool pg;
  bool target; /* the case the POST target is about */
  bench_result r[3]; /* req/s, p50, p99 */
} outcome;

static hl_server nginx = {.name = "nginx"};
static char service_bin[PATH_MAX];
static char api_key[48];
static char auth_header[80]; /* "Authorization: Bearer <key>" */
static char script[PATH_MAX];
static int seconds;
static long cores;
static outcome outcomes[NCASES];
static int noutcomes;

static int run_service(void *ctx, double *figures)
{
  service_side *side = ctx;
  if (hl_wrk(&side->load, figures) != 0)
    return -1;
  long ms = hl_wait_idle(side->t->api.pid, IDLE_TIMEOUT_MS);
  if (ms < 0) {
    if (hl_interrupted())
      return -1;
    fprintf(stderr, "bench_service: %s was still busy %d s after the load\n", side->t->api.name,
            IDLE_TIMEOUT_MS / 1000);
    return -1;
  }
  if (ms > side->max_drain_ms)
    side->max_drain_ms = ms;
  return 0;
}

/* The number of threads of process `pid`, or -1. */
static long thread_count(pid_t pid)
{
  char path[64], line[256];
  long n = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  while (n < 0 && fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "Threads:", 8) == 0)
      n = strtol(line + 8, NULL, 10);
  fclose(f);
  return n;
}

/* The cases of one database, in the order they run. */
typedef enum kind { GET_NOCACHE, GET, POST, POST_NOGROUP } kind;

static int compare(target *t, kind k)
{
  static const char *const names[] = {"get_user_nocache", "get_user", "create_user",
                                      "create_user_nogroup"};
  static const char *const what[] = {
      "GET /api/v1/users/{id} of an existing user, USERS_CACHE=false (every GET reads the read "
      "model)",
      "GET /api/v1/users/{id} of an existing user, USERS_CACHE=true (the default: in-process "
      "cache, CACHE_URL=" CACHE_URL ")",
      "POST /api/v1/users, a new email per request (wrk Lua), USERS_CACHE=true (the default), "
      "GROUP_COMMIT=true (the default: concurrent creates share a transaction, up to 64, 4 "
      "at once)",
      "POST /api/v1/users, a new email per request (wrk Lua), USERS_CACHE=true, "
      "GROUP_COMMIT=false (a transaction per create)"};
  char name[64], conditions[1200];
  bool post = k == POST || k == POST_NOGROUP;
  const char *path = post ? "/api/v1/users" : t->user_path;
  snprintf(name, sizeof name, "%s_%s", names[k], t->db);
  snprintf(conditions, sizeof conditions,
           "%s; api-management HTTP_THREADS=%ld (2 x cores, its default) and HTTP_WORKERS=64 "
           "(its default: writes and list queries run there; %ld threads in all), "
           "DATABASE_URL %s, MESSAGE_QUEUE_TYPE=memory, other settings default (pool of 10, "
           "relay on, a durable welcome-email job per user), LOG_LEVEL=warn; nginx "
           "worker_processes %ld, `return 200` with the service's %zu-byte body; wrk -t%d -c%d "
           "keep-alive, %d s runs, Authorization: Bearer on both; the service idle again before "
           "each nginx run; loopback, %ld cores shared by wrk, the servers and the database; "
           "nothing pinned",
           what[k], 2 * cores, thread_count(t->api.pid), t->durability, cores,
           strlen(post ? t->created : t->user), WRK_THREADS, WRK_CONNECTIONS, seconds, cores);
  service_side ours = {.load = {.srv = &t->api, .path = path, .threads = WRK_THREADS,
                                .connections = WRK_CONNECTIONS, .seconds = seconds},
                       .t = t};
  if (post) {
    ours.load.script = script;
    ours.load.script_arg = api_key;
  } else {
    ours.load.header = auth_header;
  }
  hl_load base = ours.load;
  base.srv = &nginx;
  outcome *o = &outcomes[noutcomes];
  if (hl_compare("service", name, "nginx", conditions, run_service, &ours, hl_wrk, &base, o->r) !=
      0)
    return -1;
  snprintf(o->name, sizeof o->name, "%s", name);
  o->post = post;
  o->pg = strcmp(t->db, "pg") == 0;
  o->target = k == POST && o->pg;
  noutcomes++;
  if (post)
    fprintf(stderr, "bench_service: %s: the service was busy up to %.1f s after a run\n", name,
            (double)ours.max_drain_ms / 1000);
  return 0;
}

/* GET the first user into `out` (n bytes), waiting while the read model
 * does not have it yet. */
static int fetch_user(const target *t, char *out, size_t n)
{
  char headers[96];
  int status;
  snprintf(headers, sizeof headers, "%s\r\n", auth_header);
  int64_t deadline = tl_time_mono_us() + READY_TIMEOUT_US;
  while ((status = hl_http(t->api.port, "GET", t->user_path, headers, NULL, out, n)) == 404 &&
         tl_time_mono_us() < deadline && !hl_interrupted())
    tl_sleep_us(20000);
  if (status != 200) {
    fprintf(stderr, "bench_service: %s: GET %s answered %d, not 200: %s\n", t->api.name,
            t->user_path, status, out);
    return -1;
  }
  return 0;
}

/* Create the first user and keep both answers for nginx. */
static int seed(target *t)
{
  char headers[160], body[128];
  const char *id;
  snprintf(headers, sizeof headers, "%s\r\nContent-Type: application/json\r\n", auth_header);
  snprintf(body, sizeof body, "{\"name\":\"Bench User\",\"email\":\"first-%d@bench.example\"}",
           (int)getpid());
  int status = hl_http(t->api.port, "POST", "/api/v1/users", headers, body, t->created,
                       sizeof t->created);
  if (status != 201 || (id = strstr(t->created, "\"id\":\"")) == NULL || strlen(id) < 42) {
    fprintf(stderr, "bench_service: %s: POST /api/v1/users answered %d, not 201 with an id: %s\n",
            t->api.name, status, t->created);
    return -1;
  }
  snprintf(t->user_path, sizeof t->user_path, "/api/v1/users/%.36s", id + 6);
  return fetch_user(t, t->user, sizeof t->user);
}

/* Start the service on t's database, with the users cache or without,
 * with group commit or without, and wait until it is idle. */
static int start_service(target *t, bool cache, bool group)
{
  char db_env[600], threads_env[48], keys_env[64];
  snprintf(db_env, sizeof db_env, "DATABASE_URL=%s", t->url);
  snprintf(threads_env, sizeof threads_env, "HTTP_THREADS=%ld", 2 * cores);
  snprintf(keys_env, sizeof keys_env, "API_KEYS=%s", api_key);
  const char *env[] = {db_env, threads_env, keys_env, cache ? "USERS_CACHE=true"
                                                            : "USERS_CACHE=false",
                       "CACHE_URL=" CACHE_URL, "MESSAGE_QUEUE_TYPE=memory", "LOG_LEVEL=warn",
                       group ? "GROUP_COMMIT=true" : "GROUP_COMMIT=false", NULL};
  t->api.name = !cache ? t->name_nocache : group ? t->name : t->name_nogroup;
  fprintf(stderr, "bench_service: %s on %s\n", t->api.name, t->durability);
  if (hl_start_service(&t->api, service_bin, NULL, env) != 0)
    return -1;
  if (hl_wait_idle(t->api.pid, IDLE_TIMEOUT_MS) < 0) {
    fprintf(stderr, "bench_service: %s did not become idle after starting\n", t->api.name);
    return -1;
  }
  return 0;
}

/* The service on one database, without then with the users cache, and
 * nginx beside it answering the same bytes. */
static int run_target(target *t)
{
  static char again[HL_MAX_BODY];
  int rc = -1;
  if (start_service(t, false, true) != 0 || seed(t) != 0)
    goto out;
  hl_route routes[] = {{t->user_path, t->user}, {"/api/v1/users", t->created}};
  if (hl_start_nginx(&nginx, (int)cores, routes, 2) != 0 || compare(t, GET_NOCACHE) != 0)
    goto out;
  hl_stop(&t->api);
  if (start_service(t, true, true) != 0 || fetch_user(t, again, sizeof again) != 0)
    goto out;
  if (strcmp(again, t->user) != 0) {
    fprintf(stderr, "bench_service: %s answers GET %s with other bytes than before:\n%s\n%s\n",
            t->api.name, t->user_path, again, t->user);
    goto out;
  }
  if (compare(t, GET) != 0 || compare(t, POST) != 0)
    goto out;
  hl_stop(&t->api);
  if (start_service(t, true, false) == 0 && compare(t, POST_NOGROUP) == 0)
    rc = 0;
out:
  hl_stop(&nginx);
  hl_stop(&t->api);
  return rc;
}

/* PostgreSQL's version and durability settings, in words. */
static void pg_durability(const char *url, char *out, size_t n)
{
  tl_db *db = NULL;
  tl_rows *r = NULL;
  const char *v[3] = {"?", "?", "?"};
  size_t len;
  int rc = tl_db_connect(&db, &(tl_db_config){.url = url, .max_connections = 1});
  if (rc == 0)
    rc = tl_db_query(db, &r,
                     "SELECT current_setting('server_version'), current_setting('fsync'), "
                     "current_setting('synchronous_commit')",
                     TL_NOARGS);
  if (rc == 0 && tl_rows_next(r) == 1) {
    for (int i = 0; i < 3; i++)
      tl_rows_text(r, i, &v[i], &len);
    snprintf(out, n, "postgresql://.../<own database> (PostgreSQL %s, fsync=%s, "
                     "synchronous_commit=%s)", v[0], v[1], v[2]);
  } else {
    snprintf(out, n, "postgresql://.../<own database> (PostgreSQL; its durability settings "
                     "could not be read: %s)", tl_error_last());
  }
  tl_rows_free(r);
  tl_db_close(db);
}

static const char *verdict(bool met)
{
  return met ? "met" : "not met";
}

/* The figures next to the targets for this 2-core class of machine. */
static void print_summary(void)
{
  printf("\nservice: the figures next to the targets (reported, not asserted; %ld cores)\n",
         cores);
  printf("%-24s %10s %10s %10s %12s %7s  %s\n", "case", "req/s", "p50 ms", "p99 ms",
         "nginx req/s", "ratio", "target");
  for (int i = 0; i < noutcomes; i++) {
    const outcome *o = &outcomes[i];
    char goal[96] = "-";
    if (!o->post)
      snprintf(goal, sizeof goal, ">= %.1f x nginx: %s", GET_TARGET_RATIO,
               verdict(o->r[0].ratio >= GET_TARGET_RATIO));
    else if (o->target)
      snprintf(goal, sizeof goal, ">= %.0f req/s: %s", POST_TARGET_PG,
               verdict(o->r[0].ours >= POST_TARGET_PG));
    printf("%-24s %10.0f %10.2f %10.2f %12.0f %7.3f  %s\n", o->name, o->r[0].ours,
           o->r[1].ours / 1000, o->r[2].ours / 1000, o->r[0].baseline, o->r[0].ratio, goal);
  }
  fflush(stdout);
}

static int write_script(void)
{
  if (snprintf(script, sizeof script, "%s/create_user.lua", hl_tmp_dir()) >= (int)sizeof script)
    return -1;
  FILE *f = fopen(script, "w");
  bool bad = f == NULL || fputs(create_user_lua, f) < 0;
  if ((f != NULL && fclose(f) != 0) || bad) {
    fprintf(stderr, "bench_service: cannot write %s\n", script);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv)
{
  static target sqlite = {.db = "sqlite",
                          .name = "api-management-sqlite",
                          .name_nocache = "api-management-sqlite-nocache",
                          .name_nogroup = "api-management-sqlite-nogroup",
                          .url = "sqlite://data/api-management.db"};
  static target pg = {.db = "pg",
                      .name = "api-management-pg",
                      .name_nocache = "api-management-pg-nocache",
                      .name_nogroup = "api-management-pg-nogroup"};
  char pg_base[512], pg_url[600], pg_name[64];
  uint8_t rnd[16];
  int rc = 0;

  if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))) {
    fprintf(argc > 2 ? stderr : stdout, "usage: bench_service [PATH/TO/api-management]\n");
    return argc > 2 ? 2 : 0;
  }
  if (hl_init("bench_service") != 0 ||
      hl_find_service(argc, argv, service_bin, sizeof service_bin) != 0 || write_script() != 0)
    return 1;
  const char *pg_env = getenv("BENCH_POSTGRES_URL");
  const char *base = pg_env && *pg_env ? pg_env
                                       : bench_service_url("TRELLIS_TEST_POSTGRES_URL", pg_base,
                                                           sizeof pg_base);
  if (base == NULL) {
    fprintf(stderr, "bench_service: no PostgreSQL: set BENCH_POSTGRES_URL or run "
                    "scripts/services start\n");
    return 1;
  }
  seconds = (int)bench_size(2, 1);
  const char *secs = getenv("BENCH_SERVICE_SECONDS");
  if (secs != NULL && atoi(secs) > 0)
    seconds = atoi(secs);
  cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1)
    cores = 1;
  tl_log_set_level(TL_LOG_ERROR);
  tl_random_bytes(rnd, sizeof rnd);
  memcpy(api_key, "bench-", 6);
  for (int i = 0; i < 16; i++)
    snprintf(api_key + 6 + 2 * i, 3, "%02x", rnd[i]);
  snprintf(auth_header, sizeof auth_header, "Authorization: Bearer %s", api_key);
  fprintf(stderr, "bench_service: %s, wrk %d s runs\n", service_bin, seconds);

  snprintf(sqlite.durability, sizeof sqlite.durability,
           "%s (the embedded default: SQLite, WAL, synchronous=NORMAL)", sqlite.url);
  if (run_target(&sqlite) != 0)
    rc = 1;

  snprintf(pg_name, sizeof pg_name, "trellis_bench_service_%d", (int)getpid());
  if (!hl_interrupted() && bench_db_create(base, pg_name, pg_url, sizeof pg_url) == 0) {
    pg.url = pg_url;
    pg_durability(pg_url, pg.durability, sizeof pg.durability);
    if (run_target(&pg) != 0)
      rc = 1;
    if (bench_db_drop(base, pg_name) != 0)
      rc = 1;
  } else {
    rc = 1;
  }
  if (noutcomes > 0)
    print_summary();
  hl_cleanup();
  return hl_exit_code(rc);
}
