/* NATS backend (libnats). JetStream by default: one stream over the
 * application's subjects, durable pull consumers (a group shares one; a
 * subscription without a group gets its own and deletes it when it
 * ends), explicit acks after the handler, Nats-Msg-Id de-duplication,
 * publishes confirmed by the stream's PubAck. With nats_core, plain core
 * NATS: queue groups, at-most-once.
 *
 * The stream must not capture everything (">" would store every inbox
 * reply and pull delivery), so unless stream_subjects fixes the list,
 * the stream grows by first token: publishing or subscribing to
 * "user.created" makes sure it covers "user" and "user.>". Patterns that
 * start with a wildcard get an unfiltered consumer and are matched here. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "mq_int.h"

#define MAX_TOKENS 1024

struct pending {
  natsMsg *msg;
  tl__mq_pub *pub;
  struct pending *next;
};

struct nmq {
  tl_mq *mq;
  natsOptions *opts;
  natsConnection *nc;
  jsCtx *js;
  bool jetstream;
  char url_masked[256];
  atomic_bool connected;
  atomic_bool closing;       /* our own close: not an outage */
  /* The library runs connection callbacks on its own thread, after the
   * calls that cause them return: `n` lives until the last one (closed). */
  pthread_mutex_t cb_mu;
  pthread_cond_t cb_cond;
  bool closed_cb_done;
  int64_t max_payload;

  pthread_mutex_t mu;        /* tokens, pending */
  char **tokens;             /* first tokens the stream covers (auto mode) */
  size_t ntokens;
  bool fixed;                /* stream subjects fixed by the config */
  pthread_mutex_t update_mu; /* serializes stream updates */
  struct pending *pending[256];
  size_t npending;
};

struct nsub {
  struct nmq *n;
  tl_mq_sub *sub;
  natsSubscription *ns;
  char durable[96];
  char filter[TL_MQ_SUBJECT_MAX + 1]; /* "" = unfiltered, match here */
  bool ephemeral_durable;    /* ours alone: delete at the end */
  bool client_match;
  pthread_t thread;
  bool started;
  atomic_bool stop;
  /* core NATS: wait for the last callback */
  pthread_mutex_t mu;
  pthread_cond_t cond;
  bool done;
};

struct ndelivery {
  tl__mq_delivery d;
  natsMsg *msg;
  struct nsub *s;
  size_t nh;
  tl_mq_header hdrs[TL_MQ_HEADERS_MAX];
};

static int status_of(natsStatus s, jsErrCode ec)
{
  switch (s) {
  case NATS_OK: return 0;
  case NATS_TIMEOUT: return TL_ETIMEOUT;
  case NATS_NO_SERVER:
  case NATS_CONNECTION_CLOSED:
  case NATS_CONNECTION_DISCONNECTED:
  case NATS_IO_ERROR:
  case NATS_STALE_CONNECTION:
    return TL_ECONNECT;
  case NATS_NO_RESPONDERS: return TL_ERETRY;
  case NATS_MAX_PAYLOAD: return TL_ETOOBIG;
  case NATS_NO_MEMORY: return TL_ENOMEM;
  default:
    return ec ? TL_ERETRY : TL_EIO;
  }
}

static int fail(struct nmq *n, natsStatus s, jsErrCode ec, const char *what)
{
  const char *detail = nats_GetLastError(NULL);
  return tl_error_set(status_of(s, ec), "nats %s: %s: %s%s%s", n->url_masked, what,
                      natsStatus_GetText(s), detail && *detail ? ": " : "",
                      detail ? detail : "");
}

/* ---- stream coverage ---- */

static bool token_known(struct nmq *n, const char *tok, size_t len)
{
  for (size_t i = 0; i < n->ntokens; i++)
    if (strlen(n->tokens[i]) == len && !memcmp(n->tokens[i], tok, len))
      return true;
  return false;
}

static int token_add(struct nmq *n, const char *tok, size_t len)
{
  if (n->ntokens >= MAX_TOKENS)
    return 0;
  char **t = realloc(n->tokens, (n->ntokens + 1) * sizeof *t);
  if (!t)
    return TL_ENOMEM;
  n->tokens = t;
  t[n->ntokens] = strndup(tok, len);
  if (!t[n->ntokens])
    return TL_ENOMEM;
  n->ntokens++;
  return 0;
}

