/* The event store contract suite on MariaDB (positions from a counter row
 * locked inside the appending transaction). */
#include "es_contract.h"
#include "support.h"

int main(void)
{
  static char url[1024];
  tl_test_service_url("TRELLIS_TEST_MYSQL_URL", "mariadb", url, sizeof url);
  return esc_run(url, "es_contract_mysql") ? 1 : 0;
}
