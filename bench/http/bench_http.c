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
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define WRK_THREADS 1
#define WRK_CONNECTIONS 32
#define START_TIMEOUT_MS 30000
#define MAX_BODY 4096

typedef struct server {
  const char *name;
  volatile pid_t pid; /* process group leader; 0 when not running */
  int port;
  char log[PATH_MAX];
} server;

static server api = {.name = "api-management"};
static server nginx = {.name = "nginx"};
static char tmp_dir[256];
static char nginx_bin[PATH_MAX];
static char wrk_bin[PATH_MAX];

/* dir + "/" + name into out; -1 when it does not fit. */
static int path_join(char *out, size_t n, const char *dir, const char *name)
{
  int r = snprintf(out, n, "%s/%s", dir, name);
  if (r < 0 || (size_t)r >= n) {
    fprintf(stderr, "bench_http: path too long: %s/%s\n", dir, name);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Processes: every child leads its own process group, so stopping it stops
 * its workers too, and gets SIGTERM if this program dies. */

static void stop_server(server *s)
{
  pid_t pid = s->pid;
  if (pid <= 0)
    return;
  bool reaped = false;
  kill(-pid, SIGTERM);
  for (int i = 0; i < 100 && !reaped; i++) {
    if (waitpid(pid, NULL, WNOHANG) == pid)
      reaped = true;
    else
      usleep(50 * 1000);
  }
  kill(-pid, SIGKILL); /* stragglers: nginx workers, or a server that hung */
  if (!reaped)
    waitpid(pid, NULL, 0);
  s->pid = 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void cleanup(void)
{
  stop_server(&nginx);
  stop_server(&api);
  if (tmp_dir[0] != '\0') {
    const char *keep = getenv("BENCH_KEEP_TMP");
    if (keep != NULL && strcmp(keep, "1") == 0)
      fprintf(stderr, "bench_http: kept %s\n", tmp_dir);
    else
      nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmp_dir[0] = '\0';
  }
}

static volatile sig_atomic_t interrupted;
static volatile pid_t wrk_pid;

/* Stop the load now; main() then cleans up as on any failure. A second
 * signal exits at once (the servers still get SIGTERM: PR_SET_PDEATHSIG). */
static void on_signal(int sig)
{
  if (interrupted)
    _exit(128 + sig);
  interrupted = sig;
  if (wrk_pid > 0)
    kill(-wrk_pid, SIGTERM);
}

/* Child side of a fork: own process group, die with the parent, then exec.
 * `out` receives stdout and stderr. */
static void exec_child(const char *dir, int out, const char *const argv[], pid_t parent)
{
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent)
    _exit(127);
  signal(SIGPIPE, SIG_DFL);
  if (dir != NULL && chdir(dir) != 0)
    _exit(127);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0)
    dup2(devnull, 0);
  dup2(out, 1);
  dup2(out, 2);
  execv(argv[0], (char *const *)argv);
  fprintf(stderr, "bench_http: cannot run %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

static pid_t spawn(const char *dir, int out, const char *const argv[])
{
  pid_t parent = getpid();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "bench_http: fork: %s\n", strerror(errno));
    return -1;
  }
  if (pid == 0)
    exec_child(dir, out, argv, parent);
  setpgid(pid, pid);
  return pid;
}

static void print_log_tail(const server *s)
{
  fprintf(stderr, "---- last lines of %s\n", s->log);
  fflush(stderr);
  FILE *f = fopen(s->log, "r");
  if (f == NULL)
    return;
  /* Keep the last 4 KiB: enough for the reason a server did not start. */
  static char buf[4096];
  if (fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    fseek(f, size > (long)sizeof buf ? size - (long)sizeof buf : 0, SEEK_SET);
  }
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  fwrite(buf, 1, n, stderr);
}

/* Find an executable in PATH, then in the sbin folders (nginx lives in
 * /usr/sbin, which a non-root PATH may lack). */
static int find_program(const char *name, char *out, size_t n)
{
  const char *path = getenv("PATH");
  char dirs[4096];
  snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin:/usr/local/sbin", path ? path : "/usr/bin:/bin");
  for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    if (snprintf(out, n, "%s/%s", d, name) < (int)n && access(out, X_OK) == 0)
      return 0;
  }
  return -1;
}

