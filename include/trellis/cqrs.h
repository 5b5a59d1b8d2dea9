/* trellis: CQRS on top of the event store. A command bus and a query bus
 * (one handler per name, JSON in and out, a middleware chain), an
 * aggregate helper (load, decide, append with the expected version,
 * retry on conflict), projections (subscriptions that maintain read-model
 * tables, rebuilt by replaying the log) and the relay that publishes every
 * event to a message queue.
 *
 * Threads: buses, projections and relays are safe to share between
 * threads. See docs/cqrs.md. */
#ifndef TRELLIS_CQRS_H
#define TRELLIS_CQRS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "db.h"
#include "eventstore.h"
#include "metrics.h"
#include "mq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_command_bus tl_command_bus;
typedef struct tl_query_bus tl_query_bus;

/* ---- buses ------------------------------------------------------------ */

/* Zero fields take the defaults shown. */
typedef struct tl_cqrs_config {
  tl_db *db;           /* stores idempotency keys (borrowed; NULL: the
                          idempotency middleware fails with TL_ESTATE) */
  tl_metrics *metrics; /* [tl_metrics_default()] */
} tl_cqrs_config;

/* Handle a command or query. `payload` is borrowed for the call; set
 * `*result` to a new JSON value (the bus takes the reference) or leave it
 * NULL for null. Return 0 or a TL_E* code with tl_error_set(). Runs on
 * the thread that called execute. */
typedef int (*tl_cqrs_handler)(const json_t *payload, json_t **result, void *ctx);

/* Check a payload before its handler runs (the validation middleware).
 * Return 0 or TL_EINVAL with a message naming the field. Any thread. */
typedef int (*tl_cqrs_validator)(const json_t *payload, void *ctx);

/* One execution passing through the middleware chain. */
typedef struct tl_cqrs_call {
  const char *kind;            /* "command" or "query" */
  const char *name;            /* the registered name */
  json_t *payload;             /* borrowed for the call */
  const char *idempotency_key; /* NULL: none */
  json_t *result;              /* the handler's result, owned by the call */
  int64_t elapsed_us;          /* set by tl_cqrs_mw_timing */
} tl_cqrs_call;

typedef struct tl_cqrs_next tl_cqrs_next;

/* Continue down the chain (the next middleware, finally the handler).
 * Call it at most once; returns what the rest of the chain returned. */
int tl_cqrs_next_run(tl_cqrs_next *next, tl_cqrs_call *call);

/* A middleware: look at or change `call`, call tl_cqrs_next_run() (or
 * not, to short-circuit with its own status and result). Runs on the
 * executing thread; `call` is borrowed until it returns. */
typedef int (*tl_cqrs_middleware)(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx);

/* Built-in middleware (pass NULL as ctx):
 * validate: runs the validator registered for the name, if any;
 * logging: one JSON log line per call with name, status and duration
 *   (info for commands, debug for queries; failures at info when they are
 *   the caller's (TL_EINVAL, TL_ENOTFOUND, TL_ECONFLICT, TL_ECONSTRAINT,
 *   TL_EPRECOND, TL_ESTATE, TL_EPERM), else at warn);
 * metrics: trellis_cqrs_calls_total{bus,name,outcome} (bus "command" or
 *   "query", outcome "ok" or a status name) and the
 *   trellis_cqrs_call_duration_seconds{bus,name} histogram;
 * timing: fills call->elapsed_us, logs calls slower than 1 s as warnings;
 * idempotency: with a key, the first successful result for (name, key) is
 *   stored in the database and returned to every later call with the same
 *   key (TL_ECONFLICT if the payload differs); a call while the first
 *   still runs waits for its result (TL_EBUSY after 10 s). */
int tl_cqrs_mw_validate(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx);
int tl_cqrs_mw_logging(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx);
int tl_cqrs_mw_metrics(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx);
int tl_cqrs_mw_timing(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx);
int tl_cqrs_mw_idempotency(tl_cqrs_call *call, tl_cqrs_next *next, void *ctx);

/* Options for one execution. */
typedef struct tl_cqrs_exec_opts {
  const char *idempotency_key; /* copied for the call */
} tl_cqrs_exec_opts;

/* Create a bus. `cfg` may be NULL; it is copied. When cfg->db is set the
 * table trellis_cqrs_idempotency is created (migration set
 * "trellis_cqrs"). Returns 0, TL_ENOMEM or the migration's error. */
