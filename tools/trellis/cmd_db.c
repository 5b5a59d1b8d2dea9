/* trellis db: ping, query and migrate a database.
 *
 *   trellis db ping    [--url URL]
 *   trellis db query   [--url URL] SQL [ARG...]
 *   trellis db migrate [--url URL]
 *
 * --url defaults to DATABASE_URL. Query arguments bind as $1..$n: an
 * integer as int, true/false as bool, null as NULL, anything else as text.
 * Rows print as JSON lines with typed values. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/db.h>

#include "cli.h"

static void usage(FILE *out)
{
  fprintf(out, "usage: trellis db ping [--url URL]\n"
               "       trellis db query [--url URL] SQL [ARG...]\n"
               "       trellis db migrate [--url URL]\n"
               "URL defaults to DATABASE_URL. Arguments bind as $1..$n (integers as\n"
               "int, true/false as bool, null as NULL, the rest as text); rows print\n"
               "as JSON lines.\n");
}

/* ---- JSON output ------------------------------------------------------------ */

static void put_string(FILE *f, const char *s, size_t n)
{
  static const char hex[] = "0123456789abcdef";
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    default:
      if (c < 0x20) fprintf(f, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
      else fputc(c, f);
    }
  }
  fputc('"', f);
}

static void put_double(FILE *f, double d)
{
  if (!isfinite(d)) {
    fprintf(f, "\"%s\"", isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity");
    return;
  }
  char buf[40];
  for (int prec = 15; prec <= 17; prec++) { /* the shortest text that reads back */
    snprintf(buf, sizeof buf, "%.*g", prec, d);
    if (strtod(buf, NULL) == d) break;
  }
  /* Keep it a JSON number that reads back as a double. */
  if (!strpbrk(buf, ".eE")) strcat(buf, ".0");
  fputs(buf, f);
}

static void put_value(FILE *f, const tl_value *v)
{
  static const char hex[] = "0123456789abcdef";
  switch (v->type) {
  case TL_TYPE_NULL: fputs("null", f); break;
  case TL_TYPE_BOOL: fputs(v->b ? "true" : "false", f); break;
  case TL_TYPE_INT: fprintf(f, "%lld", (long long)v->i); break;
  case TL_TYPE_DOUBLE: put_double(f, v->d); break;
  case TL_TYPE_TEXT: put_string(f, v->s, v->len); break;
  case TL_TYPE_JSON: fwrite(v->s, 1, v->len, f); break;
  case TL_TYPE_TIMESTAMP: {
    char buf[40];
    tl_time_format(v->i, 6, buf, sizeof buf);
    put_string(f, buf, strlen(buf));
    break;
  }
  case TL_TYPE_BLOB: { /* as PostgreSQL writes bytea: "\x0a1b" */
    const unsigned char *p = v->p;
    fputs("\"\\\\x", f);
    for (size_t i = 0; i < v->len; i++) {
      fputc(hex[p[i] >> 4], f);
      fputc(hex[p[i] & 15], f);
    }
    fputc('"', f);
    break;
  }
  }
}

/* ---- arguments ------------------------------------------------------------- */

static tl_value parse_arg(const char *s)
{
  if (strcmp(s, "null") == 0) return tl_null();
  if (strcmp(s, "true") == 0) return tl_bool(true);
  if (strcmp(s, "false") == 0) return tl_bool(false);
  const char *p = s + (*s == '-' || *s == '+');
  if (*p && strspn(p, "0123456789") == strlen(p) && strlen(p) <= 19) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*end && errno == 0) return tl_int(v);
  }
  return tl_text(s);
}

/* ---- subcommands ------------------------------------------------------------ */

static int open_db(const char *cmd, const char *url, const tl_config *cfg, tl_db **out)
{
  tl_db_config dc = { 0 };
  if (url) {
    dc.url = url;
  } else if (tl_db_config_from(cfg, &dc) != 0) {
    cli_fail(cmd, "no database (pass --url or set DATABASE_URL)");
    return CLI_USAGE;
  }
  dc.read_urls = NULL;
  dc.max_connections = 1;
  dc.min_idle = 0;
  if (tl_db_connect(out, &dc) != 0) {
    cli_fail(cmd, "connect");
    return CLI_FAIL;
  }
  return CLI_OK;
}

