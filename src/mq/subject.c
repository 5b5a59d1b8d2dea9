/* Subject grammar (NATS's): dot-separated non-empty tokens; in patterns
 * "*" matches one token and ">" one or more, as whole tokens only, ">"
 * last. Checked once here so every backend sees the same names. Nothing
 * in this file allocates. */
#include <string.h>

#include "mq_int.h"

/* Bytes never allowed in a token: separators and whitespace of every
 * broker, controls, and '#', which AMQP would read as a wildcard. */
static bool bad_byte(unsigned char c)
{
  return c <= 0x20 || c == 0x7f || c == '#';
}

int tl__mq_name_check(const char *name, bool wildcards, const char *what)
{
  if (!name)
    return tl_error_set(TL_EINVAL, "%s: missing (NULL)", what);
  size_t n = strlen(name);
  if (n == 0)
    return tl_error_set(TL_EINVAL, "%s: empty", what);
  if (n > TL_MQ_SUBJECT_MAX)
    return tl_error_set(TL_EINVAL, "%s '%.40s...': longer than %d bytes", what, name,
                        TL_MQ_SUBJECT_MAX);
  if (name[0] == '$' || !strncmp(name, "_INBOX.", 7) || !strcmp(name, "_INBOX"))
    return tl_error_set(TL_EINVAL, "%s '%s': names starting with '$' or '_INBOX' are reserved",
                        what, name);
  const char *tok = name;
  for (;;) {
    size_t len = strcspn(tok, ".");
    if (len == 0)
      return tl_error_set(TL_EINVAL, "%s '%s': empty token", what, name);
    bool last = tok[len] == '\0';
    if (len == 1 && (tok[0] == '*' || tok[0] == '>')) {
      if (!wildcards)
        return tl_error_set(TL_EINVAL,
                            "%s '%s': wildcard '%c' is not allowed in a published subject",
                            what, name, tok[0]);
      if (tok[0] == '>' && !last)
        return tl_error_set(TL_EINVAL, "%s '%s': '>' must be the last token", what, name);
    } else {
      for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)tok[i];
        if (c == '*' || c == '>')
          return tl_error_set(TL_EINVAL,
                              wildcards ? "%s '%s': wildcard '%c' must be a whole token"
                                        : "%s '%s': wildcard '%c' is not allowed in a published subject",
                              what, name, c);
        if (bad_byte(c)) {
          if (c == '#')
            return tl_error_set(TL_EINVAL, "%s '%s': '#' is not allowed (use '>')", what, name);
          return tl_error_set(TL_EINVAL, "%s '%s': whitespace or control byte 0x%02x in a token",
                              what, name, c);
        }
      }
    }
    if (last)
      return 0;
    tok += len + 1;
    if (*tok == '\0')
      return tl_error_set(TL_EINVAL, "%s '%s': empty token", what, name);
  }
}

int tl_mq_subject_valid(const char *subject)
{
  return tl__mq_name_check(subject, false, "subject");
}

int tl_mq_pattern_valid(const char *pattern)
{
  return tl__mq_name_check(pattern, true, "pattern");
}

bool tl__mq_match(const char *p, const char *s, size_t slen)
{
  const char *se = s + slen;
  for (;;) {
    /* one pattern token against one subject token */
    if (p[0] == '>' && p[1] == '\0')
      return s < se; /* one or more tokens left */
    if (s >= se)
      return false;
    const char *sdot = memchr(s, '.', (size_t)(se - s));
    const char *stend = sdot ? sdot : se;
    if (p[0] == '*' && (p[1] == '.' || p[1] == '\0')) {
      p++;
    } else {
      while (*p && *p != '.') {
        if (s == stend || *p != *s)
          return false;
        p++, s++;
      }
      if (s != stend)
        return false;
    }
    /* p is at '.' or end; stend at '.' or end */
    if (*p == '\0')
      return stend == se;
    if (!sdot)
      return false;
    p++;
    s = sdot + 1;
  }
}

bool tl_mq_subject_match(const char *pattern, const char *subject)
{
  if (!pattern || !subject)
    return false;
  return tl__mq_match(pattern, subject, strlen(subject));
}

int tl__mq_pattern_to_amqp(const char *pattern, char *buf, size_t size)
{
  size_t n = strlen(pattern), out = 0;
  bool tail = n >= 1 && pattern[n - 1] == '>' && (n == 1 || pattern[n - 2] == '.');
  size_t keep = tail ? n - 1 : n;
  if (keep + (tail ? 3 : 0) + 1 > size)
    return -1;
  memcpy(buf, pattern, keep);
  out = keep;
  if (tail) {
    /* NATS '>' is one or more tokens; AMQP '#' is zero or more. */
    memcpy(buf + out, "*.#", 3);
    out += 3;
  }
  buf[out] = '\0';
  return (int)out;
}

size_t tl__mq_prefix_len(const char *subject)
{
  return strcspn(subject, ".");
}

uint64_t tl__mq_hash(const void *data, size_t len)
{
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}
