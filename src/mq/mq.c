/* The messaging front end: configuration, handles, publishing and the
 * metrics every backend shares. Backends only talk to their library. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core_int.h"
#include "mq_int.h"

static const struct tl__mq_backend *backend_for(tl_mq_type t)
{
  switch (t) {
  case TL_MQ_MEMORY: return &tl__mq_memory;
  case TL_MQ_KAFKA: return &tl__mq_kafka;
  case TL_MQ_RABBITMQ: return &tl__mq_rabbitmq;
  case TL_MQ_NATS: return &tl__mq_nats;
  }
  return NULL;
}

const char *tl_mq_type_name(tl_mq_type type)
{
  const struct tl__mq_backend *be = backend_for(type);
  return be ? be->name : "unknown";
}

/* ---- small helpers ---- */


int tl__mq_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline)
{
  if (deadline == INT64_MAX)
    return pthread_cond_wait(c, m);
  struct timespec ts = { .tv_sec = deadline / 1000000, .tv_nsec = (deadline % 1000000) * 1000 };
  return pthread_cond_timedwait(c, m, &ts);
}

static const char hexdig[] = "0123456789abcdef";

static void hex_encode(const uint8_t *in, size_t n, char *out)
{
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hexdig[in[i] >> 4];
    out[2 * i + 1] = hexdig[in[i] & 15];
  }
}

