/* Kafka backend (librdkafka): every subject goes to one topic, with the
 * subject in a header and as the default key (so a key's messages share a
 * partition and keep their order); patterns are matched here, on each
 * message. The producer is idempotent with acks=all. A group is a Kafka
 * consumer group; a subscription without a group reads every partition
 * from the end. Offsets are stored only when the handler has finished a
 * message and every earlier one of its partition.
 *
 * "mock://N" starts librdkafka's mock cluster (a Kafka-protocol broker
 * inside this process) with N brokers, shared by every handle of the
 * process that names the same URL. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "mq_int.h"

#define MOCK_PARTITIONS 6

/* ---- the shared mock cluster ---- */

struct mock {
  char url[32];
  rd_kafka_t *host;
  rd_kafka_mock_cluster_t *mc;
  char *bootstraps;
  int brokers;
  unsigned refs;
  struct mock *next;
};

static pthread_mutex_t mock_mu = PTHREAD_MUTEX_INITIALIZER;
static struct mock *mocks;

static int mock_get(const char *url, const char *topic, struct mock **out)
{
  int n = atoi(url + 7);
  pthread_mutex_lock(&mock_mu);
  struct mock *m = mocks;
  while (m && strcmp(m->url, url) != 0)
    m = m->next;
  if (!m) {
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    rd_kafka_t *host = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!host) {
      pthread_mutex_unlock(&mock_mu);
      return tl_error_set(TL_EINTERNAL, "kafka mock: %s", err);
    }
    m = calloc(1, sizeof *m);
    m->host = host;
    m->mc = rd_kafka_mock_cluster_new(host, n);
    if (!m->mc) {
      rd_kafka_destroy(host);
      free(m);
      pthread_mutex_unlock(&mock_mu);
      return tl_error_set(TL_EINTERNAL, "kafka mock: cannot start %d brokers", n);
    }
    snprintf(m->url, sizeof m->url, "%s", url);
    m->bootstraps = strdup(rd_kafka_mock_cluster_bootstraps(m->mc));
    m->brokers = n;
    m->next = mocks;
    mocks = m;
  }
  m->refs++;
  /* an existing topic answers with an error that means "already there" */
  rd_kafka_mock_topic_create(m->mc, topic, MOCK_PARTITIONS, m->brokers < 3 ? m->brokers : 3);
  pthread_mutex_unlock(&mock_mu);
  *out = m;
  return 0;
}

static void mock_put(struct mock *m)
{
  pthread_mutex_lock(&mock_mu);
  if (--m->refs == 0) {
    struct mock **pp = &mocks;
    while (*pp != m)
      pp = &(*pp)->next;
    *pp = m->next;
    rd_kafka_mock_cluster_destroy(m->mc);
    rd_kafka_destroy(m->host);
    free(m->bootstraps);
    free(m);
  }
  pthread_mutex_unlock(&mock_mu);
}

/* ---- the producer ---- */

struct kwait {
  int status;
  bool done, abandoned;
};

/* A message's opaque is the front end's record of an async publish, or
 * a sync publisher's wait with the low bit set. */
#define WAIT_TAG ((uintptr_t)1)

struct kmq {
  tl_mq *mq;
  struct mock *mock;
  char *brokers;             /* bootstrap list actually used */
  rd_kafka_t *rk;
  pthread_mutex_t mu;        /* waits */
  pthread_cond_t cond;
  pthread_t poller;
  atomic_bool stop;
  atomic_bool up;
  char last_error[256];
};

