/* The messaging contract: one suite, run unchanged against every backend
 * (memory, NATS, RabbitMQ, Kafka), so no backend can quietly do less.
 *
 * The including file defines, before including this header:
 *   static void mqc_config(tl_mq_config *mc);  -- type, url/brokers
 * and then lists MQC_TESTS in its cmocka group. Subjects carry a random
 * run token, so runs against a shared broker do not see each other. */
#ifndef TRELLIS_TESTS_MQ_CONTRACT_H
#define TRELLIS_TESTS_MQ_CONTRACT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trellis/trellis.h>
#include <trellis/mq.h>

#include "support.h"

static void mqc_config(tl_mq_config *mc);

/* How long a broker may take to deliver what we wait for. */
#ifndef MQC_WAIT_US
#define MQC_WAIT_US 30000000
#endif
/* After the expected deliveries: how long to watch for extra ones. */
#ifndef MQC_QUIET_US
#define MQC_QUIET_US 500000
#endif

static char mqc_run[16];

static const char *mqc_token(void)
{
  if (!mqc_run[0])
    snprintf(mqc_run, sizeof mqc_run, "t%08llx", (unsigned long long)(tl_rand64() & 0xffffffffu));
  return mqc_run;
}

/* "<run>.<rest>" */
static const char *mqc_subj(char *buf, size_t size, const char *rest)
{
  snprintf(buf, size, "%s.%s", mqc_token(), rest);
  return buf;
}

static tl_mq *mqc_open(void)
{
  tl_mq_config mc = { 0 };
  mqc_config(&mc);
  tl_mq *mq = NULL;
  int rc = tl_mq_open(&mq, &mc);
  if (rc)
    fail_msg("tl_mq_open(%s): %s: %s", tl_mq_type_name(mc.type), tl_status_name(rc),
             tl_error_last());
  return mq;
}

#define MQC_OK(call)                                                                       \
  do {                                                                                     \
    int mqc_rc_ = (call);                                                                  \
    if (mqc_rc_ != 0)                                                                      \
      fail_msg("%s: %s: %s", #call, tl_status_name(mqc_rc_), tl_error_last());             \
  } while (0)

/* ---- a collector of deliveries ---- */

typedef struct mqc_rec {
  char subject[256];
  char key[128];
  char id[40];
  char data[64];           /* first bytes, NUL-terminated */
  size_t len;
  uint64_t hash;           /* of the whole payload */
  unsigned delivery;
  int64_t published_us;
  char traceparent[64];
  char request_id[80];
  char custom[80];         /* header "x-custom" */
  char dlq_reason[64];
  char dlq_subject[256];
  int member;
} mqc_rec;

enum { MQC_ACK, MQC_FAIL, MQC_REJECT, MQC_FAIL_TWICE };

typedef struct mqc_col {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  mqc_rec *recs;
  size_t n, cap;
  int mode;
  int member;
  unsigned sleep_us;
  const char *only_data;   /* record only payloads equal to this */
  atomic_int inflight, max_inflight;
  atomic_int order_errors;
  int last_seq[64];        /* per key, for order checks */
} mqc_col;

static uint64_t mqc_hash(const void *p, size_t n)
{
  const unsigned char *c = p;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++)
    h = (h ^ c[i]) * 1099511628211ULL;
  return h;
}

static void mqc_col_init(mqc_col *c, int mode)
{
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cond, NULL);
  c->mode = mode;
  for (int i = 0; i < 64; i++)
    c->last_seq[i] = -1;
}

static void mqc_col_free(mqc_col *c)
{
  free(c->recs);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cond);
}

static void mqc_copy_header(const tl_mq_msg *m, const char *key, char *out, size_t size)
{
  const char *v = tl_mq_msg_header(m, key);
  snprintf(out, size, "%s", v ? v : "");
}

