/* Configuration: .env text and the process environment as KEY=value pairs,
 * with typed getters whose errors name the key, the value and what was
 * expected. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core_int.h"
#include "trellis/config.h"
#include "trellis/error.h"

extern char **environ;

/* Expansion can multiply text (B=$A$A$A, C=$B$B$B, ...), so one parse may
 * produce at most this many bytes from variables: a hostile or mistaken
 * file then fails instead of exhausting memory. */
#define TL__CONFIG_EXPAND_MAX ((size_t)8 << 20)
/* ${A:-${B:-...}} recurses once per level. */
#define TL__CONFIG_NEST_MAX 16
/* A .env file larger than this is a mistake (or /dev/zero). */
#define TL__CONFIG_FILE_MAX ((size_t)64 << 20)
/* Values quoted in error messages are cut to this many bytes. */
#define TL__CONFIG_SHOW_MAX 96

#define TL__DURATION_EXAMPLES "e.g. 500ms, 30s, 5m, 1h"

struct tl__config_entry {
  char *key;
  char *value;
  size_t klen;
  uint32_t hash;
};

/* Entries in insertion order, indexed by an open-addressing table of
 * (entry index + 1), 0 meaning an empty slot. Keys are never removed, so
 * no tombstones are needed. */
struct tl_config {
  struct tl__config_entry *items;
  size_t count, cap;
  uint32_t *slots;
  size_t nslots; /* 0 or a power of two, at least twice `count` */
};

/* ---- storage ---------------------------------------------------------- */

static uint32_t key_hash(const char *key, size_t len)
{
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)key[i];
    h *= 16777619u;
  }
  return h;
}

static bool is_key_start(unsigned char c)
{
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_key_char(unsigned char c)
{
  return is_key_start(c) || (c >= '0' && c <= '9');
}

static bool key_valid(const char *key, size_t len)
{
  if (len == 0 || !is_key_start((unsigned char)key[0]))
    return false;
  for (size_t i = 1; i < len; i++)
    if (!is_key_char((unsigned char)key[i]))
      return false;
  return true;
}

static size_t config_find(const tl_config *cfg, const char *key, size_t klen,
                          uint32_t hash)
{
  if (!cfg || cfg->nslots == 0)
    return SIZE_MAX;
  size_t mask = cfg->nslots - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    uint32_t s = cfg->slots[i];
    if (s == 0)
      return SIZE_MAX;
    const struct tl__config_entry *e = &cfg->items[s - 1];
    if (e->hash == hash && e->klen == klen && memcmp(e->key, key, klen) == 0)
      return s - 1;
  }
}

static void slot_insert(uint32_t *slots, size_t nslots, uint32_t hash,
                        size_t index)
{
  size_t mask = nslots - 1;
  size_t i = hash & mask;
  while (slots[i] != 0)
    i = (i + 1) & mask;
  slots[i] = (uint32_t)(index + 1);
}

/* Make room for `n` entries so that inserting up to `n` needs no
 * allocation (merging a parse must not fail half-way). */
static int config_reserve(tl_config *cfg, size_t n)
{
  if (n > UINT32_MAX / 4)
    return tl_error_set(TL_ENOMEM, "config: too many keys");
  if (n > cfg->cap) {
    size_t cap = cfg->cap ? cfg->cap * 2 : 16;
    if (cap < n)
      cap = n;
    struct tl__config_entry *items = realloc(cfg->items, cap * sizeof *items);
    if (!items)
      return tl_error_set(TL_ENOMEM, "config: out of memory");
    cfg->items = items;
    cfg->cap = cap;
  }
  if (n * 2 > cfg->nslots) {
    size_t nslots = 32;
    while (nslots < n * 2)
      nslots *= 2;
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots)
      return tl_error_set(TL_ENOMEM, "config: out of memory");
    for (size_t i = 0; i < cfg->count; i++)
      slot_insert(slots, nslots, cfg->items[i].hash, i);
    free(cfg->slots);
    cfg->slots = slots;
    cfg->nslots = nslots;
  }
  return 0;
}

/* Takes ownership of `key` and `value`, also on failure. */
static int config_put(tl_config *cfg, char *key, size_t klen, char *value)
{
  uint32_t hash = key_hash(key, klen);
  size_t i = config_find(cfg, key, klen, hash);
  if (i != SIZE_MAX) {
    free(cfg->items[i].value);
    cfg->items[i].value = value;
    free(key);
    return 0;
  }
  int rc = config_reserve(cfg, cfg->count + 1);
  if (rc < 0) {
    free(key);
    free(value);
    return rc;
  }
  cfg->items[cfg->count] = (struct tl__config_entry){ key, value, klen, hash };
  slot_insert(cfg->slots, cfg->nslots, hash, cfg->count);
  cfg->count++;
  return 0;
}

