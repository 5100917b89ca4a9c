/* cmd_tokenize.c: `omnipipe tokenize --model DIR [--jsonl]`: encodes stdin with the checkpoint's
 * tokenizer (tokenizer(text, add_special_tokens=False) in transformers terms).
 *   default   all of stdin is one UTF-8 text; prints its ids as one JSON array and a newline.
 *   --jsonl   each stdin line is {"text": ...}; each output line is {"ids": [...]}. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
#include "om_log.h"
#include "tok_codec.h"

int cmd_tokenize(int argc, char **argv);

static void cmd_tokenize_usage(FILE *f)
{
    fprintf(f, "usage: omnipipe tokenize --model DIR [--jsonl]\n"
               "  reads UTF-8 text on stdin and prints its token ids as a JSON array;\n"
               "  --jsonl: stdin lines {\"text\": ...} -> stdout lines {\"ids\": [...]}\n");
}

/* --jsonl: one stdin line {"text": ...} -> {"ids": [...]} */
static int cmd_tokenize_line(void *ctx, const char *line, size_t len, size_t lineno)
{
    const tok_codec_t *c = ctx;
    json_error_t je;
    json_t *j = json_loadb(line, len, JSON_ALLOW_NUL, &je);
    json_t *t = json_object_get(j, "text");
    if (!j || !json_is_string(t)) {
        om_log_err("tokenize: stdin line %zu: %s", lineno,
                   j ? "expected an object with a string \"text\"" : je.text);
        json_decref(j);
        return 1;
    }
    int32_t *ids = NULL;
    size_t nids = 0;
    int r = tok_codec_encode(c, json_string_value(t), json_string_length(t), &ids, &nids);
    json_decref(j);
    if (r) {
        om_log_err("tokenize: stdin line %zu: text: %s", lineno,
                   r == -EINVAL ? "not valid UTF-8" : strerror(-r));
        return 1;
    }
    fputs("{\"ids\": ", stdout);
    cmd_util_print_ids(stdout, ids, nids);
    fputs("}\n", stdout);
    free(ids);
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    cmd_util_args_t a;
    int rc = cmd_util_args(argc, argv, "tokenize", false, cmd_tokenize_usage, &a);
    if (rc >= 0)
        return rc;
    char err[1024] = "";
    tok_codec_t *c = NULL;
    int r = tok_codec_load(a.model, &c, err, sizeof(err));
    if (r) {
        om_log_err("tokenize: %s", err[0] ? err : strerror(-r));
        return 1;
    }
    rc = 0;
    if (a.jsonl) {
        rc = cmd_util_lines(stdin, CMD_UTIL_LINES_TRIM_EOL, cmd_tokenize_line, c);
    } else {
        size_t len = 0;
        char *text = NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        if (cmd_util_slurp(stdin, &text, &len)) { /* errno: the failing read's, or ENOMEM */
            om_log_err("tokenize: reading stdin: %s", strerror(errno ? errno : EIO));
            rc = 1;
        } else if ((r = tok_codec_encode(c, text, len, &ids, &n))) {
            om_log_err("tokenize: stdin: %s", r == -EINVAL ? "not valid UTF-8" : strerror(-r));
            rc = 1;
        } else {
            cmd_util_print_ids(stdout, ids, n);
            fputc('\n', stdout);
        }
        free(ids);
        free(text);
    }
    rc = cmd_util_flush("tokenize", rc);
    tok_codec_free(c);
    return rc;
}