static int mqc_handler(const tl_mq_msg *m, void *ctx)
{
  mqc_col *c = ctx;
  if (c->only_data && (m->len != strlen(c->only_data) || memcmp(m->data, c->only_data, m->len)))
    return TL_MQ_ACK;
  int now = atomic_fetch_add(&c->inflight, 1) + 1;
  int seen = atomic_load(&c->max_inflight);
  while (now > seen && !atomic_compare_exchange_weak(&c->max_inflight, &seen, now))
    ;
  mqc_rec r;
  memset(&r, 0, sizeof r);
  snprintf(r.subject, sizeof r.subject, "%s", m->subject);
  snprintf(r.key, sizeof r.key, "%s", m->key ? m->key : "");
  snprintf(r.id, sizeof r.id, "%s", m->id ? m->id : "");
  size_t k = m->len < sizeof r.data - 1 ? m->len : sizeof r.data - 1;
  memcpy(r.data, m->data, k);
  r.len = m->len;
  r.hash = mqc_hash(m->data, m->len);
  r.delivery = m->delivery;
  r.published_us = m->published_us;
  r.member = c->member;
  mqc_copy_header(m, "traceparent", r.traceparent, sizeof r.traceparent);
  mqc_copy_header(m, "x-request-id", r.request_id, sizeof r.request_id);
  mqc_copy_header(m, "x-custom", r.custom, sizeof r.custom);
  mqc_copy_header(m, "dead-letter-reason", r.dlq_reason, sizeof r.dlq_reason);
  mqc_copy_header(m, "original-subject", r.dlq_subject, sizeof r.dlq_subject);
  /* per-key order: payloads "k<key>:<seq>" */
  int key, seq;
  if (sscanf(r.data, "k%d:%d", &key, &seq) == 2 && key >= 0 && key < 64) {
    pthread_mutex_lock(&c->mu);
    if (seq <= c->last_seq[key] && m->delivery == 1)
      atomic_fetch_add(&c->order_errors, 1);
    if (seq > c->last_seq[key])
      c->last_seq[key] = seq;
    pthread_mutex_unlock(&c->mu);
  }
  if (c->sleep_us)
    tl_sleep_us(c->sleep_us);
  pthread_mutex_lock(&c->mu);
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 64;
    c->recs = realloc(c->recs, c->cap * sizeof *c->recs);
  }
  c->recs[c->n++] = r;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->mu);
  atomic_fetch_sub(&c->inflight, 1);
  switch (c->mode) {
  case MQC_FAIL: return TL_MQ_RETRY;
  case MQC_REJECT: return TL_MQ_REJECT;
  case MQC_FAIL_TWICE: return m->delivery <= 2 ? TL_EIO : TL_MQ_ACK;
  default: return TL_MQ_ACK;
  }
}

/* Wait until the collector holds at least n records. */
static size_t mqc_wait(mqc_col *c, size_t n, int64_t us)
{
  int64_t end = tl_time_mono_us() + us;
  pthread_mutex_lock(&c->mu);
  while (c->n < n && tl_time_mono_us() < end) {
    pthread_mutex_unlock(&c->mu);
    tl_sleep_us(2000);
    pthread_mutex_lock(&c->mu);
  }
  size_t got = c->n;
  pthread_mutex_unlock(&c->mu);
  return got;
}

static size_t mqc_count(mqc_col *c)
{
  pthread_mutex_lock(&c->mu);
  size_t n = c->n;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* Distinct payloads seen. */
static size_t mqc_distinct(mqc_col *c)
{
  pthread_mutex_lock(&c->mu);
  size_t d = 0;
  for (size_t i = 0; i < c->n; i++) {
    bool dup = false;
    for (size_t j = 0; j < i && !dup; j++)
      dup = c->recs[j].hash == c->recs[i].hash && !strcmp(c->recs[j].subject, c->recs[i].subject);
    d += !dup;
  }
  pthread_mutex_unlock(&c->mu);
  return d;
}

static tl_mq_sub_opts mqc_fast_retry(void)
{
  return (tl_mq_sub_opts){ .retry = { .base_us = 10000, .cap_us = 50000 } };
}

/* ---- the cases ---- */

/* The seed's example, as written: user.* receives user.created with its
 * real subject, the payload and the trellis headers. */
static void mqc_seed_example(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  char payload[96];
  snprintf(payload, sizeof payload, "{\"user_id\":\"123\",\"run\":\"%s\"}", mqc_token());
  c.only_data = payload;
  tl_mq_sub *sub;
  tl_mq_sub_opts sub_opts = { 0 };
  MQC_OK(tl_mq_subscribe(mq, "user.*", mqc_handler, &c, &sub_opts, &sub));
  tl_log_context_set("req-42", "4bf92f3577b34da6a3ce929d0e0e4736");
  int64_t before = tl_time_now_us();
  MQC_OK(tl_mq_publish(mq, "user.created", payload, strlen(payload)));
  tl_log_context_set(NULL, NULL);
  assert_int_equal(mqc_wait(&c, 1, MQC_WAIT_US), 1);
  mqc_rec *r = &c.recs[0];
  assert_string_equal(r->subject, "user.created");
  assert_string_equal(r->key, "user.created");
  assert_string_equal(r->data, payload);
  assert_int_equal(r->len, strlen(payload));
  assert_int_equal(r->delivery, 1);
  uint8_t idb[16];
  assert_int_equal(tl_uuid_parse(r->id, idb), 0);
  assert_int_equal(idb[6] >> 4, 7); /* UUIDv7 */
  assert_true(r->published_us >= before - 1000 && r->published_us <= tl_time_now_us());
  assert_string_equal(r->request_id, "req-42");
  assert_int_equal(strlen(r->traceparent), 55);
  assert_memory_equal(r->traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* Without a group, every subscriber gets every message. */
static void mqc_fanout(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char pat[128], subj[128];
  mqc_subj(pat, sizeof pat, "fan.*");
  mqc_col a, b;
  mqc_col_init(&a, MQC_ACK);
  mqc_col_init(&b, MQC_ACK);
  tl_mq_sub *sa, *sb;
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &a, NULL, &sa));
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &b, NULL, &sb));
  const int n = 50;
  for (int i = 0; i < n; i++) {
    char data[32];
    snprintf(data, sizeof data, "m%d", i);
    MQC_OK(tl_mq_publish(mq, mqc_subj(subj, sizeof subj, i % 2 ? "fan.odd" : "fan.even"), data,
                         strlen(data)));
  }
  assert_int_equal(mqc_wait(&a, n, MQC_WAIT_US), n);
  assert_int_equal(mqc_wait(&b, n, MQC_WAIT_US), n);
  assert_int_equal(mqc_distinct(&a), n);
  assert_int_equal(mqc_distinct(&b), n);
  /* a non-matching subject reaches neither */
  MQC_OK(tl_mq_publish(mq, mqc_subj(subj, sizeof subj, "fan.x.y"), "no", 2));
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&a), n);
  assert_int_equal(mqc_count(&b), n);
  MQC_OK(tl_mq_unsubscribe(sa));
  MQC_OK(tl_mq_unsubscribe(sb));
  mqc_col_free(&a);
  mqc_col_free(&b);
  MQC_OK(tl_mq_close(mq));
}

