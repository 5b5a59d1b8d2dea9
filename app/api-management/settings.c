#include <stdio.h>
#include <string.h>
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

int settings_read(settings *s, tl_config *cfg)
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
  report(tl_config_int(cfg, "HTTP_WORKERS", 64, 1, 4096, &s->http_workers), &problems);
  report(tl_config_int(cfg, "HTTP_MAX_BODY", 1 << 20, 1, 1 << 30, &s->http_max_body), &problems);
  report(tl_config_duration(cfg, "SHUTDOWN_DELAY", 0, &s->shutdown_delay_us), &problems);
  report(tl_config_duration(cfg, "SHUTDOWN_TIMEOUT", 25000000, &s->shutdown_timeout_us),
         &problems);
  report(tl_config_string(cfg, "APP_VARIANT", "", &s->app_variant), &problems);
  report(tl_config_bool(cfg, "DEBUG_ROUTES", false, &s->debug_routes), &problems);
  report(tl_config_string(cfg, "SERVICE_NAME", "api-management", &s->service_name), &problems);
  if (s->service_name && (strlen(s->service_name) > 48 ||
                          strspn(s->service_name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                  "0123456789_-") != strlen(s->service_name))) {
    fprintf(stderr, "config: SERVICE_NAME: '%.64s' must be 1 to 48 letters, digits, '_' or '-'\n",
            s->service_name);
    problems++;
  }

  /* The embedded default: a SQLite file under ./data. */
  if (!tl_config_get(cfg, "DATABASE_URL"))
    report(tl_config_set(cfg, "DATABASE_URL", "sqlite://data/api-management.db"), &problems);
  report(tl_db_config_from(cfg, &s->db), &problems);
  report(tl_mq_config_from(cfg, &s->mq), &problems);
  report(tl_jobs_config_from(cfg, &s->jobs), &problems);
  report(tl_cache_config_from(cfg, &s->cache), &problems);
  report(tl_config_bool(cfg, "USERS_CACHE", true, &s->users_cache), &problems);
  report(tl_config_bool(cfg, "GROUP_COMMIT", true, &s->group_commit), &problems);
  report(tl_config_int(cfg, "GROUP_COMMIT_MAX_BATCH", 64, 1, 1024, &s->group_commit_max_batch),
         &problems);

  size_t nkeys = 0;
  report(tl_config_list(cfg, "API_KEYS", "", &s->api_keys, &nkeys), &problems);
  for (char **k = s->api_keys; k && *k; k++)
    if (strlen(*k) < 16) {
      fprintf(stderr, "config: API_KEYS: a key of %zu characters is too short (expected at "
                      "least 16)\n", strlen(*k));
      problems++;
    }
  report(tl_config_bool(cfg, "API_PUBLIC_READS", false, &s->public_reads), &problems);
  report(tl_config_string(cfg, "CLEANUP_SCHEDULE", "0 * * * *", &s->cleanup_schedule),
         &problems);
  tl_cron *cron = NULL;
  if (s->cleanup_schedule && tl_cron_parse(&cron, s->cleanup_schedule, s->jobs.cron_tz) != 0) {
    fprintf(stderr, "config: CLEANUP_SCHEDULE: %s\n", tl_error_last());
    problems++;
  }
  tl_cron_free(cron);
  report(tl_config_duration(cfg, "IDEMPOTENCY_TTL", 24LL * 3600 * 1000000, &s->idempotency_ttl_us),
         &problems);
  report(tl_config_duration(cfg, "MIN_VERSION_TIMEOUT", 5000000, &s->min_version_timeout_us),
         &problems);
  static const char *const smtp_schemes[] = { "smtp", "smtps", NULL };
  report(tl_config_url(cfg, "SMTP_URL", "", smtp_schemes, &s->smtp_url), &problems);
  report(tl_config_string(cfg, "SMTP_FROM", "api-management@localhost", &s->smtp_from),
         &problems);
  report(tl_config_duration(cfg, "SMTP_TIMEOUT", 10000000, &s->smtp_timeout_us), &problems);
  report(tl_config_bool(cfg, "RELAY_ENABLED", true, &s->relay), &problems);
  return problems;
}

void settings_free(settings *s)
{
  tl_config_list_free(s->api_keys);
  s->api_keys = NULL;
}
