/* omnipipe: the command-line front end. One binary, a table of subcommands: up, chat, replay, dump,
 * stats (here) and tokenize, detokenize, render, generate, make-model, bench (their owners' cmd_*.c files).
 * It links the same _core libraries as the daemons, so `omnipipe generate` or `omnipipe replay` run
 * exactly the daemons' code. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* Subcommands owned by other engineers: weak, so a missing one is NULL rather than a link error. */
int cmd_tokenize(int argc, char **argv) __attribute__((weak));
int cmd_detokenize(int argc, char **argv) __attribute__((weak));
int cmd_render(int argc, char **argv) __attribute__((weak));
int cmd_generate(int argc, char **argv) __attribute__((weak));
int cmd_make_model(int argc, char **argv) __attribute__((weak));
int cmd_bench(int argc, char **argv) __attribute__((weak));

typedef struct cli_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} cli_cmd_t;

int cli_bindir(char *buf, size_t len) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0)
        return -errno;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return -ENOENT;
    *slash = '\0';
    if ((size_t)snprintf(buf, len, "%s", exe) >= len)
        return -ENAMETOOLONG;
    return 0;
}

static void s_usage(const cli_cmd_t *cmds, size_t n) {
    printf("usage: omnipipe COMMAND [options]   (omnipipe COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < n; i++)
        printf("  %-12s %s%s\n", cmds[i].name, cmds[i].help, cmds[i].fn ? "" : " (not in this build)");
}

int main(int argc, char **argv) {
    const cli_cmd_t cmds[] = {
        {"up", cmd_up, "start the four daemons and wait until they are ready"},
        {"chat", cmd_chat, "multi-turn conversation through the running pipeline"},
        {"replay", cmd_replay, "replay a stage's recorded inputs and compare its outputs"},
        {"dump", cmd_dump, "print a capture file (.omcap) as text"},
        {"stats", cmd_stats, "the running pipeline's engine load (KV blocks, prefix cache) as JSON"},
        {"tokenize", cmd_tokenize, "text -> token ids"},
        {"detokenize", cmd_detokenize, "token ids -> text"},
        {"render", cmd_render, "render a conversation with the model's chat template"},
        {"generate", cmd_generate, "run the engine in process on token ids"},
        {"make-model", cmd_make_model, "write a tiny random checkpoint (presets)"},
        {"bench", cmd_bench, "benchmarks"},
    };
    size_t n = sizeof cmds / sizeof cmds[0];
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        s_usage(cmds, n);
        return argc < 2 ? EXIT_FAILURE : EXIT_SUCCESS;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(argv[1], cmds[i].name) != 0)
            continue;
        if (!cmds[i].fn) {
            fprintf(stderr, "omnipipe: '%s' is not available in this build\n", cmds[i].name);
            return EXIT_FAILURE;
        }
        optind = 0;
        return cmds[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "omnipipe: unknown command '%s' (omnipipe --help lists them)\n", argv[1]);
    return EXIT_FAILURE;
}