static int status_of(rd_kafka_resp_err_t e)
{
  switch (e) {
  case RD_KAFKA_RESP_ERR_NO_ERROR: return 0;
  case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
  case RD_KAFKA_RESP_ERR__TIMED_OUT: return TL_ETIMEOUT;
  case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
  case RD_KAFKA_RESP_ERR__TRANSPORT: return TL_ECONNECT;
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: return TL_ETOOBIG;
  case RD_KAFKA_RESP_ERR__QUEUE_FULL: return TL_ERETRY;
  case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
  case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
  case RD_KAFKA_RESP_ERR__DESTROY: return TL_ECLOSED;
  default: return TL_EIO;
  }
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
  (void)rk;
  struct kmq *k = opaque;
  uintptr_t op = (uintptr_t)m->_private;
  if (!op)
    return;
  int st = status_of(m->err);
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    if (!atomic_load_explicit(&k->up, memory_order_relaxed))
      atomic_store(&k->up, true);
  }
  if (op & WAIT_TAG) {
    struct kwait *w = (struct kwait *)(op & ~WAIT_TAG);
    pthread_mutex_lock(&k->mu);
    if (w->abandoned) {
      free(w);
    } else {
      w->status = st;
      w->done = true;
      pthread_cond_broadcast(&k->cond);
    }
    pthread_mutex_unlock(&k->mu);
  } else {
    if (st)
      tl_error_set(st, "kafka: message not delivered: %s", rd_kafka_err2str(m->err));
    tl__mq_pub_done((tl__mq_pub *)op, st);
  }
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
  (void)rk;
  struct kmq *k = opaque;
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    if (atomic_exchange(&k->up, false))
      tl_log(TL_LOG_WARN, "mq: kafka brokers down", TL_F_STR("reason", reason));
  }
  pthread_mutex_lock(&k->mu);
  snprintf(k->last_error, sizeof k->last_error, "%s", reason);
  pthread_mutex_unlock(&k->mu);
}

static void *poller_main(void *arg)
{
  struct kmq *k = arg;
  int64_t next_check = 0;
  while (!atomic_load(&k->stop)) {
    rd_kafka_poll(k->rk, 50);
    if (atomic_load_explicit(&k->up, memory_order_relaxed))
      continue;
    int64_t now = tl_time_mono_us();
    if (now >= next_check) {
      /* readiness: can we reach a broker now? */
      const struct rd_kafka_metadata *md = NULL;
      if (rd_kafka_metadata(k->rk, 0, NULL, &md, 500) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        int brokers = md->broker_cnt;
        rd_kafka_metadata_destroy(md);
        if (brokers > 0 && !atomic_exchange(&k->up, true))
          tl_log(TL_LOG_INFO, "mq: kafka brokers reachable");
      }
      next_check = now + 1000000;
    }
  }
  return NULL;
}