static bool has_subject(const jsStreamConfig *c, const char *s)
{
  for (int i = 0; i < c->SubjectsLen; i++)
    if (!strcmp(c->Subjects[i], s))
      return true;
  return false;
}

/* Make the stream cover `tok` and `tok.>` (auto mode), creating it when
 * missing. locks: takes update_mu, then mu */
static int cover_token(struct nmq *n, const char *tok, size_t len)
{
  pthread_mutex_lock(&n->mu);
  bool known = n->fixed || token_known(n, tok, len);
  pthread_mutex_unlock(&n->mu);
  if (known)
    return 0;
  char one[TL_MQ_SUBJECT_MAX + 1], all[TL_MQ_SUBJECT_MAX + 3];
  snprintf(one, sizeof one, "%.*s", (int)len, tok);
  snprintf(all, sizeof all, "%.*s.>", (int)len, tok);
  const tl_mq_config *cfg = &n->mq->cfg;
  pthread_mutex_lock(&n->update_mu);
  int rc = 0;
  for (int attempt = 0; attempt < 5; attempt++) {
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetStreamInfo(&si, n->js, cfg->stream, NULL, &ec);
    if (s == NATS_NOT_FOUND || ec == JSStreamNotFoundErr) {
      jsStreamConfig sc;
      jsStreamConfig_Init(&sc);
      const char *subs[] = { one, all };
      sc.Name = cfg->stream;
      sc.Subjects = subs;
      sc.SubjectsLen = 2;
      sc.Storage = js_FileStorage;
      s = js_AddStream(&si, n->js, &sc, NULL, &ec);
      if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        break;
      }
      if (ec == JSStreamNameExistErr)
        continue; /* someone else created it: update that */
      rc = fail(n, s, ec, "cannot create the JetStream stream");
      break;
    }
    if (s != NATS_OK) {
      rc = fail(n, s, ec, "cannot read the JetStream stream");
      break;
    }
    jsStreamConfig *c = si->Config;
    if (has_subject(c, one) && has_subject(c, all)) {
      jsStreamInfo_Destroy(si);
      break;
    }
    const char **subs = calloc((size_t)c->SubjectsLen + 2, sizeof *subs);
    if (!subs) {
      jsStreamInfo_Destroy(si);
      rc = TL_ENOMEM;
      break;
    }
    int k = 0;
    for (int i = 0; i < c->SubjectsLen; i++)
      subs[k++] = c->Subjects[i];
    if (!has_subject(c, one))
      subs[k++] = one;
    if (!has_subject(c, all))
      subs[k++] = all;
    const char **old = c->Subjects;
    int oldlen = c->SubjectsLen;
    c->Subjects = subs;
    c->SubjectsLen = k;
    jsStreamInfo *nsi = NULL;
    s = js_UpdateStream(&nsi, n->js, c, NULL, &ec);
    c->Subjects = old;
    c->SubjectsLen = oldlen;
    free(subs);
    jsStreamInfo_Destroy(si);
    if (s == NATS_OK) {
      jsStreamInfo_Destroy(nsi);
      continue; /* read it back: a concurrent update may have lost ours */
    }
    rc = fail(n, s, ec, ec == JSStreamSubjectOverlapErr
                            ? "stream subjects overlap with another stream"
                            : "cannot add subjects to the JetStream stream");
    break;
  }
  if (rc == 0) {
    pthread_mutex_lock(&n->mu);
    if (!token_known(n, tok, len))
      rc = token_add(n, tok, len);
    pthread_mutex_unlock(&n->mu);
  }
  pthread_mutex_unlock(&n->update_mu);
  return rc;
}

/* Fixed mode: create the stream with the configured subjects if missing. */
static int ensure_fixed_stream(struct nmq *n)
{
  const tl_mq_config *cfg = &n->mq->cfg;
  jsStreamInfo *si = NULL;
  jsErrCode ec = 0;
  natsStatus s = js_GetStreamInfo(&si, n->js, cfg->stream, NULL, &ec);
  if (s == NATS_OK) {
    jsStreamInfo_Destroy(si);
    return 0;
  }
  if (!(s == NATS_NOT_FOUND || ec == JSStreamNotFoundErr))
    return fail(n, s, ec, "cannot read the JetStream stream");
  char *copy = strdup(cfg->stream_subjects);
  const char *subs[64];
  int k = 0;
  for (char *save = NULL, *t = strtok_r(copy, ", ", &save); t && k < 64;
       t = strtok_r(NULL, ", ", &save))
    subs[k++] = t;
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  sc.Name = cfg->stream;
  sc.Subjects = subs;
  sc.SubjectsLen = k;
  sc.Storage = js_FileStorage;
  s = js_AddStream(&si, n->js, &sc, NULL, &ec);
  free(copy);
  if (s == NATS_OK || ec == JSStreamNameExistErr) {
    if (si)
      jsStreamInfo_Destroy(si);
    return 0;
  }
  return fail(n, s, ec, "cannot create the JetStream stream");
}

