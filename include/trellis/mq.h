/* trellis: messaging. One publish/subscribe API over Kafka (librdkafka),
 * RabbitMQ (librabbitmq), NATS (libnats, core and JetStream) and an
 * in-process bus, with the same semantics on all of them (docs/messaging.md).
 *
 *   tl_mq_config mc = { .type = TL_MQ_KAFKA, .brokers = "localhost:9092", .topic = "events" };
 *   tl_mq *mq;  tl_mq_open(&mq, &mc);
 *   tl_mq_publish(mq, "user.created", "{\"user_id\":\"123\"}", 17);
 *   tl_mq_subscribe(mq, "user.*", on_message, ctx, &sub_opts, &sub);
 *
 * Subjects are dot-separated tokens ("user.created"). Patterns may use "*"
 * (exactly one token) and ">" (one or more tokens, last token only); a
 * wildcard counts only as a whole token. */
#ifndef TRELLIS_MQ_H
#define TRELLIS_MQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "resilience.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_mq tl_mq;         /* a connection to one backend */
typedef struct tl_mq_sub tl_mq_sub; /* one subscription */

/* The backend. TL_MQ_MEMORY (zero) is the in-process bus. */
typedef enum tl_mq_type {
  TL_MQ_MEMORY = 0,
  TL_MQ_KAFKA = 1,
  TL_MQ_RABBITMQ = 2,
  TL_MQ_NATS = 3
} tl_mq_type;

/* Longest subject or pattern, in bytes (AMQP's routing key limit). */
#define TL_MQ_SUBJECT_MAX 255
/* Most headers a message may carry, including the ones trellis adds. */
#define TL_MQ_HEADERS_MAX 64

/* How to reach the backend; zero fields take the defaults in brackets.
 * tl_mq_open() copies everything it needs. */
typedef struct tl_mq_config {
  tl_mq_type type;
  /* Kafka bootstrap list "host:port,host:port", or "mock://N" for
   * librdkafka's in-process mock cluster with N brokers (shared by every
   * handle of the process that names the same URL). [none: required] */
  const char *brokers;
  /* RabbitMQ "amqp://user:pass@host:port/vhost", NATS "nats://host:port"
   * (several comma-separated), memory "memory://NAME": handles naming the
   * same bus share it ["memory://default"]. */
  const char *url;
  /* Kafka: the one topic every subject goes to ["events"]. */
  const char *topic;
  /* RabbitMQ: the durable topic exchange ["trellis"]. */
  const char *exchange;
  /* NATS: the JetStream stream ["TRELLIS"], and a fixed, comma-separated
   * list of the subjects it stores [NULL: the stream grows by first token
   * as subjects are used: "user.created" adds "user" and "user.>"]. */
  const char *stream;
  const char *stream_subjects;
  /* NATS: core NATS only, without JetStream: at-most-once, no durable
   * groups; redelivery happens in-process only. [false] */
  bool nats_core;
  /* Dead letters go to "<dead_letter_prefix>.dlq.<subject>" ["trellis"]. */
  const char *dead_letter_prefix;
  /* How long tl_mq_publish waits for the broker's confirm, and how long an
   * async publish waits for room in the window [10 s]. */
  int64_t publish_timeout_us;
  /* Async publishes awaiting their confirm, at most [1024]. */
  unsigned max_in_flight;
  /* Memory bus: messages queued per subscription (split over its lanes)
   * before publishers wait (backpressure) [4096]. */
  unsigned queue_capacity;
  /* tl_mq_close: how long to wait for handlers and unconfirmed
   * publishes [10 s]. */
  int64_t drain_timeout_us;
  /* Kafka: the producer's linger.ms [5]; -1 means 0. */
  int linger_ms;
  /* Delay between reconnect attempts [base 100 ms, cap 5 s]. */
  tl_backoff reconnect;
  /* A name shown to the broker (connection name, client.id) ["trellis"]. */
  const char *client_name;
  /* Where the counters go [tl_metrics_default()]. */
  tl_metrics *metrics;
} tl_mq_config;

/* Fill `mc` from configuration keys: MESSAGE_QUEUE_TYPE (memory, kafka,
 * rabbitmq, nats; default memory), KAFKA_BROKERS, KAFKA_TOPIC, RABBITMQ_URL,
 * RABBITMQ_EXCHANGE, NATS_URL, NATS_STREAM, NATS_STREAM_SUBJECTS,
 * NATS_JETSTREAM, MQ_MEMORY_URL, MQ_DEAD_LETTER_PREFIX, MQ_PUBLISH_TIMEOUT,
 * MQ_MAX_IN_FLIGHT, MQ_QUEUE_CAPACITY, MQ_DRAIN_TIMEOUT. Strings are
 * borrowed from `cfg` (keep it alive until tl_mq_open). Returns 0 or
 * TL_EINVAL naming the key ("KAFKA_BROKERS: empty list"). */
