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
  int64_t http_max_body;
  int64_t shutdown_delay_us;
  int64_t shutdown_timeout_us;
  const char *app_variant;
  bool debug_routes;
} settings;

/* Read every key; on bad values print one line per problem on stderr
 * ("config: HTTP_PORT: 'abc' is not an integer in [0, 65535]") and return
 * the number of problems (0 when all is well). Strings are borrowed from
 * `cfg`. */
int settings_read(settings *s, const tl_config *cfg);

#endif
