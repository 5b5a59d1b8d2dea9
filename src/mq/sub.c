/* Subscriptions: running handlers with retries and dead letters, and the
 * worker lanes that give bounded concurrency without losing per-key
 * order. The same code serves every backend. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mq_int.h"

/* The subscription whose handler this thread is running, if any. */
static _Thread_local tl_mq_sub *running_sub;

struct tl__mq_lane {
  pthread_mutex_t mu;
  pthread_cond_t cond;       /* items arrived, room freed, or stop */
  tl__mq_delivery *head, *tail;
  unsigned count, cap;
  bool stop;
  bool started;
  pthread_t thread;
  tl_mq_sub *sub;
};

/* ---- handler runs ---- */

static void set_log_context(const tl__mq_delivery *d)
{
  const char *tp = d->traceparent;
  char trace[33];
  trace[0] = '\0';
  if (tp && tp[0] && tp[1] && tp[2] == '-' && strnlen(tp, 36) >= 35) {
    memcpy(trace, tp + 3, 32);
    trace[32] = '\0';
  }
  tl_log_context_set(d->request_id, trace[0] ? trace : NULL);
}

static bool drop_for_dlq(const char *key)
{
  return !strcasecmp(key, TL__MQ_H_ID) || !strcasecmp(key, TL__MQ_H_PUBLISHED) ||
         !strcasecmp(key, TL__MQ_H_SUBJECT) || !strcasecmp(key, TL__MQ_H_KEY) ||
         !strcasecmp(key, TL__MQ_H_DLQ_REASON) || !strcasecmp(key, TL__MQ_H_DLQ_SUBJECT) ||
         !strcasecmp(key, TL__MQ_H_DLQ_ID) || !strcasecmp(key, "deliveries") ||
         !strncasecmp(key, "nats-", 5);
}

/* Publish `d` to the dead-letter subject. 0 or a status. */
static int dead_letter(tl_mq_sub *sub, tl__mq_delivery *d, const char *reason)
{
  const tl_mq_msg *m = &d->msg;
  char subject[TL_MQ_SUBJECT_MAX + 64];
  if (tl__mq_dlq_subject(sub->mq, m->subject, subject, sizeof subject) < 0 ||
      strlen(subject) > TL_MQ_SUBJECT_MAX)
    return tl_error_set(TL_EINVAL, "dead-letter subject for '%s' is longer than %d bytes",
                        m->subject, TL_MQ_SUBJECT_MAX);
  tl_mq_header hs[TL_MQ_HEADERS_MAX];
  size_t k = 0;
  for (size_t i = 0; i < m->nheaders && k < TL_MQ_HEADERS_MAX - 8; i++)
    if (!drop_for_dlq(m->headers[i].key))
      hs[k++] = m->headers[i];
  char deliveries[16];
  snprintf(deliveries, sizeof deliveries, "%u", m->delivery);
  hs[k++] = (tl_mq_header){ TL__MQ_H_DLQ_REASON, reason };
  hs[k++] = (tl_mq_header){ TL__MQ_H_DLQ_SUBJECT, m->subject };
  if (m->id && *m->id)
    hs[k++] = (tl_mq_header){ TL__MQ_H_DLQ_ID, m->id };
  hs[k++] = (tl_mq_header){ "deliveries", deliveries };
  tl_mq_message out = { .subject = subject, .data = m->data, .len = m->len,
                        .key = m->key, .headers = hs, .nheaders = k };
  return tl_mq_publish_msg(sub->mq, &out);
}

/* Sleep up to `us`, waking early when the subscription stops; keeps the
 * broker informed that the delivery is still in progress. Returns false
 * when stopping. */
