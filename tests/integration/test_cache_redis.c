/* The cache contract on Redis (the shared server from scripts/services,
 * keys under a prefix of this process), without and with the in-process
 * layer; the stale window between two replicas' layers; and the outage
 * tests on a private redis-server of this test's own, which it stops
 * (SIGSTOP), kills and starts again while calls go on. */
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache_contract.h"

static char shared_url[256];
static char prefix[64];
static bool with_local;

static void ccx_config(tl_cache_config *cfg)
{
  cfg->url = shared_url;
  cfg->key_prefix = prefix;
  cfg->timeout_us = 2000000; /* a loaded machine under ASan is slow, not down */
  cfg->pool_size = 16;
  if (with_local) cfg->local_max_bytes = 4 << 20;
}

static void ccx_advance(int64_t us) { tl_sleep_us(us); }

static tl_cache *open_cfg(tl_cache_config cfg)
{
  tl_cache *c = NULL;
  int rc = tl_cache_open(&c, &cfg);
  if (rc) fail_msg("tl_cache_open: %s", tl_error_last());
  return c;
}

/* ---- two replicas, each with its in-process layer ----------------------- */

static void two_replicas_stale_window(void **state)
{
  (void)state;
  tl_cache_config cfg = { .url = shared_url, .key_prefix = prefix, .timeout_us = 2000000,
                          .local_max_bytes = 1 << 20, .local_ttl_us = 400000 };
  tl_cache *a = open_cfg(cfg), *b = open_cfg(cfg);
  assert_int_equal(tl_cache_set_version(a, "k:user", "v1", 2, 1, 0), 0);
  ccx_expect(b, "k:user", "v1", 1); /* b's layer now holds v1 */

  /* a writes v2: Redis and a's layer have it at once; b's layer keeps v1
   * until the invalidation message reaches b (or its local TTL ends). */
  assert_int_equal(tl_cache_set_version(a, "k:user", "v2", 2, 2, 0), 0);
  ccx_expect(a, "k:user", "v2", 2);
  ccx_expect(b, "k:user", "v1", 1);
  assert_int_equal(tl_cache_drop_local(b, "k:user", 2), 0);
  ccx_expect(b, "k:user", "v2", 2);

  /* Without a message the window is the local TTL. */
  assert_int_equal(tl_cache_invalidate(a, "k:user", 3), 0);
  ccx_expect(a, "k:user", NULL, 0);
  ccx_expect(b, "k:user", "v2", 2);
  tl_sleep_us(450000);
  ccx_expect(b, "k:user", NULL, 0);
  /* Redis keeps the fence: a late fill of v2 through b is refused. */
  assert_int_equal(tl_cache_set_version(b, "k:user", "v2", 2, 2, 0), TL_ECONFLICT);
  ccx_expect(a, "k:user", NULL, 0);

  /* A prefix drop, as for a tag. */
  ccx_put(a, "k:tag:1", "x", 0);
  ccx_expect(b, "k:tag:1", "x", 0);
  assert_int_equal(tl_cache_delete_prefix(a, "k:tag:", NULL), 0);
  ccx_expect(b, "k:tag:1", "x", 0);
  assert_int_equal(tl_cache_drop_local_prefix(b, "k:tag:"), 0);
  ccx_expect(b, "k:tag:1", NULL, 0);

  assert_int_equal(tl_cache_delete_prefix(a, "k", NULL), 0);
  tl_cache_close(a);
  tl_cache_close(b);
}

/* A value another client wrote under our prefix is reported, not
 * misread; a load replaces it. */
static void foreign_value(void **state)
{
  (void)state;
  tl_cache *c = open_cfg((tl_cache_config){ .url = shared_url, .key_prefix = prefix });
  int port = atoi(strrchr(shared_url, ':') + 1);
  redisContext *raw = redisConnect("127.0.0.1", port);
  assert_true(raw && !raw->err);
  redisReply *rep = redisCommand(raw, "SET %sk:raw hello", prefix);
  assert_non_null(rep);
  freeReplyObject(rep);
  redisFree(raw);
  tl_cache_val v;
  assert_int_equal(tl_cache_get(c, "k:raw", &v), TL_EPROTO);
  assert_non_null(strstr(tl_error_last(), "not written by trellis"));
  ccx_loader l = { .value = "mine", .version = 1 };
  assert_int_equal(tl_cache_get_or_load(c, "k:raw", 0, ccx_load, &l, &v), 0);
  tl_free(v.data);
  ccx_expect(c, "k:raw", "mine", 1);
  assert_int_equal(tl_cache_breaker_state(c), TL_BREAKER_CLOSED);
  assert_int_equal(tl_cache_delete(c, "k:raw"), 0);
  tl_cache_close(c);
}

/* ---- a private server for the outage tests ------------------------------ */

static pid_t srv_pid;
static int srv_port;

static int free_port(void)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t n = sizeof sa;
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &n), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

static bool srv_answers(void)
{
  struct timeval tv = { 0, 200000 };
  redisContext *ctx = redisConnectWithTimeout("127.0.0.1", srv_port, tv);
  bool ok = false;
  if (ctx && !ctx->err) {
    redisReply *rep = redisCommand(ctx, "PING");
    ok = rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0;
    if (rep) freeReplyObject(rep);
  }
  redisFree(ctx);
  return ok;
}

static void srv_start(void)
{
  char port[16];
  snprintf(port, sizeof port, "%d", srv_port);
  srv_pid = fork();
  assert_true(srv_pid >= 0);
  if (srv_pid == 0) {
    tl_test_child_dies_with_parent();
    freopen("/dev/null", "w", stdout);
    execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 100 && !srv_answers(); i++) tl_sleep_us(100000);
  if (!srv_answers()) fail_msg("redis-server on port %d did not start", srv_port);
}

