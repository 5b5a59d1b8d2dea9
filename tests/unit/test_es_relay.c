/* The relay on SQLite and the in-process bus: every event reaches the
 * bus on "<category>.<type>" with its id as the message id (and in the
 * event-id header), in order, once per event (a restart resumes from the
 * checkpoint); subject naming. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <cmocka.h>

#include <trellis/trellis.h>
#include <trellis/cqrs.h>
#include <trellis/mq.h>

static char path[256], url[300];

typedef struct got {
  pthread_mutex_t mu;
  char subjects[64][64];
  char ids[64][40];
  char msg_ids[64][40];
  int n;
} got;

static int on_msg(const tl_mq_msg *msg, void *ctx)
{
  got *g = ctx;
  pthread_mutex_lock(&g->mu);
  if (g->n < 64) {
    snprintf(g->subjects[g->n], 64, "%s", msg->subject);
    const char *id = tl_mq_msg_header(msg, "event-id");
    snprintf(g->ids[g->n], 40, "%s", id ? id : "");
    snprintf(g->msg_ids[g->n], 40, "%s", msg->id);
    g->n++;
  }
  pthread_mutex_unlock(&g->mu);
  return TL_MQ_ACK;
}

static int count(got *g)
{
  pthread_mutex_lock(&g->mu);
  int n = g->n;
  pthread_mutex_unlock(&g->mu);
  return n;
}

static void wait_for(got *g, int n)
{
  int64_t end = tl_time_mono_us() + 10000000;
  while (count(g) < n && tl_time_mono_us() < end) tl_sleep_us(2000);
}

static void subjects(void **state)
{
  (void)state;
  char b[64];
  tl_es_subject("user", "UserCreated", b, sizeof b);
  assert_string_equal(b, "user.created");
  tl_es_subject("user", "PasswordChanged", b, sizeof b);
  assert_string_equal(b, "user.password_changed");
  tl_es_subject("Order", "order_shipped", b, sizeof b);
  assert_string_equal(b, "order.shipped");
  tl_es_subject("user", "HTTPRequestSeen", b, sizeof b);
  assert_string_equal(b, "user.http_request_seen");
  tl_es_subject("user", "Users", b, sizeof b);
  assert_string_equal(b, "user.users");
  assert_int_equal(tl_es_subject("user", "UserCreated", b, 4), strlen("user.created"));
  assert_string_equal(b, "use");
}

static void relay_publishes_everything(void **state)
{
  (void)state;
  tl_db *db;
  tl_es *es;
  assert_int_equal(tl_db_connect(&db, &(tl_db_config){ .url = url }), 0);
  assert_int_equal(tl_es_open(&es, &(tl_es_config){ .db = db }), 0);
  tl_mq *mq;
  assert_int_equal(tl_mq_open(&mq, &(tl_mq_config){ .type = TL_MQ_MEMORY }), 0);
  got g = { .mu = PTHREAD_MUTEX_INITIALIZER };
  tl_mq_sub *sub;
  assert_int_equal(tl_mq_subscribe(mq, "user.>", on_msg, &g, NULL, &sub), 0);
  tl_event e[3] = {
    { .aggregate_id = "user-123", .event_type = "UserCreated",
      .data = "{\"name\":\"John\",\"email\":\"john@example.com\"}", .version = 1,
      .metadata = "{\"correlation_id\":\"c-1\"}" },
    { .aggregate_id = "user-123", .event_type = "EmailChanged", .data = "{\"email\":\"j@x\"}", .version = 2 },
    { .aggregate_id = "user-124", .event_type = "UserCreated", .data = "{\"name\":\"Ann\"}", .version = 1 },
  };
  assert_int_equal(tl_es_append(es, &e[0], 2), 0);
  tl_relay *r;
  assert_int_equal(tl_relay_start(es, mq, NULL, &r), 0);
  assert_int_equal(tl_es_append(es, &e[2], 1), 0);
  wait_for(&g, 3);
  tl_relay_stop(r);
  assert_int_equal(count(&g), 3);
  assert_string_equal(g.subjects[0], "user.created");
  assert_string_equal(g.subjects[1], "user.email_changed");
  assert_string_equal(g.subjects[2], "user.created");
  for (int i = 0; i < 3; i++) {
    assert_string_equal(g.ids[i], e[i].id);
    assert_string_equal(g.msg_ids[i], e[i].id);
  }
  /* A restart resumes after the checkpoint: nothing twice. */
  tl_event more = { .aggregate_id = "user-124", .event_type = "EmailChanged", .data = "{}", .version = 2 };
  assert_int_equal(tl_es_append(es, &more, 1), 0);
  assert_int_equal(tl_relay_start(es, mq, &(tl_relay_opts){ .name = "trellis-relay" }, &r), 0);
  wait_for(&g, 4);
  tl_sleep_us(100000);
  tl_relay_stop(r);
  assert_int_equal(count(&g), 4);
  assert_string_equal(g.ids[3], more.id);
  assert_string_equal(g.msg_ids[3], more.id);
  tl_mq_unsubscribe(sub);
  tl_mq_close(mq);
  tl_es_close(es);
  tl_db_close(db);
}

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  snprintf(path, sizeof path, "/tmp/trellis-test-es-relay-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(subjects),
    cmocka_unit_test(relay_publishes_everything),
  };
  int failed = cmocka_run_group_tests_name("es_relay", tests, NULL, NULL);
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
  return failed ? 1 : 0;
}