/* ---- connection ---- */

static void on_disconnected(natsConnection *nc, void *closure)
{
  (void)nc;
  struct nmq *n = closure;
  atomic_store(&n->connected, false);
  if (!atomic_load(&n->closing))
    tl_log(TL_LOG_WARN, "mq: nats disconnected, reconnecting", TL_F_STR("url", n->url_masked));
}

static void on_reconnected(natsConnection *nc, void *closure)
{
  (void)nc;
  struct nmq *n = closure;
  atomic_store(&n->connected, true);
  /* A wiped server lost the stream: declare it again on next use. */
  pthread_mutex_lock(&n->mu);
  for (size_t i = 0; i < n->ntokens; i++)
    free(n->tokens[i]);
  n->ntokens = 0;
  pthread_mutex_unlock(&n->mu);
  tl_log(TL_LOG_INFO, "mq: nats reconnected", TL_F_STR("url", n->url_masked));
}

static void on_closed(natsConnection *nc, void *closure)
{
  (void)nc;
  struct nmq *n = closure;
  pthread_mutex_lock(&n->cb_mu);
  n->closed_cb_done = true;
  pthread_cond_broadcast(&n->cb_cond);
  pthread_mutex_unlock(&n->cb_mu);
}

static void pending_fail_all(struct nmq *n, int status);

static void ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
  (void)js, (void)pa;
  struct nmq *n = closure;
  tl__mq_pub *pub = NULL;
  pthread_mutex_lock(&n->mu);
  struct pending **pp = &n->pending[((uintptr_t)msg >> 4) % 256];
  while (*pp && (*pp)->msg != msg)
    pp = &(*pp)->next;
  if (*pp) {
    struct pending *p = *pp;
    *pp = p->next;
    pub = p->pub;
    free(p);
    n->npending--;
  }
  pthread_mutex_unlock(&n->mu);
  natsMsg_Destroy(msg);
  if (pub) {
    int st = 0;
    if (pae) {
      st = status_of(pae->Err, pae->ErrCode);
      tl_error_set(st, "nats: publish not confirmed: %s%s%s", natsStatus_GetText(pae->Err),
                   pae->ErrText ? ": " : "", pae->ErrText ? pae->ErrText : "");
    }
    tl__mq_pub_done(pub, st);
  }
}

static void wait_closed_cb(struct nmq *n)
{
  pthread_mutex_lock(&n->cb_mu);
  while (!n->closed_cb_done)
    pthread_cond_wait(&n->cb_cond, &n->cb_mu);
  pthread_mutex_unlock(&n->cb_mu);
}

