/* Messaging internals: the front end and the backend function table.
 * Not installed. */
#ifndef TRELLIS_MQ_INT_H
#define TRELLIS_MQ_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <trellis/clock.h>
#include <trellis/error.h>
#include <trellis/log.h>
#include <trellis/metrics.h>
#include <trellis/mq.h>

#include "core/core_int.h"

/* Names of the headers trellis writes. */
#define TL__MQ_H_ID "message-id"
#define TL__MQ_H_PUBLISHED "published-us"
#define TL__MQ_H_TRACEPARENT "traceparent"
#define TL__MQ_H_REQUEST_ID "x-request-id"
/* Carried only where the broker has no field for it (stripped on receipt). */
#define TL__MQ_H_SUBJECT "subject"
#define TL__MQ_H_KEY "key"
/* Added to dead letters. */
#define TL__MQ_H_DLQ_REASON "dead-letter-reason"
#define TL__MQ_H_DLQ_SUBJECT "original-subject"
#define TL__MQ_H_DLQ_ID "original-message-id"

/* ---- subjects (subject.c) ---- */

/* Validate a subject (wildcards == false) or pattern. `what` names it in
 * the message ("subject", "pattern"). 0 or TL_EINVAL. */
int tl__mq_name_check(const char *name, bool wildcards, const char *what);
/* Same as tl_mq_subject_match with an explicit subject length. */
bool tl__mq_match(const char *pattern, const char *subject, size_t subject_len);
/* The AMQP topic binding key for a NATS pattern: '*' stays, a final '>'
 * becomes "*.#". Returns the length, or -1 if `size` is too small. */
int tl__mq_pattern_to_amqp(const char *pattern, char *buf, size_t size);
/* Length of the first token (the subject prefix used as a metric label). */
size_t tl__mq_prefix_len(const char *subject);
/* A 64-bit FNV-1a hash. */
uint64_t tl__mq_hash(const void *data, size_t len);

/* ---- outgoing messages ---- */

/* A validated message, built by the front end. The trellis headers are
 * kept in binary form (the memory bus copies them as they are) and turned
 * into text only when a backend asks for tl__mq_out_headers(). Borrowed
 * by the backend for the duration of publish. */
typedef struct tl__mq_out {
  const char *subject;
  size_t subject_len;
  const char *key;        /* never NULL */
  size_t key_len;
  bool key_is_subject;
  const void *data;
  size_t len;
  const tl_mq_header *user; /* the publisher's headers, traceparent and */
  size_t nuser;             /* x-request-id excluded (see below) */
  uint8_t id[16];           /* UUIDv7, unless id_given */
  bool id_given;            /* the publisher's id is in id_text */
  bool id_ready;            /* id_text holds the id */
  int64_t published_us;
  uint8_t trace_id[16], span_id[8], trace_flags;
  const char *request_id;   /* borrowed; NULL when none */
  size_t request_id_len;
  /* Set by a sync_publish backend that had to wait (backpressure): only
   * then is the publish latency worth a second clock read. */
  bool waited;
  /* Text forms, filled by tl__mq_out_headers. */
  bool formatted;
  char id_text[TL_UUID_STRLEN];
  char published_text[24];
  char traceparent[56];
  size_t nhdrs;
  tl_mq_header hdrs[TL_MQ_HEADERS_MAX];
  /* indices in `user` of a traceparent / x-request-id taken out, or -1 */
  int skip_tp, skip_rid;
} tl__mq_out;

static inline bool tl__mq_out_skip(const tl__mq_out *o, size_t i)
{
  return (int)i == o->skip_tp || (int)i == o->skip_rid;
}

/* The message id of `o` as text (the publisher's, or the UUIDv7
 * formatted on first use). Valid while `o` is. */
const char *tl__mq_out_id(tl__mq_out *o);

/* Every header of `o` as text: message-id, published-us, traceparent,
 * x-request-id (when set), then the publisher's. Valid while `o` is. */
const tl_mq_header *tl__mq_out_headers(tl__mq_out *o, size_t *n);

