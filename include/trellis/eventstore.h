/* trellis: an append-only event store on PostgreSQL, MySQL/MariaDB or
 * SQLite: streams with versions, one global order with no skipped events,
 * reads forward, backward and as of a time, snapshots, stream metadata,
 * soft delete, truncate-before, upcasting and subscriptions.
 *
 * Threads: a tl_es is safe to share between threads. A tl_event_list
 * belongs to the caller. Subscription handlers run on the subscription's
 * own thread. See docs/event-sourcing.md. */
#ifndef TRELLIS_EVENTSTORE_H
#define TRELLIS_EVENTSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "db.h"
#include "metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_es tl_es;         /* an event store on one database */
typedef struct tl_es_sub tl_es_sub; /* a running subscription */

/* Expected versions for tl_es_append_to(); a value >= 0 is exact. */
#define TL_ES_ANY (-1)       /* no check */
#define TL_ES_NO_STREAM (-2) /* the stream must have no events */
#define TL_ES_EXISTS (-3)    /* the stream must have at least one event */

#define TL_ES_NAME_MAX 200 /* bytes of a stream, type or category name */

/* One event. To append, set aggregate_id (the stream), event_type, data
 * and optionally id (else a UUIDv7 is made), metadata, version (the
 * version this event must get; 0: any) and schema_version (0 means 1).
 * The store fills id, category, version, position, tx and timestamp_us.
 * In a tl_event_list every string is owned by the list. */
typedef struct tl_event {
  char id[TL_UUID_STRLEN];  /* UUIDv7 or the caller's; the idempotency key */
  const char *aggregate_id; /* the stream, e.g. "user-123" */
  const char *category;     /* part of the stream before the first '-' */
  const char *event_type;   /* e.g. "UserCreated" */
  const char *data;         /* JSON object */
  const char *metadata;     /* JSON object (causation_id, correlation_id,
                               traceparent, ...); NULL: "{}" */
  int64_t version;          /* 1, 2, ... within the stream */
  int64_t position;         /* global position */
  int64_t tx;               /* ordering group (PostgreSQL transaction id;
                               0 elsewhere): global order is (tx, position) */
  int64_t timestamp_us;     /* UTC µs when appended */
  int schema_version;       /* of `data`, after upcasting on read */
} tl_event;

/* Events read from the store; free with tl_event_list_free(). */
typedef struct tl_event_list {
  size_t count;
  tl_event *events;
} tl_event_list;

/* Free a list and every string in it. NULL-safe. */
void tl_event_list_free(tl_event_list *list);

/* A place in the global order: after the event (tx, position). {0, 0} is
 * the start. Compare with tl_es_checkpoint_cmp(). */
typedef struct tl_es_checkpoint {
  int64_t tx;
  int64_t position;
} tl_es_checkpoint;

/* <0, 0 or >0 as `a` is before, at or after `b`. */
int tl_es_checkpoint_cmp(const tl_es_checkpoint *a, const tl_es_checkpoint *b);

/* ---- opening ---------------------------------------------------------- */

/* Zero fields take the defaults shown. */
typedef struct tl_es_config {
  tl_db *db;            /* required; borrowed, must outlive the store */
  bool no_migrate;      /* don't create or upgrade the schema on open */
  tl_metrics *metrics;  /* where counters go [tl_metrics_default()] */
} tl_es_config;

/* Open an event store on cfg->db (SQLite, PostgreSQL or MySQL/MariaDB),
 * applying the schema migrations of set "trellis_es" unless no_migrate.
 * `cfg` is copied. Returns 0, TL_EINVAL, TL_EUNSUPP (MongoDB) or the
 * migration's error. */
int tl_es_open(tl_es **out, const tl_es_config *cfg);

/* Close the store. Every subscription must be stopped first. NULL-safe. */
void tl_es_close(tl_es *es);

/* The database the store writes to. Borrowed. */
tl_db *tl_es_db(tl_es *es);

/* ---- appending -------------------------------------------------------- */

/* Append `n` events to the stream of events[0].aggregate_id (all must
 * name the same stream) in one transaction. If events[0].version > 0 the
 * stream must be at events[0].version - 1, else any version is accepted.
 * Fills id, category, version, position, tx and timestamp_us of each
 * event (strings stay the caller's). Returns 0; TL_ECONFLICT, writing
 * nothing, when the version differs (the message says expected and
 * found); TL_ESTATE for a deleted stream; TL_EINVAL; a database error.
 * Re-appending events whose ids are stored returns their original
 * version and position with 0. Any thread. */
int tl_es_append(tl_es *es, tl_event *events, size_t n);

/* Same, with an explicit expected version: TL_ES_ANY, TL_ES_NO_STREAM,
 * TL_ES_EXISTS or an exact version (0 = no events yet). The events'
 * aggregate_id may be NULL (taken from `stream`); their version is
 * ignored on input. */