int tl_mq_config_from(const tl_config *cfg, tl_mq_config *mc);

/* "memory", "kafka", "rabbitmq", "nats" ("unknown" otherwise). */
const char *tl_mq_type_name(tl_mq_type type);

/* Connect. The first connection must succeed within publish_timeout;
 * later outages are retried in the background with backoff, re-declaring
 * exchanges, streams and subscriptions. Returns 0, TL_EINVAL (bad
 * config), TL_ECONNECT or TL_ENOMEM. `*out` is freed by tl_mq_close. */
int tl_mq_open(tl_mq **out, const tl_mq_config *cfg);

/* Stop every subscription (handlers running now finish; messages not yet
 * handled stay unacknowledged for redelivery), flush unconfirmed
 * publishes, disconnect and free. Waits at most drain_timeout for the
 * flush; returns 0, or TL_ETIMEOUT when publishes were still unconfirmed
 * (their callbacks then got TL_ECLOSED). NULL-safe. Not from a handler. */
int tl_mq_close(tl_mq *mq);

/* 0 when connected and usable, else TL_ECONNECT with the reason (for
 * /health/ready). Any thread; does not block on the network. */
int tl_mq_ready(tl_mq *mq);

/* The backend this handle talks to. */
tl_mq_type tl_mq_get_type(const tl_mq *mq);

/* One header. Keys are compared ignoring case. */
typedef struct tl_mq_header {
  const char *key;
  const char *value;
} tl_mq_header;

/* A message to publish. Everything is borrowed for the duration of the
 * call (copied before it returns). */
typedef struct tl_mq_message {
  const char *subject;       /* a concrete subject: no wildcards */
  const void *data;          /* payload, any bytes */
  size_t len;
  /* Messages with the same key are handled in order; NULL: the subject. */
  const char *key;
  /* Extra headers; "traceparent" and "x-request-id" here replace the
   * ones taken from the thread's log context. */
  const tl_mq_header *headers;
  size_t nheaders;
  /* The message id consumers get (tl_mq_msg.id, header "message-id";
   * also RabbitMQ's message_id and NATS's Nats-Msg-Id, so JetStream drops
   * a re-publish within its duplicate window): 1 to 36 bytes without CR
   * or LF, e.g. an event id, to de-duplicate on. NULL: a new UUIDv7. */
  const char *id;
} tl_mq_message;

/* Publish and wait until the broker has accepted it (publisher confirm,
 * JetStream ack, Kafka acks=all; enqueued for the memory bus). Returns 0,
 * TL_EINVAL (bad subject: "subject 'a..b': empty token"), TL_ETOOBIG,
 * TL_ETIMEOUT (no confirm within publish_timeout), TL_ECONNECT (broker
 * down), TL_ERETRY (broker refused, retry), TL_ECLOSED. Any thread. */
int tl_mq_publish(tl_mq *mq, const char *subject, const void *data, size_t len);

/* tl_mq_publish with a key and headers. */
int tl_mq_publish_msg(tl_mq *mq, const tl_mq_message *msg);

/* Completion of an async publish: `status` is 0 when the broker accepted
 * the message, else a TL_E* code. `msg_id` is the message-id header,
 * borrowed until the callback returns. Runs on a library thread (the
 * backend's I/O thread; for the memory bus, the publishing thread before
 * tl_mq_publish_async returns), once per accepted call. Keep it short. */
typedef void (*tl_mq_publish_cb)(int status, const char *msg_id, void *ctx);

/* Publish without waiting for the confirm. Waits up to publish_timeout
 * for room when max_in_flight publishes are unconfirmed (TL_ETIMEOUT).
 * On 0, `cb` (may be NULL) runs exactly once; on an error it never runs.
 * `msg` is copied. Any thread. */
int tl_mq_publish_async(tl_mq *mq, const tl_mq_message *msg, tl_mq_publish_cb cb,
                        void *ctx);

/* Wait until every async publish of this handle has completed. Returns 0
 * or TL_ETIMEOUT. Any thread. */
int tl_mq_flush(tl_mq *mq, int64_t timeout_us);