/* ------------------------------------------------------------------------
 * Loopback HTTP */

static int free_port(void)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

/* GET a path over a fresh connection. Returns the status code, or -1 when
 * nothing answered; the body (NUL-terminated, truncated to n - 1) goes to
 * `body` when it is not NULL. */
static int http_get(int port, const char *path, char *body, size_t n)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 2};
  char req[512], resp[MAX_BODY + 2048];
  size_t got = 0;
  int status = -1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
    goto out;
  int len = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path,
                     port);
  if (send(fd, req, (size_t)len, MSG_NOSIGNAL) != len)
    goto out;
  for (;;) {
    ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, 0);
    if (r <= 0)
      break;
    got += (size_t)r;
    if (got == sizeof resp - 1)
      break;
  }
  resp[got] = '\0';
  if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
    status = -1;
  if (body != NULL && n > 0) {
    const char *b = strstr(resp, "\r\n\r\n");
    snprintf(body, n, "%s", b ? b + 4 : "");
  }
out:
  close(fd);
  return status;
}

/* Wait until the server answers GET /health/live with 200. */
static int wait_answering(server *s)
{
  for (int waited = 0; waited < START_TIMEOUT_MS && !interrupted; waited += 50) {
    int status;
    pid_t r = waitpid(s->pid, &status, WNOHANG);
    if (r == s->pid) {
      s->pid = 0;
      fprintf(stderr, "bench_http: %s exited while starting (%s %d)\n", s->name,
              WIFEXITED(status) ? "exit code" : "signal",
              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      print_log_tail(s);
      return -1;
    }
    if (http_get(s->port, "/health/live", NULL, 0) == 200)
      return 0;
    usleep(50 * 1000);
  }
  if (interrupted)
    return -1;
  fprintf(stderr, "bench_http: %s did not answer GET /health/live on 127.0.0.1:%d within %d s\n",
          s->name, s->port, START_TIMEOUT_MS / 1000);
  print_log_tail(s);
  return -1;
}

/* ------------------------------------------------------------------------
 * The two servers */

static int start_api(const char *bin)
{
  char port[16];
  api.port = free_port();
  if (api.port < 0) {
    fprintf(stderr, "bench_http: no free loopback port: %s\n", strerror(errno));
    return -1;
  }
  snprintf(port, sizeof port, "%d", api.port);
  if (path_join(api.log, sizeof api.log, tmp_dir, "api-management.log") != 0)
    return -1;
  /* Its own environment, so a developer's .env or shell cannot change what
   * is measured; the temporary folder is its working directory. */
  setenv("HTTP_PORT", port, 1);
  setenv("HTTP_BIND", "127.0.0.1", 1);
  setenv("HTTP_THREADS", "1", 1);
  setenv("LOG_LEVEL", "warn", 1);
  int out = open(api.log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    fprintf(stderr, "bench_http: %s: %s\n", api.log, strerror(errno));
    return -1;
  }
  const char *argv[] = {bin, NULL};
  api.pid = spawn(tmp_dir, out, argv);
  close(out);
  unsetenv("HTTP_PORT");
  unsetenv("HTTP_BIND");
  unsetenv("HTTP_THREADS");
  unsetenv("LOG_LEVEL");
  if (api.pid < 0) {
    api.pid = 0;
    return -1;
  }
  return wait_answering(&api);
}

/* Write `body` as an nginx single-quoted string. `$` would start a
 * variable, so it comes from the ${dollar} variable defined by geo. */
static void nginx_quote(FILE *f, const char *body)
{
  fputc('\'', f);
  for (const char *p = body; *p; p++) {
    if (*p == '\'' || *p == '\\')
      fputc('\\', f);
    if (*p == '$')
      fputs("${dollar}", f);
    else
      fputc(*p, f);
  }
  fputc('\'', f);
}

typedef struct route {
  const char *path;
  char body[MAX_BODY];
} route;

static int write_nginx_conf(const char *conf, const route *routes, int nroutes)
{
  FILE *f = fopen(conf, "w");
  if (f == NULL) {
    fprintf(stderr, "bench_http: %s: %s\n", conf, strerror(errno));
    return -1;
  }
  fprintf(f,
          "worker_processes 1;\n"
          "daemon off;\n"
          "pid %s/nginx.pid;\n"
          "error_log %s/nginx-error.log warn;\n"
          "events { worker_connections 1024; }\n"
          "http {\n"
          "  access_log off;\n"
          "  default_type application/json;\n"
          "  keepalive_requests 100000000;\n"
          "  keepalive_timeout 75s;\n"
          "  client_body_temp_path %s/body;\n"
          "  proxy_temp_path %s/proxy;\n"
          "  fastcgi_temp_path %s/fastcgi;\n"
          "  uwsgi_temp_path %s/uwsgi;\n"
          "  scgi_temp_path %s/scgi;\n"
          "  geo $dollar { default \"$\"; }\n"
          "  server {\n"
          "    listen 127.0.0.1:%d;\n",
          tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir, nginx.port);
  for (int i = 0; i < nroutes; i++) {
    fprintf(f, "    location = %s { return 200 ", routes[i].path);
    nginx_quote(f, routes[i].body);
    fputs("; }\n", f);
  }
  fputs("  }\n}\n", f);
  if (fclose(f) != 0) {
    fprintf(stderr, "bench_http: %s: %s\n", conf, strerror(errno));
    return -1;
  }
  return 0;
}

static int start_nginx(const route *routes, int nroutes)
{
  char conf[PATH_MAX], errlog[PATH_MAX];
  nginx.port = free_port();
  if (nginx.port < 0) {
    fprintf(stderr, "bench_http: no free loopback port: %s\n", strerror(errno));
    return -1;
  }
  if (path_join(conf, sizeof conf, tmp_dir, "nginx.conf") != 0 ||
      path_join(errlog, sizeof errlog, tmp_dir, "nginx-error.log") != 0 ||
      path_join(nginx.log, sizeof nginx.log, tmp_dir, "nginx.out") != 0)
    return -1;
  if (write_nginx_conf(conf, routes, nroutes) != 0)
    return -1;
  int out = open(nginx.log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    fprintf(stderr, "bench_http: %s: %s\n", nginx.log, strerror(errno));
    return -1;
  }
  const char *argv[] = {nginx_bin, "-p", tmp_dir, "-c", conf, "-e", errlog, NULL};
  nginx.pid = spawn(tmp_dir, out, argv);
  close(out);
  if (nginx.pid < 0) {
    nginx.pid = 0;
    return -1;
  }
  if (wait_answering(&nginx) != 0) {
    snprintf(nginx.log, sizeof nginx.log, "%s", errlog);
    print_log_tail(&nginx);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * wrk */

typedef struct load {
  int seconds;
} load;

typedef struct side {
  const server *srv;
  const char *path;
  const load *load;
} side;

/* "123.45us", "1.20ms", "2.00s" -> microseconds; -1 if unreadable. */
static double parse_latency_us(const char *s)
{
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s)
    return -1;
  if (strncmp(end, "us", 2) == 0)
    return v;
  if (strncmp(end, "ms", 2) == 0)
    return v * 1e3;
  if (strncmp(end, "s", 1) == 0)
    return v * 1e6;
  if (strncmp(end, "m", 1) == 0)
    return v * 60e6;
  return -1;
}

/* Figures: [0] requests/s, [1] p50 latency in us, [2] p99 latency in us. */
static int run_wrk(void *ctx, double *figures)
{
  const side *sd = ctx;
  char url[256], dur[32], threads[16], conns[16], out[16384];
  int fds[2];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", sd->srv->port, sd->path);
  snprintf(dur, sizeof dur, "%ds", sd->load->seconds);
  snprintf(threads, sizeof threads, "%d", WRK_THREADS);
  snprintf(conns, sizeof conns, "%d", WRK_CONNECTIONS);
  const char *argv[] = {wrk_bin, "-t", threads, "-c", conns, "-d", dur, "--timeout", "5s",
                        "--latency", url, NULL};
  if (pipe2(fds, O_CLOEXEC) != 0) {
    fprintf(stderr, "bench_http: pipe: %s\n", strerror(errno));
    return -1;
  }
  if (interrupted)
    return -1;
  pid_t pid = spawn(NULL, fds[1], argv);
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    return -1;
  }
  wrk_pid = pid;
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fds[0], out + got, sizeof out - 1 - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
    if (got == sizeof out - 1)
      break;
  }
  out[got] = '\0';
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  wrk_pid = 0;
  if (interrupted) {
    fprintf(stderr, "bench_http: interrupted\n");
    return -1;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench_http: wrk failed on %s:\n%s\n", url, out);
    return -1;
  }

  double rps = -1, p50 = -1, p99 = -1;
  long requests = 0, non2xx = 0, e_connect = 0, e_read = 0, e_write = 0, e_timeout = 0;
  for (char *save = NULL, *line = strtok_r(out, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    while (*line == ' ' || *line == '\t')
      line++;
    if (strncmp(line, "Requests/sec:", 13) == 0)
      rps = strtod(line + 13, NULL);
    else if (strncmp(line, "50%", 3) == 0)
      p50 = parse_latency_us(line + 3 + strspn(line + 3, " \t"));
    else if (strncmp(line, "99%", 3) == 0)
      p99 = parse_latency_us(line + 3 + strspn(line + 3, " \t"));
    else if (strncmp(line, "Non-2xx or 3xx responses:", 26) == 0)
      non2xx = strtol(line + 26, NULL, 10);
    else if (strncmp(line, "Socket errors:", 14) == 0)
      sscanf(line, "Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &e_connect,
             &e_read, &e_write, &e_timeout);
    else if (strstr(line, " requests in ") != NULL)
      requests = strtol(line, NULL, 10);
  }
  if (rps <= 0 || p50 <= 0 || p99 <= 0) {
    fprintf(stderr, "bench_http: could not read Requests/sec and the 50%%/99%% latencies "
                    "from wrk's output for %s\n", url);
    return -1;
  }
  if (non2xx > 0) {
    fprintf(stderr, "bench_http: %s answered %ld of %ld requests with a non-2xx status on %s\n",
            sd->srv->name, non2xx, requests, sd->path);
    return -1;
  }
  long errors = e_connect + e_read + e_write + e_timeout;
  if (errors * 100 > requests) {
    fprintf(stderr, "bench_http: %s: %ld socket errors for %ld requests on %s "
                    "(connect %ld, read %ld, write %ld, timeout %ld)\n", sd->srv->name, errors,
            requests, sd->path, e_connect, e_read, e_write, e_timeout);
    return -1;
  }
  figures[0] = rps;
  figures[1] = p50;
  figures[2] = p99;
  return 0;
}

/* ------------------------------------------------------------------------ */

static int compare(const char *case_name, const char *path, const load *ld, size_t body_len)
{
  char n_rps[64], n_p50[64], n_p99[64], conditions[512];
  snprintf(n_rps, sizeof n_rps, "%s", case_name);
  snprintf(n_p50, sizeof n_p50, "%s_p50", case_name);
  snprintf(n_p99, sizeof n_p99, "%s_p99", case_name);
  bench_metric metrics[] = {
      {n_rps, "req/s", false},
      {n_p50, "us p50", true},
      {n_p99, "us p99", true},
  };
  snprintf(conditions, sizeof conditions,
           "GET %s, same %zu-byte JSON body; one server thread each (nginx worker_processes 1, "
           "api-management HTTP_THREADS=1); wrk -t%d -c%d keep-alive, %d s runs; loopback; "
           "no access logs; nothing pinned",
           path, body_len, WRK_THREADS, WRK_CONNECTIONS, ld->seconds);
  side ours = {&api, path, ld}, base = {&nginx, path, ld};
  bench_spec spec = {
      .bench = "http",
      .baseline_name = "nginx",
      .conditions = conditions,
      .metrics = metrics,
      .nmetrics = 3,
      .ours = run_wrk,
      .ours_ctx = &ours,
      .baseline = run_wrk,
      .baseline_ctx = &base,
  };
  return bench_compare(&spec);
}

static int locate_service(int argc, char **argv, char *out, size_t n)
{
  const char *dir = getenv("TRELLIS_BIN_DIR");
  char self[PATH_MAX];
  if (argc > 1) {
    snprintf(out, n, "%s", argv[1]);
  } else if (dir != NULL && dir[0] != '\0') {
    if (path_join(out, n, dir, "api-management") != 0)
      return -1;
  } else {
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
      fprintf(stderr, "bench_http: cannot find this program's folder: %s\n", strerror(errno));
      return -1;
    }
    self[len] = '\0';
    char *slash = strrchr(self, '/');
    if (slash != NULL)
      *slash = '\0';
    if (path_join(out, n, self, "api-management") != 0)
      return -1;
  }
  char resolved[PATH_MAX];
  if (realpath(out, resolved) == NULL || access(resolved, X_OK) != 0) {
    fprintf(stderr,
            "bench_http: no api-management at %s; build it, or pass its path as the first "
            "argument or set TRELLIS_BIN_DIR\n", out);
    return -1;
  }
  snprintf(out, n, "%s", resolved);
  return 0;
}