static int n_open(tl_mq *mq)
{
  struct nmq *n = calloc(1, sizeof *n);
  if (!n)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  n->mq = mq;
  n->jetstream = !mq->cfg.nats_core;
  n->fixed = mq->cfg.stream_subjects[0] != '\0';
  pthread_mutex_init(&n->mu, NULL);
  pthread_mutex_init(&n->update_mu, NULL);
  pthread_mutex_init(&n->cb_mu, NULL);
  pthread_cond_init(&n->cb_cond, NULL);
  atomic_init(&n->connected, false);
  atomic_init(&n->closing, false);
  const char *url = mq->cfg.url ? mq->cfg.url : "nats://localhost:4222";
  tl_url_mask(url, n->url_masked, sizeof n->url_masked);
  int rc = 0;
  natsStatus s = natsOptions_Create(&n->opts);
  int64_t ctimeout = mq->cfg.publish_timeout_us / 1000;
  if (ctimeout > 5000)
    ctimeout = 5000;
  if (s == NATS_OK) s = natsOptions_SetURL(n->opts, url);
  if (s == NATS_OK) s = natsOptions_SetName(n->opts, mq->cfg.client_name);
  if (s == NATS_OK) s = natsOptions_SetTimeout(n->opts, ctimeout < 100 ? 100 : ctimeout);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(n->opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(n->opts, mq->cfg.reconnect.base_us / 1000);
  if (s == NATS_OK)
    s = natsOptions_SetReconnectJitter(n->opts, mq->cfg.reconnect.base_us / 1000, 0);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(n->opts, on_disconnected, n);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(n->opts, on_reconnected, n);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(n->opts, on_closed, n);
  if (s == NATS_OK) s = natsOptions_SetPingInterval(n->opts, 2000);
  if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(n->opts, 2);
  if (s != NATS_OK) {
    rc = fail(n, s, 0, "bad options");
    goto out;
  }
  s = natsConnection_Connect(&n->nc, n->opts);
  if (s != NATS_OK) {
    rc = tl_error_set(TL_ECONNECT, "nats %s: cannot connect: %s", n->url_masked,
                      natsStatus_GetText(s));
    goto out;
  }
  atomic_store(&n->connected, true);
  n->max_payload = natsConnection_GetMaxPayload(n->nc);
  if (n->jetstream) {
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = mq->cfg.publish_timeout_us / 1000;
    jo.PublishAsync.AckHandler = ack_handler;
    jo.PublishAsync.AckHandlerClosure = n;
    /* The front end's window governs; the library's must never be the
     * one that is full (it would stall the publisher for StallWait). */
    jo.PublishAsync.MaxPending = (int64_t)mq->cfg.max_in_flight * 2 + 64;
    s = natsConnection_JetStream(&n->js, n->nc, &jo);
    if (s != NATS_OK) {
      rc = fail(n, s, 0, "no JetStream context");
      goto out;
    }
    rc = n->fixed ? ensure_fixed_stream(n)
                  : cover_token(n, mq->cfg.dead_letter_prefix,
                                strlen(mq->cfg.dead_letter_prefix));
    if (rc) {
      if (strstr(tl_error_last(), "503") || strstr(tl_error_last(), "not enabled"))
        tl_error_wrap(rc, "is JetStream enabled (nats-server -js)?");
      goto out;
    }
  }
  mq->impl = n;
  return 0;
out:
  if (n->js)
    jsCtx_Destroy(n->js);
  if (n->nc) {
    atomic_store(&n->closing, true);
    natsConnection_Close(n->nc);
    wait_closed_cb(n);
    natsConnection_Destroy(n->nc);
  }
  natsOptions_Destroy(n->opts);
  for (size_t i = 0; i < n->ntokens; i++)
    free(n->tokens[i]);
  free(n->tokens);
  pthread_mutex_destroy(&n->mu);
  pthread_mutex_destroy(&n->update_mu);
  pthread_mutex_destroy(&n->cb_mu);
  pthread_cond_destroy(&n->cb_cond);
  free(n);
  return rc;
}

static void pending_fail_all(struct nmq *n, int status)
{
  for (;;) {
    struct pending *p = NULL;
    pthread_mutex_lock(&n->mu);
    for (int i = 0; i < 256 && !p; i++)
      if (n->pending[i]) {
        p = n->pending[i];
        n->pending[i] = p->next;
        n->npending--;
      }
    pthread_mutex_unlock(&n->mu);
    if (!p)
      return;
    tl_error_set(status, "nats: closed before the publish was confirmed");
    tl__mq_pub_done(p->pub, status);
    free(p);
  }
}

static int n_close(tl_mq *mq, int64_t deadline)
{
  struct nmq *n = mq->impl;
  int rc = 0;
  if (n->js) {
    int64_t left = (deadline - tl_time_mono_us()) / 1000;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = left > 0 ? left : 1;
    if (js_PublishAsyncComplete(n->js, &po) != NATS_OK)
      rc = tl_error_set(TL_ETIMEOUT, "nats: unconfirmed publishes at close");
  }
  natsConnection_FlushTimeout(n->nc, 1000);
  atomic_store(&n->closing, true);
  natsConnection_Close(n->nc);
  wait_closed_cb(n);
  pending_fail_all(n, TL_ECLOSED);
  if (n->js)
    jsCtx_Destroy(n->js);
  natsConnection_Destroy(n->nc);
  natsOptions_Destroy(n->opts);
  for (size_t i = 0; i < n->ntokens; i++)
    free(n->tokens[i]);
  free(n->tokens);
  pthread_mutex_destroy(&n->mu);
  pthread_mutex_destroy(&n->update_mu);
  pthread_mutex_destroy(&n->cb_mu);
  pthread_cond_destroy(&n->cb_cond);
  free(n);
  mq->impl = NULL;
  return rc;
}

static int n_ready(tl_mq *mq)
{
  struct nmq *n = mq->impl;
  natsConnStatus st = natsConnection_Status(n->nc);
  if (st == NATS_CONN_STATUS_CONNECTED)
    return 0;
  return tl_error_set(TL_ECONNECT, "nats %s: %s", n->url_masked,
                      st == NATS_CONN_STATUS_RECONNECTING ? "reconnecting"
                      : st == NATS_CONN_STATUS_CLOSED     ? "closed"
                                                          : "not connected");
}

/* ---- publishing ---- */

static int build_msg(struct nmq *n, tl__mq_out *o, natsMsg **out)
{
  size_t nh;
  const tl_mq_header *h = tl__mq_out_headers(o, &nh);
  size_t hbytes = 64;
  for (size_t i = 0; i < nh; i++)
    hbytes += strlen(h[i].key) + strlen(h[i].value) + 4;
  if (n->max_payload > 0 && (int64_t)(o->len + hbytes) > n->max_payload)
    return tl_error_set(TL_ETOOBIG,
                        "subject '%s': %zu bytes with headers exceed the NATS server's "
                        "max_payload of %lld bytes",
                        o->subject, o->len + hbytes, (long long)n->max_payload);
  if (o->len > INT32_MAX)
    return tl_error_set(TL_ETOOBIG, "subject '%s': payload too large", o->subject);
  natsMsg *m = NULL;
  natsStatus s = natsMsg_Create(&m, o->subject, NULL, o->data, (int)o->len);
  for (size_t i = 0; s == NATS_OK && i < nh; i++)
    s = natsMsgHeader_Add(m, h[i].key, h[i].value);
  if (s == NATS_OK && !o->key_is_subject) {
    char key[1025];
    snprintf(key, sizeof key, "%.*s", (int)o->key_len, o->key);
    s = natsMsgHeader_Set(m, TL__MQ_H_KEY, key);
  }
  if (s == NATS_OK && n->jetstream)
    s = natsMsgHeader_Set(m, "Nats-Msg-Id", o->id_text);
  if (s != NATS_OK) {
    natsMsg_Destroy(m);
    return fail(n, s, 0, "cannot build the message");
  }
  *out = m;
  return 0;
}

static int n_publish(tl_mq *mq, tl__mq_out *o, tl__mq_pub *pub, int64_t deadline)
{
  struct nmq *n = mq->impl;
  int rc;
  if (n->jetstream && (rc = cover_token(n, o->subject, tl__mq_prefix_len(o->subject))))
    return rc;
  natsMsg *m;
  if ((rc = build_msg(n, o, &m)))
    return rc;
  if (!n->jetstream) {
    /* core NATS: accepted once the server has read it */
    natsStatus s = natsConnection_PublishMsg(n->nc, m);
    natsMsg_Destroy(m);
    if (s == NATS_OK) {
      int64_t left = (tl__mq_deadline_of(mq, deadline) - tl_time_mono_us()) / 1000;
      s = natsConnection_FlushTimeout(n->nc, left > 0 ? left : 1);
    }
    if (s != NATS_OK)
      return fail(n, s, 0, "publish failed");
    if (pub)
      tl__mq_pub_done(pub, 0);
    return 0;
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  int64_t left = deadline ? (deadline - tl_time_mono_us()) / 1000
                          : mq->cfg.publish_timeout_us / 1000;
  po.MaxWait = left > 0 ? left : 1;
  if (!pub) {
    jsPubAck *pa = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_PublishMsg(&pa, n->js, m, &po, &ec);
    natsMsg_Destroy(m);
    if (pa)
      jsPubAck_Destroy(pa);
    if (s != NATS_OK)
      return fail(n, s, ec, "publish not confirmed");
    return 0;
  }
  struct pending *p = malloc(sizeof *p);
  if (!p) {
    natsMsg_Destroy(m);
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  p->msg = m;
  p->pub = pub;
  unsigned slot = (unsigned)(((uintptr_t)m >> 4) % 256);
  pthread_mutex_lock(&n->mu);
  p->next = n->pending[slot];
  n->pending[slot] = p;
  n->npending++;
  pthread_mutex_unlock(&n->mu);
  natsMsg *mm = m;
  natsStatus s = js_PublishMsgAsync(n->js, &mm, &po);
  if (s != NATS_OK) {
    /* not sent: take the record back unless the handler already ran */
    bool mine = false;
    pthread_mutex_lock(&n->mu);
    struct pending **pp = &n->pending[slot];
    while (*pp && *pp != p)
      pp = &(*pp)->next;
    if (*pp) {
      *pp = p->next;
      n->npending--;
      mine = true;
    }
    pthread_mutex_unlock(&n->mu);
    if (mine) {
      free(p);
      if (mm)
        natsMsg_Destroy(mm);
      return fail(n, s, 0, "publish failed");
    }
  }
  return 0;
}

/* ---- consuming ---- */

static void delivery_free(struct ndelivery *nd)
{
  natsMsg_Destroy(nd->msg);
  free(nd);
}

static struct ndelivery *delivery_new(struct nsub *s, natsMsg *msg)
{
  struct ndelivery *nd = calloc(1, sizeof *nd);
  if (!nd)
    return NULL;
  nd->msg = msg;
  nd->s = s;
  tl_mq_msg *m = &nd->d.msg;
  m->subject = natsMsg_GetSubject(msg);
  m->data = natsMsg_GetData(msg);
  int dl = natsMsg_GetDataLength(msg);
  m->len = dl > 0 ? (size_t)dl : 0;
  if (!m->data)
    m->data = "";
  const char **keys = NULL;
  int count = 0;
  m->key = m->subject;
  if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
    for (int i = 0; i < count && nd->nh < TL_MQ_HEADERS_MAX; i++) {
      const char *v = NULL;
      if (natsMsgHeader_Get(msg, keys[i], &v) != NATS_OK || !v)
        continue;
      if (!strcasecmp(keys[i], TL__MQ_H_KEY))
        m->key = v;
      nd->hdrs[nd->nh++] = (tl_mq_header){ keys[i], v };
    }
    free((void *)keys);
  }
  tl__mq_msg_finish(m, nd->hdrs, &nd->nh);
  nd->d.broker_count = 1;
  if (s->n->jetstream) {
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
      if (meta->NumDelivered > 0)
        nd->d.broker_count = (unsigned)meta->NumDelivered;
      jsMsgMetaData_Destroy(meta);
    }
  }
  return nd;
}

static void n_settle(tl_mq_sub *sub, tl__mq_delivery *d, int how)
{
  struct ndelivery *nd = (struct ndelivery *)d;
  (void)sub;
  if (nd->s->n->jetstream) {
    if (how == TL__MQ_SETTLE_ACK)
      natsMsg_Ack(nd->msg, NULL);
    else
      natsMsg_Nak(nd->msg, NULL);
  }
  delivery_free(nd);
}

static void n_progress(tl_mq_sub *sub, tl__mq_delivery *d)
{
  struct ndelivery *nd = (struct ndelivery *)d;
  (void)sub;
  if (nd->s->n->jetstream)
    natsMsg_InProgress(nd->msg, NULL);
}

static void handle(struct nsub *s, natsMsg *msg)
{
  if (s->client_match && !tl_mq_subject_match(s->sub->pattern, natsMsg_GetSubject(msg))) {
    if (s->n->jetstream)
      natsMsg_Ack(msg, NULL);
    natsMsg_Destroy(msg);
    return;
  }
  struct ndelivery *nd = delivery_new(s, msg);
  if (!nd) {
    /* no memory: leave it for redelivery */
    if (s->n->jetstream)
      natsMsg_Nak(msg, NULL);
    natsMsg_Destroy(msg);
    return;
  }
  tl__mq_deliver(s->sub, &nd->d);
}

/* Create (or find) the durable pull consumer and bind to it. */
static int js_bind(struct nsub *s)
{
  struct nmq *n = s->n;
  tl_mq_sub *sub = s->sub;
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = s->durable;
  cc.AckPolicy = js_AckExplicit;
  cc.AckWait = sub->opts.ack_wait_us * 1000;
  cc.MaxDeliver = -1;
  cc.MaxAckPending = sub->opts.prefetch;
  cc.DeliverPolicy = js_DeliverNew;
  cc.FilterSubject = s->filter[0] ? s->filter : NULL;
  if (s->ephemeral_durable)
    cc.InactiveThreshold = (int64_t)3600 * 1000000000;
  jsConsumerInfo *ci = NULL;
  jsErrCode ec = 0;
  natsStatus st = js_AddConsumer(&ci, n->js, n->mq->cfg.stream, &cc, NULL, &ec);
  if (st != NATS_OK && ec == JSConsumerFilterNotSubsetErr && s->filter[0]) {
    /* the stream does not cover the whole pattern: filter here */
    s->filter[0] = '\0';
    s->client_match = true;
    cc.FilterSubject = NULL;
    st = js_AddConsumer(&ci, n->js, n->mq->cfg.stream, &cc, NULL, &ec);
  }
  if (st != NATS_OK) {
    /* an existing durable with other settings is still usable */
    jsConsumerInfo *existing = NULL;
    if (js_GetConsumerInfo(&existing, n->js, n->mq->cfg.stream, s->durable, NULL, NULL) !=
        NATS_OK)
      return fail(n, st, ec, "cannot create the JetStream consumer");
    if (!existing->Config->FilterSubject || !existing->Config->FilterSubject[0]) {
      s->filter[0] = '\0';
      s->client_match = true;
    }
    jsConsumerInfo_Destroy(existing);
  } else {
    jsConsumerInfo_Destroy(ci);
  }
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = n->mq->cfg.stream;
  so.Consumer = s->durable;
  so.ManualAck = true;
  st = js_PullSubscribe(&s->ns, n->js, s->filter[0] ? s->filter : sub->pattern, s->durable, NULL,
                        &so, &ec);
  if (st != NATS_OK)
    return fail(n, st, ec, "cannot bind to the JetStream consumer");
  return 0;
}

static void *fetch_main(void *arg)
{
  struct nsub *s = arg;
  tl_mq_sub *sub = s->sub;
  int batch = (int)(sub->opts.prefetch < 256 ? sub->opts.prefetch : 256);
  unsigned errors = 0;
  while (!atomic_load(&s->stop)) {
    if (!s->ns) {
      if (js_bind(s) != 0) {
        tl_log(TL_LOG_WARN, "mq: nats consumer not bound yet", TL_F_STR("pattern", sub->pattern),
               TL_F_STR("error", tl_error_last()));
        tl_sleep_us(tl_backoff_delay(&s->n->mq->cfg.reconnect, errors++));
        continue;
      }
      errors = 0;
    }
    natsMsgList list = { 0 };
    jsErrCode ec = 0;
    natsStatus st = natsSubscription_Fetch(&list, s->ns, batch, 500, &ec);
    if (st == NATS_OK) {
      errors = 0;
      for (int i = 0; i < list.Count; i++) {
        natsMsg *m = list.Msgs[i];
        list.Msgs[i] = NULL;
        if (atomic_load(&s->stop)) {
          natsMsg_Nak(m, NULL);
          natsMsg_Destroy(m);
          continue;
        }
        handle(s, m);
      }
      natsMsgList_Destroy(&list);
      continue;
    }
    natsMsgList_Destroy(&list);
    if (st == NATS_TIMEOUT)
      continue;
    /* disconnected, or the consumer is gone (server wiped): back off and,
     * once connected again, bind anew */
    if (atomic_load(&s->n->connected) && (ec == JSConsumerNotFoundErr || errors > 3)) {
      natsSubscription_Destroy(s->ns);
      s->ns = NULL;
    }
    tl_sleep_us(tl_backoff_delay(&s->n->mq->cfg.reconnect, errors++ < 6 ? errors : 6));
  }
  return NULL;
}

static void core_cb(natsConnection *nc, natsSubscription *ns, natsMsg *msg, void *closure)
{
  (void)nc, (void)ns;
  struct nsub *s = closure;
  if (atomic_load(&s->stop)) {
    natsMsg_Destroy(msg);
    return;
  }
  handle(s, msg);
}

static void core_done(void *closure)
{
  struct nsub *s = closure;
  pthread_mutex_lock(&s->mu);
  s->done = true;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->mu);
}

