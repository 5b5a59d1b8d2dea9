/* trellis: clocks, UTC timestamps and UUIDv7. Time is int64 microseconds. */
#ifndef TRELLIS_CLOCK_H
#define TRELLIS_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A clock the caller can replace (tests pass a fake one). Returns µs. */
typedef int64_t (*tl_clock_fn)(void *ctx);

/* Wall clock: µs since 1970-01-01T00:00:00Z (CLOCK_REALTIME). */
int64_t tl_time_now_us(void);

/* Monotonic clock in µs, for durations and deadlines (CLOCK_MONOTONIC). */
int64_t tl_time_mono_us(void);

/* tl_clock_fn adapters for the two clocks above (ctx ignored). */
int64_t tl_clock_wall(void *ctx);
int64_t tl_clock_mono(void *ctx);

/* Format `us` as "2026-01-01T00:30:00.123456Z" (fraction omitted when
 * `frac_digits` is 0, else 3 or 6 digits). `buf` needs 32 bytes.
 * Works for times before 1970. Returns the length written. */
size_t tl_time_format(int64_t us, int frac_digits, char *buf, size_t size);

/* Parse RFC 3339 / ISO 8601: "2026-01-01T00:30:00Z", with an optional
 * fraction (up to 9 digits) and a "Z" or "+hh:mm" offset; a date alone
 * ("2026-01-01") means midnight UTC. Returns 0 or TL_EINVAL. */
int tl_time_parse(const char *text, int64_t *out_us);

/* Sleep for `us` microseconds (restarted after signals). */
void tl_sleep_us(int64_t us);

/* UUIDv7 (RFC 9562): 48-bit ms timestamp, then a 12-bit counter that
 * keeps ids from one process strictly increasing within a millisecond,
 * then random bits. Writes 36 characters and a NUL to `out`. Any thread. */
#define TL_UUID_STRLEN 37
void tl_uuid7(char out[TL_UUID_STRLEN]);
void tl_uuid7_bytes(uint8_t out[16]);
/* A UUIDv7 for the instant `us` (>= 0), with the sub-millisecond fraction
 * in the 12 rand_a bits (RFC 9562 6.2, method 3) and random bits after:
 * no lock and no clock read, for hot paths that already read the clock.
 * Ordered by time to 1/4096 ms; unique by its 62 random bits. */
void tl_uuid7_at(int64_t us, uint8_t out[16]);
void tl_uuid_format(const uint8_t in[16], char out[TL_UUID_STRLEN]);
/* Returns 0 or TL_EINVAL for text that is not 8-4-4-4-12 hex. */
int tl_uuid_parse(const char *text, uint8_t out[16]);

/* A fast thread-local pseudo-random generator (xoshiro-class), seeded
 * from the OS. Not for secrets. */
uint64_t tl_rand64(void);
/* Fill `buf` from the OS's CSPRNG. Returns 0 or TL_EIO. */
int tl_random_bytes(void *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
