/* RabbitMQ backend (librabbitmq): a durable topic exchange, persistent
 * messages, publisher confirms, manual acks with a prefetch window.
 *
 * An AMQP connection is not safe to share between threads, so each
 * handle has one publishing connection, used under a lock by publishers
 * and by its I/O thread (which reads the confirms and reconnects), and
 * each subscription has its own connection and thread. A group is a
 * durable queue shared by its members; a subscription without a group
 * gets a queue of its own (durable, deleted when it ends, expiring if its
 * process dies). Patterns become binding keys: '*' stays, '>' is "*.#". */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "mq_int.h"

#define CH 1
#define HEARTBEAT_S 30

struct waiter {
  int status;
  bool done;
};

struct rpend {
  uint64_t tag;
  tl__mq_pub *pub;       /* async, or NULL */
  struct waiter *w;      /* sync (on the publisher's stack), or NULL */
};

struct rmq {
  tl_mq *mq;
  char *url_buf;         /* amqp_parse_url writes into it */
  struct amqp_connection_info ci;
  char url_masked[256];

  pthread_mutex_t mu;    /* conn, pending, up */
  pthread_cond_t cond;   /* connected, confirms */
  amqp_connection_state_t conn;
  bool up;
  bool stop;
  uint64_t next_tag;
  struct rpend *pend;    /* ring of unconfirmed publishes, in tag order */
  size_t phead, pcount, pcap;
  char last_error[256];
  pthread_t io;
};

struct settle_item {
  uint64_t tag, gen;
  int how;
};

struct rsub {
  struct rmq *r;
  tl_mq_sub *sub;
  amqp_connection_state_t conn; /* owned by the thread once started */
  uint64_t gen;                 /* bumps at each reconnect */
  char queue[256];
  char binding[TL_MQ_SUBJECT_MAX + 8];
  bool group;
  pthread_t thread;
  bool started;

  pthread_mutex_t mu;           /* below */
  pthread_cond_t cond;
  bool stop_consume, consume_stopped, exit;
  struct settle_item *settles;
  size_t nsettles, capsettles;
};

struct rdelivery {
  tl__mq_delivery d;
  amqp_envelope_t env;
  uint64_t gen;
  struct rsub *s;
  char *strings;                /* subject, header keys and values */
  size_t nh;
  tl_mq_header hdrs[TL_MQ_HEADERS_MAX];
};

static _Thread_local struct rsub *consumer_thread_of;

/* ---- connections ---- */

