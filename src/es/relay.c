/* The relay: a named subscription that publishes every event to the
 * message queue, waiting for the broker's confirm before the checkpoint
 * moves. A failed publish is retried from that event, so delivery is at
 * least once and in global order. The message id is the event id, so
 * consumers (and JetStream, within its duplicate window) deduplicate on
 * it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <trellis/cqrs.h>
#include <trellis/log.h>

#include "es/es_int.h"

struct tl_relay {
  tl_mq *mq;
  tl_es_sub *sub;
  uint64_t published;
};

static int publish(const tl_event *ev, tl_tx *tx, void *ctx)
{
  (void)tx;
  tl_relay *r = ctx;
  char subject[2 * TL_ES_NAME_MAX + 8], version[24], position[24];
  tl_es_subject(ev->category, ev->event_type, subject, sizeof subject);
  snprintf(version, sizeof version, "%lld", (long long)ev->version);
  snprintf(position, sizeof position, "%lld", (long long)ev->position);
  tl_mq_header h[8];
  size_t n = 0;
  h[n++] = (tl_mq_header){ "event-id", ev->id };
  h[n++] = (tl_mq_header){ "event-type", ev->event_type };
  h[n++] = (tl_mq_header){ "stream", ev->aggregate_id };
  h[n++] = (tl_mq_header){ "stream-version", version };
  h[n++] = (tl_mq_header){ "position", position };
  json_t *meta = ev->metadata ? json_loads(ev->metadata, 0, NULL) : NULL;
  const char *keys[][2] = { { "traceparent", "traceparent" },
                            { "correlation_id", "correlation-id" },
                            { "causation_id", "causation-id" } };
  for (size_t i = 0; i < 3; i++) {
    const char *v = json_string_value(json_object_get(meta, keys[i][0]));
    if (v) h[n++] = (tl_mq_header){ keys[i][1], v };
  }
  tl_mq_message m = { .subject = subject, .data = ev->data, .len = strlen(ev->data),
                      .key = ev->aggregate_id, .headers = h, .nheaders = n, .id = ev->id };
  /* The event's trace (and correlation id as the request id) for this
   * thread's log lines while it is published. */
  tl_log_context_set_traceparent(json_string_value(json_object_get(meta, "correlation_id")),
                                 json_string_value(json_object_get(meta, "traceparent")));
  int rc = tl_mq_publish_msg(r->mq, &m);
  if (rc == 0) {
    r->published++;
    tl_log(TL_LOG_DEBUG, "event published", TL_F_STR("subject", subject),
           TL_F_STR("event_id", ev->id), TL_F_INT("position", ev->position));
  }
  tl_log_context_set(NULL, NULL);
  json_decref(meta);
  return rc;
}

int tl_relay_start(tl_es *es, tl_mq *mq, const tl_relay_opts *opts, tl_relay **out)
{
  if (!es || !mq || !out) return tl_error_set(TL_EINVAL, "relay: a store and a queue are required");
  *out = NULL;
  tl_relay *r = calloc(1, sizeof *r);
  if (!r) return tl_error_set(TL_ENOMEM, "relay: out of memory");
  r->mq = mq;
  tl_es_sub_opts o = {
    .name = opts && opts->name ? opts->name : "trellis-relay",
    .lease_us = opts ? opts->lease_us : 0,
    .retry_us = opts && opts->retry_us > 0 ? opts->retry_us : 500000,
  };
  if (opts) o.filter = opts->filter;
  int rc = tl_es_subscribe(es, &o, publish, r, &r->sub);
  if (rc) {
    free(r);
    return rc;
  }
  *out = r;
  return 0;
}

void tl_relay_stop(tl_relay *r)
{
  if (!r) return;
  tl_es_sub_stop(r->sub);
  free(r);
}
