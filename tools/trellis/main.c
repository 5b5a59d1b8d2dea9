/* trellis: the operator CLI. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
  const char *name;
  cli_command_fn fn;
  const char *summary;
} commands[] = {
  { "version", cli_cmd_version, "print the version and build commit" },
  { "cron", cli_cmd_cron, "cron schedules: trellis cron next EXPR [--from ISO8601] [--count N] [--tz ZONE]" },
  { "db", cli_cmd_db, "databases: trellis db ping|query|migrate [--url URL] (see docs/database.md)" },
  { "events", cli_cmd_events, "event store: trellis events append|read|tail [--url URL] (see docs/event-sourcing.md)" },
  { "health", cli_cmd_health, "check a service's readiness: trellis health [URL] [--timeout DURATION]" },
  { "jobs", cli_cmd_jobs, "the durable job queue: trellis jobs ls|retry|cancel [--url URL] (see docs/jobs.md)" },
  { "mq", cli_cmd_mq, "messaging: trellis mq pub SUBJECT DATA | mq sub PATTERN (see docs/messaging.md)" },
};

static void usage(FILE *out)
{
  fprintf(out, "usage: trellis [--env-file PATH] <command> [args]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\nConfiguration (DATABASE_URL, HTTP_PORT, ...) comes from .env and the\n"
               "environment. Exit codes: 0 success, 1 failure, 2 usage error.\n");
}

void cli_fail(const char *cmd, const char *what)
{
  const char *detail = tl_error_last();
  if (detail && *detail)
    fprintf(stderr, "trellis %s: %s: %s\n", cmd, what, detail);
  else
    fprintf(stderr, "trellis %s: %s\n", cmd, what);
}

int main(int argc, char **argv)
{
  const char *env_file = NULL;
  int i = 1;
  while (i < argc && argv[i][0] == '-') {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return CLI_OK;
    } else if (!strcmp(argv[i], "--version")) {
      argv[i] = (char *)"version";
      break;
    } else if (!strcmp(argv[i], "--env-file") && i + 1 < argc) {
      env_file = argv[i + 1];
      i += 2;
    } else {
      fprintf(stderr, "trellis: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return CLI_USAGE;
    }
  }
  if (i >= argc) {
    usage(stderr);
    return CLI_USAGE;
  }
  for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++) {
    if (strcmp(argv[i], commands[c].name) != 0)
      continue;
    tl_config *cfg = NULL;
    if (tl_config_load(&cfg, env_file) != 0) {
      fprintf(stderr, "trellis: config: %s\n", tl_error_last());
      return CLI_USAGE;
    }
    int rc = commands[c].fn(argc - i, argv + i, cfg);
    tl_config_free(cfg);
    return rc;
  }
  fprintf(stderr, "trellis: unknown command '%s'\n", argv[i]);
  usage(stderr);
  return CLI_USAGE;
}

int cli_cmd_version(int argc, char **argv, const tl_config *cfg)
{
  (void)argc, (void)argv, (void)cfg;
  printf("trellis %s (commit %s)\n", tl_version(), tl_build_commit());
  return CLI_OK;
}
