/* cmd_ops.c — placeholder until its owner lands it. */
#include <stdio.h>
#include "cli.h"
int ts_cmd_healthcheck(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "tscaled: healthcheck: not built yet\n"); return 2; }
int ts_cmd_backup(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "tscaled: backup: not built yet\n"); return 2; }