static int hexv(char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int hex_decode(const char *in, size_t n, uint8_t *out)
{
  for (size_t i = 0; i < n; i++) {
    int hi = hexv(in[2 * i]), lo = hi < 0 ? -1 : hexv(in[2 * i + 1]);
    if (lo < 0)
      return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

void tl__mq_fmt_traceparent(const uint8_t trace[16], const uint8_t span[8], uint8_t flags,
                            char out[56])
{
  memcpy(out, "00-", 3);
  hex_encode(trace, 16, out + 3);
  out[35] = '-';
  hex_encode(span, 8, out + 36);
  out[52] = '-';
  hex_encode(&flags, 1, out + 53);
  out[55] = '\0';
}

int tl__mq_parse_traceparent(const char *t, uint8_t trace[16], uint8_t span[8], uint8_t *flags)
{
  if (!t || strlen(t) < 55 || t[2] != '-' || t[35] != '-' || t[52] != '-')
    return -1;
  uint8_t ver;
  if (hex_decode(t, 1, &ver) != 0 || ver == 0xff || (ver == 0 && t[55] != '\0'))
    return -1;
  if (hex_decode(t + 3, 16, trace) != 0 || hex_decode(t + 36, 8, span) != 0 ||
      hex_decode(t + 53, 1, flags) != 0)
    return -1;
  if (all_zero(trace, 16) || all_zero(span, 8))
    return -1;
  return 0;
}

static void rand_bytes(uint8_t *p, size_t n)
{
  while (n) {
    uint64_t r = tl_rand64();
    size_t k = n < 8 ? n : 8;
    memcpy(p, &r, k);
    p += k, n -= k;
  }
}

/* ---- outgoing messages ---- */

static bool header_key_ok(const char *k)
{
  if (!k || !*k || strlen(k) > 128)
    return false;
  for (const unsigned char *p = (const unsigned char *)k; *p; p++)
    if (*p <= 0x20 || *p >= 0x7f || *p == ':')
      return false;
  return true;
}

static bool header_value_ok(const char *v)
{
  if (!v)
    return false;
  for (const unsigned char *p = (const unsigned char *)v; *p; p++)
    if (*p == '\r' || *p == '\n' || *p == 0)
      return false;
  return true;
}

static bool is_reserved(const char *k)
{
  return !strcasecmp(k, TL__MQ_H_ID) || !strcasecmp(k, TL__MQ_H_PUBLISHED) ||
         !strcasecmp(k, TL__MQ_H_SUBJECT) || !strcasecmp(k, TL__MQ_H_KEY) ||
         !strncasecmp(k, "nats-", 5);
}

int tl__mq_out_init(tl__mq_out *o, const tl_mq_message *m)
{
  if (!m)
    return tl_error_set(TL_EINVAL, "message: missing (NULL)");
  int rc = tl__mq_name_check(m->subject, false, "subject");
  if (rc)
    return rc;
  if (m->len && !m->data)
    return tl_error_set(TL_EINVAL, "subject '%s': data is NULL with length %zu", m->subject,
                        m->len);
  o->subject = m->subject;
  o->subject_len = strlen(m->subject);
  if (m->key) {
    size_t kl = strlen(m->key);
    if (kl == 0 || kl > 1024 || !header_value_ok(m->key))
      return tl_error_set(TL_EINVAL,
                          "subject '%s': key must be 1 to 1024 bytes without CR or LF",
                          m->subject);
    o->key = m->key;
    o->key_len = kl;
    o->key_is_subject = kl == o->subject_len && !memcmp(m->key, m->subject, kl);
  } else {
    o->key = m->subject;
    o->key_len = o->subject_len;
    o->key_is_subject = true;
  }
  o->data = m->data;
  o->len = m->len;
  o->formatted = false;
  o->waited = false;
  o->skip_tp = o->skip_rid = -1;
  o->request_id = NULL;
  o->request_id_len = 0;
  const char *tp_in = NULL;
  if (m->nheaders) {
    if (!m->headers)
      return tl_error_set(TL_EINVAL, "subject '%s': headers is NULL with count %zu",
                          m->subject, m->nheaders);
    if (m->nheaders > TL_MQ_HEADERS_MAX - 4)
      return tl_error_set(TL_EINVAL, "subject '%s': %zu headers, at most %d", m->subject,
                          m->nheaders, TL_MQ_HEADERS_MAX - 4);
    for (size_t i = 0; i < m->nheaders; i++) {
      const tl_mq_header *h = &m->headers[i];
      if (!header_key_ok(h->key))
        return tl_error_set(TL_EINVAL,
                            "subject '%s': header key '%.64s' must be 1 to 128 printable "
                            "characters without ':' or spaces",
                            m->subject, h->key ? h->key : "(null)");
      if (!header_value_ok(h->value))
        return tl_error_set(TL_EINVAL, "subject '%s': header '%s': value is NULL or has CR/LF",
                            m->subject, h->key);
      if (is_reserved(h->key))
        return tl_error_set(TL_EINVAL, "subject '%s': header '%s' is reserved (set by trellis)",
                            m->subject, h->key);
      if (!strcasecmp(h->key, TL__MQ_H_TRACEPARENT)) {
        tp_in = h->value;
        o->skip_tp = (int)i;
      } else if (!strcasecmp(h->key, TL__MQ_H_REQUEST_ID)) {
        o->request_id = h->value;
        o->skip_rid = (int)i;
      }
    }
  }
  o->user = m->headers;
  o->nuser = m->nheaders;
  o->id_given = o->id_ready = false;
  if (m->id) {
    size_t il = strlen(m->id);
    if (il == 0 || il >= TL_UUID_STRLEN || !header_value_ok(m->id))
      return tl_error_set(TL_EINVAL, "subject '%s': message id '%.40s' must be 1 to %d bytes "
                                     "without CR or LF",
                          m->subject, m->id, TL_UUID_STRLEN - 1);
    memcpy(o->id_text, m->id, il + 1);
    o->id_given = o->id_ready = true;
  }

  if (tp_in) {
    if (tl__mq_parse_traceparent(tp_in, o->trace_id, o->span_id, &o->trace_flags) != 0)
      return tl_error_set(TL_EINVAL, "subject '%s': header traceparent '%.60s' is not a W3C "
                                     "traceparent (00-<32 hex>-<16 hex>-<2 hex>)",
                          m->subject, tp_in);
  } else {
    /* A new span of the thread's trace, or a new trace. */
    const char *ctx = tl_log_context_trace_id();
    if (!(ctx && strlen(ctx) == 32 && hex_decode(ctx, 16, o->trace_id) == 0 &&
          !all_zero(o->trace_id, 16)))
      rand_bytes(o->trace_id, 16);
    o->trace_flags = 1;
    do
      rand_bytes(o->span_id, 8);
    while (all_zero(o->span_id, 8));
  }
  if (!o->request_id) {
    const char *rid = tl_log_context_request_id();
    if (rid && *rid)
      o->request_id = rid;
  }
  if (o->request_id)
    o->request_id_len = strlen(o->request_id);
  o->published_us = tl_time_now_us();
  if (!o->id_given)
    tl_uuid7_at(o->published_us, o->id);
  return 0;
}

const char *tl__mq_out_id(tl__mq_out *o)
{
  if (!o->id_ready) {
    tl_uuid_format(o->id, o->id_text);
    o->id_ready = true;
  }
  return o->id_text;
}

const tl_mq_header *tl__mq_out_headers(tl__mq_out *o, size_t *n)
{
  if (!o->formatted) {
    tl__mq_out_id(o);
    snprintf(o->published_text, sizeof o->published_text, "%lld", (long long)o->published_us);
    tl__mq_fmt_traceparent(o->trace_id, o->span_id, o->trace_flags, o->traceparent);
    size_t k = 0;
    o->hdrs[k++] = (tl_mq_header){ TL__MQ_H_ID, o->id_text };
    o->hdrs[k++] = (tl_mq_header){ TL__MQ_H_PUBLISHED, o->published_text };
    o->hdrs[k++] = (tl_mq_header){ TL__MQ_H_TRACEPARENT, o->traceparent };
    if (o->request_id)
      o->hdrs[k++] = (tl_mq_header){ TL__MQ_H_REQUEST_ID, o->request_id };
    for (size_t i = 0; i < o->nuser; i++)
      if (!tl__mq_out_skip(o, i))
        o->hdrs[k++] = o->user[i];
    o->nhdrs = k;
    o->formatted = true;
  }
  *n = o->nhdrs;
  return o->hdrs;
}

/* ---- delivered messages ---- */

const char *tl_mq_msg_header(const tl_mq_msg *msg, const char *key)
{
  if (!msg || !key)
    return NULL;
  for (size_t i = 0; i < msg->nheaders; i++)
    if (msg->headers[i].key && !strcasecmp(msg->headers[i].key, key))
      return msg->headers[i].value;
  return NULL;
}

void tl__mq_msg_finish(tl_mq_msg *msg, tl_mq_header *hdrs, size_t *nhdrs)
{
  tl__mq_delivery *d = (tl__mq_delivery *)msg;
  d->request_id = NULL;
  d->traceparent = NULL;
  size_t k = 0;
  msg->id = "";
  msg->published_us = 0;
  for (size_t i = 0; i < *nhdrs; i++) {
    const char *key = hdrs[i].key;
    if (!strcasecmp(key, TL__MQ_H_SUBJECT) || !strcasecmp(key, TL__MQ_H_KEY) ||
        !strncasecmp(key, "nats-", 5))
      continue;
    if (!strcasecmp(key, TL__MQ_H_ID))
      msg->id = hdrs[i].value;
    else if (!strcasecmp(key, TL__MQ_H_PUBLISHED))
      msg->published_us = strtoll(hdrs[i].value, NULL, 10);
    else if (!strcasecmp(key, TL__MQ_H_TRACEPARENT))
      d->traceparent = hdrs[i].value;
    else if (!strcasecmp(key, TL__MQ_H_REQUEST_ID))
      d->request_id = hdrs[i].value;
    hdrs[k++] = hdrs[i];
  }
  *nhdrs = k;
  msg->headers = hdrs;
  msg->nheaders = k;
}

/* ---- metrics ---- */

static int register_metrics(tl_mq *mq)
{
  tl_metrics *reg = mq->cfg.metrics;
  const char *l = "backend,prefix";
  static const double lat[] = { 0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                0.005,   0.01,    0.025,  0.05,    0.1,    0.25,  0.5,
                                1,       2.5,     5,      10 };
  int rc = 0;
  rc = rc ? rc : tl_metrics_counter(reg, "trellis_mq_published_total",
                                    "Messages the broker accepted, by backend and subject prefix.",
                                    l, &mq->m_published);
  rc = rc ? rc : tl_metrics_counter(reg, "trellis_mq_publish_failed_total",
                                    "Publishes that failed or timed out.", l,
                                    &mq->m_publish_failed);
  rc = rc ? rc : tl_metrics_counter(reg, "trellis_mq_delivered_total",
                                    "Deliveries to a handler (redeliveries included).", l,
                                    &mq->m_delivered);
  rc = rc ? rc : tl_metrics_counter(reg, "trellis_mq_acked_total",
                                    "Messages a handler acknowledged.", l, &mq->m_acked);
  rc = rc ? rc : tl_metrics_counter(reg, "trellis_mq_redelivered_total",
                                    "Deliveries after the first of a message.", l,
                                    &mq->m_redelivered);
  rc = rc ? rc : tl_metrics_counter(reg, "trellis_mq_dead_lettered_total",
                                    "Messages moved to the dead-letter subject.", l,
                                    &mq->m_dead_lettered);
  rc = rc ? rc : tl_metrics_histogram(reg, "trellis_mq_publish_duration_seconds",
                                      "Time from publish to the broker's confirm.", l, lat,
                                      sizeof lat / sizeof lat[0], &mq->m_publish_seconds);
  return rc;
}

static tl__mq_stats *stats_new(tl_mq *mq, const char *prefix, size_t len)
{
  tl__mq_stats *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  if (len >= sizeof s->prefix)
    len = sizeof s->prefix - 1;
  memcpy(s->prefix, prefix, len);
  s->prefix_len = len;
  const char *vals[2] = { mq->be->name, s->prefix };
  s->published = tl_metric_series(mq->m_published, vals, 2);
  s->publish_failed = tl_metric_series(mq->m_publish_failed, vals, 2);
  s->delivered = tl_metric_series(mq->m_delivered, vals, 2);
  s->acked = tl_metric_series(mq->m_acked, vals, 2);
  s->redelivered = tl_metric_series(mq->m_redelivered, vals, 2);
  s->dead_lettered = tl_metric_series(mq->m_dead_lettered, vals, 2);
  s->publish_seconds = tl_metric_series(mq->m_publish_seconds, vals, 2);
  return s;
}

tl__mq_stats *tl__mq_stats_for(tl_mq *mq, const char *subject, size_t len)
{
  size_t plen = 0;
  while (plen < len && subject[plen] != '.')
    plen++;
  if (plen >= sizeof mq->stats_other->prefix)
    plen = sizeof mq->stats_other->prefix - 1;
  uint64_t h = tl__mq_hash(subject, plen);
  for (unsigned i = 0; i < TL__MQ_STATS_SLOTS; i++) {
    unsigned slot = (unsigned)(h + i) % TL__MQ_STATS_SLOTS;
    tl__mq_stats *s = atomic_load_explicit(&mq->stats[slot], memory_order_acquire);
    if (s) {
      if (s->prefix_len == plen && !memcmp(s->prefix, subject, plen))
        return s;
      continue;
    }
    pthread_mutex_lock(&mq->stats_mu);
    s = atomic_load_explicit(&mq->stats[slot], memory_order_acquire);
    if (!s) {
      s = stats_new(mq, subject, plen);
      if (s)
        atomic_store_explicit(&mq->stats[slot], s, memory_order_release);
    }
    pthread_mutex_unlock(&mq->stats_mu);
    if (!s)
      return mq->stats_other;
    if (s->prefix_len == plen && !memcmp(s->prefix, subject, plen))
      return s;
  }
  /* Too many prefixes: keep the label set bounded. */
  return mq->stats_other;
}

/* ---- configuration ---- */

static const char *const type_names[] = { "memory", "kafka", "rabbitmq", "nats", NULL };

static int check_host_list(const char *key, const char *v)
{
  if (!strncmp(v, "mock://", 7)) {
    char *end;
    long n = strtol(v + 7, &end, 10);
    if (end == v + 7 || *end || n < 1 || n > 16)
      return tl_error_set(TL_EINVAL, "%s: '%s': mock:// needs a broker count from 1 to 16",
                          key, v);
    return 0;
  }
  const char *p = v;
  size_t items = 0;
  while (*p) {
    size_t n = strcspn(p, ",");
    const char *b = p, *e = p + n;
    while (b < e && (*b == ' ' || *b == '\t'))
      b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if (e > b) {
      items++;
      const char *colon = NULL;
      for (const char *q = b; q < e; q++)
        if (*q == ':')
          colon = q;
      if (!colon || colon == b || colon + 1 == e)
        return tl_error_set(TL_EINVAL, "%s: '%.*s' is not host:port", key, (int)(e - b), b);
      for (const char *q = colon + 1; q < e; q++)
        if (*q < '0' || *q > '9')
          return tl_error_set(TL_EINVAL, "%s: '%.*s': port is not a number", key,
                              (int)(e - b), b);
    }
    p += n;
    if (*p == ',')
      p++;
  }
  if (items == 0)
    return tl_error_set(TL_EINVAL, "%s: empty list", key);
  return 0;
}

static int check_kafka_topic(const char *key, const char *t)
{
  size_t n = strlen(t);
  if (n == 0 || n > 249)
    return tl_error_set(TL_EINVAL, "%s: '%s': a topic has 1 to 249 characters", key, t);
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-'))
      return tl_error_set(TL_EINVAL, "%s: '%s': a topic has only letters, digits, '.', '_', '-'",
                          key, t);
  }
  return 0;
}

static bool name_ok(const char *s, size_t max)
{
  size_t n = strlen(s);
  if (n == 0 || n > max)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '-'))
      return false;
  }
  return true;
}

