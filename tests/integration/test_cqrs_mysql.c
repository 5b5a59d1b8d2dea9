/* The group commit scenarios of cqrs_group_contract.h on MariaDB, where a
 * batch's appends and in_tx run one decision after the other in the
 * shared transaction, in a database of the run's own. */
#include "cqrs_group_contract.h"

int main(void)
{
  return cg_main_on_server("TRELLIS_TEST_MYSQL_URL", "mariadb", "cqrs_group_mysql");
}