/* librdkafka's own log lines (connection refused while a broker is down,
 * and so on) go to our log at debug level; failures reach callers as
 * statuses and readiness. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
  (void)rk;
  tl_log(level <= 2 ? TL_LOG_ERROR : TL_LOG_DEBUG, "mq: librdkafka", TL_F_STR("facility", fac),
         TL_F_STR("detail", buf));
}

static rd_kafka_conf_t *base_conf(struct kmq *k, char *err, size_t errsz)
{
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char ms[32];
  const tl_mq_config *c = &k->mq->cfg;
  if (rd_kafka_conf_set(conf, "bootstrap.servers", k->brokers, err, errsz) ||
      rd_kafka_conf_set(conf, "client.id", c->client_name, err, errsz) ||
      rd_kafka_conf_set(conf, "log_level", "7", err, errsz) ||
      rd_kafka_conf_set(conf, "message.max.bytes", "16777216", err, errsz)) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_conf_set_log_cb(conf, log_cb);
  snprintf(ms, sizeof ms, "%lld", (long long)(c->reconnect.base_us / 1000));
  rd_kafka_conf_set(conf, "reconnect.backoff.ms", ms, err, errsz);
  snprintf(ms, sizeof ms, "%lld", (long long)(c->reconnect.cap_us / 1000));
  rd_kafka_conf_set(conf, "reconnect.backoff.max.ms", ms, err, errsz);
  return conf;
}

static int k_open(tl_mq *mq)
{
  struct kmq *k = calloc(1, sizeof *k);
  if (!k)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  k->mq = mq;
  const char *brokers = mq->cfg.brokers;
  if (!brokers || !*brokers) {
    free(k);
    return tl_error_set(TL_EINVAL, "KAFKA_BROKERS: empty list");
  }
  int rc;
  if (!strncmp(brokers, "mock://", 7)) {
    int n = atoi(brokers + 7);
    if (n < 1 || n > 16) {
      free(k);
      return tl_error_set(TL_EINVAL, "KAFKA_BROKERS: '%s': mock:// needs 1 to 16 brokers",
                          brokers);
    }
    if ((rc = mock_get(brokers, mq->cfg.topic, &k->mock))) {
      free(k);
      return rc;
    }
    k->brokers = strdup(k->mock->bootstraps);
  } else {
    k->brokers = strdup(brokers);
  }
  pthread_mutex_init(&k->mu, NULL);
  tl__cond_init_mono(&k->cond);
  atomic_init(&k->stop, false);
  atomic_init(&k->up, false);
  char err[512], v[32];
  rd_kafka_conf_t *conf = base_conf(k, err, sizeof err);
  rc = 0;
  if (!conf) {
    rc = tl_error_set(TL_EINVAL, "kafka: %s", err);
    goto fail;
  }
  snprintf(v, sizeof v, "%d", mq->cfg.linger_ms);
  snprintf(err, sizeof err, "?");
  long long mto = mq->cfg.publish_timeout_us / 1000;
  char mtos[32];
  snprintf(mtos, sizeof mtos, "%lld", mto < 1 ? 1 : mto);
  if (rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err) ||
      rd_kafka_conf_set(conf, "acks", "all", err, sizeof err) ||
      rd_kafka_conf_set(conf, "linger.ms", v, err, sizeof err) ||
      rd_kafka_conf_set(conf, "message.timeout.ms", mtos, err, sizeof err)) {
    rd_kafka_conf_destroy(conf);
    rc = tl_error_set(TL_EINVAL, "kafka: %s", err);
    goto fail;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
  rd_kafka_conf_set_error_cb(conf, error_cb);
  rd_kafka_conf_set_opaque(conf, k);
  k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!k->rk) {
    rd_kafka_conf_destroy(conf);
    rc = tl_error_set(TL_EINVAL, "kafka: %s", err);
    goto fail;
  }
  /* The first connection must work: ask for the topic's metadata. */
  rd_kafka_topic_t *t = rd_kafka_topic_new(k->rk, mq->cfg.topic, NULL);
  const struct rd_kafka_metadata *md = NULL;
  int64_t to = mq->cfg.publish_timeout_us / 1000;
  rd_kafka_resp_err_t e = rd_kafka_metadata(k->rk, 0, t, &md, (int)(to > 10000 ? 10000 : to));
  rd_kafka_topic_destroy(t);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rc = tl_error_set(TL_ECONNECT, "kafka %s: cannot reach a broker: %s", k->brokers,
                      rd_kafka_err2str(e));
    goto fail;
  }
  rd_kafka_metadata_destroy(md);
  atomic_store(&k->up, true);
  if (pthread_create(&k->poller, NULL, poller_main, k) != 0) {
    rc = tl_error_set(TL_ENOMEM, "kafka: cannot start the poll thread");
    goto fail;
  }
  mq->impl = k;
  return 0;
fail:
  if (k->rk)
    rd_kafka_destroy(k->rk);
  if (k->mock)
    mock_put(k->mock);
  free(k->brokers);
  pthread_mutex_destroy(&k->mu);
  pthread_cond_destroy(&k->cond);
  free(k);
  return rc;
}

