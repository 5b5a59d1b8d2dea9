/* The relay while its broker is down: events appended before, during and
 * after a SIGKILL of the broker all reach it once it is back. A durable
 * group consumer must get every event id at least once (as the message
 * id and the event-id header), and per stream the first deliveries must
 * never go back in version. Run against NATS with JetStream and against
 * RabbitMQ, each a private server started on a free port with a folder of
 * its own, so the shared servers of scripts/services stay up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <trellis/trellis.h>
#include <trellis/cqrs.h>
#include <trellis/mq.h>

#include "support.h"

#define STREAMS 4
#define MAX_EVENTS 8000
#define PACE_US 15000   /* between appends: the run spans the outage */
#define OUTAGE_US 3000000
#define WAIT_US 120000000

/* ---- a private broker --------------------------------------------------- */

typedef struct broker {
  const char *kind;   /* "nats" or "rabbitmq" */
  char dir[64];       /* its data, kept across the restart */
  int port, dist_port;
  char node[64];      /* RabbitMQ node name */
  pid_t pid;          /* nats-server, or beam.smp */
  char url[128];
} broker;

/* Bind to (free: nobody listens) or connect to (open: the server is up)
 * a port on the loopback. */
static bool port_try(int port, bool bind_it)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = (bind_it ? bind(fd, (struct sockaddr *)&a, sizeof a)
                     : connect(fd, (struct sockaddr *)&a, sizeof a)) == 0;
  close(fd);
  return ok;
}

static bool port_free(int port) { return port_try(port, true); }
static bool port_open(int port) { return port_try(port, false); }

/* Two free ports in a row, below the kernel's ephemeral range so no
 * client socket takes them meanwhile. */
static void pick_ports(broker *b)
{
  for (int i = 0; i < 1000; i++) {
    int p = 22000 + (int)(tl_rand64() % 9000);
    if (port_free(p) && port_free(p + 1)) {
      b->port = p;
      b->dist_port = p + 1;
      return;
    }
  }
  fail_msg("no free port pair found");
}

static void run(const char *cmd)
{
  int rc = system(cmd);
  if (rc != 0) fail_msg("'%s' failed (status %d)", cmd, rc);
}

/* Debian's rabbitmq wrappers run as root (they switch to the rabbitmq
 * account, keeping the environment); another user runs the scripts. */
static const char *rmq_tool(const char *tool, char *buf, size_t size)
{
  if (geteuid() == 0) snprintf(buf, size, "%s", tool);
  else snprintf(buf, size, "/usr/lib/rabbitmq/bin/%s", tool);
  return buf;
}

static void broker_launch(broker *b)
{
  if (!strcmp(b->kind, "nats")) {
    char port[16], store[96], log[96];
    snprintf(port, sizeof port, "%d", b->port);
    snprintf(store, sizeof store, "%s/js", b->dir);
    snprintf(log, sizeof log, "%s/nats.log", b->dir);
    pid_t pid = fork();
    if (pid == 0) {
      tl_test_child_dies_with_parent();
      int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
      execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p", port, "-js", "-sd", store,
             (char *)NULL);
      _exit(127);
    }
    b->pid = pid;
  } else {
    char cmd[512], tool[96];
    snprintf(cmd, sizeof cmd, "rm -f %s/pid; %s -detached >>%s/startup.log 2>&1", b->dir,
             rmq_tool("rabbitmq-server", tool, sizeof tool), b->dir);
    run(cmd);
    snprintf(cmd, sizeof cmd, "%s -n %s wait %s/pid --timeout 120 >>%s/startup.log 2>&1",
             rmq_tool("rabbitmqctl", tool, sizeof tool), b->node, b->dir, b->dir);
    run(cmd);
    char path[96];
    snprintf(path, sizeof path, "%s/pid", b->dir);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1) fail_msg("rabbitmq: no pid in %s", path);
    fclose(f);
    b->pid = pid;
  }
  int64_t end = tl_time_mono_us() + 120000000;
  while (!port_open(b->port) && tl_time_mono_us() < end) tl_sleep_us(20000);
  if (!port_open(b->port)) fail_msg("%s did not open port %d (see %s)", b->kind, b->port, b->dir);
}

