#include <stdio.h>
#include <unistd.h>

#include "settings.h"

static int report(int rc, int *problems)
{
  if (rc != 0) {
    fprintf(stderr, "config: %s\n", tl_error_last());
    (*problems)++;
  }
  return rc;
}

int settings_read(settings *s, const tl_config *cfg)
{
  int problems = 0;
  const char *level = NULL;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1)
    cores = 1;

  report(tl_config_string(cfg, "LOG_LEVEL", "info", &level), &problems);
  if (level && tl_log_level_parse(level, &s->log_level) != 0) {
    fprintf(stderr, "config: LOG_LEVEL: %s\n", tl_error_last());
    problems++;
  }
  report(tl_config_string(cfg, "HTTP_BIND", "0.0.0.0", &s->http_bind), &problems);
  report(tl_config_int(cfg, "HTTP_PORT", 8080, 0, 65535, &s->http_port), &problems);
  report(tl_config_int(cfg, "HTTP_THREADS", 2 * cores, 1, 1024, &s->http_threads), &problems);
  report(tl_config_int(cfg, "HTTP_MAX_BODY", 1 << 20, 1, 1 << 30, &s->http_max_body), &problems);
  report(tl_config_duration(cfg, "SHUTDOWN_DELAY", 0, &s->shutdown_delay_us), &problems);
  report(tl_config_duration(cfg, "SHUTDOWN_TIMEOUT", 25000000, &s->shutdown_timeout_us),
         &problems);
  report(tl_config_string(cfg, "APP_VARIANT", "", &s->app_variant), &problems);
  report(tl_config_bool(cfg, "DEBUG_ROUTES", false, &s->debug_routes), &problems);
  return problems;
}
