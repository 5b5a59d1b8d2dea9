/* The durable job queue on MariaDB/MySQL (scripts/services start
 * mariadb), in a database of its own: the contract suite and a process
 * killed with SIGKILL in the middle of its jobs. */
#include "jobs_contract.h"

int main(int argc, char **argv)
{
  const struct CMUnitTest faults[] = {
    cmocka_unit_test(jc_crash_test),
  };
  return jc_server_main(argc, argv, "TRELLIS_TEST_MYSQL_URL", "mariadb", "jobs_mysql", faults,
                        sizeof faults / sizeof faults[0]);
}
