/* The messaging contract on Kafka, against librdkafka's mock cluster: a
 * Kafka-protocol broker running inside this process (no JVM, no server),
 * reached over real TCP sockets on 127.0.0.1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "mq_contract.h"
#include "mq/mq_int.h"

static void mqc_config(tl_mq_config *mc)
{
  mc->type = TL_MQ_KAFKA;
  mc->brokers = "mock://3";
  mc->topic = "events";
  mc->linger_ms = -1;
}

/* A group is durable: messages published while no member runs wait for
 * the next member (the group's committed offsets). */
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
  MQC_OK(tl_mq_publish(mq, subj, "first", 5));
  assert_int_equal(mqc_wait(&c, 1, MQC_WAIT_US), 1);
  MQC_OK(tl_mq_unsubscribe(sub));
  for (int i = 0; i < 5; i++)
    MQC_OK(tl_mq_publish(mq, subj, "kept", 4));
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, &o, &sub));
  assert_int_equal(mqc_wait(&c, 6, MQC_WAIT_US), 6);
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&c), 6); /* "first" was committed: not again */
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

static void brokers_down_and_up(void *ctx)
{
  rd_kafka_mock_cluster_t *mc = ctx;
  for (int id = 1; id <= 3; id++)
    rd_kafka_mock_broker_set_down(mc, id);
  tl_sleep_us(3000000);
  for (int id = 1; id <= 3; id++)
    rd_kafka_mock_broker_set_up(mc, id);
}

/* Every broker of the cluster goes down for 3 s in the middle of a stream
 * of confirmed publishes: every confirmed message is delivered. */
static void fault_brokers_down(void **state)
{
  (void)state;
  tl_mq *holder = mqc_open();
  rd_kafka_mock_cluster_t *mc = tl__mq_kafka_mock_cluster(holder);
  assert_non_null(mc);
  mqc_fault_run("kafka mock brokers down 3 s", mqc_fault_n(), brokers_down_and_up, mc);
  MQC_OK(tl_mq_close(holder));
}

static void bad_brokers(void **state)
{
  (void)state;
  tl_mq_config mc = { .type = TL_MQ_KAFKA, .brokers = "mock://99" };
  tl_mq *mq;
  assert_int_equal(tl_mq_open(&mq, &mc), TL_EINVAL);
  mc.brokers = "127.0.0.1:1";
  mc.publish_timeout_us = 1000000;
  assert_int_equal(tl_mq_open(&mq, &mc), TL_ECONNECT);
  assert_non_null(strstr(tl_error_last(), "cannot reach a broker"));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    MQC_TESTS,
    cmocka_unit_test(durable_group),
    cmocka_unit_test(fault_brokers_down),
    cmocka_unit_test(bad_brokers),
  };
  return cmocka_run_group_tests_name("mq contract: kafka (mock cluster)", tests, NULL, NULL);
}
