/* cmd_util.c: helpers shared by the stdin filters `omnipipe render|tokenize|detokenize|generate`
 * (see cmd_util.h): option parsing, reading stdin, the --jsonl line loop and JSON output. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
#include "om_log.h"

int cmd_util_args(int argc, char **argv, const char *name, bool keep_special_ok, void (*usage)(FILE *f),
                  cmd_util_args_t *ret)
{
    /* --keep-special first, so that the commands without it get the table from its second entry */
    static const struct option opts[] = {
        {"keep-special", no_argument, NULL, 'k'},
        {"model", required_argument, NULL, 'm'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cmd_util_args_t a = {0};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, keep_special_ok ? "m:kjh" : "m:jh", keep_special_ok ? opts : opts + 1,
                            NULL)) != -1) {
        switch (o) {
        case 'm':
            a.model = optarg;
            break;
        case 'k':
            a.keep_special = true;
            break;
        case 'j':
            a.jsonl = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!a.model || optind < argc) {
        om_log_err("%s: %s", name, !a.model ? "--model DIR is required" : "unexpected argument");
        usage(stderr);
        return 2;
    }
    *ret = a;
    return -1;
}

int cmd_util_slurp(FILE *f, char **ret, size_t *ret_len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return -ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        return -EIO;
    }
    buf[n] = 0;
    *ret = buf;
    *ret_len = n;
    return 0;
}

int cmd_util_lines(FILE *in, unsigned flags, cmd_util_line_fn fn, void *ctx)
{
    const char *blank = flags & CMD_UTIL_LINES_TRIM_EOL ? " \t" : " \t\r\n";
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        size_t len = (size_t)n, k = 0;
        if (flags & CMD_UTIL_LINES_TRIM_EOL)
            while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                len--;
        while (k < len && line[k] && strchr(blank, line[k]))
            k++;
        if (k < len)
            rc = fn(ctx, line, len, lineno);
    }
    free(line);
    return rc;
}

int cmd_util_put_json(FILE *out, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
        return -ENOMEM;
    fputs(s, out);
    fputc('\n', out);
    free(s);
    return 0;
}

void cmd_util_print_ids(FILE *out, const int32_t *ids, size_t n)
{
    fputc('[', out);
    for (size_t i = 0; i < n; i++)
        fprintf(out, i ? ", %d" : "%d", ids[i]);
    fputc(']', out);
}

int cmd_util_flush(const char *name, int rc)
{
    if (fflush(stdout)) {
        om_log_err("%s: writing stdout: %s", name, strerror(errno));
        return 1;
    }
    return rc;
}