static void config_release(tl_config *cfg)
{
  for (size_t i = 0; i < cfg->count; i++) {
    free(cfg->items[i].key);
    free(cfg->items[i].value);
  }
  free(cfg->items);
  free(cfg->slots);
  *cfg = (tl_config){ 0 };
}

/* Move every entry of `src` into `dst` (later values win) and empty
 * `src`. On failure nothing has moved. */
static int config_merge(tl_config *dst, tl_config *src)
{
  int rc = config_reserve(dst, dst->count + src->count);
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < src->count; i++) {
    struct tl__config_entry *e = &src->items[i];
    size_t j = config_find(dst, e->key, e->klen, e->hash);
    if (j != SIZE_MAX) {
      free(dst->items[j].value);
      dst->items[j].value = e->value;
      free(e->key);
    } else {
      dst->items[dst->count] = *e;
      slot_insert(dst->slots, dst->nslots, e->hash, dst->count);
      dst->count++;
    }
  }
  src->count = 0;
  config_release(src);
  return 0;
}

int tl_config_new(tl_config **out)
{
  if (!out)
    return tl_error_set(TL_EINVAL, "config: no output handle");
  *out = calloc(1, sizeof **out);
  if (!*out)
    return tl_error_set(TL_ENOMEM, "config: out of memory");
  return 0;
}

void tl_config_free(tl_config *cfg)
{
  if (!cfg)
    return;
  config_release(cfg);
  free(cfg);
}

int tl_config_set(tl_config *cfg, const char *key, const char *value)
{
  if (!cfg || !key || !value)
    return tl_error_set(TL_EINVAL, "config: missing argument to set");
  size_t klen = strlen(key);
  if (!key_valid(key, klen))
    return tl_error_set(TL_EINVAL, "config: invalid key '%.64s'", key);
  char *k = strdup(key);
  char *v = strdup(value);
  if (!k || !v) {
    free(k);
    free(v);
    return tl_error_set(TL_ENOMEM, "config: out of memory");
  }
  return config_put(cfg, k, klen, v);
}

const char *tl_config_get(const tl_config *cfg, const char *key)
{
  if (!cfg || !key)
    return NULL;
  size_t klen = strlen(key);
  size_t i = config_find(cfg, key, klen, key_hash(key, klen));
  return i == SIZE_MAX ? NULL : cfg->items[i].value;
}

void tl_config_each(const tl_config *cfg,
                    void (*fn)(const char *key, const char *value, void *ctx),
                    void *ctx)
{
  if (!cfg || !fn)
    return;
  for (size_t i = 0; i < cfg->count; i++)
    fn(cfg->items[i].key, cfg->items[i].value, ctx);
}

