/* libFuzzer target for CACHE_URL: arbitrary bytes go through the URL
 * parser and the size parser. Nothing may crash or leak, a failure must
 * say why (naming the URL) without its password, and a success must give
 * values inside the documented ranges. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok, const char *what)
{
  if (!ok) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

/* Where the password of "scheme://user:password@host" is (`*len` > 0),
 * or NULL. */
static char *password_at(char *text, size_t *len)
{
  char *p = strstr(text, "://");
  if (!p) return NULL;
  p += 3;
  char *end = p + strcspn(p, "/?#"), *at = NULL;
  for (char *q = p; q < end; q++)
    if (*q == '@') at = q;
  char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
  if (!colon || at - colon < 2) return NULL;
  *len = (size_t)(at - colon - 1);
  return colon + 1;
}

/* A failure's message must not depend on the password: parse again with
 * it overwritten (same length, no '%' so that decoding fails alike). */
static void check_password_hidden(const char *text, int rc, const char *msg)
{
  char *copy = strdup(text), *first = strdup(msg);
  size_t len = 0;
  char *pw = copy && first ? password_at(copy, &len) : NULL;
  if (pw && !memchr(pw, '%', len)) {
    memset(pw, pw[0] == 'Q' ? 'Z' : 'Q', len);
    tl__cache_url u;
    int rc2 = tl__cache_url_parse(copy, &u);
    if (rc2 == 0) tl__cache_url_free(&u);
    check(rc2 == rc, "the password changed the result");
    char masked[600], want[640];
    tl_url_mask(text, masked, sizeof masked);
    int wl = snprintf(want, sizeof want, "cache url '%s': ", masked);
    if (wl > 0 && wl < 256)
      check(strcmp(first + wl, tl_error_last() + wl) == 0, "the message shows the password");
  }
  free(copy);
  free(first);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size > 4096) return 0;
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';

  tl__cache_url u;
  int rc = tl__cache_url_parse(text, &u);
  if (rc == 0) {
    check(u.kind == TL__CACHE_MEMORY || u.kind == TL__CACHE_REDIS, "kind");
    check(u.masked != NULL, "masked url");
    if (u.kind == TL__CACHE_MEMORY) {
      check(u.max_bytes >= (16u << 10) && u.max_bytes <= ((uint64_t)1 << 40), "max_bytes range");
      check((u.shards & (u.shards - 1)) == 0 && u.shards <= 1024, "shards");
      check(!u.shards || u.max_bytes / u.shards >= 4096, "share per shard");
    } else {
      check(u.host && *u.host, "host");
      check(u.port >= 1 && u.port <= 65535, "port");
      check(u.db >= 0 && u.db <= 1000000, "db");
      check(!u.user || u.password, "user without password");
    }
    tl__cache_url_free(&u);
  } else {
    check(rc == TL_EINVAL || rc == TL_EUNSUPP || rc == TL_ENOMEM, "status");
    const char *msg = tl_error_last();
    check(strncmp(msg, "cache url", 9) == 0, "message names the url");
    /* It quotes the URL as tl_url_mask gives it. */
    char masked[600], want[640];
    tl_url_mask(text, masked, sizeof masked);
    int wl = snprintf(want, sizeof want, "cache url '%s': ", masked);
    if (text[0] && wl > 0 && wl < 256)
      check(strncmp(msg, want, (size_t)wl) == 0, "message quotes the masked url");
    check_password_hidden(text, rc, msg);
  }

  uint64_t n;
  if (tl__cache_size_parse(text, size, &n) == 0)
    check(size > 0 && text[0] >= '0' && text[0] <= '9', "size without digits");
  free(text);
  return 0;
}