/* Competing consumers: each message goes to one member of the group. */
static void mqc_group(void **state)
{
  (void)state;
  tl_mq *mq1 = mqc_open(), *mq2 = mqc_open();
  char pat[128], subj[128], group[64];
  mqc_subj(pat, sizeof pat, "grp.*");
  snprintf(group, sizeof group, "g%s", mqc_token());
  mqc_col a, b;
  mqc_col_init(&a, MQC_ACK);
  mqc_col_init(&b, MQC_ACK);
  a.member = 1, b.member = 2;
  a.sleep_us = b.sleep_us = 2000;
  tl_mq_sub_opts o = { .group = group, .prefetch = 4 };
  tl_mq_sub *sa, *sb;
  MQC_OK(tl_mq_subscribe(mq1, pat, mqc_handler, &a, &o, &sa));
  MQC_OK(tl_mq_subscribe(mq2, pat, mqc_handler, &b, &o, &sb));
  const int n = 120;
  for (int i = 0; i < n; i++) {
    char data[32], rest[32];
    snprintf(data, sizeof data, "m%d", i);
    snprintf(rest, sizeof rest, "grp.k%d", i);
    MQC_OK(tl_mq_publish(mq1, mqc_subj(subj, sizeof subj, rest), data, strlen(data)));
  }
  int64_t end = tl_time_mono_us() + MQC_WAIT_US;
  while (mqc_count(&a) + mqc_count(&b) < (size_t)n && tl_time_mono_us() < end)
    tl_sleep_us(5000);
  tl_sleep_us(MQC_QUIET_US);
  size_t na = mqc_count(&a), nb = mqc_count(&b);
  if (na + nb != (size_t)n)
    fail_msg("group: %zu + %zu deliveries for %d messages", na, nb, n);
  if (na == 0 || nb == 0)
    fail_msg("group: one member got nothing (%zu, %zu)", na, nb);
  /* disjoint: no payload seen by both */
  for (size_t i = 0; i < na; i++)
    for (size_t j = 0; j < nb; j++)
      if (!strcmp(a.recs[i].data, b.recs[j].data))
        fail_msg("group: '%s' delivered to both members", a.recs[i].data);
  MQC_OK(tl_mq_unsubscribe(sa));
  MQC_OK(tl_mq_unsubscribe(sb));
  mqc_col_free(&a);
  mqc_col_free(&b);
  MQC_OK(tl_mq_close(mq1));
  MQC_OK(tl_mq_close(mq2));
}

/* A failing handler gets the message again, with the delivery count. */
static void mqc_redelivery(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char pat[128];
  mqc_subj(pat, sizeof pat, "redeliver");
  mqc_col c;
  mqc_col_init(&c, MQC_FAIL_TWICE);
  tl_mq_sub_opts o = mqc_fast_retry();
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, pat, mqc_handler, &c, &o, &sub));
  MQC_OK(tl_mq_publish(mq, pat, "again", 5));
  assert_int_equal(mqc_wait(&c, 3, MQC_WAIT_US), 3);
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&c), 3); /* acknowledged on the third */
  for (unsigned i = 0; i < 3; i++) {
    assert_int_equal(c.recs[i].delivery, i + 1);
    assert_string_equal(c.recs[i].id, c.recs[0].id);
    assert_string_equal(c.recs[i].data, "again");
  }
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* After max_deliveries the message moves to <prefix>.dlq.<subject>. */
static void mqc_dead_letter(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128], dlq[160];
  mqc_subj(subj, sizeof subj, "dead.letter");
  snprintf(dlq, sizeof dlq, "trellis.dlq.%s", subj);
  mqc_col c, d;
  mqc_col_init(&c, MQC_FAIL);
  mqc_col_init(&d, MQC_ACK);
  tl_mq_sub_opts o = mqc_fast_retry();
  o.max_deliveries = 3;
  tl_mq_sub *sub, *dsub;
  MQC_OK(tl_mq_subscribe(mq, dlq, mqc_handler, &d, NULL, &dsub));
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, &o, &sub));
  tl_mq_header h[] = { { "x-custom", "kept" } };
  tl_mq_message m = { .subject = subj, .data = "poison", .len = 6, .headers = h, .nheaders = 1 };
  MQC_OK(tl_mq_publish_msg(mq, &m));
  assert_int_equal(mqc_wait(&d, 1, MQC_WAIT_US), 1);
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&c), 3);
  assert_int_equal(c.recs[2].delivery, 3);
  assert_int_equal(mqc_count(&d), 1);
  assert_string_equal(d.recs[0].subject, dlq);
  assert_string_equal(d.recs[0].data, "poison");
  assert_string_equal(d.recs[0].custom, "kept");
  assert_string_equal(d.recs[0].dlq_reason, "max deliveries");
  assert_string_equal(d.recs[0].dlq_subject, subj);
  assert_string_equal(d.recs[0].traceparent + 3, c.recs[0].traceparent + 3);
  assert_string_not_equal(d.recs[0].id, c.recs[0].id);
  MQC_OK(tl_mq_unsubscribe(sub));
  MQC_OK(tl_mq_unsubscribe(dsub));
  mqc_col_free(&c);
  mqc_col_free(&d);
  MQC_OK(tl_mq_close(mq));
}