int tl_config_overlay_environ(tl_config *cfg)
{
  if (!cfg)
    return tl_error_set(TL_EINVAL, "config: no configuration");
  for (char **ep = environ; ep && *ep; ep++) {
    const char *eq = strchr(*ep, '=');
    if (!eq)
      continue;
    size_t klen = (size_t)(eq - *ep);
    /* Names no .env file could spell (BASH_FUNC_x%%, a-b) are not
     * configuration; skipping them keeps every key reachable by set/get. */
    if (!key_valid(*ep, klen))
      continue;
    char *k = tl__strndup(*ep, klen);
    char *v = strdup(eq + 1);
    if (!k || !v) {
      free(k);
      free(v);
      return tl_error_set(TL_ENOMEM, "config: out of memory");
    }
    int rc = config_put(cfg, k, klen, v);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* ---- .env parser ------------------------------------------------------ */

/* The parser's growable strings are tl__buf (core_int.h); these two turn
 * its out-of-memory state into a status and hand the string over. */
static int vbuf_add(tl__buf *b, const char *s, size_t n)
{
  tl__buf_add(b, s, n);
  return b->failed ? tl_error_set(TL_ENOMEM, "config: out of memory") : 0;
}

/* The buffer's string, handed to the caller; "" when nothing was added. */
static char *vbuf_take(tl__buf *b)
{
  char *s = tl__buf_steal(b, NULL);
  return s ? s : strdup("");
}

enum { MODE_UNQUOTED, MODE_DOUBLE };

struct tl__parser {
  const char *p, *end;
  const char *origin;
  int line;
  tl_config *staged;     /* keys of this text, merged into cfg on success */
  const tl_config *cfg;
  size_t expand_left;    /* bytes variable expansion may still produce */
};

static int syntax_error(const struct tl__parser *ps, int line,
                        const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int syntax_error(const struct tl__parser *ps, int line,
                        const char *fmt, ...)
{
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (ps->origin)
    return tl_error_set(TL_EINVAL, "'%s' line %d: %s", ps->origin, line, what);
  return tl_error_set(TL_EINVAL, "line %d: %s", line, what);
}

static bool is_hspace(char c) { return c == ' ' || c == '\t'; }

static bool at_eol(const struct tl__parser *ps, const char *p)
{
  return p >= ps->end || *p == '\n' ||
         (*p == '\r' && (p + 1 >= ps->end || p[1] == '\n'));
}

static void skip_hspace(struct tl__parser *ps)
{
  while (ps->p < ps->end && is_hspace(*ps->p))
    ps->p++;
}

/* Move past the rest of the line and its line ending. */
static void next_line(struct tl__parser *ps)
{
  const char *nl = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
  if (nl) {
    ps->p = nl + 1;
    ps->line++;
  } else {
    ps->p = ps->end;
  }
}

/* The value of variable `name` for expansion: this text's earlier keys,
 * then `cfg`, then the process environment; NULL when unset. */
static int lookup(const struct tl__parser *ps, const char *name, size_t len,
                  const char **value)
{
  uint32_t h = key_hash(name, len);
  size_t i = config_find(ps->staged, name, len, h);
  if (i != SIZE_MAX) {
    *value = ps->staged->items[i].value;
    return 0;
  }
  i = config_find(ps->cfg, name, len, h);
  if (i != SIZE_MAX) {
    *value = ps->cfg->items[i].value;
    return 0;
  }
  char *z = tl__strndup(name, len);
  if (!z)
    return tl_error_set(TL_ENOMEM, "config: out of memory");
  *value = getenv(z);
  free(z);
  return 0;
}

static int add_expansion(struct tl__parser *ps, int line, tl__buf *out,
                         const char *s, size_t n)
{
  if (n > ps->expand_left)
    return syntax_error(ps, line, "variable expansion exceeds %zu MiB",
                        TL__CONFIG_EXPAND_MAX >> 20);
  ps->expand_left -= n;
  return vbuf_add(out, s, n);
}

static int scan_text(struct tl__parser *ps, int mode, const char *lim,
                     int stop, int open_line, int depth, tl__buf *out);

/* Expand the `$` at ps->p: ${NAME}, ${NAME:-default} or $NAME; a `$`
 * followed by anything else is literal. */
static int expand(struct tl__parser *ps, int mode, const char *lim, int depth,
                  tl__buf *out)
{
  int line = ps->line;
  const char *q = ps->p + 1;
  const char *value;
  int rc;

  if (q < lim && *q == '{') {
    const char *name = ++q;
    while (q < lim && is_key_char((unsigned char)*q))
      q++;
    size_t nlen = (size_t)(q - name);
    if (q >= lim || (*q == ':' && q + 1 >= lim))
      return syntax_error(ps, line, "unterminated '${'");
    if (nlen == 0 || !is_key_start((unsigned char)*name) ||
        (*q != '}' && !(q[0] == ':' && q[1] == '-')))
      return syntax_error(ps, line,
                          "invalid variable reference (expected ${NAME} "
                          "or ${NAME:-default})");
    if (*q == '}') {
      if ((rc = lookup(ps, name, nlen, &value)) < 0)
        return rc;
      ps->p = q + 1;
      return value ? add_expansion(ps, line, out, value, strlen(value)) : 0;
    }
    if (depth >= TL__CONFIG_NEST_MAX)
      return syntax_error(ps, line, "'${' nested too deeply");
    /* The default is scanned even when unused, so its syntax errors are
     * reported whatever the environment holds. Our variable is looked up
     * after it: getenv() may reuse its result for the next call. */
    tl__buf def = { 0 };
    ps->p = q + 2;
    rc = scan_text(ps, mode, lim, '}', line, depth + 1, &def);
    if (rc == 0)
      rc = lookup(ps, name, nlen, &value);
    if (rc == 0) {
      if (value && *value)
        rc = add_expansion(ps, line, out, value, strlen(value));
      else if (def.len)
        rc = vbuf_add(out, def.data, def.len);
    }
    tl__buf_free(&def);
    return rc;
  }
  if (q < lim && is_key_start((unsigned char)*q)) {
    const char *name = q;
    while (q < lim && is_key_char((unsigned char)*q))
      q++;
    if ((rc = lookup(ps, name, (size_t)(q - name), &value)) < 0)
      return rc;
    ps->p = q;
    return value ? add_expansion(ps, line, out, value, strlen(value)) : 0;
  }
  ps->p++;
  return vbuf_add(out, "$", 1);
}

/* Copy text from ps->p up to `lim`, expanding variables (and, inside
 * double quotes, escapes), until the byte `stop` (consumed; -1 for none).
 * `open_line` is where the construct being closed began. */
static int scan_text(struct tl__parser *ps, int mode, const char *lim,
                     int stop, int open_line, int depth, tl__buf *out)
{
  int rc;
  for (;;) {
    if (ps->p >= lim) {
      if (stop == '}')
        return syntax_error(ps, open_line, "unterminated '${'");
      if (mode == MODE_DOUBLE)
        return syntax_error(ps, open_line, "unterminated double quote");
      return 0;
    }
    unsigned char c = (unsigned char)*ps->p;
    if (c == stop) {
      ps->p++;
      return 0;
    }
    if (c == '$') {
      if ((rc = expand(ps, mode, lim, depth, out)) < 0)
        return rc;
      continue;
    }
    if (mode == MODE_DOUBLE) {
      if (c == '"') /* only reached inside ${...:-...} */
        return syntax_error(ps, open_line, "unterminated '${'");
      if (c == '\\' && ps->p + 1 < lim) {
        const char *rep = NULL;
        switch (ps->p[1]) {
        case 'n': rep = "\n"; break;
        case 't': rep = "\t"; break;
        case 'r': rep = "\r"; break;
        case '"': rep = "\""; break;
        case '\\': rep = "\\"; break;
        case '$': rep = "$"; break;
        }
        /* Other backslashes stay as written, so Windows paths and regular
         * expressions survive quoting. */
        if (rep) {
          ps->p += 2;
          if ((rc = vbuf_add(out, rep, 1)) < 0)
            return rc;
          continue;
        }
      }
      if (c == '\r' && ps->p + 1 < lim && ps->p[1] == '\n') {
        ps->p++; /* a CRLF file's multi-line value gets plain \n */
        continue;
      }
      if (c == '\n')
        ps->line++;
    }
    if ((rc = vbuf_add(out, ps->p, 1)) < 0)
      return rc;
    ps->p++;
  }
}

/* After a closing quote only blanks or a comment may follow. */
static int after_quote(struct tl__parser *ps)
{
  skip_hspace(ps);
  if (!at_eol(ps, ps->p) && *ps->p != '#')
    return syntax_error(ps, ps->line, "unexpected text after closing quote");
  next_line(ps);
  return 0;
}

static int parse_value(struct tl__parser *ps, tl__buf *out)
{
  int line = ps->line;
  const char *eq_end = ps->p; /* just after '=' */
  skip_hspace(ps);

  if (ps->p < ps->end && *ps->p == '\'') {
    const char *start = ++ps->p;
    const char *q = start;
    while (q < ps->end && *q != '\'' && *q != '\n')
      q++;
    if (q >= ps->end || *q != '\'')
      return syntax_error(ps, line, "unterminated single quote");
    int rc = vbuf_add(out, start, (size_t)(q - start));
    if (rc < 0)
      return rc;
    ps->p = q + 1;
    return after_quote(ps);
  }

  if (ps->p < ps->end && *ps->p == '"') {
    ps->p++;
    int rc = scan_text(ps, MODE_DOUBLE, ps->end, '"', line, 0, out);
    if (rc < 0)
      return rc;
    return after_quote(ps);
  }

  /* Unquoted: the rest of the line, up to a '#' that follows a blank. */
  const char *eol = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
  if (!eol)
    eol = ps->end;
  const char *lim = eol;
  for (const char *q = ps->p; q < eol; q++) {
    if (*q == '#' && q > eq_end && is_hspace(q[-1])) {
      lim = q;
      break;
    }
  }
  while (lim > ps->p && (is_hspace(lim[-1]) || lim[-1] == '\r'))
    lim--;
  int rc = scan_text(ps, MODE_UNQUOTED, lim, -1, line, 0, out);
  if (rc < 0)
    return rc;
  ps->p = eol;
  next_line(ps);
  return 0;
}

static int parse_line(struct tl__parser *ps)
{
  skip_hspace(ps);
  if (at_eol(ps, ps->p) || *ps->p == '#') {
    next_line(ps);
    return 0;
  }
  int line = ps->line;

  if (ps->end - ps->p > 6 && memcmp(ps->p, "export", 6) == 0 &&
      is_hspace(ps->p[6])) {
    const char *q = ps->p + 6;
    while (q < ps->end && is_hspace(*q))
      q++;
    /* "export = x" sets a key named export. */
    if (q < ps->end && is_key_start((unsigned char)*q))
      ps->p = q;
  }

  const char *key = ps->p;
  while (ps->p < ps->end && is_key_char((unsigned char)*ps->p))
    ps->p++;
  size_t klen = (size_t)(ps->p - key);
  bool bad_key = klen == 0 || !is_key_start((unsigned char)key[0]) ||
                 (!at_eol(ps, ps->p) && !is_hspace(*ps->p) && *ps->p != '=');
  if (bad_key) {
    if (*key == '=')
      return syntax_error(ps, line, "missing key before '='");
    const char *q = key;
    while (!at_eol(ps, q) && !is_hspace(*q) && *q != '=')
      q++;
    int shown = q - key > 64 ? 64 : (int)(q - key);
    return syntax_error(ps, line, "invalid key '%.*s'", shown, key);
  }
  skip_hspace(ps);
  if (ps->p >= ps->end || *ps->p != '=')
    return syntax_error(ps, line, "missing '=' after key '%.*s'",
                        klen > 64 ? 64 : (int)klen, key);
  ps->p++;

  tl__buf value = { 0 };
  int rc = parse_value(ps, &value);
  if (rc < 0) {
    tl__buf_free(&value);
    return rc;
  }
  char *k = tl__strndup(key, klen);
  char *v = vbuf_take(&value);
  if (!k || !v) {
    free(k);
    free(v);
    return tl_error_set(TL_ENOMEM, "config: out of memory");
  }
  return config_put(ps->staged, k, klen, v);
}

int tl_config_parse(tl_config *cfg, const char *text, size_t len,
                    const char *origin)
{
  if (!cfg || (!text && len))
    return tl_error_set(TL_EINVAL, "config: missing argument to parse");
  if (len == 0)
    return 0;
  tl_config staged = { 0 };
  struct tl__parser ps = {
    .p = text, .end = text + len, .origin = origin, .line = 1,
    .staged = &staged, .cfg = cfg, .expand_left = TL__CONFIG_EXPAND_MAX,
  };

  /* Values are C strings: a NUL would silently cut one short. */
  const char *nul = memchr(text, '\0', len);
  if (nul) {
    int line = 1;
    for (const char *q = text; q < nul; q++)
      line += *q == '\n';
    return syntax_error(&ps, line, "unexpected NUL byte");
  }
  if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
    ps.p += 3;

  int rc = 0;
  while (rc == 0 && ps.p < ps.end)
    rc = parse_line(&ps);
  /* Applied only when the whole text parsed, so a bad file changes
   * nothing. */
  if (rc == 0)
    rc = config_merge(cfg, &staged);
  config_release(&staged);
  return rc;
}

static const char *errno_text(int err, char *buf, size_t size)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  return strerror_r(err, buf, size);
#else
  if (strerror_r(err, buf, size) != 0)
    snprintf(buf, size, "error %d", err);
  return buf;
#endif
}

/* Read `path` whole. *text is NULL (and 0 returned) when it does not
 * exist. */
static int read_file(const char *path, char **text, size_t *len)
{
  char ebuf[128];
  *text = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT)
      return 0;
    int err = errno;
    return tl_error_set(TL_EIO, "'%s': cannot open: %s", path,
                        errno_text(err, ebuf, sizeof ebuf));
  }
  tl__buf b = { 0 };
  char chunk[4096];
  size_t n;
  int rc = 0;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (b.len + n > TL__CONFIG_FILE_MAX) {
      rc = tl_error_set(TL_EIO, "'%s': larger than %zu MiB", path,
                        TL__CONFIG_FILE_MAX >> 20);
      break;
    }
    if ((rc = vbuf_add(&b, chunk, n)) < 0)
      break;
  }
  if (rc == 0 && ferror(f)) {
    int err = errno;
    rc = tl_error_set(TL_EIO, "'%s': cannot read: %s", path,
                      errno_text(err, ebuf, sizeof ebuf));
  }
  fclose(f);
  if (rc < 0) {
    tl__buf_free(&b);
    return rc;
  }
  *len = b.len;
  *text = vbuf_take(&b);
  if (!*text)
    return tl_error_set(TL_ENOMEM, "config: out of memory");
  return 0;
}

