/* bench_mq: messaging through trellis against the raw client library on
 * the same broker with the same guarantees, per backend:
 *
 *   publish   msgs/s, 100-byte payloads, pipelined with a window of 1024
 *             unconfirmed messages, until every confirm is in;
 *   latency   one message at a time: from the publish call (confirmed) to
 *             the subscriber's handler, p50 and p99 in microseconds.
 *
 * Backends and baselines: memory (the in-process bus against a plain
 * mutex+condvar ring handing the same bytes to one consumer thread), NATS
 * JetStream (libnats js_PublishAsync/js_Publish with Nats-Msg-Id, pull
 * consumer, explicit acks), RabbitMQ (librabbitmq, persistent messages to
 * a durable queue, publisher confirms, manual acks), Kafka on the
 * in-process mock cluster (librdkafka, idempotent producer, acks=all,
 * linger.ms=5).
 *
 *   bench_mq [memory|nats|rabbitmq|kafka]...
 *
 * Servers: TRELLIS_TEST_NATS_URL, TRELLIS_TEST_RABBITMQ_URL (as written by
 * scripts/services; defaults are its ports). BENCH_QUICK=1 shrinks every
 * size for a smoke run. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <nats/nats.h>

#include <trellis/trellis.h>
#include <trellis/mq.h>

#include "bench.h"
#include "mq/mq_int.h"

#define PAYLOAD 100
#define WINDOW 1024

static const char *env_or(const char *key, const char *def)
{
  const char *v = getenv(key);
  return v && *v ? v : def;
}

/* ---- latency bookkeeping, shared by both sides ---- */

struct probe {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  uint64_t want;           /* sequence number awaited */
  uint64_t got_at_ns;      /* when the handler saw it */
  bool got;
  atomic_long count;       /* throughput: messages seen */
};

static void probe_init(struct probe *p)
{
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cond, NULL);
}

static void probe_free(struct probe *p)
{
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cond);
}

/* A handler saw payload `data`. */
static void probe_hit(struct probe *p, const void *data, size_t len)
{
  atomic_fetch_add_explicit(&p->count, 1, memory_order_relaxed);
  if (len < 8)
    return;
  uint64_t seq;
  memcpy(&seq, data, 8);
  pthread_mutex_lock(&p->mu);
  if (seq == p->want && !p->got) {
    p->got = true;
    p->got_at_ns = bench_now_ns();
    pthread_cond_signal(&p->cond);
  }
  pthread_mutex_unlock(&p->mu);
}

static void probe_expect(struct probe *p, uint64_t seq)
{
  pthread_mutex_lock(&p->mu);
  p->want = seq;
  p->got = false;
  pthread_mutex_unlock(&p->mu);
}

/* Wait for the awaited message; its arrival time, or 0 after 10 s. */
static uint64_t probe_wait(struct probe *p)
{
  uint64_t end = bench_now_ns() + 10000000000ULL;
  pthread_mutex_lock(&p->mu);
  while (!p->got && bench_now_ns() < end) {
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_lock(&p->mu);
    if (p->got)
      break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&p->cond, &p->mu, &ts);
  }
  uint64_t at = p->got ? p->got_at_ns : 0;
  pthread_mutex_unlock(&p->mu);
  return at;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void percentiles(double *v, long n, double *p50, double *p99)
{
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  *p50 = v[n / 2];
  *p99 = v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
}

static void fill_payload(unsigned char *buf, uint64_t seq)
{
  memset(buf, 'x', PAYLOAD);
  memcpy(buf, &seq, 8);
}

/* The headers trellis puts on every message (message-id, published-us,
 * traceparent), made the way an application would with the raw client,
 * so both sides carry the same bytes. */
struct std_headers {
  char id[TL_UUID_STRLEN];
  char published[24];
  char traceparent[56];
};

static void std_headers_make(struct std_headers *h)
{
  tl_uuid7(h->id);
  snprintf(h->published, sizeof h->published, "%lld", (long long)tl_time_now_us());
  uint64_t r[3] = { tl_rand64(), tl_rand64(), tl_rand64() };
  snprintf(h->traceparent, sizeof h->traceparent, "00-%016llx%016llx-%016llx-01",
           (unsigned long long)r[0], (unsigned long long)r[1], (unsigned long long)r[2]);
}

/* ---- trellis side (the same code for every backend) ---- */

struct ours {
  tl_mq_config mc;
  tl_mq *mq;
  long n_tput, n_lat;
  bool e2e_tput;           /* memory: count deliveries, not confirms */
  char subject_tput[64], subject_lat[64];
};

static int ours_handler(const tl_mq_msg *m, void *ctx)
{
  probe_hit(ctx, m->data, m->len);
  return TL_MQ_ACK;
}