static void broker_start(broker *b, const char *kind)
{
  memset(b, 0, sizeof *b);
  b->kind = kind;
  snprintf(b->dir, sizeof b->dir, "/tmp/trellis-relay-%s-XXXXXX", kind);
  if (!mkdtemp(b->dir)) fail_msg("mkdtemp: %s", strerror(errno));
  pick_ports(b);
  if (!strcmp(kind, "nats")) {
    snprintf(b->url, sizeof b->url, "nats://127.0.0.1:%d", b->port);
  } else {
    /* The node's name, ports and folders, as scripts/services sets them. */
    char v[160];
    snprintf(b->node, sizeof b->node, "trellis-relay-%d@localhost", (int)getpid());
    setenv("RABBITMQ_NODENAME", b->node, 1);
    setenv("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1", 1);
    snprintf(v, sizeof v, "%d", b->port);
    setenv("RABBITMQ_NODE_PORT", v, 1);
    snprintf(v, sizeof v, "%d", b->dist_port);
    setenv("RABBITMQ_DIST_PORT", v, 1);
    const char *in_dir[][2] = { { "RABBITMQ_MNESIA_BASE", "mnesia" }, { "RABBITMQ_LOG_BASE", "log" },
                                { "RABBITMQ_PID_FILE", "pid" },
                                { "RABBITMQ_ENABLED_PLUGINS_FILE", "enabled_plugins" } };
    for (size_t i = 0; i < 4; i++) {
      snprintf(v, sizeof v, "%s/%s", b->dir, in_dir[i][1]);
      setenv(in_dir[i][0], v, 1);
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/log && echo '[].' > %s/enabled_plugins", b->dir,
             b->dir);
    run(cmd);
    if (geteuid() == 0) {
      snprintf(cmd, sizeof cmd, "chown -R rabbitmq:rabbitmq %s", b->dir);
      run(cmd);
    }
    snprintf(b->url, sizeof b->url, "amqp://guest:guest@127.0.0.1:%d/", b->port);
  }
  broker_launch(b);
}

/* SIGKILL: no clean shutdown, no flush. */
static void broker_kill(broker *b)
{
  if (b->pid <= 0) return;
  kill(b->pid, SIGKILL);
  if (!strcmp(b->kind, "nats")) waitpid(b->pid, NULL, 0);
  else
    for (int i = 0; i < 500 && kill(b->pid, 0) == 0; i++) tl_sleep_us(10000);
  b->pid = 0;
  int64_t end = tl_time_mono_us() + 10000000;
  while (port_open(b->port) && tl_time_mono_us() < end) tl_sleep_us(20000);
}

static void broker_stop(broker *b)
{
  if (!b->kind) return;
  broker_kill(b);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", b->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", b->dir);
  b->kind = NULL;
}

/* ---- what the consumer got ---------------------------------------------- */

typedef struct event_ref {
  char id[TL_UUID_STRLEN];
  int stream;
  int64_t version;
} event_ref;

typedef struct seen {
  pthread_mutex_t mu;
  event_ref *appended;     /* filled by the writer */
  atomic_int nappended;
  unsigned char *got;      /* per appended event */
  int64_t last_first[STREAMS]; /* last version first-delivered per stream */
  int order_errors, id_mismatches, unknown;
  long deliveries;
  char cat[32];
} seen;

static seen S;

static int find_event(const char *id)
{
  int n = atomic_load(&S.nappended);
  for (int i = n - 1; i >= 0; i--)
    if (!strcmp(S.appended[i].id, id)) return i;
  return -1;
}

