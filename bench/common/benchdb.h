/* A database of the benchmark's own on a server of scripts/services (its
 * URL from bench_service_url()).
 *
 * Not thread-safe: call from the benchmark's main thread. Messages go to
 * stderr. */
#ifndef TRELLIS_BENCH_BENCHDB_H
#define TRELLIS_BENCH_BENCHDB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Create database `name` (letters, digits and '_') on the server of URL
 * `base`, dropping one left over by an earlier run first, and write its
 * URL into `out`. Returns 0, or -1 after saying why. */
int bench_db_create(const char *base, const char *name, char *out, size_t size);

/* Drop database `name` on the server of `base` (PostgreSQL: WITH (FORCE)).
 * Returns 0, or -1 after saying why. */
int bench_db_drop(const char *base, const char *name);

#ifdef __cplusplus
}
#endif

#endif