static int ours_run(void *ctx, double *fig)
{
  struct ours *o = ctx;
  struct probe pr;
  probe_init(&pr);
  unsigned char buf[PAYLOAD];
  int rc = 0;
  tl_mq_sub *sub = NULL;
  /* throughput */
  if (o->e2e_tput && tl_mq_subscribe(o->mq, o->subject_tput, ours_handler, &pr, NULL, &sub)) {
    fprintf(stderr, "bench_mq: subscribe: %s\n", tl_error_last());
    probe_free(&pr);
    return -1;
  }
  fill_payload(buf, UINT64_MAX);
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < o->n_tput && !rc; i++) {
    if (o->e2e_tput) {
      rc = tl_mq_publish(o->mq, o->subject_tput, buf, PAYLOAD);
    } else {
      tl_mq_message m = { .subject = o->subject_tput, .data = buf, .len = PAYLOAD };
      rc = tl_mq_publish_async(o->mq, &m, NULL, NULL);
    }
  }
  if (!rc)
    rc = tl_mq_flush(o->mq, 120000000);
  while (!rc && o->e2e_tput && atomic_load(&pr.count) < o->n_tput)
    tl_sleep_us(50);
  uint64_t t1 = bench_now_ns();
  tl_mq_unsubscribe(sub);
  sub = NULL;
  if (rc) {
    fprintf(stderr, "bench_mq: trellis publish: %s\n", tl_error_last());
    probe_free(&pr);
    return -1;
  }
  fig[0] = (double)o->n_tput / ((double)(t1 - t0) / 1e9);
  /* latency */
  if (tl_mq_subscribe(o->mq, o->subject_lat, ours_handler, &pr, NULL, &sub)) {
    fprintf(stderr, "bench_mq: subscribe: %s\n", tl_error_last());
    probe_free(&pr);
    return -1;
  }
  double *lat = malloc((size_t)o->n_lat * sizeof *lat);
  for (long i = 0; i < o->n_lat && !rc; i++) {
    fill_payload(buf, (uint64_t)i);
    probe_expect(&pr, (uint64_t)i);
    uint64_t s = bench_now_ns();
    rc = tl_mq_publish(o->mq, o->subject_lat, buf, PAYLOAD);
    uint64_t at = rc ? 0 : probe_wait(&pr);
    if (!rc && !at)
      rc = TL_ETIMEOUT;
    lat[i] = (double)(at - s) / 1000.0;
  }
  tl_mq_unsubscribe(sub);
  if (!rc)
    percentiles(lat, o->n_lat, &fig[1], &fig[2]);
  else
    fprintf(stderr, "bench_mq: trellis latency: %s\n", tl_error_last());
  free(lat);
  probe_free(&pr);
  return rc ? -1 : 0;
}

/* ---- memory baseline: a plain ring between two threads ---- */

struct ring {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full;
  unsigned char (*slots)[PAYLOAD];
  unsigned cap, head, count;
  bool stop;
  struct probe *pr;
};

