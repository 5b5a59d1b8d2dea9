/* The durable job queue on PostgreSQL (scripts/services start postgres),
 * in a database of its own: the contract suite, idle workers woken by
 * another pool's submit (LISTEN/NOTIFY), a process killed with SIGKILL
 * in the middle of its jobs, three processes sharing a per-second
 * schedule, and 50,000 jobs over two processes. */
#include "jobs_contract.h"

int main(int argc, char **argv)
{
  static int cron_secs = 20, many = 50000;
  const char *q = getenv("TRELLIS_TEST_QUICK");
  if (q && *q && strcmp(q, "0"))
    cron_secs = 8, many = 5000;
  const struct CMUnitTest faults[] = {
    cmocka_unit_test(jc_wakes_across_pools),
    cmocka_unit_test(jc_crash_test),
    cmocka_unit_test_prestate(jc_cron_three_processes, &cron_secs),
    cmocka_unit_test_prestate(jc_many_two_processes, &many),
  };
  return jc_server_main(argc, argv, "TRELLIS_TEST_POSTGRES_URL", "postgres", "jobs_postgres",
                        faults, sizeof faults / sizeof faults[0]);
}
