/* kill -9 during a burst of appends: a child appends and writes each
 * acknowledged position to a pipe; it is SIGKILLed mid-burst; after
 * reopening, every acknowledged append is in the store. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "support.h"

#include <trellis/trellis.h>
#include <trellis/eventstore.h>

static char path[256], url[300];

static void child(int fd)
{
  tl_db *db;
  tl_es *es;
  if (tl_db_connect(&db, &(tl_db_config){ .url = url }) || tl_es_open(&es, &(tl_es_config){ .db = db }))
    _exit(3);
  for (int i = 0;; i++) {
    char stream[32];
    snprintf(stream, sizeof stream, "crash-%d", i % 10);
    tl_event e[3] = {
      { .aggregate_id = stream, .event_type = "Burst", .data = "{\"n\":1}" },
      { .aggregate_id = stream, .event_type = "Burst", .data = "{\"n\":2}" },
      { .aggregate_id = stream, .event_type = "Burst", .data = "{\"n\":3}" },
    };
    size_t n = 1 + (size_t)(i % 3);
    if (tl_es_append_to(es, stream, TL_ES_ANY, e, n) != 0) _exit(4);
    for (size_t k = 0; k < n; k++) {
      int64_t ack[2] = { e[k].position, e[k].version };
      if (write(fd, ack, sizeof ack) != sizeof ack) _exit(5);
    }
  }
}

static void kill9_keeps_acknowledged(void **state)
{
  (void)state;
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    tl_test_child_dies_with_parent();
    close(p[0]);
    child(p[1]);
  }
  close(p[1]);
  int64_t acks[20000][2];
  size_t n = 0;
  int64_t deadline = tl_time_mono_us() + 20000000;
  /* Let it get going, then kill it in the middle of the burst. */
  while (n < 300 && tl_time_mono_us() < deadline) {
    ssize_t r = read(p[0], acks[n], sizeof acks[n]);
    if (r != (ssize_t)sizeof acks[n]) break;
    n++;
  }
  kill(pid, SIGKILL);
  for (;;) {
    if (n == sizeof acks / sizeof acks[0]) break;
    ssize_t r = read(p[0], acks[n], sizeof acks[n]);
    if (r != (ssize_t)sizeof acks[n]) break;
    n++;
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFSIGNALED(status));
  assert_true(n >= 300);
  tl_db *db;
  tl_es *es;
  assert_int_equal(tl_db_connect(&db, &(tl_db_config){ .url = url }), 0);
  assert_int_equal(tl_es_open(&es, &(tl_es_config){ .db = db }), 0);
  for (size_t i = 0; i < n; i++) {
    tl_rows *r;
    assert_int_equal(tl_db_query(db, &r, "SELECT version FROM trellis_es_events WHERE position = $1",
                                 TL_ARGS(tl_int(acks[i][0]))), 0);
    assert_int_equal(tl_rows_next(r), 1);
    int64_t v;
    assert_int_equal(tl_rows_int(r, 0, &v), 0);
    assert_int_equal(v, acks[i][1]);
    tl_rows_free(r);
  }
  /* Streams are still consistent: versions 1..n with no holes. */
  for (int s = 0; s < 10; s++) {
    char stream[32];
    snprintf(stream, sizeof stream, "crash-%d", s);
    tl_event_list *l;
    assert_int_equal(tl_es_get_events(es, stream, &l), 0);
    for (size_t i = 0; i < l->count; i++) assert_int_equal(l->events[i].version, (int64_t)i + 1);
    int64_t v;
    assert_int_equal(tl_es_stream_version(es, stream, &v), 0);
    assert_int_equal(v, (int64_t)l->count);
    tl_event_list_free(l);
  }
  tl_es_close(es);
  tl_db_close(db);
}

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  snprintf(path, sizeof path, "/tmp/trellis-test-es-crash-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  const struct CMUnitTest tests[] = { cmocka_unit_test(kill9_keeps_acknowledged) };
  int failed = cmocka_run_group_tests_name("es_crash", tests, NULL, NULL);
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
  return failed ? 1 : 0;
}