int tl_es_append_to(tl_es *es, const char *stream, int64_t expected,
                    tl_event *events, size_t n);

/* The same append inside the caller's transaction `tx` (committed or
 * rolled back by the caller). On PostgreSQL and MySQL a conflict leaves
 * `tx` usable only for rollback. */
int tl_es_append_tx(tl_es *es, tl_tx *tx, const char *stream, int64_t expected,
                    tl_event *events, size_t n);

/* One append of a batch (tl_es_append_batch_tx). */
typedef struct tl_es_append_req {
  const char *stream;
  int64_t expected;  /* as tl_es_append_to's */
  tl_event *events;  /* filled in as by tl_es_append_to */
  size_t n;
  int rc;            /* out: 0, TL_ECONFLICT (another version: nothing
                        written), TL_ESTATE (deleted) or TL_EINVAL */
  char error[256];   /* out: the message when rc is not 0 */
} tl_es_append_req;

/* Several appends, to any streams, inside the caller's transaction `tx`:
 * on PostgreSQL one statement for all of them (a group commit's batch),
 * elsewhere one after the other. Each request gets its own outcome in rc:
 * a refused one (version, deleted stream, invalid) writes nothing and
 * leaves `tx` usable, so the others can still commit. Two requests for
 * one stream apply in order. Returns 0 when every request has its
 * outcome, or a database error, after which `tx` accepts only rollback.
 * Subscribers are woken when `tx` commits. */
int tl_es_append_batch_tx(tl_es *es, tl_tx *tx, tl_es_append_req *reqs, size_t n);

/* ---- reading a stream ------------------------------------------------- */

/* Options for tl_es_read_stream(); zero fields take defaults. */
typedef struct tl_es_read_opts {
  int64_t from_version; /* forward: first version; backward: last
                           version (0: the end) */
  int64_t to_version;   /* up-to version, inclusive (0: no limit) */
  int64_t until_us;     /* only events appended at or before (0: now) */
  size_t max_count;     /* at most this many (0: all) */
  bool backward;        /* newest first */
} tl_es_read_opts;

/* Read a stream's events (upcast, in version order or reversed).
 * `opts` may be NULL. `*out` is freed with tl_event_list_free(). A stream
 * with no events gives an empty list; a deleted stream TL_ENOTFOUND. */
int tl_es_read_stream(tl_es *es, const char *stream, const tl_es_read_opts *opts,
                      tl_event_list **out);

/* Every event of `stream`, oldest first. */
int tl_es_get_events(tl_es *es, const char *stream, tl_event_list **out);

/* The events of `stream` appended at or before `as_of_us` (UTC µs): the
 * stream as it was then. */
int tl_es_get_events_until(tl_es *es, const char *stream, int64_t as_of_us,
                           tl_event_list **out);

/* The stream's current version (0 when it has no events). Returns 0 or
 * TL_ENOTFOUND for a deleted stream. */
int tl_es_stream_version(tl_es *es, const char *stream, int64_t *version);

/* ---- reading everything ----------------------------------------------- */

/* A filter for $all reads and subscriptions; zero fields match all. */
typedef struct tl_es_filter {
  const char *category;     /* only this category */
  const char *const *types; /* only these event types */
  size_t ntypes;
} tl_es_filter;

/* Up to `max` events (0: 1000) after `after` (NULL: the start) in global
 * order, matching `filter` (may be NULL). Only events that can no longer
 * be preceded by an uncommitted one are returned, so a reader that
 * continues from the last event it got never skips one. */
int tl_es_read_all(tl_es *es, const tl_es_checkpoint *after, const tl_es_filter *filter,
                   size_t max, tl_event_list **out);

/* The checkpoint just before the event at global `position` (so reading
 * from it starts with that event). TL_ENOTFOUND if there is none. */
int tl_es_checkpoint_at(tl_es *es, int64_t position, tl_es_checkpoint *out);

/* ---- snapshots -------------------------------------------------------- */

/* A stream's state at a version. Owned by the caller: tl_es_snapshot_free(). */
typedef struct tl_es_snapshot {
  int64_t version;    /* the stream version the state includes */
  int schema_version; /* of the state's format */
  char *state;        /* JSON */
  int64_t created_us;
} tl_es_snapshot;

/* Store the state of `stream` at `version`, replacing the previous
 * snapshot unless that one is of a later version. `state` is JSON,
 * copied. Returns 0, TL_EINVAL or a database error. */
int tl_es_snapshot_save(tl_es *es, const char *stream, int64_t version,
                        int schema_version, const char *state);

/* The latest snapshot of `stream`, or TL_ENOTFOUND. */
int tl_es_snapshot_load(tl_es *es, const char *stream, tl_es_snapshot *out);