/* Publish `n` messages and wait for all confirms (pipelined: much faster
 * than n calls to tl_mq_publish_msg). Returns 0 when all were accepted,
 * else the first failure's status; `status` (NULL or n entries) gets each
 * message's status. Any thread. */
int tl_mq_publish_batch(tl_mq *mq, const tl_mq_message *msgs, size_t n, int *status);

/* A delivered message, borrowed until the handler returns. */
typedef struct tl_mq_msg {
  const char *subject;       /* the concrete subject, never the pattern */
  const char *key;           /* the ordering key (the subject by default) */
  const void *data;
  size_t len;
  /* Every header: the publisher's, plus "message-id" (a UUIDv7),
   * "published-us" (µs since the epoch), "traceparent" and, when the
   * publisher had one, "x-request-id". */
  const tl_mq_header *headers;
  size_t nheaders;
  const char *id;            /* the message-id header */
  int64_t published_us;      /* the published-us header, 0 if absent */
  unsigned delivery;         /* 1 on the first delivery, then 2, 3, ... */
} tl_mq_msg;

/* The value of header `key` (any case) or NULL. Borrowed from `msg`. */
const char *tl_mq_msg_header(const tl_mq_msg *msg, const char *key);

/* What a handler returns. Any other nonzero value (a TL_E* status, for
 * one) means TL_MQ_RETRY. */
enum {
  TL_MQ_ACK = 0,    /* done: acknowledge */
  TL_MQ_RETRY = 1,  /* deliver it again after a backoff */
  TL_MQ_REJECT = 2  /* never retry: dead-letter it now */
};

/* Handles one message. Runs on a library thread of the subscription
 * (never two at once for the same key; at most `concurrency` at once per
 * subscription); the thread's log context carries the message's
 * x-request-id and trace id meanwhile. `msg` is borrowed until it returns.
 * It must not call tl_mq_unsubscribe on its own subscription. */
typedef int (*tl_mq_handler)(const tl_mq_msg *msg, void *ctx);

/* Subscription options; zero fields take the defaults in brackets. */
typedef struct tl_mq_sub_opts {
  /* Competing consumers: subscriptions with the same group and pattern
   * share the messages, each going to one member; the group is durable
   * (it keeps messages while no member runs, except on the memory bus).
   * NULL: every subscription gets every message published after it
   * started. Letters, digits, '_' and '-'. [NULL] */
  const char *group;
  /* Handlers in flight at once; per-key order is kept. [1] */
  unsigned concurrency;
  /* After this many failed deliveries the message goes to the dead-letter
   * subject; -1: retry forever. [5] */
  int max_deliveries;
  /* Delay before a redelivery: attempt n waits tl_backoff_delay(n)
   * [base 100 ms, cap 10 s]. */
  tl_backoff retry;
  /* Messages the broker may hand out before they are acknowledged. [256] */
  unsigned prefetch;
  /* JetStream: how long the server waits for an ack before redelivering.
   * [30 s] */
  int64_t ack_wait_us;
} tl_mq_sub_opts;

/* Start delivering messages whose subject matches `pattern` to `handler`.
 * When it returns 0, every message published afterwards that matches is
 * delivered (at least once). `opts` may be NULL (defaults) and is copied.
 * Returns 0, TL_EINVAL (bad pattern or group), TL_ECONNECT, TL_ECLOSED.
 * If it fails, the handler never runs. `*out` is freed by
 * tl_mq_unsubscribe or tl_mq_close. Any thread. */
int tl_mq_subscribe(tl_mq *mq, const char *pattern, tl_mq_handler handler, void *ctx,
                    const tl_mq_sub_opts *opts, tl_mq_sub **out);

/* Stop the subscription: no handler starts after it returns; a running
 * handler is waited for; queued messages stay unacknowledged (a group's
 * other members get them). Frees `sub`. NULL-safe. Returns 0 or
 * TL_ESTATE when called from the subscription's own handler. Any thread,
 * but not at the same time as tl_mq_close of its handle. */
int tl_mq_unsubscribe(tl_mq_sub *sub);

/* Subject grammar, as the front end applies it before any backend sees a
 * name. tl_mq_subject_valid: a concrete subject (no wildcards). Returns 0
 * or TL_EINVAL with the reason ("subject 'a..b': empty token"). */
int tl_mq_subject_valid(const char *subject);
/* A subscription pattern: "*" and ">" allowed as whole tokens, ">" last. */
int tl_mq_pattern_valid(const char *pattern);
/* Does `subject` match `pattern`? Both must be valid. No allocation. */
bool tl_mq_subject_match(const char *pattern, const char *subject);

#ifdef __cplusplus
}
#endif
#endif