static int k_close(tl_mq *mq, int64_t deadline)
{
  struct kmq *k = mq->impl;
  atomic_store(&k->stop, true);
  pthread_join(k->poller, NULL);
  int64_t left = (deadline - tl_time_mono_us()) / 1000;
  int rc = 0;
  if (rd_kafka_flush(k->rk, (int)(left > 0 ? left : 0)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rc = tl_error_set(TL_ETIMEOUT, "kafka: unflushed messages at close");
    rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(k->rk, 0); /* their reports: TL_ECLOSED */
  }
  rd_kafka_destroy(k->rk);
  if (k->mock)
    mock_put(k->mock);
  free(k->brokers);
  pthread_mutex_destroy(&k->mu);
  pthread_cond_destroy(&k->cond);
  free(k);
  mq->impl = NULL;
  return rc;
}

static int k_ready(tl_mq *mq)
{
  struct kmq *k = mq->impl;
  if (atomic_load(&k->up))
    return 0;
  pthread_mutex_lock(&k->mu);
  char err[256];
  snprintf(err, sizeof err, "%s", k->last_error);
  pthread_mutex_unlock(&k->mu);
  return tl_error_set(TL_ECONNECT, "kafka %s: no broker reachable: %s", k->brokers,
                      err[0] ? err : "reconnecting");
}

static int k_publish(tl_mq *mq, tl__mq_out *o, tl__mq_pub *pub, int64_t deadline)
{
  struct kmq *k = mq->impl;
  size_t nh;
  const tl_mq_header *h = tl__mq_out_headers(o, &nh);
  struct kwait *w = NULL;
  if (!pub && !(w = calloc(1, sizeof *w)))
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  void *opaque = pub ? (void *)pub : (void *)((uintptr_t)w | WAIT_TAG);
  rd_kafka_resp_err_t e;
  for (;;) {
    rd_kafka_headers_t *hs = rd_kafka_headers_new(nh + 1);
    rd_kafka_header_add(hs, TL__MQ_H_SUBJECT, -1, o->subject, (ssize_t)o->subject_len);
    for (size_t i = 0; i < nh; i++)
      rd_kafka_header_add(hs, h[i].key, -1, h[i].value, -1);
    e = rd_kafka_producev(k->rk, RD_KAFKA_V_TOPIC(mq->cfg.topic),
                          RD_KAFKA_V_KEY(o->key, o->key_len),
                          RD_KAFKA_V_VALUE((void *)o->data, o->len),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hs),
                          RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
      break;
    rd_kafka_headers_destroy(hs);
    deadline = tl__mq_deadline_of(mq, deadline);
    if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || tl_time_mono_us() >= deadline) {
      free(w);
      return tl_error_set(status_of(e), "kafka: cannot produce to '%s': %s", mq->cfg.topic,
                          rd_kafka_err2str(e));
    }
    tl_sleep_us(1000); /* the local queue drains as brokers confirm */
  }
  if (pub)
    return 0;
  deadline = tl__mq_deadline_of(mq, deadline);
  pthread_mutex_lock(&k->mu);
  while (!w->done)
    if (tl__mq_cond_wait_until(&k->cond, &k->mu, deadline) == ETIMEDOUT && !w->done)
      break;
  int rc;
  if (w->done) {
    rc = w->status;
    free(w);
    if (rc)
      tl_error_set(rc, "kafka: message not delivered to '%s'", mq->cfg.topic);
  } else {
    w->abandoned = true; /* the report frees it */
    rc = tl_error_set(TL_ETIMEOUT, "kafka %s: no acknowledgement within the publish timeout",
                      k->brokers);
  }
  pthread_mutex_unlock(&k->mu);
  return rc;
}

/* ---- consumers ---- */

/* Offsets of one partition handed out and not yet stored, in order. */
struct knode {
  int64_t offset;
  bool done;
  struct knode *next;
};

struct ktrack {
  int32_t partition;
  bool revoked;
  struct knode *head, *tail;
  struct ktrack *next_all;
};

struct ksub {
  struct kmq *k;
  tl_mq_sub *sub;
  rd_kafka_t *rk;
  bool group;
  pthread_t thread;
  bool started;
  atomic_bool stop;
  pthread_mutex_t mu;        /* trackers; ready */
  pthread_cond_t cond;
  bool ready;
  int ready_rc;
  char ready_err[256];
  struct ktrack **cur;       /* by partition */
  int ncur;
  struct ktrack *all;
};