int tl_config_load(tl_config **out, const char *env_path)
{
  if (!out)
    return tl_error_set(TL_EINVAL, "config: no output handle");
  *out = NULL;
  const char *path = env_path ? env_path : ".env";
  tl_config *cfg;
  int rc = tl_config_new(&cfg);
  if (rc < 0)
    return rc;
  char *text;
  size_t len;
  rc = read_file(path, &text, &len);
  if (rc == 0 && text)
    rc = tl_config_parse(cfg, text, len, path);
  free(text);
  if (rc == 0)
    rc = tl_config_overlay_environ(cfg);
  if (rc < 0) {
    tl_config_free(cfg);
    return rc;
  }
  *out = cfg;
  return 0;
}

/* ---- URL masking ------------------------------------------------------ */

/* The length of the "scheme" in "scheme://", or 0 when `s` does not
 * start that way. */
static size_t scheme_len(const char *s)
{
  unsigned char c = (unsigned char)s[0];
  if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
    return 0;
  size_t n = 1;
  while (is_key_char((unsigned char)s[n]) || s[n] == '+' || s[n] == '-' ||
         s[n] == '.')
    n++;
  return strncmp(s + n, "://", 3) == 0 ? n : 0;
}

/* Like tl_url_mask; returns the length the full result needs. */
static size_t url_mask(const char *url, char *buf, size_t size)
{
  if (!url)
    url = "";
  size_t n = strlen(url);
  size_t slen = scheme_len(url);
  /* Without a scheme, "user:pass@host" is still masked. */
  const char *start = slen ? url + slen + 3 : url;
  /* As URL parsers read it, the user info ends at the last '@' before
   * the path, and the password starts at its first ':'. When no '@' comes
   * before the path, a password holding '/' may have cut the authority
   * short: then the password starts at the first ':' before the first '@'
   * and ends at the last '@' of the authority that follows. Either way
   * everything a parser could take for the password is hidden. */
  const char *auth_end = start + strcspn(start, "/?#");
  const char *at = NULL;
  for (const char *q = start; q < auth_end; q++)
    if (*q == '@')
      at = q;
  const char *colon = at ? memchr(start, ':', (size_t)(at - start)) : NULL;
  if (!at) {
    at = strchr(start, '@');
    colon = at ? memchr(start, ':', (size_t)(at - start)) : NULL;
    if (colon) {
      const char *end2 = at + strcspn(at, "/?#");
      for (const char *q = at + 1; q < end2; q++)
        if (*q == '@')
          at = q;
    }
  }
  size_t head = colon ? (size_t)(colon + 1 - url) : n;
  size_t total = colon ? head + 3 + strlen(at) : n;
  if (size == 0)
    return total;
  size_t w = 0;
  for (size_t i = 0; i < total && w + 1 < size; i++) {
    if (i < head)
      buf[w++] = url[i];
    else if (i < head + 3)
      buf[w++] = '*';
    else
      buf[w++] = at[i - head - 3];
  }
  buf[w] = '\0';
  return total;
}

