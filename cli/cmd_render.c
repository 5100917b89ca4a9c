/* cmd_render.c: `omnipipe render --model DIR [--jsonl]`: renders a conversation with the checkpoint's
 * own chat template, byte-identical to tokenizer.apply_chat_template(..., tokenize=False).
 *   default   stdin is one JSON object {"messages": [...], "tools": [...]?, "add_generation_prompt":
 *             bool (default true), ...other template variables}; stdout gets the rendered text's exact
 *             bytes (no newline added). Exit 1 with the reason on stderr when it cannot be rendered.
 *   --jsonl   each stdin line is such an object; each output line is {"text": ...} or {"error": ...}
 *             (every line is answered; exit 0 unless stdin/stdout fail). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_log.h"
#include "tok_chat.h"

int cmd_render(int argc, char **argv);

static void cmd_render_usage(FILE *f)
{
    fprintf(f, "usage: omnipipe render --model DIR [--jsonl]\n"
               "  reads {\"messages\": [...], \"tools\": [...], \"add_generation_prompt\": true, ...} on stdin\n"
               "  and writes the chat template's rendering of it;\n"
               "  --jsonl: one such object per stdin line -> stdout lines {\"text\": ...} or {\"error\": ...}\n");
}

static int cmd_render_jsonl(const tok_chat_t *c, FILE *in, FILE *out)
{
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        size_t len = (size_t)n, k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\n' || line[k] == '\r'))
            k++;
        if (k == len)
            continue;
        tok_chat_error_t err = {{0}};
        char *text = NULL;
        size_t tl = 0;
        int r = tok_chat_render_json(c, line, len, &text, &tl, &err);
        json_t *o = r == 0 ? json_pack("{s:s%}", "text", text, tl)
                           : json_pack("{s:s}", "error", err.message[0] ? err.message : strerror(-r));
        free(text);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!s) {
            om_log_err("render: stdin line %zu: out of memory", lineno);
            rc = 1;
            break;
        }
        fputs(s, out);
        fputc('\n', out);
        free(s);
    }
    if (ferror(in)) {
        om_log_err("render: reading stdin: %s", strerror(errno));
        rc = 1;
    }
    free(line);
    return rc;
}

/* reads all of f into a malloc'd buffer */
static int cmd_render_slurp(FILE *f, char **ret, size_t *ret_len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return -ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        return -EIO;
    }
    *ret = buf;
    *ret_len = n;
    return 0;
}

int cmd_render(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL;
    bool jsonl = false;
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "m:jh", opts, NULL)) != -1) {
        switch (o) {
        case 'm':
            model = optarg;
            break;
        case 'j':
            jsonl = true;
            break;
        case 'h':
            cmd_render_usage(stdout);
            return 0;
        default:
            cmd_render_usage(stderr);
            return 2;
        }
    }
    if (!model || optind < argc) {
        om_log_err("render: %s", !model ? "--model DIR is required" : "unexpected argument");
        cmd_render_usage(stderr);
        return 2;
    }
    char err[1024] = "";
    tok_chat_t *c = NULL;
    int r = tok_chat_new(model, &c, err, sizeof(err));
    if (r) {
        om_log_err("render: %s", err[0] ? err : strerror(-r));
        return 1;
    }
    int rc = 0;
    if (jsonl) {
        rc = cmd_render_jsonl(c, stdin, stdout);
    } else {
        char *in = NULL, *text = NULL;
        size_t in_len = 0, tl = 0;
        tok_chat_error_t cerr = {{0}};
        if ((r = cmd_render_slurp(stdin, &in, &in_len))) {
            om_log_err("render: reading stdin: %s", strerror(-r));
            rc = 1;
        } else if ((r = tok_chat_render_json(c, in, in_len, &text, &tl, &cerr))) {
            om_log_err("render: %s", cerr.message[0] ? cerr.message : strerror(-r));
            rc = 1;
        } else if (fwrite(text, 1, tl, stdout) != tl) {
            om_log_err("render: writing stdout: %s", strerror(errno));
            rc = 1;
        }
        free(text);
        free(in);
    }
    if (fflush(stdout)) {
        om_log_err("render: writing stdout: %s", strerror(errno));
        rc = 1;
    }
    tok_chat_free(c);
    return rc;
}