static void *ring_consumer(void *arg)
{
  struct ring *r = arg;
  unsigned char local[64][PAYLOAD];
  pthread_mutex_lock(&r->mu);
  for (;;) {
    while (!r->count && !r->stop)
      pthread_cond_wait(&r->not_empty, &r->mu);
    if (!r->count && r->stop)
      break;
    unsigned n = r->count < 64 ? r->count : 64;
    for (unsigned i = 0; i < n; i++)
      memcpy(local[i], r->slots[(r->head + i) % r->cap], PAYLOAD);
    r->head = (r->head + n) % r->cap;
    r->count -= n;
    pthread_cond_signal(&r->not_full);
    pthread_mutex_unlock(&r->mu);
    for (unsigned i = 0; i < n; i++)
      probe_hit(r->pr, local[i], PAYLOAD);
    pthread_mutex_lock(&r->mu);
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

static void ring_put(struct ring *r, const unsigned char *buf)
{
  pthread_mutex_lock(&r->mu);
  while (r->count == r->cap)
    pthread_cond_wait(&r->not_full, &r->mu);
  memcpy(r->slots[(r->head + r->count) % r->cap], buf, PAYLOAD);
  r->count++;
  pthread_cond_signal(&r->not_empty);
  pthread_mutex_unlock(&r->mu);
}

struct mem_raw {
  long n_tput, n_lat;
};

static int mem_raw_run(void *ctx, double *fig)
{
  struct mem_raw *m = ctx;
  struct probe pr;
  probe_init(&pr);
  struct ring r = { .cap = 4096, .pr = &pr };
  r.slots = malloc((size_t)r.cap * PAYLOAD);
  pthread_mutex_init(&r.mu, NULL);
  pthread_cond_init(&r.not_empty, NULL);
  pthread_cond_init(&r.not_full, NULL);
  pthread_t th;
  pthread_create(&th, NULL, ring_consumer, &r);
  unsigned char buf[PAYLOAD];
  fill_payload(buf, UINT64_MAX);
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < m->n_tput; i++)
    ring_put(&r, buf);
  while (atomic_load(&pr.count) < m->n_tput)
    tl_sleep_us(50);
  uint64_t t1 = bench_now_ns();
  fig[0] = (double)m->n_tput / ((double)(t1 - t0) / 1e9);
  double *lat = malloc((size_t)m->n_lat * sizeof *lat);
  for (long i = 0; i < m->n_lat; i++) {
    fill_payload(buf, (uint64_t)i);
    probe_expect(&pr, (uint64_t)i);
    uint64_t s = bench_now_ns();
    ring_put(&r, buf);
    lat[i] = (double)(probe_wait(&pr) - s) / 1000.0;
  }
  percentiles(lat, m->n_lat, &fig[1], &fig[2]);
  free(lat);
  pthread_mutex_lock(&r.mu);
  r.stop = true;
  pthread_cond_signal(&r.not_empty);
  pthread_mutex_unlock(&r.mu);
  pthread_join(th, NULL);
  free(r.slots);
  probe_free(&pr);
  return 0;
}

/* ---- NATS baseline ---- */

struct nats_raw {
  const char *url;
  long n_tput, n_lat;
  char subject_tput[64], subject_lat[64];
};

static void nats_raw_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *c)
{
  (void)js, (void)pa;
  if (pae)
    atomic_fetch_add((atomic_long *)c, 1);
  natsMsg_Destroy(msg);
}

struct nats_fetch {
  natsSubscription *sub;
  struct probe *pr;
  atomic_bool stop;
};

static void *nats_fetcher(void *arg)
{
  struct nats_fetch *f = arg;
  while (!atomic_load(&f->stop)) {
    natsMsgList list = { 0 };
    if (natsSubscription_Fetch(&list, f->sub, 256, 200, NULL) == NATS_OK)
      for (int i = 0; i < list.Count; i++) {
        probe_hit(f->pr, natsMsg_GetData(list.Msgs[i]), (size_t)natsMsg_GetDataLength(list.Msgs[i]));
        natsMsg_Ack(list.Msgs[i], NULL);
      }
    natsMsgList_Destroy(&list);
  }
  return NULL;
}

