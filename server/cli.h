/* cli.h — the subcommands of build/tscaled. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns the process exit status. */
#ifndef TS_CLI_H
#define TS_CLI_H

int ts_cmd_serve(int argc, char **argv);        /* daemon.c: the daemon (default) */
int ts_cmd_init(int argc, char **argv);         /* cmd_model.c: write a new model file */
int ts_cmd_inspect(int argc, char **argv);      /* cmd_model.c: describe a model file */
int ts_cmd_healthcheck(int argc, char **argv);  /* cmd_ops.c: probe /v2/health/ready */
int ts_cmd_backup(int argc, char **argv);       /* cmd_ops.c: online backup of the database */

#endif