void tl_url_mask(const char *url, char *buf, size_t size)
{
  if (buf)
    url_mask(url, buf, size);
}

/* ---- typed getters ---------------------------------------------------- */

/* A value as it may appear in a message: any password masked, long
 * values cut. */
static const char *shown(const char *value, char *buf, size_t size)
{
  size_t need = url_mask(value, buf, size);
  if (need >= size && size > 4)
    memcpy(buf + size - 4, "...", 4);
  return buf;
}

/* `items` joined with ", ", cut with "..." when too long. */
static const char *joined(const char *const *items, char *buf, size_t size)
{
  size_t w = 0;
  buf[0] = '\0';
  for (size_t i = 0; items && items[i]; i++) {
    int n = snprintf(buf + w, size - w, "%s%s", i ? ", " : "", items[i]);
    if (n < 0 || (size_t)n >= size - w) {
      memcpy(buf + size - 4, "...", 4);
      break;
    }
    w += (size_t)n;
  }
  return buf;
}

/* The value of `key`, or NULL when it is unset or empty. */
static const char *raw(const tl_config *cfg, const char *key)
{
  const char *v = tl_config_get(cfg, key);
  return v && *v ? v : NULL;
}

int tl_config_string(const tl_config *cfg, const char *key, const char *def,
                     const char **out)
{
  if (!key || !out)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  const char *v = raw(cfg, key);
  *out = v ? v : def;
  return 0;
}