/* A rejected message is dead-lettered at once, without retries. */
static void mqc_reject(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128], dlq[160];
  mqc_subj(subj, sizeof subj, "reject.me");
  snprintf(dlq, sizeof dlq, "trellis.dlq.%s", subj);
  mqc_col c, d;
  mqc_col_init(&c, MQC_REJECT);
  mqc_col_init(&d, MQC_ACK);
  tl_mq_sub_opts o = mqc_fast_retry();
  tl_mq_sub *sub, *dsub;
  MQC_OK(tl_mq_subscribe(mq, dlq, mqc_handler, &d, NULL, &dsub));
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, &o, &sub));
  MQC_OK(tl_mq_publish(mq, subj, "bad", 3));
  assert_int_equal(mqc_wait(&d, 1, MQC_WAIT_US), 1);
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&c), 1);
  assert_string_equal(d.recs[0].dlq_reason, "rejected");
  MQC_OK(tl_mq_unsubscribe(sub));
  MQC_OK(tl_mq_unsubscribe(dsub));
  mqc_col_free(&c);
  mqc_col_free(&d);
  MQC_OK(tl_mq_close(mq));
}

/* Bounded concurrency: up to N handlers at once, never two of one key
 * out of order. */
static void mqc_key_order(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "order.x");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  c.sleep_us = 1000;
  tl_mq_sub_opts o = { .concurrency = 4, .prefetch = 64 };
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, &o, &sub));
  const int keys = 8, per = 40;
  tl_mq_message *msgs = calloc((size_t)(keys * per), sizeof *msgs);
  char(*data)[32] = calloc((size_t)(keys * per), 32);
  char(*kb)[16] = calloc((size_t)keys, 16);
  for (int k = 0; k < keys; k++)
    snprintf(kb[k], 16, "key-%d", k);
  for (int s = 0, i = 0; s < per; s++)
    for (int k = 0; k < keys; k++, i++) {
      snprintf(data[i], 32, "k%d:%d", k, s);
      msgs[i] = (tl_mq_message){ .subject = subj, .data = data[i], .len = strlen(data[i]),
                                 .key = kb[k] };
    }
  MQC_OK(tl_mq_publish_batch(mq, msgs, (size_t)(keys * per), NULL));
  assert_int_equal(mqc_wait(&c, (size_t)(keys * per), MQC_WAIT_US), keys * per);
  assert_int_equal(atomic_load(&c.order_errors), 0);
  for (int k = 0; k < keys; k++)
    assert_int_equal(c.last_seq[k], per - 1);
  int maxin = atomic_load(&c.max_inflight);
  if (maxin < 2 || maxin > 4)
    fail_msg("concurrency: %d handlers at once, expected 2 to 4", maxin);
  for (size_t i = 0; i < c.n; i++)
    assert_string_equal(c.recs[i].key, kb[c.recs[i].data[1] - '0']);
  MQC_OK(tl_mq_unsubscribe(sub));
  free(msgs);
  free(data);
  free(kb);
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* Headers travel; traceparent and x-request-id given by the publisher win
 * over the log context; reserved names are refused. */
static void mqc_headers(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "hdr");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  tl_mq_header h[] = { { "x-custom", "v=1; a b" }, { "traceparent", tp },
                       { "X-Request-Id", "rid-7" } };
  tl_log_context_set("ctx-req", "11111111111111111111111111111111");
  tl_mq_message m = { .subject = subj, .data = "h", .len = 1, .headers = h, .nheaders = 3 };
  MQC_OK(tl_mq_publish_msg(mq, &m));
  tl_log_context_set(NULL, NULL);
  assert_int_equal(mqc_wait(&c, 1, MQC_WAIT_US), 1);
  assert_string_equal(c.recs[0].custom, "v=1; a b");
  assert_string_equal(c.recs[0].traceparent, tp);
  assert_string_equal(c.recs[0].request_id, "rid-7");
  /* without a context or header: a fresh valid trace, no request id */
  MQC_OK(tl_mq_publish(mq, subj, "i", 1));
  assert_int_equal(mqc_wait(&c, 2, MQC_WAIT_US), 2);
  assert_int_equal(strlen(c.recs[1].traceparent), 55);
  assert_string_equal(c.recs[1].request_id, "");
  tl_mq_header bad[] = { { "message-id", "x" } };
  m.headers = bad;
  m.nheaders = 1;
  assert_int_equal(tl_mq_publish_msg(mq, &m), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "reserved"));
  tl_mq_header badkey[] = { { "a b", "x" } };
  m.headers = badkey;
  assert_int_equal(tl_mq_publish_msg(mq, &m), TL_EINVAL);
  tl_mq_header badval[] = { { "k", "x\r\ny" } };
  m.headers = badval;
  assert_int_equal(tl_mq_publish_msg(mq, &m), TL_EINVAL);
  tl_mq_header badtp[] = { { "traceparent", "nope" } };
  m.headers = badtp;
  assert_int_equal(tl_mq_publish_msg(mq, &m), TL_EINVAL);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

