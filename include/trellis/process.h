/* trellis: process-level helpers: shutdown signals. */
#ifndef TRELLIS_PROCESS_H
#define TRELLIS_PROCESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Block SIGTERM, SIGINT and SIGHUP in the calling thread, and so in every
 * thread it creates afterwards; SIGPIPE is ignored. Call first in main(),
 * before any library thread starts. Returns 0 or TL_EINVAL. */
int tl_signals_block(void);

/* Wait for SIGTERM or SIGINT (returns the signal number), or until
 * `timeout_us` passes (returns 0; negative waits forever). Main thread. */
int tl_signals_wait(int64_t timeout_us);

#ifdef __cplusplus
}
#endif
#endif
