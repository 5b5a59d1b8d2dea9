/* trellis cron next EXPR [--from ISO8601] [--count N] [--tz ZONE]: print
 * the next fire times of a cron expression, one ISO 8601 UTC time a line. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/cron.h>

#include "cli.h"

static int usage(FILE *out)
{
  fprintf(out,
          "usage: trellis cron next EXPR [--from ISO8601] [--count N] [--tz ZONE]\n"
          "\n"
          "Print the next N (default 1, at most 100000) fire times of the cron\n"
          "expression EXPR strictly after --from (default now), as ISO 8601 UTC.\n"
          "EXPR is 5 fields (minute hour day-of-month month day-of-week), 6 with\n"
          "seconds first, or a macro (@hourly, @daily, ...); quote it, or pass\n"
          "its fields as separate words. --tz reads EXPR in an IANA zone\n"
          "(default UTC).\n"
          "  trellis cron next '0 * * * *' --from 2026-01-01T00:30:00Z --count 2\n");
  return CLI_USAGE;
}

int cli_cmd_cron(int argc, char **argv, const tl_config *cfg)
{
  (void)cfg;
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
      !strcmp(argv[1], "help"))
    return usage(argc < 2 ? stderr : stdout);
  if (strcmp(argv[1], "next") != 0) {
    fprintf(stderr, "trellis cron: unknown subcommand '%s'\n", argv[1]);
    return usage(stderr);
  }
  const char *from = NULL, *tz = NULL;
  long count = 1;
  char expr[2048] = "";
  size_t len = 0;
  int words = 0;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if ((!strcmp(a, "--from") || !strcmp(a, "--count") || !strcmp(a, "--tz")) && i + 1 >= argc) {
      fprintf(stderr, "trellis cron: %s needs a value\n", a);
      return usage(stderr);
    } else if (!strcmp(a, "--from")) {
      from = argv[++i];
    } else if (!strcmp(a, "--tz")) {
      tz = argv[++i];
    } else if (!strcmp(a, "--count")) {
      char *end;
      count = strtol(argv[++i], &end, 10);
      if (*argv[i] == '\0' || *end != '\0' || count < 1 || count > 100000) {
        fprintf(stderr, "trellis cron: --count: '%s' is not an integer in [1, 100000]\n",
                argv[i]);
        return CLI_USAGE;
      }
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      return usage(stdout);
    } else if (a[0] == '-' && a[1] == '-') {
      fprintf(stderr, "trellis cron: unknown option '%s'\n", a);
      return usage(stderr);
    } else {
      /* Fields given as separate words are joined with spaces. */
      size_t n = strlen(a);
      if (len + n + 2 > sizeof expr) {
        fprintf(stderr, "trellis cron: the expression is too long\n");
        return CLI_USAGE;
      }
      if (words++)
        expr[len++] = ' ';
      memcpy(expr + len, a, n + 1);
      len += n;
    }
  }
  if (!words) {
    fprintf(stderr, "trellis cron: missing EXPR\n");
    return usage(stderr);
  }
  int64_t t = tl_time_now_us();
  if (from && tl_time_parse(from, &t) != 0) {
    fprintf(stderr, "trellis cron: --from: '%s' is not an ISO 8601 time "
            "(2026-01-01T00:30:00Z)\n", from);
    return CLI_USAGE;
  }
  tl_cron *c;
  if (tl_cron_parse(&c, expr, tz) != 0) {
    bool zone = !strncmp(tl_error_last(), "time zone", 9);
    cli_fail("cron", zone ? "invalid --tz" : "invalid expression");
    return CLI_USAGE;
  }
  int rc = CLI_OK;
  for (long i = 0; i < count; i++) {
    if (tl_cron_next(c, t, &t) != 0) {
      cli_fail("cron", "no more fire times");
      rc = CLI_FAIL;
      break;
    }
    char buf[40];
    tl_time_format(t, 0, buf, sizeof buf);
    puts(buf);
  }
  tl_cron_free(c);
  if (fflush(stdout) != 0)
    rc = CLI_FAIL;
  return rc;
}