int tl_command_bus_new(tl_command_bus **out, const tl_cqrs_config *cfg);
/* Free the bus; no execute may be running. NULL-safe. */
void tl_command_bus_free(tl_command_bus *cb);

/* Register the handler of `name` (copied); `ctx` is borrowed until the
 * bus is freed. TL_ECONFLICT if the name has one already. Register
 * handlers and middleware before executing. */
int tl_command_bus_register(tl_command_bus *cb, const char *name, tl_cqrs_handler fn, void *ctx);
/* Register the validator of `name` (used by tl_cqrs_mw_validate). */
int tl_command_bus_validator(tl_command_bus *cb, const char *name, tl_cqrs_validator fn, void *ctx);
/* Append a middleware to the chain (first added runs first). */
int tl_command_bus_use(tl_command_bus *cb, tl_cqrs_middleware mw, void *ctx);
/* Install validate, logging, metrics, timing and idempotency, in that order. */
int tl_command_bus_use_defaults(tl_command_bus *cb);

/* Execute command `name` with `json` (text, parsed here). `*result` (may
 * be NULL) gets the result as JSON text, freed with tl_free(). Returns 0,
 * TL_ENOTFOUND (no handler), TL_EINVAL (bad JSON, validation) or the
 * handler's or a middleware's error. Any thread. */
int tl_command_bus_execute(tl_command_bus *cb, const char *name, const char *json, char **result);
/* Same, with options (may be NULL). */
int tl_command_bus_execute_opts(tl_command_bus *cb, const char *name, const char *json,
                                const tl_cqrs_exec_opts *opts, char **result);

/* Same, on parsed JSON, without the text round trips: `payload` is
 * borrowed for the call (middleware may change it), `*result` (may be
 * NULL) gets a new reference (json_decref; JSON null when the handler set
 * none). Returns as tl_command_bus_execute (TL_EINVAL for a NULL payload). */
int tl_command_bus_execute_json(tl_command_bus *cb, const char *name, json_t *payload,
                                const tl_cqrs_exec_opts *opts, json_t **result);

/* The query bus: the same, for queries. A query handler reads the read
 * model, with tl_db_query_ro() to use the replicas when configured. */
int tl_query_bus_new(tl_query_bus **out, const tl_cqrs_config *cfg);
void tl_query_bus_free(tl_query_bus *qb);
int tl_query_bus_register(tl_query_bus *qb, const char *name, tl_cqrs_handler fn, void *ctx);
int tl_query_bus_validator(tl_query_bus *qb, const char *name, tl_cqrs_validator fn, void *ctx);
int tl_query_bus_use(tl_query_bus *qb, tl_cqrs_middleware mw, void *ctx);
int tl_query_bus_use_defaults(tl_query_bus *qb);
int tl_query_bus_execute(tl_query_bus *qb, const char *name, const char *json, char **result);
int tl_query_bus_execute_opts(tl_query_bus *qb, const char *name, const char *json,
                              const tl_cqrs_exec_opts *opts, char **result);
int tl_query_bus_execute_json(tl_query_bus *qb, const char *name, json_t *payload,
                              const tl_cqrs_exec_opts *opts, json_t **result);

/* ---- aggregates --------------------------------------------------------- */

/* How to rebuild one kind of aggregate from its stream. */
typedef struct tl_aggregate_def {
  /* Fold one event into `state` (a JSON object, {} at first). Runs on
   * the calling thread; `ev` is borrowed for the call. */
  int (*apply)(json_t *state, const tl_event *ev, void *ctx);
  void *ctx;
  int snapshot_every;  /* save a snapshot every N versions (0: never) */
  int state_schema;    /* schema of the state; other snapshots are
                          ignored [1] */
  unsigned max_attempts; /* tries of execute on TL_ECONFLICT [3] */
} tl_aggregate_def;

typedef struct tl_aggregate_emit tl_aggregate_emit;

/* Add an event for the decision to append. `data` is stolen (even on
 * error); `type` copied. Returns 0, TL_EINVAL or TL_ENOMEM. */
int tl_aggregate_emit_event(tl_aggregate_emit *em, const char *type, json_t *data);

/* Decide what happens: look at `state` at `version` and the command, emit
 * events with tl_aggregate_emit_event(), return 0 (no events: nothing to
 * append) or an error that is returned as is. May run several times (on
 * conflicts): no side effects outside `em`. Runs on the calling thread. */
typedef int (*tl_aggregate_decide)(const json_t *state, int64_t version, const json_t *command,
                                   tl_aggregate_emit *em, void *ctx);