struct mqc_id_cb {
  atomic_int calls;
  char id[40];
};

static void mqc_id_cb(int status, const char *id, void *ctx)
{
  struct mqc_id_cb *a = ctx;
  if (status == 0)
    snprintf(a->id, sizeof a->id, "%s", id ? id : "");
  atomic_fetch_add(&a->calls, 1);
}

/* A publisher's message id reaches the consumer as tl_mq_msg.id and the
 * message-id header (sync, async and batch); without one it is a UUIDv7;
 * a bad one is refused naming it. Ids carry the run token: JetStream
 * drops a repeated id within its duplicate window. */
static void mqc_message_id(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128], id1[40], id2[40], id3[40];
  mqc_subj(subj, sizeof subj, "msgid");
  snprintf(id1, sizeof id1, "%s-evt-1", mqc_token());
  snprintf(id2, sizeof id2, "%s-evt-2", mqc_token());
  snprintf(id3, sizeof id3, "%s-evt-3", mqc_token());
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  tl_mq_message m = { .subject = subj, .data = "1", .len = 1, .id = id1 };
  MQC_OK(tl_mq_publish_msg(mq, &m));
  assert_int_equal(mqc_wait(&c, 1, MQC_WAIT_US), 1);
  struct mqc_id_cb a = { 0 };
  m = (tl_mq_message){ .subject = subj, .data = "2", .len = 1, .id = id2 };
  MQC_OK(tl_mq_publish_async(mq, &m, mqc_id_cb, &a));
  MQC_OK(tl_mq_flush(mq, MQC_WAIT_US));
  assert_int_equal(atomic_load(&a.calls), 1);
  assert_string_equal(a.id, id2);
  assert_int_equal(mqc_wait(&c, 2, MQC_WAIT_US), 2);
  tl_mq_message b[2] = { { .subject = subj, .data = "3", .len = 1, .id = id3 },
                         { .subject = subj, .data = "4", .len = 1 } };
  MQC_OK(tl_mq_publish_batch(mq, b, 2, NULL));
  assert_int_equal(mqc_wait(&c, 4, MQC_WAIT_US), 4);
  const char *want[] = { id1, id2, id3 };
  uint8_t bytes[16];
  pthread_mutex_lock(&c.mu);
  for (size_t i = 0; i < 4; i++) {
    int k = c.recs[i].data[0] - '1';
    if (k < 3)
      assert_string_equal(c.recs[i].id, want[k]);
    else
      assert_int_equal(tl_uuid_parse(c.recs[i].id, bytes), 0);
  }
  pthread_mutex_unlock(&c.mu);
  const char *bad[] = { "", "0123456789012345678901234567890123456", "a\r\nb" };
  for (size_t i = 0; i < 3; i++) {
    m.id = bad[i];
    assert_int_equal(tl_mq_publish_msg(mq, &m), TL_EINVAL);
    assert_non_null(strstr(tl_error_last(), "message id"));
  }
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* A 1 MiB payload arrives whole. */
static void mqc_large_payload(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "large");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  size_t n = 1 << 20;
  unsigned char *big = malloc(n);
  for (size_t i = 0; i < n; i++)
    big[i] = (unsigned char)(tl_rand64() & 0xff);
  int rc = tl_mq_publish(mq, subj, big, n);
  if (rc) {
    free(big);
    fail_msg("1 MiB publish: %s: %s%s", tl_status_name(rc), tl_error_last(),
             rc == TL_ETOOBIG ? " (the broker's size limit is below 1 MiB: for NATS set "
                                "max_payload, e.g. 8MB, in the server's configuration)"
                              : "");
  }
  MQC_OK(tl_mq_publish(mq, subj, "", 0)); /* and an empty one */
  assert_int_equal(mqc_wait(&c, 2, MQC_WAIT_US), 2);
  mqc_rec *large = c.recs[0].len == n ? &c.recs[0] : &c.recs[1];
  mqc_rec *empty = large == &c.recs[0] ? &c.recs[1] : &c.recs[0];
  assert_int_equal(large->len, n);
  assert_true(large->hash == mqc_hash(big, n));
  assert_int_equal(empty->len, 0);
  free(big);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