/* 0 for a decimal integer, 1 when it is one but does not fit, -1 when it
 * is not one. */
static int parse_i64(const char *s, int64_t *out)
{
  bool neg = false;
  if (*s == '+' || *s == '-')
    neg = *s++ == '-';
  if (*s < '0' || *s > '9')
    return -1;
  uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  uint64_t acc = 0;
  bool overflow = false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9')
      return -1;
    unsigned d = (unsigned)(*s - '0');
    if (acc > (limit - d) / 10)
      overflow = true;
    else
      acc = acc * 10 + d;
  }
  if (overflow)
    return 1;
  if (neg)
    *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
  else
    *out = (int64_t)acc;
  return 0;
}

int tl_config_int(const tl_config *cfg, const char *key, int64_t def,
                  int64_t min, int64_t max, int64_t *out)
{
  if (!key || !out)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  if (min > max)
    return tl_error_set(TL_EINVAL,
                        "%s: empty range [%" PRId64 ", %" PRId64 "]", key,
                        min, max);
  const char *v = raw(cfg, key);
  if (!v) {
    *out = def;
    return 0;
  }
  char sb[TL__CONFIG_SHOW_MAX];
  int64_t n = 0;
  int r = parse_i64(v, &n);
  if (r < 0)
    return tl_error_set(TL_EINVAL,
                        "%s: '%s' is not an integer in [%" PRId64 ", %" PRId64
                        "]", key, shown(v, sb, sizeof sb), min, max);
  if (r > 0 || n < min || n > max)
    return tl_error_set(TL_EINVAL,
                        "%s: '%s' is out of range [%" PRId64 ", %" PRId64 "]",
                        key, shown(v, sb, sizeof sb), min, max);
  *out = n;
  return 0;
}