static const char *reply_text(amqp_rpc_reply_t r, char *buf, size_t size)
{
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return "ok";
  case AMQP_RESPONSE_NONE:
    return "connection closed";
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    return amqp_error_string2(r.library_error);
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      amqp_connection_close_t *m = r.reply.decoded;
      snprintf(buf, size, "server closed the connection: %u %.*s", m->reply_code,
               (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_t *m = r.reply.decoded;
      snprintf(buf, size, "server closed the channel: %u %.*s", m->reply_code,
               (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    } else {
      snprintf(buf, size, "server error (method 0x%08x)", r.reply.id);
    }
    return buf;
  }
  return "unknown";
}

static int rpc_check(struct rmq *r, amqp_connection_state_t c, const char *what)
{
  amqp_rpc_reply_t rep = amqp_get_rpc_reply(c);
  if (rep.reply_type == AMQP_RESPONSE_NORMAL)
    return 0;
  char buf[256];
  return tl_error_set(rep.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION ? TL_EIO : TL_ECONNECT,
                      "rabbitmq %s: %s: %s", r->url_masked, what,
                      reply_text(rep, buf, sizeof buf));
}

/* A logged-in connection with channel 1 open. */
static int rconnect(struct rmq *r, amqp_connection_state_t *out)
{
  *out = NULL;
  amqp_connection_state_t c = amqp_new_connection();
  if (!c)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  amqp_socket_t *sock = r->ci.ssl ? amqp_ssl_socket_new(c) : amqp_tcp_socket_new(c);
  if (!sock) {
    amqp_destroy_connection(c);
    return tl_error_set(TL_ENOMEM, "rabbitmq: cannot create a socket");
  }
  int64_t to = r->mq->cfg.publish_timeout_us;
  if (to > 5000000)
    to = 5000000;
  struct timeval tv = { .tv_sec = to / 1000000, .tv_usec = to % 1000000 };
  int st = amqp_socket_open_noblock(sock, r->ci.host, r->ci.port, &tv);
  if (st != AMQP_STATUS_OK) {
    amqp_destroy_connection(c);
    return tl_error_set(TL_ECONNECT, "rabbitmq %s: cannot connect: %s", r->url_masked,
                        amqp_error_string2(st));
  }
  amqp_set_handshake_timeout(c, &tv);
  amqp_set_rpc_timeout(c, &tv);
  amqp_table_entry_t props[1];
  props[0].key = amqp_cstring_bytes("connection_name");
  props[0].value.kind = AMQP_FIELD_KIND_UTF8;
  props[0].value.value.bytes = amqp_cstring_bytes(r->mq->cfg.client_name);
  amqp_table_t ptable = { .num_entries = 1, .entries = props };
  amqp_rpc_reply_t rep = amqp_login_with_properties(
      c, r->ci.vhost, 0, 131072, HEARTBEAT_S, &ptable, AMQP_SASL_METHOD_PLAIN, r->ci.user,
      r->ci.password);
  if (rep.reply_type != AMQP_RESPONSE_NORMAL) {
    char buf[256];
    int rc = tl_error_set(TL_ECONNECT, "rabbitmq %s: login failed: %s", r->url_masked,
                          reply_text(rep, buf, sizeof buf));
    amqp_destroy_connection(c);
    return rc;
  }
  amqp_channel_open(c, CH);
  int rc = rpc_check(r, c, "cannot open a channel");
  if (!rc) {
    amqp_exchange_declare(c, CH, amqp_cstring_bytes(r->mq->cfg.exchange),
                          amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
    rc = rpc_check(r, c, "cannot declare the exchange");
  }
  if (rc) {
    amqp_destroy_connection(c);
    return rc;
  }
  *out = c;
  return 0;
}

static void rclose(amqp_connection_state_t c, bool graceful)
{
  if (!c)
    return;
  if (graceful) {
    amqp_channel_close(c, CH, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  }
  amqp_destroy_connection(c);
}

/* ---- publisher ---- */

static void pend_push(struct rmq *r, struct rpend p)
{
  if (r->pcount == r->pcap) {
    size_t cap = r->pcap ? r->pcap * 2 : 256;
    struct rpend *n = malloc(cap * sizeof *n);
    if (!n)
      abort(); /* a few bytes per in-flight message: nothing to recover */
    for (size_t i = 0; i < r->pcount; i++)
      n[i] = r->pend[(r->phead + i) % r->pcap];
    free(r->pend);
    r->pend = n;
    r->pcap = cap;
    r->phead = 0;
  }
  r->pend[(r->phead + r->pcount++) % r->pcap] = p;
}

struct done_list {
  tl__mq_pub **pubs;
  int *status;
  size_t n, cap;
};

static void done_add(struct done_list *dl, tl__mq_pub *p, int st)
{
  if (dl->n == dl->cap) {
    dl->cap = dl->cap ? dl->cap * 2 : 64;
    dl->pubs = realloc(dl->pubs, dl->cap * sizeof *dl->pubs);
    dl->status = realloc(dl->status, dl->cap * sizeof *dl->status);
    if (!dl->pubs || !dl->status)
      abort();
  }
  dl->pubs[dl->n] = p;
  dl->status[dl->n++] = st;
}

static void done_run(struct done_list *dl)
{
  for (size_t i = 0; i < dl->n; i++) {
    if (dl->status[i])
      tl_error_set(dl->status[i], "rabbitmq: publish not confirmed");
    tl__mq_pub_done(dl->pubs[i], dl->status[i]);
  }
  free(dl->pubs);
  free(dl->status);
}

/* Complete one pending entry. locks: r->mu held */
static void pend_complete(struct rmq *r, struct rpend *p, int st, struct done_list *dl)
{
  if (p->w) {
    p->w->status = st;
    p->w->done = true;
  } else if (p->pub) {
    done_add(dl, p->pub, st);
  }
  p->w = NULL;
  p->pub = NULL;
}

/* Confirms for `tag` (and every earlier one when `multiple`).
 * locks: r->mu held */
static void on_confirm(struct rmq *r, uint64_t tag, bool multiple, int st, struct done_list *dl)
{
  if (multiple) {
    while (r->pcount && r->pend[r->phead].tag <= tag) {
      pend_complete(r, &r->pend[r->phead], st, dl);
      r->phead = (r->phead + 1) % r->pcap;
      r->pcount--;
    }
  } else {
    for (size_t i = 0; i < r->pcount; i++) {
      struct rpend *p = &r->pend[(r->phead + i) % r->pcap];
      if (p->tag == tag) {
        pend_complete(r, p, st, dl);
        break;
      }
    }
    /* drop completed entries at the front */
    while (r->pcount && !r->pend[r->phead].w && !r->pend[r->phead].pub) {
      r->phead = (r->phead + 1) % r->pcap;
      r->pcount--;
    }
  }
  pthread_cond_broadcast(&r->cond);
}

/* The connection broke: fail what it carried. locks: r->mu held */
static void conn_lost(struct rmq *r, const char *why, struct done_list *dl)
{
  if (r->conn) {
    rclose(r->conn, false);
    r->conn = NULL;
  }
  if (r->up)
    tl_log(TL_LOG_WARN, "mq: rabbitmq connection lost, reconnecting",
           TL_F_STR("url", r->url_masked), TL_F_STR("error", why));
  r->up = false;
  snprintf(r->last_error, sizeof r->last_error, "%s", why);
  while (r->pcount) {
    pend_complete(r, &r->pend[r->phead], TL_ECONNECT, dl);
    r->phead = (r->phead + 1) % r->pcap;
    r->pcount--;
  }
  pthread_cond_broadcast(&r->cond);
}

static void *io_main(void *arg)
{
  struct rmq *r = arg;
  unsigned attempt = 0;
  pthread_mutex_lock(&r->mu);
  while (!r->stop) {
    struct done_list dl = { 0 };
    if (!r->up) {
      pthread_mutex_unlock(&r->mu);
      tl_sleep_us(tl_backoff_delay(&r->mq->cfg.reconnect, attempt < 10 ? attempt : 10));
      attempt++;
      pthread_mutex_lock(&r->mu);
      bool stopping = r->stop;
      pthread_mutex_unlock(&r->mu);
      if (stopping) {
        pthread_mutex_lock(&r->mu);
        continue;
      }
      amqp_connection_state_t c = NULL;
      int rc = rconnect(r, &c);
      if (rc == 0) {
        amqp_confirm_select(c, CH);
        if ((rc = rpc_check(r, c, "cannot enable publisher confirms"))) {
          rclose(c, false);
          c = NULL;
        }
      }
      char err[256];
      snprintf(err, sizeof err, "%s", rc ? tl_error_last() : "");
      pthread_mutex_lock(&r->mu);
      if (c) {
        r->conn = c;
        r->up = true;
        r->next_tag = 1;
        attempt = 0;
        pthread_cond_broadcast(&r->cond);
        tl_log(TL_LOG_INFO, "mq: rabbitmq reconnected", TL_F_STR("url", r->url_masked));
      } else {
        snprintf(r->last_error, sizeof r->last_error, "%s", err);
      }
      continue;
    }
    /* read whatever the broker sent: confirms, closes */
    for (;;) {
      amqp_frame_t f;
      struct timeval zero = { 0, 0 };
      int st = amqp_simple_wait_frame_noblock(r->conn, &f, &zero);
      if (st == AMQP_STATUS_TIMEOUT)
        break;
      if (st != AMQP_STATUS_OK) {
        conn_lost(r, amqp_error_string2(st), &dl);
        break;
      }
      if (f.frame_type != AMQP_FRAME_METHOD)
        continue;
      if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        amqp_basic_ack_t *a = f.payload.method.decoded;
        on_confirm(r, a->delivery_tag, a->multiple, 0, &dl);
      } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        amqp_basic_nack_t *a = f.payload.method.decoded;
        on_confirm(r, a->delivery_tag, a->multiple, TL_ERETRY, &dl);
      } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        conn_lost(r, "closed by the broker", &dl);
        break;
      }
    }
    int fd = -1;
    if (r->up) {
      amqp_maybe_release_buffers(r->conn);
      fd = amqp_get_sockfd(r->conn);
    }
    pthread_mutex_unlock(&r->mu);
    done_run(&dl);
    if (fd >= 0) {
      struct pollfd p = { .fd = fd, .events = POLLIN };
      poll(&p, 1, 50);
    }
    pthread_mutex_lock(&r->mu);
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

static int r_open(tl_mq *mq)
{
  struct rmq *r = calloc(1, sizeof *r);
  if (!r)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  r->mq = mq;
  const char *url = mq->cfg.url ? mq->cfg.url : "amqp://guest:guest@localhost:5672/";
  tl_url_mask(url, r->url_masked, sizeof r->url_masked);
  r->url_buf = strdup(url);
  if (!r->url_buf) {
    free(r);
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  }
  amqp_default_connection_info(&r->ci);
  if (amqp_parse_url(r->url_buf, &r->ci) != AMQP_STATUS_OK) {
    int rc = tl_error_set(TL_EINVAL, "RABBITMQ_URL: '%s' is not an amqp://user:pass@host:port/vhost URL",
                          r->url_masked);
    free(r->url_buf);
    free(r);
    return rc;
  }
  /* "amqp://host/" names the default vhost, as most clients read it */
  if (!r->ci.vhost || !r->ci.vhost[0])
    r->ci.vhost = (char *)"/";
  pthread_mutex_init(&r->mu, NULL);
  tl__cond_init_mono(&r->cond);
  amqp_connection_state_t c;
  int rc = rconnect(r, &c);
  if (!rc) {
    amqp_confirm_select(c, CH);
    if ((rc = rpc_check(r, c, "cannot enable publisher confirms")))
      rclose(c, false);
  }
  if (rc) {
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    free(r->url_buf);
    free(r);
    return rc;
  }
  r->conn = c;
  r->up = true;
  r->next_tag = 1;
  if (pthread_create(&r->io, NULL, io_main, r) != 0) {
    rclose(c, true);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    free(r->url_buf);
    free(r);
    return tl_error_set(TL_ENOMEM, "rabbitmq: cannot start the I/O thread");
  }
  mq->impl = r;
  return 0;
}

static int r_close(tl_mq *mq, int64_t deadline)
{
  struct rmq *r = mq->impl;
  pthread_mutex_lock(&r->mu);
  while (r->pcount && r->up)
    if (tl__mq_cond_wait_until(&r->cond, &r->mu, deadline) == ETIMEDOUT)
      break;
  r->stop = true;
  pthread_mutex_unlock(&r->mu);
  pthread_join(r->io, NULL);
  struct done_list dl = { 0 };
  pthread_mutex_lock(&r->mu);
  int rc = r->pcount ? tl_error_set(TL_ETIMEOUT, "rabbitmq: unconfirmed publishes at close") : 0;
  while (r->pcount) {
    pend_complete(r, &r->pend[r->phead], TL_ECLOSED, &dl);
    r->phead = (r->phead + 1) % r->pcap;
    r->pcount--;
  }
  rclose(r->conn, true);
  r->conn = NULL;
  pthread_mutex_unlock(&r->mu);
  done_run(&dl);
  free(r->pend);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cond);
  free(r->url_buf);
  free(r);
  mq->impl = NULL;
  return rc;
}

static int r_ready(tl_mq *mq)
{
  struct rmq *r = mq->impl;
  pthread_mutex_lock(&r->mu);
  bool up = r->up;
  char err[256];
  snprintf(err, sizeof err, "%s", r->last_error);
  pthread_mutex_unlock(&r->mu);
  if (up)
    return 0;
  return tl_error_set(TL_ECONNECT, "rabbitmq %s: not connected: %s", r->url_masked,
                      err[0] ? err : "reconnecting");
}

static int r_publish(tl_mq *mq, tl__mq_out *o, tl__mq_pub *pub, int64_t deadline)
{
  struct rmq *r = mq->impl;
  size_t nh;
  const tl_mq_header *h = tl__mq_out_headers(o, &nh);
  amqp_table_entry_t ent[TL_MQ_HEADERS_MAX + 1];
  size_t k = 0;
  for (size_t i = 0; i < nh; i++) {
    ent[k].key = amqp_cstring_bytes(h[i].key);
    ent[k].value.kind = AMQP_FIELD_KIND_UTF8;
    ent[k].value.value.bytes = amqp_cstring_bytes(h[i].value);
    k++;
  }
  if (!o->key_is_subject) {
    ent[k].key = amqp_cstring_bytes(TL__MQ_H_KEY);
    ent[k].value.kind = AMQP_FIELD_KIND_UTF8;
    ent[k].value.value.bytes = (amqp_bytes_t){ .len = o->key_len, .bytes = (void *)o->key };
    k++;
  }
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                 AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
  props.content_type = amqp_cstring_bytes("application/octet-stream");
  props.delivery_mode = 2; /* persistent */
  props.headers = (amqp_table_t){ .num_entries = (int)k, .entries = ent };
  props.message_id = amqp_cstring_bytes(o->id_text);
  props.timestamp = (uint64_t)(o->published_us / 1000000);
  amqp_bytes_t body = { .len = o->len, .bytes = (void *)o->data };
  amqp_bytes_t exchange = amqp_cstring_bytes(mq->cfg.exchange);
  amqp_bytes_t rkey = { .len = o->subject_len, .bytes = (void *)o->subject };

  struct waiter w = { 0 };
  struct done_list dl = { 0 };
  if (!pub)
    deadline = tl__mq_deadline_of(mq, deadline);
  pthread_mutex_lock(&r->mu);
  while (!r->up && !r->stop) {
    deadline = tl__mq_deadline_of(mq, deadline);
    if (tl__mq_cond_wait_until(&r->cond, &r->mu, deadline) == ETIMEDOUT && !r->up) {
      int rc = tl_error_set(TL_ECONNECT, "rabbitmq %s: not connected: %s", r->url_masked,
                            r->last_error[0] ? r->last_error : "reconnecting");
      pthread_mutex_unlock(&r->mu);
      return rc;
    }
  }
  if (r->stop) {
    pthread_mutex_unlock(&r->mu);
    return tl_error_set(TL_ECLOSED, "rabbitmq: closing");
  }
  int st = amqp_basic_publish(r->conn, CH, exchange, rkey, 0, 0, &props, body);
  if (st != AMQP_STATUS_OK) {
    int rc = tl_error_set(TL_ECONNECT, "rabbitmq %s: publish failed: %s", r->url_masked,
                          amqp_error_string2(st));
    conn_lost(r, amqp_error_string2(st), &dl);
    pthread_mutex_unlock(&r->mu);
    done_run(&dl);
    return rc;
  }
  uint64_t tag = r->next_tag++;
  pend_push(r, (struct rpend){ .tag = tag, .pub = pub, .w = pub ? NULL : &w });
  if (pub) {
    pthread_mutex_unlock(&r->mu);
    return 0;
  }
  /* Read the confirm ourselves rather than wait for the I/O thread to
   * wake up, read it and wake us: one thread hop less per publish. */
  while (!w.done && r->up) {
    bool got = false;
    for (;;) {
      amqp_frame_t f;
      struct timeval zero = { 0, 0 };
      int st2 = amqp_simple_wait_frame_noblock(r->conn, &f, &zero);
      if (st2 == AMQP_STATUS_TIMEOUT)
        break;
      if (st2 != AMQP_STATUS_OK) {
        conn_lost(r, amqp_error_string2(st2), &dl);
        break;
      }
      got = true;
      if (f.frame_type != AMQP_FRAME_METHOD)
        continue;
      if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        amqp_basic_ack_t *a = f.payload.method.decoded;
        on_confirm(r, a->delivery_tag, a->multiple, 0, &dl);
      } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        amqp_basic_nack_t *a = f.payload.method.decoded;
        on_confirm(r, a->delivery_tag, a->multiple, TL_ERETRY, &dl);
      } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        conn_lost(r, "closed by the broker", &dl);
        break;
      }
    }
    if (w.done || !r->up)
      break;
    int64_t now = tl_time_mono_us();
    if (now >= deadline)
      break;
    if (!got) {
      int fd = amqp_get_sockfd(r->conn);
      pthread_mutex_unlock(&r->mu);
      struct pollfd p = { .fd = fd, .events = POLLIN };
      int64_t ms = (deadline - now) / 1000;
      poll(&p, 1, ms > 10 ? 10 : (int)(ms < 1 ? 1 : ms));
      pthread_mutex_lock(&r->mu);
    }
  }
  while (!w.done)
    if (tl__mq_cond_wait_until(&r->cond, &r->mu, deadline) == ETIMEDOUT && !w.done)
      break;
  int rc = w.status;
  if (!w.done) {
    /* forget the waiter: it lives on this stack */
    for (size_t i = 0; i < r->pcount; i++) {
      struct rpend *p = &r->pend[(r->phead + i) % r->pcap];
      if (p->w == &w)
        p->w = NULL;
    }
    rc = tl_error_set(TL_ETIMEOUT, "rabbitmq %s: no publisher confirm within the timeout",
                      r->url_masked);
  } else if (rc) {
    rc = tl_error_set(rc, "rabbitmq %s: publish %s", r->url_masked,
                      rc == TL_ERETRY ? "refused by the broker (nack)" : "lost with the connection");
  }
  pthread_mutex_unlock(&r->mu);
  done_run(&dl);
  return rc;
}

