/* API keys: only their SHA-256 hashes are kept in memory, and a presented
 * key is hashed and compared with every stored hash in constant time, so
 * neither the keys nor the timing of a comparison give anything away. */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "app.h"

struct auth {
  size_t n;
  unsigned char (*hash)[SHA256_DIGEST_LENGTH];
};

int auth_new(auth **out, char *const *keys, char dev_key[65])
{
  auth *a = calloc(1, sizeof *a);
  size_t n = 0;
  while (keys && keys[n]) n++;
  if (!a) return tl_error_set(TL_ENOMEM, "auth: out of memory");
  a->hash = calloc(n ? n : 1, sizeof *a->hash);
  if (!a->hash) {
    free(a);
    return tl_error_set(TL_ENOMEM, "auth: out of memory");
  }
  dev_key[0] = '\0';
  if (n == 0) {
    unsigned char rnd[32];
    if (tl_random_bytes(rnd, sizeof rnd) != 0) {
      auth_free(a);
      return tl_error_set(TL_EIO, "auth: no random bytes for a development key");
    }
    for (size_t i = 0; i < sizeof rnd; i++) snprintf(dev_key + 2 * i, 3, "%02x", rnd[i]);
    SHA256((const unsigned char *)dev_key, 64, a->hash[0]);
    n = 1;
  }
  for (size_t i = 0; keys && keys[i]; i++)
    SHA256((const unsigned char *)keys[i], strlen(keys[i]), a->hash[i]);
  a->n = n;
  *out = a;
  return 0;
}

void auth_free(auth *a)
{
  if (!a) return;
  OPENSSL_cleanse(a->hash, a->n * sizeof *a->hash);
  free(a->hash);
  free(a);
}

bool auth_check(const auth *a, tl_http_req *req)
{
  const char *key = tl_http_req_header(req, "x-api-key");
  const char *h = tl_http_req_header(req, "authorization");
  if (!key && h && strncasecmp(h, "Bearer ", 7) == 0) key = h + 7;
  if (!key || !*key) return false;
  unsigned char got[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)key, strlen(key), got);
  int match = 0;
  for (size_t i = 0; i < a->n; i++)
    match |= CRYPTO_memcmp(got, a->hash[i], sizeof got) == 0;
  return match != 0;
}
