/* cmd_model.c — placeholder until its owner lands it. */
#include <stdio.h>
#include "cli.h"
int ts_cmd_init(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "tscaled: init: not built yet\n"); return 2; }
int ts_cmd_inspect(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "tscaled: inspect: not built yet\n"); return 2; }
