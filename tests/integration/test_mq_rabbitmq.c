/* The messaging contract on RabbitMQ (a real rabbitmq-server from
 * scripts/services), plus RabbitMQ-only behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mq_contract.h"

static char rabbit_url[512];

static void mqc_config(tl_mq_config *mc)
{
  mc->type = TL_MQ_RABBITMQ;
  mc->url = rabbit_url;
}

/* A group is a durable queue: messages published while no member runs
 * wait for the next member. */
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

/* Wrong credentials: a clear error without the password. */
static void bad_credentials(void **state)
{
  (void)state;
  char url[600];
  const char *at = strchr(rabbit_url, '@');
  snprintf(url, sizeof url, "amqp://guest:wrong-s3cret%s", at ? at : "@127.0.0.1:21672/");
  tl_mq_config mc = { .type = TL_MQ_RABBITMQ, .url = url, .publish_timeout_us = 2000000 };
  tl_mq *mq;
  assert_int_equal(tl_mq_open(&mq, &mc), TL_ECONNECT);
  assert_null(strstr(tl_error_last(), "s3cret"));
  assert_non_null(strstr(tl_error_last(), "login"));
}

/* The server dies (SIGKILL) in the middle of a stream of confirmed
 * publishes and comes back: every confirmed message is delivered. */
static void fault_server_crash(void **state)
{
  (void)state;
  mqc_fault_run("rabbitmq kill -9 + restart", mqc_fault_n(), mqc_kill_and_restart,
                (void *)"rabbitmq");
}

int main(void)
{
  tl_test_service_url("TRELLIS_TEST_RABBITMQ_URL", "rabbitmq", rabbit_url, sizeof rabbit_url);
  const struct CMUnitTest tests[] = {
    MQC_TESTS,
    cmocka_unit_test(fault_server_crash),
    cmocka_unit_test(durable_group),
    cmocka_unit_test(bad_credentials),
  };
  return cmocka_run_group_tests_name("mq contract: rabbitmq", tests, NULL, NULL);
}