struct mqc_pub_arg {
  tl_mq *mq;
  int thread, n, failures;
};

static void *mqc_publisher(void *p)
{
  struct mqc_pub_arg *a = p;
  char subj[128], data[32];
  mqc_subj(subj, sizeof subj, "conc.pub");
  for (int i = 0; i < a->n; i++) {
    snprintf(data, sizeof data, "t%d-%d", a->thread, i);
    if (tl_mq_publish(a->mq, subj, data, strlen(data)) != 0)
      a->failures++;
  }
  return NULL;
}

/* Several threads publish on one handle; every message arrives. */
static void mqc_concurrent_publishers(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "conc.pub");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  enum { T = 4, N = 100 };
  pthread_t th[T];
  struct mqc_pub_arg args[T];
  for (int t = 0; t < T; t++) {
    args[t] = (struct mqc_pub_arg){ .mq = mq, .thread = t, .n = N };
    pthread_create(&th[t], NULL, mqc_publisher, &args[t]);
  }
  for (int t = 0; t < T; t++) {
    pthread_join(th[t], NULL);
    assert_int_equal(args[t].failures, 0);
  }
  assert_true(mqc_wait(&c, T * N, MQC_WAIT_US) >= T * N);
  assert_int_equal(mqc_distinct(&c), T * N);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

struct mqc_async {
  atomic_int ok, failed;
};

static void mqc_async_cb(int status, const char *id, void *ctx)
{
  struct mqc_async *a = ctx;
  uint8_t b[16];
  if (status == 0 && id && tl_uuid_parse(id, b) == 0)
    atomic_fetch_add(&a->ok, 1);
  else
    atomic_fetch_add(&a->failed, 1);
}

/* Async publishes complete through their callback; batches report each
 * message; both arrive. */
static void mqc_async_and_batch(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "async");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  struct mqc_async a = { 0 };
  const int n = 300;
  char data[32];
  for (int i = 0; i < n; i++) {
    snprintf(data, sizeof data, "a%d", i);
    tl_mq_message m = { .subject = subj, .data = data, .len = strlen(data) };
    MQC_OK(tl_mq_publish_async(mq, &m, mqc_async_cb, &a));
  }
  MQC_OK(tl_mq_flush(mq, MQC_WAIT_US));
  assert_int_equal(atomic_load(&a.ok), n);
  assert_int_equal(atomic_load(&a.failed), 0);
  tl_mq_message batch[20];
  char bd[20][16];
  int st[20];
  for (int i = 0; i < 20; i++) {
    snprintf(bd[i], sizeof bd[i], "b%d", i);
    batch[i] = (tl_mq_message){ .subject = subj, .data = bd[i], .len = strlen(bd[i]) };
  }
  batch[7].subject = "bad..subject";
  assert_int_equal(tl_mq_publish_batch(mq, batch, 20, st), TL_EINVAL);
  for (int i = 0; i < 20; i++)
    assert_int_equal(st[i], i == 7 ? TL_EINVAL : 0);
  assert_true(mqc_wait(&c, n + 19, MQC_WAIT_US) >= (size_t)(n + 19));
  assert_int_equal(mqc_distinct(&c), n + 19);
  /* a refused async publish never calls back */
  tl_mq_message bad = { .subject = "a.*", .data = "x", .len = 1 };
  assert_int_equal(tl_mq_publish_async(mq, &bad, mqc_async_cb, &a), TL_EINVAL);
  assert_int_equal(atomic_load(&a.failed), 0);
  MQC_OK(tl_mq_unsubscribe(sub));
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* The wildcard grammar is the same on this backend as in the matcher. */
static void mqc_wildcards(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  static const char *pats[] = { "a", "a.*", "a.>", "*.b", "a.*.c", "a.b.>", ">", "*" };
  static const char *subs[] = { "a", "a.b", "a.c", "x.b", "a.b.c", "a.x.c", "a.b.c.d", "b" };
  enum { NP = sizeof pats / sizeof pats[0], NS = sizeof subs / sizeof subs[0] };
  mqc_col cols[NP];
  tl_mq_sub *sp[NP];
  char buf[128];
  for (int i = 0; i < NP; i++) {
    mqc_col_init(&cols[i], MQC_ACK);
    MQC_OK(tl_mq_subscribe(mq, mqc_subj(buf, sizeof buf, pats[i]), mqc_handler, &cols[i], NULL,
                           &sp[i]));
  }
  size_t expect[NP] = { 0 }, total = 0;
  for (int j = 0; j < NS; j++) {
    char s[128];
    mqc_subj(s, sizeof s, subs[j]);
    MQC_OK(tl_mq_publish(mq, s, subs[j], strlen(subs[j])));
    for (int i = 0; i < NP; i++) {
      char p[128];
      mqc_subj(p, sizeof p, pats[i]);
      expect[i] += tl_mq_subject_match(p, s);
    }
  }
  for (int i = 0; i < NP; i++)
    total += expect[i];
  int64_t end = tl_time_mono_us() + MQC_WAIT_US;
  for (;;) {
    size_t got = 0;
    for (int i = 0; i < NP; i++)
      got += mqc_count(&cols[i]);
    if (got >= total || tl_time_mono_us() > end)
      break;
    tl_sleep_us(5000);
  }
  tl_sleep_us(MQC_QUIET_US);
  for (int i = 0; i < NP; i++) {
    if (mqc_count(&cols[i]) != expect[i])
      fail_msg("pattern '%s': %zu deliveries, expected %zu", pats[i], mqc_count(&cols[i]),
               expect[i]);
    for (size_t k = 0; k < cols[i].n; k++) {
      char p[128];
      mqc_subj(p, sizeof p, pats[i]);
      if (!tl_mq_subject_match(p, cols[i].recs[k].subject))
        fail_msg("pattern '%s' got '%s'", pats[i], cols[i].recs[k].subject);
    }
    MQC_OK(tl_mq_unsubscribe(sp[i]));
    mqc_col_free(&cols[i]);
  }
  MQC_OK(tl_mq_close(mq));
}