/* Load the state of `stream`: the latest snapshot (if its schema matches)
 * plus the events after it, folded with def->apply. `*state` is the
 * caller's (json_decref). */
int tl_aggregate_load(tl_es *es, const tl_aggregate_def *def, const char *stream,
                      json_t **state, int64_t *version);

/* Load, decide, append the emitted events expecting the loaded version;
 * on TL_ECONFLICT load and decide again, up to def->max_attempts. Takes a
 * snapshot when a multiple of snapshot_every is crossed. `*version` (may
 * be NULL) gets the new version. Returns 0, TL_ECONFLICT (still
 * conflicting after the last attempt) or decide's or the store's error. */
int tl_aggregate_execute(tl_es *es, const tl_aggregate_def *def, const char *stream,
                         const json_t *command, tl_aggregate_decide decide, void *ctx,
                         int64_t *version);

/* Group commit: concurrent tl_aggregate_execute_opts() calls that name
 * the same group append their decisions in one shared transaction (on
 * PostgreSQL one statement for all of their events), and so share its
 * commit. A caller waits for its batch; while a batch runs the next
 * ones gather. The result of each call is its own: a decision that
 * conflicts goes back to its decide loop, an in_tx that fails takes only
 * its own decision out (the others are committed without it). Use one
 * group per event store, from any threads. */
typedef struct tl_aggregate_group tl_aggregate_group;

typedef struct tl_aggregate_group_config {
  size_t max_batch;      /* decisions per transaction, up to 1024 [64] */
  unsigned max_inflight; /* transactions at once, up to 64 (each holds a
                            pool connection) [4] */
  tl_metrics *metrics;   /* trellis_cqrs_group_commit_batch_size [default] */
} tl_aggregate_group_config;

/* `cfg` may be NULL. Returns 0, TL_EINVAL (no event store, or a field out
 * of range, named) or TL_ENOMEM. */
int tl_aggregate_group_new(tl_es *es, const tl_aggregate_group_config *cfg,
                           tl_aggregate_group **out);
/* After every call that uses it has returned. NULL-safe. */
void tl_aggregate_group_free(tl_aggregate_group *g);

/* One decision of a batch, for in_tx_batch. */
typedef struct tl_aggregate_tx_item {
  const char *stream;
  const json_t *state;     /* before the events */
  const tl_event *events;  /* appended: version, position and id filled */
  size_t n;
  int rc;                  /* set: take this decision out of the batch */
  char error[256];         /* with rc: its message */
} tl_aggregate_tx_item;

/* Options of tl_aggregate_execute_opts(); zero fields take the defaults. */
typedef struct tl_aggregate_exec_opts {
  /* The version the caller saw (an HTTP If-Match): when the loaded
   * version differs, nothing is decided and the call returns TL_EPRECOND;
   * a writer that slips in between the load and the append makes it
   * TL_ECONFLICT without a retry. Negative: no precondition, conflicts
   * are retried [-1; 0 is an exact "no events yet"]. Set has_expected. */
  int64_t expected_version;
  bool has_expected;
  /* The stream is new (a fresh id): nothing is loaded, decide sees {} at
   * version 0, and the append expects no events (TL_ECONFLICT, without a
   * retry, if the stream exists after all). Saves the reads of a load. */
  bool new_stream;
  /* Metadata (JSON object text) of every appended event: traceparent,
   * correlation_id, causation_id. [NULL: "{}"] */
  const char *metadata;
  /* Runs in the append's transaction, after the events are appended
   * (their version, position and id filled), for writes that must commit
   * with them or not at all (a uniqueness reservation, an outbox row).
   * `state` is the state before the events. A non-zero return rolls the
   * whole append back and is returned without a retry (but TL_ERETRY, a
   * deadlock or serialization failure, runs it all again); TL_ECONFLICT (a
   * unique key of its own) becomes TL_ECONSTRAINT so that it is not taken
   * for a version conflict. [NULL: the
   * append runs alone, one round trip where the store allows] */
  int (*in_tx)(tl_tx *tx, const json_t *state, const tl_event *events, size_t n, void *ctx);
  void *in_tx_ctx;
  /* With a group: in_tx for every decision of a batch that names the same
   * in_tx_batch and in_tx_ctx, in one call (one statement for all where
   * it can). Set an item's rc (and error) to take that decision out: the
   * batch runs again without it, and the call returns that rc (TL_ECONFLICT
   * becoming TL_ECONSTRAINT, as for in_tx). Return non-zero only for a
   * failure of the whole batch; each decision then runs alone with in_tx,
   * which is required with this. [NULL: in_tx per decision] */
  int (*in_tx_batch)(tl_tx *tx, tl_aggregate_tx_item *items, size_t n, void *ctx);
  /* When set, receives the state after the new events (json_decref). */
  json_t **state_out;
  /* Append in this group's shared transactions (group commit) instead
   * of one of the call's own. [NULL] */
  tl_aggregate_group *group;
} tl_aggregate_exec_opts;