static int nats_raw_run(void *ctx, double *fig)
{
  struct nats_raw *n = ctx;
  natsConnection *nc = NULL;
  jsCtx *js = NULL;
  atomic_long failed = 0;
  if (natsConnection_ConnectTo(&nc, n->url) != NATS_OK)
    return -1;
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = WINDOW;
  jo.PublishAsync.AckHandler = nats_raw_ack;
  jo.PublishAsync.AckHandlerClosure = &failed;
  natsConnection_JetStream(&js, nc, &jo);
  unsigned char buf[PAYLOAD];
  fill_payload(buf, UINT64_MAX);
  struct std_headers h;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < n->n_tput; i++) {
    natsMsg *m;
    natsMsg_Create(&m, n->subject_tput, NULL, (const char *)buf, PAYLOAD);
    std_headers_make(&h);
    natsMsgHeader_Set(m, "message-id", h.id);
    natsMsgHeader_Set(m, "published-us", h.published);
    natsMsgHeader_Set(m, "traceparent", h.traceparent);
    natsMsgHeader_Set(m, "Nats-Msg-Id", h.id);
    if (js_PublishMsgAsync(js, &m, NULL) != NATS_OK) {
      natsMsg_Destroy(m);
      atomic_fetch_add(&failed, 1);
    }
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 120000;
  js_PublishAsyncComplete(js, &po);
  uint64_t t1 = bench_now_ns();
  fig[0] = (double)n->n_tput / ((double)(t1 - t0) / 1e9);
  /* latency: a pull consumer of our own, synchronous publishes */
  struct probe pr;
  probe_init(&pr);
  struct nats_fetch f = { .pr = &pr };
  atomic_init(&f.stop, false);
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  char durable[48];
  snprintf(durable, sizeof durable, "benchraw%08llx", (unsigned long long)(tl_rand64() & 0xffffffff));
  cc.Durable = durable;
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverNew;
  cc.FilterSubject = n->subject_lat;
  jsConsumerInfo *ci = NULL;
  int rc = 0;
  if (js_AddConsumer(&ci, js, "TRELLIS", &cc, NULL, NULL) != NATS_OK) {
    fprintf(stderr, "bench_mq: nats raw consumer: %s\n", nats_GetLastError(NULL));
    rc = -1;
  } else {
    jsConsumerInfo_Destroy(ci);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "TRELLIS";
    so.Consumer = durable;
    so.ManualAck = true;
    if (js_PullSubscribe(&f.sub, js, n->subject_lat, durable, NULL, &so, NULL) != NATS_OK)
      rc = -1;
  }
  pthread_t th;
  if (!rc)
    pthread_create(&th, NULL, nats_fetcher, &f);
  double *lat = malloc((size_t)n->n_lat * sizeof *lat);
  for (long i = 0; i < n->n_lat && !rc; i++) {
    fill_payload(buf, (uint64_t)i);
    probe_expect(&pr, (uint64_t)i);
    uint64_t s = bench_now_ns();
    natsMsg *m;
    natsMsg_Create(&m, n->subject_lat, NULL, (const char *)buf, PAYLOAD);
    std_headers_make(&h);
    natsMsgHeader_Set(m, "message-id", h.id);
    natsMsgHeader_Set(m, "published-us", h.published);
    natsMsgHeader_Set(m, "traceparent", h.traceparent);
    natsMsgHeader_Set(m, "Nats-Msg-Id", h.id);
    jsPubAck *pa = NULL;
    natsStatus st = js_PublishMsg(&pa, js, m, NULL, NULL);
    natsMsg_Destroy(m);
    jsPubAck_Destroy(pa);
    uint64_t at = st == NATS_OK ? probe_wait(&pr) : 0;
    if (!at)
      rc = -1;
    lat[i] = (double)(at - s) / 1000.0;
  }
  if (f.sub) {
    atomic_store(&f.stop, true);
    pthread_join(th, NULL);
    natsSubscription_Unsubscribe(f.sub);
    natsSubscription_Destroy(f.sub);
    js_DeleteConsumer(js, "TRELLIS", durable, NULL, NULL);
  }
  if (!rc)
    percentiles(lat, n->n_lat, &fig[1], &fig[2]);
  free(lat);
  probe_free(&pr);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return rc || atomic_load(&failed) ? -1 : 0;
}

/* ---- RabbitMQ baseline ---- */

struct rabbit_raw {
  const char *url;
  long n_tput, n_lat;
  char subject_tput[64], subject_lat[64];
};

static amqp_connection_state_t rabbit_connect(const char *url)
{
  char *u = strdup(url);
  struct amqp_connection_info ci;
  amqp_default_connection_info(&ci);
  amqp_connection_state_t c = NULL;
  if (amqp_parse_url(u, &ci) == AMQP_STATUS_OK) {
    if (!ci.vhost[0])
      ci.vhost = (char *)"/";
    c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK ||
        amqp_login(c, ci.vhost, 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password)
                .reply_type != AMQP_RESPONSE_NORMAL) {
      amqp_destroy_connection(c);
      c = NULL;
    } else {
      amqp_channel_open(c, 1);
      amqp_get_rpc_reply(c);
    }
  }
  free(u);
  return c;
}

/* Read frames until the confirms for every tag up to `upto` are in.
 * Returns the number of nacks, or -1 on a broken connection. */
static long rabbit_confirms(amqp_connection_state_t c, uint64_t *acked, uint64_t upto)
{
  long nacks = 0;
  while (*acked < upto) {
    amqp_frame_t f;
    if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK)
      return -1;
    if (f.frame_type != AMQP_FRAME_METHOD)
      continue;
    uint64_t tag;
    bool multiple;
    if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
      amqp_basic_ack_t *a = f.payload.method.decoded;
      tag = a->delivery_tag, multiple = a->multiple;
    } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
      amqp_basic_nack_t *a = f.payload.method.decoded;
      tag = a->delivery_tag, multiple = a->multiple;
      nacks++;
    } else {
      continue;
    }
    /* the broker confirms in order here (one channel, one queue) */
    *acked = multiple ? tag : (tag > *acked ? tag : *acked);
  }
  amqp_maybe_release_buffers(c);
  return nacks;
}

