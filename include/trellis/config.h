/* trellis: configuration from a .env file, overridden by the environment. */
#ifndef TRELLIS_CONFIG_H
#define TRELLIS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A set of KEY=value pairs. Safe to read from many threads once loaded;
 * tl_config_set/parse must not run concurrently with readers. */
typedef struct tl_config tl_config;

/* Create an empty configuration. Returns 0 or TL_ENOMEM. */
int tl_config_new(tl_config **out);

/* Load `env_path` (NULL means ".env"; a missing file is not an error, a
 * malformed one is: "'.env' line 3: unterminated double quote"), then
 * overlay every variable of the process environment. Returns 0, TL_EINVAL
 * (syntax) or TL_EIO (unreadable file). */
int tl_config_load(tl_config **out, const char *env_path);

/* Parse .env text into `cfg`; later keys replace earlier ones. Grammar:
 * `KEY=value` lines, blank lines and `#` comments, an optional `export `
 * prefix, unquoted values (trimmed; ` #` starts a comment), 'single quoted'
 * (literal), "double quoted" (escapes \n \t \r \" \\ \$, may span lines),
 * and ${VAR}, $VAR and ${VAR:-default} expansion in unquoted and
 * double-quoted values from keys already in `cfg`, then the process
 * environment (unset expands to ""; at most 8 MiB of expansion and 16
 * nested defaults per parse). `origin` names the source in errors and is
 * quoted for you (".env" gives "'.env' line 3: ..."). A failed parse
 * changes nothing in `cfg`. Returns 0, TL_EINVAL or TL_ENOMEM. */
int tl_config_parse(tl_config *cfg, const char *text, size_t len,
                    const char *origin);

/* Overlay the process environment onto `cfg`. */
int tl_config_overlay_environ(tl_config *cfg);

/* Set one key (copied). Returns 0, TL_EINVAL (bad key) or TL_ENOMEM. */
int tl_config_set(tl_config *cfg, const char *key, const char *value);

void tl_config_free(tl_config *cfg);

/* The raw value, or NULL when the key is unset. Borrowed from `cfg`. */
const char *tl_config_get(const tl_config *cfg, const char *key);

/* Typed getters. Each writes `def` when the key is unset or empty, and
 * otherwise parses the value; on a bad value it returns TL_EINVAL with a
 * message naming the key, the value and what was expected
 * ("HTTP_PORT: 'abc' is not an integer in [1, 65535]"). */
int tl_config_string(const tl_config *cfg, const char *key, const char *def,
                     const char **out);
int tl_config_int(const tl_config *cfg, const char *key, int64_t def,
                  int64_t min, int64_t max, int64_t *out);
/* true/false, 1/0, yes/no, on/off (any case). */
int tl_config_bool(const tl_config *cfg, const char *key, bool def, bool *out);
/* "250ms", "30s", "5m", "1h", "100us", "1h30m", "0"; a bare number other
 * than 0 is rejected (the unit is required). Result in µs, must be >= 0. */
int tl_config_duration(const tl_config *cfg, const char *key, int64_t def_us,
                       int64_t *out_us);
/* A URL whose scheme is one of `schemes` (NULL-terminated; NULL accepts
 * any "scheme://..."). Errors mask any password in the URL. */
int tl_config_url(const tl_config *cfg, const char *key, const char *def,
                  const char *const *schemes, const char **out);
/* A comma-separated list, items trimmed, empty items dropped. `*out` is a
 * NULL-terminated array (possibly just {NULL}, count 0) the caller frees
 * with tl_config_list_free(). */
int tl_config_list(const tl_config *cfg, const char *key, const char *def,
                   char ***out, size_t *count);
void tl_config_list_free(char **list);

/* One of `choices` (NULL-terminated, compared ignoring case); writes the
 * index (-1 when the key is unset and `def` is NULL). "MESSAGE_QUEUE_TYPE: 'kafak' is not one of memory, kafka, ..." */
int tl_config_enum(const tl_config *cfg, const char *key, const char *def,
                   const char *const *choices, int *out);

/* Parse a duration string as tl_config_duration does. 0 or TL_EINVAL. */
int tl_duration_parse(const char *text, int64_t *out_us);

/* Write `url` into `buf` with the password replaced by "***". */
void tl_url_mask(const char *url, char *buf, size_t size);

/* Calls fn for every key in insertion order. */
void tl_config_each(const tl_config *cfg,
                    void (*fn)(const char *key, const char *value, void *ctx),
                    void *ctx);

#ifdef __cplusplus
}
#endif
#endif