int tl_mq_config_from(const tl_config *cfg, tl_mq_config *mc)
{
  if (!cfg || !mc)
    return tl_error_set(TL_EINVAL, "tl_mq_config_from: NULL argument");
  *mc = (tl_mq_config){ 0 };
  int type, rc;
  if ((rc = tl_config_enum(cfg, "MESSAGE_QUEUE_TYPE", "memory", type_names, &type)))
    return rc;
  mc->type = (tl_mq_type)type;
  switch (mc->type) {
  case TL_MQ_KAFKA:
    if ((rc = tl_config_string(cfg, "KAFKA_BROKERS", "localhost:9092", &mc->brokers)) ||
        (rc = check_host_list("KAFKA_BROKERS", mc->brokers)))
      return rc;
    if ((rc = tl_config_string(cfg, "KAFKA_TOPIC", "events", &mc->topic)) ||
        (rc = check_kafka_topic("KAFKA_TOPIC", mc->topic)))
      return rc;
    break;
  case TL_MQ_RABBITMQ: {
    static const char *const schemes[] = { "amqp", "amqps", NULL };
    if ((rc = tl_config_url(cfg, "RABBITMQ_URL", "amqp://guest:guest@localhost:5672/", schemes,
                            &mc->url)))
      return rc;
    if ((rc = tl_config_string(cfg, "RABBITMQ_EXCHANGE", "trellis", &mc->exchange)))
      return rc;
    if (strlen(mc->exchange) > 127 || !header_value_ok(mc->exchange))
      return tl_error_set(TL_EINVAL, "RABBITMQ_EXCHANGE: '%.40s' is not an exchange name",
                          mc->exchange);
    break;
  }
  case TL_MQ_NATS: {
    static const char *const schemes[] = { "nats", "tls", NULL };
    if ((rc = tl_config_url(cfg, "NATS_URL", "nats://localhost:4222", schemes, &mc->url)))
      return rc;
    if ((rc = tl_config_string(cfg, "NATS_STREAM", "TRELLIS", &mc->stream)))
      return rc;
    if (!name_ok(mc->stream, 64))
      return tl_error_set(TL_EINVAL,
                          "NATS_STREAM: '%.64s' must be 1 to 64 letters, digits, '_' or '-'",
                          mc->stream);
    if ((rc = tl_config_string(cfg, "NATS_STREAM_SUBJECTS", "", &mc->stream_subjects)))
      return rc;
    if (!*mc->stream_subjects)
      mc->stream_subjects = NULL;
    bool js;
    if ((rc = tl_config_bool(cfg, "NATS_JETSTREAM", true, &js)))
      return rc;
    mc->nats_core = !js;
    break;
  }
  case TL_MQ_MEMORY:
    break;
  }
  if ((rc = tl_config_string(cfg, "MQ_DEAD_LETTER_PREFIX", "trellis", &mc->dead_letter_prefix)))
    return rc;
  if (tl__mq_name_check(mc->dead_letter_prefix, false, "MQ_DEAD_LETTER_PREFIX"))
    return TL_EINVAL;
  int64_t v;
  if ((rc = tl_config_duration(cfg, "MQ_PUBLISH_TIMEOUT", 10000000, &mc->publish_timeout_us)))
    return rc;
  if (mc->publish_timeout_us == 0)
    return tl_error_set(TL_EINVAL, "MQ_PUBLISH_TIMEOUT: must be more than 0");
  if ((rc = tl_config_duration(cfg, "MQ_DRAIN_TIMEOUT", 10000000, &mc->drain_timeout_us)))
    return rc;
  if ((rc = tl_config_int(cfg, "MQ_MAX_IN_FLIGHT", 1024, 1, 1000000, &v)))
    return rc;
  mc->max_in_flight = (unsigned)v;
  if ((rc = tl_config_int(cfg, "MQ_QUEUE_CAPACITY", 4096, 16, 1 << 24, &v)))
    return rc;
  mc->queue_capacity = (unsigned)v;
  return 0;
}

