/* Test support shared by the C tests: service URLs from scripts/services,
 * temporary folders, and child processes. Header-only on purpose: each
 * test is one executable. */
#ifndef TRELLIS_TESTS_SUPPORT_H
#define TRELLIS_TESTS_SUPPORT_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

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

/* In a forked child: die with the test process. A test that fails before
 * it kills its child must not leave it running (an orphan retrying a
 * server can even take the server's port as its own ephemeral port). */
static inline void tl_test_child_dies_with_parent(void)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

#endif
