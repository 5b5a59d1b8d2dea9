/* The event store contract suite on SQLite (WAL, one file per run), and
 * appends inside the caller's transaction (batches, waking on commit). */
#include "es_batch_contract.h"

static char path[256], url[300];

static void remove_files(void)
{
  char p[300];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

int main(void)
{
  snprintf(path, sizeof path, "/tmp/trellis-test-es-%d.db", (int)getpid());
  snprintf(url, sizeof url, "sqlite://%s", path);
  remove_files();
  int failed = esc_run(url, "es_contract_sqlite");
  failed += esb_run(url, "es_batch_sqlite");
  remove_files();
  return failed ? 1 : 0;
}