static int rabbit_publish(amqp_connection_state_t c, const char *subject, const unsigned char *buf)
{
  struct std_headers h;
  std_headers_make(&h);
  amqp_table_entry_t e[3];
  const char *keys[3] = { "message-id", "published-us", "traceparent" };
  const char *vals[3] = { h.id, h.published, h.traceparent };
  for (int i = 0; i < 3; i++) {
    e[i].key = amqp_cstring_bytes(keys[i]);
    e[i].value.kind = AMQP_FIELD_KIND_UTF8;
    e[i].value.value.bytes = amqp_cstring_bytes(vals[i]);
  }
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof p);
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG |
             AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
  p.delivery_mode = 2;
  p.content_type = amqp_cstring_bytes("application/octet-stream");
  p.message_id = amqp_cstring_bytes(h.id);
  p.timestamp = (uint64_t)(tl_time_now_us() / 1000000);
  p.headers = (amqp_table_t){ .num_entries = 3, .entries = e };
  return amqp_basic_publish(c, 1, amqp_cstring_bytes("trellis"), amqp_cstring_bytes(subject), 0,
                            0, &p, (amqp_bytes_t){ .len = PAYLOAD, .bytes = (void *)buf });
}

struct rabbit_consume {
  amqp_connection_state_t c;
  struct probe *pr;
  atomic_bool stop;
};

