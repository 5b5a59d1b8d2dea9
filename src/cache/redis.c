/* The Redis backend (hiredis): a pool of blocking connections, each with
 * the configured timeout on connect, send and receive; GET pipelined for
 * multi-get; versioned writes as one Lua script, so the version check and
 * the write are atomic on the server.
 *
 * A value is stored as "<kind><version>:<bytes>" ("V7:{...}", "N0:",
 * "F12:"), so the script can read the version of what is there. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache_int.h"

/* Refuses (returns 0) when the stored version is higher; else writes. */
static const char SET_VERSIONED[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local v = tonumber(string.match(cur, '^%a(%d+):'))\n"
    "  if v and v > tonumber(ARGV[2]) then return 0 end\n"
    "end\n"
    "if tonumber(ARGV[3]) > 0 then\n"
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])\n"
    "else\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "end\n"
    "return 1\n";

typedef struct rconn {
  redisContext *ctx;
  struct rconn *next;
} rconn;

typedef struct rstore {
  char *host, *user, *password, *prefix;
  size_t plen;
  int port, db;
  int64_t timeout_us;
  const char *name;
  char where[300]; /* host:port/db, for messages */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  rconn *idle;
  unsigned open, max;
  char sha[48];    /* SET_VERSIONED's SHA-1, from SCRIPT LOAD; locks: mu */
  bool guard_pipe; /* SIGPIPE was not ignored when the cache opened */
} rstore;

/* hiredis writes with write(2), so a server that closed the connection
 * raises SIGPIPE, which ends a process that has not ignored it (services
 * do, through tl_signals_block). For the others, a call blocks SIGPIPE on
 * its thread and discards one that it raised. */
typedef struct pipe_guard {
  bool on, was_pending;
  sigset_t old;
} pipe_guard;

