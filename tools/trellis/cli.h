/* The trellis operator CLI: one file per subcommand group, dispatched by
 * main.c. Exit codes everywhere: 0 success, 1 failure (the error on
 * stderr), 2 usage error. */
#ifndef TRELLIS_CLI_H
#define TRELLIS_CLI_H

#include <trellis/trellis.h>

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Each subcommand gets argv from its own name on (argv[0] = "db"), and the
 * configuration loaded from .env and the environment. */
typedef int (*cli_command_fn)(int argc, char **argv, const tl_config *cfg);

int cli_cmd_version(int argc, char **argv, const tl_config *cfg);
int cli_cmd_health(int argc, char **argv, const tl_config *cfg);
int cli_cmd_db(int argc, char **argv, const tl_config *cfg);
int cli_cmd_cron(int argc, char **argv, const tl_config *cfg);
int cli_cmd_events(int argc, char **argv, const tl_config *cfg);
int cli_cmd_jobs(int argc, char **argv, const tl_config *cfg);
int cli_cmd_mq(int argc, char **argv, const tl_config *cfg);

/* Print "trellis <cmd>: <message>" plus tl_error_last() when non-empty. */
void cli_fail(const char *cmd, const char *what);

#endif