static int on_msg(const tl_mq_msg *m, void *ctx)
{
  (void)ctx;
  const char *hid = tl_mq_msg_header(m, "event-id");
  pthread_mutex_lock(&S.mu);
  S.deliveries++;
  if (!hid || strcmp(hid, m->id) != 0) S.id_mismatches++;
  int i = find_event(m->id);
  if (i < 0) {
    S.unknown++;
  } else {
    S.got[i] = 1;
    event_ref *e = &S.appended[i];
    if (m->delivery == 1) {
      /* A re-publish may repeat a version; going back is out of order. */
      if (e->version < S.last_first[e->stream]) S.order_errors++;
      else S.last_first[e->stream] = e->version;
    }
  }
  pthread_mutex_unlock(&S.mu);
  return TL_MQ_ACK;
}

static int missing(void)
{
  pthread_mutex_lock(&S.mu);
  int n = atomic_load(&S.nappended), miss = 0;
  for (int i = 0; i < n; i++) miss += !S.got[i];
  pthread_mutex_unlock(&S.mu);
  return miss;
}

typedef struct writer_ctx {
  tl_es *es;
  int rc;
  atomic_bool stop;
} writer_ctx;

/* Appends round-robin over the streams until told to stop. */
static void *writer(void *arg)
{
  writer_ctx *w = arg;
  for (int k = 0; !atomic_load(&w->stop) && !w->rc; k++)
    for (int s = 0; s < STREAMS && !w->rc && atomic_load(&S.nappended) < MAX_EVENTS; s++) {
      char stream[64];
      snprintf(stream, sizeof stream, "%s-%d", S.cat, s);
      tl_event e = { .aggregate_id = stream, .event_type = "OutageSurvived",
                     .data = "{\"ok\":true}", .version = k + 1 };
      /* Known before the consumer can get it: the id is made here. */
      tl_uuid7(e.id);
      pthread_mutex_lock(&S.mu);
      int i = atomic_load(&S.nappended);
      event_ref *r = &S.appended[i];
      snprintf(r->id, sizeof r->id, "%s", e.id);
      r->stream = s;
      r->version = e.version;
      atomic_store(&S.nappended, i + 1);
      pthread_mutex_unlock(&S.mu);
      w->rc = tl_es_append(w->es, &e, 1);
      tl_sleep_us(PACE_US);
    }
  return NULL;
}

/* Publishes of the relay the broker did not accept (its handle's
 * registry; the subject prefix is the category, lower case already). */
static double publish_failures(tl_metrics *reg, tl_mq_type type)
{
  tl_metric *m;
  if (tl_metrics_counter(reg, "trellis_mq_publish_failed_total", "x", "backend,prefix", &m))
    return -1;
  return tl_series_value(tl_metric_series(m, TL_LABELS(tl_mq_type_name(type), S.cat)));
}

/* ---- the test ----------------------------------------------------------- */

static broker B;