struct kdelivery {
  tl__mq_delivery d;
  rd_kafka_message_t *msg;
  struct ksub *s;
  struct ktrack *t;
  struct knode *node;
  char *strings;
  size_t nh;
  tl_mq_header hdrs[TL_MQ_HEADERS_MAX];
};

static struct ktrack *track_for(struct ksub *s, int32_t p)
{
  if (p >= s->ncur) {
    int n = p + 1;
    struct ktrack **c = realloc(s->cur, (size_t)n * sizeof *c);
    if (!c)
      return NULL;
    for (int i = s->ncur; i < n; i++)
      c[i] = NULL;
    s->cur = c;
    s->ncur = n;
  }
  if (!s->cur[p]) {
    struct ktrack *t = calloc(1, sizeof *t);
    if (!t)
      return NULL;
    t->partition = p;
    t->next_all = s->all;
    s->all = t;
    s->cur[p] = t;
  }
  return s->cur[p];
}

/* Mark `node` done and store the offset after the longest done prefix.
 * locks: takes s->mu */
static void track_done(struct ksub *s, struct ktrack *t, struct knode *node)
{
  int64_t store = -1;
  pthread_mutex_lock(&s->mu);
  node->done = true;
  while (t->head && t->head->done) {
    struct knode *n = t->head;
    t->head = n->next;
    if (!t->head)
      t->tail = NULL;
    store = n->offset + 1;
    free(n);
  }
  bool revoked = t->revoked;
  pthread_mutex_unlock(&s->mu);
  if (store >= 0 && !revoked && s->group) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, s->k->mq->cfg.topic, t->partition)->offset = store;
    rd_kafka_offsets_store(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
  }
}

static struct knode *track_add(struct ksub *s, int32_t p, int64_t offset, struct ktrack **tout)
{
  struct knode *n = calloc(1, sizeof *n);
  if (!n)
    return NULL;
  n->offset = offset;
  pthread_mutex_lock(&s->mu);
  struct ktrack *t = track_for(s, p);
  if (!t) {
    pthread_mutex_unlock(&s->mu);
    free(n);
    return NULL;
  }
  if (t->tail)
    t->tail->next = n;
  else
    t->head = n;
  t->tail = n;
  pthread_mutex_unlock(&s->mu);
  *tout = t;
  return n;
}

/* Start position for partitions without a committed offset: the end, as
 * it is now, so a subscriber sees what is published after it started. */
static int set_start_offsets(struct ksub *s, rd_kafka_topic_partition_list_t *parts)
{
  int fresh = 0;
  if (s->group)
    rd_kafka_committed(s->rk, parts, 5000);
  for (int i = 0; i < parts->cnt; i++) {
    rd_kafka_topic_partition_t *p = &parts->elems[i];
    if (!s->group || p->offset < 0) {
      int64_t lo = 0, hi = 0;
      if (rd_kafka_query_watermark_offsets(s->rk, p->topic, p->partition, &lo, &hi, 5000) ==
          RD_KAFKA_RESP_ERR_NO_ERROR)
        p->offset = hi;
      else
        p->offset = RD_KAFKA_OFFSET_END;
      fresh++;
    }
  }
  return fresh;
}

