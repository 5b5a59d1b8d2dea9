/* Test support shared by the C tests: service URLs from scripts/services,
 * databases of a test's own, temporary folders, and child processes. Header-only on purpose: each
 * test is one executable. */
#ifndef TRELLIS_TESTS_SUPPORT_H
#define TRELLIS_TESTS_SUPPORT_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include <trellis/db.h>
#include <trellis/error.h>

/* The URL that scripts/services wrote for `key` (for example
 * "TRELLIS_TEST_POSTGRES_URL"): from the environment first, then from the
 * services file ($TRELLIS_SERVICES_ENV, default
 * /tmp/trellis-services/services.env). When neither has it the test
 * fails loudly with the command that starts the server. Returns a static
 * buffer per call site's key (copied into `buf`). */
static inline const char *tl_test_service_url(const char *key, const char *service,
                                              char *buf, size_t size)
{
  const char *env = getenv(key);
  if (env && *env) {
    snprintf(buf, size, "%s", env);
    return buf;
  }
  const char *path = getenv("TRELLIS_SERVICES_ENV");
  if (!path || !*path)
    path = "/tmp/trellis-services/services.env";
  FILE *f = fopen(path, "r");
  if (f) {
    char line[1024];
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
      if (strncmp(line, key, klen) == 0 && line[klen] == '=') {
        char *v = line + klen + 1;
        v[strcspn(v, "\r\n")] = '\0';
        snprintf(buf, size, "%s", v);
        fclose(f);
        return buf;
      }
    }
    fclose(f);
  }
  fprintf(stderr,
          "FATAL: %s is not running (no %s in the environment or in %s).\n"
          "Start it with: scripts/services start %s\n",
          service, key, path, service);
  exit(1);
}

/* Create database `name` on the server of `base` (a PostgreSQL or MariaDB
 * URL), dropping a leftover first, and write its URL into `out`. 0 or -1
 * (with the reason on stderr). */
static inline int tl_test_make_database(const char *base, const char *name, char *out,
                                        size_t size)
{
  tl_db *db;
  tl_db_config c = { .url = base, .max_connections = 1 };
  if (tl_db_connect(&db, &c) != 0) {
    fprintf(stderr, "connect %s: %s\n", base, tl_error_last());
    return -1;
  }
  char sql[256];
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
  tl_db_exec(db, NULL, sql, TL_NOARGS);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  int rc = tl_db_exec(db, NULL, sql, TL_NOARGS);
  if (rc)
    fprintf(stderr, "%s: %s\n", sql, tl_error_last());
  tl_db_close(db);
  const char *slash = strrchr(base, '/');
  const char *q = strchr(slash, '?');
  snprintf(out, size, "%.*s/%s%s", (int)(slash - base), base, name, q ? q : "");
  return rc ? -1 : 0;
}

/* Drop the database of tl_test_make_database (connections and all). */
static inline void tl_test_drop_database(const char *base, const char *name)
{
  tl_db *db;
  tl_db_config c = { .url = base, .max_connections = 1 };
  if (tl_db_connect(&db, &c) != 0)
    return;
  char sql[256];
  snprintf(sql, sizeof sql, tl_db_dialect_of(db) == TL_DB_POSTGRES
                                ? "DROP DATABASE IF EXISTS %s WITH (FORCE)"
                                : "DROP DATABASE IF EXISTS %s", name);
  tl_db_exec(db, NULL, sql, TL_NOARGS);
  tl_db_close(db);
}

/* In a forked child: die with the test process. A test that fails before
 * it kills its child must not leave it running (an orphan retrying a
 * server can even take the server's port as its own ephemeral port). */
static inline void tl_test_child_dies_with_parent(void)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

#endif