static bool backoff_wait(tl_mq_sub *sub, tl__mq_delivery *d, int64_t us)
{
  int64_t end = tl_time_mono_us() + us;
  int64_t tick = sub->opts.ack_wait_us / 3;
  int64_t next_progress = tl_time_mono_us() + tick;
  for (;;) {
    if (atomic_load_explicit(&sub->stopping, memory_order_acquire))
      return false;
    int64_t now = tl_time_mono_us();
    if (now >= end)
      return true;
    if (sub->mq->be->progress && now >= next_progress) {
      sub->mq->be->progress(sub, d);
      next_progress = now + tick;
    }
    int64_t step = end - now;
    tl_sleep_us(step > 20000 ? 20000 : step);
  }
}

static int dispatch(tl_mq_sub *sub, tl__mq_delivery *d);

int tl__mq_dispatch(tl_mq_sub *sub, tl__mq_delivery *d)
{
  set_log_context(d);
  int how = dispatch(sub, d);
  tl_log_context_set(NULL, NULL);
  return how;
}

static int dispatch(tl_mq_sub *sub, tl__mq_delivery *d)
{
  tl_mq *mq = sub->mq;
  tl__mq_stats *st = tl__mq_stats_for(mq, d->msg.subject, strlen(d->msg.subject));
  int max = sub->opts.max_deliveries;
  bool to_dlq = false;
  const char *reason = "max deliveries";
  unsigned dlq_tries = 0;
  for (;;) {
    if (atomic_load_explicit(&sub->stopping, memory_order_acquire))
      return TL__MQ_SETTLE_REQUEUE;
    unsigned delivery = d->broker_count + d->attempts;
    if (!to_dlq && max > 0 && delivery > (unsigned)max)
      to_dlq = true; /* delivered too often before it reached us */
    if (!to_dlq) {
      d->msg.delivery = delivery;
      tl_series_inc(st->delivered);
      if (delivery > 1)
        tl_series_inc(st->redelivered);
      tl_mq_sub *prev = running_sub;
      running_sub = sub;
      int rc = sub->handler(&d->msg, sub->ctx);
      running_sub = prev;
      d->attempts++;
      if (rc == TL_MQ_ACK) {
        tl_series_inc(st->acked);
        return TL__MQ_SETTLE_ACK;
      }
      if (rc == TL_MQ_REJECT) {
        to_dlq = true;
        reason = "rejected";
      } else if (max > 0 && delivery >= (unsigned)max) {
        to_dlq = true;
      }
    }
    if (to_dlq) {
      int rc = dead_letter(sub, d, reason);
      if (rc == 0) {
        tl_series_inc(st->dead_lettered);
        tl_log(TL_LOG_WARN, "mq: message dead-lettered", TL_F_STR("subject", d->msg.subject),
               TL_F_STR("id", d->msg.id), TL_F_STR("reason", reason),
               TL_F_INT("deliveries", d->msg.delivery));
        return TL__MQ_SETTLE_ACK;
      }
      if (rc == TL_EINVAL) {
        /* It can never be dead-lettered; retrying would block the key. */
        tl_log(TL_LOG_ERROR, "mq: message dropped: cannot dead-letter",
               TL_F_STR("subject", d->msg.subject), TL_F_STR("id", d->msg.id),
               TL_F_STR("error", tl_error_last()));
        return TL__MQ_SETTLE_ACK;
      }
      tl_log(TL_LOG_WARN, "mq: dead-letter publish failed, will retry",
             TL_F_STR("subject", d->msg.subject), TL_F_STR("error", tl_error_last()));
      if (!backoff_wait(sub, d, tl_backoff_delay(&sub->opts.retry, dlq_tries++)))
        return TL__MQ_SETTLE_REQUEUE;
      continue;
    }
    if (!backoff_wait(sub, d, tl_backoff_delay(&sub->opts.retry, d->attempts - 1)))
      return TL__MQ_SETTLE_REQUEUE;
  }
}

/* ---- lanes ---- */