static void outage(const char *kind, tl_mq_type type)
{
  memset(&S, 0, sizeof S);
  pthread_mutex_init(&S.mu, NULL);
  snprintf(S.cat, sizeof S.cat, "ro%d%c", (int)getpid(), kind[0]);
  S.appended = calloc(MAX_EVENTS, sizeof *S.appended);
  S.got = calloc(MAX_EVENTS, 1);
  broker_start(&B, kind);

  char path[96], url[128];
  snprintf(path, sizeof path, "%s/events.db", B.dir);
  snprintf(url, sizeof url, "sqlite://%s", path);
  tl_db *db;
  tl_es *es;
  assert_int_equal(tl_db_connect(&db, &(tl_db_config){ .url = url }), 0);
  assert_int_equal(tl_es_open(&es, &(tl_es_config){ .db = db }), 0);

  tl_metrics *reg;
  assert_int_equal(tl_metrics_new(&reg), 0);
  tl_mq_config mc = { .type = type, .url = B.url, .publish_timeout_us = 2000000,
                      .reconnect = { .base_us = 100000, .cap_us = 1000000 }, .metrics = reg };
  tl_mq *pub, *con;
  if (tl_mq_open(&pub, &mc)) fail_msg("open %s: %s", B.url, tl_error_last());
  mc.metrics = NULL;
  if (tl_mq_open(&con, &mc)) fail_msg("open %s: %s", B.url, tl_error_last());
  char pattern[64], group[64];
  snprintf(pattern, sizeof pattern, "%s.>", S.cat);
  snprintf(group, sizeof group, "relay-outage-%d", (int)getpid());
  tl_mq_sub_opts so = { .group = group, .max_deliveries = -1, .ack_wait_us = 2000000 };
  tl_mq_sub *sub;
  if (tl_mq_subscribe(con, pattern, on_msg, NULL, &so, &sub))
    fail_msg("subscribe: %s", tl_error_last());

  tl_relay *relay;
  tl_relay_opts ro = { .name = "relay-outage", .filter = { .category = S.cat }, .retry_us = 100000 };
  assert_int_equal(tl_relay_start(es, pub, &ro, &relay), 0);

  writer_ctx w = { .es = es };
  pthread_t th;
  pthread_create(&th, NULL, writer, &w);
  /* Events before, during and after the broker is down. */
  while (atomic_load(&S.nappended) < 80) tl_sleep_us(5000);
  int64_t t_kill = tl_time_mono_us();
  int before = atomic_load(&S.nappended);
  broker_kill(&B);
  tl_sleep_us(OUTAGE_US);
  broker_launch(&B);
  int64_t t_back = tl_time_mono_us();
  int during = atomic_load(&S.nappended) - before;
  while (atomic_load(&S.nappended) < before + during + 80) tl_sleep_us(5000);
  atomic_store(&w.stop, true);
  pthread_join(th, NULL);
  assert_int_equal(w.rc, 0);
  int total = atomic_load(&S.nappended);

  int64_t end = tl_time_mono_us() + WAIT_US;
  while (missing() > 0 && tl_time_mono_us() < end) tl_sleep_us(20000);
  int64_t t_all = tl_time_mono_us();
  tl_sleep_us(500000); /* late duplicates still count, never as errors */
  double failures = publish_failures(reg, type);
  printf("[ OUTAGE   ] %s: %d events (%d before, %d while down %.1f s, %d after), %ld "
         "deliveries, %d missing, all in %.1f s after restart, %.0f failed publishes\n",
         kind, total, before, during, (double)(t_back - t_kill) / 1e6, total - before - during,
         S.deliveries, missing(),
         (double)(t_all - t_back) / 1e6, failures);
  assert_int_equal(missing(), 0);
  assert_true(during > 0);        /* appends went on while it was down */
  assert_true(failures > 0);      /* the relay did hit the outage */
  assert_int_equal(S.id_mismatches, 0);
  assert_int_equal(S.unknown, 0);
  assert_int_equal(S.order_errors, 0);

  tl_relay_stop(relay);
  tl_mq_unsubscribe(sub);
  tl_mq_close(con);
  tl_mq_close(pub);
  tl_metrics_free(reg);
  tl_es_close(es);
  tl_db_close(db);
}

static void nats_outage(void **state)
{
  (void)state;
  outage("nats", TL_MQ_NATS);
}

static void rabbitmq_outage(void **state)
{
  (void)state;
  outage("rabbitmq", TL_MQ_RABBITMQ);
}

static int stop_broker(void **state)
{
  (void)state;
  broker_stop(&B);
  free(S.appended);
  free(S.got);
  S.appended = NULL;
  S.got = NULL;
  return 0;
}

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(nats_outage, stop_broker),
    cmocka_unit_test_teardown(rabbitmq_outage, stop_broker),
  };
  return cmocka_run_group_tests_name("es_relay_outage", tests, NULL, NULL) ? 1 : 0;
}
