/* Event store internals shared by store.c, read.c, snapshot.c and sub.c. */
#ifndef TRELLIS_ES_INT_H
#define TRELLIS_ES_INT_H

#include <pthread.h>

#include <trellis/error.h>
#include <trellis/eventstore.h>
#include <trellis/log.h>

typedef struct tl__upcaster {
  char *type;
  int from;
  tl_es_upcaster fn;
  void *ctx;
} tl__upcaster;

struct tl_es {
  tl_db *db;
  tl_db_dialect dialect;
  tl_metrics *metrics;
  tl_series *m_appended;   /* events appended */
  tl_series *m_conflicts;  /* appends refused on the version */
  tl_series *m_append_s;   /* append latency, seconds */
  tl_series *m_read;       /* events read */
  tl_metric *m_lag_events; /* per subscription (sub.c) */
  tl_metric *m_lag_seconds;
  pthread_mutex_t mu;
  pthread_cond_t appended; /* broadcast after each local commit */
  uint64_t append_seq;     /* locks: mu */
  tl__upcaster *up;        /* locks: mu */
  size_t nup, capup;
  /* PostgreSQL: the thread that sends NOTIFY after commits (wake.c) */
  pthread_cond_t notify_cv;
  pthread_t notifier;
  bool notifier_on, notify_pending, closing; /* locks: mu */
};

/* A tl_event_list with the bookkeeping of who owns what. */
typedef struct tl__list {
  tl_event_list pub;
  size_t cap;
  char **blocks;  /* one allocation per event holding its strings */
  char **upcast;  /* data replaced by an upcaster, or NULL */
} tl__list;

/* The columns every event query selects, in this order. */
#define TL__EV_COLS \
  "position, tx, id, stream, category, type, version, data, metadata, " \
  "schema_version, created_us"

int tl__list_new(tl__list **out);
/* Append the current row (TL__EV_COLS) to the list, upcasting it. */
int tl__list_add_row(tl_es *es, tl__list *l, tl_rows *rows);
/* Run a query of TL__EV_COLS into a new list. */
int tl__es_query_events(tl_es *es, tl_tx *tx, const char *sql, const tl_value *args,
                        size_t nargs, tl_event_list **out);
/* After a commit of appended events: wake this process's subscriptions
 * and, on PostgreSQL, have every other process's woken too (wake.c). */
void tl__es_notify(tl_es *es);
/* Inside an appending transaction: tl__es_notify() once it commits. */
int tl__es_notify_tx(tl_es *es, tl_tx *tx);
/* Send a pending notification and stop the notifier (tl_es_close). */
void tl__es_wake_close(tl_es *es);
/* "user" from "user-123" into buf (the whole name when it has no '-'). */
void tl__es_category(const char *stream, char *buf, size_t size);
/* The $all query text for a filter, selecting `cols`: $1 tx, $2
 * position, $3 limit, then $4.. the category and types. */
int tl__es_all_sql(tl_es *es, const char *cols, const tl_es_filter *f, char *buf, size_t size,
                   tl_value *args, size_t *nargs, size_t maxargs);

/* Register the migration set "trellis_es". */
int tl__es_schema_register(void);

#endif
