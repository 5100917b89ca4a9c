/* cmd_util.h: what the stdin filters `omnipipe render|tokenize|detokenize|generate` share: their
 * `--model DIR [--keep-special] [--jsonl]` options, reading all of stdin, the --jsonl line loop,
 * writing one JSON value per line and printing an array of token ids. (cmd_util.c is not a
 * subcommand; it is named cmd_* so that cli/CMakeLists.txt's glob builds it into omnipipe.) */
#ifndef CMD_UTIL_H
#define CMD_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cmd_util_args {
    const char *model;  /* --model DIR (required) */
    bool jsonl;         /* --jsonl */
    bool keep_special;  /* --keep-special (only where the command accepts it) */
} cmd_util_args_t;

/* Parses `NAME --model DIR [--keep-special] [--jsonl] [--help]` (argv[0] = NAME; --keep-special only
 * when keep_special_ok). Returns -1 when the command should run (options in *ret), else the exit
 * status to return at once: 0 after --help (usage on stdout), 2 on a usage error (the reason, then
 * usage, on stderr). */
int cmd_util_args(int argc, char **argv, const char *name, bool keep_special_ok, void (*usage)(FILE *f),
                  cmd_util_args_t *ret);

/* Reads all of f into a malloc'd, NUL-terminated buffer (*ret_len excludes the NUL). Returns 0,
 * -ENOMEM, or -EIO on a read error (errno is left as the failing call set it). */
int cmd_util_slurp(FILE *f, char **ret, size_t *ret_len);

/* Called with each non-blank line (line[len] need not be NUL; line is NUL-terminated at its full
 * length) and its 1-based number in the input; returns 0 to go on, anything else ends the loop. */
typedef int (*cmd_util_line_fn)(void *ctx, const char *line, size_t len, size_t lineno);

enum {
    /* drop the line's trailing CR/LF before the callback; then only a line of spaces and tabs is
     * blank. Without it, a line of spaces, tabs, CRs and LFs is blank and the callback gets it whole. */
    CMD_UTIL_LINES_TRIM_EOL = 1,
};

/* Calls fn for each non-blank line of in (flags: CMD_UTIL_LINES_*). Returns 0 at the end of in (the
 * caller tests ferror(in) where it reports read errors) or the first nonzero value fn returned. */
int cmd_util_lines(FILE *in, unsigned flags, cmd_util_line_fn fn, void *ctx);

/* Writes o as compact JSON and a newline to out and drops the reference to o (NULL allowed).
 * Returns 0, or -ENOMEM when o is NULL or cannot be encoded (nothing written). */
int cmd_util_put_json(FILE *out, json_t *o);

/* Prints ids as a JSON array "[1, 2, 3]" (no newline). */
void cmd_util_print_ids(FILE *out, const int32_t *ids, size_t n);

/* Flushes stdout; on failure logs "NAME: writing stdout: ..." and returns 1, else returns rc. */
int cmd_util_flush(const char *name, int rc);

#endif
