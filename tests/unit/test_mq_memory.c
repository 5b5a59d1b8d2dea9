/* The messaging contract on the in-process bus, plus what only the bus
 * has: named buses shared by handles, bounded queues with backpressure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mq_contract.h"

static void mqc_config(tl_mq_config *mc)
{
  mc->type = TL_MQ_MEMORY;
  mc->url = "memory://contract";
}

struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  bool open;
  atomic_int calls;
};

static int gated(const tl_mq_msg *m, void *ctx)
{
  (void)m;
  struct gate *g = ctx;
  atomic_fetch_add(&g->calls, 1);
  pthread_mutex_lock(&g->mu);
  while (!g->open)
    pthread_cond_wait(&g->cond, &g->mu);
  pthread_mutex_unlock(&g->mu);
  return TL_MQ_ACK;
}

/* A full queue makes publishers wait, then fail with TL_ETIMEOUT; room
 * lets them through again. Nothing is dropped. */
static void backpressure(void **state)
{
  (void)state;
  tl_mq_config mc = { .type = TL_MQ_MEMORY, .url = "memory://bp", .queue_capacity = 16,
                      .publish_timeout_us = 200000 };
  tl_mq *mq;
  MQC_OK(tl_mq_open(&mq, &mc));
  struct gate g = { .open = false };
  pthread_mutex_init(&g.mu, NULL);
  pthread_cond_init(&g.cond, NULL);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, "bp.x", gated, &g, NULL, &sub));
  /* 1 in the handler + 16 queued */
  int accepted = 0, rc = 0;
  int64_t t0 = tl_time_mono_us();
  for (int i = 0; i < 40 && rc == 0; i++) {
    rc = tl_mq_publish(mq, "bp.x", "m", 1);
    accepted += rc == 0;
  }
  assert_int_equal(rc, TL_ETIMEOUT);
  assert_non_null(strstr(tl_error_last(), "queue full"));
  assert_true(tl_time_mono_us() - t0 >= 200000);
  assert_true(accepted >= 16 && accepted <= 17 + 16);
  pthread_mutex_lock(&g.mu);
  g.open = true;
  pthread_cond_broadcast(&g.cond);
  pthread_mutex_unlock(&g.mu);
  MQC_OK(tl_mq_publish(mq, "bp.x", "m", 1));
  int64_t end = tl_time_mono_us() + 5000000;
  while (atomic_load(&g.calls) < accepted + 1 && tl_time_mono_us() < end)
    tl_sleep_us(1000);
  assert_int_equal(atomic_load(&g.calls), accepted + 1);
  MQC_OK(tl_mq_unsubscribe(sub));
  MQC_OK(tl_mq_close(mq));
  pthread_mutex_destroy(&g.mu);
  pthread_cond_destroy(&g.cond);
}

/* Handles naming the same bus share it; other buses are separate. */
static void named_buses(void **state)
{
  (void)state;
  tl_mq *a, *b, *other;
  tl_mq_config ca = { .type = TL_MQ_MEMORY, .url = "memory://shared" };
  tl_mq_config co = { .type = TL_MQ_MEMORY, .url = "memory://elsewhere" };
  MQC_OK(tl_mq_open(&a, &ca));
  MQC_OK(tl_mq_open(&b, &ca));
  MQC_OK(tl_mq_open(&other, &co));
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(b, "n.*", mqc_handler, &c, NULL, &sub));
  MQC_OK(tl_mq_publish(a, "n.one", "1", 1));
  MQC_OK(tl_mq_publish(other, "n.two", "2", 1));
  assert_int_equal(mqc_wait(&c, 1, 2000000), 1);
  tl_sleep_us(100000);
  assert_int_equal(mqc_count(&c), 1);
  assert_string_equal(c.recs[0].subject, "n.one");
  MQC_OK(tl_mq_close(a)); /* b's subscription lives on */
  MQC_OK(tl_mq_publish(other, "n.three", "3", 1));
  MQC_OK(tl_mq_unsubscribe(sub));
  MQC_OK(tl_mq_close(b));
  MQC_OK(tl_mq_close(other));
  mqc_col_free(&c);
  tl_mq_config bad = { .type = TL_MQ_MEMORY, .url = "mem:/x" };
  tl_mq *mq;
  assert_int_equal(tl_mq_open(&mq, &bad), TL_EINVAL);
}