static int n_subscribe(tl_mq_sub *sub)
{
  struct nmq *n = sub->mq->impl;
  struct nsub *s = calloc(1, sizeof *s);
  if (!s)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  s->n = n;
  s->sub = sub;
  atomic_init(&s->stop, false);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cond, NULL);
  sub->impl = s;
  char hash[17];
  snprintf(hash, sizeof hash, "%016llx",
           (unsigned long long)tl__mq_hash(sub->pattern, strlen(sub->pattern)));
  int rc = 0;
  if (!n->jetstream) {
    natsStatus st;
    if (sub->group[0]) {
      snprintf(s->durable, sizeof s->durable, "%s_%.8s", sub->group, hash);
      st = natsConnection_QueueSubscribe(&s->ns, n->nc, sub->pattern, s->durable, core_cb, s);
    } else {
      st = natsConnection_Subscribe(&s->ns, n->nc, sub->pattern, core_cb, s);
    }
    if (st == NATS_OK)
      st = natsSubscription_SetOnCompleteCB(s->ns, core_done, s);
    if (st == NATS_OK)
      st = natsSubscription_SetPendingLimits(s->ns, (int)sub->opts.prefetch * 64, -1);
    if (st == NATS_OK)
      st = natsConnection_FlushTimeout(n->nc, 5000);
    if (st != NATS_OK)
      rc = fail(n, st, 0, "cannot subscribe");
  } else {
    size_t tl = tl__mq_prefix_len(sub->pattern);
    bool literal_first = !(tl == 1 && (sub->pattern[0] == '*' || sub->pattern[0] == '>'));
    if (n->fixed || literal_first) {
      snprintf(s->filter, sizeof s->filter, "%s", sub->pattern);
      if (!n->fixed)
        rc = cover_token(n, sub->pattern, tl);
    } else {
      s->client_match = !(sub->pattern[0] == '>' && sub->pattern[1] == '\0');
    }
    if (sub->group[0]) {
      snprintf(s->durable, sizeof s->durable, "%s_%.8s", sub->group, hash);
    } else {
      snprintf(s->durable, sizeof s->durable, "tl_%016llx%016llx",
               (unsigned long long)tl_rand64(), (unsigned long long)tl_rand64());
      s->ephemeral_durable = true;
    }
    if (!rc)
      rc = js_bind(s);
    if (!rc && pthread_create(&s->thread, NULL, fetch_main, s) != 0)
      rc = tl_error_set(TL_ENOMEM, "mq: cannot start the fetch thread");
    if (!rc)
      s->started = true;
  }
  if (rc) {
    if (s->ns)
      natsSubscription_Destroy(s->ns);
    if (s->ephemeral_durable)
      js_DeleteConsumer(n->js, n->mq->cfg.stream, s->durable, NULL, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
    sub->impl = NULL;
  }
  return rc;
}