int main(int argc, char **argv)
{
  char service[PATH_MAX];
  route routes[2] = {{.path = "/health/live"}, {.path = "/version"}};
  int nroutes = 1, rc = 1;

  if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))) {
    fprintf(argc > 2 ? stderr : stdout, "usage: bench_http [PATH/TO/api-management]\n");
    return argc > 2 ? 2 : 0;
  }
  if (find_program("nginx", nginx_bin, sizeof nginx_bin) != 0 ||
      find_program("wrk", wrk_bin, sizeof wrk_bin) != 0) {
    fprintf(stderr, "bench_http: needs nginx and wrk (Debian nginx-light and wrk); run "
                    "scripts/install-deps bench\n");
    return 1;
  }
  if (locate_service(argc, argv, service, sizeof service) != 0)
    return 1;

  load ld = {.seconds = (int)bench_size(2, 1)};
  const char *secs = getenv("BENCH_HTTP_SECONDS");
  if (secs != NULL && atoi(secs) > 0)
    ld.seconds = atoi(secs);

  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/trellis-bench-http.XXXXXX");
  if (mkdtemp(tmp_dir) == NULL) {
    fprintf(stderr, "bench_http: mkdtemp: %s\n", strerror(errno));
    tmp_dir[0] = '\0';
    return 1;
  }
  atexit(cleanup);
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  fprintf(stderr, "bench_http: %s against %s, wrk %d s runs\n", service, nginx_bin, ld.seconds);
  if (start_api(service) != 0)
    goto out;

  /* nginx returns exactly what the service returned. */
  if (http_get(api.port, routes[0].path, routes[0].body, sizeof routes[0].body) != 200) {
    fprintf(stderr, "bench_http: api-management stopped answering GET /health/live\n");
    goto out;
  }
  if (http_get(api.port, routes[1].path, routes[1].body, sizeof routes[1].body) == 200)
    nroutes = 2;
  else
    fprintf(stderr, "bench_http: api-management does not serve GET /version: that case is "
                    "skipped\n");

  if (start_nginx(routes, nroutes) != 0)
    goto out;
  for (int i = 0; i < nroutes; i++) {
    char body[MAX_BODY];
    if (http_get(nginx.port, routes[i].path, body, sizeof body) != 200 ||
        strcmp(body, routes[i].body) != 0) {
      fprintf(stderr, "bench_http: nginx does not return the service's body for %s\n",
              routes[i].path);
      goto out;
    }
  }

  if (compare("health_live", "/health/live", &ld, strlen(routes[0].body)) != 0)
    goto out;
  if (nroutes > 1 && compare("version_json", "/version", &ld, strlen(routes[1].body)) != 0)
    goto out;
  rc = 0;
out:
  cleanup();
  return interrupted ? 128 + interrupted : rc;
}