struct self_box {
  tl_mq_sub *sub;
  atomic_int rc;
};

static int unsub_self(const tl_mq_msg *m, void *ctx)
{
  (void)m;
  struct self_box *box = ctx;
  atomic_store(&box->rc, tl_mq_unsubscribe(box->sub));
  return TL_MQ_ACK;
}

/* A handler cannot unsubscribe itself (it would wait for itself). */
static void unsubscribe_from_handler(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  struct self_box box = { .sub = NULL };
  atomic_init(&box.rc, 1);
  MQC_OK(tl_mq_subscribe(mq, "self.x", unsub_self, &box, NULL, &box.sub));
  MQC_OK(tl_mq_publish(mq, "self.x", "x", 1));
  int64_t end = tl_time_mono_us() + 2000000;
  while (atomic_load(&box.rc) == 1 && tl_time_mono_us() < end)
    tl_sleep_us(1000);
  assert_int_equal(atomic_load(&box.rc), TL_ESTATE);
  MQC_OK(tl_mq_close(mq));
}

/* The counters move: published, delivered, acked, redelivered,
 * dead-lettered, publish latency, labelled by backend and prefix. */
static void metrics(void **state)
{
  (void)state;
  tl_metrics *reg;
  MQC_OK(tl_metrics_new(&reg));
  tl_mq_config mc = { .type = TL_MQ_MEMORY, .url = "memory://metrics", .metrics = reg };
  tl_mq *mq;
  MQC_OK(tl_mq_open(&mq, &mc));
  mqc_col c, d;
  mqc_col_init(&c, MQC_FAIL_TWICE);
  mqc_col_init(&d, MQC_REJECT);
  tl_mq_sub_opts o = mqc_fast_retry();
  tl_mq_sub *s1, *s2;
  MQC_OK(tl_mq_subscribe(mq, "orders.*", mqc_handler, &c, &o, &s1));
  MQC_OK(tl_mq_subscribe(mq, "bad.*", mqc_handler, &d, &o, &s2));
  MQC_OK(tl_mq_publish(mq, "orders.created", "o", 1));
  MQC_OK(tl_mq_publish(mq, "bad.thing", "b", 1));
  assert_int_equal(mqc_wait(&c, 3, 5000000), 3);
  assert_int_equal(mqc_wait(&d, 1, 5000000), 1);
  tl_sleep_us(100000);
  char *text;
  size_t len;
  MQC_OK(tl_metrics_render(reg, &text, &len));
  const char *want[] = {
    "trellis_mq_published_total{backend=\"memory\",prefix=\"orders\"} 1",
    "trellis_mq_delivered_total{backend=\"memory\",prefix=\"orders\"} 3",
    "trellis_mq_redelivered_total{backend=\"memory\",prefix=\"orders\"} 2",
    "trellis_mq_acked_total{backend=\"memory\",prefix=\"orders\"} 1",
    "trellis_mq_dead_lettered_total{backend=\"memory\",prefix=\"bad\"} 1",
    "trellis_mq_published_total{backend=\"memory\",prefix=\"trellis\"} 1",
    "trellis_mq_publish_duration_seconds_count{backend=\"memory\",prefix=\"orders\"} 1",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(text, want[i]))
      fail_msg("metrics lack '%s':\n%s", want[i], text);
  tl_free(text);
  MQC_OK(tl_mq_close(mq));
  mqc_col_free(&c);
  mqc_col_free(&d);
  tl_metrics_free(reg);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    MQC_TESTS,
    cmocka_unit_test(backpressure),
    cmocka_unit_test(named_buses),
    cmocka_unit_test(unsubscribe_from_handler),
    cmocka_unit_test(metrics),
  };
  return cmocka_run_group_tests_name("mq contract: memory", tests, NULL, NULL);
}
