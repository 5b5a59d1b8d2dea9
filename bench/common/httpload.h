/* HTTP load for the benchmarks: the servers under test run as child
 * processes on free loopback ports, wrk loads them, and the figures go to
 * bench_compare().
 *
 * Every child leads its own process group (stopping it stops its workers
 * too) and gets SIGTERM if the benchmark dies (PR_SET_PDEATHSIG). The
 * children's working directory, logs and configuration live in a
 * temporary folder that hl_cleanup() removes (BENCH_KEEP_TMP=1 keeps it).
 * SIGINT/SIGTERM/SIGHUP stop the running wrk; the benchmark then fails its
 * comparison and cleans up; a second signal exits at once.
 *
 * Not thread-safe: call from the benchmark's main thread. Messages go to
 * stderr, prefixed with the program name given to hl_init(). */
#ifndef TRELLIS_BENCH_HTTPLOAD_H
#define TRELLIS_BENCH_HTTPLOAD_H

#include <limits.h>
#include <stddef.h>
#include <sys/types.h>

#include "bench.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest response body hl_http() keeps, and nginx's route bodies. */
#define HL_MAX_BODY 4096

/* A server under test. `name` is borrowed; pid is 0 when not running. */
typedef struct hl_server {
  const char *name;
  volatile pid_t pid;
  int port;
  char log[PATH_MAX];
} hl_server;

/* Find nginx and wrk, make the temporary folder, install the signal
 * handlers and register hl_cleanup() with atexit(). `prog` names the
 * program in messages and in the folder's name (borrowed for the run).
 * Returns 0, or -1 after saying why. */
int hl_init(const char *prog);

/* The temporary folder (empty before hl_init() and after hl_cleanup()). */
const char *hl_tmp_dir(void);

/* The number of the signal that interrupted the run, or 0. */
int hl_interrupted(void);

/* What main() returns: 128 + signal when interrupted, else `rc`. */
int hl_exit_code(int rc);

/* Stop every server still running, newest first, and remove the temporary
 * folder. Safe to call more than once. */
void hl_cleanup(void);

/* The api-management program: argv[1] when given, else
 * $TRELLIS_BIN_DIR/api-management, else the one next to this program.
 * Writes its real path into `out`; -1 after saying what to do. */
int hl_find_service(int argc, char **argv, char *out, size_t n);

/* Start api-management (`bin`) on a free port of 127.0.0.1 in folder `dir`
 * (NULL: the temporary folder), with the "KEY=VALUE" strings of `env`
 * (NULL-terminated, may be NULL) added to this process's environment, and
 * wait until it answers GET /health/live. Its output goes to
 * <tmp>/<name>.log. Returns 0, or -1 after printing the log's tail. */
int hl_start_service(hl_server *s, const char *bin, const char *dir, const char *const env[]);

/* A path nginx answers with `return 200 'body'` (both borrowed). */
typedef struct hl_route {
  const char *path;
  const char *body;
} hl_route;

/* Start nginx (worker_processes `workers`, no access log, keep-alive) on a
 * free port answering `routes` (at least one), and wait until it returns
 * each body. */
int hl_start_nginx(hl_server *s, int workers, const hl_route *routes, int nroutes);

/* Stop a server (SIGTERM to its group, SIGKILL after 5 s). */
void hl_stop(hl_server *s);

/* Wait until process `pid` uses less than 5% of a core over half a second,
 * for at most `timeout_ms`. Returns the milliseconds waited, or -1 on
 * timeout (or when its CPU time cannot be read). */
long hl_wait_idle(pid_t pid, long timeout_ms);

/* One request over a fresh connection to 127.0.0.1:`port`. `headers`
 * ("Name: value\r\n" lines) and `body` may be NULL. Returns the status,
 * or -1 when nothing answered; the response body (NUL-terminated,
 * truncated to n - 1) goes to `resp` when it is not NULL. */
int hl_http(int port, const char *method, const char *path, const char *headers,
            const char *body, char *resp, size_t n);

/* One wrk run against `srv`. A Lua script (`script`, a file) gets as its
 * arguments a tag unique to this run (pid and run number, so it can make
 * unique data), then `script_arg` when not NULL. */
typedef struct hl_load {
  const hl_server *srv;
  const char *path;
  int threads;
  int connections;
  int seconds;
  const char *header;     /* wrk -H, or NULL */
  const char *script;     /* wrk -s, or NULL */
  const char *script_arg; /* or NULL */
} hl_load;

/* A bench_run_fn: run wrk with the hl_load `ctx` and write [0] requests/s,
 * [1] p50 and [2] p99 latency in us. Fails (-1) when wrk fails, when any
 * response is not 2xx or 3xx, or when more than 1% of the requests met a
 * socket error. */
int hl_wrk(void *ctx, double *figures);

/* bench_compare() of the three hl_wrk() figures: cases `case_name` (req/s),
 * `case_name`_p50 and `case_name`_p99 (us, lower is better). `results`:
 * NULL, or 3 results written on success. */
int hl_compare(const char *bench, const char *case_name, const char *baseline_name,
               const char *conditions, bench_run_fn ours, void *ours_ctx, bench_run_fn baseline,
               void *baseline_ctx, bench_result *results);

#ifdef __cplusplus
}
#endif

#endif