/* Bad input is refused with a message, and the handler never runs. */
static void mqc_errors(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub = (tl_mq_sub *)&c;
  assert_int_equal(tl_mq_subscribe(mq, "a.>.b", mqc_handler, &c, NULL, &sub), TL_EINVAL);
  assert_null(sub);
  assert_non_null(strstr(tl_error_last(), "'>' must be the last token"));
  tl_mq_sub_opts o = { .group = "bad group" };
  assert_int_equal(tl_mq_subscribe(mq, "a.b", mqc_handler, &c, &o, &sub), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "group"));
  assert_int_equal(tl_mq_subscribe(mq, "a.b", NULL, &c, NULL, &sub), TL_EINVAL);
  assert_int_equal(tl_mq_publish(mq, "a..b", "x", 1), TL_EINVAL);
  assert_string_equal(tl_error_last(), "subject 'a..b': empty token");
  assert_int_equal(tl_mq_publish(mq, "a.*", "x", 1), TL_EINVAL);
  assert_int_equal(tl_mq_publish(mq, "a b", "x", 1), TL_EINVAL);
  assert_int_equal(tl_mq_publish(NULL, "a", "x", 1), TL_EINVAL);
  assert_int_equal(tl_mq_unsubscribe(NULL), 0);
  assert_int_equal(tl_mq_close(NULL), 0);
  assert_int_equal(mqc_count(&c), 0);
  mqc_col_free(&c);
  MQC_OK(tl_mq_ready(mq));
  MQC_OK(tl_mq_close(mq));
}

/* After unsubscribe returns, the handler never runs again. */
static void mqc_unsubscribe_stops(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "unsub");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  MQC_OK(tl_mq_publish(mq, subj, "1", 1));
  assert_int_equal(mqc_wait(&c, 1, MQC_WAIT_US), 1);
  MQC_OK(tl_mq_unsubscribe(sub));
  MQC_OK(tl_mq_publish(mq, subj, "2", 1));
  tl_sleep_us(MQC_QUIET_US);
  assert_int_equal(mqc_count(&c), 1);
  mqc_col_free(&c);
  MQC_OK(tl_mq_close(mq));
}

/* Closing with live subscriptions stops them and frees everything. */
static void mqc_close_with_subscriptions(void **state)
{
  (void)state;
  tl_mq *mq = mqc_open();
  char subj[128];
  mqc_subj(subj, sizeof subj, "close.live");
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(mq, subj, mqc_handler, &c, NULL, &sub));
  MQC_OK(tl_mq_publish(mq, subj, "x", 1));
  assert_int_equal(mqc_wait(&c, 1, MQC_WAIT_US), 1);
  MQC_OK(tl_mq_close(mq));
  mqc_col_free(&c);
}

/* ---- faults: the broker goes away in the middle of a stream ---- */

/* How many confirmed publishes a fault test streams (MQC_FAULT_N to
 * change it). */
__attribute__((unused)) static int mqc_fault_n(void)
{
  const char *v = getenv("MQC_FAULT_N");
  int n = v ? atoi(v) : 0;
  return n > 0 ? n : 10000;
}

/* Run "scripts/services <args>" (the script named in services.env, or the
 * checkout's). Fails the test when it fails. */
__attribute__((unused)) static void mqc_services(const char *args)
{
  char script[1024], cmd[1200];
  const char *src = getenv("TRELLIS_SOURCE_DIR");
  if (src && *src)
    snprintf(script, sizeof script, "%s/scripts/services", src);
  else
    tl_test_service_url("TRELLIS_SERVICES_SCRIPT", "the services script", script, sizeof script);
  snprintf(cmd, sizeof cmd, "%s %s", script, args);
  int rc = system(cmd);
  if (rc != 0)
    fail_msg("'%s' failed (status %d)", cmd, rc);
}

struct mqc_fault_pub {
  tl_mq *mq;
  const char *subject;
  int n;
  int *status;             /* per message */
  atomic_int sent;
};

static void *mqc_fault_publisher(void *p)
{
  struct mqc_fault_pub *f = p;
  char data[32];
  for (int i = 0; i < f->n; i++) {
    snprintf(data, sizeof data, "f%d", i);
    f->status[i] = tl_mq_publish(f->mq, f->subject, data, strlen(data));
    atomic_store(&f->sent, i + 1);
  }
  return NULL;
}