/* tl_aggregate_execute with options (NULL: as tl_aggregate_execute). */
int tl_aggregate_execute_opts(tl_es *es, const tl_aggregate_def *def, const char *stream,
                              const json_t *command, tl_aggregate_decide decide, void *ctx,
                              const tl_aggregate_exec_opts *opts, int64_t *version);

/* ---- projections -------------------------------------------------------- */

typedef struct tl_projection tl_projection;
typedef struct tl_projection_tables tl_projection_tables;

/* The physical name of read-model table `logical` (live or being
 * rebuilt), borrowed while the callback runs. */
const char *tl_projection_table(const tl_projection_tables *t, const char *logical);

/* A projection: a transactional subscription that keeps read-model
 * tables. Table `x` is "<table_prefix>_x". */
typedef struct tl_projection_def {
  const char *name;          /* subscription name (lease, checkpoint) */
  const char *table_prefix;  /* [name] */
  const char *const *tables; /* logical names of its tables */
  size_t ntables;
  tl_es_filter filter;       /* which events it sees */
  /* Create the tables under the names tl_projection_table() gives.
   * Runs in `tx` on the starting or rebuilding thread. */
  int (*create)(tl_tx *tx, const tl_projection_tables *t, void *ctx);
  /* Apply one event to the tables, inside `tx` (which also saves the
   * checkpoint). Runs on the subscription's thread, or the rebuilding
   * thread during a rebuild; `ev` borrowed for the call. */
  int (*handle)(const tl_event *ev, tl_tx *tx, const tl_projection_tables *t, void *ctx);
  void *ctx;                 /* borrowed until tl_projection_stop() */
  size_t batch;              /* events per transaction [256] */
  int64_t lease_us;          /* as tl_es_sub_opts */
  int64_t poll_max_us;
} tl_projection_def;

/* Start a projection: create its tables when they don't exist, then
 * follow the log from its checkpoint. `def` is copied (the strings and
 * arrays are borrowed until stop). Returns 0 or a TL_E* code. */
int tl_projection_start(tl_es *es, const tl_projection_def *def, tl_projection **out);

/* Wait until the projection has handled every event visible now.
 * Returns 0, TL_ETIMEOUT or TL_EBUSY (another replica holds the lease). */
int tl_projection_wait(tl_projection *p, int64_t timeout_us);

/* Rebuild: replay the whole log into fresh tables, pause the live
 * subscription, catch up the last events, then swap the tables in and
 * move the checkpoint in one step, and resume. Ends with exactly the state
 * the live projection would have. Needs the lease: TL_EBUSY when another
 * replica holds it. Blocks the calling thread. */
int tl_projection_rebuild(tl_projection *p);

/* Stop the projection (its tables stay). NULL-safe. */
void tl_projection_stop(tl_projection *p);

/* ---- relay -------------------------------------------------------------- */

typedef struct tl_relay tl_relay;

/* Options; zero fields take the defaults shown. */
typedef struct tl_relay_opts {
  const char *name;     /* subscription name ["trellis-relay"] */
  tl_es_filter filter;  /* which events to publish [all] */
  int64_t lease_us;     /* as tl_es_sub_opts [10 s] */
  int64_t retry_us;     /* wait after a failed publish [500 ms] */
} tl_relay_opts;

/* Publish every event of the store to `mq` on subject tl_es_subject()
 * ("user.created"), payload the event's data, key the stream, message id
 * the event's id (deduplicate on it), headers event-id, event-type, stream,
 * stream-version, position and the metadata's traceparent,
 * correlation_id and causation_id; at least once, in global order, one
 * replica at a time. A failed publish is retried until the broker is back.
 * `mq` is borrowed until tl_relay_stop(). */
int tl_relay_start(tl_es *es, tl_mq *mq, const tl_relay_opts *opts, tl_relay **out);

/* Stop the relay (its checkpoint stays). NULL-safe. */
void tl_relay_stop(tl_relay *r);

#ifdef __cplusplus
}
#endif
#endif