/* Copy the config, strings into one block, defaults applied. */
static int config_copy(tl_mq *mq, const tl_mq_config *in)
{
  tl_mq_config c = *in;
  if (!c.topic) c.topic = "events";
  if (!c.exchange) c.exchange = "trellis";
  if (!c.stream) c.stream = "TRELLIS";
  if (!c.stream_subjects) c.stream_subjects = "";
  if (!c.dead_letter_prefix) c.dead_letter_prefix = "trellis";
  if (!c.client_name) c.client_name = "trellis";
  if (!c.url && c.type == TL_MQ_MEMORY) c.url = "memory://default";
  if (c.publish_timeout_us <= 0) c.publish_timeout_us = 10000000;
  if (c.drain_timeout_us <= 0) c.drain_timeout_us = 10000000;
  if (!c.max_in_flight) c.max_in_flight = 1024;
  if (!c.queue_capacity) c.queue_capacity = 4096;
  if (!c.linger_ms) c.linger_ms = 5;
  if (c.linger_ms < 0) c.linger_ms = 0;
  if (!c.reconnect.base_us) c.reconnect.base_us = 100000;
  if (!c.reconnect.cap_us) c.reconnect.cap_us = 5000000;
  if (!c.metrics) c.metrics = tl_metrics_default();

  const char **fields[] = { &c.brokers, &c.url, &c.topic, &c.exchange, &c.stream,
                            &c.stream_subjects, &c.dead_letter_prefix, &c.client_name };
  size_t total = 0;
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (*fields[i])
      total += strlen(*fields[i]) + 1;
  mq->strings = malloc(total ? total : 1);
  if (!mq->strings)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  char *p = mq->strings;
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (!*fields[i])
      continue;
    size_t n = strlen(*fields[i]) + 1;
    memcpy(p, *fields[i], n);
    *fields[i] = p;
    p += n;
  }
  mq->cfg = c;
  return 0;
}

