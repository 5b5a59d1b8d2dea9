/* The durable job queue on PostgreSQL (scripts/services start postgres),
 * in a database of its own: the contract suite, a process killed with
 * SIGKILL in the middle of its jobs, three processes sharing a
 * per-second schedule, and 50,000 jobs over two processes. */
#include "jobs_contract.h"
#include "support.h"

int main(int argc, char **argv)
{
  if (argc == 5 && !strcmp(argv[1], "child"))
    return jc_child_main(argv[2], argv[3], atoi(argv[4]));
  char base[512], name[64];
  tl_test_service_url("TRELLIS_TEST_POSTGRES_URL", "postgres", base, sizeof base);
  snprintf(name, sizeof name, "trellis_jobs_%d", (int)getpid());
  if (jc_make_database(base, name, jc_url, sizeof jc_url) != 0)
    return 1;
  int failed = jc_run("jobs_postgres");
  static int cron_secs = 20, many = 50000;
  const char *q = getenv("TRELLIS_TEST_QUICK");
  if (q && *q && strcmp(q, "0"))
    cron_secs = 8, many = 5000;
  const struct CMUnitTest faults[] = {
    cmocka_unit_test(jc_crash_test),
    cmocka_unit_test_prestate(jc_cron_three_processes, &cron_secs),
    cmocka_unit_test_prestate(jc_many_two_processes, &many),
  };
  failed += _cmocka_run_group_tests("jobs_postgres_processes", faults, 3, jc_group_setup,
                                    jc_group_teardown);
  jc_drop_database(base, name);
  return failed;
}