static void set_ready(struct ksub *s, int rc, const char *err)
{
  pthread_mutex_lock(&s->mu);
  if (!s->ready) {
    s->ready = true;
    s->ready_rc = rc;
    snprintf(s->ready_err, sizeof s->ready_err, "%s", err ? err : "");
    pthread_cond_broadcast(&s->cond);
  }
  pthread_mutex_unlock(&s->mu);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
  struct ksub *s = opaque;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    int fresh = set_start_offsets(s, parts);
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < parts->cnt; i++) {
      int32_t p = parts->elems[i].partition;
      if (p < s->ncur && s->cur[p]) {
        s->cur[p]->revoked = true;
        s->cur[p] = NULL;
      }
    }
    pthread_mutex_unlock(&s->mu);
    rd_kafka_assign(rk, parts);
    if (fresh) {
      /* A group's start must be committed at once: a partition that moves
       * to another member before anything was committed would otherwise
       * restart from its end there, skipping what came in between. */
      rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(fresh);
      for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].offset >= 0)
          rd_kafka_topic_partition_list_add(l, parts->elems[i].topic, parts->elems[i].partition)
              ->offset = parts->elems[i].offset;
      rd_kafka_resp_err_t ce = rd_kafka_commit(rk, l, 0);
      if (ce)
        tl_log(TL_LOG_WARN, "mq: kafka cannot commit the group's start offsets",
               TL_F_STR("error", rd_kafka_err2str(ce)));
      rd_kafka_topic_partition_list_destroy(l);
    }
    set_ready(s, 0, NULL);
  } else {
    /* revoked: offsets of work still running will not be stored */
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->ncur; i++)
      if (s->cur[i]) {
        s->cur[i]->revoked = true;
        s->cur[i] = NULL;
      }
    pthread_mutex_unlock(&s->mu);
    rd_kafka_commit(rk, NULL, 0);
    rd_kafka_assign(rk, NULL);
  }
}

static struct kdelivery *delivery_new(struct ksub *s, rd_kafka_message_t *msg, const char *subject,
                                      size_t subject_len)
{
  rd_kafka_headers_t *hs = NULL;
  rd_kafka_message_headers(msg, &hs);
  size_t need = subject_len + 1 + (msg->key ? msg->key_len + 1 : 0);
  size_t cnt = hs ? rd_kafka_header_cnt(hs) : 0;
  for (size_t i = 0; i < cnt; i++) {
    const char *name;
    const void *val;
    size_t sz;
    if (rd_kafka_header_get_all(hs, i, &name, &val, &sz) == RD_KAFKA_RESP_ERR_NO_ERROR)
      need += sz + 1;
  }
  struct kdelivery *kd = calloc(1, sizeof *kd);
  char *p = malloc(need);
  if (!kd || !p) {
    free(kd);
    free(p);
    return NULL;
  }
  kd->strings = p;
  kd->msg = msg;
  kd->s = s;
  tl_mq_msg *m = &kd->d.msg;
  memcpy(p, subject, subject_len);
  p[subject_len] = '\0';
  m->subject = p;
  p += subject_len + 1;
  if (msg->key) {
    memcpy(p, msg->key, msg->key_len);
    p[msg->key_len] = '\0';
    m->key = p;
    p += msg->key_len + 1;
  } else {
    m->key = m->subject;
  }
  for (size_t i = 0; i < cnt && kd->nh < TL_MQ_HEADERS_MAX; i++) {
    const char *name;
    const void *val;
    size_t sz;
    if (rd_kafka_header_get_all(hs, i, &name, &val, &sz) != RD_KAFKA_RESP_ERR_NO_ERROR)
      continue;
    if (val)
      memcpy(p, val, sz);
    p[sz] = '\0';
    kd->hdrs[kd->nh++] = (tl_mq_header){ name, p };
    p += sz + 1;
  }
  m->data = msg->payload ? msg->payload : "";
  m->len = msg->len;
  tl__mq_msg_finish(m, kd->hdrs, &kd->nh);
  kd->d.broker_count = 1;
  return kd;
}

static void k_settle(tl_mq_sub *sub, tl__mq_delivery *d, int how)
{
  struct kdelivery *kd = (struct kdelivery *)d;
  (void)sub;
  /* a message given back stays unstored, so nothing after it is stored:
   * the group's next owner of the partition gets it again */
  if (how == TL__MQ_SETTLE_ACK)
    track_done(kd->s, kd->t, kd->node);
  rd_kafka_message_destroy(kd->msg);
  free(kd->strings);
  free(kd);
}

