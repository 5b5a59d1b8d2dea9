/* HTTP load for the benchmarks: child servers, nginx, wrk. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "httpload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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
#include <unistd.h>

#define START_TIMEOUT_MS 30000
#define MAX_SERVERS 8
#define MAX_ENV 32

extern char **environ;

static const char *prog = "bench";
static char tmp_dir[256];
static char nginx_bin[PATH_MAX];
static char wrk_bin[PATH_MAX];
static hl_server *running[MAX_SERVERS];
static int nrunning;
static volatile sig_atomic_t interrupted;
static volatile pid_t wrk_pid;

/* dir + "/" + name into out; -1 when it does not fit. */
static int path_join(char *out, size_t n, const char *dir, const char *name)
{
  int r = snprintf(out, n, "%s/%s", dir, name);
  if (r < 0 || (size_t)r >= n) {
    fprintf(stderr, "%s: path too long: %s/%s\n", prog, dir, name);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Processes */

/* Forget `s` (its process is gone or about to be). */
static void unregister(const hl_server *s)
{
  for (int i = 0; i < nrunning; i++)
    if (running[i] == s) {
      memmove(&running[i], &running[i + 1], (size_t)(nrunning - i - 1) * sizeof running[0]);
      nrunning--;
      return;
    }
}

void hl_stop(hl_server *s)
{
  pid_t pid = s->pid;
  unregister(s);
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

void hl_cleanup(void)
{
  while (nrunning > 0)
    hl_stop(running[nrunning - 1]);
  if (tmp_dir[0] != '\0') {
    const char *keep = getenv("BENCH_KEEP_TMP");
    if (keep != NULL && strcmp(keep, "1") == 0)
      fprintf(stderr, "%s: kept %s\n", prog, tmp_dir);
    else
      nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmp_dir[0] = '\0';
  }
}

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

int hl_interrupted(void)
{
  return interrupted;
}

int hl_exit_code(int rc)
{
  return interrupted ? 128 + interrupted : rc;
}

const char *hl_tmp_dir(void)
{
  return tmp_dir;
}

/* Child side of a fork: own process group, die with the parent, then exec.
 * `out` receives stdout and stderr. */
static void exec_child(const char *dir, int out, const char *const argv[], char **envp,
                       pid_t parent)
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
  execve(argv[0], (char *const *)argv, envp);
  fprintf(stderr, "%s: cannot run %s: %s\n", prog, argv[0], strerror(errno));
  _exit(127);
}

/* This process's environment with the "KEY=VALUE" strings of `env` added
 * or replacing; free the array (not the strings) after the fork. */
static char **child_environ(const char *const env[])
{
  size_t n = 0, k = 0, m = 0;
  while (environ[n] != NULL)
    n++;
  while (env != NULL && env[k] != NULL)
    k++;
  char **out = calloc(n + k + 1, sizeof *out);
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    bool replaced = false;
    for (size_t j = 0; j < k && !replaced; j++) {
      size_t len = strcspn(env[j], "=");
      replaced = strncmp(environ[i], env[j], len) == 0 && environ[i][len] == '=';
    }
    if (!replaced)
      out[m++] = environ[i];
  }
  for (size_t j = 0; j < k; j++)
    out[m++] = (char *)(uintptr_t)env[j];
  return out;
}

static pid_t spawn(const char *dir, int out, const char *const argv[], const char *const env[])
{
  pid_t parent = getpid();
  char **envp = child_environ(env);
  if (envp == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "%s: fork: %s\n", prog, strerror(errno));
    free(envp);
    return -1;
  }
  if (pid == 0)
    exec_child(dir, out, argv, envp, parent);
  free(envp);
  setpgid(pid, pid);
  return pid;
}

