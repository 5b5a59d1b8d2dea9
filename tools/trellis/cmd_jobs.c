/* trellis jobs: inspect and steer the durable job queue.
 *
 *   trellis jobs ls     [--url URL] [--state S] [--kind K] [--limit N]
 *   trellis jobs retry  [--url URL] ID
 *   trellis jobs cancel [--url URL] ID
 *
 * --url defaults to DATABASE_URL. Jobs print as JSON lines, by id. The
 * queue is reached through the jobs API (a paused executor on the
 * database), so the CLI sees what every replica sees. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/db.h>
#include <trellis/jobs.h>

#include "cli.h"


static void jobs_usage(FILE *out)
{
  fprintf(out, "usage: trellis jobs ls [--url URL] [--state S] [--kind K] [--limit N]\n"
               "       trellis jobs retry [--url URL] ID\n"
               "       trellis jobs cancel [--url URL] ID\n"
               "URL defaults to DATABASE_URL. S is pending (available, scheduled or\n"
               "retryable), running, completed, discarded or cancelled. Jobs print as\n"
               "JSON lines, by id; N is 1-10000 (100).\n");
}

static void put_str(FILE *f, const char *s)
{
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c == '\n')
      fputs("\\n", f);
    else if (c == '\t')
      fputs("\\t", f);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

static void put_time(FILE *f, int64_t us)
{
  char buf[40];
  if (!us) {
    fputs("null", f);
    return;
  }
  tl_time_format(us, 6, buf, sizeof buf);
  put_str(f, buf);
}

static void put_job(FILE *f, const tl_job_info *j)
{
  fprintf(f, "{\"id\":%lld,\"kind\":", (long long)j->id);
  put_str(f, j->kind);
  fputs(",\"queue\":", f);
  put_str(f, j->queue);
  fprintf(f, ",\"state\":\"%s\",\"priority\":%d,\"attempt\":%u,\"max_retries\":%d,"
          "\"cancel_requested\":%s,\"unique_key\":", tl_job_state_name(j->state), j->priority,
          j->attempt, j->max_retries, j->cancel_requested ? "true" : "false");
  put_str(f, j->unique_key);
  fputs(",\"created_at\":", f);
  put_time(f, j->created_us);
  fputs(",\"run_at\":", f);
  put_time(f, j->run_at_us);
  fputs(",\"finished_at\":", f);
  put_time(f, j->finished_us);
  fputs(",\"last_error\":", f);
  put_str(f, j->last_error);
  /* Arguments are JSON already (checked at submit). */
  fprintf(f, ",\"args\":%s}\n", j->args ? j->args : "null");
}

static bool parse_state(const char *s, tl_job_state *out)
{
  static const struct {
    const char *name;
    tl_job_state st;
  } names[] = { { "pending", TL_JOB_PENDING },     { "available", TL_JOB_PENDING },
                { "scheduled", TL_JOB_PENDING },   { "retryable", TL_JOB_PENDING },
                { "running", TL_JOB_RUNNING },     { "completed", TL_JOB_COMPLETED },
                { "discarded", TL_JOB_DISCARDED }, { "cancelled", TL_JOB_CANCELLED } };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (!strcmp(s, names[i].name)) {
      *out = names[i].st;
      return true;
    }
  }
  return false;
}

static bool parse_int(const char *s, long long lo, long long hi, long long *out)
{
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno || v < lo || v > hi)
    return false;
  *out = v;
  return true;
}

/* Open the database and a paused executor on it. */
static int open_queue(const char *cmd, const char *url, const tl_config *cfg, tl_db **db,
                      tl_metrics **reg, tl_jobs **ex)
{
  tl_db_config dc = { 0 };
  if (url) {
    dc.url = url;
  } else if (tl_db_config_from(cfg, &dc) != 0) {
    cli_fail(cmd, "no database (pass --url or set DATABASE_URL)");
    return CLI_USAGE;
  }
  dc.read_urls = NULL;
  dc.max_connections = 2;
  dc.min_idle = 0;
  if (tl_db_connect(db, &dc) != 0) {
    cli_fail(cmd, "connect");
    return CLI_FAIL;
  }
  if (tl_metrics_new(reg) != 0 ||
      tl_jobs_open(ex, &(tl_jobs_config){ .workers = 1, .paused = true, .db = *db,
                                          .store = TL_JOBS_STORE_DATABASE,
                                          .metrics = *reg }) != 0) {
    cli_fail(cmd, "job queue");
    tl_metrics_free(*reg);
    tl_db_close(*db);
    return CLI_FAIL;
  }
  return CLI_OK;
}