/* ---- consumers ---- */

static int sub_setup(struct rsub *s, amqp_connection_state_t c)
{
  struct rmq *r = s->r;
  tl_mq_sub *sub = s->sub;
  amqp_table_entry_t args[1];
  amqp_table_t argt = amqp_empty_table;
  if (!s->group) {
    /* if this process dies the queue goes away on its own */
    args[0].key = amqp_cstring_bytes("x-expires");
    args[0].value.kind = AMQP_FIELD_KIND_I32;
    args[0].value.value.i32 = 3600 * 1000;
    argt = (amqp_table_t){ .num_entries = 1, .entries = args };
  }
  amqp_queue_declare(c, CH, amqp_cstring_bytes(s->queue), 0, 1, 0, 0, argt);
  int rc = rpc_check(r, c, "cannot declare the queue");
  if (!rc) {
    amqp_queue_bind(c, CH, amqp_cstring_bytes(s->queue), amqp_cstring_bytes(r->mq->cfg.exchange),
                    amqp_cstring_bytes(s->binding), amqp_empty_table);
    rc = rpc_check(r, c, "cannot bind the queue");
  }
  if (!rc) {
    unsigned pf = sub->opts.prefetch > 65535 ? 65535 : sub->opts.prefetch;
    amqp_basic_qos(c, CH, 0, (uint16_t)pf, 0);
    rc = rpc_check(r, c, "cannot set the prefetch");
  }
  if (!rc) {
    amqp_basic_consume(c, CH, amqp_cstring_bytes(s->queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    rc = rpc_check(r, c, "cannot start consuming");
  }
  return rc;
}

static void copy_bytes(char **p, amqp_bytes_t b, const char **out)
{
  memcpy(*p, b.bytes, b.len);
  (*p)[b.len] = '\0';
  *out = *p;
  *p += b.len + 1;
}

static struct rdelivery *delivery_new(struct rsub *s, amqp_envelope_t *env)
{
  amqp_basic_properties_t *pr = &env->message.properties;
  size_t need = env->routing_key.len + 1;
  int nent = 0;
  if (pr->_flags & AMQP_BASIC_HEADERS_FLAG) {
    nent = pr->headers.num_entries;
    for (int i = 0; i < nent; i++) {
      amqp_table_entry_t *e = &pr->headers.entries[i];
      need += e->key.len + 1;
      if (e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES)
        need += e->value.value.bytes.len + 1;
      else
        need += 1;
    }
  }
  struct rdelivery *rd = calloc(1, sizeof *rd);
  char *strings = malloc(need);
  if (!rd || !strings) {
    free(rd);
    free(strings);
    return NULL;
  }
  rd->strings = strings;
  rd->env = *env;
  rd->s = s;
  rd->gen = s->gen;
  tl_mq_msg *m = &rd->d.msg;
  char *p = strings;
  copy_bytes(&p, env->routing_key, &m->subject);
  m->key = m->subject;
  for (int i = 0; i < nent && rd->nh < TL_MQ_HEADERS_MAX; i++) {
    amqp_table_entry_t *e = &pr->headers.entries[i];
    const char *key, *val = "";
    copy_bytes(&p, e->key, &key);
    if (e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES)
      copy_bytes(&p, e->value.value.bytes, &val);
    else
      *p++ = '\0';
    if (!strcasecmp(key, TL__MQ_H_KEY))
      m->key = val;
    rd->hdrs[rd->nh++] = (tl_mq_header){ key, val };
  }
  m->data = env->message.body.bytes ? env->message.body.bytes : "";
  m->len = env->message.body.len;
  tl__mq_msg_finish(m, rd->hdrs, &rd->nh);
  rd->d.broker_count = env->redelivered ? 2 : 1;
  return rd;
}

static void delivery_free(struct rdelivery *rd)
{
  amqp_destroy_envelope(&rd->env);
  free(rd->strings);
  free(rd);
}

/* Send the queued acks of the current connection. Called by the thread. */
static void flush_settles(struct rsub *s)
{
  pthread_mutex_lock(&s->mu);
  struct settle_item *items = s->settles;
  size_t n = s->nsettles;
  s->settles = NULL;
  s->nsettles = s->capsettles = 0;
  pthread_mutex_unlock(&s->mu);
  for (size_t i = 0; i < n; i++) {
    if (!s->conn || items[i].gen != s->gen)
      continue; /* that channel is gone: the broker requeued it */
    if (items[i].how == TL__MQ_SETTLE_ACK)
      amqp_basic_ack(s->conn, CH, items[i].tag, 0);
    else
      amqp_basic_nack(s->conn, CH, items[i].tag, 0, 1);
  }
  free(items);
}

static void r_settle(tl_mq_sub *sub, tl__mq_delivery *d, int how)
{
  struct rdelivery *rd = (struct rdelivery *)d;
  struct rsub *s = sub->impl;
  if (consumer_thread_of == s) {
    if (s->conn && rd->gen == s->gen) {
      if (how == TL__MQ_SETTLE_ACK)
        amqp_basic_ack(s->conn, CH, rd->env.delivery_tag, 0);
      else
        amqp_basic_nack(s->conn, CH, rd->env.delivery_tag, 0, 1);
    }
  } else {
    pthread_mutex_lock(&s->mu);
    if (s->nsettles == s->capsettles) {
      size_t cap = s->capsettles ? s->capsettles * 2 : 64;
      struct settle_item *n = realloc(s->settles, cap * sizeof *n);
      if (n) {
        s->settles = n;
        s->capsettles = cap;
      }
    }
    if (s->nsettles < s->capsettles)
      s->settles[s->nsettles++] = (struct settle_item){ rd->env.delivery_tag, rd->gen, how };
    pthread_mutex_unlock(&s->mu);
  }
  delivery_free(rd);
}

static void *consume_main(void *arg)
{
  struct rsub *s = arg;
  struct rmq *r = s->r;
  consumer_thread_of = s;
  unsigned attempt = 0;
  bool consuming = true;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    bool stop = s->stop_consume, exit_now = s->exit;
    if (stop && consuming) {
      consuming = false;
      s->consume_stopped = true;
      pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->mu);
    if (exit_now)
      break;
    if (!s->conn) {
      if (stop) {
        tl_sleep_us(10000);
        continue;
      }
      tl_sleep_us(tl_backoff_delay(&r->mq->cfg.reconnect, attempt < 10 ? attempt : 10));
      attempt++;
      amqp_connection_state_t c;
      if (rconnect(r, &c) == 0) {
        if (sub_setup(s, c) == 0) {
          s->conn = c;
          s->gen++;
          attempt = 0;
          tl_log(TL_LOG_INFO, "mq: rabbitmq consumer reconnected", TL_F_STR("queue", s->queue));
        } else {
          rclose(c, false);
        }
      }
      continue;
    }
    flush_settles(s);
    amqp_maybe_release_buffers(s->conn);
    struct timeval tv = { 0, s->sub->lanes ? 5000 : 100000 };
    amqp_envelope_t env;
    amqp_rpc_reply_t rep = amqp_consume_message(s->conn, &env, &tv, 0);
    if (rep.reply_type == AMQP_RESPONSE_NORMAL) {
      if (stop) {
        amqp_basic_nack(s->conn, CH, env.delivery_tag, 0, 1);
        amqp_destroy_envelope(&env);
        continue;
      }
      struct rdelivery *rd = delivery_new(s, &env);
      if (!rd) {
        amqp_basic_nack(s->conn, CH, env.delivery_tag, 0, 1);
        amqp_destroy_envelope(&env);
        continue;
      }
      tl__mq_deliver(s->sub, &rd->d);
      continue;
    }
    if (rep.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        rep.library_error == AMQP_STATUS_TIMEOUT)
      continue;
    if (rep.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        rep.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      /* a method frame instead of a delivery: a close ends the channel */
      amqp_frame_t f;
      struct timeval zero = { 0, 0 };
      int st = amqp_simple_wait_frame_noblock(s->conn, &f, &zero);
      if (st == AMQP_STATUS_TIMEOUT ||
          (st == AMQP_STATUS_OK && !(f.frame_type == AMQP_FRAME_METHOD &&
                                     (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                                      f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD))))
        continue;
    }
    char buf[256];
    tl_log(TL_LOG_WARN, "mq: rabbitmq consumer connection lost, reconnecting",
           TL_F_STR("queue", s->queue), TL_F_STR("error", reply_text(rep, buf, sizeof buf)));
    rclose(s->conn, false);
    s->conn = NULL;
  }
  flush_settles(s);
  if (s->conn && !s->group) {
    amqp_queue_delete(s->conn, CH, amqp_cstring_bytes(s->queue), 0, 0);
    amqp_get_rpc_reply(s->conn);
  }
  rclose(s->conn, true);
  s->conn = NULL;
  consumer_thread_of = NULL;
  return NULL;
}

static int r_subscribe(tl_mq_sub *sub)
{
  struct rmq *r = sub->mq->impl;
  struct rsub *s = calloc(1, sizeof *s);
  if (!s)
    return tl_error_set(TL_ENOMEM, "mq: out of memory");
  s->r = r;
  s->sub = sub;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cond, NULL);
  if (tl__mq_pattern_to_amqp(sub->pattern, s->binding, sizeof s->binding) < 0) {
    free(s);
    return tl_error_set(TL_EINVAL, "pattern '%s': too long for an AMQP binding", sub->pattern);
  }
  unsigned long long h = (unsigned long long)tl__mq_hash(sub->pattern, strlen(sub->pattern));
  if (sub->group[0]) {
    s->group = true;
    snprintf(s->queue, sizeof s->queue, "%.100s.%s.%016llx", r->mq->cfg.exchange, sub->group, h);
  } else {
    snprintf(s->queue, sizeof s->queue, "%.100s.sub.%016llx%016llx", r->mq->cfg.exchange,
             (unsigned long long)tl_rand64(), (unsigned long long)tl_rand64());
  }
  amqp_connection_state_t c;
  int rc = rconnect(r, &c);
  if (!rc && (rc = sub_setup(s, c)))
    rclose(c, false);
  if (rc) {
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
    return rc;
  }
  s->conn = c;
  s->gen = 1;
  sub->impl = s;
  if (pthread_create(&s->thread, NULL, consume_main, s) != 0) {
    rclose(c, true);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
    sub->impl = NULL;
    return tl_error_set(TL_ENOMEM, "rabbitmq: cannot start the consumer thread");
  }
  s->started = true;
  return 0;
}

static void r_sub_stop(tl_mq_sub *sub)
{
  struct rsub *s = sub->impl;
  pthread_mutex_lock(&s->mu);
  s->stop_consume = true;
  while (!s->consume_stopped)
    pthread_cond_wait(&s->cond, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static void r_sub_free(tl_mq_sub *sub)
{
  struct rsub *s = sub->impl;
  pthread_mutex_lock(&s->mu);
  s->exit = true;
  pthread_mutex_unlock(&s->mu);
  if (s->started)
    pthread_join(s->thread, NULL);
  free(s->settles);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cond);
  free(s);
  sub->impl = NULL;
}

const struct tl__mq_backend tl__mq_rabbitmq = {
  .name = "rabbitmq",
  .open = r_open,
  .close = r_close,
  .ready = r_ready,
  .publish = r_publish,
  .subscribe = r_subscribe,
  .sub_stop = r_sub_stop,
  .sub_free = r_sub_free,
  .settle = r_settle,
};