int tl_config_bool(const tl_config *cfg, const char *key, bool def, bool *out)
{
  static const char *const yes[] = { "true", "1", "yes", "on" };
  static const char *const no[] = { "false", "0", "no", "off" };
  if (!key || !out)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  const char *v = raw(cfg, key);
  if (!v) {
    *out = def;
    return 0;
  }
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  char sb[TL__CONFIG_SHOW_MAX];
  return tl_error_set(TL_EINVAL,
                      "%s: '%s' is not a boolean (expected true/false, 1/0, "
                      "yes/no, on/off)", key, shown(v, sb, sizeof sb));
}

enum { DUR_OK, DUR_BAD, DUR_NOUNIT, DUR_RANGE, DUR_NEGATIVE };

static int parse_unsigned_duration(const char *s, int64_t *out)
{
  if (*s < '0' || *s > '9')
    return DUR_BAD;
  size_t digits = strspn(s, "0123456789");
  if (s[digits] == '\0') {
    /* Only zero means the same in every unit. */
    if (strspn(s, "0") == digits) {
      *out = 0;
      return DUR_OK;
    }
    return DUR_NOUNIT;
  }
  int64_t total = 0;
  while (*s) {
    if (*s < '0' || *s > '9')
      return DUR_BAD;
    int64_t n = 0;
    bool big = false;
    for (; *s >= '0' && *s <= '9'; s++) {
      if (n > (INT64_MAX - (*s - '0')) / 10)
        big = true;
      else
        n = n * 10 + (*s - '0');
    }
    int64_t mult;
    if (s[0] == 'u' && s[1] == 's') {
      mult = 1;
      s += 2;
    } else if (s[0] == 'm' && s[1] == 's') {
      mult = 1000;
      s += 2;
    } else if (s[0] == 's') {
      mult = 1000000;
      s += 1;
    } else if (s[0] == 'm') {
      mult = 60 * INT64_C(1000000);
      s += 1;
    } else if (s[0] == 'h') {
      mult = 3600 * INT64_C(1000000);
      s += 1;
    } else {
      return DUR_BAD;
    }
    /* Keep checking the syntax after an overflow: a malformed value is
     * reported as malformed, not as too large. */
    if (big || n > INT64_MAX / mult || total > INT64_MAX - n * mult)
      total = -1;
    else if (total >= 0)
      total += n * mult;
  }
  if (total < 0)
    return DUR_RANGE;
  *out = total;
  return DUR_OK;
}

static int parse_duration(const char *s, int64_t *out)
{
  if (*s != '-')
    return parse_unsigned_duration(s, out);
  int64_t v = 0;
  int r = parse_unsigned_duration(s + 1, &v);
  if (r == DUR_OK && v == 0) {
    *out = 0;
    return DUR_OK;
  }
  /* A well-formed negative gets its own message; "-" + junk is junk. */
  return r == DUR_OK || r == DUR_RANGE ? DUR_NEGATIVE : r;
}

static int duration_error(const char *key, const char *value, int code)
{
  char sb[TL__CONFIG_SHOW_MAX];
  const char *v = shown(value, sb, sizeof sb);
  const char *k = key ? key : "";
  const char *sep = key ? ": " : "";
  switch (code) {
  case DUR_NOUNIT:
    return tl_error_set(TL_EINVAL, "%s%s'%s' has no unit (expected "
                        TL__DURATION_EXAMPLES ")", k, sep, v);
  case DUR_RANGE:
    return tl_error_set(TL_EINVAL, "%s%s'%s' is out of range (at most %"
                        PRId64 "h)", k, sep, v,
                        INT64_MAX / (3600 * INT64_C(1000000)));
  case DUR_NEGATIVE:
    return tl_error_set(TL_EINVAL, "%s%s'%s' is negative (expected a "
                        "duration >= 0)", k, sep, v);
  default:
    return tl_error_set(TL_EINVAL, "%s%s'%s' is not a duration (expected "
                        TL__DURATION_EXAMPLES ")", k, sep, v);
  }
}

