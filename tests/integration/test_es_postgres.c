/* The event store contract suite on PostgreSQL, including the no-skip
 * test (16 writers holding transactions open, some rolling back, one
 * subscriber that must see every committed event once, in order), and
 * the wake-up of subscribers by commits in other processes; and appends
 * inside the caller's transaction (batches of one statement, waking on
 * commit). */
#include <stdatomic.h>

#include "es_batch_contract.h"
#include "support.h"

static char url[1024];

static atomic_llong seen_at;

static int on_event(const tl_event *ev, tl_tx *tx, void *ctx)
{
  (void)ev, (void)tx, (void)ctx;
  long long zero = 0;
  atomic_compare_exchange_strong(&seen_at, &zero, (long long)tl_time_mono_us());
  return 0;
}

static tl_es *open_store(tl_db **db)
{
  tl_db_config dc = { .url = url, .max_connections = 2 };
  if (tl_db_connect(db, &dc) != 0)
    fail_msg("connect: %s", tl_error_last());
  tl_es *es;
  if (tl_es_open(&es, &(tl_es_config){ .db = *db }) != 0)
    fail_msg("open: %s", tl_error_last());
  return es;
}

/* A subscriber that would poll only every 10 s still hears, within a
 * moment, an append committed through another connection pool and store
 * (as another replica's would be): PostgreSQL notifies it at commit. */
static void commits_elsewhere_wake_subscribers(void **state)
{
  (void)state;
  tl_db *db1, *db2;
  tl_es *es1 = open_store(&db1), *es2 = open_store(&db2);
  char cat[32], name[48], stream[48];
  snprintf(cat, sizeof cat, "wake%d", (int)getpid());
  snprintf(name, sizeof name, "wake-sub-%d", (int)getpid());
  snprintf(stream, sizeof stream, "%s-1", cat);
  tl_es_sub_opts o = { .name = name, .filter = { .category = cat },
                       .poll_min_us = 10000000, .poll_max_us = 10000000 };
  tl_es_sub *sub;
  assert_int_equal(tl_es_subscribe(es1, &o, on_event, NULL, &sub), 0);
  tl_sleep_us(500000); /* caught up (nothing yet) and idle */

  tl_event ev = { .aggregate_id = stream, .event_type = "Woken", .data = "{}", .version = 1 };
  int64_t t0 = tl_time_mono_us();
  assert_int_equal(tl_es_append(es2, &ev, 1), 0);
  while (atomic_load(&seen_at) == 0 && tl_time_mono_us() - t0 < 8000000)
    tl_sleep_us(10000);
  long long at = atomic_load(&seen_at);
  assert_true(at != 0);
  assert_true(at - t0 < 2000000);

  tl_es_sub_stop(sub);
  tl_es_close(es1);
  tl_es_close(es2);
  tl_db_close(db1);
  tl_db_close(db2);
}

int main(void)
{
  tl_test_service_url("TRELLIS_TEST_POSTGRES_URL", "postgres", url, sizeof url);
  int failed = esc_run(url, "es_contract_postgres");
  failed += esb_run(url, "es_batch_postgres");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(commits_elsewhere_wake_subscribers),
  };
  failed += cmocka_run_group_tests_name("es_postgres", tests, NULL, NULL);
  return failed ? 1 : 0;
}
