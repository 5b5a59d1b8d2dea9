/* The group commit scenarios of cqrs_group_contract.h on PostgreSQL,
 * where a batch appends every decision's events with one statement and
 * reserves with one INSERT, in a database of the run's own. */
#include "cqrs_group_contract.h"

int main(void)
{
  return cg_main_on_server("TRELLIS_TEST_POSTGRES_URL", "postgres", "cqrs_group_postgres");
}