static void *rabbit_consumer(void *arg)
{
  struct rabbit_consume *rc = arg;
  while (!atomic_load(&rc->stop)) {
    amqp_envelope_t env;
    struct timeval tv = { 0, 100000 };
    amqp_maybe_release_buffers(rc->c);
    amqp_rpc_reply_t r = amqp_consume_message(rc->c, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
      continue;
    probe_hit(rc->pr, env.message.body.bytes, env.message.body.len);
    amqp_basic_ack(rc->c, 1, env.delivery_tag, 0);
    amqp_destroy_envelope(&env);
  }
  return NULL;
}

static int rabbit_raw_run(void *ctx, double *fig)
{
  struct rabbit_raw *r = ctx;
  amqp_connection_state_t c = rabbit_connect(r->url);
  if (!c)
    return -1;
  amqp_confirm_select(c, 1);
  amqp_get_rpc_reply(c);
  unsigned char buf[PAYLOAD];
  fill_payload(buf, UINT64_MAX);
  uint64_t sent = 0, acked = 0;
  long nacks = 0;
  uint64_t t0 = bench_now_ns();
  for (long i = 0; i < r->n_tput && nacks >= 0; i++) {
    if (rabbit_publish(c, r->subject_tput, buf) != AMQP_STATUS_OK) {
      nacks = -1;
      break;
    }
    sent++;
    if (sent - acked >= WINDOW) {
      long k = rabbit_confirms(c, &acked, sent - WINDOW / 2);
      nacks = k < 0 ? -1 : nacks + k;
    }
  }
  if (nacks >= 0) {
    long k = rabbit_confirms(c, &acked, sent);
    nacks = k < 0 ? -1 : nacks + k;
  }
  uint64_t t1 = bench_now_ns();
  if (nacks != 0) {
    amqp_destroy_connection(c);
    return -1;
  }
  fig[0] = (double)r->n_tput / ((double)(t1 - t0) / 1e9);
  /* latency: our own queue and consumer connection */
  struct probe pr;
  probe_init(&pr);
  struct rabbit_consume cons = { .c = rabbit_connect(r->url), .pr = &pr };
  atomic_init(&cons.stop, false);
  amqp_queue_declare_ok_t *q =
      amqp_queue_declare(cons.c, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
  amqp_bytes_t qname = amqp_bytes_malloc_dup(q->queue);
  amqp_queue_bind(cons.c, 1, qname, amqp_cstring_bytes("trellis"),
                  amqp_cstring_bytes(r->subject_lat), amqp_empty_table);
  amqp_basic_qos(cons.c, 1, 0, 256, 0);
  amqp_basic_consume(cons.c, 1, qname, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  amqp_get_rpc_reply(cons.c);
  pthread_t th;
  pthread_create(&th, NULL, rabbit_consumer, &cons);
  double *lat = malloc((size_t)r->n_lat * sizeof *lat);
  int rc = 0;
  for (long i = 0; i < r->n_lat && !rc; i++) {
    fill_payload(buf, (uint64_t)i);
    probe_expect(&pr, (uint64_t)i);
    uint64_t s = bench_now_ns();
    rabbit_publish(c, r->subject_lat, buf);
    sent++;
    if (rabbit_confirms(c, &acked, sent) != 0)
      rc = -1;
    uint64_t at = rc ? 0 : probe_wait(&pr);
    if (!at)
      rc = -1;
    lat[i] = (double)(at - s) / 1000.0;
  }
  atomic_store(&cons.stop, true);
  pthread_join(th, NULL);
  amqp_bytes_free(qname);
  amqp_connection_close(cons.c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(cons.c);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  if (!rc)
    percentiles(lat, r->n_lat, &fig[1], &fig[2]);
  free(lat);
  probe_free(&pr);
  return rc;
}

/* A durable queue bound to the throughput subject, so both sides'
 * messages are routed, persisted and confirmed the same way; purged
 * between runs. */
static int rabbit_sink(const char *url, const char *subject, bool purge_only)
{
  amqp_connection_state_t c = rabbit_connect(url);
  if (!c)
    return -1;
  amqp_bytes_t q = amqp_cstring_bytes("trellis.bench.sink");
  if (!purge_only) {
    amqp_exchange_declare(c, 1, amqp_cstring_bytes("trellis"), amqp_cstring_bytes("topic"), 0, 1,
                          0, 0, amqp_empty_table);
    amqp_queue_declare(c, 1, q, 0, 1, 0, 0, amqp_empty_table);
    amqp_queue_bind(c, 1, q, amqp_cstring_bytes("trellis"), amqp_cstring_bytes(subject),
                    amqp_empty_table);
  }
  amqp_queue_purge(c, 1, q);
  amqp_rpc_reply_t rep = amqp_get_rpc_reply(c);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  return rep.reply_type == AMQP_RESPONSE_NORMAL ? 0 : -1;
}

/* ---- Kafka baseline ---- */

struct kafka_raw {
  const char *bootstraps;
  long n_tput, n_lat;
  char subject_tput[64], subject_lat[64];
};

static void kafka_raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
  (void)rk;
  if (m->err)
    atomic_fetch_add((atomic_long *)opaque, 1);
  if (m->_private) {
    atomic_bool *done = m->_private;
    atomic_store(done, true);
  }
}

struct kafka_consume {
  rd_kafka_t *rk;
  struct probe *pr;
  const char *subject;
  atomic_bool stop;
};

static void *kafka_consumer(void *arg)
{
  struct kafka_consume *k = arg;
  while (!atomic_load(&k->stop)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk, 100);
    if (!m)
      continue;
    if (!m->err) {
      rd_kafka_headers_t *h;
      const void *v;
      size_t n;
      /* the same client-side filter trellis applies */
      if (rd_kafka_message_headers(m, &h) == 0 &&
          rd_kafka_header_get_last(h, "subject", &v, &n) == 0 && n == strlen(k->subject) &&
          !memcmp(v, k->subject, n))
        probe_hit(k->pr, m->payload, m->len);
    }
    rd_kafka_message_destroy(m);
  }
  return NULL;
}

static rd_kafka_t *kafka_producer(const char *bootstraps, atomic_long *failed)
{
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, err, sizeof err);
  rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
  rd_kafka_conf_set(conf, "acks", "all", err, sizeof err);
  rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
  rd_kafka_conf_set_dr_msg_cb(conf, kafka_raw_dr);
  rd_kafka_conf_set_opaque(conf, failed);
  return rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
}

static rd_kafka_resp_err_t kafka_produce(rd_kafka_t *rk, const char *subject,
                                         const unsigned char *buf, void *opaque)
{
  struct std_headers sh;
  std_headers_make(&sh);
  rd_kafka_headers_t *h = rd_kafka_headers_new(4);
  rd_kafka_header_add(h, "subject", -1, subject, -1);
  rd_kafka_header_add(h, "message-id", -1, sh.id, -1);
  rd_kafka_header_add(h, "published-us", -1, sh.published, -1);
  rd_kafka_header_add(h, "traceparent", -1, sh.traceparent, -1);
  rd_kafka_resp_err_t e;
  while ((e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("events"), RD_KAFKA_V_KEY(subject, strlen(subject)),
                                RD_KAFKA_V_VALUE((void *)buf, PAYLOAD),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                                RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END)) ==
         RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(rk, 1);
  if (e)
    rd_kafka_headers_destroy(h);
  return e;
}

static int kafka_raw_run(void *ctx, double *fig)
{
  struct kafka_raw *k = ctx;
  atomic_long failed = 0;
  rd_kafka_t *rk = kafka_producer(k->bootstraps, &failed);
  if (!rk)
    return -1;
  unsigned char buf[PAYLOAD];
  fill_payload(buf, UINT64_MAX);
  uint64_t t0 = bench_now_ns();
  long inflight_cap = WINDOW;
  for (long i = 0; i < k->n_tput; i++) {
    if (kafka_produce(rk, k->subject_tput, buf, NULL))
      atomic_fetch_add(&failed, 1);
    while (rd_kafka_outq_len(rk) >= inflight_cap)
      rd_kafka_poll(rk, 1);
    rd_kafka_poll(rk, 0);
  }
  rd_kafka_flush(rk, 120000);
  uint64_t t1 = bench_now_ns();
  fig[0] = (double)k->n_tput / ((double)(t1 - t0) / 1e9);
  /* latency: an assign-only consumer from the end of every partition */
  struct probe pr;
  probe_init(&pr);
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", k->bootstraps, err, sizeof err);
  rd_kafka_conf_set(conf, "group.id", "bench-raw", err, sizeof err);
  rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
  rd_kafka_conf_set(conf, "fetch.wait.max.ms", "100", err, sizeof err);
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
  struct kafka_consume kc = { .pr = &pr, .subject = k->subject_lat };
  atomic_init(&kc.stop, false);
  kc.rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  rd_kafka_poll_set_consumer(kc.rk);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
  for (int p = 0; p < 6; p++) {
    int64_t lo, hi;
    rd_kafka_query_watermark_offsets(kc.rk, "events", p, &lo, &hi, 5000);
    rd_kafka_topic_partition_list_add(l, "events", p)->offset = hi;
  }
  rd_kafka_assign(kc.rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  pthread_t th;
  pthread_create(&th, NULL, kafka_consumer, &kc);
  double *lat = malloc((size_t)k->n_lat * sizeof *lat);
  int rc = 0;
  for (long i = 0; i < k->n_lat && !rc; i++) {
    fill_payload(buf, (uint64_t)i);
    probe_expect(&pr, (uint64_t)i);
    atomic_bool done = false;
    uint64_t s = bench_now_ns();
    if (kafka_produce(rk, k->subject_lat, buf, &done)) {
      rc = -1;
      break;
    }
    while (!atomic_load(&done))
      rd_kafka_poll(rk, 1);
    uint64_t at = probe_wait(&pr);
    if (!at)
      rc = -1;
    lat[i] = (double)(at - s) / 1000.0;
  }
  atomic_store(&kc.stop, true);
  pthread_join(th, NULL);
  rd_kafka_consumer_close(kc.rk);
  rd_kafka_destroy(kc.rk);
  rd_kafka_destroy(rk);
  if (!rc)
    percentiles(lat, k->n_lat, &fig[1], &fig[2]);
  free(lat);
  probe_free(&pr);
  return rc || atomic_load(&failed) ? -1 : 0;
}

/* ---- the comparisons ---- */

static int compare(const char *backend, const char *baseline, const char *conditions,
                   struct ours *o, bench_run_fn raw, void *raw_ctx)
{
  char m0[64], m1[64], m2[64];
  snprintf(m0, sizeof m0, "%s_publish", backend);
  snprintf(m1, sizeof m1, "%s_latency_p50", backend);
  snprintf(m2, sizeof m2, "%s_latency_p99", backend);
  bench_metric metrics[] = {
    { m0, "msgs/s", false },
    { m1, "us p50", true },
    { m2, "us p99", true },
  };
  if (tl_mq_open(&o->mq, &o->mc) != 0) {
    fprintf(stderr, "bench_mq: %s: %s\n", backend, tl_error_last());
    return -1;
  }
  bench_spec spec = { .bench = "mq", .baseline_name = baseline, .conditions = conditions,
                      .metrics = metrics, .nmetrics = 3, .ours = ours_run, .ours_ctx = o,
                      .baseline = raw, .baseline_ctx = raw_ctx };
  int rc = bench_compare(&spec);
  tl_mq_close(o->mq);
  o->mq = NULL;
  return rc;
}

static bool wanted(int argc, char **argv, const char *name)
{
  if (argc < 2)
    return true;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], name))
      return true;
  return false;
}

