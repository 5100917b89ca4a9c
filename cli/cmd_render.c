/* cmd_render.c: `omnipipe render --model DIR [--jsonl]`: renders a conversation with the checkpoint's
 * own chat template, byte-identical to tokenizer.apply_chat_template(..., tokenize=False).
 *   default   stdin is one JSON object {"messages": [...], "tools": [...]?, "add_generation_prompt":
 *             bool (default true), ...other template variables}; stdout gets the rendered text's exact
 *             bytes (no newline added). Exit 1 with the reason on stderr when it cannot be rendered.
 *   --jsonl   each stdin line is such an object; each output line is {"text": ...} or {"error": ...}
 *             (every line is answered; exit 0 unless stdin/stdout fail). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
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

/* --jsonl: one stdin line, answered with {"text": ...} or {"error": ...} */
static int cmd_render_line(void *ctx, const char *line, size_t len, size_t lineno)
{
    const tok_chat_t *c = ctx;
    tok_chat_error_t err = {{0}};
    char *text = NULL;
    size_t tl = 0;
    int r = tok_chat_render_json(c, line, len, &text, &tl, &err);
    json_t *o = r == 0 ? json_pack("{s:s%}", "text", text, tl)
                       : json_pack("{s:s}", "error", err.message[0] ? err.message : strerror(-r));
    free(text);
    if (cmd_util_put_json(stdout, o)) {
        om_log_err("render: stdin line %zu: out of memory", lineno);
        return 1;
    }
    return 0;
}

int cmd_render(int argc, char **argv)
{
    cmd_util_args_t a;
    int rc = cmd_util_args(argc, argv, "render", false, cmd_render_usage, &a);
    if (rc >= 0)
        return rc;
    char err[1024] = "";
    tok_chat_t *c = NULL;
    int r = tok_chat_new(a.model, &c, err, sizeof(err));
    if (r) {
        om_log_err("render: %s", err[0] ? err : strerror(-r));
        return 1;
    }
    rc = 0;
    if (a.jsonl) {
        rc = cmd_util_lines(stdin, 0, cmd_render_line, c);
        if (ferror(stdin)) {
            om_log_err("render: reading stdin: %s", strerror(errno));
            rc = 1;
        }
    } else {
        char *in = NULL, *text = NULL;
        size_t in_len = 0, tl = 0;
        tok_chat_error_t cerr = {{0}};
        if ((r = cmd_util_slurp(stdin, &in, &in_len))) {
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
    rc = cmd_util_flush("render", rc);
    tok_chat_free(c);
    return rc;
}