static void srv_kill(void)
{
  kill(srv_pid, SIGKILL);
  waitpid(srv_pid, NULL, 0);
  srv_pid = 0;
}

static int64_t timed(int *rc, tl_cache *c, const char *key)
{
  tl_cache_val v;
  int64_t t0 = tl_time_mono_us();
  *rc = tl_cache_get(c, key, &v);
  int64_t took = tl_time_mono_us() - t0;
  tl_free(v.data);
  return took;
}

static void expect_degraded(tl_cache *c, bool degraded)
{
  char detail[256];
  assert_int_equal(tl_cache_ready_check(c, detail, sizeof detail), 0);
  if (degraded != (strncmp(detail, "degraded: ", 10) == 0))
    fail_msg("readiness detail '%s'", detail);
}

/* Calls fail within the timeout, then at once while the breaker is open;
 * get_or_load keeps answering from its loader; the breaker closes again
 * after open_us once Redis answers. */
static void outage(tl_cache *c, tl_metrics *reg, ccx_loader *l, void (*cut)(void),
                   void (*heal)(void), int fail_status)
{
  int rc;
  cut();
  for (int i = 0; i < 3; i++) {
    int64_t took = timed(&rc, c, "k:u");
    if (rc != fail_status) fail_msg("call %d: %s (%s)", i, tl_status_name(rc), tl_error_last());
    assert_true(took < 2000000); /* bounded by the 200 ms timeout, not hanging */
  }
  assert_int_equal(tl_cache_breaker_state(c), TL_BREAKER_OPEN);
  assert_true(ccx_metric(reg, "trellis_cache_breaker_open{cache=\"outage\"} ") == 1);
  int64_t took = timed(&rc, c, "k:u");
  assert_int_equal(rc, TL_ECONNECT);
  assert_non_null(strstr(tl_error_last(), "circuit breaker open"));
  assert_true(took < 100000); /* no network: the breaker answered */
  assert_int_equal(tl_cache_set(c, "k:u", "x", 1, 0), TL_ECONNECT);

  /* Reads keep working, from the loader. */
  int before = atomic_load(&l->calls);
  for (int i = 0; i < 5; i++) {
    tl_cache_val v;
    assert_int_equal(tl_cache_get_or_load(c, "k:u", 0, ccx_load, l, &v), 0);
    assert_string_equal(v.data, "from-db");
    tl_free(v.data);
  }
  assert_int_equal(atomic_load(&l->calls), before + 5);
  expect_degraded(c, true);

  heal();
  tl_sleep_us(1100000); /* breaker_open_us */
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:u", 0, ccx_load, l, &v), 0);
  tl_free(v.data);
  assert_int_equal(tl_cache_breaker_state(c), TL_BREAKER_CLOSED);
  assert_true(ccx_metric(reg, "trellis_cache_breaker_open{cache=\"outage\"} ") == 0);
  expect_degraded(c, false);
  before = atomic_load(&l->calls);
  ccx_expect(c, "k:u", "from-db", 0); /* cached again */
  assert_int_equal(atomic_load(&l->calls), before);
}

static void srv_stop(void) { kill(srv_pid, SIGSTOP); }
static void srv_cont(void) { kill(srv_pid, SIGCONT); }

static void redis_stopped_and_killed_mid_run(void **state)
{
  (void)state;
  srv_port = free_port();
  srv_start();
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", srv_port);
  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_cache *c = open_cfg((tl_cache_config){ .url = url, .name = "outage", .timeout_us = 200000,
                                            .breaker_failures = 3, .breaker_open_us = 1000000,
                                            .pool_size = 4, .metrics = reg });
  ccx_loader l = { .value = "from-db" };
  tl_cache_val v;
  assert_int_equal(tl_cache_get_or_load(c, "k:u", 0, ccx_load, &l, &v), 0);
  tl_free(v.data);
  ccx_expect(c, "k:u", "from-db", 0);
  expect_degraded(c, false);

  /* A server that accepts but does not answer: timeouts. */
  outage(c, reg, &l, srv_stop, srv_cont, TL_ETIMEOUT);
  /* A server that is gone: refused connections, then a new server (empty). */
  outage(c, reg, &l, srv_kill, srv_start, TL_ECONNECT);
  assert_true(ccx_metric(reg, "trellis_cache_requests_total{cache=\"outage\",result=\"error\"} ") >= 8);
  tl_cache_close(c);
  tl_metrics_free(reg);
  srv_kill();
}

/* Opening does not need Redis (a service must start without its cache). */
static void open_without_server(void **state)
{
  (void)state;
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", free_port());
  tl_cache *c = open_cfg((tl_cache_config){ .url = url, .timeout_us = 200000 });
  tl_cache_val v;
  assert_int_equal(tl_cache_get(c, "k:x", &v), TL_ECONNECT);
  assert_non_null(strstr(tl_error_last(), url + 8));
  expect_degraded(c, true);
  tl_cache_close(c);
}

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  tl_test_service_url("TRELLIS_TEST_REDIS_URL", "redis", shared_url, sizeof shared_url);
  snprintf(prefix, sizeof prefix, "tc%d:", (int)getpid());
  int failed = ccx_run("cache_contract_redis");
  with_local = true;
  failed += ccx_run("cache_contract_redis_local");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(two_replicas_stale_window),
    cmocka_unit_test(foreign_value),
    cmocka_unit_test(redis_stopped_and_killed_mid_run),
    cmocka_unit_test(open_without_server),
  };
  failed += cmocka_run_group_tests_name("cache_redis", tests, NULL, NULL);
  if (srv_pid > 0) srv_kill();
  return failed ? 1 : 0;
}