/* ---- handles ---- */

int tl_mq_open(tl_mq **out, const tl_mq_config *cfg)
{
  if (!out || !cfg)
    return tl_error_set(TL_EINVAL, "tl_mq_open: NULL argument");
  *out = NULL;
  const struct tl__mq_backend *be = backend_for(cfg->type);
  if (!be)
    return tl_error_set(TL_EINVAL, "mq: unknown backend type %d", (int)cfg->type);
  if (cfg->dead_letter_prefix &&
      tl__mq_name_check(cfg->dead_letter_prefix, false, "dead_letter_prefix"))
    return TL_EINVAL;
  tl_mq *mq = calloc(1, sizeof *mq);
  if (!mq)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  mq->be = be;
  pthread_mutex_init(&mq->mu, NULL);
  pthread_mutex_init(&mq->stats_mu, NULL);
  tl__cond_init_mono(&mq->cond);
  int rc = config_copy(mq, cfg);
  if (!rc)
    rc = register_metrics(mq);
  if (!rc) {
    mq->stats_other = stats_new(mq, "other", 5);
    if (!mq->stats_other)
      rc = tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  if (!rc)
    rc = be->open(mq);
  if (rc) {
    free(mq->stats_other);
    free(mq->strings);
    pthread_mutex_destroy(&mq->mu);
    pthread_mutex_destroy(&mq->stats_mu);
    pthread_cond_destroy(&mq->cond);
    free(mq);
    return rc;
  }
  tl_log(TL_LOG_DEBUG, "mq: open", TL_F_STR("backend", be->name));
  *out = mq;
  return 0;
}

tl_mq_type tl_mq_get_type(const tl_mq *mq) { return mq ? mq->cfg.type : TL_MQ_MEMORY; }

int tl_mq_ready(tl_mq *mq)
{
  if (!mq)
    return tl_error_set(TL_EINVAL, "tl_mq_ready: NULL handle");
  pthread_mutex_lock(&mq->mu);
  bool closing = mq->closing;
  pthread_mutex_unlock(&mq->mu);
  if (closing)
    return tl_error_set(TL_ECONNECT, "mq: closing");
  return mq->be->ready(mq);
}

int tl_mq_close(tl_mq *mq)
{
  if (!mq)
    return 0;
  pthread_mutex_lock(&mq->mu);
  mq->closing = true;
  pthread_cond_broadcast(&mq->cond);
  while (mq->subscribing > 0)
    pthread_cond_wait(&mq->cond, &mq->mu);
  pthread_mutex_unlock(&mq->mu);
  for (;;) {
    pthread_mutex_lock(&mq->mu);
    tl_mq_sub *s = mq->subs;
    pthread_mutex_unlock(&mq->mu);
    if (!s)
      break;
    tl_mq_unsubscribe(s);
  }
  int64_t deadline = tl__mq_deadline(mq->cfg.drain_timeout_us);
  int rc = 0;
  pthread_mutex_lock(&mq->mu);
  while (mq->in_flight > 0)
    if (tl__mq_cond_wait_until(&mq->cond, &mq->mu, deadline) == ETIMEDOUT)
      break;
  unsigned left = mq->in_flight;
  pthread_mutex_unlock(&mq->mu);
  int brc = mq->be->close(mq, deadline);
  if (left)
    rc = tl_error_set(TL_ETIMEOUT, "mq: %u publishes unconfirmed at close", left);
  else if (brc)
    rc = brc;
  /* The backend completed every publish; wait for the last callbacks. */
  pthread_mutex_lock(&mq->mu);
  while (mq->in_flight > 0)
    pthread_cond_wait(&mq->cond, &mq->mu);
  pthread_mutex_unlock(&mq->mu);
  for (unsigned i = 0; i < TL__MQ_STATS_SLOTS; i++)
    free(atomic_load(&mq->stats[i]));
  free(mq->stats_other);
  free(mq->strings);
  pthread_mutex_destroy(&mq->mu);
  pthread_mutex_destroy(&mq->stats_mu);
  pthread_cond_destroy(&mq->cond);
  free(mq);
  return rc;
}

/* ---- publishing ---- */

struct tl__mq_pub {
  tl_mq *mq;
  tl_mq_publish_cb cb;
  void *ctx;
  tl__mq_stats *st;
  int64_t start_us;
  char id[TL_UUID_STRLEN];
  /* batch publishes: where to report, or NULL */
  struct batch *batch;
  size_t index;
};

struct batch {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  size_t left;
  int *status;
};

static void record_publish(tl__mq_stats *st, int status, int64_t start_us)
{
  if (status == 0) {
    tl_series_inc(st->published);
    int64_t d = tl_time_now_us() - start_us;
    tl_series_observe(st->publish_seconds, d > 0 ? (double)d / 1e6 : 0.0);
  } else {
    tl_series_inc(st->publish_failed);
  }
}

/* An in-process enqueue that did not wait takes well under the first
 * histogram bucket (10 µs): count it there without a second clock read. */
static void record_sync_publish(tl__mq_stats *st, int status, const tl__mq_out *o)
{
  if (status == 0 && !o->waited) {
    tl_series_inc(st->published);
    tl_series_observe(st->publish_seconds, 0.0);
    return;
  }
  record_publish(st, status, o->published_us);
}

void tl__mq_pub_done(tl__mq_pub *p, int status)
{
  tl_mq *mq = p->mq;
  record_publish(p->st, status, p->start_us);
  if (p->cb)
    p->cb(status, p->id, p->ctx);
  struct batch *b = p->batch;
  size_t index = p->index;
  if (!b)
    free(p);
  pthread_mutex_lock(&mq->mu);
  mq->in_flight--;
  /* Wake waiting publishers once a quarter of the window is free, not at
   * every confirm: they then send a burst instead of one each. */
  unsigned max = mq->cfg.max_in_flight, low = max >= 4 ? max - max / 4 : max - 1;
  if ((mq->window_waiters && mq->in_flight <= low) || mq->in_flight == 0 || mq->closing)
    pthread_cond_broadcast(&mq->cond);
  pthread_mutex_unlock(&mq->mu);
  if (b) {
    /* last: the batch's caller frees the records once left reaches 0 */
    pthread_mutex_lock(&b->mu);
    b->status[index] = status;
    if (--b->left == 0)
      pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
  }
}

static int check_open(tl_mq *mq)
{
  if (!mq)
    return tl_error_set(TL_EINVAL, "mq: NULL handle");
  return 0;
}

int tl_mq_publish_msg(tl_mq *mq, const tl_mq_message *m)
{
  int rc = check_open(mq);
  if (rc)
    return rc;
  tl__mq_out o;
  if ((rc = tl__mq_out_init(&o, m)))
    return rc;
  tl__mq_stats *st = tl__mq_stats_for(mq, o.subject, o.subject_len);
  if (mq->be->sync_publish) {
    rc = mq->be->publish(mq, &o, NULL, 0);
    record_sync_publish(st, rc, &o);
    return rc;
  }
  rc = mq->be->publish(mq, &o, NULL, tl__mq_deadline(mq->cfg.publish_timeout_us));
  record_publish(st, rc, o.published_us);
  return rc;
}

int tl_mq_publish(tl_mq *mq, const char *subject, const void *data, size_t len)
{
  tl_mq_message m = { .subject = subject, .data = data, .len = len };
  return tl_mq_publish_msg(mq, &m);
}

int64_t tl__mq_deadline_of(const tl_mq *mq, int64_t deadline)
{
  return deadline ? deadline : tl__mq_deadline(mq->cfg.publish_timeout_us);
}

/* Take a slot of the in-flight window. locks: takes mq->mu */
static int window_take(tl_mq *mq, int64_t *deadline)
{
  pthread_mutex_lock(&mq->mu);
  while (mq->in_flight >= mq->cfg.max_in_flight && !mq->closing) {
    *deadline = tl__mq_deadline_of(mq, *deadline);
    mq->window_waiters++;
    int w = tl__mq_cond_wait_until(&mq->cond, &mq->mu, *deadline);
    mq->window_waiters--;
    if (w == ETIMEDOUT && mq->in_flight >= mq->cfg.max_in_flight) {
      pthread_mutex_unlock(&mq->mu);
      return tl_error_set(TL_ETIMEOUT, "mq: %u publishes awaiting confirms (max_in_flight)",
                          mq->cfg.max_in_flight);
    }
  }
  if (mq->closing) {
    pthread_mutex_unlock(&mq->mu);
    return tl_error_set(TL_ECLOSED, "mq: closing");
  }
  mq->in_flight++;
  pthread_mutex_unlock(&mq->mu);
  return 0;
}

static void window_give(tl_mq *mq)
{
  pthread_mutex_lock(&mq->mu);
  mq->in_flight--;
  pthread_cond_broadcast(&mq->cond);
  pthread_mutex_unlock(&mq->mu);
}

int tl_mq_publish_async(tl_mq *mq, const tl_mq_message *m, tl_mq_publish_cb cb, void *ctx)
{
  int rc = check_open(mq);
  if (rc)
    return rc;
  tl__mq_out o;
  if ((rc = tl__mq_out_init(&o, m)))
    return rc;
  tl__mq_stats *st = tl__mq_stats_for(mq, o.subject, o.subject_len);
  if (mq->be->sync_publish) {
    /* Accepted or refused before returning: no record needed. */
    rc = mq->be->publish(mq, &o, NULL, 0);
    record_sync_publish(st, rc, &o);
    if (rc == 0 && cb)
      cb(0, tl__mq_out_id(&o), ctx);
    return rc;
  }
  int64_t deadline = 0;
  if ((rc = window_take(mq, &deadline))) {
    tl_series_inc(st->publish_failed);
    return rc;
  }
  tl__mq_pub *p = malloc(sizeof *p);
  if (!p) {
    window_give(mq);
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  *p = (tl__mq_pub){ .mq = mq, .cb = cb, .ctx = ctx, .st = st, .start_us = o.published_us };
  memcpy(p->id, tl__mq_out_id(&o), sizeof p->id);
  rc = mq->be->publish(mq, &o, p, deadline);
  if (rc) {
    free(p);
    window_give(mq);
    tl_series_inc(st->publish_failed);
  }
  return rc;
}

int tl_mq_flush(tl_mq *mq, int64_t timeout_us)
{
  int rc = check_open(mq);
  if (rc)
    return rc;
  int64_t deadline = tl__mq_deadline(timeout_us);
  pthread_mutex_lock(&mq->mu);
  while (mq->in_flight > 0) {
    if (tl__mq_cond_wait_until(&mq->cond, &mq->mu, deadline) == ETIMEDOUT && mq->in_flight) {
      unsigned n = mq->in_flight;
      pthread_mutex_unlock(&mq->mu);
      return tl_error_set(TL_ETIMEOUT, "mq: %u publishes still unconfirmed", n);
    }
  }
  pthread_mutex_unlock(&mq->mu);
  return 0;
}

int tl_mq_publish_batch(tl_mq *mq, const tl_mq_message *msgs, size_t n, int *status)
{
  int rc = check_open(mq);
  if (rc)
    return rc;
  if (n && !msgs)
    return tl_error_set(TL_EINVAL, "tl_mq_publish_batch: msgs is NULL");
  if (n == 0)
    return 0;
  if (mq->be->sync_publish) {
    int first = 0;
    for (size_t i = 0; i < n; i++) {
      int r = tl_mq_publish_msg(mq, &msgs[i]);
      if (status)
        status[i] = r;
      if (r && !first)
        first = tl_error_wrap(r, "message %zu of %zu", i + 1, n);
    }
    return first;
  }
  int *st = status ? status : calloc(n, sizeof *st);
  tl__mq_pub *recs = calloc(n, sizeof *recs);
  if (!st || !recs) {
    if (!status)
      free(st);
    free(recs);
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  struct batch b = { .left = n, .status = st };
  pthread_mutex_init(&b.mu, NULL);
  pthread_cond_init(&b.cond, NULL);
  int64_t deadline = tl__mq_deadline(mq->cfg.publish_timeout_us);
  size_t failed_now = 0;
  for (size_t i = 0; i < n; i++) {
    tl__mq_out o;
    int r = tl__mq_out_init(&o, &msgs[i]);
    tl__mq_stats *stt = r ? NULL : tl__mq_stats_for(mq, o.subject, o.subject_len);
    if (!r)
      r = window_take(mq, &deadline);
    if (!r) {
      recs[i] = (tl__mq_pub){ .mq = mq, .st = stt, .start_us = o.published_us, .batch = &b,
                              .index = i };
      memcpy(recs[i].id, tl__mq_out_id(&o), sizeof recs[i].id);
      r = mq->be->publish(mq, &o, &recs[i], deadline);
      if (r)
        window_give(mq);
    }
    if (r) {
      if (stt)
        tl_series_inc(stt->publish_failed);
      st[i] = r;
      failed_now++;
    }
  }
  pthread_mutex_lock(&b.mu);
  b.left -= failed_now;
  while (b.left > 0)
    pthread_cond_wait(&b.cond, &b.mu);
  pthread_mutex_unlock(&b.mu);
  pthread_mutex_destroy(&b.mu);
  pthread_cond_destroy(&b.cond);
  int first = 0;
  size_t bad = 0;
  for (size_t i = 0; i < n; i++)
    if (st[i]) {
      if (!first)
        first = st[i];
      bad++;
    }
  if (first)
    tl_error_set(first, "mq: %zu of %zu messages not accepted (first: %s)", bad, n,
                 tl_strerror(first));
  free(recs);
  if (!status)
    free(st);
  return first;
}

int tl__mq_dlq_subject(const tl_mq *mq, const char *subject, char *buf, size_t size)
{
  int n = snprintf(buf, size, "%s.dlq.%s", mq->cfg.dead_letter_prefix, subject);
  return n < 0 || (size_t)n >= size ? -1 : n;
}