static void print_log_tail(const char *log)
{
  fprintf(stderr, "---- last lines of %s\n", log);
  fflush(stderr);
  FILE *f = fopen(log, "r");
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

int hl_init(const char *name)
{
  prog = name;
  if (find_program("nginx", nginx_bin, sizeof nginx_bin) != 0 ||
      find_program("wrk", wrk_bin, sizeof wrk_bin) != 0) {
    fprintf(stderr, "%s: needs nginx and wrk (Debian nginx-light and wrk); run "
                    "scripts/install-deps bench\n", prog);
    return -1;
  }
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/trellis-%s.XXXXXX", prog);
  if (mkdtemp(tmp_dir) == NULL) {
    fprintf(stderr, "%s: mkdtemp: %s\n", prog, strerror(errno));
    tmp_dir[0] = '\0';
    return -1;
  }
  atexit(hl_cleanup);
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

int hl_find_service(int argc, char **argv, char *out, size_t n)
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
      fprintf(stderr, "%s: cannot find this program's folder: %s\n", prog, strerror(errno));
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
            "%s: no api-management at %s; build it, or pass its path as the first "
            "argument or set TRELLIS_BIN_DIR\n", prog, out);
    return -1;
  }
  snprintf(out, n, "%s", resolved);
  return 0;
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

int hl_http(int port, const char *method, const char *path, const char *headers,
            const char *body, char *resp, size_t n)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 2};
  char req[HL_MAX_BODY + 1024], in[HL_MAX_BODY + 2048];
  size_t got = 0, blen = body ? strlen(body) : 0;
  int status = -1;
  int len = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, port, headers ? headers : "", blen, body ? body : "");
  if (len < 0 || (size_t)len >= sizeof req) {
    fprintf(stderr, "%s: %s %s: request too large\n", prog, method, path);
    return -1;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
    goto out;
  if (send(fd, req, (size_t)len, MSG_NOSIGNAL) != len)
    goto out;
  for (;;) {
    ssize_t r = recv(fd, in + got, sizeof in - 1 - got, 0);
    if (r <= 0)
      break;
    got += (size_t)r;
    if (got == sizeof in - 1)
      break;
  }
  in[got] = '\0';
  if (sscanf(in, "HTTP/1.%*d %d", &status) != 1)
    status = -1;
  if (resp != NULL && n > 0) {
    const char *b = strstr(in, "\r\n\r\n");
    snprintf(resp, n, "%s", b ? b + 4 : "");
  }
out:
  close(fd);
  return status;
}

/* Wait until the server answers GET `path` with 200. */
static int wait_answering(hl_server *s, const char *path)
{
  for (int waited = 0; waited < START_TIMEOUT_MS && !interrupted; waited += 50) {
    int status;
    pid_t r = waitpid(s->pid, &status, WNOHANG);
    if (r == s->pid) {
      unregister(s);
      s->pid = 0;
      fprintf(stderr, "%s: %s exited while starting (%s %d)\n", prog, s->name,
              WIFEXITED(status) ? "exit code" : "signal",
              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      print_log_tail(s->log);
      return -1;
    }
    if (hl_http(s->port, "GET", path, NULL, NULL, NULL, 0) == 200)
      return 0;
    usleep(50 * 1000);
  }
  if (interrupted)
    return -1;
  fprintf(stderr, "%s: %s did not answer GET %s on 127.0.0.1:%d within %d s\n", prog, s->name,
          path, s->port, START_TIMEOUT_MS / 1000);
  print_log_tail(s->log);
  return -1;
}

/* Spawn `argv` as server `s` (a free port is already in s->port) with its
 * output in s->log, and register it for hl_cleanup(). */
static int start_server(hl_server *s, const char *dir, const char *const argv[],
                        const char *const env[])
{
  if (nrunning == MAX_SERVERS) {
    fprintf(stderr, "%s: more than %d servers\n", prog, MAX_SERVERS);
    return -1;
  }
  int out = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    fprintf(stderr, "%s: %s: %s\n", prog, s->log, strerror(errno));
    return -1;
  }
  s->pid = spawn(dir, out, argv, env);
  close(out);
  if (s->pid < 0) {
    s->pid = 0;
    return -1;
  }
  running[nrunning++] = s;
  return 0;
}

static int pick_port(hl_server *s)
{
  s->port = free_port();
  if (s->port < 0) {
    fprintf(stderr, "%s: no free loopback port: %s\n", prog, strerror(errno));
    return -1;
  }
  return 0;
}

