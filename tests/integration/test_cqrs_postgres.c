/* The group commit scenarios of cqrs_group_contract.h on PostgreSQL,
 * where a batch appends every decision's events with one statement, in
 * a database of the run's own. */
#include "cqrs_group_contract.h"
#include "jobs_contract.h" /* jc_make_database, jc_drop_database */
#include "support.h"

int main(void)
{
  tl_log_set_level(TL_LOG_ERROR);
  char base[512], name[64], url[600];
  tl_test_service_url("TRELLIS_TEST_POSTGRES_URL", "postgres", base, sizeof base);
  snprintf(name, sizeof name, "trellis_cqrs_%d", (int)getpid());
  if (jc_make_database(base, name, url, sizeof url) != 0)
    return 1;
  tl_db *db = NULL;
  tl_es *es = NULL;
  tl_db_config dc = { .url = url, .max_connections = 8, .acquire_timeout_us = 30000000 };
  int failed = 1;
  if (tl_db_connect(&db, &dc) != 0 || tl_es_open(&es, &(tl_es_config){ .db = db }) != 0)
    fprintf(stderr, "setup: %s\n", tl_error_last());
  else
    failed = cg_run(db, es, "cqrs_group_postgres");
  tl_es_close(es);
  tl_db_close(db);
  jc_drop_database(base, name);
  return failed ? 1 : 0;
}