static void *lane_main(void *arg)
{
  tl__mq_lane *l = arg;
  tl_mq_sub *sub = l->sub;
  for (;;) {
    pthread_mutex_lock(&l->mu);
    while (!l->head && !l->stop)
      pthread_cond_wait(&l->cond, &l->mu);
    tl__mq_delivery *d = l->head;
    if (!d) {
      pthread_mutex_unlock(&l->mu);
      break;
    }
    l->head = d->next;
    if (!l->head)
      l->tail = NULL;
    if (l->count-- == l->cap)
      pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->mu);
    int how = tl__mq_dispatch(sub, d);
    sub->mq->be->settle(sub, d, how);
  }
  tl_log_context_set(NULL, NULL);
  return NULL;
}

static void lanes_stop(tl_mq_sub *sub)
{
  for (unsigned i = 0; i < sub->nlanes; i++) {
    tl__mq_lane *l = &sub->lanes[i];
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->mu);
  }
  for (unsigned i = 0; i < sub->nlanes; i++) {
    tl__mq_lane *l = &sub->lanes[i];
    if (l->started)
      pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cond);
  }
  free(sub->lanes);
  sub->lanes = NULL;
  sub->nlanes = 0;
}

static int lanes_start(tl_mq_sub *sub)
{
  unsigned n = sub->opts.concurrency;
  sub->lanes = calloc(n, sizeof *sub->lanes);
  if (!sub->lanes)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  sub->nlanes = n;
  unsigned cap = sub->opts.prefetch / n;
  for (unsigned i = 0; i < n; i++) {
    tl__mq_lane *l = &sub->lanes[i];
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cond, NULL);
    l->cap = cap < 4 ? 4 : cap;
    l->sub = sub;
  }
  for (unsigned i = 0; i < n; i++) {
    tl__mq_lane *l = &sub->lanes[i];
    if (pthread_create(&l->thread, NULL, lane_main, l) != 0) {
      lanes_stop(sub);
      return tl_error_set(TL_ENOMEM, "mq: cannot start a handler thread");
    }
    l->started = true;
  }
  return 0;
}

void tl__mq_deliver(tl_mq_sub *sub, tl__mq_delivery *d)
{
  d->attempts = 0;
  d->next = NULL;
  if (atomic_load_explicit(&sub->stopping, memory_order_acquire)) {
    sub->mq->be->settle(sub, d, TL__MQ_SETTLE_REQUEUE);
    return;
  }
  if (!sub->lanes) {
    int how = tl__mq_dispatch(sub, d);
    sub->mq->be->settle(sub, d, how);
    return;
  }
  const char *key = d->msg.key ? d->msg.key : d->msg.subject;
  tl__mq_lane *l = &sub->lanes[tl__mq_hash(key, strlen(key)) % sub->nlanes];
  pthread_mutex_lock(&l->mu);
  while (l->count >= l->cap && !l->stop &&
         !atomic_load_explicit(&sub->stopping, memory_order_acquire))
    pthread_cond_wait(&l->cond, &l->mu);
  if (l->stop || atomic_load_explicit(&sub->stopping, memory_order_acquire)) {
    pthread_mutex_unlock(&l->mu);
    sub->mq->be->settle(sub, d, TL__MQ_SETTLE_REQUEUE);
    return;
  }
  if (l->tail)
    l->tail->next = d;
  else
    l->head = d;
  l->tail = d;
  l->count++;
  pthread_cond_broadcast(&l->cond);
  pthread_mutex_unlock(&l->mu);
}

/* ---- subscribe / unsubscribe ---- */

static bool group_ok(const char *g)
{
  size_t n = strlen(g);
  if (n == 0 || n > 64)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = g[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '-'))
      return false;
  }
  return true;
}