/* "00-<trace>-<span>-<flags>" into out (56 bytes). */
void tl__mq_fmt_traceparent(const uint8_t trace[16], const uint8_t span[8], uint8_t flags,
                            char out[56]);
/* Parse a W3C traceparent. 0 or -1. */
int tl__mq_parse_traceparent(const char *text, uint8_t trace[16], uint8_t span[8],
                             uint8_t *flags);

/* One async publish in flight: the front end's record, passed to the
 * backend, which calls tl__mq_pub_done exactly once. */
typedef struct tl__mq_pub tl__mq_pub;

/* ---- deliveries ---- */

/* One message handed by a backend to the front end. The backend fills
 * `msg` (pointing into its own buffers, alive until settle) and
 * `broker_count` (how many times the broker has delivered it, >= 1). */
typedef struct tl__mq_delivery {
  tl_mq_msg msg;              /* first: tl__mq_msg_finish casts back */
  const char *traceparent;    /* header values, or NULL */
  const char *request_id;
  unsigned broker_count;
  unsigned attempts;            /* front end: handler runs so far here */
  struct tl__mq_delivery *next; /* front end: lane queue link */
} tl__mq_delivery;

/* How a delivery ended, for the backend's settle. */
enum {
  TL__MQ_SETTLE_ACK = 0,     /* handled, or dead-lettered: acknowledge */
  TL__MQ_SETTLE_REQUEUE = 1  /* not handled (subscription stopping): leave
                                for redelivery */
};

/* ---- the backend table ---- */

struct tl__mq_backend {
  const char *name;
  /* Connect using mq->cfg; set mq->impl. */
  int (*open)(tl_mq *mq);
  /* Flush unconfirmed publishes until `deadline` (mono µs), fail the rest
   * with TL_ECLOSED, disconnect, free mq->impl. Subscriptions are gone. */
  int (*close)(tl_mq *mq, int64_t deadline);
  /* 0 or TL_ECONNECT with a message. Must not block. */
  int (*ready)(tl_mq *mq);
  /* `deadline` (mono µs) may be 0: see tl__mq_deadline_of.
   * pub == NULL: block until confirmed or `deadline`; return the status.
   * pub != NULL: return 0 once sent (then call tl__mq_pub_done(pub, st)
   * exactly once, from any thread, possibly before returning), or an
   * error (then never call it). */
  int (*publish)(tl_mq *mq, tl__mq_out *m, tl__mq_pub *pub, int64_t deadline);
  /* Publishes complete before publish returns (no I/O thread). */
  bool sync_publish;
  /* The backend runs its own handler threads (calls tl__mq_dispatch);
   * the front end makes no worker lanes for it. */
  bool own_workers;
  /* Start consuming sub->pattern for sub; set sub->impl. When it returns
   * 0, later publishes are delivered through tl__mq_deliver. */
  int (*subscribe)(tl_mq_sub *sub);
  /* Stop calling tl__mq_deliver; return when no call is running. */
  void (*sub_stop)(tl_mq_sub *sub);
  /* Every delivery is settled: release everything of sub->impl. */
  void (*sub_free)(tl_mq_sub *sub);
  /* Acknowledge or give back one delivery (any thread). Also frees it. */
  void (*settle)(tl_mq_sub *sub, tl__mq_delivery *d, int how);
  /* Optional: tell the broker a delivery is still being worked on. */
  void (*progress)(tl_mq_sub *sub, tl__mq_delivery *d);
};

extern const struct tl__mq_backend tl__mq_memory;
extern const struct tl__mq_backend tl__mq_kafka;
extern const struct tl__mq_backend tl__mq_rabbitmq;
extern const struct tl__mq_backend tl__mq_nats;

/* ---- handles ---- */

/* Counters for one (backend, subject prefix). */
typedef struct tl__mq_stats {
  char prefix[48];
  size_t prefix_len;
  tl_series *published, *publish_failed, *delivered, *acked, *redelivered,
      *dead_lettered, *publish_seconds;
} tl__mq_stats;

#define TL__MQ_STATS_SLOTS 64

struct tl_mq {
  const struct tl__mq_backend *be;
  tl_mq_config cfg;          /* strings point into `strings` */
  char *strings;
  void *impl;                /* the backend's state */

