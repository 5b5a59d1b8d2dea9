/* Shared by the event store benchmark's files. */
#ifndef TRELLIS_BENCH_ES_H
#define TRELLIS_BENCH_ES_H

#include <trellis/trellis.h>
#include <trellis/eventstore.h>

#include "bench.h"

/* One database under test. */
typedef struct bes_db {
  const char *name;   /* "sqlite", "pg", "mysql": the prefix of case names */
  const char *durability; /* said in the conditions */
  tl_db *db;
  tl_es *es;
  tl_db_dialect dialect;
} bes_db;

/* The columns of trellis_es_events a plain INSERT fills. */
#define BES_PLAIN_COLS "id, stream, category, type, version, data, metadata, schema_version, created_us"
#define BES_DATA "{\"n\":1,\"payload\":\"0123456789abcdef\"}"

/* Create `table` with the definition and indexes of trellis_es_events
 * (no triggers; positions from its own counter). 0 or -1. */
int bes_plain_table(bes_db *d, const char *table);

/* Does the command line select case `name`? */
bool bes_selected(const char *name);

/* The subscription lag cases on `d` (lag.c). 0 or -1. */
int bes_lag(bes_db *d);

#endif