int tl_mq_subscribe(tl_mq *mq, const char *pattern, tl_mq_handler handler, void *ctx,
                    const tl_mq_sub_opts *opts, tl_mq_sub **out)
{
  if (out)
    *out = NULL;
  if (!mq || !handler || !out)
    return tl_error_set(TL_EINVAL, "tl_mq_subscribe: NULL argument");
  int rc = tl__mq_name_check(pattern, true, "pattern");
  if (rc)
    return rc;
  tl_mq_sub_opts o = opts ? *opts : (tl_mq_sub_opts){ 0 };
  if (o.group && !group_ok(o.group))
    return tl_error_set(TL_EINVAL,
                        "group '%.64s': 1 to 64 letters, digits, '_' or '-'", o.group);
  if (o.concurrency > 1024)
    return tl_error_set(TL_EINVAL, "pattern '%s': concurrency %u is more than 1024", pattern,
                        o.concurrency);
  if (o.max_deliveries < -1)
    return tl_error_set(TL_EINVAL, "pattern '%s': max_deliveries %d (use -1 for no limit)",
                        pattern, o.max_deliveries);
  if (!o.concurrency) o.concurrency = 1;
  if (!o.max_deliveries) o.max_deliveries = 5;
  if (!o.retry.base_us) o.retry.base_us = 100000;
  if (!o.retry.cap_us) o.retry.cap_us = 10000000;
  if (!o.prefetch) o.prefetch = 256;
  if (o.prefetch < o.concurrency) o.prefetch = o.concurrency;
  if (o.ack_wait_us <= 0) o.ack_wait_us = 30000000;

  tl_mq_sub *sub = calloc(1, sizeof *sub);
  if (!sub)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  sub->mq = mq;
  snprintf(sub->pattern, sizeof sub->pattern, "%s", pattern);
  if (o.group)
    snprintf(sub->group, sizeof sub->group, "%s", o.group);
  o.group = o.group ? sub->group : NULL;
  sub->opts = o;
  sub->handler = handler;
  sub->ctx = ctx;
  atomic_init(&sub->stopping, false);

  pthread_mutex_lock(&mq->mu);
  if (mq->closing) {
    pthread_mutex_unlock(&mq->mu);
    free(sub);
    return tl_error_set(TL_ECLOSED, "mq: closing");
  }
  mq->subscribing++;
  pthread_mutex_unlock(&mq->mu);

  if (o.concurrency > 1 && !mq->be->own_workers)
    rc = lanes_start(sub);
  if (!rc)
    rc = mq->be->subscribe(sub);
  if (rc && sub->lanes) {
    atomic_store(&sub->stopping, true);
    lanes_stop(sub);
  }
  pthread_mutex_lock(&mq->mu);
  if (!rc) {
    sub->next = mq->subs;
    mq->subs = sub;
  }
  mq->subscribing--;
  pthread_cond_broadcast(&mq->cond);
  pthread_mutex_unlock(&mq->mu);
  if (rc) {
    free(sub);
    return rc;
  }
  tl_log(TL_LOG_DEBUG, "mq: subscribed", TL_F_STR("backend", mq->be->name),
         TL_F_STR("pattern", sub->pattern), TL_F_STR("group", o.group));
  *out = sub;
  return 0;
}

int tl_mq_unsubscribe(tl_mq_sub *sub)
{
  if (!sub)
    return 0;
  if (running_sub == sub)
    return tl_error_set(TL_ESTATE, "pattern '%s': cannot unsubscribe from its own handler",
                        sub->pattern);
  tl_mq *mq = sub->mq;
  pthread_mutex_lock(&mq->mu);
  /* close may race with a caller's unsubscribe: only one proceeds */
  tl_mq_sub **pp = &mq->subs;
  while (*pp && *pp != sub)
    pp = &(*pp)->next;
  if (!*pp) {
    pthread_mutex_unlock(&mq->mu);
    return tl_error_set(TL_ESTATE, "subscription already closed");
  }
  *pp = sub->next;
  pthread_mutex_unlock(&mq->mu);

  atomic_store_explicit(&sub->stopping, true, memory_order_release);
  mq->be->sub_stop(sub);
  if (sub->lanes)
    lanes_stop(sub);
  mq->be->sub_free(sub);
  tl_log(TL_LOG_DEBUG, "mq: unsubscribed", TL_F_STR("pattern", sub->pattern));
  free(sub);
  return 0;
}
