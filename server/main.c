/* main.c — build/tscaled: dispatch to a subcommand; with none (or only flags), serve. */
#include <stdio.h>
#include <string.h>

#include "server/cli.h"

static int serve(int argc, char **argv);

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"serve", serve, "run the daemon (the default when the first argument is a flag)"},
    {"init", ts_cmd_init, "write a new model file: init --layers SPEC --out FILE [--seed N]"},
    {"inspect", ts_cmd_inspect, "describe a model file: inspect FILE"},
    {"healthcheck", ts_cmd_healthcheck, "exit 0 when the daemon answers /v2/health/ready"},
    {"backup", ts_cmd_backup, "copy the database while the daemon runs: backup --db DB DEST"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: tscaled [serve] [flags]   (tscaled --help for the flags)\n"
               "       tscaled COMMAND [args]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

/* serve's --help starts with the subcommands (its flags follow). */
static int serve(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            fputc('\n', stdout);
            break;
        }
    return ts_cmd_serve(argc, argv);
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-')
        return serve(argc, argv);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    if (strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "tscaled: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
