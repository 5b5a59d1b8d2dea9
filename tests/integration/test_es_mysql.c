/* The event store contract suite and the batched appends of
 * es_batch_contract.h on MariaDB (positions from a counter row locked
 * inside the appending transaction; batches go one request at a time). */
#include "es_batch_contract.h"
#include "support.h"

int main(void)
{
  static char url[1024];
  tl_test_service_url("TRELLIS_TEST_MYSQL_URL", "mariadb", url, sizeof url);
  int failed = esc_run(url, "es_contract_mysql");
  failed += esb_run(url, "es_batch_mysql");
  return failed ? 1 : 0;
}