int hl_start_service(hl_server *s, const char *bin, const char *dir, const char *const env[])
{
  char port[32], logname[128];
  const char *all[MAX_ENV + 3] = {port, "HTTP_BIND=127.0.0.1"};
  int n = 2;
  if (pick_port(s) != 0)
    return -1;
  snprintf(port, sizeof port, "HTTP_PORT=%d", s->port);
  for (; env != NULL && *env != NULL; env++) {
    if (n == MAX_ENV + 2) {
      fprintf(stderr, "%s: %s: more than %d variables\n", prog, s->name, MAX_ENV);
      return -1;
    }
    all[n++] = *env;
  }
  snprintf(logname, sizeof logname, "%s.log", s->name);
  if (path_join(s->log, sizeof s->log, tmp_dir, logname) != 0)
    return -1;
  const char *argv[] = {bin, NULL};
  if (start_server(s, dir ? dir : tmp_dir, argv, all) != 0)
    return -1;
  return wait_answering(s, "/health/live");
}

/* ------------------------------------------------------------------------
 * nginx */

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

static int write_nginx_conf(const char *conf, int port, int workers, const hl_route *routes,
                            int nroutes)
{
  FILE *f = fopen(conf, "w");
  if (f == NULL) {
    fprintf(stderr, "%s: %s: %s\n", prog, conf, strerror(errno));
    return -1;
  }
  fprintf(f,
          "worker_processes %d;\n"
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
          workers, tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir, tmp_dir, port);
  for (int i = 0; i < nroutes; i++) {
    fprintf(f, "    location = %s { return 200 ", routes[i].path);
    nginx_quote(f, routes[i].body);
    fputs("; }\n", f);
  }
  fputs("  }\n}\n", f);
  if (fclose(f) != 0) {
    fprintf(stderr, "%s: %s: %s\n", prog, conf, strerror(errno));
    return -1;
  }
  return 0;
}