int main(int argc, char **argv)
{
  tl_log_set_level(TL_LOG_ERROR);
  int failures = 0;
  char tok[16];
  snprintf(tok, sizeof tok, "b%06llx", (unsigned long long)(tl_rand64() & 0xffffff));

  if (wanted(argc, argv, "memory")) {
    struct ours o = { .mc = { .type = TL_MQ_MEMORY, .url = "memory://bench" },
                      .n_tput = bench_size(3000000, 100000), .n_lat = bench_size(20000, 500),
                      .e2e_tput = true };
    snprintf(o.subject_tput, sizeof o.subject_tput, "bench.tput");
    snprintf(o.subject_lat, sizeof o.subject_lat, "bench.lat");
    struct mem_raw raw = { .n_tput = o.n_tput, .n_lat = o.n_lat };
    char cond[200];
    snprintf(cond, sizeof cond,
             "1 publisher -> 1 subscriber thread, %d-byte payloads, %ld msgs delivered per round",
             PAYLOAD, o.n_tput);
    failures += compare("memory", "mutex+condvar ring", cond, &o, mem_raw_run, &raw) != 0;
  }
  if (wanted(argc, argv, "nats")) {
    const char *url = env_or("TRELLIS_TEST_NATS_URL", "nats://127.0.0.1:21422");
    struct ours o = { .mc = { .type = TL_MQ_NATS, .url = url, .max_in_flight = WINDOW },
                      .n_tput = bench_size(50000, 2000), .n_lat = bench_size(2000, 100) };
    snprintf(o.subject_tput, sizeof o.subject_tput, "%s.tput", tok);
    snprintf(o.subject_lat, sizeof o.subject_lat, "%s.lat", tok);
    struct nats_raw raw = { .url = url, .n_tput = o.n_tput, .n_lat = o.n_lat };
    /* the stream grows by first token: let it cover this run's subjects */
    tl_mq *init;
    char first[64];
    snprintf(first, sizeof first, "%s.init", tok);
    if (tl_mq_open(&init, &o.mc) == 0) {
      tl_mq_publish(init, first, "x", 1);
      tl_mq_close(init);
    }
    snprintf(raw.subject_tput, sizeof raw.subject_tput, "%s.rawtput", tok);
    snprintf(raw.subject_lat, sizeof raw.subject_lat, "%s.rawlat", tok);
    char cond[240];
    snprintf(cond, sizeof cond,
             "JetStream file storage, PubAck per message, window %d, %d-byte payloads + the "
             "same headers (message-id, published-us, traceparent, Nats-Msg-Id), %ld msgs; "
             "latency: pull consumer, explicit ack",
             WINDOW, PAYLOAD, o.n_tput);
    failures += compare("nats", "libnats", cond, &o, nats_raw_run, &raw) != 0;
  }
  if (wanted(argc, argv, "rabbitmq")) {
    const char *url = env_or("TRELLIS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:21672/");
    struct ours o = { .mc = { .type = TL_MQ_RABBITMQ, .url = url, .max_in_flight = WINDOW },
                      .n_tput = bench_size(20000, 1000), .n_lat = bench_size(1000, 100) };
    snprintf(o.subject_tput, sizeof o.subject_tput, "%s.tput", tok);
    snprintf(o.subject_lat, sizeof o.subject_lat, "%s.lat", tok);
    struct rabbit_raw raw = { .url = url, .n_tput = o.n_tput, .n_lat = o.n_lat };
    snprintf(raw.subject_tput, sizeof raw.subject_tput, "%s.tput", tok);
    snprintf(raw.subject_lat, sizeof raw.subject_lat, "%s.rawlat", tok);
    char cond[240];
    snprintf(cond, sizeof cond,
             "persistent messages to a durable queue, publisher confirms, window %d, %d-byte "
             "payloads + the same headers, %ld msgs; latency: manual acks, prefetch 256",
             WINDOW, PAYLOAD, o.n_tput);
    if (rabbit_sink(url, o.subject_tput, false) != 0) {
      fprintf(stderr, "bench_mq: rabbitmq at %s is not reachable\n", url);
      failures++;
    } else {
      failures += compare("rabbitmq", "librabbitmq", cond, &o, rabbit_raw_run, &raw) != 0;
      rabbit_sink(url, o.subject_tput, true);
    }
  }
  if (wanted(argc, argv, "kafka")) {
    struct ours o = { .mc = { .type = TL_MQ_KAFKA, .brokers = "mock://3", .topic = "events",
                              .max_in_flight = WINDOW },
                      .n_tput = bench_size(50000, 2000), .n_lat = bench_size(200, 30) };
    snprintf(o.subject_tput, sizeof o.subject_tput, "%s.tput", tok);
    snprintf(o.subject_lat, sizeof o.subject_lat, "%s.lat", tok);
    /* hold the mock cluster for the whole comparison; both sides use it */
    tl_mq *holder;
    if (tl_mq_open(&holder, &o.mc) != 0) {
      fprintf(stderr, "bench_mq: kafka mock: %s\n", tl_error_last());
      failures++;
    } else {
      rd_kafka_mock_cluster_t *mc = tl__mq_kafka_mock_cluster(holder);
      struct kafka_raw raw = { .bootstraps = rd_kafka_mock_cluster_bootstraps(mc),
                               .n_tput = o.n_tput, .n_lat = o.n_lat };
      snprintf(raw.subject_tput, sizeof raw.subject_tput, "%s.rawtput", tok);
      snprintf(raw.subject_lat, sizeof raw.subject_lat, "%s.rawlat", tok);
      char cond[240];
      snprintf(cond, sizeof cond,
               "librdkafka mock cluster (3 brokers, in process), idempotent producer, acks=all, "
               "linger.ms=5, fetch.wait.max.ms=100, window %d, %d-byte payloads + the same headers, "
               "%ld msgs",
               WINDOW, PAYLOAD, o.n_tput);
      failures += compare("kafka", "librdkafka", cond, &o, kafka_raw_run, &raw) != 0;
      tl_mq_close(holder);
    }
  }
  return failures ? 1 : 0;
}
