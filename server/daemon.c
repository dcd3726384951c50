/* daemon.c — placeholder until its owner lands it. */
#include <stdio.h>
#include "cli.h"
int ts_cmd_serve(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "tscaled: serve: not built yet\n"); return 2; }
