/* Runs one CLI subcommand inside a unit test, its file compiled in, with
 * stdout captured. Before including, define CLI_COMMAND (the function,
 * e.g. cli_cmd_db) and CLI_NAME (its argv[0], e.g. "db"). Provides `out`
 * (the captured stdout), `last_fail` (what cli_fail() said) and
 * run(cfg, argc, args...) with argc counting argv[0]. */
#ifndef TRELLIS_TESTS_CLI_HARNESS_H
#define TRELLIS_TESTS_CLI_HARNESS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char last_fail[512];
static char out[16384];

void cli_fail(const char *cmd, const char *what)
{
  snprintf(last_fail, sizeof last_fail, "trellis %s: %s: %s", cmd, what, tl_error_last());
}

static int run(tl_config *cfg, int argc, ...)
{
  char *argv[16];
  va_list ap;
  va_start(ap, argc);
  argv[0] = (char *)CLI_NAME;
  for (int i = 1; i < argc && i < 16; i++)
    argv[i] = va_arg(ap, char *);
  va_end(ap);
  char tmp[] = "/tmp/trellis-cli-test-XXXXXX";
  int fd = mkstemp(tmp);
  fflush(stdout);
  int saved = dup(1);
  dup2(fd, 1);
  last_fail[0] = '\0';
  int rc = CLI_COMMAND(argc, argv, cfg);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  ssize_t n = pread(fd, out, sizeof out - 1, 0);
  out[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(tmp);
  return rc;
}

#endif