static void n_sub_stop(tl_mq_sub *sub)
{
  struct nsub *s = sub->impl;
  atomic_store(&s->stop, true);
  if (s->started) {
    pthread_join(s->thread, NULL);
    s->started = false;
  } else if (s->ns) {
    /* core NATS: the callback thread finishes the message it holds */
    if (natsSubscription_Unsubscribe(s->ns) == NATS_OK) {
      pthread_mutex_lock(&s->mu);
      while (!s->done)
        pthread_cond_wait(&s->cond, &s->mu);
      pthread_mutex_unlock(&s->mu);
    }
  }
}

static void n_sub_free(tl_mq_sub *sub)
{
  struct nsub *s = sub->impl;
  struct nmq *n = s->n;
  if (s->ns) {
    if (n->jetstream)
      natsSubscription_Unsubscribe(s->ns);
    natsSubscription_Destroy(s->ns);
  }
  if (s->ephemeral_durable)
    js_DeleteConsumer(n->js, n->mq->cfg.stream, s->durable, NULL, NULL);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cond);
  free(s);
  sub->impl = NULL;
}

const struct tl__mq_backend tl__mq_nats = {
  .name = "nats",
  .open = n_open,
  .close = n_close,
  .ready = n_ready,
  .publish = n_publish,
  .subscribe = n_subscribe,
  .sub_stop = n_sub_stop,
  .sub_free = n_sub_free,
  .settle = n_settle,
  .progress = n_progress,
};
