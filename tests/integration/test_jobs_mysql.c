/* The durable job queue on MariaDB/MySQL (scripts/services start
 * mariadb), in a database of its own: the contract suite and a process
 * killed with SIGKILL in the middle of its jobs. */
#include "jobs_contract.h"
#include "support.h"

int main(int argc, char **argv)
{
  if (argc == 5 && !strcmp(argv[1], "child"))
    return jc_child_main(argv[2], argv[3], atoi(argv[4]));
  char base[512], name[64];
  tl_test_service_url("TRELLIS_TEST_MYSQL_URL", "mariadb", base, sizeof base);
  snprintf(name, sizeof name, "trellis_jobs_%d", (int)getpid());
  if (jc_make_database(base, name, jc_url, sizeof jc_url) != 0)
    return 1;
  int failed = jc_run("jobs_mysql");
  const struct CMUnitTest faults[] = {
    cmocka_unit_test(jc_crash_test),
  };
  failed += _cmocka_run_group_tests("jobs_mysql_crash", faults, 1, jc_group_setup,
                                    jc_group_teardown);
  jc_drop_database(base, name);
  return failed;
}
