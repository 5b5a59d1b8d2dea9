/* The messaging contract on NATS with JetStream (a real nats-server from
 * scripts/services), plus core NATS and NATS-only behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mq_contract.h"

static char nats_url[512];

static void mqc_config(tl_mq_config *mc)
{
  mc->type = TL_MQ_NATS;
  mc->url = nats_url;
}

/* Core NATS (no JetStream): fan-out, queue groups and in-process retries
 * still hold; what is lost is durability. */
static void core_nats(void **state)
{
  (void)state;
  tl_mq_config mc = { .type = TL_MQ_NATS, .url = nats_url, .nats_core = true };
  tl_mq *mq;
  MQC_OK(tl_mq_open(&mq, &mc));
  char subj[128], pat[128];
  mqc_subj(subj, sizeof subj, "core.created");
  mqc_subj(pat, sizeof pat, "core.*");
  mqc_col a, b, g1, g2;
  mqc_col_init(&a, MQC_FAIL_TWICE);
  mqc_col_init(&b, MQC_ACK);
  mqc_col_init(&g1, MQC_ACK);
  mqc_col_init(&g2, MQC_ACK);
  tl_mq_sub_opts o = mqc_fast_retry();
  tl_mq_sub_opts go = { .group = "core" };
  tl_mq_sub *sa, *sb, *s1, *s2;
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &a, &o, &sa));
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &b, NULL, &sb));
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &g1, &go, &s1));
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &g2, &go, &s2));
  for (int i = 0; i < 20; i++)
    MQC_OK(tl_mq_publish(mq, subj, "c", 1));
  assert_int_equal(mqc_wait(&b, 20, MQC_WAIT_US), 20);
  assert_int_equal(mqc_wait(&a, 60, MQC_WAIT_US), 60); /* 3 deliveries each */
  int64_t end = tl_time_mono_us() + MQC_WAIT_US;
  while (mqc_count(&g1) + mqc_count(&g2) < 20 && tl_time_mono_us() < end)
    tl_sleep_us(2000);
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&g1) + mqc_count(&g2), 20);
  assert_string_equal(b.recs[0].subject, subj);
  MQC_OK(tl_mq_close(mq));
  mqc_col_free(&a);
  mqc_col_free(&b);
  mqc_col_free(&g1);
  mqc_col_free(&g2);
}

/* A group is durable: messages published while no member runs wait for
 * the next member. */
static void durable_group(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128], group[64];
  mqc_subj(subj, sizeof subj, "durable.x");
  snprintf(group, sizeof group, "d%s", mqc_token());
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub_opts o = { .group = group };
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, &o, &sub));
  MQC_OK(tl_mq_unsubscribe(sub));
  for (int i = 0; i < 5; i++)
    MQC_OK(tl_mq_publish(mq, subj, "kept", 4));
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, &o, &sub));
  assert_int_equal(mqc_wait(&c, 5, MQC_WAIT_US), 5);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* The message id is JetStream's Nats-Msg-Id: a second publish with the
 * same id within the duplicate window is acknowledged but not stored. */
static void jetstream_drops_repeated_id(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128], id[40];
  mqc_subj(subj, sizeof subj, "dedup");
  snprintf(id, sizeof id, "%s-once", mqc_token());
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  tl_mq_message m = { .subject = subj, .data = "d", .len = 1, .id = id };
  MQC_OK(tl_mq_publish_msg(mq, &m));
  MQC_OK(tl_mq_publish_msg(mq, &m));
  m.id = NULL;
  MQC_OK(tl_mq_publish_msg(mq, &m));
  assert_int_equal(mqc_wait(&c, 2, MQC_WAIT_US), 2);
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&c), 2);
  assert_string_equal(c.recs[0].id, id);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

static void unreachable_server(void **state)
{
  (void)state;
  tl_mq_config mc = { .type = TL_MQ_NATS, .url = "nats://user:s3cret@127.0.0.1:1",
                      .publish_timeout_us = 500000 };
  tl_mq *mq;
  assert_int_equal(tl_mq_open(&mq, &mc), TL_ECONNECT);
  assert_null(strstr(tl_error_last(), "s3cret"));
  assert_non_null(strstr(tl_error_last(), "127.0.0.1:1"));
}

/* The server dies (SIGKILL) in the middle of a stream of confirmed
 * publishes and comes back: every confirmed message is delivered. */
static void fault_server_crash(void **state)
{
  (void)state;
  mqc_fault_run("nats kill -9 + restart", mqc_fault_n(), mqc_kill_and_restart,
                (void *)"nats");
}

int main(void)
{
  tl_test_service_url("TRELLIS_TEST_NATS_URL", "nats", nats_url, sizeof nats_url);
  const struct CMUnitTest tests[] = {
    MQC_TESTS,
    cmocka_unit_test(fault_server_crash),
    cmocka_unit_test(core_nats),
    cmocka_unit_test(durable_group),
    cmocka_unit_test(jetstream_drops_repeated_id),
    cmocka_unit_test(unreachable_server),
  };
  return cmocka_run_group_tests_name("mq contract: nats", tests, NULL, NULL);
}