int hl_start_nginx(hl_server *s, int workers, const hl_route *routes, int nroutes)
{
  char conf[PATH_MAX], errlog[PATH_MAX], body[HL_MAX_BODY];
  if (pick_port(s) != 0)
    return -1;
  if (path_join(conf, sizeof conf, tmp_dir, "nginx.conf") != 0 ||
      path_join(errlog, sizeof errlog, tmp_dir, "nginx-error.log") != 0 ||
      path_join(s->log, sizeof s->log, tmp_dir, "nginx.out") != 0)
    return -1;
  if (write_nginx_conf(conf, s->port, workers, routes, nroutes) != 0)
    return -1;
  const char *argv[] = {nginx_bin, "-p", tmp_dir, "-c", conf, "-e", errlog, NULL};
  if (start_server(s, tmp_dir, argv, NULL) != 0)
    return -1;
  if (nroutes < 1 || wait_answering(s, routes[0].path) != 0) {
    print_log_tail(errlog);
    return -1;
  }
  for (int i = 0; i < nroutes; i++) {
    if (hl_http(s->port, "GET", routes[i].path, NULL, NULL, body, sizeof body) != 200 ||
        strcmp(body, routes[i].body) != 0) {
      fprintf(stderr, "%s: nginx does not return the expected body for %s\n", prog,
              routes[i].path);
      return -1;
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Idle detection */

/* User + system CPU time of `pid` (all its threads), in clock ticks. */
static long cpu_ticks(pid_t pid)
{
  char path[64], line[1024];
  unsigned long user = 0, sys = 0;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  char *ok = fgets(line, sizeof line, f);
  fclose(f);
  /* The command name may hold spaces: the fields start after its ')'. */
  const char *p = ok ? strrchr(line, ')') : NULL;
  if (p == NULL ||
      sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &user, &sys) != 2)
    return -1;
  return (long)(user + sys);
}

long hl_wait_idle(pid_t pid, long timeout_ms)
{
  const long window_ms = 500;
  long hz = sysconf(_SC_CLK_TCK), waited = 0;
  long before = cpu_ticks(pid);
  if (before < 0 || hz <= 0)
    return -1;
  while (!interrupted) {
    usleep((useconds_t)window_ms * 1000);
    long now = cpu_ticks(pid);
    if (now < 0)
      return -1;
    if ((now - before) * 1000 / hz * 20 <= window_ms)
      return waited;
    waited += window_ms;
    if (waited >= timeout_ms)
      return -1;
    before = now;
  }
  return -1;
}

/* ------------------------------------------------------------------------
 * wrk */

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

/* Run wrk with `argv`, its output (stdout and stderr) into `out`. */
static int run_capture(const char *const argv[], char *out, size_t n)
{
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    fprintf(stderr, "%s: pipe: %s\n", prog, strerror(errno));
    return -1;
  }
  pid_t pid = spawn(NULL, fds[1], argv, NULL);
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    return -1;
  }
  wrk_pid = pid;
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fds[0], out + got, n - 1 - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
    if (got == n - 1)
      break;
  }
  out[got] = '\0';
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  wrk_pid = 0;
  if (interrupted) {
    fprintf(stderr, "%s: interrupted\n", prog);
    return -1;
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int hl_wrk(void *ctx, double *figures)
{
  static unsigned runs;
  const hl_load *ld = ctx;
  char url[256], dur[32], threads[16], conns[16], tag[48], out[16384];
  const char *argv[24];
  int argc = 0;
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", ld->srv->port, ld->path);
  snprintf(dur, sizeof dur, "%ds", ld->seconds);
  snprintf(threads, sizeof threads, "%d", ld->threads);
  snprintf(conns, sizeof conns, "%d", ld->connections);
  snprintf(tag, sizeof tag, "%d-%u", (int)getpid(), ++runs);
  const char *fixed[] = {wrk_bin, "-t", threads, "-c", conns, "-d", dur, "--timeout", "5s",
                         "--latency"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    argv[argc++] = fixed[i];
  if (ld->header != NULL) {
    argv[argc++] = "-H";
    argv[argc++] = ld->header;
  }
  if (ld->script != NULL) {
    argv[argc++] = "-s";
    argv[argc++] = ld->script;
  }
  argv[argc++] = url;
  if (ld->script != NULL) {
    argv[argc++] = "--";
    argv[argc++] = tag;
    if (ld->script_arg != NULL)
      argv[argc++] = ld->script_arg;
  }
  argv[argc] = NULL;
  if (interrupted)
    return -1;
  if (run_capture(argv, out, sizeof out) != 0) {
    if (!interrupted)
      fprintf(stderr, "%s: wrk failed on %s:\n%s\n", prog, url, out);
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
    fprintf(stderr, "%s: could not read Requests/sec and the 50%%/99%% latencies "
                    "from wrk's output for %s\n", prog, url);
    return -1;
  }
  if (non2xx > 0) {
    fprintf(stderr, "%s: %s answered %ld of %ld requests with a non-2xx status on %s\n", prog,
            ld->srv->name, non2xx, requests, ld->path);
    return -1;
  }
  long errors = e_connect + e_read + e_write + e_timeout;
  if (errors * 100 > requests) {
    fprintf(stderr, "%s: %s: %ld socket errors for %ld requests on %s "
                    "(connect %ld, read %ld, write %ld, timeout %ld)\n", prog, ld->srv->name,
            errors, requests, ld->path, e_connect, e_read, e_write, e_timeout);
    return -1;
  }
  figures[0] = rps;
  figures[1] = p50;
  figures[2] = p99;
  return 0;
}

int hl_compare(const char *bench, const char *case_name, const char *baseline_name,
               const char *conditions, bench_run_fn ours, void *ours_ctx, bench_run_fn baseline,
               void *baseline_ctx, bench_result *results)
{
  char n_rps[64], n_p50[64], n_p99[64];
  snprintf(n_rps, sizeof n_rps, "%s", case_name);
  snprintf(n_p50, sizeof n_p50, "%s_p50", case_name);
  snprintf(n_p99, sizeof n_p99, "%s_p99", case_name);
  bench_metric metrics[] = {
      {n_rps, "req/s", false},
      {n_p50, "us p50", true},
      {n_p99, "us p99", true},
  };
  bench_spec spec = {
      .bench = bench,
      .baseline_name = baseline_name,
      .conditions = conditions,
      .metrics = metrics,
      .nmetrics = 3,
      .ours = ours,
      .ours_ctx = ours_ctx,
      .baseline = baseline,
      .baseline_ctx = baseline_ctx,
      .results = results,
  };
  return bench_compare(&spec);
}
