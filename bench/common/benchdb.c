/* Scratch databases for the benchmarks. */
#include "benchdb.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/trellis.h>

/* Run `sql` on the server of `base` with a one-connection pool. */
static int admin(const char *base, const char *sql)
{
  tl_db *db = NULL;
  int rc = tl_db_connect(&db, &(tl_db_config){.url = base, .max_connections = 1});
  if (rc == 0)
    rc = tl_db_exec(db, NULL, sql, TL_NOARGS);
  if (rc != 0)
    fprintf(stderr, "bench: %s: %s\n", sql, tl_error_last());
  tl_db_close(db);
  return rc == 0 ? 0 : -1;
}

static bool is_postgres(const char *url)
{
  return strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0;
}

int bench_db_drop(const char *base, const char *name)
{
  char sql[160];
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s%s", name,
           is_postgres(base) ? " WITH (FORCE)" : "");
  return admin(base, sql);
}

int bench_db_create(const char *base, const char *name, char *out, size_t size)
{
  char sql[160];
  const char *slash = strrchr(base, '/'), *query = slash ? strchr(slash, '?') : NULL;
  if (slash == NULL || slash - base < 3 || slash[-1] == '/') {
    fprintf(stderr, "bench: '%s': expected a server URL ending in /<database>\n", base);
    return -1;
  }
  if (strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(name)) {
    fprintf(stderr, "bench: database name '%s': expected lowercase letters, digits and '_'\n",
            name);
    return -1;
  }
  if (bench_db_drop(base, name) != 0)
    return -1;
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  if (admin(base, sql) != 0)
    return -1;
  snprintf(out, size, "%.*s/%s%s", (int)(slash - base), base, name, query ? query : "");
  return 0;
}