  pthread_mutex_t mu;        /* guards subs, in_flight, closing */
  pthread_cond_t cond;       /* in_flight dropped */
  tl_mq_sub *subs;
  unsigned in_flight;
  unsigned window_waiters;   /* publishers waiting for room */
  unsigned subscribing;      /* tl_mq_subscribe calls running */
  bool closing;

  /* Metric families and a lock-free cache of per-prefix series. */
  tl_metric *m_published, *m_publish_failed, *m_delivered, *m_acked, *m_redelivered,
      *m_dead_lettered, *m_publish_seconds;
  pthread_mutex_t stats_mu;  /* serializes inserts into stats */
  _Atomic(tl__mq_stats *) stats[TL__MQ_STATS_SLOTS];
  tl__mq_stats *stats_other;
};

typedef struct tl__mq_lane tl__mq_lane;

struct tl_mq_sub {
  tl_mq *mq;
  tl_mq_sub *next;           /* in mq->subs */
  char pattern[TL_MQ_SUBJECT_MAX + 1];
  char group[65];            /* "" when none */
  tl_mq_handler handler;
  void *ctx;
  tl_mq_sub_opts opts;       /* defaults applied; group points at `group` */
  void *impl;                /* the backend's state */
  atomic_bool stopping;
  /* Worker lanes when opts.concurrency > 1 and the backend does not run
   * its own (the memory bus does). */
  tl__mq_lane *lanes;
  unsigned nlanes;
};

/* ---- front-end services for backends ---- */

/* Pass a delivery to the subscription: with concurrency 1 run it here
 * (handler, retries, dead-letter) and settle it; otherwise queue it on
 * the lane of its key, waiting while that lane is full. Any thread. */
void tl__mq_deliver(tl_mq_sub *sub, tl__mq_delivery *d);

/* Run the handler on `d` until it is acknowledged, dead-lettered, or the
 * subscription stops. Returns TL__MQ_SETTLE_ACK or TL__MQ_SETTLE_REQUEUE.
 * Does not settle. For backends running their own workers. */
int tl__mq_dispatch(tl_mq_sub *sub, tl__mq_delivery *d);

/* Fill msg->id, published_us and the delivery's traceparent/request_id
 * from the headers; drop the transport headers (subject, key, nats-*)
 * from the visible list by compacting `hdrs`. `msg` must be the msg of a
 * tl__mq_delivery. */
void tl__mq_msg_finish(tl_mq_msg *msg, tl_mq_header *hdrs, size_t *nhdrs);

/* Completion of an async publish (exactly once per accepted publish). */
void tl__mq_pub_done(tl__mq_pub *pub, int status);

/* The dead-letter subject of `subject` into buf. -1 when it does not fit. */
int tl__mq_dlq_subject(const tl_mq *mq, const char *subject, char *buf, size_t size);

/* Build a validated outgoing message (used by the front end and tests). */
int tl__mq_out_init(tl__mq_out *o, const tl_mq_message *m);

/* Series for `subject`'s prefix (never NULL). */
tl__mq_stats *tl__mq_stats_for(tl_mq *mq, const char *subject, size_t len);

/* Kafka: the in-process mock cluster of a "mock://N" handle, or NULL.
 * For fault tests (rd_kafka_mock_broker_set_down/up). */
void *tl__mq_kafka_mock_cluster(tl_mq *mq);

/* `deadline` itself, or publish_timeout from now when it is 0 (callers
 * that rarely wait pass 0 to skip reading the clock). */
int64_t tl__mq_deadline_of(const tl_mq *mq, int64_t deadline);

/* A monotonic deadline `us` from now (saturating). */
static inline int64_t tl__mq_deadline(int64_t us)
{
  int64_t now = tl_time_mono_us();
  return us > INT64_MAX - now ? INT64_MAX : now + us;
}

/* Wait on `c` until `deadline` (mono µs). Returns 0 or ETIMEDOUT. */
int tl__mq_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline);
/* Initialize a condition variable on the monotonic clock. */

#endif