static void guard_begin(const rstore *r, pipe_guard *g)
{
  g->on = r->guard_pipe;
  if (!g->on) return;
  sigset_t set, pending;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  sigpending(&pending);
  g->was_pending = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void guard_end(pipe_guard *g)
{
  if (!g->on) return;
  sigset_t set, pending;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  sigpending(&pending);
  if (!g->was_pending && sigismember(&pending, SIGPIPE)) {
    struct timespec zero = { 0, 0 };
    sigtimedwait(&set, NULL, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static int64_t mono_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void r_close(void *st)
{
  rstore *r = st;
  if (!r) return;
  while (r->idle) {
    rconn *c = r->idle;
    r->idle = c->next;
    redisFree(c->ctx);
    free(c);
  }
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r->host);
  free(r->user);
  free(r->password);
  free(r->prefix);
  free(r);
}

static int r_open(void **out, const tl__cache_url *u, const tl__cache_opts *o)
{
  rstore *r = calloc(1, sizeof *r);
  if (!r) return tl_error_set(TL_ENOMEM, "cache '%s': out of memory", o->name);
  pthread_mutex_init(&r->mu, NULL);
  tl__cond_init_mono(&r->cv);
  r->host = strdup(u->host);
  r->user = u->user ? strdup(u->user) : NULL;
  r->password = u->password ? strdup(u->password) : NULL;
  r->prefix = strdup(o->key_prefix ? o->key_prefix : "");
  if (!r->host || !r->prefix || (u->user && !r->user) || (u->password && !r->password)) {
    r_close(r);
    return tl_error_set(TL_ENOMEM, "cache '%s': out of memory", o->name);
  }
  r->plen = strlen(r->prefix);
  r->port = u->port;
  r->db = u->db;
  r->timeout_us = o->timeout_us;
  r->name = o->name;
  r->max = o->pool_size;
  struct sigaction sa;
  r->guard_pipe = sigaction(SIGPIPE, NULL, &sa) != 0 || sa.sa_handler != SIG_IGN;
  snprintf(r->where, sizeof r->where, "%s:%d/%d", u->host, u->port, u->db);
  *out = r;
  return 0;
}

/* ---- connections ------------------------------------------------------- */

/* The status for a failed context: a timeout or a lost connection. */
static int ctx_error(rstore *r, redisContext *ctx, int saved_errno)
{
  const char *what = ctx ? ctx->errstr : "out of memory";
  bool timed_out = saved_errno == EAGAIN || saved_errno == EWOULDBLOCK ||
                   saved_errno == ETIMEDOUT || saved_errno == EINPROGRESS ||
                   strstr(what, "timed out") || strstr(what, "temporarily unavailable");
  if (timed_out)
    return tl_error_set(TL_ETIMEOUT, "cache '%s': redis '%s': no answer within %lld ms",
                        r->name, r->where, (long long)(r->timeout_us / 1000));
  return tl_error_set(TL_ECONNECT, "cache '%s': redis '%s': %s", r->name, r->where,
                      *what ? what : "connection lost");
}

static int reply_error(rstore *r, const redisReply *rep, const char *cmd)
{
  return tl_error_set(TL_EPROTO, "cache '%s': redis '%s': %s: %.*s", r->name, r->where, cmd,
                      (int)(rep->len > 200 ? 200 : rep->len), rep->str);
}

/* Run one command on `ctx`; a reply of type `want` (or nil when `nil_ok`)
 * is success. `*out` (may be NULL) gets it; the caller frees it. */
static int command(rstore *r, redisContext *ctx, int argc, const char **argv,
                   const size_t *lens, redisReply **out)
{
  errno = 0;
  redisReply *rep = redisCommandArgv(ctx, argc, argv, lens);
  if (!rep) return ctx_error(r, ctx, errno);
  if (rep->type == REDIS_REPLY_ERROR) {
    int rc = reply_error(r, rep, argv[0]);
    freeReplyObject(rep);
    return rc;
  }
  if (out) *out = rep;
  else freeReplyObject(rep);
  return 0;
}

static int setup(rstore *r, redisContext *ctx)
{
  int rc = 0;
  if (r->password) {
    const char *argv[3] = { "AUTH", r->user ? r->user : r->password, r->password };
    rc = command(r, ctx, r->user ? 3 : 2, argv, NULL, NULL);
  }
  if (!rc && r->db) {
    char db[16];
    snprintf(db, sizeof db, "%d", r->db);
    const char *argv[2] = { "SELECT", db };
    rc = command(r, ctx, 2, argv, NULL, NULL);
  }
  pthread_mutex_lock(&r->mu);
  bool have_sha = r->sha[0] != '\0';
  pthread_mutex_unlock(&r->mu);
  if (!rc && !have_sha) {
    const char *argv[3] = { "SCRIPT", "LOAD", SET_VERSIONED };
    redisReply *rep = NULL;
    rc = command(r, ctx, 3, argv, NULL, &rep);
    if (!rc && rep->type == REDIS_REPLY_STRING && rep->len < sizeof r->sha) {
      pthread_mutex_lock(&r->mu);
      memcpy(r->sha, rep->str, rep->len);
      r->sha[rep->len] = '\0';
      pthread_mutex_unlock(&r->mu);
    }
    freeReplyObject(rep);
  }
  return rc;
}

static int connect_one(rstore *r, rconn **out)
{
  struct timeval tv = { .tv_sec = r->timeout_us / 1000000,
                        .tv_usec = (suseconds_t)(r->timeout_us % 1000000) };
  errno = 0;
  redisContext *ctx = redisConnectWithTimeout(r->host, r->port, tv);
  int rc = 0;
  if (!ctx || ctx->err) rc = ctx_error(r, ctx, errno);
  else if (redisSetTimeout(ctx, tv) != 0 || redisEnableKeepAlive(ctx) != 0)
    rc = ctx_error(r, ctx, errno);
  else rc = setup(r, ctx);
  rconn *c = rc ? NULL : malloc(sizeof *c);
  if (!rc && !c) rc = tl_error_set(TL_ENOMEM, "cache '%s': out of memory", r->name);
  if (rc) {
    redisFree(ctx);
    return rc;
  }
  c->ctx = ctx;
  c->next = NULL;
  *out = c;
  return 0;
}

/* A connection for one call: an idle one, a new one while fewer than
 * pool_size are open, else wait for one until the timeout. */
static int acquire(rstore *r, rconn **out)
{
  int64_t deadline = mono_us() + r->timeout_us;
  struct timespec ts = { .tv_sec = deadline / 1000000, .tv_nsec = (deadline % 1000000) * 1000 };
  pthread_mutex_lock(&r->mu);
  while (!r->idle && r->open >= r->max) {
    if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT && !r->idle &&
        r->open >= r->max) {
      pthread_mutex_unlock(&r->mu);
      /* TL_EBUSY, not a timeout: this side is busy, Redis may be fine. */
      return tl_error_set(TL_EBUSY, "cache '%s': no redis connection free within %lld ms "
                          "(CACHE_POOL_SIZE=%u)", r->name, (long long)(r->timeout_us / 1000), r->max);
    }
  }
  if (r->idle) {
    *out = r->idle;
    r->idle = r->idle->next;
    pthread_mutex_unlock(&r->mu);
    return 0;
  }
  r->open++;
  pthread_mutex_unlock(&r->mu);
  int rc = connect_one(r, out);
  if (rc) {
    pthread_mutex_lock(&r->mu);
    r->open--;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
  }
  return rc;
}

/* Give a connection back; one whose context failed, or that may still
 * have replies in flight (`broken`), is closed. */
static void release(rstore *r, rconn *c, bool broken)
{
  broken = broken || c->ctx->err != 0;
  if (broken) {
    redisFree(c->ctx);
    free(c);
  }
  pthread_mutex_lock(&r->mu);
  if (broken) {
    r->open--;
  } else {
    c->next = r->idle;
    r->idle = c;
  }
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* A connection for one call, with SIGPIPE guarded until give(). */
static int take(rstore *r, pipe_guard *g, rconn **c)
{
  guard_begin(r, g);
  int rc = acquire(r, c);
  if (rc) guard_end(g);
  return rc;
}

static void give(rstore *r, pipe_guard *g, rconn *c, bool broken)
{
  release(r, c, broken);
  guard_end(g);
}

/* One command on a pooled connection. */
static int call(rstore *r, int argc, const char **argv, const size_t *lens, redisReply **out)
{
  pipe_guard g;
  rconn *c;
  int rc = take(r, &g, &c);
  if (rc) return rc;
  rc = command(r, c->ctx, argc, argv, lens, out);
  give(r, &g, c, false);
  return rc;
}

/* ---- keys and values --------------------------------------------------- */

/* key_prefix + key, in `buf` (TL_CACHE_KEY_MAX + 256 bytes: the front end
 * bounds both). */
#define KEYBUF (TL_CACHE_KEY_MAX + 256)
static size_t full_key(const rstore *r, const char *key, size_t klen, char *buf)
{
  memcpy(buf, r->prefix, r->plen);
  memcpy(buf + r->plen, key, klen);
  return r->plen + klen;
}

/* "V7:" + payload into `r`, or a miss for a fence. */
static int decode_value(rstore *r, const redisReply *rep, tl__cache_read *rd)
{
  rd->kind = 0;
  if (rep->type == REDIS_REPLY_NIL) return 0;
  const char *s = rep->str, *end = rep->str + rep->len, *p = s + 1;
  int64_t v = 0;
  if (rep->type != REDIS_REPLY_STRING || rep->len < 3 ||
      (s[0] != TL__CK_VALUE && s[0] != TL__CK_NEGATIVE && s[0] != TL__CK_FENCE))
    goto bad;
  while (p < end && *p >= '0' && *p <= '9' && v < (INT64_MAX - 9) / 10) v = v * 10 + (*p++ - '0');
  if (p == s + 1 || p == end || *p != ':') goto bad;
  p++;
  if (s[0] == TL__CK_FENCE) return 0;
  rd->version = v;
  if (s[0] == TL__CK_VALUE) {
    int rc = tl__cache_read_copy(rd, p, (size_t)(end - p));
    if (rc == TL_ENOMEM) return tl_error_set(rc, "cache '%s': out of memory", r->name);
    rd->kind = TL__CK_VALUE;
    return rc;
  }
  rd->kind = TL__CK_NEGATIVE;
  return 0;
bad:
  return tl_error_set(TL_EPROTO, "cache '%s': redis '%s': a value not written by trellis "
                      "(%s, %zu bytes)", r->name, r->where,
                      rep->type == REDIS_REPLY_STRING ? "string" : "not a string", rep->len);
}

static int r_get(void *st, const char *key, size_t klen, tl__cache_read *rd)
{
  rstore *r = st;
  char k[KEYBUF];
  const char *argv[2] = { "GET", k };
  size_t lens[2] = { 3, full_key(r, key, klen, k) };
  redisReply *rep;
  int rc = call(r, 2, argv, lens, &rep);
  if (rc) return rc;
  rc = decode_value(r, rep, rd);
  freeReplyObject(rep);
  return rc;
}

static int r_get_many(void *st, const char *const *keys, size_t n, tl__cache_read *rd)
{
  rstore *r = st;
  pipe_guard g;
  rconn *c;
  int rc = take(r, &g, &c);
  if (rc) return rc;
  char k[KEYBUF];
  for (size_t i = 0; i < n && !rc; i++) {
    const char *argv[2] = { "GET", k };
    size_t lens[2] = { 3, full_key(r, keys[i], strlen(keys[i]), k) };
    if (redisAppendCommandArgv(c->ctx, 2, argv, lens) != REDIS_OK)
      rc = ctx_error(r, c->ctx, errno);
  }
  /* Read every reply even after a bad value, so the connection stays in
   * step; stop at the first I/O error (the connection is then dropped). */
  int bad = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    void *rep = NULL;
    errno = 0;
    if (redisGetReply(c->ctx, &rep) != REDIS_OK) {
      rc = ctx_error(r, c->ctx, errno);
      break;
    }
    if (!bad) bad = ((redisReply *)rep)->type == REDIS_REPLY_ERROR
                        ? reply_error(r, rep, "GET") : decode_value(r, rep, &rd[i]);
    freeReplyObject(rep);
  }
  give(r, &g, c, rc != 0);
  return rc ? rc : bad;
}

static int r_set(void *st, const tl__cache_write *w)
{
  rstore *r = st;
  char k[KEYBUF], head[32], ttl[24], ver[24];
  int hlen = snprintf(head, sizeof head, "%c%lld:", w->kind, (long long)w->version);
  char *val = malloc((size_t)hlen + w->len + 1);
  if (!val) return tl_error_set(TL_ENOMEM, "cache '%s': out of memory", r->name);
  memcpy(val, head, (size_t)hlen);
  if (w->len) memcpy(val + hlen, w->val, w->len);
  size_t vlen = (size_t)hlen + w->len, klen = full_key(r, w->key, w->klen, k);
  snprintf(ttl, sizeof ttl, "%lld", (long long)(w->ttl_us > 0 ? (w->ttl_us + 999) / 1000 : 0));
  snprintf(ver, sizeof ver, "%lld", (long long)w->version);
  redisReply *rep = NULL;
  int rc;
  if (!w->versioned) {
    const char *argv[5] = { "SET", k, val, "PX", ttl };
    size_t lens[5] = { 3, klen, vlen, 2, strlen(ttl) };
    rc = call(r, w->ttl_us > 0 ? 5 : 3, argv, lens, NULL);
  } else {
    pthread_mutex_lock(&r->mu);
    char sha[sizeof r->sha];
    memcpy(sha, r->sha, sizeof sha);
    pthread_mutex_unlock(&r->mu);
    /* EVALSHA, or EVAL when the server lost the script (restart, SCRIPT
     * FLUSH) or it was never loaded. */
    const char *argv[7] = { sha[0] ? "EVALSHA" : "EVAL", sha[0] ? sha : SET_VERSIONED, "1", k,
                            val, ver, ttl };
    size_t lens[7] = { strlen(argv[0]), strlen(argv[1]), 1, klen, vlen, strlen(ver), strlen(ttl) };
    rc = call(r, 7, argv, lens, &rep);
    if (rc == TL_EPROTO && strstr(tl_error_last(), "NOSCRIPT")) {
      argv[0] = "EVAL";
      argv[1] = SET_VERSIONED;
      lens[0] = 4;
      lens[1] = strlen(SET_VERSIONED);
      rc = call(r, 7, argv, lens, &rep);
    }
    if (!rc && rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) rc = TL_ECONFLICT;
    if (rep) freeReplyObject(rep);
  }
  free(val);
  return rc;
}

static int r_del(void *st, const char *key, size_t klen)
{
  rstore *r = st;
  char k[KEYBUF];
  const char *argv[2] = { "UNLINK", k };
  size_t lens[2] = { 6, full_key(r, key, klen, k) };
  return call(r, 2, argv, lens, NULL);
}

/* SCAN MATCH <prefix>* with the glob characters of the prefix escaped,
 * then UNLINK each batch. */
static int r_del_prefix(void *st, const char *prefix, size_t plen, size_t *deleted)
{
  rstore *r = st;
  char pat[2 * KEYBUF + 2], cursor[32] = "0";
  size_t n = 0, total = 0;
  char k[KEYBUF];
  size_t klen = full_key(r, prefix, plen, k);
  for (size_t i = 0; i < klen; i++) {
    if (strchr("*?[]\\", k[i])) pat[n++] = '\\';
    pat[n++] = k[i];
  }
  pat[n++] = '*';
  pipe_guard g;
  rconn *c;
  int rc = take(r, &g, &c);
  if (rc) return rc;
  do {
    const char *argv[6] = { "SCAN", cursor, "MATCH", pat, "COUNT", "1000" };
    size_t lens[6] = { 4, strlen(cursor), 5, n, 5, 4 };
    redisReply *rep = NULL;
    if ((rc = command(r, c->ctx, 6, argv, lens, &rep))) break;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[0]->len >= sizeof cursor ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
      rc = tl_error_set(TL_EPROTO, "cache '%s': redis '%s': unexpected SCAN reply", r->name,
                        r->where);
    } else {
      memcpy(cursor, rep->element[0]->str, rep->element[0]->len);
      cursor[rep->element[0]->len] = '\0';
      redisReply *keys = rep->element[1];
      if (keys->elements) {
        const char **argv2 = malloc((keys->elements + 1) * sizeof *argv2);
        size_t *lens2 = malloc((keys->elements + 1) * sizeof *lens2);
        redisReply *del = NULL;
        if (!argv2 || !lens2) {
          rc = tl_error_set(TL_ENOMEM, "cache '%s': out of memory", r->name);
        } else {
          argv2[0] = "UNLINK";
          lens2[0] = 6;
          for (size_t i = 0; i < keys->elements; i++) {
            argv2[i + 1] = keys->element[i]->str;
            lens2[i + 1] = keys->element[i]->len;
          }
          rc = command(r, c->ctx, (int)keys->elements + 1, argv2, lens2, &del);
          if (!rc && del->type == REDIS_REPLY_INTEGER) total += (size_t)del->integer;
          if (del) freeReplyObject(del);
        }
        free(argv2);
        free(lens2);
      }
    }
    freeReplyObject(rep);
  } while (!rc && strcmp(cursor, "0") != 0);
  give(r, &g, c, false);
  if (deleted) *deleted = total;
  return rc;
}

static int r_ping(void *st)
{
  const char *argv[1] = { "PING" };
  return call(st, 1, argv, NULL, NULL);
}

const tl__cache_backend tl__cache_redis = {
  .name = "redis",
  .remote = true,
  .open = r_open,
  .close = r_close,
  .get = r_get,
  .get_many = r_get_many,
  .set = r_set,
  .del = r_del,
  .del_prefix = r_del_prefix,
  .ping = r_ping,
};