int tl_duration_parse(const char *text, int64_t *out_us)
{
  if (!text || !out_us)
    return tl_error_set(TL_EINVAL, "duration: missing argument");
  int64_t v = 0;
  int code = parse_duration(text, &v);
  if (code != DUR_OK)
    return duration_error(NULL, text, code);
  *out_us = v;
  return 0;
}

int tl_config_duration(const tl_config *cfg, const char *key, int64_t def_us,
                       int64_t *out_us)
{
  if (!key || !out_us)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  const char *v = raw(cfg, key);
  if (!v) {
    *out_us = def_us;
    return 0;
  }
  int64_t n = 0;
  int code = parse_duration(v, &n);
  if (code != DUR_OK)
    return duration_error(key, v, code);
  *out_us = n;
  return 0;
}

int tl_config_url(const tl_config *cfg, const char *key, const char *def,
                  const char *const *schemes, const char **out)
{
  if (!key || !out)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  const char *v = raw(cfg, key);
  if (!v) {
    *out = def;
    return 0;
  }
  char sb[TL__CONFIG_SHOW_MAX];
  size_t slen = scheme_len(v);
  if (slen == 0)
    return tl_error_set(TL_EINVAL,
                        "%s: '%s' is not a URL (expected scheme://...)", key,
                        shown(v, sb, sizeof sb));
  if (schemes) {
    size_t i = 0;
    while (schemes[i] &&
           !(strlen(schemes[i]) == slen && strncasecmp(v, schemes[i], slen) == 0))
      i++;
    if (!schemes[i]) {
      char lb[256];
      return tl_error_set(TL_EINVAL,
                          "%s: '%s' has an unknown scheme '%.*s' (expected "
                          "one of %s)", key, shown(v, sb, sizeof sb),
                          slen > 32 ? 32 : (int)slen, v,
                          joined(schemes, lb, sizeof lb));
    }
  }
  *out = v;
  return 0;
}

int tl_config_list(const tl_config *cfg, const char *key, const char *def,
                   char ***out, size_t *count)
{
  if (!key || !out)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  *out = NULL;
  if (count)
    *count = 0;
  const char *v = raw(cfg, key);
  if (!v)
    v = def ? def : "";

  size_t max = 1;
  for (const char *q = v; *q; q++)
    max += *q == ',';
  char **list = calloc(max + 1, sizeof *list);
  if (!list)
    return tl_error_set(TL_ENOMEM, "config: out of memory");
  size_t n = 0;
  for (const char *item = v;;) {
    size_t len = strcspn(item, ",");
    const char *a = item, *b = item + len;
    while (a < b && (is_hspace(*a) || *a == '\r' || *a == '\n'))
      a++;
    while (b > a && (is_hspace(b[-1]) || b[-1] == '\r' || b[-1] == '\n'))
      b--;
    if (b > a) {
      list[n] = tl__strndup(a, (size_t)(b - a));
      if (!list[n]) {
        tl_config_list_free(list);
        return tl_error_set(TL_ENOMEM, "config: out of memory");
      }
      n++;
    }
    if (item[len] == '\0')
      break;
    item += len + 1;
  }
  *out = list;
  if (count)
    *count = n;
  return 0;
}

void tl_config_list_free(char **list)
{
  if (!list)
    return;
  for (char **p = list; *p; p++)
    free(*p);
  free(list);
}

int tl_config_enum(const tl_config *cfg, const char *key, const char *def,
                   const char *const *choices, int *out)
{
  if (!key || !out || !choices)
    return tl_error_set(TL_EINVAL, "config: missing argument");
  const char *v = raw(cfg, key);
  bool is_def = !v;
  if (is_def) {
    if (!def) {
      *out = -1;
      return 0;
    }
    v = def;
  }
  for (int i = 0; choices[i]; i++) {
    if (strcasecmp(v, choices[i]) == 0) {
      *out = i;
      return 0;
    }
  }
  char sb[TL__CONFIG_SHOW_MAX], lb[256];
  return tl_error_set(TL_EINVAL, "%s: %s'%s' is not one of %s", key,
                      is_def ? "default " : "", shown(v, sb, sizeof sb),
                      joined(choices, lb, sizeof lb));
}