/* The subject header of a message, or NULL (not one of ours). */
static const char *subject_of(rd_kafka_message_t *msg, size_t *len)
{
  rd_kafka_headers_t *hs = NULL;
  const void *val;
  if (rd_kafka_message_headers(msg, &hs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
      rd_kafka_header_get_last(hs, TL__MQ_H_SUBJECT, &val, len) != RD_KAFKA_RESP_ERR_NO_ERROR ||
      !val || *len == 0 || *len > TL_MQ_SUBJECT_MAX)
    return NULL;
  return val;
}

static void *consume_main(void *arg)
{
  struct ksub *s = arg;
  tl_mq_sub *sub = s->sub;
  while (!atomic_load(&s->stop)) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(s->rk, 100);
    if (!msg)
      continue;
    if (msg->err) {
      if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        tl_log(TL_LOG_DEBUG, "mq: kafka consumer", TL_F_STR("error", rd_kafka_message_errstr(msg)));
      rd_kafka_message_destroy(msg);
      continue;
    }
    struct ktrack *t = NULL;
    struct knode *node = track_add(s, msg->partition, msg->offset, &t);
    if (!node) {
      rd_kafka_message_destroy(msg);
      continue; /* unstored: redelivered after a restart */
    }
    size_t slen = 0;
    const char *subj = subject_of(msg, &slen);
    char sbuf[TL_MQ_SUBJECT_MAX + 1];
    if (subj) {
      memcpy(sbuf, subj, slen);
      sbuf[slen] = '\0';
    }
    if (!subj || !tl__mq_match(sub->pattern, sbuf, slen)) {
      /* not for this subscription: done with it */
      track_done(s, t, node);
      rd_kafka_message_destroy(msg);
      continue;
    }
    struct kdelivery *kd = delivery_new(s, msg, sbuf, slen);
    if (!kd) {
      rd_kafka_message_destroy(msg);
      continue;
    }
    kd->t = t;
    kd->node = node;
    tl__mq_deliver(sub, &kd->d);
  }
  return NULL;
}

static int assign_all(struct ksub *s)
{
  const char *topic = s->k->mq->cfg.topic;
  rd_kafka_topic_t *t = rd_kafka_topic_new(s->rk, topic, NULL);
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t e = rd_kafka_metadata(s->rk, 0, t, &md, 10000);
  rd_kafka_topic_destroy(t);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
    return tl_error_set(TL_ECONNECT, "kafka: no metadata for topic '%s': %s", topic,
                        rd_kafka_err2str(e));
  int rc = 0;
  if (md->topic_cnt < 1 || md->topics[0].err || md->topics[0].partition_cnt < 1) {
    rc = tl_error_set(TL_ENOTFOUND, "kafka: topic '%s' has no partitions (%s)", topic,
                      md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "missing");
  } else {
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (int i = 0; i < md->topics[0].partition_cnt; i++)
      rd_kafka_topic_partition_list_add(l, topic, md->topics[0].partitions[i].id);
    set_start_offsets(s, l);
    e = rd_kafka_assign(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e)
      rc = tl_error_set(TL_EIO, "kafka: cannot assign '%s': %s", topic, rd_kafka_err2str(e));
  }
  rd_kafka_metadata_destroy(md);
  return rc;
}