/* Publish `n` messages with confirms from one thread while `outage` takes
 * the broker down and brings it back (called once a third of them went
 * out). Every confirmed message must then be delivered at least once to a
 * group subscriber; a publish during the outage may fail, never vanish
 * silently. Prints what happened. */
__attribute__((unused)) static void mqc_fault_run(const char *name, int n,
                                                  void (*outage)(void *), void *ctx)
{
  tl_mq *pub = mqc_open(), *sub_mq = mqc_open();
  char subj[128], group[64];
  mqc_subj(subj, sizeof subj, "fault.stream");
  snprintf(group, sizeof group, "fault%s", mqc_token());
  mqc_col c;
  mqc_col_init(&c, MQC_ACK);
  tl_mq_sub_opts o = { .group = group };
  tl_mq_sub *sub;
  MQC_OK(tl_mq_subscribe(sub_mq, subj, mqc_handler, &c, &o, &sub));
  struct mqc_fault_pub f = { .mq = pub, .subject = subj, .n = n };
  f.status = calloc((size_t)n, sizeof *f.status);
  atomic_init(&f.sent, 0);
  pthread_t th;
  pthread_create(&th, NULL, mqc_fault_publisher, &f);
  while (atomic_load(&f.sent) < n / 3)
    tl_sleep_us(1000);
  int64_t t0 = tl_time_mono_us();
  outage(ctx);
  int64_t t1 = tl_time_mono_us();
  pthread_join(th, NULL);
  int confirmed = 0, failed = 0;
  for (int i = 0; i < n; i++)
    confirmed += f.status[i] == 0, failed += f.status[i] != 0;
  /* every confirmed message arrives, however long the reconnect takes */
  unsigned char *seen = calloc((size_t)n, 1);
  int64_t end = tl_time_mono_us() + 120000000;
  int missing = confirmed;
  size_t scanned = 0;
  while (tl_time_mono_us() < end) {
    pthread_mutex_lock(&c.mu);
    for (; scanned < c.n; scanned++) {
      int i;
      if (sscanf(c.recs[scanned].data, "f%d", &i) == 1 && i >= 0 && i < n && !seen[i]) {
        seen[i] = 1;
        if (f.status[i] == 0)
          missing--;
      }
    }
    pthread_mutex_unlock(&c.mu);
    if (missing == 0)
      break;
    tl_sleep_us(10000);
  }
  int extra = 0;
  for (int i = 0; i < n; i++)
    extra += seen[i] && f.status[i] != 0; /* failed, yet stored: allowed */
  printf("[ FAULT    ] %s: %d publishes, %d confirmed, %d failed during the outage "
         "(%d of those delivered anyway), outage %.1f s, %zu deliveries, %d confirmed missing\n",
         name, n, confirmed, failed, extra, (double)(t1 - t0) / 1e6, mqc_count(&c), missing);
  if (missing)
    for (int i = 0, shown = 0; i < n && shown < 10; i++)
      if (f.status[i] == 0 && !seen[i]) {
        printf("[ FAULT    ]   confirmed but never delivered: f%d\n", i);
        shown++;
      }
  assert_int_equal(missing, 0);
  assert_true(confirmed >= n / 3);
  MQC_OK(tl_mq_unsubscribe(sub));
  MQC_OK(tl_mq_close(sub_mq));
  tl_mq_close(pub);
  free(seen);
  free(f.status);
  mqc_col_free(&c);
}

/* The fault the broker tests share: SIGKILL the server named `ctx`
 * ("nats", "rabbitmq"), leave it down a second, start it again. */
__attribute__((unused)) static void mqc_kill_and_restart(void *ctx)
{
  char cmd[96];
  snprintf(cmd, sizeof cmd, "kill %s >/dev/null", (const char *)ctx);
  mqc_services(cmd);
  tl_sleep_us(1000000);
  snprintf(cmd, sizeof cmd, "start %s >/dev/null", (const char *)ctx);
  mqc_services(cmd);
}

#define MQC_TESTS                                            \
  cmocka_unit_test(mqc_seed_example),                        \
  cmocka_unit_test(mqc_fanout),                              \
  cmocka_unit_test(mqc_group),                               \
  cmocka_unit_test(mqc_redelivery),                          \
  cmocka_unit_test(mqc_dead_letter),                         \
  cmocka_unit_test(mqc_reject),                              \
  cmocka_unit_test(mqc_key_order),                           \
  cmocka_unit_test(mqc_headers),                             \
  cmocka_unit_test(mqc_message_id),                          \
  cmocka_unit_test(mqc_large_payload),                       \
  cmocka_unit_test(mqc_concurrent_publishers),               \
  cmocka_unit_test(mqc_async_and_batch),                     \
  cmocka_unit_test(mqc_wildcards),                           \
  cmocka_unit_test(mqc_errors),                              \
  cmocka_unit_test(mqc_unsubscribe_stops),                   \
  cmocka_unit_test(mqc_close_with_subscriptions)

#endif