/* Free the state of a snapshot. NULL-safe. */
void tl_es_snapshot_free(tl_es_snapshot *snap);

/* ---- stream metadata, delete, truncate -------------------------------- */

/* Set the stream's metadata (a JSON object, copied). */
int tl_es_stream_metadata_set(tl_es *es, const char *stream, const char *json);

/* The stream's metadata ("{}" when unset); free with tl_free(). */
int tl_es_stream_metadata_get(tl_es *es, const char *stream, char **json);

/* Soft delete: the stream's events stay in the global log (subscriptions
 * already saw them) but the stream reads as TL_ENOTFOUND and refuses
 * appends with TL_ESTATE. Returns 0 or TL_ENOTFOUND. */
int tl_es_stream_delete(tl_es *es, const char *stream);

/* Hide the stream's events with a version below `version` from stream
 * reads (they stay in $all). Returns 0 or TL_ENOTFOUND. */
int tl_es_stream_truncate_before(tl_es *es, const char *stream, int64_t version);

/* ---- upcasting -------------------------------------------------------- */

/* Turn `data` (JSON of event `type` at `from_schema_version`) into the
 * next schema version: set `*out` to new JSON allocated with malloc().
 * Return 0, or a TL_E* code that fails the read. Runs on the reading
 * thread; `data` is borrowed for the call. */
typedef int (*tl_es_upcaster)(const char *type, const char *data, char **out, void *ctx);

/* Register an upcaster from `from_schema_version` to the next. Reads
 * apply them in a chain until none matches. `type` is copied; `ctx` is
 * borrowed until tl_es_close(). Register before reading. */
int tl_es_upcaster_register(tl_es *es, const char *type, int from_schema_version,
                            tl_es_upcaster fn, void *ctx);

/* ---- subscriptions ---------------------------------------------------- */

/* Handle one event. `ev` is borrowed until it returns. `tx` is the
 * transaction that will also save the checkpoint (transactional
 * subscriptions) or NULL. Return 0 to advance; any other value retries
 * the event after a backoff (and rolls back `tx`). Runs on the
 * subscription's thread, one event at a time, in global order. */
typedef int (*tl_es_handler)(const tl_event *ev, tl_tx *tx, void *ctx);

/* Options; zero fields take the defaults shown. */
typedef struct tl_es_sub_opts {
  const char *name;       /* required: checkpoint and lease name, copied */
  tl_es_filter filter;    /* which events the handler sees (copied) */
  bool transactional;     /* run each batch and its checkpoint in one tx */
  size_t batch;           /* events per read [256] */
  int64_t lease_us;       /* lease length; another replica takes over
                             this long after the holder died [10 s] */
  int64_t poll_min_us;    /* first poll delay when idle [5 ms] */
  int64_t poll_max_us;    /* longest poll delay when idle [500 ms] */
  int64_t retry_us;       /* delay after a failing handler [100 ms] */
} tl_es_sub_opts;

/* Start a named subscription: it catches up from its stored checkpoint
 * (the start for a new name), then follows new events. Only one replica
 * at a time runs a name (a lease row); the others wait and take over.
 * The handler never fires if this fails. Returns 0, TL_EINVAL or
 * TL_ENOMEM. */
int tl_es_subscribe(tl_es *es, const tl_es_sub_opts *opts, tl_es_handler handler,
                    void *ctx, tl_es_sub **out);

/* Stop the subscription (waiting for a running handler), release the
 * lease and free it. NULL-safe. */
void tl_es_sub_stop(tl_es_sub *sub);

/* The last checkpoint this subscription saved. */
void tl_es_sub_checkpoint(tl_es_sub *sub, tl_es_checkpoint *out);

/* Does this subscription hold its lease right now? */
bool tl_es_sub_is_leader(tl_es_sub *sub);

/* Pause (waiting for a running batch to finish) or resume the
 * subscription's work; the lease is kept alive while paused. */
void tl_es_sub_pause(tl_es_sub *sub, bool paused);

/* The stored checkpoint of subscription `name` ({0,0} if none). */
int tl_es_checkpoint_load(tl_es *es, const char *name, tl_es_checkpoint *out);

/* Overwrite the stored checkpoint of `name` (e.g. to replay). */
int tl_es_checkpoint_store(tl_es *es, const char *name, const tl_es_checkpoint *cp);

/* Lowercase message subject for an event: "<category>.<type words joined
 * by '_'>", leaving out a first word equal to the category: "user" and
 * "UserCreated" give "user.created", "user" and "PasswordChanged" give
 * "user.password_changed". Writes at most `size` bytes (NUL included);
 * returns the length it needed. */
size_t tl_es_subject(const char *category, const char *type, char *buf, size_t size);

#ifdef __cplusplus
}
#endif
#endif
