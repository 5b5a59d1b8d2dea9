/* api-management: the service's settings, read once from the
 * configuration (.env + environment) with every problem reported. */
#ifndef API_MANAGEMENT_SETTINGS_H
#define API_MANAGEMENT_SETTINGS_H

#include <stdbool.h>
#include <stdint.h>

#include <trellis/trellis.h>

typedef struct settings {
  tl_log_level log_level;
  const char *http_bind;
  int64_t http_port;
  int64_t http_threads;
  int64_t http_workers;
  int64_t http_max_body;
  int64_t shutdown_delay_us;
  int64_t shutdown_timeout_us;
  const char *app_variant;
  bool debug_routes;
  /* SERVICE_NAME: names the service's consumer groups on the broker
   * ("<name>-welcome-email"), so deployments sharing a broker stay apart. */
  const char *service_name;
  /* The modules, each from its own keys (DATABASE_*, MESSAGE_QUEUE_TYPE
   * and the broker's keys, JOB_*). */
  tl_db_config db;
  tl_mq_config mq;
  tl_jobs_config jobs;
  tl_cache_config cache;
  /* USERS_CACHE: read users through the cache (CACHE_URL). */
  bool users_cache;
  /* GROUP_COMMIT: concurrent user commands share transactions, up to
   * GROUP_COMMIT_MAX_BATCH each. */
  bool group_commit;
  int64_t group_commit_max_batch;
  /* API_KEYS: comma-separated keys accepted as "Authorization: Bearer
   * <key>" or "X-API-Key: <key>" (empty: a development key is made and
   * logged at start-up). API_PUBLIC_READS: GETs need no key. */
  char **api_keys;
  bool public_reads;
  /* CLEANUP_SCHEDULE: cron expression of the cleanup job. */
  const char *cleanup_schedule;
  /* IDEMPOTENCY_TTL: how long an Idempotency-Key is remembered. */
  int64_t idempotency_ttl_us;
  /* MIN_VERSION_TIMEOUT: how long GET ?min_version= waits for the read
   * model. */
  int64_t min_version_timeout_us;
  /* SMTP_URL (smtp://host:port or smtps://; empty: emails are logged),
   * SMTP_FROM, SMTP_TIMEOUT. */
  const char *smtp_url;
  const char *smtp_from;
  int64_t smtp_timeout_us;
  /* RELAY_ENABLED: publish every event to the message queue. */
  bool relay;
} settings;

/* Read every key; on bad values print one line per problem on stderr
 * ("config: HTTP_PORT: 'abc' is not an integer in [0, 65535]") and return
 * the number of problems (0 when all is well). Strings are borrowed from
 * `cfg`; free with settings_free(). */
int settings_read(settings *s, tl_config *cfg);
void settings_free(settings *s);

#endif
