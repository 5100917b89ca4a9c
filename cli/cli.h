/* cli.h: the `omnipipe` command's subcommand entry points and the helpers they share.
 *
 * Every subcommand is `int cmd_<name>(int argc, char **argv)` in cli/cmd_<name>.c, called with
 * argv[0] = the subcommand name, returning the process exit status. Subcommands written by other
 * engineers are declared weak in main.c, so the CLI links (and says "'X' is not available in this
 * build") while theirs are still being written. */
#ifndef CLI_H
#define CLI_H

#include <stddef.h>

int cmd_up(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_stats(int argc, char **argv);

/* Directory of the running omnipipe binary (where the *_svc daemons are built and installed). */
int cli_bindir(char *buf, size_t len);

#endif