static int cmd_query(tl_db *db, int argc, char **argv)
{
  size_t n = (size_t)(argc - 1);
  tl_value *args = n ? calloc(n, sizeof *args) : NULL;
  if (n && !args) return CLI_FAIL;
  for (size_t i = 0; i < n; i++) args[i] = parse_arg(argv[i + 1]);
  tl_rows *rows;
  int rc = tl_db_query(db, &rows, argv[0], args, n);
  if (rc != 0) {
    free(args);
    cli_fail("db query", "query failed");
    return CLI_FAIL;
  }
  int cols = tl_rows_column_count(rows);
  while ((rc = tl_rows_next(rows)) == 1) {
    fputc('{', stdout);
    for (int c = 0; c < cols; c++) {
      tl_value v;
      const char *name = tl_rows_column_name(rows, c);
      if (c) fputc(',', stdout);
      put_string(stdout, name, strlen(name));
      fputc(':', stdout);
      if (tl_rows_get(rows, c, &v) == 0) put_value(stdout, &v);
      else fputs("null", stdout);
    }
    fputs("}\n", stdout);
  }
  tl_rows_free(rows);
  free(args);
  if (rc < 0) {
    cli_fail("db query", "reading rows");
    return CLI_FAIL;
  }
  return CLI_OK;
}

int cli_cmd_db(int argc, char **argv, const tl_config *cfg)
{
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_USAGE : CLI_OK;
  }
  const char *sub = argv[1], *url = NULL;
  char **rest = calloc((size_t)argc, sizeof *rest);
  int nrest = 0;
  if (!rest) return CLI_FAIL;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--url")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "trellis db: --url needs a value\n");
        free(rest);
        return CLI_USAGE;
      }
      url = argv[++i];
    } else if (!strncmp(argv[i], "--url=", 6)) {
      url = argv[i] + 6;
    } else if (!strcmp(argv[i], "--")) {
      while (++i < argc) rest[nrest++] = argv[i];
    } else {
      rest[nrest++] = argv[i];
    }
  }
  bool is_query = !strcmp(sub, "query");
  if (!is_query && strcmp(sub, "ping") && strcmp(sub, "migrate")) {
    fprintf(stderr, "trellis db: unknown subcommand '%s'\n", sub);
    usage(stderr);
    free(rest);
    return CLI_USAGE;
  }
  if (is_query ? nrest < 1 : nrest > 0) {
    usage(stderr);
    free(rest);
    return CLI_USAGE;
  }
  if (!tl_config_get(cfg, "LOG_LEVEL")) tl_log_set_level(TL_LOG_ERROR); /* errors go via cli_fail */
  char cmd[32];
  snprintf(cmd, sizeof cmd, "db %s", sub);
  tl_db *db;
  int rc = open_db(cmd, url, cfg, &db);
  if (rc != CLI_OK) {
    free(rest);
    return rc;
  }
  if (is_query) {
    rc = cmd_query(db, nrest, rest);
  } else if (!strcmp(sub, "ping")) {
    int64_t t0 = tl_time_mono_us();
    if (tl_db_ping(db) != 0) {
      cli_fail(cmd, "ping failed");
      rc = CLI_FAIL;
    } else {
      printf("ok %.3f ms\n", (double)(tl_time_mono_us() - t0) / 1000.0);
    }
  } else {
    int applied = 0;
    if (tl_db_migrate(db, NULL, &applied) != 0) {
      cli_fail(cmd, "migration failed");
      rc = CLI_FAIL;
    } else {
      printf("applied %d migration%s\n", applied, applied == 1 ? "" : "s");
    }
  }
  tl_db_close(db);
  free(rest);
  return rc;
}
