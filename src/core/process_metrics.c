/* Process metrics read from /proc/self at collect time: memory, file
 * descriptors, threads, CPU time, start time, and the build's identity. */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "build_info.h"
#include "trellis/error.h"
#include "trellis/metrics.h"

/* Families, in the order they are registered. */
enum { P_RSS, P_VSIZE, P_FDS, P_MAX_FDS, P_THREADS, P_START, P_CPU, P_COUNT };

static const struct {
  const char *name, *help;
  int counter;
} families[P_COUNT] = {
  [P_RSS] = { "process_resident_memory_bytes", "Resident memory size in bytes.", 0 },
  [P_VSIZE] = { "process_virtual_memory_bytes", "Virtual memory size in bytes.", 0 },
  [P_FDS] = { "process_open_fds", "Open file descriptors.", 0 },
  [P_MAX_FDS] = { "process_max_fds", "Limit on open file descriptors (RLIMIT_NOFILE).", 0 },
  [P_THREADS] = { "process_threads", "Threads in the process.", 0 },
  [P_START] = { "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.", 0 },
  [P_CPU] = { "process_cpu_seconds_total", "User and system CPU time spent in seconds.", 1 },
};

/* Serialises registrations, so a second call on a registry sees the first. */
static pthread_mutex_t register_mu = PTHREAD_MUTEX_INITIALIZER;

/* The unlabelled series of family `i` in `reg`; registering again finds the
 * family created by tl_metrics_register_process. */
static tl_series *family_series(tl_metrics *reg, int i)
{
  tl_metric *m = NULL;
  int rc = families[i].counter
               ? tl_metrics_counter(reg, families[i].name, families[i].help, NULL, &m)
               : tl_metrics_gauge(reg, families[i].name, families[i].help, NULL, &m);
  return rc == 0 ? tl_metric_default(m) : NULL;
}

/* The fields of /proc/self/stat we use (see proc(5)). */
typedef struct {
  double utime, stime;         /* clock ticks */
  double threads;
  double starttime;            /* clock ticks after boot */
  double vsize;                /* bytes */
  double rss;                  /* pages */
} proc_stat;

static int read_proc_stat(proc_stat *ps)
{
  char buf[1024];
  FILE *f = fopen("/proc/self/stat", "r");
  if (!f)
    return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* The command name (field 2) is in parentheses and may hold spaces or
   * ')': the fields resume after the last ')'. */
  char *p = strrchr(buf, ')');
  if (!p)
    return -1;
  p++;
  /* Field 3 is the state; we want 14, 15, 20, 22, 23 and 24. */
  double v[25] = { 0 };
  for (int field = 3; field <= 24; field++) {
    while (*p == ' ')
      p++;
    if (!*p)
      return -1;
    char *end;
    v[field] = field == 3 ? 0 : strtod(p, &end);
    if (field == 3)
      end = p + strcspn(p, " ");
    else if (end == p)
      return -1;
    p = end;
  }
  ps->utime = v[14];
  ps->stime = v[15];
  ps->threads = v[20];
  ps->starttime = v[22];
  ps->vsize = v[23];
  ps->rss = v[24];
  return 0;
}

/* Seconds since the epoch at boot, from the "btime" line of /proc/stat. */
static double boot_time(void)
{
  FILE *f = fopen("/proc/stat", "r");
  if (!f)
    return -1;
  char *line = NULL;
  size_t cap = 0;
  double bt = -1;
  while (getline(&line, &cap, f) > 0) {
    if (strncmp(line, "btime ", 6) == 0) {
      bt = strtod(line + 6, NULL);
      break;
    }
  }
  free(line);
  fclose(f);
  return bt;
}

/* Entries of /proc/self/fd, without the descriptor that reads the folder. */
static double open_fds(void)
{
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  int self = dirfd(d);
  double n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    if (atoi(e->d_name) == self)
      continue;
    n++;
  }
  closedir(d);
  return n;
}

/* Runs before each render: ctx is the registry. Values that cannot be read
 * keep their last value. */
static void collect(void *ctx)
{
  tl_metrics *reg = ctx;
  long ticks = sysconf(_SC_CLK_TCK);
  long page = sysconf(_SC_PAGESIZE);
  proc_stat ps;
  if (read_proc_stat(&ps) == 0 && ticks > 0 && page > 0) {
    tl_series_set(family_series(reg, P_RSS), ps.rss * (double)page);
    tl_series_set(family_series(reg, P_VSIZE), ps.vsize);
    tl_series_set(family_series(reg, P_THREADS), ps.threads);
    tl_series_set(family_series(reg, P_CPU), (ps.utime + ps.stime) / (double)ticks);
  }
  double fds = open_fds();
  if (fds >= 0)
    tl_series_set(family_series(reg, P_FDS), fds);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    tl_series_set(family_series(reg, P_MAX_FDS), (double)rl.rlim_cur);
}

int tl_metrics_register_process(tl_metrics *reg)
{
  if (!reg)
    return tl_error_set(TL_EINVAL, "metrics: NULL registry");
  pthread_mutex_lock(&register_mu);
  int rc = 0;
  for (int i = 0; i < P_COUNT && rc == 0; i++) {
    tl_metric *m;
    rc = families[i].counter
             ? tl_metrics_counter(reg, families[i].name, families[i].help, NULL, &m)
             : tl_metrics_gauge(reg, families[i].name, families[i].help, NULL, &m);
  }
  tl_metric *info = NULL;
  if (rc == 0)
    rc = tl_metrics_gauge(reg, "trellis_build_info",
                          "Always 1; the labels name the trellis version and commit.",
                          "version,commit", &info);
  if (rc != 0) {
    pthread_mutex_unlock(&register_mu);
    return tl_error_wrap(rc, "process metrics");
  }
  /* The start time is set once, here; a registry that already has it has
   * its collect hook too. */
  tl_series *start = family_series(reg, P_START);
  if (start && tl_series_value(start) > 0) {
    pthread_mutex_unlock(&register_mu);
    return 0;
  }
  proc_stat ps;
  long ticks = sysconf(_SC_CLK_TCK);
  double bt = boot_time();
  if (read_proc_stat(&ps) == 0 && bt > 0 && ticks > 0)
    tl_series_set(start, bt + ps.starttime / (double)ticks);
  tl_series *one = tl_metric_series(info, TL_LABELS(TL__VERSION, TL__COMMIT));
  if (!one) {
    pthread_mutex_unlock(&register_mu);
    return tl_error_set(TL_ENOMEM, "process metrics: out of memory");
  }
  tl_series_set(one, 1);
  rc = tl_metrics_on_collect(reg, collect, reg);
  pthread_mutex_unlock(&register_mu);
  if (rc != 0)
    return tl_error_wrap(rc, "process metrics");
  collect(reg);
  return 0;
}