int cli_cmd_jobs(int argc, char **argv, const tl_config *cfg)
{
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    jobs_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_USAGE : CLI_OK;
  }
  const char *sub = argv[1], *url = NULL, *kind = NULL, *id_text = NULL;
  bool ls = !strcmp(sub, "ls");
  if (!ls && strcmp(sub, "retry") && strcmp(sub, "cancel")) {
    fprintf(stderr, "trellis jobs: unknown subcommand '%s'\n", sub);
    jobs_usage(stderr);
    return CLI_USAGE;
  }
  tl_job_filter f = { .limit = 100 };
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    const char *opts[] = { "--url", "--state", "--kind", "--limit" };
    int which = -1;
    for (int k = 0; k < 4; k++) {
      size_t n = strlen(opts[k]);
      if (!strcmp(a, opts[k])) {
        if (i + 1 >= argc) {
          fprintf(stderr, "trellis jobs: %s needs a value\n", opts[k]);
          return CLI_USAGE;
        }
        which = k, v = argv[++i];
      } else if (!strncmp(a, opts[k], n) && a[n] == '=') {
        which = k, v = a + n + 1;
      }
    }
    if (which == 0) {
      url = v;
    } else if (which > 0 && !ls) {
      fprintf(stderr, "trellis jobs %s: %s is for ls\n", sub, opts[which]);
      return CLI_USAGE;
    } else if (which == 1) {
      if (!parse_state(v, &f.state)) {
        fprintf(stderr, "trellis jobs ls: --state: '%s' is not a job state\n", v);
        return CLI_USAGE;
      }
    } else if (which == 2) {
      kind = v;
    } else if (which == 3) {
      long long n;
      if (!parse_int(v, 1, 10000, &n)) {
        fprintf(stderr, "trellis jobs ls: --limit: '%s' is not an integer in [1, 10000]\n", v);
        return CLI_USAGE;
      }
      f.limit = (size_t)n;
    } else if (!ls && !id_text && a[0] != '-') {
      id_text = a;
    } else {
      fprintf(stderr, "trellis jobs %s: unexpected argument '%s'\n", sub, a);
      jobs_usage(stderr);
      return CLI_USAGE;
    }
  }
  long long id = 0;
  if (!ls && (!id_text || !parse_int(id_text, 1, INT64_MAX, &id))) {
    fprintf(stderr, "trellis jobs %s: %s\n", sub,
            id_text ? "ID must be a positive integer" : "which job? (ID)");
    return CLI_USAGE;
  }
  f.kind = kind;
  if (!tl_config_get(cfg, "LOG_LEVEL"))
    tl_log_set_level(TL_LOG_ERROR); /* errors go via cli_fail */
  char cmd[32];
  snprintf(cmd, sizeof cmd, "jobs %s", sub);
  tl_db *db;
  tl_metrics *reg;
  tl_jobs *ex;
  int rc = open_queue(cmd, url, cfg, &db, &reg, &ex);
  if (rc != CLI_OK)
    return rc;
  if (ls) {
    tl_job_list *list;
    if (tl_jobs_list(ex, &f, &list) != 0) {
      cli_fail(cmd, "listing jobs");
      rc = CLI_FAIL;
    } else {
      for (size_t i = 0; i < list->count; i++)
        put_job(stdout, &list->items[i]);
      tl_job_list_free(list);
    }
  } else {
    int s = !strcmp(sub, "retry") ? tl_jobs_retry(ex, id) : tl_jobs_cancel(ex, id);
    if (s != 0) {
      cli_fail(cmd, s == TL_ENOTFOUND ? "no such job" : "refused");
      rc = CLI_FAIL;
    } else {
      tl_job_info *info = NULL;
      tl_jobs_get(ex, id, &info);
      tl_job_state st = info ? info->state : TL_JOB_PENDING;
      printf("job %lld: %s%s\n", id, tl_job_state_name(st),
             st == TL_JOB_RUNNING ? ", asked to stop" : "");
      tl_job_info_free(info);
    }
  }
  fflush(stdout);
  tl_jobs_close(ex);
  tl_metrics_free(reg);
  tl_db_close(db);
  return rc;
}
