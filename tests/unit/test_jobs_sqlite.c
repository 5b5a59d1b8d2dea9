/* The durable job queue on SQLite: the contract suite, and a process
 * killed with SIGKILL in the middle of its jobs (this program re-runs
 * itself as the child). */
#include "jobs_contract.h"

static char path[128];

static void remove_files(void)
{
  char p[160];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

int main(int argc, char **argv)
{
  if (argc == 5 && !strcmp(argv[1], "child"))
    return jc_child_main(argv[2], argv[3], atoi(argv[4]));
  snprintf(path, sizeof path, "/tmp/trellis-jobs-sqlite-%d.db", (int)getpid());
  remove_files();
  snprintf(jc_url, sizeof jc_url, "sqlite://%s", path);
  int failed = jc_run("jobs_sqlite");
  const struct CMUnitTest faults[] = {
    cmocka_unit_test(jc_crash_test),
  };
  failed += _cmocka_run_group_tests("jobs_sqlite_crash", faults, 1, jc_group_setup,
                                    jc_group_teardown);
  remove_files();
  return failed;
}
