/* libFuzzer target: the database front end's parsers. The first byte
 * picks the dialect; the rest is fed to the $n scanner/translator and the
 * URL parser. Invariants: no crash, no leak, every failure has a message,
 * translation and scanning agree on the placeholders they see, and a
 * parsed URL's masked form never shows its password. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "db/db_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  static const tl_db_dialect dialects[] = { TL_DB_SQLITE, TL_DB_POSTGRES, TL_DB_MYSQL };
  tl_db_dialect d = dialects[data[0] % 3];
  const char *sql = (const char *)data + 1;
  size_t len = size - 1;

  /* Scan: positions only move forward and stay inside the text. */
  size_t pos = 0, start = 0, params = 0;
  long num = 0;
  int kind;
  while ((kind = tl__sql_next(d, sql, len, &pos, &start, &num)) != TL__SQL_END) {
    if (start > pos || pos > len)
      abort();
    if (kind == TL__SQL_PARAM)
      params++;
  }

  char *out = NULL;
  uint16_t *map = NULL;
  int nparams = 0, nrefs = 0;
  tl_error_clear();
  int rc = tl__sql_translate(d, sql, len, &out, &nparams, &map, &nrefs);
  if (rc == 0) {
    if (!out || nparams < 0 || nparams > 65535)
      abort();
    /* MySQL maps each '?' it wrote back to an argument. */
    if (d == TL_DB_MYSQL && (size_t)nrefs != params)
      abort();
  } else if (tl_error_last()[0] == '\0') {
    abort();
  }
  free(out);
  free(map);

  /* The same bytes as a URL (NUL-terminated copy). */
  char *text = malloc(len + 1);
  if (!text)
    return 0;
  memcpy(text, sql, len);
  text[len] = '\0';
  tl__url u;
  memset(&u, 0, sizeof u);
  if (tl__url_parse(text, &u) == 0) {
    /* ":<password>@" must not survive masking in the authority (the same
     * text may legitimately appear elsewhere, in the path say). */
    if (u.password && u.password[0] && !strstr(text, "***")) {
      size_t plen = strlen(u.password);
      char *needle = malloc(plen + 3);
      if (needle) {
        needle[0] = ':';
        memcpy(needle + 1, u.password, plen);
        needle[plen + 1] = '@';
        needle[plen + 2] = '\0';
        /* Only the authority (after "://", up to the path) holds it. */
        const char *auth = strstr(u.masked, "://");
        auth = auth ? auth + 3 : u.masked;
        size_t alen = strcspn(auth, "/?#");
        const char *hit = strstr(auth, needle);
        bool shown = hit && (size_t)(hit - auth) + plen + 2 <= alen;
        free(needle);
        if (shown)
          abort();
      }
    }
    tl__url_free(&u);
  } else if (tl_error_last()[0] == '\0') {
    abort();
  }
  free(text);
  return 0;
}
