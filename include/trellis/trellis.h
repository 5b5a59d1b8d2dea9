/* trellis: a C11 toolkit for scalable, distributed services.
 * This header includes every module's header. */
#ifndef TRELLIS_TRELLIS_H
#define TRELLIS_TRELLIS_H

#include "error.h"
#include "log.h"
#include "clock.h"
#include "config.h"
#include "metrics.h"
#include "resilience.h"
#include "process.h"
#include "http.h"
#include "db.h"
#include "cron.h"
#include "jobs.h"
#include "mq.h"
#include "eventstore.h"
#include "cqrs.h"
#include "cache.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version ("0.1.0") and the git commit it was built from
 * ("unknown" outside a checkout). */
const char *tl_version(void);
const char *tl_build_commit(void);

/* Free memory that a trellis call allocated and handed over. NULL-safe. */
void tl_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