static int k_subscribe(tl_mq_sub *sub)
{
  struct kmq *k = sub->mq->impl;
  struct ksub *s = calloc(1, sizeof *s);
  if (!s)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  s->k = k;
  s->sub = sub;
  s->group = sub->group[0] != '\0';
  atomic_init(&s->stop, false);
  pthread_mutex_init(&s->mu, NULL);
  tl__cond_init_mono(&s->cond);
  char err[512], gid[TL_MQ_SUBJECT_MAX + 80], pf[16];
  if (s->group)
    snprintf(gid, sizeof gid, "%s:%s", sub->group, sub->pattern);
  else
    snprintf(gid, sizeof gid, "tl-%016llx", (unsigned long long)tl_rand64());
  snprintf(pf, sizeof pf, "%u", sub->opts.prefetch);
  rd_kafka_conf_t *conf = base_conf(k, err, sizeof err);
  int rc = 0;
  if (!conf || rd_kafka_conf_set(conf, "group.id", gid, err, sizeof err) ||
      rd_kafka_conf_set(conf, "enable.auto.offset.store", "false", err, sizeof err) ||
      rd_kafka_conf_set(conf, "enable.auto.commit", s->group ? "true" : "false", err, sizeof err) ||
      rd_kafka_conf_set(conf, "auto.commit.interval.ms", "500", err, sizeof err) ||
      rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err) ||
      rd_kafka_conf_set(conf, "session.timeout.ms", "6000", err, sizeof err) ||
      rd_kafka_conf_set(conf, "heartbeat.interval.ms", "500", err, sizeof err) ||
      rd_kafka_conf_set(conf, "fetch.wait.max.ms", "100", err, sizeof err) ||
      rd_kafka_conf_set(conf, "queued.max.messages.kbytes", "65536", err, sizeof err)) {
    if (conf)
      rd_kafka_conf_destroy(conf);
    rc = tl_error_set(TL_EINVAL, "kafka: %s", err);
    goto fail;
  }
  if (s->group)
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
  rd_kafka_conf_set_opaque(conf, s);
  s->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (!s->rk) {
    rd_kafka_conf_destroy(conf);
    rc = tl_error_set(TL_EINVAL, "kafka: %s", err);
    goto fail;
  }
  rd_kafka_poll_set_consumer(s->rk);
  if (s->group) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, k->mq->cfg.topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
      rc = tl_error_set(TL_EIO, "kafka: cannot subscribe: %s", rd_kafka_err2str(e));
      goto fail;
    }
  } else if ((rc = assign_all(s))) {
    goto fail;
  } else {
    s->ready = true;
  }
  if (pthread_create(&s->thread, NULL, consume_main, s) != 0) {
    rc = tl_error_set(TL_ENOMEM, "kafka: cannot start the consumer thread");
    goto fail;
  }
  s->started = true;
  sub->impl = s;
  /* a group member is ready once it has its partitions */
  int64_t deadline = tl__mq_deadline(30000000);
  pthread_mutex_lock(&s->mu);
  while (!s->ready)
    if (tl__mq_cond_wait_until(&s->cond, &s->mu, deadline) == ETIMEDOUT)
      break;
  bool ready = s->ready;
  pthread_mutex_unlock(&s->mu);
  if (!ready) {
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    s->started = false;
    sub->impl = NULL;
    rc = tl_error_set(TL_ETIMEOUT, "kafka: group '%s' got no partition assignment in 30 s", gid);
    goto fail;
  }
  return 0;
fail:
  if (s->rk) {
    rd_kafka_consumer_close(s->rk);
    rd_kafka_destroy(s->rk);
  }
  free(s->cur);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cond);
  free(s);
  return rc;
}

static void k_sub_stop(tl_mq_sub *sub)
{
  struct ksub *s = sub->impl;
  atomic_store(&s->stop, true);
  if (s->started) {
    pthread_join(s->thread, NULL);
    s->started = false;
  }
}

static void k_sub_free(tl_mq_sub *sub)
{
  struct ksub *s = sub->impl;
  /* stores are done: commit them and leave the group */
  rd_kafka_consumer_close(s->rk);
  rd_kafka_destroy(s->rk);
  for (struct ktrack *t = s->all, *next; t; t = next) {
    next = t->next_all;
    for (struct knode *n = t->head, *nn; n; n = nn) {
      nn = n->next;
      free(n);
    }
    free(t);
  }
  free(s->cur);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cond);
  free(s);
  sub->impl = NULL;
}

void *tl__mq_kafka_mock_cluster(tl_mq *mq)
{
  if (!mq || mq->be != &tl__mq_kafka || !mq->impl)
    return NULL;
  struct kmq *k = mq->impl;
  return k->mock ? k->mock->mc : NULL;
}

const struct tl__mq_backend tl__mq_kafka = {
  .name = "kafka",
  .open = k_open,
  .close = k_close,
  .ready = k_ready,
  .publish = k_publish,
  .subscribe = k_subscribe,
  .sub_stop = k_sub_stop,
  .sub_free = k_sub_free,
  .settle = k_settle,
};
