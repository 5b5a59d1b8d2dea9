/* Waking subscribers after appends: in this process through a condition
 * variable; on PostgreSQL also in every other process, with NOTIFY
 * trellis_es sent after the commit by one thread per store, which folds a
 * burst of appends into one notification.
 *
 * Why not NOTIFY inside the appending transaction (a trigger did that
 * before schema version 3): PostgreSQL holds its notification queue lock
 * from before a notifying commit until its commit record is flushed, so
 * such commits run one at a time and concurrent appenders lose group
 * commit (8 writers here: 5.1k appends/s instead of 7.7k). A NOTIFY in a
 * transaction of its own writes no WAL and holds that lock briefly. It is
 * still a transaction per notification, so notifications are at least
 * NOTIFY_GAP_US apart: after an idle while the first goes at once, in a
 * stream of appends one covers all those of the gap (one per append cost
 * a single writer about a quarter of its appends/s here). A process that
 * dies between a commit and its notification leaves the other processes
 * to find the events at their next poll. */
#include "es/es_int.h"

#define CHANNEL "trellis_es"
#define NOTIFY_GAP_US 1000

static void *notifier_main(void *arg)
{
  tl_es *es = arg;
  int64_t last = 0; /* mono µs of the last notification */
  pthread_mutex_lock(&es->mu);
  for (;;) {
    while (!es->notify_pending && !es->closing) pthread_cond_wait(&es->notify_cv, &es->mu);
    if (!es->notify_pending) break; /* closing, nothing left to send */
    int64_t wait = last + NOTIFY_GAP_US - tl_time_mono_us();
    if (wait > 0 && !es->closing) {
      /* Appends meanwhile join this notification. */
      pthread_mutex_unlock(&es->mu);
      tl_sleep_us(wait);
      pthread_mutex_lock(&es->mu);
    }
    es->notify_pending = false;
    pthread_mutex_unlock(&es->mu);
    if (tl_db_notify(es->db, CHANNEL, "") != 0)
      tl_log(TL_LOG_WARN, "event store: cannot notify subscribers; they will poll",
             TL_F_STR("error", tl_error_last()));
    last = tl_time_mono_us();
    pthread_mutex_lock(&es->mu);
  }
  pthread_mutex_unlock(&es->mu);
  return NULL;
}

void tl__es_notify(tl_es *es)
{
  bool send_now = false;
  pthread_mutex_lock(&es->mu);
  es->append_seq++;
  pthread_cond_broadcast(&es->appended);
  if (es->dialect == TL_DB_POSTGRES && !es->closing) {
    es->notify_pending = true;
    if (!es->notifier_on)
      es->notifier_on = pthread_create(&es->notifier, NULL, notifier_main, es) == 0;
    if (es->notifier_on) pthread_cond_signal(&es->notify_cv);
    else send_now = true; /* no thread: pay the round trip here */
  }
  pthread_mutex_unlock(&es->mu);
  if (send_now) tl_db_notify(es->db, CHANNEL, "");
}

static void notify_hook(void *es)
{
  tl__es_notify(es);
}

int tl__es_notify_tx(tl_es *es, tl_tx *tx)
{
  return tl_tx_on_commit(tx, notify_hook, es);
}

void tl__es_wake_close(tl_es *es)
{
  pthread_mutex_lock(&es->mu);
  es->closing = true;
  bool joined = es->notifier_on;
  pthread_cond_signal(&es->notify_cv);
  pthread_mutex_unlock(&es->mu);
  if (joined) pthread_join(es->notifier, NULL);
}
