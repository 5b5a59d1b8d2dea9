/* libFuzzer target for the .env parser and the typed getters: arbitrary
 * bytes go through tl_config_parse, then every resulting value through
 * each getter, tl_duration_parse and tl_url_mask. Nothing may crash, leak
 * or break the invariants checked below. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trellis/config.h"
#include "trellis/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const schemes[] = { "sqlite", "postgres", "postgresql",
                                       "mysql", "mariadb", "mongodb", NULL };
static const char *const choices[] = { "memory", "kafka", "rabbitmq", "nats",
                                       NULL };

static void check(bool ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

/* A failing call must leave a message. */
static void check_rc(int rc)
{
  if (rc != 0) {
    check(rc == TL_EINVAL, "getter returned a code other than TL_EINVAL");
    check(tl_error_last()[0] != '\0', "failure without a message");
  }
}

static void check_mask(const char *s)
{
  char big[4096], small[8];
  size_t n = strlen(s);
  tl_url_mask(s, big, sizeof big);
  check(memchr(big, '\0', sizeof big) != NULL, "mask output not terminated");
  /* Only a user:password@ part is rewritten. */
  if (!strchr(s, '@') && n < sizeof big)
    check(strcmp(big, s) == 0, "mask changed a string without '@'");
  memset(small, 'Z', sizeof small);
  tl_url_mask(s, small, 5);
  check(strlen(small) <= 4 && small[5] == 'Z', "mask wrote past its buffer");
  if (n < sizeof big) {
    size_t m = strlen(big);
    check(strncmp(small, big, strlen(small)) == 0 && strlen(small) <= m,
          "truncated mask differs from the full one");
  }
}

static void exercise(const char *key, const char *value, void *ctx)
{
  const tl_config *cfg = ctx;
  int64_t i64 = 0, us = 0;
  bool b = false;
  int idx = 0;
  const char *s = NULL;
  char **list = NULL;
  size_t count = 0;

  check(strcmp(tl_config_get(cfg, key), value) == 0, "each/get disagree");
  check_rc(tl_config_string(cfg, key, "d", &s));
  check(strcmp(s, *value ? value : "d") == 0, "string getter");
  check_rc(tl_config_int(cfg, key, 0, INT64_MIN, INT64_MAX, &i64));
  check_rc(tl_config_int(cfg, key, 80, 1, 65535, &i64));
  check_rc(tl_config_bool(cfg, key, false, &b));
  int rc = tl_config_duration(cfg, key, 0, &us);
  check_rc(rc);
  if (rc == 0)
    check(us >= 0, "negative duration");
  check_rc(tl_config_url(cfg, key, NULL, schemes, &s));
  check_rc(tl_config_url(cfg, key, NULL, NULL, &s));
  check_rc(tl_config_enum(cfg, key, "memory", choices, &idx));
  check(tl_config_list(cfg, key, NULL, &list, &count) == 0, "list failed");
  check(list[count] == NULL, "list not NULL-terminated");
  for (size_t i = 0; i < count; i++)
    check(list[i][0] != '\0' && !strchr(list[i], ','), "bad list item");
  tl_config_list_free(list);

  if (tl_duration_parse(value, &us) == 0)
    check(us >= 0, "negative duration");
  check_mask(value);
  check_mask(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  /* Real .env files are small; bigger inputs only slow the search. */
  if (size > 65536)
    return 0;
  tl_config *cfg = NULL;
  if (tl_config_new(&cfg) != 0)
    return 0;
  int rc = tl_config_parse(cfg, (const char *)data, size, "fuzz");
  if (rc != 0) {
    check(rc == TL_EINVAL, "parse returned a code other than TL_EINVAL");
    check(strncmp(tl_error_last(), "'fuzz' line ", 12) == 0,
          "parse error without its origin and line");
  }
  /* A second pass replaces values and expands from the first. */
  (void)tl_config_parse(cfg, (const char *)data, size, "fuzz");
  tl_config_each(cfg, exercise, cfg);

  /* The raw bytes as one value, for the getters' own parsers. */
  char *text = malloc(size + 1);
  if (text) {
    memcpy(text, data, size);
    text[size] = '\0';
    int64_t us = 0;
    if (tl_duration_parse(text, &us) == 0)
      check(us >= 0, "negative duration");
    check_mask(text);
    if (tl_config_set(cfg, "RAW", text) == 0)
      exercise("RAW", tl_config_get(cfg, "RAW"), cfg);
    free(text);
  }
  tl_config_free(cfg);
  return 0;
}
