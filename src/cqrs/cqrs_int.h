/* Internal to the cqrs module: the group commit of aggregates (group.c)
 * as the aggregate helper (aggregate.c) uses it. */
#ifndef TRELLIS_CQRS_INT_H
#define TRELLIS_CQRS_INT_H

#include <pthread.h>

#include <trellis/cqrs.h>

/* One decision's append, waiting for its batch. */
typedef struct tl__group_item {
  tl_es_append_req req;             /* stream, expected, events */
  const json_t *state;              /* for in_tx */
  const tl_aggregate_exec_opts *o;  /* in_tx and its ctx */
  int rc;                           /* out: the outcome */
  bool in_tx_failed;                /* out: rc is in_tx's */
  bool alone;                       /* out: run it on its own instead */
  /* the queue's */
  bool done;
  pthread_cond_t cv;
  struct tl__group_item *next;
} tl__group_item;

/* Append `it` in a transaction shared with other callers' appends, and
 * run its in_tx there. Returns its outcome (the message set on this
 * thread); it->alone asks the caller to append on its own: the batch
 * failed as a whole, so only an own transaction tells whose fault it
 * is. */
int tl__group_append(tl_aggregate_group *g, tl__group_item *it);

#endif
